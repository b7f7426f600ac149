"""``ovcamo-generate``: plan rare-class samples, generate them with the configured generator and
write a synthetic OVCamo-format set (docs/design.md, "Generation"). ``generate(cfg)`` is what
the loop calls."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from generation.base import SkipSample, SourceObject, build_generator
from generation.planner import Plan, PlanError, make_plan
from generation.writer import SyntheticSetWriter, dist_env
from ovcamo.data import DataPaths, Record, load_sample, resolve_records
from ovcamo.data.config import resolve_data_paths


def _data_file_problem(path: Path, key: str) -> str | None:
    if Path(path).is_file():
        return None
    return (
        f"data.{key} not found: {path} (point OVCAMO_ROOT or data.root at the dataset, or set "
        f"data.{key})"
    )


def _file_digest(path: Path, key: str) -> str:
    problem = _data_file_problem(path, key)
    if problem is not None:
        raise FileNotFoundError(problem)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_problems(cfg: DictConfig) -> list[str]:
    """What ``ovcamo-generate check=true`` finds without computing anything: the weights the
    generator reads and lacks (each with how to get or make it) and, for a dataset on disk, its
    two index files. A micro-world is not rendered for the check."""
    from generation.base import missing_weights

    problems = missing_weights(cfg.generator)
    if not cfg.data.get("world"):
        paths = DataPaths.from_cfg(cfg.data)
        problems += filter(
            None, (_data_file_problem(getattr(paths, k), k) for k in ("class_info", "sample_info"))
        )
    return problems


def config_hash(cfg: DictConfig, paths: DataPaths) -> str:
    """Hash of everything that decides the samples: generator and planner nodes, the data files."""
    payload = {
        "generator": OmegaConf.to_container(cfg.generator, resolve=True),
        "planner": OmegaConf.to_container(cfg.planner, resolve=True),
        "class_info": _file_digest(paths.class_info, "class_info"),
        "sample_info": _file_digest(paths.sample_info, "sample_info"),
        "holdout": [cfg.data.get("holdout_fraction", 0.0), cfg.data.get("holdout_seed", 0)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def output_dir(cfg: DictConfig, digest: str) -> Path:
    """``cfg.out_dir`` or ``<cache_dir>/synthetic/<generator>-<config hash>``."""
    if cfg.get("out_dir"):
        return Path(os.path.expanduser(str(cfg.out_dir)))
    return (
        Path(os.path.expanduser(str(cfg.cache_dir)))
        / "synthetic"
        / f"{cfg.generator.name}-{digest}"
    )


def _load_or_make_plan(cfg: DictConfig, paths: DataPaths, root: Path, digest: str) -> Plan:
    plan_path = root / "plan.json"
    if plan_path.is_file():
        plan = Plan.load(plan_path)
        if plan.config_hash != digest:
            raise PlanError(
                f"{root} holds a plan with config hash {plan.config_hash}, this run has {digest}; "
                "set out_dir to a new folder or delete the old set"
            )
        return plan
    return make_plan(
        paths,
        cfg.planner,
        generator=str(cfg.generator.name),
        config_hash=digest,
        holdout_fraction=float(cfg.data.get("holdout_fraction", 0.0) or 0.0),
        holdout_seed=int(cfg.data.get("holdout_seed", 0) or 0),
        strict=bool(cfg.data.get("strict", False)),
    )


def _wait_for_other_ranks(writer: SyntheticSetWriter, poll_s: float = 1.0) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        return
    total = len(writer.plan.items)
    while len(writer.done_indices()) < total:
        time.sleep(poll_s)


def generate(cfg: DictConfig) -> Path:
    """Run (or resume) the configured generation; returns the synthetic set's folder."""
    cache_dir = os.path.expanduser(str(cfg.cache_dir))
    paths = resolve_data_paths(cfg.data, cache_dir)
    digest = config_hash(cfg, paths)
    root = output_dir(cfg, digest)
    rank, world_size = dist_env()
    generator = None
    if rank == 0:
        # Planned, and for a new set the generator built, before the folder exists: a refused
        # plan or a generator that cannot be built leaves nothing behind.
        fresh = not (root / "plan.json").is_file()
        plan = _load_or_make_plan(cfg, paths, root, digest)
        if fresh and plan.items:
            generator = _build(cfg, paths, cache_dir)
        root.mkdir(parents=True, exist_ok=True)
    else:
        for _ in range(6000):
            if (root / "plan.json").is_file():
                break
            time.sleep(0.1)
        plan = Plan.load(root / "plan.json")
    writer = SyntheticSetWriter(root, paths, plan, rank=rank, world_size=world_size)
    todo = writer.pending()
    summary_extra: dict[str, Any] = {"data": paths.to_json()}
    if todo:
        generator = generator or _build(cfg, paths, cache_dir)
        records = _source_records(paths, {it.source_split for it in todo})
        seconds = _run_items(
            writer, generator, records, todo, progress=bool(cfg.get("progress", True)) and rank == 0
        )
        summary_extra["seconds_per_sample"] = seconds / max(1, len(todo))
    if world_size > 1:
        _wait_for_other_ranks(writer)
    summary = writer.finish(summary_extra)
    quality_cfg = cfg.get("quality") or {}
    if rank == 0 and quality_cfg.get("enabled", False) and summary["written"] >= 2:
        summary_extra["quality"] = _quality(root, paths, quality_cfg, _device(str(cfg.device)))
        writer.finish(summary_extra)
    return root


def _build(cfg: DictConfig, paths: DataPaths, cache_dir: str) -> Any:
    return build_generator(
        cfg.generator, data=paths, cache_dir=Path(cache_dir), device=_device(str(cfg.device))
    )


def _quality(root: Path, paths: DataPaths, cfg: Any, device: str) -> dict[str, Any]:
    from generation.outpaint.expansion import build_segmenter
    from generation.quality import build_feature_extractor, evaluate_set

    name = str(cfg.get("extractor", "small"))
    kwargs = {"weights": cfg.get("inception_weights")} if name == "inception" else {}
    segmenter = cfg.get("segmenter")
    return evaluate_set(
        root,
        paths,
        build_feature_extractor(name, **kwargs),
        max_real=cfg.get("max_real"),
        kid_subset_size=int(cfg.get("kid_subset_size", 50)),
        segmenter=build_segmenter(
            str(segmenter),
            cfg.get("segmenter_checkpoint"),
            str(cfg.get("sam_type", "vit_b")),
            device,
        )
        if segmenter
        else None,
    )


def _source_records(paths: DataPaths, splits: set[str]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for split in sorted(splits):
        records, _ = resolve_records(paths, split, check_files="none")  # type: ignore[arg-type]
        out.update({r.unique_id: r for r in records})
    return out


def _run_items(writer, generator, records, todo, *, progress: bool) -> float:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(todo, desc=f"generate[{writer.plan.generator}]", disable=not progress, unit="sample")
    for item in bar:
        record = records.get(item.source_unique_id)
        if record is None:
            writer.skip(item, f"missing_source: {item.source_unique_id!r} not in the dataset")
            continue
        try:
            s = load_sample(record)
        except (OSError, ValueError) as e:
            writer.skip(item, f"unreadable_source: {e}")
            continue
        source = SourceObject(s["image"], s["mask"], s["class_name"], s["unique_id"])
        try:
            sample = generator.generate(source, item.class_name, item.seed)
        except SkipSample as e:
            writer.skip(item, str(e))
            continue
        writer.write(item, sample)
    return time.perf_counter() - start


def summary_table(root: Path) -> str:
    """Markdown table of a finished set: per class source count, target, written; then skips."""
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    plan = Plan.load(root / "plan.json")
    planned: dict[str, int] = {}
    for it in plan.items:
        planned[it.class_name] = planned.get(it.class_name, 0) + 1
    lines = ["| class | train samples | planned | written |", "|---|---:|---:|---:|"]
    for c in sorted(planned):
        lines.append(
            f"| {c} | {plan.counts.get(c, 0)} | {planned[c]} | {summary['per_class'].get(c, 0)} |"
        )
    lines.append(
        f"\n{summary['written']} written, {summary['skipped']} skipped of {summary['planned']} planned"
        f" → {root}"
    )
    for reason, n in sorted(summary["skip_reasons"].items()):
        lines.append(f"  skipped {reason}: {n}")
    excluded = plan.excluded_sources()
    if excluded:
        lines.append(f"  {excluded}")
    for key, value in (summary.get("quality") or {}).items():
        lines.append(
            f"  quality {key}: {value:.4g}"
            if isinstance(value, float)
            else f"  quality {key}: {value}"
        )
    if summary.get("outside_ov_protocol"):
        lines.append("  NOTE: test classes were generated (allow_novel): outside the OV protocol")
    if summary.get("weights_may_overlap_ovcamo_test"):
        lines.append(
            "  NOTE: the generator's weights were trained on images that may be OVCamo test images"
        )
    return "\n".join(lines)


def main(cfg: DictConfig) -> None:
    """``ovcamo-generate``: generate, turning bad input into a message and exit status 2."""
    from ovcamo.data import DatasetFormatError, DatasetValidationError

    if cfg.get("check"):
        problems = check_problems(cfg)
        if problems:
            print(f"ovcamo-generate: {' '.join(problems)}", file=sys.stderr)
            raise SystemExit(2)
        print(f"check passed: {cfg.generator.name} has what it reads; nothing was computed")
        return
    try:
        root = generate(cfg)
    except (PlanError, DatasetFormatError, DatasetValidationError, FileNotFoundError) as e:
        print(f"ovcamo-generate: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    if dist_env()[0] == 0:
        print(summary_table(root))
