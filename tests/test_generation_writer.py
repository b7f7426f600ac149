from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from generation_data import write_dataset
from hydra import compose, initialize_config_dir

from generation.base import GeneratedSample
from generation.planner import make_plan
from generation.quality import SmallFeatureExtractor, evaluate_set
from generation.run import generate, summary_table
from generation.writer import SyntheticSetWriter
from ovcamo.cli import CONF_DIR
from ovcamo.data import DataPaths, OVCamoDataset, load_sample_info
from ovcamo.data.io import read_mask


def cfg_for(ds: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(
            "generate",
            overrides=[
                "data=ovcamo",
                f"data.root={ds}",
                "data.holdout_fraction=0",
                f"out_dir={out}",
                "progress=false",
                "device=cpu",
                *overrides,
            ],
        )


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after the raise runs."""


class DyingGenerator:
    """The classic generator that dies after ``n`` samples."""

    name = "classic"

    def __init__(self, n: int):
        from generation.classic import ClassicGenerator

        self.inner, self.left = ClassicGenerator(), n

    def generate(self, source, class_name, seed):
        if self.left == 0:
            raise Killed
        self.left -= 1
        return self.inner.generate(source, class_name, seed)


#: How many samples the next ``build_dying`` generator makes before dying (not part of the config,
#: so the restarted run has the same config hash).
DIE_AFTER = [3]


def build_dying(cfg, **context):
    return DyingGenerator(DIE_AFTER[0])


@pytest.fixture()
def ds(tmp_path) -> Path:
    write_dataset(tmp_path / "ds", edge_cases=True)
    return tmp_path / "ds"


def test_generate_writes_an_ovcamo_format_set_the_loader_reads(ds, tmp_path):
    out = generate(
        cfg_for(ds, tmp_path / "syn", "planner.rule=k_rarest", "planner.k=3", "planner.per_class=3")
    )
    assert out == tmp_path / "syn"
    paths = DataPaths.from_paths_json(out / "paths.json")
    assert json.loads((out / "paths.json").read_text())["train_image_dir"] == "train/image"
    assert paths.test_image_dir.is_dir() and not any(paths.test_image_dir.iterdir())
    assert json.loads((out / "class_info.json").read_text()) == json.loads(
        (ds / "class_info.json").read_text()
    )
    summary = json.loads((out / "summary.json").read_text())
    samples = load_sample_info(out / "sample_info.json")
    assert summary["complete"] and summary["written"] == len(samples)
    assert summary["planned"] == 9 == summary["written"] + summary["skipped"]
    for s in samples:
        assert s.extra["synthetic"] is True and s.extra["generator"] == "classic"
        assert s.extra["config_hash"] == summary["config_hash"]
        assert s.extra["source_unique_id"].endswith(s.base_class)
        assert isinstance(s.extra["seed"], int) and "outside_ov_protocol" not in s.extra
        assert read_mask(paths.train_mask_dir / s.mask_name).any()
    dataset = OVCamoDataset(paths, "train", strict=True, check_files="full")
    assert len(dataset) == len(samples)
    item = dataset[0]
    assert item["image"].shape[:2] == item["mask"].shape
    table = summary_table(out)
    assert "| reccoon | 1 | 3 |" in table


def test_quality_lands_in_the_summary(ds, tmp_path):
    out = generate(
        cfg_for(
            ds,
            tmp_path / "syn",
            "planner.rule=k_rarest",
            "planner.k=2",
            "planner.per_class=2",
            "quality.enabled=true",
            "quality.kid_subset_size=3",
        )
    )
    quality = json.loads((out / "summary.json").read_text())["quality"]
    assert quality["n"] == 4 and quality["foreground_preservation"] == 1.0
    # The summary holds what the set scores with the default extractor; the table shows it.
    expected = evaluate_set(
        out,
        DataPaths.from_paths_json(ds / "paths.json"),
        SmallFeatureExtractor(),
        kid_subset_size=3,
    )
    assert quality.keys() == expected.keys()
    # KID draws its subsets at random; every other number is deterministic.
    fixed = {k: v for k, v in expected.items() if not k.startswith("kid_")}
    assert {k: quality[k] for k in fixed} == pytest.approx(fixed, nan_ok=True)
    assert f"quality fid: {expected['fid']:.4g}\n" in summary_table(out)


def test_edge_case_sources_are_generated_or_skipped_with_reasons(ds, tmp_path):
    # owl's sources include the edge cases; plan every owl source once.
    out = generate(
        cfg_for(
            ds,
            tmp_path / "syn",
            "planner.rule=target",
            "planner.target_count=100",
            "planner.max_per_class=9",
        )
    )
    summary = json.loads((out / "summary.json").read_text())
    skipped_sources = {s["source_unique_id"]: s["reason"] for s in summary["skips"]}
    reasons = {r.split(":")[0] for r in skipped_sources.values()}
    assert {"empty_mask", "object_fills_image", "tiny_object"} <= reasons
    assert summary["skip_reasons"]["empty_mask"] >= 1
    written_sources = {
        s.extra["source_unique_id"] for s in load_sample_info(out / "sample_info.json")
    }
    # The border-touching object and the size-mismatched pair (image resized to the mask) are generated.
    assert "000018_owl" in written_sources and "000020_owl" in written_sources


def test_kill_and_restart_finishes_the_plan_without_duplicates(ds, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DIE_AFTER", [3])
    out = tmp_path / "syn"
    overrides = (
        "planner.rule=k_rarest",
        "planner.k=2",
        "planner.per_class=4",
        "generator.builder=test_generation_writer:build_dying",
    )
    with pytest.raises(Killed):
        generate(cfg_for(ds, out, *overrides))
    assert len(load_sample_info(out / "sample_info.json")) == 3
    plan_before = (out / "plan.json").read_text()
    # What a kill can leave behind: a temporary file and a sample whose journal entry never landed.
    (out / "train" / "image" / ".classic_000005_reccoon.png.abc123.tmp").write_bytes(b"half")
    orphan = out / "train" / "image" / "classic_000003_mantis.png"
    orphan.write_bytes(b"not a png")
    DIE_AFTER[0] = 100
    generate(cfg_for(ds, out, *overrides))
    assert (out / "plan.json").read_text() == plan_before
    samples = load_sample_info(out / "sample_info.json")
    ids = [s.unique_id for s in samples]
    assert len(ids) == len(set(ids)) == 8
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "summary.json").read_text())["complete"]
    OVCamoDataset(
        DataPaths.from_paths_json(out / "paths.json"), "train", strict=True, check_files="full"
    )


def test_changed_config_refuses_an_old_folder(ds, tmp_path):
    out = tmp_path / "syn"
    generate(cfg_for(ds, out, "planner.rule=k_rarest", "planner.k=1"))
    with pytest.raises(ValueError, match="config hash"):
        generate(cfg_for(ds, out, "planner.rule=k_rarest", "planner.k=2"))


def test_two_writers_share_a_plan_by_rank(ds, tmp_path):
    paths = DataPaths.from_paths_json(ds / "paths.json")
    plan = make_plan(
        paths, {"rule": "k_rarest", "k": 2, "per_class": 3}, generator="g", config_hash="h"
    )
    root = tmp_path / "syn"
    w0 = SyntheticSetWriter(root, paths, plan, rank=0, world_size=2)
    w1 = SyntheticSetWriter(root, paths, plan, rank=1, world_size=2)
    assert [i.index for i in w0.pending()] == [0, 2, 4]
    assert [i.index for i in w1.pending()] == [1, 3, 5]
    sample = GeneratedSample(
        np.zeros((8, 8, 3), np.uint8), np.eye(8, dtype=bool), alpha=np.full((8, 8), 0.5)
    )
    for a, b in zip(w0.pending(), w1.pending(), strict=True):
        w0.write(a, sample)
        w1.write(b, sample)
        merged = json.loads((root / "sample_info.json").read_text())
        assert len(merged) == len({m["unique_id"] for m in merged})
    assert w0.finish()["complete"]
    assert [m["id"] for m in json.loads((root / "sample_info.json").read_text())] == list(range(6))
    assert (root / "train" / "alpha" / f"{plan.items[0].unique_id}.png").is_file()
    assert (root / "journal" / "rank0.json").is_file() and (
        root / "journal" / "rank1.json"
    ).is_file()


def test_runs_with_weights_that_may_overlap_the_test_set_are_marked(ds, tmp_path):
    paths = DataPaths.from_paths_json(ds / "paths.json")
    plan = make_plan(
        paths, {"rule": "k_rarest", "k": 1, "per_class": 2}, generator="g", config_hash="h"
    )
    w = SyntheticSetWriter(tmp_path / "syn", paths, plan)
    image, mask = np.zeros((8, 8, 3), np.uint8), np.eye(8, dtype=bool)
    w.write(plan.items[0], GeneratedSample(image, mask))
    assert w.finish()["weights_may_overlap_ovcamo_test"] is False
    w.write(
        plan.items[1], GeneratedSample(image, mask, extra={"weights_may_overlap_ovcamo_test": True})
    )
    assert w.finish()["weights_may_overlap_ovcamo_test"] is True


@pytest.mark.slow
def test_torchrun_style_ranks_in_two_processes(ds, tmp_path):
    out = tmp_path / "syn"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_generation_writer import cfg_for; from generation.run import generate;"
        "from pathlib import Path;"
        "generate(cfg_for(Path(sys.argv[2]), Path(sys.argv[3]), 'planner.rule=k_rarest', 'planner.k=2', 'planner.per_class=3'))"
    )
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(Path(__file__).parent), str(ds), str(out)], env=env
            )
        )
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    samples = load_sample_info(out / "sample_info.json")
    assert len(samples) == 6 and len({s.unique_id for s in samples}) == 6
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_novel_classes_are_marked_outside_the_protocol_everywhere(ds, tmp_path):
    out = generate(
        cfg_for(
            ds,
            tmp_path / "syn",
            "planner.rule=k_rarest",
            "planner.k=1",
            "planner.per_class=1",
            "planner.allow_novel=true",
            "planner.novel_classes=[frog]",
            "planner.novel_per_class=2",
        )
    )
    samples = load_sample_info(out / "sample_info.json")
    novel = [s for s in samples if s.base_class == "frog"]
    assert len(novel) == 2 and all(s.extra["outside_ov_protocol"] is True for s in novel)
    assert all("outside_ov_protocol" not in s.extra for s in samples if s.base_class != "frog")
    assert json.loads((out / "summary.json").read_text())["outside_ov_protocol"] is True
    assert json.loads((out / "plan.json").read_text())["outside_ov_protocol"] is True
    assert "outside the OV protocol" in summary_table(out)
