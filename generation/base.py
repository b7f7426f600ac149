"""The contract every generator fulfils, so the planner, writer and loop treat them alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class SourceObject:
    """A training sample a generator starts from: RGB uint8 ``H×W×3``, bool mask ``H×W``."""

    image: np.ndarray
    mask: np.ndarray
    class_name: str
    unique_id: str


@dataclass
class GeneratedSample:
    """One synthetic sample: RGB uint8 ``H×W×3`` and its exact bool mask ``H×W``.

    ``alpha`` (float32 ``H×W`` in [0, 1]) is kept when a method produces a soft matte;
    ``extra`` holds method-specific provenance written beside the sample.
    """

    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SkipSample(Exception):
    """Raised by a generator that cannot make a sample from a source; the reason is reported."""


@runtime_checkable
class Generator(Protocol):
    """``generate`` turns a source object into a new sample; deterministic for a given seed."""

    name: str

    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample: ...


def build_generator(cfg: Any, **context: Any) -> Generator:
    """Build the generator a ``generator`` config node names.

    The node's ``builder`` key is ``"module.path:function"``; the function receives the node and the
    context the caller has (``data`` — the source dataset's ``DataPaths``, ``cache_dir``, ``device``)
    and returns a :class:`Generator`, training or loading whatever weights it needs.
    """
    import importlib

    spec = cfg.get("builder") if hasattr(cfg, "get") else None
    if not spec or ":" not in str(spec):
        raise KeyError(f"generator config needs 'builder: module.path:function', got {spec!r}")
    module_name, func_name = str(spec).split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise KeyError(f"generator.builder {spec!r} does not name a function: {e}") from e
    return func(cfg, **context)
