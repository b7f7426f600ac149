"""segment-anything's prompt encoder and mask decoder as BaCLIP uses them: one prompt set per
image, and initialisation from an official SAM checkpoint."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from ovcamo.checkpoint import load_torch_file

logger = logging.getLogger(__name__)

#: Width of every official SAM mask decoder (vit_b, vit_l and vit_h share the decoder's shape).
SAM_DECODER_DIM = 256
SAM_CHECKPOINTS = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_PREFIXES = ("prompt_encoder.", "mask_decoder.")
#: ``model.sam_checkpoint`` value that asks for random initialisation explicitly.
NO_SAM = "none"


def sam_checkpoint_path(value: object) -> str | None:
    """The SAM file a ``model.sam_checkpoint`` value names, or ``None`` for null, ``""`` and
    ``none`` (random initialisation)."""
    if value is None or str(value).strip().lower() in ("", NO_SAM):
        return None
    return str(value)


@dataclass
class SamLoadReport:
    """What copying a SAM checkpoint into the prompt encoder and mask decoder did."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def build_prompt_encoder(dim: int, image_size: int, stride: int = 16) -> PromptEncoder:
    """segment-anything ``PromptEncoder`` at width ``dim`` (frozen by the caller)."""
    side = max(image_size // stride, 1)
    return PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(side, side),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def build_mask_decoder(
    dim: int, depth: int = 2, mlp_dim: int = 2048, num_heads: int = 8
) -> MaskDecoder:
    """segment-anything ``MaskDecoder`` + ``TwoWayTransformer`` (SAM's layout, 3 multimask
    outputs)."""
    return MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(
            depth=depth, embedding_dim=dim, mlp_dim=mlp_dim, num_heads=num_heads
        ),
        num_multimask_outputs=3,
        iou_head_hidden_dim=dim,
    )


def unused_decoder_parameters(decoder: MaskDecoder) -> list[nn.Parameter]:
    """Parameters of SAM's decoder that the single-mask output never reaches: the IoU head and
    the hypernetworks of the three multimask tokens. Kept for the checkpoint layout, frozen."""
    params = list(decoder.iou_prediction_head.parameters())
    for mlp in decoder.output_hypernetworks_mlps[1:]:
        params.extend(mlp.parameters())
    return params


def text_prompt_embeddings(prompt_encoder: PromptEncoder, tokens: Tensor) -> Tensor:
    """``E_t* = PromptEncoder(Proj(P_t))``: projected text tokens as SAM point prompts.

    SAM's prompt encoder embeds a point as ``PE(x, y) + point_embeddings[label]`` and, when no box
    is given, appends a padding point (label -1: ``not_a_point_embed`` alone). Here each projected
    text token takes the place of a point's positional encoding ``PE(x, y)`` and goes through the
    rest of that path unchanged: it gets the foreground-point label embedding
    (``point_embeddings[1]``), and SAM's padding point closes the set. This is what
    ``prompt_encoder(points=(coords, ones), boxes=None, masks=None)`` returns with ``PE`` replaced by
    the tokens (tested). The encoder's tensors are used as they are (frozen, SAM's when a
    checkpoint is loaded).

    Args:
        tokens: ``B×N×C`` projected text tokens (``C``: the prompt encoder's width).
    Returns:
        Sparse prompt embeddings ``B×(N+1)×C``.
    """
    foreground = prompt_encoder.point_embeddings[1].weight.to(tokens.dtype)
    padding = prompt_encoder.not_a_point_embed.weight.to(tokens.dtype)
    return torch.cat([tokens + foreground, padding.expand(tokens.shape[0], 1, -1)], dim=1)


def decode_masks(
    decoder: MaskDecoder,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse_prompt_embeddings: Tensor,
    dense_prompt_embeddings: Tensor,
    high_res: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """SAM's ``predict_masks`` with one prompt set per image, returning the single-mask output.

    SAM's own ``MaskDecoder.forward`` repeats every image embedding once per prompt set, which for
    a batch of B images with B prompt sets would decode B² pairs; here image i only meets prompt
    set i.

    Args:
        image_embeddings: ``B×C×h×w``.
        image_pe: ``1×C×h×w`` (or ``B×C×h×w``) positional encoding.
        sparse_prompt_embeddings: ``B×N×C``.
        dense_prompt_embeddings: ``B×C×h×w`` (or ``1×C×h×w``).
        high_res: SAM 2's high-resolution features ``(B×C/4×2h×2w, B×C/8×4h×4w)``, added after
            each of the two transposed convolutions of the upsampling (SAM 2's mask decoder);
            ``None`` keeps SAM's upsampling.
    Returns:
        Mask logits ``B×1×4h×4w`` (SAM's mask token 0, the single-mask output).
    """
    b = image_embeddings.shape[0]
    if sparse_prompt_embeddings.shape[0] != b:
        raise ValueError(
            f"one prompt set per image expected: {b} images, "
            f"{sparse_prompt_embeddings.shape[0]} prompt sets"
        )
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1
    )
    src = image_embeddings + dense_prompt_embeddings
    pos_src = image_pe.expand(b, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    mask_token_out = hs[:, 1, :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    if high_res is None:
        upscaled = decoder.output_upscaling(src)
    else:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s1, feat_s0 = high_res
        upscaled = act2(dc2(act1(ln1(dc1(src) + feat_s1))) + feat_s0)
    hyper_in = decoder.output_hypernetworks_mlps[0](mask_token_out)
    _, cu, hu, wu = upscaled.shape
    return (hyper_in.unsqueeze(1) @ upscaled.view(b, cu, hu * wu)).view(b, 1, hu, wu)


def sam_checkpoint_hint(sam_type: str) -> str:
    name = SAM_CHECKPOINTS.get(sam_type, SAM_CHECKPOINTS["vit_b"])
    return (
        f"Download the official segment-anything checkpoint (for {sam_type}: {SAM_URL}{name}, "
        f"listed in the segment-anything README) and export SAM_CHECKPOINT=<its path> (or pass "
        f"model.sam_checkpoint=<its path>), or pass model.sam_checkpoint=none to start the "
        f"decoder from random weights."
    )


def load_sam_weights(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    path: str | os.PathLike,
    sam_type: str = "vit_b",
) -> SamLoadReport:
    """Copy ``prompt_encoder.*`` and ``mask_decoder.*`` of an official SAM checkpoint.

    Tensors whose shape differs from the module's are skipped and reported, as are keys missing
    from the file and keys of those two prefixes the modules do not have; ``image_encoder.*`` is
    ignored. The report is logged (warning when incomplete) and returned.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {path}. {sam_checkpoint_hint(sam_type)}"
        )
    state = load_torch_file(path, "a SAM checkpoint")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    report = SamLoadReport(path=str(path))
    targets = {"prompt_encoder.": prompt_encoder, "mask_decoder.": mask_decoder}
    for prefix, module in targets.items():
        own = module.state_dict()
        theirs = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        update = {}
        for key, tensor in own.items():
            if key not in theirs:
                report.missing.append(prefix + key)
            elif theirs[key].shape != tensor.shape:
                theirs_shape, own_shape = tuple(theirs[key].shape), tuple(tensor.shape)
                report.mismatched.append(
                    f"{prefix}{key}: checkpoint {theirs_shape} vs model {own_shape}"
                )
            else:
                update[key] = theirs[key]
                report.loaded.append(prefix + key)
        report.unexpected.extend(prefix + k for k in theirs if k not in own)
        module.load_state_dict(update, strict=False)
    if not report.loaded:
        raise ValueError(
            f"{path} holds no usable `prompt_encoder.*`/`mask_decoder.*` tensors; is it a SAM "
            f"checkpoint? {sam_checkpoint_hint(sam_type)}"
        )
    if report.complete:
        logger.info("loaded %d SAM tensors from %s", len(report.loaded), path)
    else:
        logger.warning(
            "SAM checkpoint %s: %d loaded, missing %s, unexpected %s, shape mismatch %s",
            path,
            len(report.loaded),
            report.missing,
            report.unexpected,
            report.mismatched,
        )
    return report
