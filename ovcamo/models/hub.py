"""Loading and saving BaCLIP models as Hugging Face models are: one loader for every folder the
toolkit writes, ``save_pretrained`` (safetensors, ``config.json``, a model card) and the Hub.

:func:`load_model` (also ``BaCLIP.from_pretrained``) reads

- a saved model folder (``model.safetensors`` + ``config.json``, from ``save_pretrained``),
- a training checkpoint ``<run>/checkpoints/<name>`` (the same files plus ``state.pt``; a swap
  interrupted by a kill is found at ``<name>.old``),
- an ``ovcamo-train`` run folder: the checkpoint its ``train.select`` made the result
  (``final``: ``checkpoints/last``; ``best``: ``checkpoints/best``, else ``last``),

and rebuilds the model from its folder alone: the frozen CLIP from ``backbone.safetensors`` beside
the weights (else its open_clip tag), every other tensor from ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelCard, ModelCardData, ModelHubMixin

from ovcamo.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_checkpoint_files,
    load_state,
    load_weights,
    resolve_checkpoint_dir,
)

if TYPE_CHECKING:
    from ovcamo.models.baclip import BaCLIP


CONFIG_FILE = "config.json"
#: The ``config.json`` key holding what the model was trained on (kept out of ``model.config``).
TRAINING_KEY = "training"


class ModelNotFoundError(FileNotFoundError):
    """No model at the path or Hub id given to :func:`load_model`."""


def _is_model_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _checkpoint(path: Path) -> Path | None:
    """``path`` as a model folder or a complete checkpoint (``<path>.old`` included), else None."""
    if _is_model_dir(path):
        return path
    found = resolve_checkpoint_dir(path)
    return found if found is not None and (found / CONFIG_FILE).is_file() else None


def run_selection(run_dir: Path) -> str:
    """The run's ``train.select`` (``final`` or ``best``) from its ``config.yaml``; ``final``
    when the file or key is absent."""
    from omegaconf import OmegaConf

    config = run_dir / "config.yaml"
    if not config.is_file():
        return "final"
    train = OmegaConf.load(config).get("train") or {}
    return str(train.get("select", "final"))


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The folder holding the model ``path`` names: a saved model folder, a checkpoint folder, or
    the checkpoint a run folder's ``train.select`` chose (see the module docstring).

    Raises :class:`ModelNotFoundError` naming what was looked for.
    """
    path = Path(path).expanduser()
    found = _checkpoint(path)
    if found is not None:
        return found
    if (path / "checkpoints").is_dir():
        select = run_selection(path)
        names = ("best", "last") if select == "best" else ("last",)
        for name in names:
            found = _checkpoint(path / "checkpoints" / name)
            if found is not None:
                return found
        raise ModelNotFoundError(
            f"run folder {path} (train.select={select}) holds no complete "
            f"{' or '.join(f'checkpoints/{n}' for n in names)} ({WEIGHTS_FILE}, {CONFIG_FILE} "
            "and state.pt): the run did not save a checkpoint yet; resume it with resume=true"
        )
    raise ModelNotFoundError(
        f"no model at {path}: expected {WEIGHTS_FILE} and {CONFIG_FILE} there (a folder written "
        "by save_pretrained, or an ovcamo-train checkpoint: <run>/checkpoints/last or "
        "checkpoints/best), or an ovcamo-train run folder"
    )


def _training_info(directory: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    """What a training checkpoint says about its training: the run's base classes (its
    ``run_info.json``), the checkpoint's validation metrics and step."""
    info: dict[str, Any] = {}
    name = directory.name.removesuffix(".old")
    if directory.parent.name == "checkpoints":
        info["checkpoint"] = name
        run_info = directory.parent.parent / "run_info.json"
        if run_info.is_file():
            classes = json.loads(run_info.read_text(encoding="utf-8")).get("base_classes")
            if classes:
                info["classes"] = list(classes)
    if "step" in state:
        info["step"] = int(state["step"])
    metrics = state.get("best") if name == "best" else state.get("val_metrics")
    if metrics:
        info["metrics"] = {k: float(v) for k, v in metrics.items()}
    return info


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> BaCLIP:
    """Rebuild a trained or saved BaCLIP from the folder ``path`` names (see the module
    docstring), on ``device``, in eval mode.

    ``model.config`` is the ``model`` config it was built from; ``model.training_info`` what is
    known of its training (``classes``, ``metrics``, ``step``, ``checkpoint``). The SAM file named
    in the config is never read (its tensors are in ``model.safetensors``).
    """
    from ovcamo.models.build import BACKBONE_FILE, build_model, load_backbone_file

    directory = resolve_model_dir(path)
    check_checkpoint_files(directory)
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    training = config.pop(TRAINING_KEY, None)
    state = load_state(directory / STATE_FILE) if (directory / STATE_FILE).is_file() else {}
    # A checkpoint whose frozen CLIP is neither stored nor named by a tag was randomly
    # initialised right after seeding torch with the run's seed: seeding the same way rebuilds it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(state.get("seed", 0)))
        try:
            backbone = None
            if (directory / BACKBONE_FILE).is_file():
                backbone = load_backbone_file(config, directory / BACKBONE_FILE)
            model = build_model({**config, "sam_checkpoint": None}, backbone=backbone)
        except KeyError as e:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} lacks a key the model needs ({e}); it is damaged or "
                "was not written by ovcamo: restore the folder from a copy"
            ) from e
    model.config = config
    model.load_trainable_state_dict(load_weights(directory / WEIGHTS_FILE))
    model.training_info = dict(training) if training else _training_info(directory, state)
    return model.to(device).eval()


def _hub_download(repo_id: str, **kwargs: Any) -> Path:
    """The local snapshot of the Hub model ``repo_id`` (downloaded unless cached)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        # Not an owner/name id: a local path that does not exist, which the loader reports.
        return resolve_model_dir(repo_id)
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except LocalEntryNotFoundError as e:
        raise ModelNotFoundError(
            f"{repo_id} is no local folder, and as a Hugging Face Hub id it is not in the local "
            f"cache and the Hub cannot be reached (offline?): {str(e).splitlines()[0]}. On a "
            f"machine with network: `hf download {repo_id} --local-dir DIR`, then pass DIR"
        ) from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(
            f"{repo_id} is no local folder, and the Hugging Face Hub has no such model "
            f"({str(e).splitlines()[0]})"
        ) from None


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

| | |
|:--|:--|
{% for key, value in facts -%}
| {{ key }} | {{ value }} |
{% endfor %}
{%- if classes %}
## Trained on

{{ classes|length }} base classes: {{ classes|join(", ") }}.
{% endif %}
{%- if metrics %}
## Metrics

Class-aware OVCOS metrics on the held-out base-validation part, as the training checkpoint
recorded them (`best`: the best validation; `last`: the latest)\
{%- if step %}; checkpoint step {{ step }}{% endif %}:

| metric | value |
|:--|--:|
{% for key, value in metrics -%}
| {{ key }} | {{ value }} |
{% endfor %}
{%- endif %}
## Use

```python
from ovcamo.models import BaCLIP

model = BaCLIP.from_pretrained("{{ location }}")
result = model.predict("photo.jpg", ["owl", "frog", "snake"])
result.mask, result.class_name, result.score  # uint8 mask at the photo's size
```

`model.safetensors` holds every weight but the frozen CLIP's, which `backbone.safetensors` holds
when no open_clip tag names them; `config.json` is the model configuration it is rebuilt from.
"""


class PretrainedMixin(
    ModelHubMixin,
    library_name="ovcamo",
    license="apache-2.0",
    pipeline_tag="image-segmentation",
    tags=["open-vocabulary-segmentation", "camouflaged-object-segmentation", "clip"],
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for :class:`BaCLIP`
    (huggingface_hub's ``ModelHubMixin``, with the toolkit's own folder layout)."""

    #: What is known of the model's training; the loader sets it (see :func:`load_model`).
    training_info: Mapping[str, Any] = MappingProxyType({})
    config: dict[str, Any]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> BaCLIP:
        """A BaCLIP in eval mode on ``device`` from a local folder (see :func:`load_model`) or a
        Hugging Face Hub id (``owner/name``, downloaded with ``snapshot_download``; the other
        arguments are its own). A Hub id that cannot be fetched raises
        :class:`ModelNotFoundError` saying so."""
        path = Path(pretrained_model_name_or_path).expanduser()
        if not path.exists():
            path = _hub_download(
                str(pretrained_model_name_or_path),
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        return load_model(path, device)

    def _save_pretrained(self, save_directory: Path) -> None:
        """``model.safetensors``, ``backbone.safetensors`` (unless an open_clip tag names the
        CLIP) and ``config.json`` (the model config, and what is known of its training)."""
        from ovcamo.models.build import save_model

        save_model(self, save_directory)  # type: ignore[arg-type]
        if self.training_info:
            from ovcamo.data.io import atomic_write_json

            atomic_write_json(
                save_directory / CONFIG_FILE, {**self.config, TRAINING_KEY: self.training_info}
            )

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The ``README.md`` written beside the weights: what model, its backbone, the classes it
        was trained on and its metrics where known, and how to load it."""
        config = self.config
        backbone = config.get("backbone", {})
        decoder = config.get("decoder", {})
        info = self.training_info
        name = str(config.get("name", "baclip"))
        facts = [
            ("model", f"`{name}` (decoder: {decoder.get('type', 'sam')})"),
            ("CLIP backbone", f"`{backbone.get('name')}`, {_clip_weights(backbone)}"),
            ("input size", f"{backbone.get('image_size')}×{backbone.get('image_size')}"),
        ]
        if decoder.get("type", "sam") == "sam":
            facts += [
                ("width", str(config.get("dim"))),
                ("MFMSA blocks (CCE)", str(config.get("cce", {}).get("num_blocks"))),
                ("MREM", str(config.get("mrem", {}).get("mode"))),
            ]
        counts = self.parameter_counts()  # type: ignore[attr-defined]
        facts.append(
            ("parameters", f"{counts['trainable']:,} trained, {counts['frozen']:,} frozen")
        )
        card_data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())
        return ModelCard.from_template(
            card_data=card_data,
            template_str=self._hub_mixin_info.model_card_template,
            title=f"BaCLIP: {name}",
            summary=(
                "An open-vocabulary camouflaged object segmenter (BaCLIP, CVPR 2026) from the "
                "ovcamo toolkit: "
                + (
                    "a frozen CLIP, MREM, CCE, adaptive text prompts and a SAM mask decoder"
                    if decoder.get("type", "sam") == "sam"
                    else "a frozen CLIP and an FPN decoder (the ablation ladder's first rung)"
                )
                + "; CLIP classifies the masked region among the candidate class names."
            ),
            facts=facts,
            classes=list(info.get("classes", [])),
            metrics=[(k, f"{v:.4f}") for k, v in info.get("metrics", {}).items()],
            step=info.get("step"),
            location=kwargs.get("location", "path/to/this/folder"),
        )

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        model_card_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Write the model into ``save_directory`` (``model.safetensors``,
        ``backbone.safetensors`` unless an open_clip tag names the CLIP, ``config.json``) with a
        model card ``README.md``, unless the folder already holds one; ``push_to_hub=True,
        repo_id=...`` also uploads it (huggingface_hub's ``ModelHubMixin.save_pretrained``)."""
        card = {"location": str(save_directory), **(model_card_kwargs or {})}
        return super().save_pretrained(save_directory, model_card_kwargs=card, **kwargs)


def _clip_weights(backbone: Mapping[str, Any]) -> str:
    """Where the frozen CLIP's weights came from, in words."""
    from ovcamo.models.build import backbone_is_named

    pretrained = backbone.get("pretrained")
    if not pretrained:
        return "random weights (stored in `backbone.safetensors`)"
    if backbone_is_named(backbone):
        return f"open_clip weights `{pretrained}`"
    return f"weights from `{Path(str(pretrained)).name}` (stored in `backbone.safetensors`)"
