"""The loop's stage cache and stage keys: skip finished stages, rerun unfinished ones."""

from __future__ import annotations

import json
import time

import pytest
from omegaconf import OmegaConf

from ovcamo.engine.loop import plan_stages, stage_order
from ovcamo.engine.stage_cache import MARKER, StageCache, content_hash


def _cfg(**overrides):
    cfg = OmegaConf.create(
        {
            "data": {
                "world": {"seed": 0, "image_size": 32},
                "holdout_fraction": 0.2,
                "synthetic": [],
                "synthetic_ratio": 0.2,
            },
            "clip": {"epochs": 1},
            "backbone": {"name": "ovcamo_micro_convnext", "pretrained": "micro"},
            "model": {"name": "baclip_micro", "width": 32},
            "train": {"max_steps": 3},
            "generator": {"name": "classic", "patch": 24},
            "planner": {"rule": "quantile"},
            "loop": {
                "seeds": [0, 1],
                "variants": ["without", "with"],
                "eval": {},
                "rare_eval": {"per_class": 4},
            },
        }
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_stage_runs_once_then_is_cached(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def fn(directory):
        calls.append(directory)
        (directory / "out.txt").write_text("x")
        start = time.process_time()
        while time.process_time() - start < 0.1:  # CPU work the marker must account for
            pass
        return {"file": str(directory / "out.txt"), "n": 3}

    first = cache.run("gen", "generate", {"a": 1}, fn)
    second = cache.run("gen", "generate", {"a": 1}, fn)
    assert [first.status, second.status] == ["ran", "cached"]
    assert len(calls) == 1
    assert second.outputs == {"file": str(first.directory / "out.txt"), "n": 3}
    assert second.compute_seconds == pytest.approx(first.compute_seconds)
    assert second.cpu_seconds == pytest.approx(first.cpu_seconds) and first.cpu_seconds >= 0.05
    marker = json.loads((first.directory / MARKER).read_text())
    assert marker["inputs"] == {"a": 1} and marker["key"] == first.key
    # Different inputs: a different stage folder, computed again.
    third = cache.run("gen", "generate", {"a": 2}, fn)
    assert third.status == "ran" and third.directory != first.directory
    assert len(calls) == 2


def test_killed_stage_reruns_and_resumes_in_its_folder(tmp_path):
    cache = StageCache(tmp_path)

    def killed(directory):
        (directory / "partial.ckpt").write_text("step 5")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("train", "train", {"seed": 0}, killed)
    seen = {}

    def resumed(directory):
        seen["partial"] = (directory / "partial.ckpt").read_text()
        return {"best": "step 9"}

    record = cache.run("train", "train", {"seed": 0}, resumed)
    assert record.status == "ran"
    assert seen["partial"] == "step 5"  # the rerun finds the unfinished stage's files
    assert cache.run("train", "train", {"seed": 0}, killed).status == "cached"


def test_stage_reruns_when_external_output_vanished(tmp_path):
    cache = StageCache(tmp_path / "cache")
    external = tmp_path / "world"
    external.mkdir()
    record = cache.run("data", "data", {}, lambda d: {"root": str(external)})
    external.rmdir()
    again = cache.run("data", "data", {}, lambda d: {"root": str(tmp_path)})
    assert record.status == "ran" and again.status == "ran"


def test_corrupt_marker_is_not_trusted(tmp_path):
    cache = StageCache(tmp_path)
    record = cache.run("x", "eval", {}, lambda d: {})
    (record.directory / MARKER).write_text("{not json")
    assert cache.run("x", "eval", {}, lambda d: {}).status == "ran"


def test_plan_keys():
    cfg = _cfg()
    plan = plan_stages(cfg)
    assert stage_order(cfg) == [
        "data",
        "micro_clip",
        "generate",
        "real_extra",
        "rare_eval",
        "baseline",
        "train/without/seed0",
        "eval/without/seed0",
        "train/with/seed0",
        "eval/with/seed0",
        "train/without/seed1",
        "eval/without/seed1",
        "train/with/seed1",
        "eval/with/seed1",
    ]
    assert set(stage_order(cfg)) == set(plan.inputs)
    assert plan.key("train/without/seed0") != plan.key("train/without/seed1")
    assert plan.key("train/without/seed0") != plan.key("train/with/seed0")

    # A sweep over the generator or the ratio reuses the baseline runs...
    for override in ({"generator.name": "lakered_micro"}, {"data.synthetic_ratio": 0.3}):
        other = plan_stages(_cfg(**override))
        assert other.key("train/without/seed0") == plan.key("train/without/seed0")
        assert other.key("eval/without/seed1") == plan.key("eval/without/seed1")
        assert other.key("train/with/seed0") != plan.key("train/with/seed0")
    # ...while anything the baseline reads changes every downstream key.
    # The real-extra arm and the rare-class set follow the planner, not the generator: a generator
    # sweep reuses the real arm's runs; another plan changes them.
    real = plan_stages(_cfg(**{"loop.variants": ["without", "with", "real"]}))
    other = plan_stages(
        _cfg(**{"loop.variants": ["without", "with", "real"], "generator.patch": 8})
    )
    assert other.key("generate") != real.key("generate")
    assert other.key("train/with/seed0") != real.key("train/with/seed0")
    for name in ("real_extra", "train/real/seed0", "eval/real/seed0", "rare_eval"):
        assert other.key(name) == real.key(name)
    replanned = plan_stages(
        _cfg(**{"loop.variants": ["without", "with", "real"], "planner.quantile": 0.3})
    )
    for name in ("real_extra", "train/real/seed0", "rare_eval"):
        assert replanned.key(name) != real.key(name)
    assert real.inputs["train/real/seed0"]["synthetic"]["set"] == real.key("real_extra")
    changed = plan_stages(_cfg(**{"data.world.seed": 1}))
    for name in stage_order(cfg):
        assert changed.key(name) != plan.key(name)
    model = plan_stages(_cfg(**{"model.width": 64}))
    assert model.key("generate") == plan.key("generate")
    assert model.key("train/without/seed0") != plan.key("train/without/seed0")


def test_plan_without_synthetic_runs_skips_generation():
    cfg = _cfg(**{"loop.variants": ["without"]})
    assert "generate" not in stage_order(cfg)
    with pytest.raises(KeyError, match="unknown variant"):
        plan_stages(_cfg(**{"loop.variants": ["without", "both"]}))


def test_content_hash_is_order_independent():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 1.5})
