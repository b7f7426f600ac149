"""The loop's stage graph: one more declaration is picked up by the run order, the cache keys, the
printed plan, the worker lanes and ``check=true``."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_loop_stages import _cfg

from ovcamo import CONF_DIR
from ovcamo.engine.check import Problem
from ovcamo.engine.loop import LOOP_STAGES, LoopContext, describe_plan, plan_stages, stage_order
from ovcamo.engine.loop_check import check_loop
from ovcamo.engine.stage_cache import Stage, StageCache, StageGraph

AUDIT_PROBLEM = Problem("loop.audit", "loop.audit: the audit found the generated set wanting")


def _audit(ctx, **params):
    def fn(directory):
        (directory / "audit.txt").write_text("ok")
        return {"file": str(directory / "audit.txt")}

    return fn


def _graph() -> StageGraph:
    """The loop's graph plus a shared stage reading the generated set and a per-run stage reading
    each evaluation."""
    audit = Stage(
        "audit",
        "audit",
        lambda cfg, keys: {"generate": keys["generate"], "strict": True},
        _audit,
        needs=("generate",),
        when=LOOP_STAGES.stage("generate").when,  # planned wherever the set it reads is
        check=lambda cfg, plan, name, cache_dir: [AUDIT_PROBLEM],
    )
    score = Stage(
        "score",
        "score",
        lambda cfg, keys, variant, seed: {"eval": keys["eval"]},
        _audit,
        needs=("eval",),
        shared=False,
    )
    return LOOP_STAGES.with_stage(audit, after="generate").with_stage(score, after="eval")


def test_an_extra_declaration_joins_order_keys_plan_and_lanes(tmp_path):
    cfg = _cfg()
    graph = _graph()
    plan = plan_stages(cfg, graph)
    base = plan_stages(cfg)
    order = stage_order(cfg, graph)
    assert order == plan.order
    assert order[:4] == ["data", "micro_clip", "generate", "audit"]
    assert order[7:10] == ["train/without/seed0", "eval/without/seed0", "score/without/seed0"]
    assert [n for n in order if n not in ("audit",) and not n.startswith("score/")] == base.order
    assert "audit" not in stage_order(cfg)
    # Every other stage keeps its key; the new one follows what it reads.
    assert all(plan.key(n) == base.key(n) for n in base.order)
    assert plan.inputs["audit"] == {"generate": base.key("generate"), "strict": True}
    assert plan.inputs["score/with/seed1"] == {"eval": base.key("eval/with/seed1")}
    other = plan_stages(_cfg(**{"generator.patch": 8}), graph)
    assert other.key("audit") != plan.key("audit")
    assert other.key("score/without/seed0") == plan.key("score/without/seed0")
    assert other.key("score/with/seed0") != plan.key("score/with/seed0")
    # A loop without a generated set plans no audit.
    assert "audit" not in stage_order(_cfg(**{"loop.variants": ["without"]}), graph)

    described = describe_plan(cfg, plan, StageCache(tmp_path / "loop"))
    assert f"  - {'audit':<24} {plan.key('audit')}  to run" in described
    assert f"  - {'score/with/seed1':<24} {plan.key('score/with/seed1')}  to run" in described

    assert plan.shared() == ["data", "micro_clip", "generate", "audit", *base.shared()[3:]]
    assert plan.lanes() == [
        [f"train/{v}/seed{s}", f"eval/{v}/seed{s}", f"score/{v}/seed{s}"]
        for s in (0, 1)
        for v in ("without", "with")
    ]

    # The declared function runs in the stage's own cache folder, once.
    ctx = LoopContext(cfg, tmp_path, StageCache(tmp_path / "loop"), plan)
    outputs = ctx.run("audit")
    assert ctx.output("audit") == outputs
    assert outputs["file"] == str(tmp_path / "loop" / "audit" / plan.key("audit") / "audit.txt")
    assert [r.status for r in ctx.stages.records] == ["ran"]
    ctx.run("audit")
    assert [r.status for r in ctx.stages.records] == ["ran", "cached"]


def test_an_extra_declaration_joins_the_check(tmp_path, capsys):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("loop", overrides=["out_dir=unused", "check=true", f"cache_dir={tmp_path}"])
    assert check_loop(cfg, plan_stages(cfg), tmp_path) == []
    assert check_loop(cfg, plan_stages(cfg, _graph()), tmp_path) == [AUDIT_PROBLEM]
    without = OmegaConf.merge(cfg, {"loop": {"variants": ["without"]}})
    assert check_loop(without, plan_stages(without, _graph()), tmp_path) == []
    assert not (tmp_path / "loop").exists()


def test_a_declaration_must_follow_what_it_needs():
    late = Stage("late", "late", lambda cfg, keys: {}, _audit, needs=("eval",))
    with pytest.raises(ValueError, match="shared stage 'late' needs per-run stage 'eval'"):
        LOOP_STAGES.with_stage(late, after="eval")
    with pytest.raises(ValueError, match="needs 'eval', not declared before it"):
        LOOP_STAGES.with_stage(late, after="data")
    with pytest.raises(ValueError, match="declared twice"):
        LOOP_STAGES.with_stage(LOOP_STAGES.stage("data"), after="baseline")
