"""``ovcamo-loop check=true``: data paths, weights files and settings, validated before any compute.

:func:`check_loop` runs the ``check`` of every stage declaration a loop plans (see
:class:`ovcamo.engine.stage_cache.Stage`); the checks themselves are here.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from generation.base import missing_weights
from ovcamo.engine.check import CheckFailed, Problem, check_training
from ovcamo.engine.stage_cache import StagePlan


def check_loop(cfg: DictConfig, plan: StagePlan, cache_dir: Path) -> list[Problem]:
    """Every problem found, in stage order: each declaration's ``check`` runs once, on the first
    stage planned from it (prints what the training run would do)."""
    problems: list[Problem] = []
    checked: set[str] = set()
    for name in plan.order:
        stage = plan.stages[name]
        if stage.check is not None and stage.name not in checked:
            checked.add(stage.name)
            problems += stage.check(cfg, plan, name, cache_dir)
    return problems


def check_training_run(cfg: DictConfig, tcfg: DictConfig) -> list[Problem]:
    """``ovcamo-train``'s own check of a training run's config ``tcfg`` (prints the run's plan),
    and the open_clip tag of the loop's backbone."""
    problems: list[Problem] = []
    try:
        check_training(tcfg, verdict=False)
    except CheckFailed as e:
        problems += e.problems
    pretrained = cfg.backbone.get("pretrained")
    if pretrained and pretrained != "micro" and not _is_local_path(str(pretrained)):
        problems += check_open_clip_tag(str(cfg.backbone.name), str(pretrained))
    return problems


def _is_local_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def check_open_clip_tag(name: str, tag: str) -> list[Problem]:
    """An open_clip tag must exist and, when the hub is off (``HF_HUB_OFFLINE=1``), be cached."""
    # open_clip and huggingface_hub come with the optional ``model`` extra.
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    if (name, tag) not in open_clip.list_pretrained():
        return [
            Problem(
                "backbone.pretrained",
                f"backbone.pretrained: open_clip knows no tag {tag!r} for {name!r}",
            )
        ]
    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").strip("/")
    if not hub:
        return []
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub, filename), str):
            return []
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return [
            Problem(
                "backbone.pretrained",
                f"backbone.pretrained: {name}/{tag} is not in the local Hugging Face cache and "
                f"HF_HUB_OFFLINE=1; download it once with network (hub repo {hub}) or pass a local "
                "weights file as backbone.pretrained",
            )
        ]
    print(f"note: {name}/{tag} is not cached yet; open_clip downloads it from {hub} on first use")
    return []


def check_generator(generator: DictConfig) -> list[Problem]:
    """Weights the generator reads from disk and lacks, each with how to get or make it
    (:func:`generation.base.missing_weights`; unset ones, null, are not needed)."""
    return [Problem("generator", message) for message in missing_weights(generator)]
