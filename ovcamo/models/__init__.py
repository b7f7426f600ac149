"""BaCLIP and its blocks (docs/design.md, "BaCLIP"); importing the package registers the micro CLIP.

>>> from ovcamo.models import build_model, model_config
>>> model = build_model(model_config("baclip_micro", overrides=["backbone.pretrained=null"]))
>>> out = model(images, ["snow leopard", "owl"])  # mask_logits B×1×H×W, class_logits B×2
"""

from ovcamo.models.registry import MICRO_CLIP_NAME, register_model_configs

register_model_configs()

from ovcamo.models.baclip import BaCLIP  # noqa: E402
from ovcamo.models.build import build_model, load_model, model_config, save_model  # noqa: E402

__all__ = [
    "MICRO_CLIP_NAME",
    "BaCLIP",
    "build_model",
    "load_model",
    "model_config",
    "register_model_configs",
    "save_model",
]
