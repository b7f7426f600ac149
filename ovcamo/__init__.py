"""ovcamo: open-vocabulary camouflaged object segmentation with a synthetic-data loop."""

from pathlib import Path

__version__ = "0.1.0"

#: The Hydra config tree (data, model, backbone, train, generator, experiment, ...), shipped inside
#: the package so that every kind of install finds it.
CONF_DIR = Path(__file__).resolve().parent / "conf"
