"""``ovcamo-demo``: segment an uploaded image in the browser with a trained model (gradio).

The page takes an image and comma-separated candidate class names, and shows the mask (at the
image's own size, post-processed as the evaluator's predictions), the overlay that
``ovcamo-predict`` draws, and the predicted class with the probability of every candidate. Bad
input on the page (no image, no class name, a name with a path separator, an unreadable image) is
answered in the page's message line; bad settings on the command line end with one paragraph on
stderr and exit status 2, before anything is served.

Keys in ``ovcamo/conf/demo.yaml``. :func:`build_app` makes the page for a loaded model without
serving it, for tests and for embedding in another gradio app.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from ovcamo.data.io import name_part_problem, out_dir_problem
from ovcamo.engine.predict_images import PredictInputError, resolve_classes
from ovcamo.models.predictor import Prediction, as_rgb_array
from ovcamo.report.overlay import overlay_prediction

#: The run record ``ovcamo-train`` writes beside ``checkpoints/``.
RUN_INFO_FILE = "run_info.json"


class DemoInputError(ValueError):
    """A setting of ``ovcamo-demo`` or an input on its page cannot be used."""


def load_demo_model(checkpoint: str | os.PathLike, device: str | torch.device) -> torch.nn.Module:
    """The trained model in ``checkpoint`` (a checkpoint folder or a run folder), in eval mode on
    ``device``; the one place this module loads a model."""
    from ovcamo.models import load_model

    return load_model(checkpoint, device)


def checkpoint_classes(checkpoint: str | os.PathLike) -> list[str] | None:
    """The classes the model in ``checkpoint`` was trained on, from its run folder's
    ``run_info.json`` (base classes, then the synthetic sources' novel classes), or ``None`` when
    the folder has no such record (a checkpoint copied out of its run)."""
    path = Path(checkpoint).expanduser()
    runs = [path] + [p.parent for p in (path, path.parent) if p.name == "checkpoints"]
    for run in runs:
        try:
            info = json.loads((run / RUN_INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        names = [str(n) for n in info.get("base_classes", [])]
        for source in info.get("sources", []):
            names += [str(n) for n in source.get("novel_classes", []) if str(n) not in names]
        if names:
            return names
    return None


def micro_world_classes() -> list[str]:
    """The default micro-world's base then novel classes (``conf/world/micro.yaml``)."""
    from omegaconf import OmegaConf

    from ovcamo import CONF_DIR

    classes = OmegaConf.load(Path(CONF_DIR) / "world" / "micro.yaml").classes
    return [str(n) for n in (*classes.train, *classes.test)]


def parse_classes(text: str | None) -> list[str]:
    """The comma-separated class names typed on the page, stripped; raises
    :class:`DemoInputError` for no name, a name given twice or a name with a path separator."""
    names = [n.strip() for n in (text or "").split(",")]
    names = [n for n in names if n]
    if not names:
        raise DemoInputError("type at least one class name, comma-separated (e.g. owl, frog)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DemoInputError(f"class names listed twice: {', '.join(repeated)}")
    bad = [f"{n!r} {problem}" for n in names if (problem := name_part_problem(n))]
    if bad:
        raise DemoInputError(f"class names must be plain names: {'; '.join(bad)}")
    return names


def segment(
    model: torch.nn.Module, image: str | os.PathLike | None, classes: str
) -> tuple[Prediction, np.ndarray]:
    """Segment the image file ``image`` among the comma-separated ``classes`` with ``model``.

    Returns the model's :class:`~ovcamo.models.predictor.Prediction` (its ``mask`` uint8 ``H×W``
    at the image's size) and the overlay drawn on the image (uint8 ``H×W×3``).
    Raises :class:`DemoInputError` for a missing or unreadable image and for bad class names.
    """
    if image is None:
        raise DemoInputError("upload an image first")
    names = parse_classes(classes)
    try:
        rgb = as_rgb_array(image)
    except (OSError, ValueError, SyntaxError) as e:
        raise DemoInputError(
            f"cannot read {Path(image).name} as an image ({e}); upload a PNG, JPEG, BMP, TIFF "
            "or WebP file"
        ) from e
    result = model.predict(rgb, names)
    label = f"{result.class_name} {result.score:.2f}"
    return result, overlay_prediction(rgb, result.mask, label)


def _uploaded_path(payload: Any) -> str | None:
    """The file of an image component's unprocessed value (gradio's ``FileData`` as a dict)."""
    if isinstance(payload, dict):
        return payload.get("path")
    return None


def build_app(model: torch.nn.Module, classes: list[str]) -> gr.Blocks:
    """The page for ``model``, its class box prefilled with ``classes``; not yet served.

    Its ``segment`` endpoint takes (image, class names) and returns (mask, overlay, class
    probabilities, message).
    """

    def run(
        image: Any, class_text: str
    ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, float] | None, str]:
        try:
            result, overlay = segment(model, _uploaded_path(image), class_text)
        except DemoInputError as e:
            return None, None, None, f"**Cannot segment:** {e}"
        n = len(result.class_probs)
        message = f"**{result.class_name}** ({result.score:.2f}) among {n} classes"
        return result.mask, overlay, result.class_probs, message

    with gr.Blocks(title="ovcamo demo", analytics_enabled=False) as app:
        gr.Markdown(
            "## Open-vocabulary camouflaged object segmentation\n"
            "Upload an image, list the candidate classes, and segment."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", sources=["upload"])
                class_box = gr.Textbox(
                    value=", ".join(classes), label="Classes (comma-separated)", lines=2
                )
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                message = gr.Markdown()
                with gr.Row():
                    mask = gr.Image(label="Mask", format="png", interactive=False)
                    overlay = gr.Image(label="Overlay", format="png", interactive=False)
                probs = gr.Label(label="Class probabilities")
        # Unprocessed input: the uploaded file reaches segment() even when it is no image, so
        # that an unreadable upload gets this page's message instead of gradio's error.
        button.click(
            run,
            inputs=[image, class_box],
            outputs=[mask, overlay, probs, message],
            api_name="segment",
            preprocess=False,
        )
    return app


def _prepare(cfg: Any) -> tuple[gr.Blocks, list[str]]:
    """The app for ``cfg`` and its classes; raises :class:`DemoInputError` for bad settings."""
    from ovcamo.engine.distributed import pick_device

    if not cfg.get("checkpoint"):
        raise DemoInputError(
            "give checkpoint=<checkpoint folder or run folder> (from ovcamo-train or the loop)"
        )
    if cfg.get("out_dir"):
        out = Path(str(cfg.out_dir)).expanduser().resolve()
        if problem := out_dir_problem(out):
            raise DemoInputError(f"out_dir={out}: {problem}; give a folder this command can create")
        # Read by gradio when the components are made: uploads and served images go there.
        os.environ["GRADIO_TEMP_DIR"] = str(out)
    if cfg.get("classes") is not None:
        try:
            classes = resolve_classes(cfg.classes)
        except PredictInputError as e:
            raise DemoInputError(str(e)) from e
    else:
        classes = checkpoint_classes(str(cfg.checkpoint)) or micro_world_classes()
    try:
        model = load_demo_model(str(cfg.checkpoint), pick_device(str(cfg.get("device", "auto"))))
    except (FileNotFoundError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise DemoInputError(f"checkpoint={cfg.checkpoint}: {e}") from e
    return build_app(model, classes), classes


def main(cfg: Any) -> None:
    """Entry point of ``ovcamo-demo``: serve the page until interrupted (``check=true``: build it
    and stop). Bad settings → one paragraph on stderr, exit status 2."""
    host, port = str(cfg.get("host", "127.0.0.1")), int(cfg.get("port", 7860))
    try:
        app, classes = _prepare(cfg)
        if cfg.get("check", False):
            print(
                f"ovcamo-demo: check passed: ready to serve {cfg.checkpoint} on "
                f"http://{host}:{port}/ with {len(classes)} classes ({', '.join(classes)}); "
                "nothing served (check=true)"
            )
            return
        try:
            app.launch(server_name=host, server_port=port, share=bool(cfg.get("share", False)))
        except OSError as e:
            raise DemoInputError(
                f"cannot serve on host={host} port={port} ({e}); choose another port= or host="
            ) from e
    except DemoInputError as e:
        print(f"ovcamo-demo: {e}", file=sys.stderr)
        raise SystemExit(2) from e
