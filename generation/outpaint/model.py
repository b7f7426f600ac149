"""The outpainting ControlNet (salient-object-aware background generation, CVPRW 2024;
docs/design.md, "Generation").

A stock ``ControlNetModel`` created from the inpainting UNet with ``from_unet`` has the UNet's 9
input channels, so, as in the paper, it reads the full inpainting input: [noisy latent, mask,
masked-image latent]. Its control image is the inverted object mask (white = background to
generate). diffusers' ControlNet inpainting pipeline hands a ControlNet the noisy latent only; the
pipeline subclass below records the mask and masked-image latents it prepares, and the ControlNet
appends them, so everything else in the stock pipeline runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    UNet2DConditionModel,
)


class InpaintingControlNetModel(ControlNetModel):
    """``ControlNetModel`` whose input is the inpainting UNet's 9-channel input.

    ``forward`` takes either the full input ``B×9×h×w`` (training) or the noisy latent
    ``B×4×h×w`` after :attr:`inpainting_condition` was set to ``(mask B×1×h×w, masked-image
    latents B×4×h×w)`` (sampling through :class:`OutpaintingPipeline`).
    """

    inpainting_condition: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_inpainting_unet(
        cls, unet: UNet2DConditionModel, vae_scale: int = 8
    ) -> InpaintingControlNetModel:
        """A ControlNet initialised from ``unet`` (encoder weights copied, zero convolutions).

        ``vae_scale`` (pixels per latent cell, 8 for Stable Diffusion) sets how many stride-2
        convolutions the control-image embedding has: SD's (16, 32, 96, 256) for 8.
        """
        if unet.config.in_channels != 9:
            raise ValueError(
                f"the outpainting ControlNet is made from an inpainting UNet (9 input channels), "
                f"got {unet.config.in_channels}"
            )
        n_down = max(1, int(vae_scale).bit_length() - 1)
        channels = (16, 32, 96, 256)[: n_down + 1] if n_down <= 3 else (16,) * (n_down + 1)
        return cls.from_unet(
            unet, conditioning_embedding_out_channels=channels, conditioning_channels=3
        )

    def forward(self, sample: torch.Tensor, *args: Any, **kwargs: Any):
        if sample.shape[1] != self.config.in_channels:
            if self.inpainting_condition is None:
                raise RuntimeError(
                    f"ControlNet got a {sample.shape[1]}-channel input without the inpainting "
                    "condition: sample through OutpaintingPipeline or pass the 9-channel input"
                )
            mask, masked = self.inpainting_condition
            sample = torch.cat([sample, mask.to(sample), masked.to(sample)], dim=1)
        return super().forward(sample, *args, **kwargs)


class OutpaintingPipeline(StableDiffusionControlNetInpaintPipeline):
    """diffusers' ``StableDiffusionControlNetInpaintPipeline`` that also gives its ControlNet the
    mask and masked-image latents it prepares for the inpainting UNet."""

    def prepare_mask_latents(self, *args: Any, **kwargs: Any):
        mask, masked = super().prepare_mask_latents(*args, **kwargs)
        self.controlnet.inpainting_condition = (mask, masked)
        return mask, masked
