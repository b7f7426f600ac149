"""DiffuMatting (ECCV 2024): green-canvas text-to-image, latent matting, GreenPost (DESIGN §7)."""
