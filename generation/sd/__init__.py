"""Stable Diffusion parts the diffusers generators share (background augmentation, outpainting,
DiffuMatting): local folders or micro parts, prompts and prompt dropout, training pieces, and the
sampler base that calls a stock pipeline and pastes the source back (docs/generation.md,
"Shared Stable Diffusion parts")."""
