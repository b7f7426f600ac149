"""``ovcamo-loop``: generate → train without/with synthetic data → evaluate → report.

The stages are declared once, in :data:`LOOP_STAGES`; their run order, cache keys, printed plan,
worker lanes and ``check=true`` all follow from those declarations. Every stage is cached under ``<cache_dir>/loop/<kind>/<key>`` (:mod:`ovcamo.engine.stage_cache`),
where the key is a content hash of the stage's resolved config, of the keys of the stages it
depends on and of the toolkit's code version (:func:`ovcamo.provenance.code_version`), never of
paths or wall clock. A killed loop reruns exactly the stages that had not
finished, and training resumes from its last checkpoint inside the unfinished stage's folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from generation.planner import make_plan
from generation.run import generate
from ovcamo.data import DataPaths, OVCamoDataset, load_sample_info
from ovcamo.data.config import resolve_data_paths
from ovcamo.data.io import atomic_write_json
from ovcamo.data.world import render_extra_set, resolve_world
from ovcamo.engine.baseline import NAME as BASELINE_NAME
from ovcamo.engine.baseline import score_baseline
from ovcamo.engine.check import Problem, preflight_problems
from ovcamo.engine.evaluate import score_prediction_dir, write_results
from ovcamo.engine.logging import log_loop_report
from ovcamo.engine.loop_check import check_generator, check_loop, check_training_run
from ovcamo.engine.micro_clip import ensure_micro_clip
from ovcamo.engine.predict import predict_to_dir
from ovcamo.engine.stage_cache import (
    Stage,
    StageCache,
    StageGraph,
    StagePlan,
    content_hash,
    cpu_seconds,
    to_plain,
)
from ovcamo.engine.train import run as train_run
from ovcamo.report.loop_report import LoopSummary, RunFiles, read_per_class, write_loop_report

log = logging.getLogger(__name__)

#: without: real data only; with: + the generated set; real: + as many new real samples of the same
#: classes, rendered by the world (an upper bound only a world can give).
VARIANTS = ("without", "with", "real")
#: The variants that mix a set into training, and the stage that makes it.
SET_STAGES = {"with": "generate", "real": "real_extra"}
# Keys of the loop config that are not the training run's.
LOOP_ONLY_KEYS = ("loop", "generator", "planner", "check")


def _without_keys(node: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in keys}


def loop_group(cfg: DictConfig, plan: StagePlan) -> str:
    """The wandb group of a loop's runs: ``logger.group``, else ``loop-`` and a hash of every
    stage key (the same loop, rerun or resumed, logs into the same group)."""
    given = (cfg.get("logger") or {}).get("group")
    return str(given) if given else "loop-" + content_hash(sorted(map(plan.key, plan.inputs)))[:12]


@contextlib.contextmanager
def _outside_hydra_job() -> Iterator[None]:
    """Hide the Hydra job from the stages while they run.

    Inside a multirun job, ``ovcamo-train`` takes the job's folder as its run folder; the loop's
    training runs must live in their own stage folders instead, or the runs of one job (without and
    with synthetic data, every seed) would share one folder.
    """
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    hydra_config.cfg = None
    try:
        yield
    finally:
        hydra_config.cfg = saved


@dataclass
class LoopContext:
    """What the stage functions share: the loop config and where things are cached."""

    cfg: DictConfig
    cache_dir: Path
    stages: StageCache
    plan: StagePlan
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    group: str | None = None

    def run(self, name: str) -> dict[str, Any]:
        """Run (or replay from the cache) the planned stage ``name``."""
        fn = self.plan.build(self, name)
        with _outside_hydra_job():
            record = self.stages.run(name, self.plan.kinds[name], self.plan.inputs[name], fn)
        self.outputs[name] = record.outputs
        return record.outputs

    def output(self, stage: str, **params: Any) -> dict[str, Any] | None:
        """The outputs of declaration ``stage`` (of the run ``params``), once it has run."""
        return self.outputs.get(self.plan.name(stage, **params))


def training_config(
    cfg: DictConfig,
    variant: str,
    seed: int,
    out_dir: Path,
    cache_dir: Path,
    synthetic_dir: str | None = None,
    group: str | None = None,
) -> DictConfig:
    """The ``ovcamo-train`` config of one run: the loop's groups, this seed, this variant's data;
    no validation inside the run unless ``train.select=best`` chooses by it.

    The variants differ only in ``data.synthetic`` / ``data.synthetic_ratio``: ``with`` and
    ``real`` mix their set (``synthetic_dir``) at the same ratio. ``group`` names
    the loop's wandb group (``logger.group``); the run is then named ``<variant>-seed<seed>``.
    """
    plain = _without_keys(OmegaConf.to_container(cfg, resolve=False), LOOP_ONLY_KEYS)
    tcfg = OmegaConf.create(plain)
    tcfg.seed = int(seed)
    tcfg.out_dir = str(out_dir)
    tcfg.cache_dir = str(cache_dir)
    tcfg.resume = True
    tcfg.check = False
    if tcfg.train.get("select", "final") != "best":
        # The loop scores every run on base validation itself (its eval stage); a validation
        # inside the run would only repeat that work.
        tcfg.train.val_every_epochs = 0
    if group and tcfg.get("logger") is not None:
        tcfg.logger.group = group
        tcfg.logger.run_name = tcfg.logger.get("run_name") or f"{variant}-seed{seed}"
    if variant in SET_STAGES:
        if synthetic_dir is None:
            raise ValueError(f"the run {variant!r} needs the folder of the set it mixes in")
        tcfg.data.synthetic = [synthetic_dir]
        tcfg.data.synthetic_ratio = float(cfg.data.synthetic_ratio)
    else:
        tcfg.data.synthetic = []
        tcfg.data.synthetic_ratio = 0.0
    return tcfg


def _run_config(ctx: LoopContext, variant: str, seed: int, out_dir: Path) -> DictConfig:
    synthetic = ctx.output(SET_STAGES[variant])["set_dir"] if variant in SET_STAGES else None
    return training_config(ctx.cfg, variant, seed, out_dir, ctx.cache_dir, synthetic, ctx.group)


def _data_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        paths = resolve_data_paths(ctx.cfg.data, cache_dir=str(ctx.cache_dir))
        return {"paths": paths.to_json(), "class_info": str(paths.class_info)}

    return fn


def _clip_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        checkpoint = ensure_micro_clip(ctx.cfg.clip, ctx.cfg.data.world, ctx.cache_dir)
        return {"checkpoint": str(checkpoint)}

    return fn


def _generate_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        gcfg = OmegaConf.create(
            {
                "data": OmegaConf.to_container(ctx.cfg.data, resolve=False),
                "generator": OmegaConf.to_container(ctx.cfg.generator, resolve=False),
                "planner": OmegaConf.to_container(ctx.cfg.planner, resolve=False),
                **OmegaConf.to_container(ctx.cfg.loop.generate, resolve=False),
                "out_dir": str(directory / "set"),
                "cache_dir": str(ctx.cache_dir),
            }
        )
        gcfg.data.synthetic = []
        set_dir = Path(generate(gcfg)).resolve()
        n = len(load_sample_info(set_dir / "sample_info.json"))
        if n == 0:
            # A marker for an empty set would make every later "with" run a copy of the baseline.
            raise ValueError(
                f"the synthetic set {set_dir} is empty: the planner (rule "
                f"{ctx.cfg.planner.get('rule')!r}) chose no sample to generate, or the generator "
                "skipped them all (see its summary.json); change the planner settings, or run "
                "the baseline alone with loop.variants=[without]"
            )
        return {"set_dir": str(set_dir), "samples": n}

    return fn


def _plan(ctx: LoopContext) -> Any:
    """What the planner asks any generator for, planned as ``ovcamo-generate`` plans it: the rare
    classes (``targets``) and one item per sample."""
    return make_plan(
        resolve_data_paths(ctx.cfg.data, cache_dir=str(ctx.cache_dir)),
        ctx.cfg.planner,
        generator=str(ctx.cfg.generator.get("name", "?")),
        config_hash="",
        holdout_fraction=float(ctx.cfg.data.get("holdout_fraction", 0.0)),
        holdout_seed=int(ctx.cfg.data.get("holdout_seed", 0)),
    )


def _real_extra_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        counts = dict(Counter(item.class_name for item in _plan(ctx).items))
        spec = resolve_world(ctx.cfg.data.world)
        set_dir = render_extra_set(spec, counts, directory / "set", namespace="extra")
        return {"set_dir": str(set_dir.resolve()), "samples": sum(counts.values())}

    return fn


def _rare_eval_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        rare = sorted(_plan(ctx).targets)
        if not rare:
            return {"set_dir": None, "classes": []}
        n = int(ctx.cfg.loop.rare_eval.per_class)
        spec = resolve_world(ctx.cfg.data.world)
        set_dir = render_extra_set(
            spec, dict.fromkeys(rare, n), directory / "set", namespace="rare-eval", split="test"
        )
        return {"set_dir": str(set_dir.resolve()), "classes": rare}

    return fn


def _rare_eval_paths(ctx: LoopContext) -> Any:
    set_dir = (ctx.output("rare_eval") or {}).get("set_dir")
    return DataPaths.from_paths_json(Path(set_dir) / "paths.json") if set_dir else None


def _baseline_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        parts = {"novel": (resolve_data_paths(ctx.cfg.data, cache_dir=str(ctx.cache_dir)), "test")}
        rare = _rare_eval_paths(ctx)
        if rare is not None:
            parts["rare"] = (rare, "test")
        scores = {
            part: score_baseline(
                (r.image_path, r.mask_path) for r in OVCamoDataset(paths, split).records
            )
            for part, (paths, split) in parts.items()
        }
        atomic_write_json(directory / "baseline.json", {"name": BASELINE_NAME, **scores})
        return {"name": BASELINE_NAME, **scores}

    return fn


def _train_stage(ctx: LoopContext, variant: str, seed: int) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        tcfg = _run_config(ctx, variant, seed, directory / "run")
        result = train_run(tcfg)
        # Without a validation part there is no best checkpoint: the last one is scored.
        best = result.best_checkpoint or result.last_checkpoint
        return {
            "run_dir": str(Path(result.run_dir).resolve()),
            "best_checkpoint": str(Path(best).resolve()),
            "last_checkpoint": str(Path(result.last_checkpoint).resolve()),
            "train_seconds": float(result.train_seconds),
        }

    return fn


def _eval_stage(ctx: LoopContext, variant: str, seed: int) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        trained = ctx.output("train", variant=variant, seed=seed)
        pcfg = _run_config(ctx, variant, seed, directory)
        pcfg.checkpoint = trained["best_checkpoint"]
        for key, value in ctx.cfg.loop.eval.items():
            pcfg[key] = value
        paths = resolve_data_paths(ctx.cfg.data, cache_dir=str(ctx.cache_dir))
        outputs: dict[str, Any] = {}
        # Official protocol: the novel (test) classes, candidates = all test class names.
        pred_novel = predict_to_dir(pcfg, split="test", part="all")
        # Scored in-process: a process pool forked from a process that has run torch's thread
        # pools can deadlock (seen in the default loop).
        write_results(
            score_prediction_dir(pred_novel, paths, split="test", num_workers=1),
            directory / "novel",
        )
        outputs.update(novel=str(directory / "novel"), pred_novel=str(Path(pred_novel).resolve()))
        rare = _rare_eval_paths(ctx)
        if rare is not None:
            # Rare base classes on their own rendered set; candidates are the base classes.
            rcfg = pcfg.copy()
            rcfg.out_dir = str(directory / "rare")
            rcfg.data = {**rare.to_json(), "strict": False, "holdout_fraction": 0.0}
            pred_rare = predict_to_dir(rcfg, split="test", part="all")
            write_results(
                score_prediction_dir(pred_rare, rare, split="test", num_workers=1),
                directory / "rare_eval",
            )
            outputs.update(rare_eval=str(directory / "rare_eval"))
        if float(ctx.cfg.data.get("holdout_fraction", 0.0)) <= 0:
            # The paper's protocol trains on every base image: there is no base validation.
            return outputs | {"base_val": None, "pred_val": None}
        # Base validation: the held-out part of the train split, scored per class.
        val_ids = [
            r.unique_id
            for r in OVCamoDataset(
                paths,
                "train",
                part="val",
                holdout_fraction=float(ctx.cfg.data.holdout_fraction),
                holdout_seed=int(ctx.cfg.data.get("holdout_seed", 0)),
            ).records
        ]
        pred_val = predict_to_dir(pcfg, split="train", part="val")
        write_results(
            score_prediction_dir(pred_val, paths, split="train", unique_ids=val_ids, num_workers=1),
            directory / "base_val",
        )
        outputs.update(base_val=str(directory / "base_val"), pred_val=str(Path(pred_val).resolve()))
        return outputs

    return fn


def _world(cfg: DictConfig) -> Any:
    return to_plain(cfg.data.get("world"))


def _has_world(cfg: DictConfig) -> bool:
    return bool(_world(cfg))


def _data(cfg: DictConfig) -> dict[str, Any]:
    """The data settings every stage reads; the sets mixed into training are the train stage's."""
    return _without_keys(to_plain(cfg.data), ("world", "synthetic", "synthetic_ratio"))


def _mixes_a_set(cfg: DictConfig) -> bool:
    return any(v in cfg.loop.variants for v in SET_STAGES)


def _planned(cfg: DictConfig, keys: Mapping[str, str | None]) -> dict[str, Any]:
    """The planner's classes and amounts, not the generator's output: a generator sweep keeps
    both the real extra set (as many new real samples per class as the plan asks the generator
    for) and the rare-class set, and so the real arm's runs."""
    return {"world": keys["data"], "data": _data(cfg), "planner": to_plain(cfg.planner)}


def _training(
    cfg: DictConfig, keys: Mapping[str, str | None], variant: str, seed: int
) -> dict[str, Any]:
    """What a training run reads. The run without synthetic data does not depend on the
    generator, the planner or ``data.synthetic_ratio``: a sweep over those trains it once."""
    synthetic = (
        {"set": keys[SET_STAGES[variant]], "ratio": float(cfg.data.synthetic_ratio)}
        if variant in SET_STAGES
        else None
    )
    return {
        "world": keys["data"],
        "clip": keys["micro_clip"],
        "data": _data(cfg),
        "model": to_plain(cfg.model),
        "backbone": to_plain(cfg.get("backbone")),
        "train": to_plain(cfg.train),
        "synthetic": synthetic,
        "seed": int(seed),
    }


def _check_generate(cfg: DictConfig, plan: StagePlan, name: str, cache_dir: Path) -> list[Problem]:
    # The real-extra arm copies the generated set's class counts: it needs the generator too.
    return check_generator(cfg.generator)


def _check_train(cfg: DictConfig, plan: StagePlan, name: str, cache_dir: Path) -> list[Problem]:
    """``ovcamo-train``'s own check, on the config of run ``name`` without synthetic data (a run
    with it differs only in a set that does not exist before generation)."""
    out_dir = StageCache(cache_dir / "loop").directory(plan.kinds[name], plan.key(name))
    seed = int(plan.params[name]["seed"])
    return check_training_run(
        cfg, training_config(cfg, "without", seed, out_dir / "run", cache_dir)
    )


def _runs(cfg: DictConfig) -> list[dict[str, Any]]:
    """The training runs, seed by seed: each variant of ``loop.variants`` per seed."""
    return [{"variant": str(v), "seed": int(s)} for s in cfg.loop.seeds for v in cfg.loop.variants]


#: The loop's stages. A key hashes its ``inputs`` (with the keys of the stages it ``needs``), its
#: kind and the code version; ``shared`` stages run once for every generator, variant and seed;
#: the others once per training run, in that run's lane.
LOOP_STAGES = StageGraph(
    (
        Stage(
            "data",
            "data",
            lambda cfg, keys: {
                "world": _world(cfg),
                "data": None if _has_world(cfg) else _data(cfg),
            },
            _data_stage,
        ),
        Stage(
            "micro_clip",
            "clip",
            lambda cfg, keys: {"world": keys["data"], "clip": to_plain(cfg.get("clip"))},
            _clip_stage,
            needs=("data",),
            when=_has_world,
        ),
        Stage(
            "generate",
            "generate",
            # The planner never draws sources from the held-out part: data.holdout_* matter.
            lambda cfg, keys: {
                "world": keys["data"],
                "data": _data(cfg),
                "generator": to_plain(cfg.generator),
                "planner": to_plain(cfg.planner),
            },
            _generate_stage,
            needs=("data",),
            when=_mixes_a_set,
            check=_check_generate,
        ),
        Stage(
            "real_extra",
            "real_extra",
            _planned,
            _real_extra_stage,
            needs=("data",),
            when=lambda cfg: _has_world(cfg) and _mixes_a_set(cfg),
        ),
        Stage(
            "rare_eval",
            "rare_eval",
            lambda cfg, keys: {
                **_planned(cfg, keys),
                "per_class": int(cfg.loop.rare_eval.per_class),
            },
            _rare_eval_stage,
            needs=("data",),
            when=lambda cfg: _has_world(cfg) and _mixes_a_set(cfg),
        ),
        Stage(
            "baseline",
            "baseline",
            lambda cfg, keys: {"world": keys["data"], "rare_eval": keys["rare_eval"]},
            _baseline_stage,
            needs=("data", "rare_eval"),
            when=_has_world,
        ),
        Stage(
            "train",
            "train",
            _training,
            _train_stage,
            needs=("data", "micro_clip", "generate", "real_extra"),
            shared=False,
            check=_check_train,
        ),
        Stage(
            "eval",
            "eval",
            lambda cfg, keys, variant, seed: {
                "train": keys["train"],
                "eval": to_plain(cfg.loop.eval),
                "rare_eval": keys["rare_eval"],
            },
            _eval_stage,
            needs=("train", "rare_eval"),
            shared=False,
        ),
    ),
    runs=_runs,
)


def plan_stages(cfg: DictConfig, graph: StageGraph = LOOP_STAGES) -> StagePlan:
    """Every stage ``cfg`` asks for, with the inputs of its key, so keys change exactly when
    something the stage reads changes."""
    for variant in cfg.loop.variants:
        if variant not in VARIANTS:
            raise KeyError(f"loop.variants: unknown variant {variant!r}; choose from {VARIANTS}")
    if "real" in cfg.loop.variants and not _has_world(cfg):
        raise KeyError(
            "loop.variants: 'real' renders extra real samples and needs the micro-world "
            "(data=micro); on a real dataset use loop.variants=[without,with]"
        )
    return graph.plan(cfg)


def stage_order(cfg: DictConfig, graph: StageGraph = LOOP_STAGES) -> list[str]:
    """Stage names in the order they run: the shared stages, then run by run (train, eval)."""
    return plan_stages(cfg, graph).order


def describe_plan(cfg: DictConfig, plan: StagePlan, stages: StageCache) -> str:
    """What the loop will do, stage by stage, and which stages are already cached."""
    lines = [
        f"ovcamo-loop plan (cache {stages.root}):",
        f"  data: {'micro-world' if cfg.data.get('world') else cfg.data.get('root', 'from config')}",
        f"  model: {cfg.model.get('name', '?')}  backbone: {cfg.backbone.get('name', '?')} "
        f"(pretrained {cfg.backbone.get('pretrained')})",
        f"  seeds: {list(cfg.loop.seeds)}  runs: {list(cfg.loop.variants)}",
    ]
    if "generate" in plan.inputs:
        lines.append(
            f"  generator: {cfg.generator.get('name', '?')}  planner rule: "
            f"{cfg.planner.get('rule', '?')}  synthetic ratio: {cfg.data.synthetic_ratio}"
        )
    for name in plan.order:
        key = plan.key(name)
        state = "cached" if stages.is_done(plan.kinds[name], key) else "to run"
        lines.append(f"  - {name:<24} {key}  {state}")
    return "\n".join(lines)


def _summary(ctx: LoopContext) -> Any:
    cfg = ctx.cfg
    runs: dict[str, list[RunFiles]] = {}
    for variant in cfg.loop.variants:
        for seed in cfg.loop.seeds:
            o = ctx.output("eval", variant=variant, seed=int(seed))
            runs.setdefault(variant, []).append(
                RunFiles(
                    int(seed),
                    Path(o["novel"]),
                    Path(o["base_val"]) if o.get("base_val") else None,
                    Path(o["pred_novel"]),
                    Path(o["pred_val"]) if o.get("pred_val") else None,
                    Path(o["rare_eval"]) if o.get("rare_eval") else None,
                )
            )
    gen = ctx.output("generate")
    clip = ctx.output("micro_clip")
    clip_report: dict[str, Any] = {}
    if clip:
        path = Path(clip["checkpoint"]).parent / "report.json"
        if path.is_file():
            clip_report = json.loads(path.read_text(encoding="utf-8"))
    return LoopSummary(
        data=resolve_data_paths(cfg.data, cache_dir=str(ctx.cache_dir)),
        runs=runs,
        stages=[
            {
                "name": r.name,
                "status": r.status,
                "seconds": r.seconds,
                "compute_seconds": r.compute_seconds,
                "cpu_seconds": r.cpu_seconds,
            }
            for r in ctx.stages.records
        ],
        meta={
            "data": "micro-world" if cfg.data.get("world") else str(cfg.data.get("root", "")),
            "model": cfg.model.get("name", "?"),
            "backbone": cfg.backbone.get("name", "?"),
            "generator": cfg.generator.get("name", "?"),
            "synthetic_ratio": float(cfg.data.synthetic_ratio),
            "micro_clip": {
                k: clip_report[k]
                for k in ("zero_shot_top1_salient", "zero_shot_top1_camouflaged")
                if k in clip_report
            },
        },
        synthetic_dir=Path(gen["set_dir"]) if gen else None,
        baseline=ctx.output("baseline"),
        grid_samples=int(cfg.loop.report.grid_samples),
        prediction_samples=int(cfg.loop.report.prediction_samples),
    )


def _context(cfg: DictConfig, graph: StageGraph = LOOP_STAGES) -> LoopContext:
    cache_dir = Path(os.path.expanduser(str(cfg.cache_dir)))
    plan = plan_stages(cfg, graph)
    return LoopContext(
        cfg, cache_dir, StageCache(cache_dir / "loop"), plan, group=loop_group(cfg, plan)
    )


def _run_lane(container: dict[str, Any], names: list[str]) -> list[Any]:
    """One worker process on one thread: the shared stages replayed from the cache, then
    ``names``."""
    torch.set_num_threads(1)
    ctx = _context(OmegaConf.create(container))
    for name in ctx.plan.shared():
        ctx.run(name)
    ctx.stages.records.clear()
    for name in names:
        ctx.run(name)
    return ctx.stages.records


def lane_slots(n_lanes: int, workers: int) -> list[int]:
    """How many lanes may run at once when each lane starts: ``workers``, and ``workers + tail``
    for the last ``workers + tail`` lanes when ``tail`` lanes are left over from whole rounds, so no
    lane ends the loop alone (9 lanes on 2 workers run as 2, 2, 3 and 2 side by side instead of
    four rounds of two and a ninth lane alone)."""
    tail = n_lanes % workers
    last = n_lanes - (workers + tail) if tail else n_lanes
    return [workers if i < last else workers + tail for i in range(n_lanes)]


def worker_gpu_env(k: int, n_gpus: int, visible: str | None = None) -> dict[str, str]:
    """The environment that pins training worker ``k`` to one GPU: device ``k mod n_gpus`` of
    those the loop sees (``visible``, the loop's own ``CUDA_VISIBLE_DEVICES``, when set). Nothing
    without a GPU."""
    if n_gpus <= 0:
        return {}
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    ids = ids or [str(i) for i in range(n_gpus)]
    return {"CUDA_VISIBLE_DEVICES": ids[k % min(n_gpus, len(ids))]}


def _init_worker(counter: Any, n_gpus: int, visible: str | None) -> None:
    """Pool initializer: number this worker and pin it to its GPU before CUDA starts in it."""
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    os.environ.update(worker_gpu_env(k, n_gpus, visible))


def _run_lanes(ctx: LoopContext, lanes: list[list[str]], workers: int) -> None:
    """Run the (train, eval) pairs in processes of one thread each, ``workers`` at a time (see
    :func:`lane_slots`; stages of one loop are disjoint folders, so they run side by side), each
    worker on its own GPU when there are several (:func:`worker_gpu_env`); records come back in
    lane order."""
    container = OmegaConf.to_container(ctx.cfg, resolve=True)
    slots = lane_slots(len(lanes), workers)
    results: list[list[Any]] = [[] for _ in lanes]
    # forkserver: this process has run torch's thread pools, which a fork can deadlock.
    pool_context = multiprocessing.get_context("forkserver")
    # One GPU per worker on a machine with several: worker k trains on GPU k mod n.
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    pin = (pool_context.Value("i", 0), n_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    with ProcessPoolExecutor(
        max(slots), mp_context=pool_context, initializer=_init_worker, initargs=pin
    ) as pool:
        running: dict[Future, int] = {}
        start = 0
        while start < len(lanes) or running:
            while start < len(lanes) and len(running) < slots[start]:
                running[pool.submit(_run_lane, container, lanes[start])] = start
                start += 1
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    for records in results:
        for record in records:
            ctx.stages.records.append(record)
            ctx.outputs[record.name] = record.outputs


def run_loop(cfg: DictConfig) -> Path:
    """Run (or resume) every stage, then write the report; returns ``report.md``'s path."""
    out_dir = Path(os.path.expanduser(str(cfg.out_dir)))
    if not cfg.loop.variants or not cfg.loop.seeds:
        raise ValueError("loop.variants and loop.seeds must not be empty")
    ctx = _context(cfg)
    print(describe_plan(cfg, ctx.plan, ctx.stages), flush=True)
    t0 = time.perf_counter()
    for name in ctx.plan.shared():
        ctx.run(name)
    lanes = ctx.plan.lanes()
    workers = min(int(cfg.loop.get("workers") or 1), len(lanes))
    if workers <= 1:
        for lane in lanes:
            for name in lane:
                ctx.run(name)
    else:
        _run_lanes(ctx, lanes, workers)
    t_report, c_report = time.perf_counter(), cpu_seconds()
    summary = _summary(ctx)
    summary.meta["wall_seconds"] = time.perf_counter() - t0
    report = write_loop_report(summary, out_dir)
    seconds = time.perf_counter() - t_report
    summary.stages.append(
        {
            "name": "report",
            "status": "ran",
            "seconds": seconds,
            "compute_seconds": seconds,
            "cpu_seconds": cpu_seconds() - c_report,
        }
    )
    atomic_write_json(
        out_dir / "loop.json",
        {
            "report": str(report),
            "stages": summary.stages,
            "outputs": ctx.outputs,
            "total_seconds": time.perf_counter() - t0,
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
    )
    if (cfg.get("logger") or {}).get("name") == "wandb":
        _log_report(ctx, summary, out_dir, report)
    print(f"report: {report}", flush=True)
    return report


def _log_report(ctx: LoopContext, summary: Any, out_dir: Path, report: Path) -> None:
    """The loop's wandb run: per-class tables of every evaluated run, the report as an artifact."""
    tables = {
        f"{LOOP_STAGES.name('eval', variant=variant, seed=run.seed)}/{part}/per_class": read_per_class(
            getattr(run, part)
        )
        for variant, runs in summary.runs.items()
        for run in runs
        for part in ("novel", "base_val")
    }
    log_loop_report(
        to_plain(ctx.cfg.logger),
        out_dir,
        group=str(ctx.group),
        tables=tables,
        files=[report, out_dir / "loop.json", *sorted(out_dir.glob("*.png"))],
        config=OmegaConf.to_container(ctx.cfg, resolve=True),
    )


def main(cfg: DictConfig) -> Path | None:
    """``ovcamo-loop``; with ``check=true`` validates inputs and prints the plan, computing nothing."""
    if not cfg.get("check"):
        problems = preflight_problems(cfg)
        if problems:
            print("ovcamo-loop: " + "\n\n".join(map(str, problems)), file=sys.stderr)
            raise SystemExit(2)
    if cfg.get("check"):
        cache_dir = Path(os.path.expanduser(str(cfg.cache_dir)))
        plan = plan_stages(cfg)
        print(describe_plan(cfg, plan, StageCache(cache_dir / "loop")))
        with _outside_hydra_job():
            problems = check_loop(cfg, plan, cache_dir)
        if problems:
            print("check failed:\n" + "\n".join(f"  - {p}" for p in problems))
            raise SystemExit(2)
        print("check passed: data paths and weights files are in place; nothing was computed")
        return None
    return run_loop(cfg)
