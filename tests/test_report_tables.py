"""Markdown tables, mean ± spread over seeds, and the within-spread verdict."""

from __future__ import annotations

import math

import pytest

from ovcamo.report.tables import (
    SIX_METRICS,
    Spread,
    markdown_table,
    paired_difference,
    six_metric_table,
)


def test_markdown_table_layout_and_escaping():
    text = markdown_table(["class", "cIoU"], [["snow leopard", "0.500"], ["a|b", 1]])
    lines = text.splitlines()
    assert lines[0] == "| class | cIoU |"
    assert lines[1] == "|:--|--:|"
    assert lines[3] == "| a\\|b | 1 |"
    with pytest.raises(ValueError, match="2 headers"):
        markdown_table(["a", "b"], [[1]])


def test_spread_statistics():
    s = Spread.of([0.1, 0.3])
    assert s.mean == pytest.approx(0.2)
    assert s.std == pytest.approx(math.sqrt(0.02))  # sample std, ddof=1
    assert s.format() == "0.200 ± 0.141"
    one = Spread.of([0.25])
    assert math.isnan(one.std) and one.format(signed=True) == "+0.250"
    assert one.within_spread is None


@pytest.mark.parametrize(
    ("diffs", "within"),
    [
        ([0.05, 0.06, 0.055], False),  # consistent and large against its spread
        ([0.05, -0.01], True),  # seeds disagree in sign
        ([0.01, 0.2], True),  # same sign but |mean| < std
    ],
)
def test_within_spread(diffs, within):
    assert Spread.of(diffs).within_spread is within


def test_six_metric_table_with_difference():
    runs = {
        "without": [dict.fromkeys(SIX_METRICS, 0.4), dict.fromkeys(SIX_METRICS, 0.5)],
        "with": [dict.fromkeys(SIX_METRICS, 0.5), dict.fromkeys(SIX_METRICS, 0.5)],
    }
    text = six_metric_table(runs, difference=("with", "without"))
    rows = text.splitlines()
    assert "cFωβ ↑" in rows[0] and "cMAE ↓" in rows[0]
    assert rows[2].startswith("| without | 0.450 ± 0.071")
    assert rows[3].startswith("| with | 0.500 ± 0.000")
    assert rows[4].startswith("| Δ (with − without) | +0.050 ± 0.071")
    d = paired_difference(runs["with"], runs["without"], "cIoU")
    assert d.values == pytest.approx((0.1, 0.0))
    with pytest.raises(KeyError, match="cFwb"):
        six_metric_table({"without": [{"cSm": 0.1}]})
    with pytest.raises(ValueError, match="cannot pair"):
        paired_difference(runs["with"], runs["without"][:1], "cSm")
