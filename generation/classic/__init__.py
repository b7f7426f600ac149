"""Classic background matching: a weight-free baseline generator (docs/generation.md)."""

from generation.classic.quilting import match_colour_statistics, quilt_texture
from generation.classic.sample import ClassicGenerator, build_classic

__all__ = ["ClassicGenerator", "build_classic", "match_colour_statistics", "quilt_texture"]
