"""Synthetic-data generators that enlarge rare OVCamo training classes (DESIGN §7)."""
