"""Background augmentation by background-only inpainting (arXiv 2408.00350;
docs/design.md, "Generation")."""
