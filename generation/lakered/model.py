"""LAKE-RED (Zhao et al., CVPR 2024; DESIGN §7): latent background-knowledge retrieval for
camouflaged image generation, built from stock ``diffusers`` parts.

The first stage is a ``VQModel`` whose codebook is the global background knowledge; the denoiser
is a ``UNet2DModel`` over ``[z_t, condition, mask]`` (7 channels for a 3-channel latent). LAKE-RED's
own modules live here: LMP pools the foreground latent over SLIC superpixels, BKRM retrieves
background knowledge from the codebook with the pooled vectors as queries, and RCEM reasons a
background latent from it and fills the background part of the condition.

Mask convention, as in the official code: ``bg_mask`` is 1 (white) where the background is to be
generated and 0 on the object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel, VQModel
from skimage.segmentation import slic
from torch import nn


@dataclass
class LakeRedConfig:
    """Architecture of one LAKE-RED size (``conf/generator/lakered*.yaml`` ``model`` node)."""

    resolution: int = 512
    latent_channels: int = 3
    num_vq_embeddings: int = 8192
    vq_block_out_channels: tuple[int, ...] = (128, 256, 512)
    vq_layers_per_block: int = 2
    vq_norm_num_groups: int = 32
    unet_block_out_channels: tuple[int, ...] = (256, 512, 768, 1024)
    unet_down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
    )
    unet_up_block_types: tuple[str, ...] = (
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D",
    )
    unet_layers_per_block: int = 2
    unet_attention_head_dim: int = 32
    unet_norm_num_groups: int = 32
    superpixels: int = 16
    retrieval_dim: int = 64
    retrieval_heads: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg: Any) -> LakeRedConfig:
        keys = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg and k != "extra"}
        for k, v in keys.items():
            if isinstance(getattr(cls, k, None), tuple) or k.endswith(("channels", "types")):
                keys[k] = tuple(v) if not isinstance(v, (int, str)) else v
        return cls(**keys)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vq_block_out_channels) - 1)


class LMP(nn.Module):
    """Localized Masked Pooling (LAKE-RED §3.2): SLIC superpixels of the foreground latent
    (``s`` segments), each mean-pooled into one foreground vector.

    The superpixel assignment is computed without gradients (SLIC is not differentiable); the
    pooling itself is, so the retrieval learns through it.
    """

    def __init__(self, superpixels: int = 16, compactness: float = 0.1):
        super().__init__()
        self.superpixels = superpixels
        self.compactness = compactness

    def assign(self, z: np.ndarray, fg: np.ndarray) -> np.ndarray:
        """Superpixel labels ``h×w`` (0 outside ``fg``, 1…s inside) of one latent ``h×w×D``."""
        if fg.sum() == 0:
            return np.zeros(fg.shape, np.int64)
        if fg.sum() <= self.superpixels:
            labels = np.zeros(fg.shape, np.int64)
            labels[fg] = np.arange(1, int(fg.sum()) + 1)
            return labels
        labels = slic(
            z.astype(np.float64),
            n_segments=self.superpixels,
            compactness=self.compactness,
            mask=fg,
            channel_axis=-1,
            convert2lab=False,
            enforce_connectivity=False,
            start_label=1,
        )
        return np.asarray(labels, np.int64)

    def forward(self, z: torch.Tensor, fg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``B×D×h×w``, ``fg_mask`` ``B×1×h×w`` (1 on the object).

        Returns foreground vectors ``B×s×D`` and their validity ``B×s`` (bool; an object with fewer
        superpixels than ``s`` leaves the rest invalid; an empty object yields one zero vector).
        """
        b, d, h, w = z.shape
        s = self.superpixels
        fg = fg_mask[:, 0] > 0.5
        z_np = z.detach().permute(0, 2, 3, 1).float().cpu().numpy()
        fg_np = fg.cpu().numpy()
        labels = torch.from_numpy(np.stack([self.assign(z_np[i], fg_np[i]) for i in range(b)])).to(
            z.device
        )
        onehot = F.one_hot(labels.clamp(max=s).view(b, -1), s + 1)[..., 1:].to(z.dtype)  # B×hw×s
        counts = onehot.sum(1)  # B×s
        vectors = (
            torch.einsum("bns,bdn->bsd", onehot, z.view(b, d, -1)) / counts.clamp(min=1)[..., None]
        )
        valid = counts > 0
        valid[:, 0] |= ~valid.any(1)
        return vectors, valid


class BKRM(nn.Module):
    """Background Knowledge Retrieval Module (LAKE-RED §3.2): multi-head attention with the
    foreground vectors as queries and the VQ codebook (``K×D``) as keys and values."""

    def __init__(self, latent_dim: int, hidden_dim: int = 64, num_heads: int = 4):
        super().__init__()
        self.q = nn.Linear(latent_dim, hidden_dim)
        self.k = nn.Linear(latent_dim, hidden_dim)
        self.v = nn.Linear(latent_dim, hidden_dim)
        self.attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.out = nn.Linear(hidden_dim, latent_dim)

    def forward(self, fg_vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """``fg_vectors`` ``B×s×D``, ``codebook`` ``K×D`` → retrieved knowledge ``B×s×D``."""
        b = fg_vectors.shape[0]
        book = codebook.detach()[None].expand(b, -1, -1)
        retrieved, _ = self.attn(self.q(fg_vectors), self.k(book), self.v(book), need_weights=False)
        return self.out(retrieved)


class RCEM(nn.Module):
    """Reasoning-driven Condition Enhancement Module (LAKE-RED §3.3).

    Every latent position attends to the retrieved knowledge; the result is fused with the masked
    latent into a background latent ``z_rec``, which fills the background part of the condition.
    Trained with the background reconstruction loss ``‖z_rec·m − z₀·m‖²``.
    """

    def __init__(self, latent_dim: int, hidden_dim: int = 64, num_heads: int = 4):
        super().__init__()
        groups = min(8, hidden_dim)
        self.encode = nn.Sequential(
            nn.Conv2d(latent_dim + 1, hidden_dim, 3, padding=1),
            nn.GroupNorm(groups, hidden_dim),
            nn.SiLU(),
        )
        self.kv = nn.Linear(latent_dim, hidden_dim)
        self.attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * hidden_dim, hidden_dim, 3, padding=1),
            nn.GroupNorm(groups, hidden_dim),
            nn.SiLU(),
            nn.Conv2d(hidden_dim, latent_dim, 3, padding=1),
        )

    def forward(
        self,
        z_masked: torch.Tensor,
        bg_mask: torch.Tensor,
        knowledge: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_masked`` ``B×D×h×w`` (latent of the image with its background removed), ``bg_mask``
        ``B×1×h×w``, ``knowledge`` ``B×s×D``, ``valid`` ``B×s``.

        Returns ``(z_rec, condition)``, both ``B×D×h×w``; ``condition`` equals ``z_masked`` on the
        object and ``z_rec`` on the background.
        """
        b, _, h, w = z_masked.shape
        feat = self.encode(torch.cat([z_masked, bg_mask], 1))
        tokens = feat.flatten(2).transpose(1, 2)
        kv = self.kv(knowledge)
        attended, _ = self.attn(tokens, kv, kv, key_padding_mask=~valid, need_weights=False)
        attended = attended.transpose(1, 2).reshape(b, -1, h, w)
        z_rec = self.fuse(torch.cat([feat, attended], 1))
        condition = z_masked * (1 - bg_mask) + z_rec * bg_mask
        return z_rec, condition


def background_reconstruction_loss(
    z_rec: torch.Tensor, z0: torch.Tensor, bg_mask: torch.Tensor
) -> torch.Tensor:
    """``‖z_rec·m − z₀·m‖²`` averaged over background latent elements (LAKE-RED Eq. 7)."""
    diff = (z_rec - z0) * bg_mask
    return diff.pow(2).sum() / (bg_mask.sum() * z0.shape[1]).clamp(min=1)


class LakeRed(nn.Module):
    """The trainable whole: ``vqvae`` (first stage), ``unet`` (denoiser), ``lmp``, ``bkrm``, ``rcem``.

    Its ``state_dict`` (keys ``vqvae.*``, ``unet.*``, ``bkrm.*``, ``rcem.*``) is the checkpoint
    format; ``convert.py`` maps the official LDM/LAKE-RED checkpoints onto it.
    """

    def __init__(self, config: LakeRedConfig):
        super().__init__()
        self.config = config
        n = len(config.vq_block_out_channels)
        self.vqvae = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(config.vq_block_out_channels),
            layers_per_block=config.vq_layers_per_block,
            latent_channels=config.latent_channels,
            num_vq_embeddings=config.num_vq_embeddings,
            vq_embed_dim=config.latent_channels,
            norm_num_groups=config.vq_norm_num_groups,
            sample_size=config.resolution,
        )
        d = config.latent_channels
        self.unet = UNet2DModel(
            sample_size=config.latent_size,
            in_channels=2 * d + 1,
            out_channels=d,
            down_block_types=tuple(config.unet_down_block_types),
            up_block_types=tuple(config.unet_up_block_types),
            block_out_channels=tuple(config.unet_block_out_channels),
            layers_per_block=config.unet_layers_per_block,
            attention_head_dim=config.unet_attention_head_dim,
            norm_num_groups=config.unet_norm_num_groups,
        )
        self.lmp = LMP(config.superpixels)
        self.bkrm = BKRM(d, config.retrieval_dim, config.retrieval_heads)
        self.rcem = RCEM(d, config.retrieval_dim, config.retrieval_heads)

    @property
    def codebook(self) -> torch.Tensor:
        """The VQ codebook ``K×D``: LAKE-RED's global background knowledge."""
        return self.vqvae.quantize.embedding.weight

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [−1, 1] → pre-quantisation latent ``B×D×H/f×W/f``."""
        return self.vqvae.encode(image).latents

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``B×D×h×w`` → image ``B×3×H×W`` (through the codebook, as in LDM)."""
        return self.vqvae.decode(z).sample

    def condition(
        self, image: torch.Tensor, bg_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Build the denoiser's condition from an image and its background mask.

        ``image`` ``B×3×H×W`` in [−1, 1], ``bg_mask`` ``B×1×H×W`` (1 = background to generate).
        Returns ``(condition B×D×h×w, latent mask B×1×h×w, z_rec B×D×h×w)``.
        """
        z_masked = self.encode(image * (1 - bg_mask))
        m = F.interpolate(bg_mask, size=z_masked.shape[-2:], mode="nearest")
        fg_vectors, valid = self.lmp(z_masked, 1 - m)
        knowledge = self.bkrm(fg_vectors, self.codebook)
        z_rec, cond = self.rcem(z_masked, m, knowledge, valid)
        return cond, m, z_rec

    def denoise(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        """Noise prediction ``B×D×h×w`` from ``[z_t, condition, mask]``."""
        return self.unet(torch.cat([z_t, cond, m], 1), t).sample
