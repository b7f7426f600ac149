"""The OVCOS metrics against pysodmetrics (per sample) and against the official aggregation rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from py_sod_metrics import MAE, Emeasure, Fmeasure, Smeasure, WeightedFmeasure

from ovcamo.metrics import (
    AGNOSTIC_KEYS,
    DIAGNOSTIC_KEYS,
    METRIC_KEYS,
    PAPER_ALIASES,
    OVCOSMetric,
    hard_classes,
    hard_count,
    hard_subset,
    per_class_csv,
    per_class_table,
    read_class_ciou,
    sample_scores,
    summarize,
    to_uint8_prediction,
)
from ovcamo.metrics.functional import SCORE_LENGTH

TOL = 1e-6


def reference_scores(pred: np.ndarray, gt: np.ndarray, smeasure=Smeasure) -> dict[str, object]:
    """pysodmetrics per sample, fed the way the official OVCamo evaluator feeds it (GT as 0/255)."""
    g = gt.astype(np.uint8) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm, wfm, mae, fm, em = smeasure(), WeightedFmeasure(), MAE(), Fmeasure(), Emeasure()
        for m in (sm, wfm, mae, fm, em):
            m.step(pred, g)
    return {
        "sm": sm.sms[0],
        "wfm": wfm.weighted_fms[0],
        "mae": mae.maes[0],
        "adpfm": fm.adaptive_fms[0],
        "fm": fm.changeable_fms[0],
        "adpem": em.adaptive_ems[0],
        "em": em.changeable_ems[0],
    }


def reference_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """OVCamo's IoU by brute force: binarise at every threshold separately."""
    p = pred / 255
    if p.max() != p.min():
        p = (p - p.min()) / (p.max() - p.min())
    levels = (p * 255).astype(np.uint8)
    curve = []
    for t in range(255, -1, -1):
        b = levels >= t
        union = np.count_nonzero(b | gt)
        curve.append(np.count_nonzero(b & gt) / union if union else 0.0)
    b = p >= min(2 * p.mean(), 1)
    union = np.count_nonzero(b | gt)
    return (np.count_nonzero(b & gt) / union if union else 0.0), np.array(curve)


class _EmptyQuadrantSmeasure(Smeasure):
    """pysodmetrics' Sm with an empty quadrant scored 0 instead of NaN (its area weight is 0)."""

    def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
        return 0.0 if pred.size == 0 else super().ssim(pred, gt)


def assert_matches_reference(pred: np.ndarray, gt: np.ndarray) -> None:
    ours = sample_scores(pred, gt)
    ref = reference_scores(pred, gt)
    if np.isnan(ref["sm"]):
        ref["sm"] = reference_scores(pred, gt, smeasure=_EmptyQuadrantSmeasure)["sm"]
    for key, value in ref.items():
        np.testing.assert_allclose(getattr(ours, key), value, rtol=0, atol=TOL, err_msg=key)
    adp_iou, iou_curve = reference_iou(pred, gt)
    np.testing.assert_allclose(ours.adpiou, adp_iou, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.iou, iou_curve, rtol=0, atol=TOL)


def _blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        h, w = rng.integers(8, 90, 2)
        cases.append(
            (
                f"random{i}",
                rng.integers(0, 256, (h, w)).astype(np.uint8),
                rng.random((h, w)) < rng.uniform(0.05, 0.6),
            )
        )
    for i in range(4):
        h, w = (96, 128) if i % 2 else (101, 77)
        gt = _blob(h, w, h * rng.uniform(0.3, 0.6), w * rng.uniform(0.3, 0.6), min(h, w) / 4)
        soft = np.clip(
            gt * rng.uniform(100, 200) + rng.normal(40, 30, (h, w)) + np.linspace(0, 60, w), 0, 255
        )
        cases.append((f"real{i}", soft.astype(np.uint8), gt))
    h, w = 33, 47
    pred = rng.integers(0, 256, (h, w)).astype(np.uint8)
    cases.append(("empty_gt", pred, np.zeros((h, w), bool)))
    cases.append(("full_gt", pred, np.ones((h, w), bool)))
    blob = _blob(h, w, 12, 20, 8)
    for c in (0, 1, 128, 255):
        cases.append((f"constant{c}", np.full((h, w), c, np.uint8), blob))
    cases.append(("constant_empty_gt", np.full((h, w), 77, np.uint8), np.zeros((h, w), bool)))
    cases.append(("binary_pred", (blob * 255).astype(np.uint8), _blob(h, w, 14, 18, 9)))
    one = np.zeros((h, w), bool)
    one[10, 30] = True
    cases.append(("one_pixel", pred, one))
    corner = np.zeros((h, w), bool)
    corner[0, 0] = True
    cases.append(("one_pixel_corner", pred, corner))
    border = np.zeros((h, w), bool)
    border[5:20, :6] = True
    cases.append(("border_left", pred, border))
    top = np.zeros((h, w), bool)
    top[:3, 10:40] = True
    cases.append(("border_top", pred, top))
    for hw in ((7, 13), (3, 5), (17, 2)):
        g = rng.random(hw) < 0.4
        g[0, 0] = True
        cases.append((f"odd{hw}", rng.integers(0, 256, hw).astype(np.uint8), g))
    # Levels on the adaptive threshold: half 0 / half 255 (threshold 1), and 0/100/200 with
    # mean 0.25 after normalisation (threshold 0.5 = the level of 100).
    half = np.zeros((10, 12), np.uint8)
    half[:, :6] = 255
    cases.append(("on_threshold_binary", half, rng.random((10, 12)) < 0.4))
    tile = np.resize(np.array([0, 0, 0, 0, 0, 100, 100, 200], np.uint8), 8 * 9).reshape(8, 9)
    cases.append(("on_threshold_levels", tile, rng.random((8, 9)) < 0.5))
    two = np.where(blob, 200, 40).astype(np.uint8)
    two[0, :5] = 120
    cases.append(("three_levels", two, blob))
    return cases


@pytest.mark.parametrize(("name", "pred", "gt"), _cases(), ids=[c[0] for c in _cases()])
def test_sample_scores_match_pysodmetrics(name: str, pred: np.ndarray, gt: np.ndarray) -> None:
    assert_matches_reference(pred, gt)


@pytest.mark.parametrize("where", ["last_row", "last_col", "corner", "single_row"])
def test_centroid_on_last_row_or_column_is_finite(where: str) -> None:
    rng = np.random.default_rng(3)
    h, w = (1, 40) if where == "single_row" else (25, 31)
    pred = rng.integers(0, 256, (h, w)).astype(np.uint8)
    gt = np.zeros((h, w), bool)
    if where == "last_row":
        gt[-1, 5:20] = True
    elif where == "last_col":
        gt[3:9, -1] = True
    elif where == "corner":
        gt[-1, -1] = True
    else:
        gt[0, 10:14] = True
    ref = reference_scores(pred, gt)
    assert np.isnan(ref["sm"]), "pysodmetrics is expected to return NaN here"
    ours = sample_scores(pred, gt)
    assert np.isfinite(ours.sm)
    fixed = reference_scores(pred, gt, smeasure=_EmptyQuadrantSmeasure)["sm"]
    assert abs(ours.sm - fixed) <= TOL


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(2, 24), st.integers(2, 24))),
    st.data(),
)
def test_property_matches_pysodmetrics(pred: np.ndarray, data: st.DataObject) -> None:
    gt = data.draw(arrays(np.bool_, pred.shape))
    assert_matches_reference(pred, gt)


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="shape"):
        sample_scores(np.zeros((4, 5), np.uint8), np.zeros((5, 4), bool))
    with pytest.raises(TypeError, match="uint8"):
        sample_scores(np.zeros((4, 5), np.float32), np.zeros((4, 5), bool))
    with pytest.raises(TypeError, match="bool"):
        sample_scores(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.uint8))


def _dataset(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = rng.integers(20, 50, 2)
        gt = _blob(h, w, h / 2, w / 2, min(h, w) / 3.5)
        pred = np.clip(gt * 150 + rng.normal(50, 45, (h, w)), 0, 255).astype(np.uint8)
        gcls = ["snow leopard", "reccoon", "owl"][i % 3]
        pcls = gcls if rng.random() < 0.7 else "owl"
        out.append((pred, gt, pcls, gcls, f"{i:06d}_{gcls}"))
    return out


def test_aggregation_matches_official_rules() -> None:
    """Class-aware zeroing, then sample means; curves averaged per threshold, then mean/max."""
    samples = _dataset(12)
    metric = OVCOSMetric()
    for s in samples:
        metric.update(*s)
    got = metric.compute()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm, wfm, mae, fm, em = Smeasure(), WeightedFmeasure(), MAE(), Fmeasure(), Emeasure()
    ious, adp_ious = [], []
    for pred, gt, pcls, gcls, _ in samples:
        g = gt.astype(np.uint8) * 255
        for m in (sm, wfm, mae, fm, em):
            m.step(pred, g)
        adp, curve = reference_iou(pred, gt)
        if pcls != gcls:
            # The official evaluator fills the just-added entries with 0 (MAE with 1).
            sm.sms[-1] = 0
            wfm.weighted_fms[-1] = 0
            mae.maes[-1] = 1
            fm.adaptive_fms[-1] = 0
            fm.changeable_fms[-1] = np.zeros(256)
            em.adaptive_ems[-1] = 0
            em.changeable_ems[-1] = np.zeros(256)
            adp, curve = 0.0, np.zeros(256)
        adp_ious.append(adp)
        ious.append(curve)
    fmr, emr = fm.get_results()["fm"], em.get_results()["em"]
    iou_curve = np.mean(ious, axis=0)
    expected = {
        "sm": sm.get_results()["sm"],
        "wfm": wfm.get_results()["wfm"],
        "mae": mae.get_results()["mae"],
        "adpfm": fmr["adp"],
        "avgfm": fmr["curve"].mean(),
        "maxfm": fmr["curve"].max(),
        "adpem": emr["adp"],
        "avgem": emr["curve"].mean(),
        "maxem": emr["curve"].max(),
        "adpiou": np.mean(adp_ious),
        "avgiou": iou_curve.mean(),
        "maxiou": iou_curve.max(),
    }
    for key in METRIC_KEYS:
        assert abs(got[key] - expected[key]) <= TOL, key
    for alias, key in PAPER_ALIASES.items():
        assert got[alias] == got[key]
    assert set(got) == set(METRIC_KEYS) | set(PAPER_ALIASES) | set(DIAGNOSTIC_KEYS)


def test_diagnostics_when_every_class_is_wrong() -> None:
    """Class-aware numbers collapse; the class-agnostic ones are pysodmetrics' and the IoU's own."""
    samples = [(p, g, "not " + gc, gc, u) for p, g, _, gc, u in _dataset(8, seed=4)]
    metric = OVCOSMetric()
    for s in samples:
        metric.update(*s)
    got = metric.compute()
    assert got["cIoU"] == 0.0 and got["cSm"] == 0.0 and got["cMAE"] == 1.0
    assert got["class_accuracy"] == 0.0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm, wfm, mae, fm, em = Smeasure(), WeightedFmeasure(), MAE(), Fmeasure(), Emeasure()
    ious = []
    for pred, gt, *_ in samples:
        for m in (sm, wfm, mae, fm, em):
            m.step(pred, gt.astype(np.uint8) * 255)
        ious.append(reference_iou(pred, gt)[1])
    expected = {
        "agnostic_Sm": sm.get_results()["sm"],
        "agnostic_Fwb": wfm.get_results()["wfm"],
        "agnostic_MAE": mae.get_results()["mae"],
        "agnostic_Fb": fm.get_results()["fm"]["curve"].mean(),
        "agnostic_Em": em.get_results()["em"]["curve"].mean(),
        "agnostic_IoU": np.mean(ious, axis=0).mean(),
    }
    for key, value in expected.items():
        assert abs(got[key] - value) <= TOL, key
    assert got["agnostic_IoU"] > 0.3

    rows = metric.per_sample()
    assert np.mean([r["agnostic_IoU"] for r in rows]) == pytest.approx(got["agnostic_IoU"])
    assert all(r["avgiou"] == 0.0 and not r["correct"] for r in rows)


def test_diagnostics_are_the_scores_without_the_class_check() -> None:
    samples = _dataset(12, seed=2)
    metric = OVCOSMetric()
    for s in samples:
        metric.update(*s)
    got = metric.compute()
    scores, correct, _ = metric.synced_arrays()
    assert 0 < correct.sum() < len(correct)
    plain = summarize(scores)
    for name, key in AGNOSTIC_KEYS.items():
        assert got[name] == plain[key], name
    assert got["class_accuracy"] == pytest.approx(correct.mean())
    assert got["cIoU"] < got["agnostic_IoU"]
    rows = metric.per_sample()
    for name in AGNOSTIC_KEYS:
        assert np.mean([r[name] for r in rows]) == pytest.approx(got[name], abs=1e-12), name
    assert np.mean([r["correct"] for r in rows]) == pytest.approx(got["class_accuracy"])


def test_wrong_class_zeroes_everything_but_mae() -> None:
    pred, gt, _, gcls, uid = _dataset(1)[0]
    metric = OVCOSMetric()
    metric.update(pred, gt, "not " + gcls, gcls, uid)
    out = metric.compute()
    assert out["mae"] == 1.0
    assert all(out[k] == 0.0 for k in METRIC_KEYS if k != "mae")
    right = OVCOSMetric()
    right.update(pred, gt, gcls, gcls, uid)
    assert right.compute()["cSm"] > 0.5


def test_per_sample_and_batch_update() -> None:
    samples = _dataset(6)
    one, batch = OVCOSMetric(), OVCOSMetric()
    for s in samples:
        one.update(*s)
    batch.update_batch(*map(list, zip(*samples, strict=True)))
    assert one.compute() == batch.compute()
    rows = one.per_sample()
    assert [r["unique_id"] for r in rows] == [s[4] for s in samples]
    for row, (_, _, pcls, gcls, _) in zip(rows, samples, strict=True):
        assert row["correct"] == (pcls == gcls)
        assert row["gt_class"] == gcls and row["pred_class"] == pcls
        if not row["correct"]:
            assert row["mae"] == 1.0 and row["sm"] == 0.0
    raw = one.per_sample(class_aware_scores=False)
    assert all(r["sm"] > 0 for r in raw)
    scores, correct, _ = one.synced_arrays()
    assert np.mean([r["sm"] for r in rows]) == pytest.approx(summarize(scores, correct)["sm"])


def test_compute_before_update_raises() -> None:
    with pytest.raises(RuntimeError, match="before any update"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' own notice about the same mistake
        OVCOSMetric().compute()


def test_per_class_table_and_hard_classes(tmp_path) -> None:
    samples = _dataset(12)
    metric = OVCOSMetric()
    for s in samples:
        metric.update(*s)
    scores, correct, records = metric.synced_arrays()
    order = ["snow leopard", "reccoon", "owl", "absent class"]
    rows = per_class_table(scores, correct, records, class_order=order)
    assert [r["class"] for r in rows] == order[:3]
    assert sum(r["num_samples"] for r in rows) == 12
    for row in rows:
        sel = np.array([r[2] == row["class"] for r in records])
        assert row["avgiou"] == pytest.approx(summarize(scores[sel], correct[sel])["avgiou"])
        assert row["class_accuracy"] == pytest.approx(correct[sel].mean())
        assert row["agnostic_IoU"] == pytest.approx(summarize(scores[sel])["avgiou"])

    ciou = {r["class"]: r["avgiou"] for r in rows}
    hardest = min(ciou, key=ciou.get)
    own = hard_subset(scores, correct, records, rows)
    assert own["source"] == "this run's own ranking" and own["classes"] == [hardest]
    assert own["num_samples"] == 4

    (tmp_path / "per_class.csv").write_text(per_class_csv(rows), encoding="utf-8")
    assert read_class_ciou(tmp_path / "per_class.csv") == pytest.approx(ciou)
    easiest = max(ciou, key=ciou.get)
    reference = {c: (0.0 if c == easiest else 0.9) for c in ciou}
    ref = hard_subset(scores, correct, records, rows, reference=reference)
    assert ref["source"] == "reference run's ranking" and ref["classes"] == [easiest]

    assert metric.per_class_table(order) == rows
    assert metric.hard_classes(reference)["classes"] == [easiest]
    assert metric.hard_classes()["classes"] == [hardest]

    assert hard_classes({f"c{i}": i / 10 for i in range(8)}) == ["c0", "c1"]
    assert hard_classes({"b": 0.1, "a": 0.1, "c": 0.5}, fraction=0.5) == ["a"]
    # The paper's subset: 15 of OVCamo's 61 novel classes (the hardest 25 %).
    assert hard_count(61) == 15 and hard_count(10) == 2 and hard_count(3) == 1
    assert len(hard_classes({f"c{i:02d}": i / 100 for i in range(61)})) == 15

    # OVCoser's ranking, names hardest first: the first hard_count(run classes) present in the run.
    ovcoser = ["absent class", easiest, hardest]
    given = hard_subset(scores, correct, records, rows, ranking=ovcoser)
    assert given["source"] == "OVCoser ranking" and given["classes"] == [easiest]
    assert given["class_ciou"] == {easiest: None}
    (tmp_path / "ovcoser.txt").write_text("# OVCoser, hardest first\n\n" + "\n".join(ovcoser))
    from_file = hard_subset(scores, correct, records, rows, ranking=tmp_path / "ovcoser.txt")
    assert from_file["classes"] == [easiest] and from_file["metrics"] == given["metrics"]
    assert metric.hard_classes(ranking=ovcoser)["classes"] == [easiest]
    with pytest.raises(ValueError, match="not both"):
        hard_subset(scores, correct, records, rows, reference=reference, ranking=ovcoser)
    with pytest.raises(ValueError, match="shares no class"):
        hard_subset(scores, correct, records, rows, ranking=["absent class"])
    (tmp_path / "bad.csv").write_text("class,score\nowl,0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="avgiou"):
        read_class_ciou(tmp_path / "bad.csv")


def test_to_uint8_prediction() -> None:
    logits = torch.tensor([[-4.0, 0.0], [1.0, 8.0]])
    out = to_uint8_prediction(logits, (2, 2))
    assert out.dtype == np.uint8 and out.shape == (2, 2)
    assert out[0, 0] == 0 and out[1, 1] == 255
    p = torch.sigmoid(logits)
    expected = ((p - p.min()) / (p.max() - p.min()) * 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(out, expected)

    big = to_uint8_prediction(torch.randn(1, 12, 16), (30, 41))
    assert big.shape == (30, 41) and big.max() <= 255
    assert to_uint8_prediction(torch.full((5, 5), 3.0), (4, 4)).max() == 0
    with pytest.raises(ValueError, match="logits"):
        to_uint8_prediction(torch.zeros(2, 4, 4), (4, 4))


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    samples = _dataset(9)
    metric = OVCOSMetric()
    for s in samples[rank::world]:
        metric.update(*s)
    result = metric.compute()
    rows = metric.per_sample()
    if rank == 0:
        torch.save({"result": result, "ids": [r["unique_id"] for r in rows]}, out_file)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_state_syncs_across_processes(tmp_path) -> None:
    out_file = str(tmp_path / "out.pt")
    # fork: the workers reuse this process's imports instead of re-importing torch.
    torch.multiprocessing.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), out_file),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    got = torch.load(out_file, weights_only=True)
    single = OVCOSMetric()
    samples = _dataset(9)
    for s in samples:
        single.update(*s)
    expected = single.compute()
    for key in expected:
        assert got["result"][key] == pytest.approx(expected[key], abs=1e-12), key
    assert sorted(got["ids"]) == sorted(s[4] for s in samples)


def test_score_vector_layout() -> None:
    pred, gt, *_ = _dataset(1)[0]
    s = sample_scores(pred, gt)
    vec = s.to_vector()
    assert vec.shape == (SCORE_LENGTH,)
    assert vec[0] == s.sm and vec[-1] == s.iou[-1]


def test_add_scores_after_compute_is_not_stale() -> None:
    samples = _dataset(4)
    metric = OVCOSMetric()
    metric.update(*samples[0])
    first = metric.compute()
    vec = sample_scores(samples[1][0], samples[1][1]).to_vector()
    metric.add_scores(vec, samples[1][2], samples[1][3], samples[1][4])
    both = OVCOSMetric()
    both.update_batch(*map(list, zip(*samples[:2], strict=True)))
    assert metric.compute() == both.compute() != first
