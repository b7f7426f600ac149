from __future__ import annotations

import pytest
from generation_data import write_dataset

from generation.planner import Plan, make_plan, select_rare_classes
from ovcamo.data import DataPaths

COUNTS = {"a": 10, "b": 1, "c": 5, "d": 3, "e 2": 3}


def test_quantile_rule_picks_classes_below_the_median_and_fills_to_it():
    rare, target = select_rare_classes(COUNTS, "quantile", quantile=0.5)
    assert target == 3
    assert rare == ["b"]


def test_target_rule():
    rare, target = select_rare_classes(COUNTS, "target", target_count=5)
    assert (sorted(rare), target) == (["b", "d", "e 2"], 5)


def test_k_rarest_breaks_ties_by_name_and_fills_to_the_next_class():
    rare, target = select_rare_classes(COUNTS, "k_rarest", k=2)
    assert rare == ["b", "d"]
    assert target == 3
    rare, target = select_rare_classes(COUNTS, "k_rarest", k=5)
    assert target == 10 and len(rare) == 5


@pytest.mark.parametrize(
    "rule,kw",
    [("median", {}), ("target", {}), ("k_rarest", {"k": 0}), ("quantile", {"quantile": 0})],
)
def test_bad_rules_raise(rule, kw):
    with pytest.raises(ValueError):
        select_rare_classes(COUNTS, rule, **kw)


@pytest.fixture()
def paths(tmp_path) -> DataPaths:
    return DataPaths.from_paths_json(write_dataset(tmp_path / "ds"))


def test_plan_fills_rare_train_classes_with_their_own_sources(paths):
    plan = make_plan(
        paths, {"rule": "quantile", "quantile": 0.5}, generator="classic", config_hash="h"
    )
    # counts 6, 4, 2, 1 → median 3 → mantis gets 1, reccoon gets 2
    assert plan.counts == {"snow leopard": 6, "owl": 4, "mantis": 2, "reccoon": 1}
    per_class = {c: sum(i.class_name == c for i in plan.items) for c in plan.targets}
    assert per_class == {"mantis": 1, "reccoon": 2}
    assert all(i.source_unique_id.endswith(i.class_name) for i in plan.items)
    assert all(i.source_split == "train" and not i.outside_ov_protocol for i in plan.items)
    assert [i.index for i in plan.items] == list(range(len(plan.items)))
    assert len({i.unique_id for i in plan.items}) == len(plan.items)
    assert not plan.outside_ov_protocol


def test_plan_is_deterministic_and_round_trips(paths, tmp_path):
    cfg = {"rule": "target", "target_count": 5, "seed": 3}
    a = make_plan(paths, cfg, generator="g", config_hash="h")
    b = make_plan(paths, cfg, generator="g", config_hash="h")
    assert a.to_json() == b.to_json()
    a.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").to_json() == a.to_json()
    c = make_plan(paths, {**cfg, "seed": 4}, generator="g", config_hash="h")
    assert [i.seed for i in c.items] != [i.seed for i in a.items]


def test_per_class_and_cap(paths):
    plan = make_plan(
        paths,
        {"rule": "k_rarest", "k": 2, "per_class": 7, "max_per_class": 4},
        generator="g",
        config_hash="h",
    )
    assert {c: sum(i.class_name == c for i in plan.items) for c in plan.targets} == {
        "reccoon": 4,
        "mantis": 4,
    }


def test_holdout_samples_are_never_sources(paths):
    from ovcamo.data import holdout_split, resolve_records

    records, _ = resolve_records(paths, "train", check_files="none")
    _, held = holdout_split(records, 0.5, 0)
    held_ids = {r.unique_id for r in held}
    plan = make_plan(
        paths,
        {"rule": "k_rarest", "k": 4, "per_class": 5},
        generator="g",
        config_hash="h",
        holdout_fraction=0.5,
    )
    assert held_ids and not held_ids & {i.source_unique_id for i in plan.items}


def test_test_classes_only_with_allow_novel(paths):
    with pytest.raises(ValueError, match="allow_novel"):
        make_plan(paths, {"novel_classes": ["frog"]}, generator="g", config_hash="h")
    with pytest.raises(KeyError, match="owl"):
        make_plan(
            paths, {"allow_novel": True, "novel_classes": ["owl"]}, generator="g", config_hash="h"
        )
    with pytest.raises(ValueError, match="novel_per_class"):
        make_plan(
            paths, {"allow_novel": True, "novel_classes": ["frog"]}, generator="g", config_hash="h"
        )
    plan = make_plan(
        paths,
        {"allow_novel": True, "novel_classes": ["frog"], "novel_per_class": 2},
        generator="g",
        config_hash="h",
    )
    novel = [i for i in plan.items if i.class_name == "frog"]
    assert len(novel) == 2 and all(
        i.outside_ov_protocol and i.source_split == "test" for i in novel
    )
    assert plan.outside_ov_protocol
    assert all(not i.outside_ov_protocol for i in plan.items if i.class_name != "frog")
