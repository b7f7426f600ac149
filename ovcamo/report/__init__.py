"""Reports: markdown tables, bar charts and image grids (DESIGN §8), and the loop's report.md."""

from ovcamo.report.grids import image_grid, prediction_grid
from ovcamo.report.plots import grouped_bar, per_class_bar
from ovcamo.report.tables import SIX_METRICS, Spread, markdown_table, six_metric_table

__all__ = [
    "SIX_METRICS",
    "Spread",
    "grouped_bar",
    "image_grid",
    "markdown_table",
    "per_class_bar",
    "prediction_grid",
    "six_metric_table",
]
