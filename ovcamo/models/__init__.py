"""BaCLIP and its blocks (DESIGN §5); importing this package registers the micro CLIP with open_clip."""

from ovcamo.models.registry import MICRO_CLIP_NAME, register_model_configs

register_model_configs()

__all__ = ["MICRO_CLIP_NAME", "register_model_configs"]
