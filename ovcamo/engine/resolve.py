"""Resolve the config values that name things to fetch or build before a model exists."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

#: The ``backbone.pretrained`` value meaning "the micro CLIP trained on this micro-world".
MICRO = "micro"


def resolve_pretrained(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` whose ``model.backbone.pretrained`` is a tag, a path or null.

    ``pretrained: micro`` is replaced by the micro CLIP checkpoint trained (or found in the cache)
    for the micro-world of ``cfg.data.world`` with the ``cfg.clip`` settings
    (docs/design.md, "The micro-world").
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    backbone = cfg.model.get("backbone")
    if backbone is None or backbone.get("pretrained") != MICRO:
        return cfg
    world = cfg.data.get("world")
    if not world:
        raise KeyError(
            "backbone.pretrained=micro means the micro CLIP of the micro-world, but data has no "
            "'world' node: use data=micro, or give backbone.pretrained a CLIP tag or weights file"
        )
    if cfg.get("clip") is None:
        raise KeyError(
            "backbone.pretrained=micro needs a 'clip' node (see ovcamo/conf/micro_clip.yaml)"
        )
    from ovcamo.engine.micro_clip import ensure_micro_clip

    path = ensure_micro_clip(cfg.clip, world, cfg.get("cache_dir"))
    with open_dict(cfg):
        cfg.model.backbone.pretrained = str(path)
        # The top-level backbone node says the same, so the saved config.yaml is consistent.
        if cfg.get("backbone") is not None and cfg.backbone.get("pretrained") == MICRO:
            cfg.backbone.pretrained = str(path)
    return cfg


def plain(cfg: Any) -> Any:
    """A DictConfig as plain containers (resolved); other values unchanged."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
