"""Turn a ``data`` config node into dataset paths, rendering the micro-world when the node asks for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ovcamo.data.ovcamo_format import DataPaths


def resolve_data_paths(data_cfg: Mapping[str, Any], cache_dir: str | None = None) -> DataPaths:
    """Paths of the dataset a ``data`` node names.

    A node with a ``world`` sub-node means the micro-world: it is rendered (or found in the cache)
    and its ``paths.json`` is read. Any other node must carry the six ``data.*`` keys.
    """
    world_cfg = data_cfg.get("world")
    if world_cfg:
        from ovcamo.data.world import ensure_world

        return DataPaths.from_paths_json(
            ensure_world(world_cfg, cache_dir=cache_dir) / "paths.json"
        )
    return DataPaths.from_cfg(data_cfg)
