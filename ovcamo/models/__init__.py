"""BaCLIP and its blocks (docs/design.md, "BaCLIP"); importing the package registers the micro CLIP.

>>> from ovcamo.models import BaCLIP, BaCLIPPredictor, create_model, list_models
>>> model = create_model("baclip_micro", clip_checkpoint=None, num_mfmsa=2)  # random weights
>>> model = BaCLIP.from_pretrained("runs/train/<run>")  # a run, checkpoint or saved folder
>>> result = model.predict("photo.jpg", ["snow leopard", "owl"])  # .mask, .class_name, ...
>>> model.save_pretrained("my-model")  # safetensors + config.json + README.md model card
"""

from ovcamo.models.registry import MICRO_CLIP_NAME, register_model_configs

register_model_configs()

from ovcamo.models.baclip import BaCLIP  # noqa: E402
from ovcamo.models.build import build_model, model_config, save_model  # noqa: E402
from ovcamo.models.factory import create_model, list_backbones, list_models  # noqa: E402
from ovcamo.models.hub import ModelNotFoundError, load_model  # noqa: E402
from ovcamo.models.predictor import BaCLIPPredictor, Prediction, predict  # noqa: E402

__all__ = [
    "MICRO_CLIP_NAME",
    "BaCLIP",
    "BaCLIPPredictor",
    "ModelNotFoundError",
    "Prediction",
    "build_model",
    "create_model",
    "list_backbones",
    "list_models",
    "load_model",
    "model_config",
    "predict",
    "register_model_configs",
    "save_model",
]
