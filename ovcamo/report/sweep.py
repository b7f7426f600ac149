"""Tables for a Hydra sweep of ``ovcamo-loop``: a row per job and run, the swept values first;
for the ablation sweeps also one row per ablation row, the user's numbers beside the paper's."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ovcamo.data.io import atomic_write_text
from ovcamo.report.loop_report import read_diagnostics, read_metrics
from ovcamo.report.stats import paired_difference
from ovcamo.report.tables import SIX_METRICS, Spread, markdown_table

try:
    from hydra.experimental.callback import Callback
except ImportError:  # hydra is a dependency; the guard keeps this module importable without it
    Callback = object  # type: ignore[assignment,misc]

_EVAL = re.compile(r"^eval/(?P<variant>[^/]+)/seed(?P<seed>\d+)$")

#: The config groups whose choice names an ablation row (ovcamo/conf/ablation_row*/).
ABLATION_GROUPS = ("ablation_row", "ablation_row_micro")
#: Overrides that say how a row was run, not what it is: jobs differing only in them are one row.
RUN_KEYS = ("loop.seeds", "loop.workers", "cache_dir", "out_dir", "hydra.")
NOT_FOUND = "n/a (not in the paper)"


@dataclass(frozen=True)
class PaperRow:
    """One row of BaCLIP's ablation tables: what it changes, and the paper's novel-class numbers
    on OVCamo (``None``: the paper gives no number for it)."""

    label: str
    cSm: float | None = None
    cIoU: float | None = None


#: Every ablation row, in the order of the tables, with the paper's numbers on OVCamo's 61 novel
#: classes: Tab. 3 (the ladder), Tab. 5 (MREM and the prompt self-attention) and the backbone
#: comparison (ViT-L/14: cIoU only). The paper states no number for 1, 2, 4 or 5 MFMSA blocks
#: (only that 3 is best) nor for ConvNeXt-B.
PAPER_ABLATION: dict[str, PaperRow] = {
    "conv": PaperRow("CLIP + conv decoder (baseline)", cSm=0.528, cIoU=0.311),
    "sam": PaperRow("+ SAM decoder", cSm=0.531, cIoU=0.332),
    "sam_cce": PaperRow("+ CCE", cSm=0.555, cIoU=0.428),
    "full": PaperRow("+ MREM = full BaCLIP", cSm=0.589, cIoU=0.488),
    "mrem_t2v": PaperRow("MREM text→vision only", cSm=0.559, cIoU=0.432),
    "mrem_v2t": PaperRow("MREM vision→text only", cSm=0.574, cIoU=0.462),
    "no_prompt_sa": PaperRow("without prompt self-attention", cSm=0.580, cIoU=0.470),
    "mfmsa_1": PaperRow("1 MFMSA block"),
    "mfmsa_2": PaperRow("2 MFMSA blocks"),
    "mfmsa_4": PaperRow("4 MFMSA blocks"),
    "mfmsa_5": PaperRow("5 MFMSA blocks"),
    "convnext_b": PaperRow("ConvNeXt-B backbone"),
    "vit_l14": PaperRow("ViT-L/14 backbone", cIoU=0.458),
}
#: The OVCamo paper's baseline on the same split, printed under the table for reference.
OVCOSER = PaperRow("OVCoser (OVCamo's baseline)", cSm=0.579, cIoU=0.443)


def _jobs(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent for p in sweep_dir.glob("*/loop.json")]
    return sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.load(path)]


def _ablation_row(job: Path) -> str | None:
    """The ablation row a job ran (its Hydra choice of an ``ablation_row*`` group), if any."""
    path = job / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    choices = OmegaConf.load(path).hydra.runtime.get("choices", {})
    return next((str(choices[g]) for g in ABLATION_GROUPS if choices.get(g)), None)


#: Diagnostics (outside the official protocol) that the ablation table shows beside cSm and cIoU.
DIAGNOSTICS = {"agnostic_IoU": "IoU, class check off ↑", "class_accuracy": "class accuracy ↑"}


def _novel_metrics(job: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Each run's (variant's) novel-class metrics and diagnostics: seed -> scores, seeds in
    increasing order."""
    outputs = json.loads((job / "loop.json").read_text(encoding="utf-8"))["outputs"]
    per_variant: dict[str, dict[int, dict[str, float]]] = {}
    found = sorted(
        (m["variant"], int(m["seed"]), name) for name in outputs if (m := _EVAL.match(name))
    )
    for variant, seed, name in found:
        novel = outputs[name]["novel"]
        per_variant.setdefault(variant, {})[seed] = {
            **read_diagnostics(novel),
            **read_metrics(novel),
        }
    return per_variant


#: The ablation row every other row is compared with, seed by seed.
REFERENCE = "full"


def _versus_reference(
    seeds: dict[int, list[dict[str, float]]],
    reference: dict[int, list[dict[str, float]]] | None,
    key: str = "cIoU",
) -> str:
    """``row − reference`` of ``key`` over the seeds both ran (each seed's runs averaged), with
    its Student-t interval over those paired seeds."""
    if reference is None:
        return f"— (no {REFERENCE} row)"
    common = sorted(set(seeds) & set(reference))
    if not common:
        return "— (no seed in common)"

    def per_seed(runs: dict[int, list[dict[str, float]]]) -> list[float]:
        return [sum(m[key] for m in runs[s]) / len(runs[s]) for s in common]

    estimate = paired_difference(np.array(per_seed(seeds)), np.array(per_seed(reference)))
    return f"{estimate.format()}, n={estimate.n}"


def _spread(metrics: list[dict[str, float]], key: str) -> str:
    """Mean ± std of ``key`` over the seeds; "—" when a run's scores lack it."""
    if not all(key in m for m in metrics):
        return "—"
    return Spread.of([m[key] for m in metrics]).format()


def sweep_rows(sweep_dir: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: job, the overrides that differ between jobs, run, six metrics (novel)."""
    jobs = _jobs(Path(sweep_dir))
    if not jobs:
        raise FileNotFoundError(f"no finished loop job (*/loop.json) under {sweep_dir}")
    overrides = {job: _overrides(job) for job in jobs}
    everywhere = set.intersection(*(set(o) for o in overrides.values()))
    rows = []
    for job in jobs:
        per_variant = _novel_metrics(job)
        swept = " ".join(o for o in overrides[job] if o not in everywhere) or "(defaults)"
        # The baseline first, then the run with synthetic data, then anything else by name.
        order = sorted(per_variant, key=lambda v: ({"without": 0, "with": 1}.get(v, 2), v))
        for variant in order:
            metrics = list(per_variant[variant].values())
            rows.append(
                [
                    job.name,
                    swept,
                    variant,
                    len(metrics),
                    *(Spread.of([m[k] for m in metrics]).format() for k in SIX_METRICS),
                ]
            )
    return ["job", "overrides", "run", "seeds", *SIX_METRICS.values()], rows


def _paper_value(value: float | None) -> str:
    return NOT_FOUND if value is None else f"{value:.3f}"


def ablation_rows(sweep_dir: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows for the jobs of an ablation sweep, in the paper's row order: the row (and
    any other override swept with it, e.g. ``model.prompt.mode``), the number of seeds, this
    sweep's novel-class cSm and cIoU (mean ± std over seeds of the run without synthetic data),
    two diagnostics (IoU with the class check off, class accuracy) and the paper's cSm and cIoU.
    No rows when no job ran an ablation row."""
    jobs = _jobs(Path(sweep_dir))
    overrides = {job: _overrides(job) for job in jobs}
    everywhere = set.intersection(*(set(o) for o in overrides.values())) if jobs else set()
    found: dict[tuple[str, str], dict[int, list[dict[str, float]]]] = {}
    for job in jobs:
        row = _ablation_row(job)
        if row is None:
            continue
        extra = " ".join(
            o
            for o in overrides[job]
            if o not in everywhere
            and not o.startswith(tuple(f"{g}=" for g in ABLATION_GROUPS))
            and not o.startswith(RUN_KEYS)
        )
        per_variant = _novel_metrics(job)
        runs = per_variant.get("without") or next(iter(per_variant.values()), {})
        by_seed = found.setdefault((row, extra), {})
        for seed, scores in runs.items():
            by_seed.setdefault(seed, []).append(scores)
    rank = {r: i for i, r in enumerate(PAPER_ABLATION)}
    headers = [
        "row",
        "seeds",
        "cSm ↑",
        "cIoU ↑",
        *DIAGNOSTICS.values(),
        "paper cSm",
        "paper cIoU",
        f"Δ cIoU vs {REFERENCE} (95 % CI)",
    ]
    reference = found.get((REFERENCE, ""))
    rows = []
    for row, extra in sorted(found, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1])):
        paper = PAPER_ABLATION.get(row, PaperRow(row))
        metrics = [m for runs in found[row, extra].values() for m in runs]
        rows.append(
            [
                f"{paper.label} (`{row}`)" + (f", {extra}" if extra else ""),
                len(metrics),
                _spread(metrics, "cSm"),
                _spread(metrics, "cIoU"),
                *(_spread(metrics, key) for key in DIAGNOSTICS),
                # A row changed by another override is not the paper's row any more.
                _paper_value(paper.cSm) if not extra else "",
                _paper_value(paper.cIoU) if not extra else "",
                "reference"
                if (row, extra) == (REFERENCE, "")
                else _versus_reference(found[row, extra], reference),
            ]
        )
    return headers, rows


def write_sweep_summary(sweep_dir: str | os.PathLike) -> Path:
    """Write ``sweep.md`` into the sweep folder: novel-class metrics, mean ± std over seeds, and
    for an ablation sweep the table of rows beside the paper's numbers."""
    headers, rows = sweep_rows(sweep_dir)
    text = "# ovcamo-loop sweep\n\n"
    a_headers, a_rows = ablation_rows(sweep_dir)
    if a_rows:
        text += (
            "## Ablation rows\n\n"
            "Novel classes (official OVCOS protocol), mean ± std over seeds, beside the paper's "
            f"numbers on OVCamo's 61 novel classes (Tab. 3 and 5; `{NOT_FOUND}` where it states "
            "none). Steps between rows are absolute points: the paper's + CCE step, cIoU 0.332 → "
            "0.428, is 9.6 points (29 % relative). A micro-world sweep is on another dataset at "
            "another scale: compare the ordering of its rows with the paper's, not the values. "
            "The IoU with the class check off and the class accuracy are diagnostics outside the "
            "official protocol: they tell a bad mask from a wrong class. "
            f"Δ cIoU vs `{REFERENCE}`: the row's cIoU minus the `{REFERENCE}` row's on the same "
            "seed, averaged over the n seeds both ran, with its 95 % Student-t interval over "
            "those n paired seeds (n − 1 degrees of freedom; none with 1 seed).\n\n"
            + markdown_table(a_headers, a_rows, align="lr" + "r" * (len(a_headers) - 2))
            + f"\nFor reference, {OVCOSER.label}: cSm {OVCOSER.cSm:.3f}, cIoU {OVCOSER.cIoU:.3f}."
            "\n\n## Every job\n\n"
        )
    text += (
        "Novel classes (official OVCOS protocol), mean ± std over seeds; each job's report.md has "
        "the base-validation, planner and timing sections.\n\n"
        + markdown_table(headers, rows, align="lllr" + "r" * len(SIX_METRICS))
    )
    out = Path(sweep_dir) / "sweep.md"
    atomic_write_text(out, text)
    return out


class SweepSummary(Callback):
    """Hydra callback: after a multirun of ``ovcamo-loop``, write ``sweep.md`` in the sweep folder."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if any(sweep_dir.glob("*/loop.json")):
            print(f"sweep summary: {write_sweep_summary(sweep_dir)}")
