"""ovcamo: open-vocabulary camouflaged object segmentation with a synthetic-data loop."""

__version__ = "0.1.0"
