"""``ovcamo-generate``: plan and write a synthetic OVCamo-format set."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ovcamo.cli import CONF_DIR


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="generate")
def generate(cfg: DictConfig) -> None:
    from generation.run import main

    main(cfg)
