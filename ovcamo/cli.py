"""Hydra entry points. Each function is a console script; the work lives in the modules it calls."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ovcamo import CONF_DIR as _CONF_DIR

CONF_DIR = str(_CONF_DIR)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="world")
def world(cfg: DictConfig) -> None:
    """``ovcamo-world``: render (or reuse) the micro-world dataset."""
    from ovcamo.data.world import main

    main(cfg)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="micro_clip")
def micro_clip(cfg: DictConfig) -> None:
    """``ovcamo-micro-clip``: train (or reuse) the micro CLIP on the micro-world's captioned set."""
    from ovcamo.models.micro_clip import main

    main(cfg)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="train")
def train(cfg: DictConfig) -> None:
    """``ovcamo-train``: train a segmenter."""
    from ovcamo.engine.train import main

    main(cfg)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """``ovcamo-eval``: score a prediction folder or a checkpoint with the class-aware OVCOS metrics."""
    from ovcamo.engine.evaluate import main

    main(cfg)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="loop")
def loop(cfg: DictConfig) -> None:
    """``ovcamo-loop``: generate → train without/with synthetic data → evaluate → report."""
    from ovcamo.engine.loop import main

    main(cfg)
