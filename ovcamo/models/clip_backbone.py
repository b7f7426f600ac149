"""The frozen CLIP backbone of BaCLIP: multi-scale trunk features, the dense pre-head map, CLIP's
own image embedding, its pooling restricted to a soft region (docs/fidelity.md), and the
CamoPrompts class embeddings, cached per class list."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from ovcamo.models.camo_prompts import class_text_embeddings

#: Value of ``backbone.pretrained`` that the micro-world engine replaces by its checkpoint path.
MICRO_PLACEHOLDER = "micro"


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights named by a config are not on this machine and cannot be fetched."""


@dataclass
class BackboneFeatures:
    """What the frozen CLIP image tower gives the decoder and the classifier.

    ``features``: four maps at strides ≈4, 8, 16, 32 (ConvNeXt: the stem's output concatenated with
    the first stage's, then stages 2-4). A ViT is single-scale: its
    token map (stride p) fills the first three places and its 2× max-pool the last; the conv
    decoder gets a trainable simple feature pyramid instead (:class:`SimpleFeaturePyramid`).
    ``dense``: the pre-head map ``B×C_d×h×w`` (a ViT's patch tokens after ``ln_post``).
    ``embedding``: CLIP's own image embedding ``B×D``, before L2 normalisation: what
    ``encode_image`` returns, pooled the model's own way (ConvNeXt: global average pooling and the
    head; ViT: the class token after ``ln_post`` and the projection).
    ``last_block_input``: a ViT's tokens ``B×(1+N)×C`` (class token first) entering its last
    transformer block, which :meth:`CLIPBackbone.pool` reruns with a region mask; ``None`` for a
    ConvNeXt.
    """

    features: list[Tensor]
    dense: Tensor
    embedding: Tensor
    last_block_input: Tensor | None = None


def _weights_message(name: str, pretrained: str, reason: str) -> str:
    hub = (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("hf_hub", "")
    where = (
        f"the file `open_clip_pytorch_model.bin` (or `open_clip_model.safetensors`) from the "
        f"Hugging Face repository `{hub.rstrip('/')}`"
        if hub
        else f"the open_clip checkpoint of `{name}` / `{pretrained}`"
    )
    return (
        f"Could not load CLIP weights for model `{name}` with pretrained=`{pretrained}`: {reason}. "
        f"Download {where} on a machine with internet access, copy it here and set "
        f"`backbone.pretrained=/path/to/that/file`; or set `backbone.pretrained=null` for random "
        f"weights (tests and benchmarks only)."
    )


def resolve_pretrained(name: str, pretrained: str | os.PathLike | None) -> str | None:
    """Check ``pretrained`` (open_clip tag, local file or ``None``) before any hub client runs.

    Raises :class:`WeightsNotFoundError` with one readable paragraph for a missing file, an unknown
    tag, or the unresolved micro placeholder.
    """
    if pretrained is None or str(pretrained) == "":
        return None
    pretrained = str(pretrained)
    if pretrained == MICRO_PLACEHOLDER:
        raise WeightsNotFoundError(
            "backbone.pretrained is still the placeholder `micro`: the micro-world engine replaces "
            "it by the path of the trained micro CLIP checkpoint before the model is built. Run "
            "`ovcamo-micro-clip` (or build the model through the training entry point), or pass "
            "the checkpoint path explicitly as backbone.pretrained=/path/to/micro_clip.pt."
        )
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        return pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path)
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
    raise WeightsNotFoundError(
        _weights_message(
            name,
            pretrained,
            f"no such file `{path}`, and it is not an open_clip tag of this model (tags: {tags})",
        )
    )


def create_clip(
    name: str, pretrained: str | None, image_size: int | None = None
) -> tuple[nn.Module, Any]:
    """``open_clip.create_model`` + tokenizer, with hub failures turned into one clear message."""
    resolved = resolve_pretrained(name, pretrained)
    kwargs: dict[str, Any] = {"pretrained": resolved}
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    try:
        model = open_clip.create_model(name, **kwargs)
    except Exception as err:
        if resolved is None or Path(resolved).is_file():
            raise
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsNotFoundError(
            _weights_message(name, resolved, f"the download failed ({first_line})")
        ) from None
    return model, _tokenizer(name)


def native_cpu_bf16() -> bool:
    """Whether this processor computes bf16 natively (oneDNN's AVX-512 BF16 / AMX check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str) -> Any:
    # Tokenizers are stateless; parsing the BPE vocabulary is the slow part of building one.
    return open_clip.get_tokenizer(name)


class CLIPBackbone(nn.Module):
    """A frozen open_clip model (ConvNeXt or ViT image tower) seen as a segmentation backbone.

    Args:
        clip_model: an ``open_clip`` ``CLIP`` model; its parameters are frozen here.
        tokenizer: the matching open_clip tokenizer.
        image_size: the side a ViT is run at (its position embeddings are fixed); ConvNeXt runs at
            the input size.
        cpu_bf16: on CPU, run the frozen tower under bf16 autocast when the processor computes
            bf16 natively (AVX-512 BF16 or AMX; else it stays in fp32) and hand fp32 maps on. The
            micro-world's choice: the tower is 30 % of a CPU training step and bf16 halves it.
            On CUDA the caller's autocast decides, as for the rest of the model.
    """

    def __init__(
        self, clip_model: nn.Module, tokenizer: Any, image_size: int, *, cpu_bf16: bool = False
    ) -> None:
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.cpu_bf16 = bool(cpu_bf16) and native_cpu_bf16()
        self.is_vit = isinstance(clip_model.visual, VisionTransformer)
        if self.is_vit:
            visual = clip_model.visual
            if visual.attn_pool is not None or visual.pool_type != "tok":
                raise ValueError(
                    "only ViT towers that pool their class token (open_clip pool_type='tok', no "
                    "attentional pooling) are supported as backbones"
                )
            if len(visual.transformer.resblocks) < 2:
                raise ValueError("a ViT backbone needs at least 2 transformer blocks")
        mean, std = self._mean_std(clip_model)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        self._text_cache: dict[tuple[str, ...], Tensor] = {}
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, self.image_size, self.image_size))
        self.feature_channels = [f.shape[1] for f in probe.features]
        self.feature_strides = [self.image_size / f.shape[-1] for f in probe.features]
        self.dense_channels = probe.dense.shape[1]
        self.embed_dim = int(probe.embedding.shape[1])

    @staticmethod
    def _mean_std(clip_model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
        cfg = getattr(clip_model.visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        return tuple(mean), tuple(std)

    def train(self, mode: bool = True) -> CLIPBackbone:
        """Always stays in eval mode: CLIP is frozen (its dropout/drop-path must stay off)."""
        return super().train(False)

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned temperature, ``exp(logit_scale)``, a 0-d tensor."""
        return self.clip.logit_scale.exp()

    def normalize(self, images: Tensor) -> Tensor:
        """``B×3×H×W`` in [0, 1] → CLIP-normalised (and resized to ``image_size`` for a ViT)."""
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        if self.is_vit and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return x

    @torch.no_grad()
    def forward(self, images: Tensor) -> BackboneFeatures:
        """Run the frozen image tower without autograd.

        Args:
            images: ``B×3×H×W`` float in [0, 1].
        Returns:
            :class:`BackboneFeatures`: four trunk maps, the dense pre-head map, CLIP's own image
            embedding and (ViT) the tokens entering the last block.
        """
        if not (self.cpu_bf16 and images.device.type == "cpu"):
            return self._forward(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = self._forward(images)
        return BackboneFeatures(
            features=[f.to(images.dtype) for f in feats.features],
            dense=feats.dense.to(images.dtype),
            embedding=feats.embedding.to(images.dtype),
            last_block_input=None
            if feats.last_block_input is None
            else feats.last_block_input.to(images.dtype),
        )

    def _forward(self, images: Tensor) -> BackboneFeatures:
        x = self.normalize(images)
        visual = self.clip.visual
        if self.is_vit:
            depth = len(visual.transformer.resblocks)
            out = visual.forward_intermediates(
                x, indices=[depth - 2, depth - 1], output_fmt="NLC", output_extra_tokens=True
            )
            (before, last), (cls_before, _) = (
                out["image_intermediates"],
                out["image_intermediates_prefix"],
            )
            h, w = visual.grid_size
            # ln_post per token, as CLIP applies it to the class token before projecting it.
            dense = visual.ln_post(last).transpose(1, 2).reshape(x.shape[0], -1, h, w)
            coarse = F.max_pool2d(dense, 2, ceil_mode=True)
            return BackboneFeatures(
                features=[dense, dense, dense, coarse],
                dense=dense,
                embedding=out["image_features"],
                last_block_input=torch.cat([cls_before, before], dim=1),
            )
        trunk = visual.trunk
        stem = y = trunk.stem(x)
        stages = []
        for stage in trunk.stages:
            y = stage(y)
            stages.append(y)
        final = trunk.norm_pre(y)
        # The trunk's own head (global pooling, norm) and open_clip's projection: encode_image.
        embedding = visual.head(trunk.forward_head(final))
        # The stem's output joins the first stage (both stride 4), as OVCoser feeds the stem too.
        features = [torch.cat([stem, stages[0]], dim=1), *stages[1:]]
        return BackboneFeatures(features=features, dense=final, embedding=embedding)

    def pool(self, feats: BackboneFeatures, weights: Tensor) -> Tensor:
        """CLIP's own pooling restricted to a soft region: the region's image embedding ``B×D``.

        ConvNeXt pools by global average, so the region embedding is the ``weights``-weighted
        average of the dense map through the head. A ViT pools its class token, so the last
        transformer block is run again with the class token's attention to patch ``j`` biased by
        ``log(weights_j / max(weights))``, i.e. its attention weights multiplied by the relative
        region weights and renormalised; the class token then goes through ``ln_post`` and the
        projection. Uniform weights give exactly :attr:`BackboneFeatures.embedding` for both.

        Args:
            feats: this backbone's output for the images.
            weights: ``B×h×w`` positive region weights on the dense grid.
        Returns:
            ``B×D`` region embeddings (not normalised).
        """
        visual = self.clip.visual
        if not self.is_vit:
            w = weights.unsqueeze(1).to(feats.dense.dtype)
            pooled = (feats.dense * w).sum((2, 3)) / w.sum((2, 3))
            return visual.head(visual.trunk.forward_head(pooled[:, :, None, None]))
        tokens = feats.last_block_input
        block = visual.transformer.resblocks[-1]
        b, length = tokens.shape[:2]
        bias = tokens.new_zeros(b, length, length)
        # Scaled to a maximum of 1 so that, as for the weighted average, only relative weights
        # count: the class token's own key keeps weight 1, like the region's strongest patch.
        w = weights.flatten(1).to(tokens.dtype)
        bias[:, 0, 1:] = torch.log(w / w.amax(dim=1, keepdim=True))
        bias = bias.repeat_interleave(block.attn.num_heads, dim=0)
        if visual.transformer.batch_first:
            out = block(tokens, attn_mask=bias)
        else:
            out = block(tokens.transpose(0, 1), attn_mask=bias).transpose(0, 1)
        pooled, _ = visual._pool(out)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def text_embeddings(self, class_names: Sequence[str]) -> Tensor:
        """CamoPrompts class embeddings ``K×D`` (L2-normalised), cached per class list."""
        key = tuple(class_names)
        if not key:
            raise ValueError("class_names is empty: give at least one candidate class")
        if key not in self._text_cache:
            emb = class_text_embeddings(self.clip, self.tokenizer, list(key))
            self._text_cache[key] = F.normalize(emb.float(), dim=-1)
        return self._text_cache[key].to(self.pixel_mean.device)

    def _apply(self, fn: Any, recurse: bool = True) -> CLIPBackbone:
        # Device/dtype moves invalidate cached text embeddings.
        self._text_cache.clear()
        return super()._apply(fn, recurse)


def build_clip_backbone(cfg: Mapping[str, Any]) -> CLIPBackbone:
    """Build the frozen backbone from a ``backbone`` config node (``name``, ``pretrained``,
    ``image_size``)."""
    for key in ("name", "image_size"):
        if key not in cfg:
            raise KeyError(f"backbone config is missing `{key}` (see ovcamo/conf/backbone/*.yaml)")
    name = str(cfg["name"])
    image_size = int(cfg["image_size"])
    pretrained = cfg.get("pretrained")
    clip_model, tokenizer = create_clip(name, pretrained, image_size)
    return CLIPBackbone(clip_model, tokenizer, image_size, cpu_bf16=cfg.get("cpu_bf16", False))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (trainable): one stride-``p`` ViT map → four maps at
    ``p/4, p/2, p, 2p`` with ``C/4, C/2, C, C`` channels, standing in for ConvNeXt's stages."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 2, stride=2),
            nn.GroupNorm(1, c // 2),
            nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)
        self.out_channels = [c // 4, c // 2, c, c]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``B×C×h×w`` → ``[B×C/4×4h×4w, B×C/2×2h×2w, B×C×h×w, B×C×⌈h/2⌉×⌈w/2⌉]``."""
        return [self.up4(x), self.up2(x), x, self.down2(x)]
