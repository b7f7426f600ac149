"""Config → BaCLIP, and saving trained models (safetensors + ``config.json``; loading them:
:mod:`ovcamo.models.hub`).

Every variant of the ablation ladder is one ``ovcamo/conf/model/*.yaml`` read by :func:`build_model`;
:func:`model_config` composes one of those files outside a Hydra application.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ovcamo import CONF_DIR
from ovcamo.checkpoint import WEIGHTS_FILE, save_weights
from ovcamo.data.io import atomic_write_json
from ovcamo.models.baclip import BaCLIP
from ovcamo.models.cce import CCE
from ovcamo.models.clip_backbone import (
    CLIPBackbone,
    SimpleFeaturePyramid,
    build_clip_backbone,
    create_clip,
)
from ovcamo.models.conv_decoder import ConvDecoder
from ovcamo.models.mrem import MREM
from ovcamo.models.neck import FeatureNeck, HighResSkips, TrunkLevel, image_projection
from ovcamo.models.prompt_adapter import PromptAdapter
from ovcamo.models.sam_decoder import (
    SAM_CHECKPOINTS,
    SAM_DECODER_DIM,
    build_mask_decoder,
    build_prompt_encoder,
    load_sam_weights,
    sam_checkpoint_path,
    unused_decoder_parameters,
)

CONFIG_FILE = "config.json"
#: The frozen CLIP's weights, stored when no open_clip tag names them.
BACKBONE_FILE = "backbone.safetensors"
DECODER_TYPES = ("sam", "conv")
#: ``model.decoder.high_res_init``: the skips' projections start at zero, or PyTorch's default.
HIGH_RES_INITS = ("zero", "default")


def _as_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(dict(cfg)))


def _section(cfg: Mapping[str, Any], key: str, where: str = "model") -> dict[str, Any]:
    if key not in cfg or cfg[key] is None:
        raise KeyError(
            f"`{where}.{key}` is missing from the model config (see ovcamo/conf/model/baclip.yaml)"
        )
    return dict(cfg[key])


def _require(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise KeyError(
            f"`{where}.{key}` is missing from the model config (see ovcamo/conf/model/baclip.yaml)"
        )
    return section[key]


def build_model(
    cfg: DictConfig | Mapping[str, Any], backbone: CLIPBackbone | None = None
) -> BaCLIP:
    """Build any BaCLIP variant from its ``model`` config node.

    ``backbone`` reuses an already built frozen CLIP (it must be the one ``cfg.backbone``
    describes), e.g. to build several ladder rungs on one CLIP without loading it again.

    The node holds ``backbone`` (``name``, ``pretrained``, ``image_size``), ``dim``,
    ``sam_checkpoint`` (an official SAM file; null or ``none``: random initialisation),
    ``sam_required`` (read by the engine's checks, not here), ``sam_type`` (``vit_b|vit_l|vit_h``),
    ``neck`` (``enabled``, ``stride``, ``refine``, ``cpu_bf16``), ``decoder`` (``type: sam|conv``,
    ``dim``, ``depth``, ``mlp_dim``, ``num_heads``, ``high_res``, ``high_res_init``,
    ``image_proj``), ``mrem`` (``mode``, ``num_heads``), ``cce`` (``num_blocks``, ``reduction``,
    ``num_frequencies``, ``dct_size``), ``prompt`` (``self_attention``, ``num_heads``, ``mode``,
    ``k``, ``prompt_encoder``) and ``loss`` (keyword arguments of ``segmentation_loss``). See
    ``ovcamo/conf/model/``; ``model=baclip`` is the paper's architecture, and every addition to
    it is one of these keys (docs/baclip.md).
    """
    config = _as_dict(cfg)
    backbone_cfg = _section(config, "backbone")  # required even when a backbone is given
    if backbone is None:
        backbone = build_clip_backbone(backbone_cfg)
    decoder = _section(config, "decoder")
    loss = _section(config, "loss")
    kind = _require(decoder, "type", "model.decoder")
    if kind not in DECODER_TYPES:
        raise ValueError(f"model.decoder.type must be one of {DECODER_TYPES}, got {kind!r}")
    channels = backbone.feature_channels
    if kind == "conv":
        # Only the conv decoder reads the fine levels, which a single-scale ViT lacks.
        pyramid = SimpleFeaturePyramid(backbone.dense_channels) if backbone.is_vit else None
        if pyramid is not None:
            channels = pyramid.out_channels
        return BaCLIP(
            backbone,
            pyramid=pyramid,
            conv_decoder=ConvDecoder(channels, int(_require(decoder, "dim", "model.decoder"))),
            loss_config=loss,
            config=config,
        )

    dim = int(_require(config, "dim", "model"))
    decoder_dim = int(_require(decoder, "dim", "model.decoder"))
    sam_checkpoint = sam_checkpoint_path(config.get("sam_checkpoint"))
    sam_type = str(config.get("sam_type", "vit_b"))
    if sam_checkpoint:
        if sam_type not in SAM_CHECKPOINTS:
            raise ValueError(
                f"model.sam_type must be one of {tuple(SAM_CHECKPOINTS)}, got {sam_type!r}"
            )
        if decoder_dim != SAM_DECODER_DIM:
            raise ValueError(
                f"model.decoder.dim is {decoder_dim} but a SAM checkpoint fixes the decoder width "
                f"at {SAM_DECODER_DIM}; set model.decoder.dim={SAM_DECODER_DIM}"
            )
    neck_cfg = _section(config, "neck")
    neck_stride = int(_require(neck_cfg, "stride", "model.neck"))
    # Models saved before a key existed were built with what its default here gives: the FPN neck
    # (linear), SAM 2's default-initialised skips, the 1×1 + LayerNorm projection, and prompts
    # handed to the decoder without the prompt encoder.
    neck_enabled = bool(neck_cfg.get("enabled", True))
    neck_refine = bool(neck_cfg.get("refine", False))
    neck_bf16 = bool(neck_cfg.get("cpu_bf16", False))
    high_res = bool(_require(decoder, "high_res", "model.decoder"))
    high_res_init = str(decoder.get("high_res_init", "default"))
    if high_res_init not in HIGH_RES_INITS:
        raise ValueError(
            f"model.decoder.high_res_init must be one of {HIGH_RES_INITS}, got {high_res_init!r}"
        )
    if high_res and not neck_enabled:
        raise ValueError(
            "model.decoder.high_res=true takes the skips from the neck's finer levels: set "
            "model.neck.enabled=true, or model.decoder.high_res=false"
        )
    use_image_proj = bool(decoder.get("image_proj", True))
    if not use_image_proj and dim != decoder_dim:
        raise ValueError(
            f"model.decoder.image_proj=false hands the CCE output ({dim} channels, model.dim) to "
            f"the decoder as it is, which needs model.decoder.dim={dim} (got {decoder_dim}); set "
            "model.decoder.image_proj=true or make the two widths equal"
        )
    mrem_cfg = _section(config, "mrem")
    cce_cfg = _section(config, "cce")
    prompt_cfg = _section(config, "prompt")
    prompt_encoder = build_prompt_encoder(decoder_dim, backbone.image_size)
    mask_decoder = build_mask_decoder(
        decoder_dim,
        depth=int(_require(decoder, "depth", "model.decoder")),
        mlp_dim=int(_require(decoder, "mlp_dim", "model.decoder")),
        num_heads=int(_require(decoder, "num_heads", "model.decoder")),
    )
    report = None
    if sam_checkpoint:
        report = load_sam_weights(prompt_encoder, mask_decoder, sam_checkpoint, sam_type)
    for p in unused_decoder_parameters(mask_decoder):
        p.requires_grad_(False)
    if neck_enabled:
        neck: FeatureNeck | TrunkLevel = FeatureNeck(
            channels,
            backbone.feature_strides,
            dim,
            neck_stride,
            refine=neck_refine,
            cpu_bf16=neck_bf16,
        )
        visual_channels = dim
    else:
        neck = TrunkLevel(backbone.feature_strides, neck_stride)
        visual_channels = channels[neck.index]
    return BaCLIP(
        backbone,
        neck=neck,
        high_res=HighResSkips(dim, decoder_dim, zero_init=high_res_init == "zero")
        if high_res
        else None,
        mrem=MREM(
            visual_channels,
            backbone.embed_dim,
            dim,
            num_heads=int(_require(mrem_cfg, "num_heads", "model.mrem")),
            mode=_require(mrem_cfg, "mode", "model.mrem"),
        ),
        cce=CCE(
            dim,
            num_blocks=int(_require(cce_cfg, "num_blocks", "model.cce")),
            reduction=int(_require(cce_cfg, "reduction", "model.cce")),
            num_frequencies=int(_require(cce_cfg, "num_frequencies", "model.cce")),
            dct_size=int(_require(cce_cfg, "dct_size", "model.cce")),
        ),
        image_proj=image_projection(dim, decoder_dim) if use_image_proj else nn.Identity(),
        prompt_adapter=PromptAdapter(
            dim,
            decoder_dim,
            self_attention=bool(_require(prompt_cfg, "self_attention", "model.prompt")),
            num_heads=int(_require(prompt_cfg, "num_heads", "model.prompt")),
            mode=_require(prompt_cfg, "mode", "model.prompt"),
            k=int(_require(prompt_cfg, "k", "model.prompt")),
        ),
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        prompt_through_encoder=bool(prompt_cfg.get("prompt_encoder", False)),
        loss_config=loss,
        config=config,
        sam_load_report=report,
    )


def model_config(
    model: str = "baclip_micro", backbone: str = "micro", overrides: Sequence[str] = ()
) -> DictConfig:
    """Compose ``ovcamo/conf/model/<model>.yaml`` with ``ovcamo/conf/backbone/<backbone>.yaml`` (outside a Hydra
    app), apply Hydra ``overrides`` such as ``"backbone.pretrained=null"`` or
    ``"model.cce.num_blocks=5"``, and return the resolved ``model`` node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    args = [f"+backbone={backbone}", f"+model={model}", *overrides]
    if GlobalHydra.instance().is_initialized():
        # Inside a Hydra application: compose from its (already initialised) config search path.
        cfg = compose(overrides=args)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(overrides=args)
    node = cfg.model
    OmegaConf.resolve(node)
    return node


def backbone_is_named(backbone_cfg: Mapping[str, Any]) -> bool:
    """Whether the CLIP weights are an open_clip tag of the model, which open_clip fetches by name
    on any machine (a local file or random weights are not)."""
    import open_clip

    pretrained = backbone_cfg.get("pretrained")
    name = str(backbone_cfg.get("name", ""))
    return bool(pretrained) and str(pretrained) in open_clip.list_pretrained_tags_by_model(name)


def backbone_weights(model: BaCLIP) -> dict[str, dict[str, Tensor]]:
    """``{"backbone.safetensors": CLIP state dict}`` unless the CLIP is named by an open_clip tag:
    the part of a checkpoint that makes it load without the weights file it was trained with."""
    if backbone_is_named(model.config.get("backbone", {})):
        return {}
    return {BACKBONE_FILE: model.backbone.clip.state_dict()}


def save_model(model: BaCLIP, directory: str | os.PathLike) -> None:
    """Write ``model.safetensors`` (:meth:`BaCLIP.trainable_state_dict`), ``backbone.safetensors``
    (the frozen CLIP, unless an open_clip tag names it) and then ``config.json`` into
    ``directory``: everything :func:`ovcamo.models.load_model` needs, on any machine."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_FILE, model.trainable_state_dict())
    for name, tensors in backbone_weights(model).items():
        save_weights(directory / name, tensors)
    atomic_write_json(directory / CONFIG_FILE, model.config)


def load_backbone_file(config: Mapping[str, Any], path: str | os.PathLike) -> CLIPBackbone:
    """The frozen CLIP that ``config["backbone"]`` describes, with its weights from ``path`` (the
    ``backbone.safetensors`` a checkpoint or saved model stores)."""
    backbone_cfg = _section(config, "backbone")
    # open_clip reads the file itself, as it reads the micro CLIP's checkpoint.
    clip_model, tokenizer = create_clip(
        str(backbone_cfg["name"]), str(path), int(backbone_cfg["image_size"])
    )
    return CLIPBackbone(
        clip_model,
        tokenizer,
        int(backbone_cfg["image_size"]),
        cpu_bf16=backbone_cfg.get("cpu_bf16", False),
    )
