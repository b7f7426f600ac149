"""``ovcamo-loop``: generate → train without/with synthetic data → evaluate → report.

Every stage is cached under ``<cache_dir>/loop/<kind>/<key>`` (:mod:`ovcamo.engine.stage_cache`),
where the key is a content hash of the stage's resolved config, of the keys of the stages it
depends on and of the toolkit's code version (:func:`ovcamo.provenance.code_version`), never of
paths or wall clock. A killed loop reruns exactly the stages that had not
finished, and training resumes from its last checkpoint inside the unfinished stage's folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ovcamo.data import load_sample_info
from ovcamo.data.io import atomic_write_json
from ovcamo.engine.stage_cache import StageCache, content_hash, cpu_seconds, stage_key, to_plain

log = logging.getLogger(__name__)

#: without: real data only; with: + the generated set; real: + as many new real samples of the same
#: classes, rendered by the world (an upper bound only a world can give).
VARIANTS = ("without", "with", "real")
#: The variants that mix a set into training, and the stage that makes it.
SET_STAGES = {"with": "generate", "real": "real_extra"}
# Keys of the loop config that are not the training run's.
LOOP_ONLY_KEYS = ("loop", "generator", "planner", "check")


@dataclass
class StagePlan:
    """The keys of every stage, computed from the config alone (before any compute)."""

    inputs: dict[str, dict[str, Any]]
    kinds: dict[str, str]

    def key(self, name: str) -> str:
        return stage_key(self.kinds[name], self.inputs[name])


def _without_keys(node: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in keys}


def plan_stages(cfg: DictConfig) -> StagePlan:
    """Inputs of each stage, so keys change exactly when something the stage reads changes.

    The run without synthetic data does not depend on the generator, the planner or
    ``data.synthetic_ratio``: a sweep over those trains the baseline once.
    """
    world = to_plain(cfg.data.get("world"))
    clip = to_plain(cfg.get("clip"))
    data = _without_keys(to_plain(cfg.data), ("world", "synthetic", "synthetic_ratio"))
    inputs: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}

    def add(name: str, kind: str, value: dict[str, Any]) -> str:
        inputs[name], kinds[name] = value, kind
        return stage_key(kind, value)

    world_key = add("data", "data", {"world": world, "data": data if not world else None})
    clip_key = add("micro_clip", "clip", {"world": world_key, "clip": clip}) if world else None
    for variant in cfg.loop.variants:
        if variant not in VARIANTS:
            raise KeyError(f"loop.variants: unknown variant {variant!r}; choose from {VARIANTS}")
    if "real" in cfg.loop.variants and not world:
        raise KeyError(
            "loop.variants: 'real' renders extra real samples and needs the micro-world "
            "(data=micro); on a real dataset use loop.variants=[without,with]"
        )
    gen_key = None
    if any(v in cfg.loop.variants for v in SET_STAGES):
        gen_key = add(
            "generate",
            "generate",
            {
                # The planner never draws sources from the held-out part: data.holdout_* matter.
                "world": world_key,
                "data": data,
                "generator": to_plain(cfg.generator),
                "planner": to_plain(cfg.planner),
            },
        )
    set_keys = {"with": gen_key}
    rare_key = None
    if world and gen_key:
        # The planner's classes and amounts, not the generator's output: a generator sweep keeps
        # both the real extra set (as many new real samples per class as the plan asks the
        # generator for) and the rare-class set, and so the real arm's runs.
        planned = {"world": world_key, "data": data, "planner": to_plain(cfg.planner)}
        set_keys["real"] = add("real_extra", "real_extra", planned)
        rare_key = add(
            "rare_eval",
            "rare_eval",
            {**planned, "per_class": int(cfg.loop.rare_eval.per_class)},
        )
    if world:
        add("baseline", "baseline", {"world": world_key, "rare_eval": rare_key})
    training = {
        "world": world_key,
        "clip": clip_key,
        "data": data,
        "model": to_plain(cfg.model),
        "backbone": to_plain(cfg.get("backbone")),
        "train": to_plain(cfg.train),
    }
    for variant in cfg.loop.variants:
        synthetic = (
            {"set": set_keys[variant], "ratio": float(cfg.data.synthetic_ratio)}
            if variant in SET_STAGES
            else None
        )
        for seed in cfg.loop.seeds:
            train_key = add(
                f"train/{variant}/seed{seed}",
                "train",
                {**training, "synthetic": synthetic, "seed": int(seed)},
            )
            add(
                f"eval/{variant}/seed{seed}",
                "eval",
                {"train": train_key, "eval": to_plain(cfg.loop.eval), "rare_eval": rare_key},
            )
    return StagePlan(inputs, kinds)


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
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        yield
        return
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

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        with _outside_hydra_job():
            record = self.stages.run(name, self.plan.kinds[name], self.plan.inputs[name], fn)
        self.outputs[name] = record.outputs
        return record.outputs


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
        # inside the run would only repeat that (about 6 CPU seconds each on the micro-world).
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
    synthetic = ctx.outputs[SET_STAGES[variant]]["set_dir"] if variant in SET_STAGES else None
    return training_config(ctx.cfg, variant, seed, out_dir, ctx.cache_dir, synthetic, ctx.group)


def _data_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        from ovcamo.data.config import resolve_data_paths

        paths = resolve_data_paths(ctx.cfg.data, cache_dir=str(ctx.cache_dir))
        return {"paths": paths.to_json(), "class_info": str(paths.class_info)}

    return fn


def _clip_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        from ovcamo.engine.micro_clip import ensure_micro_clip

        checkpoint = ensure_micro_clip(ctx.cfg.clip, ctx.cfg.data.world, ctx.cache_dir)
        return {"checkpoint": str(checkpoint)}

    return fn


def _generate_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        from generation.run import generate

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
    from generation.planner import make_plan
    from ovcamo.data.config import resolve_data_paths

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
        from ovcamo.data.world import render_extra_set, resolve_world

        counts = dict(Counter(item.class_name for item in _plan(ctx).items))
        spec = resolve_world(ctx.cfg.data.world)
        set_dir = render_extra_set(spec, counts, directory / "set", namespace="extra")
        return {"set_dir": str(set_dir.resolve()), "samples": sum(counts.values())}

    return fn


def _rare_eval_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        from ovcamo.data.world import render_extra_set, resolve_world

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
    from ovcamo.data import DataPaths

    set_dir = (ctx.outputs.get("rare_eval") or {}).get("set_dir")
    return DataPaths.from_paths_json(Path(set_dir) / "paths.json") if set_dir else None


def _baseline_stage(ctx: LoopContext) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        from ovcamo.data import OVCamoDataset
        from ovcamo.data.config import resolve_data_paths
        from ovcamo.engine.baseline import NAME, score_baseline

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
        atomic_write_json(directory / "baseline.json", {"name": NAME, **scores})
        return {"name": NAME, **scores}

    return fn


def _train_stage(ctx: LoopContext, variant: str, seed: int) -> Callable[[Path], dict[str, Any]]:
    def fn(directory: Path) -> dict[str, Any]:
        from ovcamo.engine.train import run

        tcfg = _run_config(ctx, variant, seed, directory / "run")
        result = run(tcfg)
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
        from ovcamo.data import OVCamoDataset
        from ovcamo.data.config import resolve_data_paths
        from ovcamo.engine.evaluate import score_prediction_dir, write_results
        from ovcamo.engine.predict import predict_to_dir

        trained = ctx.outputs[f"train/{variant}/seed{seed}"]
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


def stage_order(cfg: DictConfig) -> list[str]:
    """Stage names in the order they run: data, micro CLIP, generation, then per seed both runs."""
    names = ["data"]
    world = bool(cfg.data.get("world"))
    if world:
        names.append("micro_clip")
    if any(v in cfg.loop.variants for v in SET_STAGES):
        names.append("generate")
        if world:
            names += ["real_extra", "rare_eval"]
    if world:
        names.append("baseline")
    for seed in cfg.loop.seeds:
        for variant in cfg.loop.variants:
            names += [f"train/{variant}/seed{seed}", f"eval/{variant}/seed{seed}"]
    return names


def describe_plan(cfg: DictConfig, plan: StagePlan, stages: StageCache) -> str:
    """What the loop will do, stage by stage, and which stages are already cached."""
    lines = [
        f"ovcamo-loop plan (cache {stages.root}):",
        f"  data: {'micro-world' if cfg.data.get('world') else cfg.data.get('root', 'from config')}",
        f"  model: {cfg.model.get('name', '?')}  backbone: {cfg.backbone.get('name', '?')} "
        f"(pretrained {cfg.backbone.get('pretrained')})",
        f"  seeds: {list(cfg.loop.seeds)}  runs: {list(cfg.loop.variants)}",
    ]
    if "with" in cfg.loop.variants:
        lines.append(
            f"  generator: {cfg.generator.get('name', '?')}  planner rule: "
            f"{cfg.planner.get('rule', '?')}  synthetic ratio: {cfg.data.synthetic_ratio}"
        )
    for name in stage_order(cfg):
        key = plan.key(name)
        state = "cached" if stages.is_done(plan.kinds[name], key) else "to run"
        lines.append(f"  - {name:<24} {key}  {state}")
    return "\n".join(lines)


def _summary(ctx: LoopContext) -> Any:
    from ovcamo.data.config import resolve_data_paths
    from ovcamo.report.loop_report import LoopSummary, RunFiles

    cfg = ctx.cfg
    runs: dict[str, list[RunFiles]] = {}
    for variant in cfg.loop.variants:
        for seed in cfg.loop.seeds:
            o = ctx.outputs[f"eval/{variant}/seed{seed}"]
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
    gen = ctx.outputs.get("generate")
    clip_report: dict[str, Any] = {}
    if ctx.outputs.get("micro_clip"):
        path = Path(ctx.outputs["micro_clip"]["checkpoint"]).parent / "report.json"
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
        baseline=ctx.outputs.get("baseline"),
        grid_samples=int(cfg.loop.report.grid_samples),
        prediction_samples=int(cfg.loop.report.prediction_samples),
    )


_SHARED_STAGES = {
    "data": _data_stage,
    "micro_clip": _clip_stage,
    "generate": _generate_stage,
    "real_extra": _real_extra_stage,
    "rare_eval": _rare_eval_stage,
    "baseline": _baseline_stage,
}


def _shared_stages(cfg: DictConfig) -> list[str]:
    """The stages every training run depends on, in order."""
    return [n for n in stage_order(cfg) if n in _SHARED_STAGES]


def _stage_fn(ctx: LoopContext, name: str) -> Callable[[Path], dict[str, Any]]:
    if name in _SHARED_STAGES:
        return _SHARED_STAGES[name](ctx)
    kind, variant, seed = name.split("/")
    stage = {"train": _train_stage, "eval": _eval_stage}[kind]
    return stage(ctx, variant, int(seed.removeprefix("seed")))


def _context(cfg: DictConfig) -> LoopContext:
    cache_dir = Path(os.path.expanduser(str(cfg.cache_dir)))
    plan = plan_stages(cfg)
    return LoopContext(
        cfg, cache_dir, StageCache(cache_dir / "loop"), plan, group=loop_group(cfg, plan)
    )


def _run_lane(container: dict[str, Any], names: list[str]) -> list[Any]:
    """One worker process on one thread: the shared stages replayed from the cache, then
    ``names``."""
    import torch

    torch.set_num_threads(1)
    ctx = _context(OmegaConf.create(container))
    for name in _shared_stages(ctx.cfg):
        ctx.run(name, _stage_fn(ctx, name))
    ctx.stages.records.clear()
    for name in names:
        ctx.run(name, _stage_fn(ctx, name))
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
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    container = OmegaConf.to_container(ctx.cfg, resolve=True)
    slots = lane_slots(len(lanes), workers)
    results: list[list[Any]] = [[] for _ in lanes]
    # forkserver: this process has run torch's thread pools, which a fork can deadlock.
    pool_context = multiprocessing.get_context("forkserver")
    import torch

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
    from ovcamo.report.loop_report import write_loop_report

    out_dir = Path(os.path.expanduser(str(cfg.out_dir)))
    if not cfg.loop.variants or not cfg.loop.seeds:
        raise ValueError("loop.variants and loop.seeds must not be empty")
    ctx = _context(cfg)
    print(describe_plan(cfg, ctx.plan, ctx.stages), flush=True)
    t0 = time.perf_counter()
    for name in _shared_stages(cfg):
        ctx.run(name, _stage_fn(ctx, name))
    lanes = [
        [f"train/{variant}/seed{seed}", f"eval/{variant}/seed{seed}"]
        for seed in cfg.loop.seeds
        for variant in cfg.loop.variants
    ]
    workers = min(int(cfg.loop.get("workers") or 1), len(lanes))
    if workers <= 1:
        for lane in lanes:
            for name in lane:
                ctx.run(name, _stage_fn(ctx, name))
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
    from ovcamo.engine.logging import log_loop_report
    from ovcamo.report.loop_report import read_per_class

    tables = {
        f"eval/{variant}/seed{run.seed}/{part}/per_class": read_per_class(getattr(run, part))
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
        from ovcamo.engine.check import preflight_problems

        problems = preflight_problems(cfg)
        if problems:
            print("ovcamo-loop: " + "\n\n".join(problems), file=sys.stderr)
            raise SystemExit(2)
    if cfg.get("check"):
        from ovcamo.engine.loop_check import check_loop

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
