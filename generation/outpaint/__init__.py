"""Salient-object-aware outpainting: inpainting UNet + ControlNet (CVPRW 2024;
docs/design.md, "Generation")."""
