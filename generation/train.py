"""``python -m generation.train generator=<name> [data=…] [key=value …]``: train the weights a
generator config reads and nobody can download, and write them where the config reads them.

- ``generator=diffumatting``: fine-tunes ``generator.base_model`` (Stable Diffusion 1.5) with
  DiffuMatting's losses in the paper's two stages into ``generator.pretrained``, matting head
  included;
- ``generator=outpaint``: trains the outpainting ControlNet from ``generator.pretrained``
  (Stable Diffusion 2 inpainting) into ``generator.controlnet``;
- ``generator=bgaug`` runs Stable Diffusion 2 inpainting as is: nothing to train;
- a micro config (``*_micro``) trains its parts into the cache, as its first use would.

The data is the ``data`` config's train split (``data=ovcamo`` for the paper), without the
base-validation samples it holds out. ``check=true`` says what would be trained from what, or
names what is missing and how to get it, and computes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ovcamo.cli import Command


def train_generator(cfg: DictConfig) -> str:
    """Train (or, with ``cfg.check``, plan) what ``cfg.generator`` needs; returns it in words."""
    from generation.base import build_generator, builder_module, missing_weights
    from generation.sd.parts import MissingWeightsError
    from ovcamo.data.config import resolve_data_paths

    generator, check = cfg.generator, bool(cfg.get("check", False))
    cache_dir = Path(os.path.expanduser(str(cfg.cache_dir)))
    name = generator.get("name", "?")
    module, _ = builder_module(generator)
    trainer = getattr(module, "train_weights", None) if generator.get("pretrained") else None
    # Rendering a micro-world is compute: a check reads no data it would have to render.
    data = None if check and cfg.data.get("world") else resolve_data_paths(cfg.data, str(cache_dir))
    if trainer is not None:
        return f"{name}: " + trainer(generator, data, cache_dir, cfg.device, check)
    problems = missing_weights(generator)
    if problems:
        raise MissingWeightsError(" ".join(problems))
    if check:
        return f"{name}: nothing to download; would build it (what its builder trains on first use, if anything, is cached under {cache_dir})"
    build_generator(generator, data=data, cache_dir=cache_dir, device=cfg.device)
    return f"{name}: ready; what it trains on first use is cached under {cache_dir}"


def main(cfg: DictConfig) -> None:
    print(train_generator(cfg))


class _TrainCommand(Command):
    @property
    def prog(self) -> str:
        return "python -m generation.train"


command = _TrainCommand(
    "train-generator", "generate", "generation.train:main", "train a generator's weights"
)


def run(argv: Any = None) -> None:
    command(argv)


if __name__ == "__main__":
    run()
