"""``ovcamo-loop check=true``: data paths, weights files and settings, validated before any compute."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from ovcamo.engine.loop import SET_STAGES, StagePlan, training_config
from ovcamo.engine.stage_cache import StageCache


def check_loop(cfg: DictConfig, plan: StagePlan, cache_dir: Path) -> list[str]:
    """Every problem found, as one line each; prints what each training run would do.

    The training side is ``ovcamo-train``'s own check, run on the first baseline run's config (the
    run with synthetic data differs only in a set that does not exist before generation).
    """
    from ovcamo.engine.check import CheckFailed, check_training

    problems: list[str] = []
    first = next(n for n in plan.inputs if n.startswith("train/"))
    out_dir = StageCache(cache_dir / "loop").directory("train", plan.key(first))
    tcfg = training_config(cfg, "without", int(cfg.loop.seeds[0]), out_dir / "run", cache_dir)
    try:
        check_training(tcfg, verdict=False)
    except CheckFailed as e:
        problems += [line.strip()[2:] for line in str(e).splitlines()[1:]]
    pretrained = cfg.backbone.get("pretrained")
    if pretrained and pretrained != "micro" and not _is_local_path(str(pretrained)):
        problems += check_open_clip_tag(str(cfg.backbone.name), str(pretrained))
    if any(v in cfg.loop.variants for v in SET_STAGES):
        # The real-extra arm copies the generated set's class counts: it needs the generator too.
        problems += check_generator(cfg.generator)
    return problems


def _is_local_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def check_open_clip_tag(name: str, tag: str) -> list[str]:
    """An open_clip tag must exist and, when the hub is off (``HF_HUB_OFFLINE=1``), be cached."""
    import open_clip

    if (name, tag) not in open_clip.list_pretrained():
        return [f"backbone.pretrained: open_clip knows no tag {tag!r} for {name!r}"]
    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").strip("/")
    if not hub:
        return []
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub, filename), str):
            return []
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return [
            f"backbone.pretrained: {name}/{tag} is not in the local Hugging Face cache and "
            f"HF_HUB_OFFLINE=1; download it once with network (hub repo {hub}) or pass a local "
            "weights file as backbone.pretrained"
        ]
    print(f"note: {name}/{tag} is not cached yet; open_clip downloads it from {hub} on first use")
    return []


def check_generator(generator: DictConfig) -> list[str]:
    """Weights the generator reads from disk and lacks, each with how to get or make it
    (:func:`generation.base.missing_weights`; unset ones, null, are not needed)."""
    from generation.base import missing_weights

    return missing_weights(generator)
