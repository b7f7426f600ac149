"""Optional dependencies and the extra of ``pip install "ovcamo[<extra>]"`` that brings each.

The plain install scores predictions and renders the micro-world (torch, Hydra, OpenCV, SciPy,
matplotlib, torchmetrics). Everything else is an extra, so that a user who only wants the evaluator
never installs diffusers, transformers, segment-anything or wandb:

========  =====================================================  ==================================
extra     distributions                                          needed for
========  =====================================================  ==================================
model     open_clip_torch, timm, segment-anything                BaCLIP, ``ovcamo-train``,
                                                                 ``ovcamo-micro-clip``, the loop,
                                                                 ``ovcamo-eval checkpoint=``
gen       diffusers, transformers, scikit-image (+ ``model``)    the diffusion generators
wandb     wandb                                                  ``logger=wandb``
demo      gradio                                                 ``ovcamo-demo``
all       all of the above
dev       all + the test and lint tools
========  =====================================================  ==================================

The console commands turn a missing optional module into one line naming the extra (exit status 2).
"""

from __future__ import annotations

#: Importable top-level module → (distribution on PyPI, extra that installs it).
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "open_clip": ("open_clip_torch", "model"),
    "timm": ("timm", "model"),
    "segment_anything": ("segment-anything", "model"),
    "diffusers": ("diffusers", "gen"),
    "transformers": ("transformers", "gen"),
    "skimage": ("scikit-image", "gen"),
    "wandb": ("wandb", "wandb"),
    "gradio": ("gradio", "demo"),
}


def install_command(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f'pip install "ovcamo[{extra}]"'


def missing_extra_message(error: ImportError) -> str | None:
    """One line for an import that failed because an optional dependency is not installed, or
    ``None`` when the missing module is not one of :data:`OPTIONAL_MODULES`."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if name not in OPTIONAL_MODULES:
        return None
    distribution, extra = OPTIONAL_MODULES[name]
    return (
        f"this needs {distribution}, which is not installed; it comes with the {extra!r} extra: "
        f"{install_command(extra)}"
    )
