"""Views of attributions: self-contained HTML reports, Captum-compatible text, image and
time-series visualizations, and matplotlib plots of token and layer × token attributions.

``from llmattr import viz`` stands in for ``from captum.attr import visualization as viz``.
"""

from .image import visualize_image_attr, visualize_image_attr_multiple
from .plots import plot_layer_token_attr, plot_seq_attr, plot_token_attr
from .report import html_report
from .scale import normalize_attr
from .text import VisualizationDataRecord, visualize_text
from .timeseries import visualize_timeseries_attr

__all__ = [
    "VisualizationDataRecord",
    "html_report",
    "normalize_attr",
    "plot_layer_token_attr",
    "plot_seq_attr",
    "plot_token_attr",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_text",
    "visualize_timeseries_attr",
]
