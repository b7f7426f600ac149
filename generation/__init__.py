"""Synthetic-data generators that enlarge rare OVCamo training classes (docs/design.md,
"Generation")."""
