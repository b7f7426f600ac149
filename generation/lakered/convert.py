"""Convert the official LAKE-RED / LDM-inpainting checkpoints (PyTorch Lightning ``.ckpt``) to this
package's format: ``model.safetensors`` (keys ``vqvae.*``, ``unet.*``, ``bkrm.*``, ``rcem.*``)
plus ``state.pt``.

Official layout (``ldm.models.diffusion.ddpm.LatentDiffusion``):
``first_stage_model.*`` (VQ-f4, taming naming), ``model.diffusion_model.*`` (openaimodel UNet),
``model.SBG_module.*`` (LAKE-RED's retrieval: ``mlp_in``, ``crossAttn``, ``mlp_out``, ``fuse``,
``bg_embed``) and optionally ``model_ema.*``. The first stage goes through diffusers' own LDM VAE
converter; the UNet and the retrieval modules are mapped here.

The EMA weights (``model_ema.*``) replace the trained ones by default, since the official sampler
runs inside ``ema_scope()``; ``--no-ema`` keeps the raw training weights.

Usage: ``python -m generation.lakered.convert lakered.ckpt out_dir [--no-ema] [--no-retrieval]``
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
from pathlib import Path

import torch

from generation.lakered.model import LakeRedConfig
from ovcamo import CONF_DIR
from ovcamo.checkpoint import save_checkpoint

_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


class ConversionError(ValueError):
    """The checkpoint does not have the official layout this converter expects."""


def load_official(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official checkpoint's ``state_dict`` (``.ckpt``/``.pt`` with ``weights_only=True``,
    or ``.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"official checkpoint not found: {path}. Download the LAKE-RED checkpoint linked from "
            "github.com/PanchengZhao/LAKE-RED (or LDM's inpainting_big last.ckpt from "
            "ommer-lab.com/files/latent-diffusion/inpainting_big.zip) on a connected machine and "
            "pass its path."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise ConversionError(
            f"{path} holds objects beyond tensors and plain containers, so it is not loaded "
            "(weights_only). On a machine where you trust the file, re-save only its "
            "'state_dict' entry (a dict of tensors) with torch.save, or as safetensors, and pass "
            "that file."
        ) from e
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: no state_dict found")
    return sd


def _apply_ema(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace ``model.*`` weights by their ``model_ema.*`` copies (LitEma drops the dots; it
    averages parameters only, so buffers such as the retrieval codebook keep their value)."""
    out = dict(sd)
    for key in sd:
        if key.startswith("model."):
            ema = "model_ema." + key[len("model.") :].replace(".", "")
            if ema in sd:
                out[key] = sd[ema]
    return out


#: Notes a converted checkpoint carries into every sample made with it.
OFFICIAL_LAKERED_NOTES = {
    "weights": "official LAKE-RED release",
    "weights_trained_on": "COD10K and CAMO training images",
    "weights_may_overlap_ovcamo_test": True,
}


def provenance(sd: dict[str, torch.Tensor], use_ema: bool) -> dict[str, object]:
    """What a converted checkpoint is: LAKE-RED (with ``SBG_module``, the official release and its
    training data) or LDM inpainting, and whether its EMA weights were used."""
    notes: dict[str, object] = (
        dict(OFFICIAL_LAKERED_NOTES)
        if any(k.startswith("model.SBG_module.") for k in sd)
        else {"weights": "LDM inpainting release"}
    )
    notes["weights_ema"] = use_ema and any(k.startswith("model_ema.") for k in sd)
    return notes


def _copy(src: str, dst: str, sd: dict, out: dict, used: set) -> None:
    """``src.weight``/``src.bias`` → ``dst.weight``/``dst.bias`` (those present)."""
    for kind in ("weight", "bias"):
        k = f"{src}.{kind}"
        if k in sd:
            out[f"{dst}.{kind}"] = sd[k]
            used.add(k)


def _resnet(src: str, dst: str, sd: dict, out: dict, used: set) -> None:
    for old, new in _RESNET.items():
        _copy(f"{src}.{old}", f"{dst}.{new}", sd, out, used)


def _resampler(
    src: str, conv: str, dst: str, resblock: bool, sd: dict, out: dict, used: set
) -> None:
    """An up/down sampler: a ResNet block at ``src`` (``resblock_updown``) or the plain
    convolution ``src.<conv>``."""
    if resblock:
        _resnet(src, dst, sd, out, used)
    else:
        _copy(f"{src}.{conv}", f"{dst}.conv", sd, out, used)


def _attention(src: str, dst: str, heads: int, sd: dict, out: dict, used: set) -> None:
    """openaimodel ``AttentionBlock`` (legacy QKV order: per head [q, k, v]) → diffusers ``Attention``."""
    for kind in ("weight", "bias"):
        out[f"{dst}.group_norm.{kind}"] = sd[f"{src}.norm.{kind}"]
        used.add(f"{src}.norm.{kind}")
    qkv_w, qkv_b = sd[f"{src}.qkv.weight"][..., 0], sd[f"{src}.qkv.bias"]
    c = qkv_w.shape[1]
    w = qkv_w.view(heads, 3, c // heads, c)
    b = qkv_b.view(heads, 3, c // heads)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{name}.weight"] = w[:, i].reshape(c, c).clone()
        out[f"{dst}.{name}.bias"] = b[:, i].reshape(c).clone()
    out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj_out.weight"][..., 0]
    out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj_out.bias"]
    used.update(
        {f"{src}.qkv.weight", f"{src}.qkv.bias", f"{src}.proj_out.weight", f"{src}.proj_out.bias"}
    )


def convert_unet(
    sd: dict[str, torch.Tensor], config: LakeRedConfig, prefix: str = "model.diffusion_model."
) -> tuple[dict, set]:
    """openaimodel ``UNetModel`` keys → ``UNet2DModel`` keys (with ``unet.`` prefix)."""
    u = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    if not u:
        raise ConversionError(f"no UNet keys under {prefix!r}: not an LDM/LAKE-RED checkpoint")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    heads_of = lambda ch: config.unet_num_heads or ch // config.unet_attention_head_dim  # noqa: E731
    for src, dst in (
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ):
        _copy(src, dst, u, out, used)
    layers = config.unet_layers_per_block
    channels = config.unet_block_out_channels
    n_levels = len(channels)
    k = 1
    for level in range(n_levels):
        attn = "Attn" in config.unet_down_block_types[level]
        for j in range(layers):
            _resnet(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", u, out, used)
            if attn:
                _attention(
                    f"input_blocks.{k}.1",
                    f"down_blocks.{level}.attentions.{j}",
                    heads_of(channels[level]),
                    u,
                    out,
                    used,
                )
            k += 1
        if level < n_levels - 1:
            dst = f"down_blocks.{level}.downsamplers.0"
            _resampler(f"input_blocks.{k}.0", "op", dst, config.resblock_updown, u, out, used)
            k += 1
    _resnet("middle_block.0", "mid_block.resnets.0", u, out, used)
    _attention("middle_block.1", "mid_block.attentions.0", heads_of(channels[-1]), u, out, used)
    _resnet("middle_block.2", "mid_block.resnets.1", u, out, used)
    k = 0
    for level in range(n_levels):
        ch = channels[n_levels - 1 - level]
        attn = "Attn" in config.unet_up_block_types[level]
        for j in range(layers + 1):
            _resnet(f"output_blocks.{k}.0", f"up_blocks.{level}.resnets.{j}", u, out, used)
            if attn:
                _attention(
                    f"output_blocks.{k}.1",
                    f"up_blocks.{level}.attentions.{j}",
                    heads_of(ch),
                    u,
                    out,
                    used,
                )
            if j == layers and level < n_levels - 1:
                src = f"output_blocks.{k}.{2 if attn else 1}"
                dst = f"up_blocks.{level}.upsamplers.0"
                _resampler(src, "conv", dst, config.resblock_updown, u, out, used)
            k += 1
    return {f"unet.{k}": v for k, v in out.items()}, {prefix + k for k in used}


def convert_first_stage(sd: dict[str, torch.Tensor], config: LakeRedConfig) -> tuple[dict, set]:
    """taming/LDM VQ keys → ``VQModel`` keys (``vqvae.`` prefix), via diffusers' LDM VAE converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = "first_stage_model."
    vq = {k: v for k, v in sd.items() if k.startswith(prefix)}
    if f"{prefix}quantize.embedding.weight" not in vq:
        raise ConversionError(
            f"no VQ codebook ({prefix}quantize.embedding.weight) in the checkpoint"
        )
    n = len(config.vq_block_out_channels)
    out = convert_ldm_vae_checkpoint(
        vq,
        {
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
        },
    )
    out["quantize.embedding.weight"] = vq[f"{prefix}quantize.embedding.weight"]
    return {f"vqvae.{k}": v for k, v in out.items()}, set(vq)


def convert_retrieval(
    sd: dict[str, torch.Tensor], prefix: str = "model.SBG_module."
) -> tuple[dict, set]:
    """LAKE-RED's ``BKRA`` module → ``bkrm.*`` (retrieval) and ``rcem.*`` (fuse)."""
    names = {
        "mlp_in.fc1": "bkrm.mlp_in.fc1",
        "mlp_in.fc2": "bkrm.mlp_in.fc2",
        "mlp_out.fc1": "bkrm.mlp_out.fc1",
        "mlp_out.fc2": "bkrm.mlp_out.fc2",
        "crossAttn.to_q": "bkrm.to_q",
        "crossAttn.to_k": "bkrm.to_k",
        "crossAttn.to_v": "bkrm.to_v",
        "crossAttn.to_out.0": "bkrm.to_out",
        "fuse": "rcem.fuse",
    }
    out, used = {}, set()
    for old, new in names.items():
        _copy(f"{prefix}{old}", new, sd, out, used)
    if f"{prefix}bg_embed" in sd:
        out["bkrm.knowledge"] = sd[f"{prefix}bg_embed"].t().contiguous()
        used.add(f"{prefix}bg_embed")
    return out, used


def convert(
    sd: dict[str, torch.Tensor],
    config: LakeRedConfig,
    *,
    use_ema: bool = True,
    require_retrieval: bool = True,
) -> dict[str, torch.Tensor]:
    """Map an official state dict onto :class:`~generation.lakered.model.LakeRed`'s keys.

    Every key the official model uses must be consumed and every key of ours filled; a plain LDM
    inpainting checkpoint (no ``SBG_module``) converts only with ``require_retrieval=False``, its
    retrieval modules then keep their initialisation and retrieve from a copy of the VQ codebook
    (the official ``combine.py`` step). ``use_ema`` takes the ``model_ema.*`` weights where the
    checkpoint has them.
    """
    from generation.lakered.model import LakeRed

    if use_ema:
        sd = _apply_ema(sd)
    out, used = {}, set()
    for part in (convert_first_stage(sd, config), convert_unet(sd, config), convert_retrieval(sd)):
        out.update(part[0])
        used |= part[1]
    model = LakeRed(config)
    expected = model.state_dict()
    # LDM stores scale_factor only when it was set from the data (scale_by_std); else it is 1.
    out["scale_factor"] = sd.get("scale_factor", torch.tensor(1.0)).reshape(())
    used.add("scale_factor")
    if not require_retrieval and not any(k.startswith("bkrm.mlp_in") for k in out):
        out.update({k: v for k, v in expected.items() if k.startswith(("bkrm.", "rcem."))})
        out["bkrm.knowledge"] = out["vqvae.quantize.embedding.weight"]
    missing = sorted(set(expected) - set(out))
    leftover = sorted(
        k
        for k in sd
        if k not in used
        and not k.startswith(("model_ema.", "cond_stage_model."))
        and not re.match(r"^(betas|alphas|sqrt|log|posterior|logvar|lvlb)", k)
    )
    wrong = [k for k in out if k in expected and tuple(out[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise ConversionError(
            f"checkpoint does not match the configured LAKE-RED size: {len(missing)} keys missing "
            f"(e.g. {missing[:4]}), {len(wrong)} with other shapes (e.g. "
            f"{[(k, tuple(out[k].shape), tuple(expected[k].shape)) for k in wrong[:3]]})"
        )
    if leftover:
        raise ConversionError(
            f"{len(leftover)} official keys have no place here (e.g. {leftover[:4]})"
        )
    return {k: out[k] for k in expected}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out_dir")
    parser.add_argument(
        "--no-ema",
        action="store_true",
        help="keep the raw training weights instead of the EMA ones the official sampler uses",
    )
    parser.add_argument(
        "--no-retrieval", action="store_true", help="accept a plain LDM inpainting checkpoint"
    )
    parser.add_argument(
        "--config", help="a generator yaml (default: ovcamo/conf/generator/lakered.yaml)"
    )
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    cfg_path = args.config or str(CONF_DIR / "generator" / "lakered.yaml")
    config = LakeRedConfig.from_cfg(OmegaConf.load(cfg_path).model)
    try:
        sd = load_official(args.checkpoint)
        weights = convert(
            sd, config, use_ema=not args.no_ema, require_retrieval=not args.no_retrieval
        )
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    notes = provenance(sd, use_ema=not args.no_ema)
    if not args.no_ema and not notes["weights_ema"]:
        print(f"note: {args.checkpoint} has no EMA weights (model_ema.*); converted the raw ones")
    save_checkpoint(
        args.out_dir,
        weights,
        {
            "source": str(args.checkpoint),
            "config": json.dumps(config.to_json()),
            "notes": json.dumps(notes),
        },
    )
    print(f"wrote {len(weights)} tensors to {args.out_dir} ({notes['weights']})")


if __name__ == "__main__":
    main()
