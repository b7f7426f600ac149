"""Stable Diffusion parts for the diffusers generators: loaded from a local folder, or built tiny.

The paper settings load a Stable Diffusion folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) with ``from_pretrained(<local dir>)``. The micro settings build the
same classes from small configs; the tokenizer is always CLIP's own BPE, derived from the vocabulary
file open_clip ships, so token ids match the real CLIP tokenizer byte for byte. :class:`SDParts`
holds one generator's set and wires it into a stock diffusers pipeline.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

#: Where each part lives inside a Stable Diffusion folder, and the class that loads it.
SD_SUBFOLDERS = {
    "unet": UNet2DConditionModel,
    "vae": AutoencoderKL,
    "text_encoder": CLIPTextModel,
    "tokenizer": CLIPTokenizer,
    "scheduler": DDIMScheduler,
}

#: CLIP's BPE: 49152 vocabulary entries minus the 256 byte tokens and the version line.
_N_MERGES = 49152 - 256 - 2


class MissingWeightsError(FileNotFoundError):
    """A local weight folder the config names is absent or incomplete."""


@lru_cache(maxsize=1)
def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIP's tokenizer built from open_clip's bundled BPE file (no download).

    Vocabulary and merges are derived exactly as CLIP derives them (byte tokens, their
    ``</w>`` forms, one entry per merge, then the two special tokens), so ids equal
    ``open_clip.tokenizer.SimpleTokenizer`` and the Stable Diffusion ``tokenizer/`` folders.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=merges,
        model_max_length=model_max_length,
    )


#: The file that marks each part's subfolder of a Stable Diffusion folder as present.
_MARKERS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}


def missing_parts(directory: str | os.PathLike) -> list[str]:
    """The parts of the Stable Diffusion layout ``directory`` lacks (all five if it is absent)."""
    root = Path(os.path.expanduser(str(directory)))
    return [name for name, marker in _MARKERS.items() if not (root / name / marker).is_file()]


def download_hint(repo: str, directory: str | os.PathLike, name: str) -> str:
    """How to get a Stable Diffusion model from the hub onto this machine, or do without it."""
    return (
        f"Download {repo} on a machine with internet access (`huggingface-cli download {repo} "
        f"--local-dir {directory}`) and copy the folder here; or use generator={name}_micro, "
        f"which builds and trains its own small parts."
    )


def sd_folder_problem(key: str, directory: str | os.PathLike, holds: str, how: str) -> str | None:
    """``None`` when ``directory`` is a complete Stable Diffusion folder, else one paragraph:
    the config ``key``, the folder and what it lacks, what it should hold, and ``how`` to get or
    make it."""
    root = Path(os.path.expanduser(str(directory)))
    missing = missing_parts(root)
    if not missing:
        return None
    state = (
        "does not exist" if not root.is_dir() else "lacks " + ", ".join(f"{m}/" for m in missing)
    )
    return (
        f"{key}: {root} {state}; it should hold {holds}, a Stable Diffusion folder in the "
        f"diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/) read from local "
        f"disk (nothing is downloaded). {how}"
    )


def from_local(kind: str, directory: str | os.PathLike) -> Any:
    """Load one Stable Diffusion part (a key of :data:`SD_SUBFOLDERS`) with ``from_pretrained``
    from a local folder only; a missing part raises :class:`MissingWeightsError`, never a hub
    stack trace."""
    root = Path(os.path.expanduser(str(directory)))
    if kind in missing_parts(root):
        raise MissingWeightsError(
            f"The {kind} weights were not found at {root / kind}: this generator loads a Stable "
            f"Diffusion folder in the diffusers layout (subfolders unet/, vae/, text_encoder/, "
            f"tokenizer/, scheduler/) from local disk and never downloads."
        )
    return SD_SUBFOLDERS[kind].from_pretrained(str(root), subfolder=kind, local_files_only=True)


def tiny_vae(cfg: Mapping[str, Any]) -> AutoencoderKL:
    """An ``AutoencoderKL`` with ``len(block_out_channels) − 1`` downsamplings."""
    channels = tuple(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        latent_channels=int(cfg.get("latent_channels", 4)),
        norm_num_groups=int(cfg.get("norm_num_groups", 8)),
        sample_size=int(cfg.get("sample_size", 64)),
        scaling_factor=float(cfg.get("scaling_factor", 1.0)),
    )


def tiny_unet(cfg: Mapping[str, Any], in_channels: int, cross_attention_dim: int):
    """A ``UNet2DConditionModel`` with cross-attention in every block (the SD 1.5 layout, small)."""
    channels = tuple(cfg["block_out_channels"])
    return UNet2DConditionModel(
        sample_size=int(cfg.get("sample_size", 16)),
        in_channels=in_channels,
        out_channels=int(cfg.get("out_channels", 4)),
        down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
        block_out_channels=channels,
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=int(cfg.get("attention_head_dim", 4)),
        norm_num_groups=int(cfg.get("norm_num_groups", 8)),
    )


def tiny_text_encoder(cfg: Mapping[str, Any], seed: int = 0) -> CLIPTextModel:
    """A small ``CLIPTextModel`` over CLIP's full BPE vocabulary, seeded so it is reproducible.

    It stays frozen, as Stable Diffusion's text encoder does; the UNet learns to read it.
    """
    config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer()),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg.get("intermediate_size", 4 * int(cfg["hidden_size"]))),
        num_hidden_layers=int(cfg.get("num_hidden_layers", 2)),
        num_attention_heads=int(cfg.get("num_attention_heads", 4)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 77)),
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    return model.eval().requires_grad_(False)


def sd_noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion 1.x/2-inpainting training noise schedule (scaled-linear β, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
    )


def pick_device(device: Any = None) -> torch.device:
    """``device`` as a torch device; ``None`` or ``"auto"``: CUDA when present, else the CPU."""
    if device not in (None, "auto"):
        return torch.device(str(device))
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: ``sampler.dtype`` values and the dtype each names (``auto``: fp16 on CUDA).
SAMPLING_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def sampling_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype:
    """The dtype a generator config's pipeline samples in: ``sampler.dtype`` (``auto``, the
    default, is fp16 on CUDA) on a GPU, fp32 on the CPU whatever is asked (half precision there
    is slow and not supported by every kernel)."""
    name = str(cfg.get("sampler", {}).get("dtype", "auto"))
    if name != "auto" and name not in SAMPLING_DTYPES:
        raise ValueError(f"generator.sampler.dtype must be auto, fp16, bf16 or fp32, got {name!r}")
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.float16 if name == "auto" else SAMPLING_DTYPES[name]


def vae_scale(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along each side (8 for Stable Diffusion's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@dataclass
class SDParts:
    """One generator's Stable Diffusion parts and the square resolution they work at.

    ``scheduler`` is whatever the folder or the micro training saved; samplers run DDIM with its
    configuration, trainers the DDPM forward process with the same betas. ``source`` is the folder
    the parts were loaded from (a Stable Diffusion folder or a micro model's cache folder), where
    a generator also finds its own extra parts; ``None`` for parts not saved yet.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: Any
    resolution: int
    source: Path | None = None

    @property
    def vae_scale(self) -> int:
        return vae_scale(self.vae)

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule of these parts."""
        return DDPMScheduler.from_config(self.scheduler.config)

    def pipeline(
        self, cls: type, device: torch.device, dtype: torch.dtype = torch.float32, **extra: Any
    ) -> Any:
        """A stock diffusers pipeline ``cls`` over these parts (DDIM sampling, no safety checker,
        no progress bar), moved to ``device`` and cast to ``dtype`` (:func:`sampling_dtype`);
        ``extra`` adds parts such as ``controlnet``."""
        pipe = cls(
            unet=self.unet,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **extra,
        ).to(device)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save(
        self, directory: str | os.PathLike, names: tuple[str, ...] = tuple(SD_SUBFOLDERS)
    ) -> None:
        """Write the parts ``names`` (all five by default: a Stable Diffusion folder that
        :func:`local_parts` loads) with ``save_pretrained``."""
        root = Path(directory)
        for name in names:
            getattr(self, name).save_pretrained(root / name)


def local_parts(directory: str | os.PathLike, resolution: int, device: Any = None) -> SDParts:
    """The five parts of a local Stable Diffusion folder (:func:`from_local`, never a download)."""
    root = Path(os.path.expanduser(str(directory)))
    parts = {name: from_local(name, root) for name in SD_SUBFOLDERS}
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = parts[name].to(pick_device(device))
    return SDParts(**parts, resolution=int(resolution), source=root)


def generator_parts(
    cfg: Mapping[str, Any],
    data: Any,
    cache_dir: Any,
    device: Any,
    train_micro: Callable[[Mapping[str, Any], Any, Any, torch.device], SDParts],
) -> SDParts:
    """The parts a generator config names: the local Stable Diffusion folder ``pretrained`` (at
    ``resolution``), or, with ``pretrained: null``, the micro parts ``train_micro(cfg, data,
    cache_dir, device)`` trains on the dataset ``data`` on first use and caches. Weights a paper
    config names and lacks raise :class:`MissingWeightsError` before anything is loaded."""
    from generation.base import missing_weights

    dev = pick_device(device)
    if cfg.get("pretrained"):
        problems = missing_weights(cfg)
        if problems:
            raise MissingWeightsError(" ".join(problems))
        return local_parts(cfg["pretrained"], int(cfg.get("resolution", 512)), dev)
    if data is None:
        raise ValueError(
            f"the micro {cfg.get('name')} generator trains on a dataset: pass data=DataPaths"
        )
    return train_micro(cfg, data, cache_dir, dev)
