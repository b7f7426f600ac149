"""The loop's report: novel-class table, rare vs common classes, the planner, grids, stage times.

Reads only files the stages wrote (``metrics.json``, ``per_class.csv``, ``plan.json``, the
synthetic set and the prediction folders), so a report can be rebuilt from a finished loop's cache.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovcamo.data import DataPaths, load_class_info, load_sample, load_sample_info, resolve_records
from ovcamo.data.io import atomic_write_text, read_gray, read_image, read_mask, safe_join
from ovcamo.metrics import PAPER_ALIASES
from ovcamo.report.grids import comparison_grid, image_grid
from ovcamo.report.plots import class_key, grouped_bar, per_class_bar
from ovcamo.report.tables import SIX_METRICS, Spread, markdown_table, paired_difference

TREATED, CONTROL, ORACLE = "with", "without", "real"
#: The diagnostics columns (class check off; not the official protocol).
AGNOSTIC = {
    "agnostic_Sm": "Sm",
    "agnostic_Fwb": "Fωβ",
    "agnostic_MAE": "MAE",
    "agnostic_Fb": "Fβ",
    "agnostic_Em": "Em",
    "agnostic_IoU": "IoU",
}


@dataclass
class RunFiles:
    """Where one evaluated run's files are: score folders and prediction folders."""

    seed: int
    novel: Path
    base_val: Path | None  # None when nothing was held out (data.holdout_fraction=0)
    pred_novel: Path
    pred_val: Path | None
    rare_eval: Path | None = None  # the rare classes' own rendered set (micro-world loops)


@dataclass
class LoopSummary:
    """Everything the report reads, as plain paths and values."""

    data: DataPaths
    runs: dict[str, list[RunFiles]]
    stages: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    synthetic_dir: Path | None = None
    grid_samples: int = 12
    prediction_samples: int = 6
    baseline: dict[str, Any] | None = None  # the colour-contrast baseline's scores per part


def read_metrics(directory: str | os.PathLike) -> dict[str, float]:
    """The scalar metrics of a ``metrics.json`` written by ``ovcamo.engine.evaluate.write_results``."""
    path = Path(directory) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"metrics file missing: {path} (did the evaluation stage finish?)")
    data = json.loads(path.read_text(encoding="utf-8"))
    flat = data.get("metrics", data) if isinstance(data, dict) else {}
    return with_aliases({k: float(v) for k, v in flat.items() if isinstance(v, (int, float))})


def read_diagnostics(directory: str | os.PathLike) -> dict[str, float]:
    """The diagnostics of a ``metrics.json`` (``agnostic_*``, ``class_accuracy``)."""
    data = json.loads((Path(directory) / "metrics.json").read_text(encoding="utf-8"))
    return {k: float(v) for k, v in data.get("diagnostics", {}).items() if k != "note"}


def read_per_sample(directory: str | os.PathLike, column: str) -> dict[str, float]:
    """``unique_id -> column`` of a ``per_sample.csv``."""
    with (Path(directory) / "per_sample.csv").open(newline="", encoding="utf-8") as f:
        return {row["unique_id"]: float(row[column]) for row in csv.DictReader(f)}


def with_aliases(row: dict[str, Any]) -> dict[str, Any]:
    """Add the paper's names (``cIoU`` = ``avgiou``, ...) to a row keyed by the official keys."""
    for alias, key in PAPER_ALIASES.items():
        if key in row and alias not in row:
            row[alias] = row[key]
    return row


def read_per_class(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``per_class.csv``: the class column as text, every other numeric column as float."""
    path = Path(directory) / "per_class.csv"
    if not path.is_file():
        raise FileNotFoundError(f"per-class table missing: {path}")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out: dict[str, Any] = {}
            for k, v in row.items():
                try:
                    out[k] = float(v)
                except (TypeError, ValueError):
                    out[k] = v
            rows.append(with_aliases(out))
    return rows


def group_means(
    rows: Sequence[Mapping[str, Any]], rare: set[str], metric: str = "cIoU"
) -> dict[str, float]:
    """Mean of ``metric`` over rare classes, over the other (common) classes and over all classes.

    Classes weigh equally (a macro average), so a rare class with few validation images counts as
    much as a common one; a group without classes gives nan.
    """
    key = class_key(rows)
    values = {str(r[key]): float(r[metric]) for r in rows}
    groups = {
        "rare": [v for c, v in values.items() if c in rare],
        "common": [v for c, v in values.items() if c not in rare],
        "all": list(values.values()),
    }
    return {g: float(np.mean(v)) if v else float("nan") for g, v in groups.items()}


def load_plan(synthetic_dir: Path | None) -> dict[str, Any] | None:
    if synthetic_dir is None or not (synthetic_dir / "plan.json").is_file():
        return None
    return json.loads((synthetic_dir / "plan.json").read_text(encoding="utf-8"))


def planner_table(plan: Mapping[str, Any], synthetic_dir: Path) -> str:
    """Train count, rarity, fill target, planned and written synthetic samples per train class."""
    written: dict[str, int] = {}
    info = synthetic_dir / "sample_info.json"
    if info.is_file():
        for s in load_sample_info(info):
            written[s.base_class] = written.get(s.base_class, 0) + 1
    planned: dict[str, int] = {}
    for item in plan.get("items", []):
        planned[item["class_name"]] = planned.get(item["class_name"], 0) + 1
    counts = plan.get("counts", {})
    targets = plan.get("targets", {})
    names = sorted(set(counts) | set(planned), key=lambda c: (counts.get(c, 0), c))
    rows = [
        [
            c,
            counts.get(c, 0),
            "rare" if c in targets else "",
            targets.get(c, ""),
            planned.get(c, 0),
            written.get(c, 0),
        ]
        for c in names
    ]
    headers = ["class", "train samples", "rare", "fill to", "planned", "written"]
    return markdown_table(headers, rows, align="lrlrrr")


def synthetic_grid(synthetic_dir: Path, path: Path, n: int) -> Path | None:
    """A grid of ``n`` synthetic samples spread over the generated classes, masks outlined."""
    info = synthetic_dir / "sample_info.json"
    if not info.is_file():
        return None
    samples = load_sample_info(info)
    if not samples:
        return None
    paths = DataPaths.from_paths_json(synthetic_dir / "paths.json")
    chosen = _spread_over_classes(samples, n, lambda s: s.base_class)
    images, masks, titles = [], [], []
    for s in chosen:
        images.append(read_image(safe_join(paths.train_image_dir, s.image_name)))
        masks.append(read_mask(safe_join(paths.train_mask_dir, s.mask_name)))
        titles.append(s.base_class)
    return image_grid(images, path, titles=titles, masks=masks, ncols=6)


def _spread_over_classes(items: Sequence[Any], n: int, cls: Any) -> list[Any]:
    """Up to ``n`` items taken round-robin over classes (sorted), in each class in file order."""
    by_class: dict[str, list[Any]] = {}
    for it in items:
        by_class.setdefault(cls(it), []).append(it)
    out: list[Any] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_class.values()):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(out) < n:
                out.append(by_class[c][depth])
        depth += 1
    return out


def _prediction_files(pred_dir: Path) -> dict[str, tuple[str, Path]]:
    """``unique_id -> (predicted class, file)`` for ``[<class>]<unique_id>.png`` predictions."""
    out = {}
    for p in pred_dir.glob("*.png"):
        if p.name.startswith("[") and "]" in p.name:
            cls, rest = p.name[1:].split("]", 1)
            out[rest[: -len(".png")]] = (cls, p)
    return out


def prediction_items(
    data: DataPaths,
    split: str,
    pred_dirs: Mapping[str, Path],
    n: int,
    classes: set[str] | None = None,
) -> list[dict[str, Any]]:
    """The same ``n`` samples (spread over classes) with each run's prediction, for a grid."""
    records, _ = resolve_records(
        data, split, load_class_info(data.class_info), load_sample_info(data.sample_info)
    )
    preds = {name: _prediction_files(d) for name, d in pred_dirs.items()}
    common = set.intersection(*(set(p) for p in preds.values())) if preds else set()
    pool = [r for r in records if r.unique_id in common]
    if classes is not None:
        pool = [r for r in pool if r.class_name in classes]
    items = []
    for r in _spread_over_classes(pool, n, lambda r: r.class_name):
        sample = load_sample(r)
        runs = {}
        for name in pred_dirs:
            pred_class, file = preds[name][r.unique_id]
            runs[name] = {"pred": read_gray(file), "pred_class": pred_class}
        items.append(
            {
                "image": sample["image"],
                "gt": sample["mask"],
                "gt_class": r.class_name,
                "title": r.unique_id,
                "preds": runs,
            }
        )
    return items


def _fmt(x: float, signed: bool = False) -> str:
    return "n/a" if x != x else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _verdict(label: str, diff: Spread) -> str:
    within = diff.within_spread
    if within is None:
        tail = "with a single seed there is no spread to judge it by"
    elif within:
        tail = "this is **within the spread over seeds**: no effect can be claimed from these runs"
    else:
        tail = (
            f"larger than the spread over seeds (all {diff.n} seeds agree in sign and |mean| > std); "
            "with this few seeds an indication, not a significance test"
        )
    per_seed = ", ".join(f"{v:+.3f}" for v in diff.values)
    return f"- {label}: Δ = {diff.format(signed=True)} (per seed: {per_seed}); {tail}."


def write_loop_report(summary: LoopSummary, out_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = summary.meta
    runs = summary.runs
    compare = TREATED in runs and CONTROL in runs
    plan = load_plan(summary.synthetic_dir)
    rare = set(plan.get("targets", {})) if plan else set()
    md: list[str] = ["# ovcamo loop report\n"]
    md.append(_intro(meta, runs))
    if plan and plan.get("outside_ov_protocol"):
        md.append(
            "**This run is outside the open-vocabulary protocol: synthetic samples of novel (test) "
            "classes were generated and trained on.**\n"
        )

    novel = {name: [read_metrics(r.novel) for r in rs] for name, rs in runs.items()}
    md.append("## Novel classes (official OVCOS protocol)\n")
    md.append(
        "Class-aware metrics on the test split; candidates are all test class names. "
        "Mean ± standard deviation over seeds.\n"
    )
    md.append(_six_table(novel, compare))
    md.append(_per_seed_table(novel, runs))
    md.append(_diagnostics_section(runs, summary.baseline))
    md.append(
        confused_classes_section(
            {a: [r.novel for r in runs[a]] for a in (CONTROL, TREATED) if a in runs},
            out,
            class_order=[
                c.name for c in sorted(load_class_info(summary.data.class_info), key=lambda c: c.id)
            ],
        )
    )
    md.append(_rare_eval_section(runs, meta))

    groups: dict[str, list[dict[str, float]]] = {}
    kinds: list[str] = []
    if all(r.base_val is not None for rs in runs.values() for r in rs):
        base = {name: [read_per_class(r.base_val) for r in rs] for name, rs in runs.items()}
        md.append("## Base validation: rare vs common classes\n")
        md.append(
            "cIoU on the held-out part of the train split, macro-averaged over classes. Rare "
            f"classes (chosen by the planner): {', '.join(sorted(rare)) or 'none'}.\n"
        )
        groups = {
            name: [group_means(rows, rare) for rows in per_seed] for name, per_seed in base.items()
        }
        # A group without classes (no rare class planned, or every class rare) is left out.
        kinds = [
            k
            for k in ("rare", "common", "all")
            if all(g[k] == g[k] for v in groups.values() for g in v)
        ]
        md.append(_group_table(groups, kinds, compare))
        grouped_bar(
            kinds,
            {n: [Spread.of([g[k] for g in v]).mean for k in kinds] for n, v in groups.items()},
            out / "base_val_rare_common.png",
            errors={
                n: [_std0(Spread.of([g[k] for g in v])) for k in kinds] for n, v in groups.items()
            },
            ylabel="cIoU",
            title="Base validation cIoU (mean ± std over seeds)",
        )
        md.append("![rare vs common](base_val_rare_common.png)\n")
        md.append(_per_class_section(base, rare, out))
    else:
        md.append("## Base validation\n")
        md.append(
            "Not scored: every base image was trained on (`data.holdout_fraction=0`, the paper's "
            "protocol). `data.holdout_fraction=0.1` holds out a part of each base class to score "
            "rare against common classes.\n"
        )

    if compare:
        md.append("## Did the synthetic set help?\n")
        md.append(
            _verdict(
                "novel classes, cIoU", paired_difference(novel[TREATED], novel[CONTROL], "cIoU")
            )
        )
        md.append(
            _verdict("novel classes, cSm", paired_difference(novel[TREATED], novel[CONTROL], "cSm"))
        )
        for g in (k for k in kinds if k != "all"):
            diff = Spread.of(
                [t[g] - c[g] for t, c in zip(groups[TREATED], groups[CONTROL], strict=True)]
            )
            md.append(_verdict(f"base validation, {g} classes, cIoU", diff))
        md.append("")

    if plan is not None and summary.synthetic_dir is not None:
        md.append("## Planner\n")
        md.append(f"Rule `{plan.get('rule')}`, generator `{plan.get('generator')}`.\n")
        md.append(planner_table(plan, summary.synthetic_dir))
        grid = synthetic_grid(
            summary.synthetic_dir, out / "synthetic_grid.png", summary.grid_samples
        )
        if grid is not None:
            md.append("## Synthetic samples\n")
            md.append("Generated samples, one class after another; the exact mask is outlined.\n")
            md.append("![synthetic samples](synthetic_grid.png)\n")

    md.append(_prediction_section(summary, rare, out))
    md.append(_stage_section(summary.stages, meta.get("wall_seconds")))
    report = out / "report.md"
    atomic_write_text(report, "\n".join(md))
    return report


def _diagnostics_section(
    runs: Mapping[str, Sequence[RunFiles]], baseline: Mapping[str, Any] | None
) -> str:
    """Class-agnostic scores and class accuracy per run, beside the non-learned baseline."""
    diag = {name: [read_diagnostics(r.novel) for r in rs] for name, rs in runs.items()}
    headers = ["run", *AGNOSTIC.values(), "class accuracy"]
    rows = [
        [
            name,
            *(Spread.of([d[k] for d in per_seed]).format() for k in AGNOSTIC),
            Spread.of([d["class_accuracy"] for d in per_seed]).format(),
        ]
        for name, per_seed in diag.items()
    ]
    text = [
        "## Masks and classes apart (diagnostics, not the official protocol)\n",
        "The six metrics with the class check switched off (every mask scored as if its class "
        "were right), and the share of samples whose class is right: a low cIoU with a high "
        "IoU here means wrong classes, a low IoU here means bad masks. Novel classes, mean ± std "
        "over seeds.\n",
    ]
    novel = (baseline or {}).get("novel")
    if novel:
        rows.append(
            [f"baseline: {baseline.get('name', '?')}", *(_fmt(novel[k]) for k in AGNOSTIC), "n/a"]
        )
    text.append(markdown_table(headers, rows))
    if novel:
        margins = ", ".join(
            f"{name} {Spread.of([d['agnostic_IoU'] for d in per_seed]).mean - novel['agnostic_IoU']:+.3f}"
            for name, per_seed in diag.items()
        )
        text.append(
            f"\nThe baseline learns nothing: it marks colours unlike the image border. Segmenter "
            f"IoU minus baseline IoU: {margins}.\n"
        )
    return "\n".join(text)


def confused_classes_section(
    novel: Mapping[str, Sequence[Path]], out: Path, class_order: Sequence[str] = ()
) -> str:
    """ "Which classes are confused": predicted vs GT class on the novel split per arm, counted
    over seeds from each evaluation's ``per_sample.csv``; the most frequent confusions as a table
    and one heat map per arm (``confusion_<arm>.png`` in ``out``). Empty without arms."""
    from ovcamo.report.confusion import (
        confusion_heatmap,
        confusion_matrix,
        top_confusions_markdown,
    )

    if not novel:
        return ""
    matrices = {}
    for arm, folders in novel.items():
        pairs = []
        for folder in folders:
            with (Path(folder) / "per_sample.csv").open(newline="", encoding="utf-8") as f:
                pairs += [(row["gt_class"], row["pred_class"]) for row in csv.DictReader(f)]
        matrices[arm] = confusion_matrix(pairs, class_order)
    out.mkdir(parents=True, exist_ok=True)
    text = [
        "## Which classes are confused\n",
        "Novel classes: the GT classes most often given another class's name, samples counted "
        "over all seeds (share: of that GT class's samples).\n",
        top_confusions_markdown(matrices),
    ]
    for arm, conf in matrices.items():
        confusion_heatmap(
            conf,
            out / f"confusion_{arm}.png",
            title=f"{arm}: predicted vs GT class, novel split ({conf.total} samples)",
        )
        text.append(f"![{arm}: predicted vs GT class](confusion_{arm}.png)\n")
    return "\n".join(text)


def _aligned(runs: Mapping[str, Sequence[RunFiles]], column: str) -> dict[str, np.ndarray]:
    """Per-sample scores on the rare-class set, ``(seeds, samples)`` per run, samples aligned."""
    tables = {n: [read_per_sample(r.rare_eval, column) for r in rs] for n, rs in runs.items()}
    ids = sorted(set.intersection(*(set(t) for ts in tables.values() for t in ts)))
    return {n: np.array([[t[i] for i in ids] for t in ts]) for n, ts in tables.items()}


def _rare_eval_section(runs: Mapping[str, Sequence[RunFiles]], meta: Mapping[str, Any]) -> str:
    """Oracle gain, synthetic gain and the share recovered on the rare classes, with intervals."""
    from ovcamo.report.stats import paired_gains

    arms = (CONTROL, TREATED, ORACLE)
    if not all(a in runs for a in arms) or any(r.rare_eval is None for a in arms for r in runs[a]):
        return ""
    gains = {
        label: paired_gains(_aligned({a: runs[a] for a in arms}, column))
        for label, column in (("cIoU", "avgiou"), ("IoU, class check off", "agnostic_IoU"))
    }
    g = gains["cIoU"]
    text = [
        "## Rare base classes: did the synthetic set help?\n",
        f"The planner's rare classes, scored on {g.samples} new renders of them (candidates: the "
        f"base classes). `real` adds as many new *real* samples of those classes as the planner "
        f"asks the generator for, mixed in the same way: its gain over `without` is what extra "
        f"data of the right kind can give (the oracle gain). Each seed's gain is its mean over "
        f"the same samples of one run minus the other, same seed; intervals: {g.method}.\n",
    ]
    rows = [
        [label, x.oracle.format(), x.synthetic.format(), x.share.format(percent=True)]
        for label, x in gains.items()
    ]
    text.append(
        markdown_table(
            ["metric", "oracle gain (real − without)", "synthetic gain (with − without)", "share"],
            rows,
            "lrrr",
        )
    )
    generator = meta.get("generator", "the generator")
    if g.seeds < 2:
        verdict = (
            f"With {g.seeds} seed there is no interval, so no verdict: run at least 2 seeds "
            "(`loop.seeds`), better 3 or more."
        )
    elif not g.oracle.excludes_zero:
        verdict = (
            "The oracle gain's interval includes 0: in this world the rare classes are not short "
            "of data, so no synthetic set could show an effect here."
        )
    elif g.synthetic.excludes_zero and g.synthetic.value > 0:
        verdict = (
            f"Yes: `{generator}` raised rare-class cIoU by {g.synthetic.value:+.3f}, "
            f"{g.share.value:.0%} of what extra real data gave."
        )
    elif g.synthetic.excludes_zero:
        verdict = f"No: `{generator}` lowered rare-class cIoU by {-g.synthetic.value:.3f}."
    else:
        verdict = (
            f"Not shown: extra real data helped ({g.oracle.value:+.3f}), but the change with "
            f"`{generator}` ({g.synthetic.value:+.3f}) is within its interval of 0."
        )
    text.append(f"\n{verdict}\n")
    return "\n".join(text)


def _std0(s: Spread) -> float:
    return 0.0 if s.std != s.std else s.std


def _intro(meta: Mapping[str, Any], runs: Mapping[str, Sequence[RunFiles]]) -> str:
    seeds = sorted({r.seed for rs in runs.values() for r in rs})
    lines = [
        f"- data: {meta.get('data', '?')}",
        f"- model: {meta.get('model', '?')} (backbone {meta.get('backbone', '?')})",
        f"- runs: {', '.join(runs)}; seeds: {', '.join(map(str, seeds))}",
    ]
    clip = meta.get("micro_clip") or {}
    if clip:
        lines.append(
            "- micro CLIP zero-shot top-1 over the novel classes: "
            + ", ".join(f"{k.rsplit('_', 1)[-1]} {v:.1%}" for k, v in clip.items())
        )
    if TREATED in runs:
        lines.append(
            f"- synthetic set: generator `{meta.get('generator', '?')}`, "
            f"synthetic ratio {meta.get('synthetic_ratio', '?')}"
        )
    if ORACLE in runs:
        lines.append(
            "- `real`: as many new real samples of the same classes as planned for the generator, "
            "rendered by the world, mixed in at the same ratio"
        )
    lines.append(
        "- the runs differ only in `data.synthetic` / `data.synthetic_ratio`; all else, "
        "seeds and optimizer steps included, is identical"
    )
    return "\n".join(lines) + "\n"


def _six_table(novel: Mapping[str, list[dict[str, float]]], compare: bool) -> str:
    from ovcamo.report.tables import six_metric_table

    return six_metric_table(novel, difference=(TREATED, CONTROL) if compare else None)


def _per_seed_table(
    novel: Mapping[str, list[dict[str, float]]], runs: Mapping[str, Sequence[RunFiles]]
) -> str:
    rows = []
    for name, per_seed in novel.items():
        for r, m in zip(runs[name], per_seed, strict=True):
            rows.append([name, r.seed, *(_fmt(m[k]) for k in SIX_METRICS)])
    return "Per seed:\n\n" + markdown_table(["run", "seed", *SIX_METRICS.values()], rows)


def _group_table(
    groups: Mapping[str, list[dict[str, float]]], kinds: Sequence[str], compare: bool
) -> str:
    rows = [
        [name, *(Spread.of([g[k] for g in per_seed]).format() for k in kinds)]
        for name, per_seed in groups.items()
    ]
    if compare:
        row = [f"Δ ({TREATED} − {CONTROL})"]
        for k in kinds:
            d = [t[k] - c[k] for t, c in zip(groups[TREATED], groups[CONTROL], strict=True)]
            row.append(Spread.of(d).format(signed=True))
        rows.append(row)
    return markdown_table(["run", *(f"{k} cIoU" for k in kinds)], rows)


def _per_class_section(
    base: Mapping[str, list[list[dict[str, Any]]]], rare: set[str], out: Path
) -> str:
    """Per-class cIoU (mean over seeds) for each run, and a bar chart per run."""
    names = list(base)
    per_run: dict[str, dict[str, float]] = {}
    for name in names:
        acc: dict[str, list[float]] = {}
        for rows in base[name]:
            key = class_key(rows)
            for r in rows:
                acc.setdefault(str(r[key]), []).append(float(r["cIoU"]))
        per_run[name] = {c: float(np.mean(v)) for c, v in acc.items()}
    classes = sorted(set().union(*(set(v) for v in per_run.values())))
    headers = ["class", "rare", *(f"{n} cIoU" for n in names)]
    align = "ll" + "r" * len(names)
    rows = [
        [c, "rare" if c in rare else "", *(_fmt(per_run[n].get(c, float("nan"))) for n in names)]
        for c in classes
    ]
    text = "Per class (mean over seeds):\n\n" + markdown_table(headers, rows, align)
    for name in names:
        per_class_bar(
            [{"class": c, "cIoU": v} for c, v in per_run[name].items()],
            out / f"base_val_per_class_{name}.png",
            highlight=sorted(rare),
            labels=("rare", "common"),
            title=f"Base validation cIoU per class, {name} synthetic data (rare highlighted)",
        )
        text += f"\n![per-class cIoU, {name}](base_val_per_class_{name}.png)\n"
    return text


def _prediction_section(summary: LoopSummary, rare: set[str], out: Path) -> str:
    first = {name: rs[0] for name, rs in summary.runs.items() if rs}
    if not first:
        return ""
    seed = next(iter(first.values())).seed
    text = [
        "## Predictions\n",
        f"Seed {seed}; image | ground truth | each run's prediction, captioned with its predicted "
        "class (green when right, red when wrong: a wrong class scores as an empty mask).\n",
    ]
    grids = [("novel", "test", "pred_novel", None, "Novel classes (test split)")]
    if rare and all(r.pred_val is not None for r in first.values()):
        grids.append(("rare", "train", "pred_val", rare, "Rare base classes (base validation)"))
    for tag, split, attr, classes, caption in grids:
        items = prediction_items(
            summary.data,
            split,
            {n: getattr(r, attr) for n, r in first.items()},
            summary.prediction_samples,
            classes,
        )
        if items:
            comparison_grid(items, out / f"pred_{tag}.png", suptitle=caption)
            text.append(f"{caption}:\n\n![{caption}](pred_{tag}.png)\n")
    return "\n".join(text)


def _stage_section(stages: Sequence[Mapping[str, Any]], wall: float | None = None) -> str:
    cpu = [float(s.get("cpu_seconds", float("nan"))) for s in stages]
    rows = [
        [s["name"], s["status"], f"{s['seconds']:.1f}", f"{s['compute_seconds']:.1f}", _fmt1(c)]
        for s, c in zip(stages, cpu, strict=True)
    ]
    rows.append(
        [
            "**total**",
            "",
            f"{sum(s['seconds'] for s in stages):.1f}",
            f"{sum(s['compute_seconds'] for s in stages):.1f}",
            _fmt1(sum(cpu)),
        ]
    )
    return (
        "## Wall time per stage\n\n"
        "`this run`: wall seconds spent now (a cached stage only checks its marker); "
        "`when computed`: wall seconds the stage took when it ran, and the CPU seconds it used "
        "(user + system, all threads), which a busy shared machine inflates far less.\n\n"
        + (
            f"This run took {wall:.1f} s wall up to the report; trainings run side by side "
            "(`loop.workers`), so the sums below can exceed it.\n\n"
            if wall is not None
            else ""
        )
        + markdown_table(
            ["stage", "status", "this run (s)", "when computed (s)", "CPU when computed (s)"],
            rows,
            "llrrr",
        )
    )


def _fmt1(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}"
