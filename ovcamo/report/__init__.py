"""Reports: markdown tables, bar charts, image grids, prediction overlays, and the loop's report.md.

Names are imported on first use, so a tool that only draws overlays does not load matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ovcamo._lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
    from ovcamo.report.grids import image_grid, prediction_grid
    from ovcamo.report.overlay import overlay_prediction
    from ovcamo.report.plots import grouped_bar, per_class_bar
    from ovcamo.report.tables import SIX_METRICS, Spread, markdown_table, six_metric_table

_EXPORTS = {
    "SIX_METRICS": "tables",
    "Spread": "tables",
    "grouped_bar": "plots",
    "image_grid": "grids",
    "markdown_table": "tables",
    "overlay_prediction": "overlay",
    "per_class_bar": "plots",
    "prediction_grid": "grids",
    "six_metric_table": "tables",
}

__all__ = [
    "SIX_METRICS",
    "Spread",
    "grouped_bar",
    "image_grid",
    "markdown_table",
    "overlay_prediction",
    "per_class_bar",
    "prediction_grid",
    "six_metric_table",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
