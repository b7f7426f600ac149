"""DiffuMatting (ECCV 2024): green-canvas text-to-image, latent matting, GreenPost
(docs/design.md, "Generation")."""
