"""BaCLIP, the open-vocabulary camouflaged object segmenter, and its ablation rows (docs/ablation.md).

Data flow of the paper configuration (``model=baclip``; SAM decoder variants)::

    images ─ frozen CLIP ─┬─ trunk level at model.neck.stride ─ MREM (Conv1 → f_v) ─ E_v ─ CCE ─ E_v* ─┐
                          │                                                                          │
    class names ─ CamoPrompts embeddings ─ MREM (Linear → f_t) ─ E_t (all K classes) ─ SelfAttention │
                          │        ─ P_t ─ Proj ─ SAM prompt encoder (point path) ─ E_t* ─ SAM mask decoder
                          └─ CLIP's pooling, weighted by the mask ─ cosine → class logits

The micro configuration (``model=baclip_micro``) adds, each a named option (docs/baclip.md):
an FPN neck over every trunk level (``model.neck.enabled``), SAM 2's high-resolution skips from
its finer levels into the decoder's upsampling (``model.decoder.high_res``), a 1×1 + LayerNorm2d
before the decoder (``model.decoder.image_proj``), and one prompt token weighted by the
whole-image CLIP scores, handed to the decoder without the prompt encoder
(``model.prompt.mode=weighted``, ``model.prompt.prompt_encoder=false``).

The ``conv`` variant (first rung of the ladder) replaces everything between CLIP and the mask by
an FPN decoder over the four trunk maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import Tensor, nn

from ovcamo.models.cce import CCE
from ovcamo.models.clip_backbone import BackboneFeatures, CLIPBackbone, SimpleFeaturePyramid
from ovcamo.models.conv_decoder import ConvDecoder
from ovcamo.models.hub import PretrainedMixin
from ovcamo.models.losses import segmentation_loss
from ovcamo.models.mrem import MREM
from ovcamo.models.neck import FeatureNeck, HighResSkips, TrunkLevel
from ovcamo.models.prompt_adapter import PromptAdapter
from ovcamo.models.resampling import resize_bilinear
from ovcamo.models.sam_decoder import SamLoadReport, decode_masks, text_prompt_embeddings

if TYPE_CHECKING:
    from ovcamo.models.predictor import ImageInput, Prediction


@dataclass(frozen=True)
class EncodedImages:
    """What :meth:`BaCLIP.encode_image` gives :meth:`BaCLIP.decode`: the frozen CLIP's
    features, the input size ``(H, W)`` and dtype."""

    features: BackboneFeatures
    size: tuple[int, int]
    dtype: torch.dtype


class BaCLIP(PretrainedMixin, nn.Module):
    """CLIP backbone + MREM + CCE + adaptive text prompts + SAM mask decoder + CLIP classifier.

    Build it with :func:`ovcamo.models.create_model` by name, or :func:`ovcamo.models.build_model`
    from a ``model`` config; the modules are passed in built, as in segment-anything's ``Sam``.
    Load a trained one with :meth:`from_pretrained`, save with :meth:`save_pretrained`. ``conv_decoder`` given means the baseline
    rung (``mrem``, ``cce``, ``prompt_adapter``, ``prompt_encoder``, ``mask_decoder`` are then
    ``None``).

    Args:
        backbone: the frozen CLIP backbone.
        neck: :class:`FeatureNeck` (an FPN), or :class:`TrunkLevel` (the paper: one trunk map).
        image_proj: module between the CCE and the decoder (``nn.Identity`` in the paper).
        prompt_through_encoder: the projected prompts go through the prompt encoder's point path
            (:func:`ovcamo.models.sam_decoder.text_prompt_embeddings`, the paper) instead of
            straight to the decoder.
        pyramid: the trainable simple feature pyramid that feeds the conv decoder from a ViT
            backbone, else ``None``.
        loss_config: keyword arguments of :func:`ovcamo.models.losses.segmentation_loss`.
        config: the resolved ``model`` config, stored with saved models.
    """

    def __init__(
        self,
        backbone: CLIPBackbone,
        *,
        pyramid: SimpleFeaturePyramid | None = None,
        conv_decoder: ConvDecoder | None = None,
        neck: FeatureNeck | TrunkLevel | None = None,
        high_res: HighResSkips | None = None,
        mrem: MREM | None = None,
        cce: CCE | None = None,
        image_proj: nn.Module | None = None,
        prompt_adapter: PromptAdapter | None = None,
        prompt_encoder: PromptEncoder | None = None,
        mask_decoder: MaskDecoder | None = None,
        prompt_through_encoder: bool = False,
        loss_config: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        sam_load_report: SamLoadReport | None = None,
    ) -> None:
        super().__init__()
        sam_parts = (neck, mrem, cce, image_proj, prompt_adapter, prompt_encoder, mask_decoder)
        if conv_decoder is None and any(m is None for m in sam_parts):
            raise ValueError(
                "a SAM-decoder BaCLIP needs neck, mrem, cce, image_proj, prompt_adapter, "
                "prompt_encoder and mask_decoder"
            )
        self.backbone = backbone
        self.pyramid = pyramid
        self.conv_decoder = conv_decoder
        self.neck = neck
        self.high_res = high_res
        self.mrem = mrem
        self.cce = cce
        self.image_proj = image_proj
        self.prompt_adapter = prompt_adapter
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.prompt_through_encoder = bool(prompt_through_encoder)
        self.loss_config = dict(loss_config or {})
        self.config = dict(config or {})
        self.sam_load_report = sam_load_report
        if prompt_encoder is not None:
            for p in prompt_encoder.parameters():
                p.requires_grad_(False)

    # ----------------------------------------------------------------------------- forward

    def forward(self, images: Tensor, class_names: Sequence[str]) -> dict[str, Tensor]:
        """Segment and classify.

        Args:
            images: ``B×3×H×W`` float RGB in [0, 1] (CLIP normalisation is applied inside).
            class_names: the K candidate classes (the base classes when training).
        Returns:
            ``mask_logits`` ``B×1×H×W``; ``class_logits`` ``B×K`` (mask-pooled CLIP features vs
            class embeddings × logit scale); ``image_text_logits`` ``B×K`` (whole-image CLIP
            scores, which weight or rank the prompts).
        """
        return self.decode(self.encode_image(images), class_names)

    def encode_image(self, images: Tensor) -> EncodedImages:
        """The frozen CLIP's features of ``images`` ``B×3×H×W``: the part of :meth:`forward` that
        does not depend on the classes (a predictor computes it once per image)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B×3×H×W, got {tuple(images.shape)}")
        return EncodedImages(self.backbone(images), tuple(images.shape[-2:]), images.dtype)

    def decode(self, encoded: EncodedImages, class_names: Sequence[str]) -> dict[str, Tensor]:
        """:meth:`forward` from :meth:`encode_image`'s output (same outputs)."""
        feats = encoded.features
        features = self.pyramid(feats.dense) if self.pyramid is not None else feats.features
        text = self.backbone.text_embeddings(class_names).to(encoded.dtype)
        scale = self.backbone.logit_scale
        global_image = F.normalize(feats.embedding.to(text.dtype), dim=-1)
        image_text_logits = scale * global_image @ text.t()

        if self.conv_decoder is not None:
            low_res = self.conv_decoder(features)
        else:
            low_res = self._decode_with_prompts(features, text, image_text_logits)
        mask_logits = resize_bilinear(low_res, encoded.size)
        class_logits = self.classify(feats, mask_logits, text)
        return {
            "mask_logits": mask_logits,
            "class_logits": class_logits,
            "image_text_logits": image_text_logits,
        }

    def _decode_with_prompts(
        self, features: Sequence[Tensor], text: Tensor, image_text_logits: Tensor
    ) -> Tensor:
        """Trunk maps + class embeddings → mask logits ``B×1×4h×4w`` (``h×w``: the embedding
        level)."""
        levels = self.neck(features)
        e_v, e_t = self.mrem(levels[-1], text)
        image_embeddings = self.image_proj(self.cce(e_v))
        b, _, h, w = image_embeddings.shape
        prompts = self.prompt_adapter(e_t, image_text_logits)
        if self.prompt_through_encoder:
            prompts = text_prompt_embeddings(self.prompt_encoder, prompts)
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0).to(image_embeddings.dtype)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        high_res = self.high_res(levels) if self.high_res is not None else None
        return decode_masks(
            self.mask_decoder, image_embeddings, image_pe, prompts, dense, high_res=high_res
        )

    def classify(self, feats: BackboneFeatures, mask_logits: Tensor, text: Tensor) -> Tensor:
        """CLIP's own pooling restricted to the predicted mask → cosine × logit scale.

        The mask probabilities, averaged onto the dense grid, weight CLIP's pooling
        (:meth:`CLIPBackbone.pool`); a mask covering the whole image gives CLIP's own image
        embedding, i.e. ``image_text_logits``.

        Args:
            feats: the backbone's output for the images.
            mask_logits: ``B×1×H×W``.
            text: ``K×D`` normalised class embeddings.
        Returns:
            ``B×K`` class logits.
        """
        weights = F.adaptive_avg_pool2d(torch.sigmoid(mask_logits), feats.dense.shape[-2:])
        # The small floor makes an empty mask fall back to CLIP's global pooling.
        embedding = self.backbone.pool(feats, weights[:, 0] + 1e-6)
        embedding = F.normalize(embedding.to(text.dtype), dim=-1)
        return self.backbone.logit_scale * embedding @ text.t()

    def predict(
        self, images: ImageInput | Sequence[ImageInput], class_names: Sequence[str]
    ) -> Prediction | list[Prediction]:
        """Segment and classify images among ``class_names`` in eval mode (the previous mode is
        restored): a path, PIL image, uint8 ``H×W×3`` array or float ``3×H×W`` tensor in [0, 1]
        → one :class:`~ovcamo.models.predictor.Prediction` at that image's size; a list of them
        (or a ``B×3×H×W`` tensor) → a list. See :func:`ovcamo.models.predictor.predict`."""
        from ovcamo.models.predictor import predict

        return predict(self, images, class_names)

    def loss(self, outputs: Mapping[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        """Weighted BCE + Dice on ``outputs["mask_logits"]`` against ``masks`` ``B×1×H×W``."""
        return segmentation_loss(outputs["mask_logits"], masks, **self.loss_config)

    # ------------------------------------------------------------------- training helpers

    def train(self, mode: bool = True) -> BaCLIP:
        """Sets train/eval mode; the CLIP backbone stays in eval mode either way."""
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (CLIP, the prompt encoder and SAM's unused output heads
        are frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every parameter and buffer except the frozen CLIP's, frozen SAM parts included (a model
        initialised from a SAM file must load without it): what ``model.safetensors`` stores."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; missing or unexpected keys raise."""
        expected = set(self.trainable_state_dict())
        given = set(state_dict)
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        if missing or unexpected:
            raise KeyError(
                f"state dict does not match this BaCLIP variant: missing {missing[:10]}"
                f"{' …' if len(missing) > 10 else ''} ({len(missing)}), unexpected "
                f"{unexpected[:10]}{' …' if len(unexpected) > 10 else ''} ({len(unexpected)})"
            )
        self.load_state_dict(dict(state_dict), strict=False)

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": …, "frozen": …}`` parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "frozen": total - trainable}
