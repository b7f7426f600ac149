"""LAKE-RED (Zhao et al., CVPR 2024): latent background-knowledge retrieval for camouflaged
image generation, built from stock ``diffusers`` parts.

The first stage is a ``VQModel`` whose codebook is the global background knowledge; the denoiser
is a ``UNet2DModel`` over ``[z_t, condition, mask]`` (7 channels for a 3-channel latent), laid out
as LDM's ``inpainting_big`` UNet (resblock up/down sampling, 8 heads). LAKE-RED's own modules
live here, shaped as in the official release so its weights convert one to one: LMP pools the
foreground latent over SLIC superpixels, BKRM retrieves background knowledge from the codebook
with the pooled vectors as queries, and RCEM lays the retrieved vectors over the latent grid,
fuses them with the masked latent and fills the background part of the condition.

Input conventions, as in the official code (one path for every model size, see
:func:`prepare_inputs`): the image, the mask and the masked image are all mapped ``x·2 − 1``, so
the mask is ``+1`` where the background is to be generated and ``−1`` on the object, and the
masked image is ``−1`` (black) on the background. The condition blend and the reconstruction loss
follow from those values (:class:`RCEM`, :func:`background_reconstruction_loss`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel, VQModel
from diffusers.models.attention_processor import Attention
from PIL import Image
from skimage.segmentation import slic
from torch import nn


@dataclass
class LakeRedConfig:
    """Architecture of one LAKE-RED size (``ovcamo/conf/generator/lakered*.yaml`` ``model`` node)."""

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
    unet_num_heads: int | None = 8
    resblock_updown: bool = True
    vq_mid_attention: bool = False
    superpixels: int = 16
    superpixel_sigma: float = 5.0
    retrieval_heads: int = 8
    retrieval_head_dim: int = 64
    retrieval_mlp_hidden: int = 6
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
    """Localized Masked Pooling (LAKE-RED §3.2): SLIC superpixels (``s`` segments) of the
    foreground latent, each mean-pooled into one foreground vector.

    As in the official code, SLIC runs on the float32 latent restricted to the object, and only
    segment labels ``1…s`` are pooled: a segment SLIC does not produce, or one numbered beyond
    ``s``, gives no vector (a zero row), so the output always has ``s`` rows. The assignment is
    computed without gradients (SLIC is not differentiable); the pooling is differentiable.
    """

    def __init__(self, superpixels: int = 16, sigma: float = 5.0):
        super().__init__()
        self.superpixels = superpixels
        self.sigma = sigma

    def assign(self, z: np.ndarray, fg: np.ndarray) -> np.ndarray:
        """Superpixel labels ``h×w`` (0 outside ``fg``, 1… inside) of one latent ``h×w×D``."""
        n_fg = int(fg.sum())
        if n_fg == 0:
            return np.zeros(fg.shape, np.int64)
        if n_fg <= self.superpixels:
            labels = np.zeros(fg.shape, np.int64)
            labels[fg] = np.arange(1, n_fg + 1)
            return labels
        return np.asarray(
            slic(z.astype(np.float32), n_segments=self.superpixels, sigma=self.sigma, mask=fg),
            np.int64,
        )

    def forward(self, z: torch.Tensor, fg_mask: torch.Tensor) -> torch.Tensor:
        """``z`` ``B×D×h×w``, ``fg_mask`` ``B×1×h×w`` (true on the object) → vectors ``B×s×D``."""
        b, d = z.shape[:2]
        s = self.superpixels
        fg = (fg_mask[:, 0] > 0.5).cpu().numpy()
        z_np = z.detach().permute(0, 2, 3, 1).float().cpu().numpy()
        labels = torch.from_numpy(np.stack([self.assign(z_np[i], fg[i]) for i in range(b)]))
        labels = labels.to(z.device).view(b, -1)
        labels = torch.where(labels > s, 0, labels)
        onehot = F.one_hot(labels, s + 1)[..., 1:].to(z.dtype)  # B×hw×s
        sums = torch.einsum("bns,bdn->bsd", onehot, z.reshape(b, d, -1))
        return sums / onehot.sum(1).clamp(min=1)[..., None]


class Mlp(nn.Module):
    """Two linear layers with tanh-approximated GELU (the official ``mlp_in``/``mlp_out``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class BKRM(nn.Module):
    """Background Knowledge Retrieval Module (LAKE-RED §3.2): multi-head cross-attention with the
    foreground vectors (through ``mlp_in``) as queries and the codebook (``K×D``) as keys and
    values, then ``mlp_out``.

    ``knowledge`` holds the codebook the module retrieves from: the VQ codebook, copied in when
    the first stage is ready (the official checkpoints store their own copy).
    """

    def __init__(
        self,
        latent_dim: int,
        num_embeddings: int,
        mlp_hidden: int = 6,
        heads: int = 8,
        head_dim: int = 64,
    ):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.mlp_in = Mlp(latent_dim, mlp_hidden)
        self.to_q = nn.Linear(latent_dim, inner, bias=False)
        self.to_k = nn.Linear(latent_dim, inner, bias=False)
        self.to_v = nn.Linear(latent_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, latent_dim)
        self.mlp_out = Mlp(latent_dim, mlp_hidden)
        self.register_buffer("knowledge", torch.randn(num_embeddings, latent_dim))

    def forward(self, fg_vectors: torch.Tensor) -> torch.Tensor:
        """``fg_vectors`` ``B×s×D`` → retrieved background vectors ``B×s×D``."""
        b = fg_vectors.shape[0]
        book = self.knowledge[None].expand(b, -1, -1)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], self.heads, -1).transpose(1, 2)

        q = heads(self.to_q(self.mlp_in(fg_vectors)))
        k, v = heads(self.to_k(book)), heads(self.to_v(book))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], -1)
        return self.mlp_out(self.to_out(out))


class RCEM(nn.Module):
    """Reasoning-driven Condition Enhancement Module (LAKE-RED §3.3).

    The retrieved vectors are laid out over the latent grid and fused with the masked latent by a
    1×1 convolution into the background latent ``z_rec``, which the official blend
    ``z_masked·(1 − m) + z_rec·m`` with the ±1 mask ``m`` puts into the condition: ``z_rec`` on
    the background (``m = +1``) and ``2·z_masked − z_rec`` on the object (``m = −1``).
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.fuse = nn.Conv2d(2 * latent_dim, latent_dim, kernel_size=1)

    def forward(
        self, z_masked: torch.Tensor, mask: torch.Tensor, knowledge: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``z_masked`` ``B×D×h×w`` (latent of the masked image), ``mask`` ``B×1×h×w`` in
        {−1, +1}, ``knowledge`` ``B×s×D``. Returns ``(z_rec, condition)``, both ``B×D×h×w``."""
        s = knowledge.shape[1]
        grid = knowledge.transpose(1, 2)[..., None].expand(-1, -1, -1, s)
        grid = F.interpolate(grid, size=z_masked.shape[-2:], mode="nearest")
        z_rec = self.fuse(torch.cat([grid, z_masked], 1))
        return z_rec, z_masked * (1 - mask) + z_rec * mask


def background_reconstruction_loss(
    condition: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``‖c·m − z₀·m‖²`` averaged over latent elements, with ``c`` the blended condition and ``m``
    the ±1 mask (the official ``l2`` background reconstruction loss).

    With ``m² = 1`` this is the squared error of the whole condition against ``z₀``: the
    background part trains ``z_rec`` to be the background latent, the object part trains
    ``2·z_masked − z_rec`` to stay the object latent.
    """
    return F.mse_loss(condition * mask, z0 * mask)


def prepare_inputs(
    image: np.ndarray, object_mask: np.ndarray, resolution: int, dilation: int = 0
) -> dict[str, torch.Tensor]:
    """The official model inputs from a uint8 ``H×W×3`` image and its bool ``H×W`` object mask.

    The image goes to ``resolution`` (bicubic); the background mask too (bicubic, then ≥ 0.1 is
    background, as the official loaders threshold it); the masked image is the image with its
    background set to 0; then all three are mapped ``x·2 − 1``. ``dilation > 0`` (inference) takes
    the denoiser's mask from the background mask dilated at the source size with a
    ``dilation×dilation`` kernel, as the official test script does; the model resizes it to the
    latent grid. Returns ``image`` and ``masked_image`` ``3×R×R`` in [−1, 1] and ``mask``
    ``1×R×R`` (``1×H×W`` with dilation) in {−1, +1}.
    """
    size = (resolution, resolution)
    x = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC), np.float32) / 255.0
    background = (~object_mask.astype(bool)).astype(np.uint8) * 255
    bg = np.asarray(Image.fromarray(background).resize(size, Image.BICUBIC), np.float32)
    bg = (bg / 255.0 >= 0.1).astype(np.float32)[..., None]
    if dilation > 0:
        kernel = np.ones((dilation, dilation), np.uint8)
        mask = (cv2.dilate(background, kernel, iterations=1) / 255.0 >= 0.1).astype(np.float32)
    else:
        mask = bg[..., 0]
    return {
        "image": torch.from_numpy(x).permute(2, 0, 1) * 2 - 1,
        "masked_image": torch.from_numpy((1 - bg) * x).permute(2, 0, 1) * 2 - 1,
        "mask": torch.from_numpy(mask)[None] * 2 - 1,
    }


#: Plain diffusers blocks resample with convolutions; with ``resblock_updown`` (LDM) they resample
#: with a ResNet block, which these block types do.
_RESNET_UPDOWN = {"DownBlock2D": "ResnetDownsampleBlock2D", "UpBlock2D": "ResnetUpsampleBlock2D"}


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
            mid_block_add_attention=config.vq_mid_attention,
        )
        d = config.latent_channels
        self.unet = UNet2DModel(
            sample_size=config.latent_size,
            in_channels=2 * d + 1,
            out_channels=d,
            down_block_types=tuple(
                _RESNET_UPDOWN.get(t, t) if config.resblock_updown else t
                for t in config.unet_down_block_types
            ),
            up_block_types=tuple(
                _RESNET_UPDOWN.get(t, t) if config.resblock_updown else t
                for t in config.unet_up_block_types
            ),
            block_out_channels=tuple(config.unet_block_out_channels),
            layers_per_block=config.unet_layers_per_block,
            attention_head_dim=config.unet_attention_head_dim,
            norm_num_groups=config.unet_norm_num_groups,
            downsample_type="resnet" if config.resblock_updown else "conv",
            upsample_type="resnet" if config.resblock_updown else "conv",
        )
        if config.unet_num_heads:
            # LDM's UNet fixes the number of heads (8), not their width; UNet2DModel only takes a
            # width, so the head count is set on each attention layer after building.
            for module in self.unet.modules():
                if isinstance(module, Attention):
                    module.heads = config.unet_num_heads
                    module.scale = (module.inner_dim // config.unet_num_heads) ** -0.5
        self.lmp = LMP(config.superpixels, config.superpixel_sigma)
        self.bkrm = BKRM(
            d,
            config.num_vq_embeddings,
            config.retrieval_mlp_hidden,
            config.retrieval_heads,
            config.retrieval_head_dim,
        )
        self.rcem = RCEM(d)
        # LDM's scale_factor: the first stage's latents are multiplied by it (1 for the official
        # weights; 1/std of the latents for a first stage trained here, LDM's scale_by_std).
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def codebook(self) -> torch.Tensor:
        """The VQ codebook ``K×D``: LAKE-RED's global background knowledge."""
        return self.vqvae.quantize.embedding.weight

    @torch.no_grad()
    def load_knowledge_from_codebook(self) -> None:
        """Copy the (trained) VQ codebook, in the scaled latent space, into BKRM's retrieval
        memory (the official ``combine.py`` step, whose scale is 1)."""
        self.bkrm.knowledge.copy_(self.codebook * self.scale_factor)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [−1, 1] → pre-quantisation latent ``B×D×H/f×W/f`` times
        ``scale_factor``: the space of both the condition and the diffusion target."""
        return self.vqvae.encode(image).latents * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``B×D×h×w`` → image ``B×3×H×W`` (through the codebook, as in LDM)."""
        return self.vqvae.decode(z / self.scale_factor).sample

    @torch.no_grad()
    def scale_latents_by_std(self, images: torch.Tensor) -> float:
        """Set ``scale_factor`` to ``1/std`` of the latents of ``images`` (LDM's scale_by_std),
        so the diffusion sees unit-variance latents. Returns the factor."""
        self.scale_factor.fill_(1.0)
        self.scale_factor.fill_(1.0 / float(self.encode(images).std()))
        return float(self.scale_factor)

    def condition(
        self, masked_image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The denoiser's condition, as the official model builds it.

        ``masked_image`` ``B×3×H×W`` in [−1, 1] (−1 on the background), ``mask`` ``B×1×H'×W'`` in
        {−1, +1} (+1 = background to generate; any size, nearest-resized to the latent grid).
        Returns ``(condition B×D×h×w, latent mask B×1×h×w in {−1, +1}, z_rec B×D×h×w)``. In eval
        mode a sample whose object vanishes on the latent grid keeps the plain masked latent as
        its condition (no retrieval), as the official sampler does.
        """
        z_masked = self.encode(masked_image)
        m = F.interpolate(mask, size=z_masked.shape[-2:], mode="nearest")
        fg = m < 0
        knowledge = self.bkrm(self.lmp(z_masked, fg))
        z_rec, cond = self.rcem(z_masked, m, knowledge)
        if not self.training:
            has_object = fg.flatten(1).any(1)[:, None, None, None]
            cond = torch.where(has_object, cond, z_masked)
        return cond, m, z_rec

    def denoise(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        """Noise prediction ``B×D×h×w`` from ``[z_t, condition, mask]`` (the UNet's 7 channels)."""
        return self.unet(self.unet_input(z_t, cond, m), t).sample

    @staticmethod
    def unet_input(z_t: torch.Tensor, cond: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``[z_t, condition, mask]`` concatenated on channels: ``B×(2D+1)×h×w``."""
        return torch.cat([z_t, cond, m], 1)
