"""Views of attributions: self-contained HTML reports, Captum-compatible text, image and
time-series visualizations, and matplotlib plots of token and layer × token attributions.

``from llmattr import viz`` stands in for ``from captum.attr import visualization as viz``.
"""

from .explorer import explore, write_explorer
from .image import (
    ImageVisualizationMethod,
    VisualizeSign,
    visualize_image_attr,
    visualize_image_attr_multiple,
)
from .image_report import overlay_png, plot_image_attr
from .masks import draw_mask_border, draw_mask_legend
from .plots import plot_layer_token_attr, plot_seq_attr, plot_token_attr
from .report import html_report
from .scale import normalize_attr
from .text import (
    VisualizationDataRecord,
    format_classname,
    format_special_tokens,
    format_tooltip,
    format_word_importances,
    visualize_text,
)
from .timeseries import TimeseriesVisualizationMethod, visualize_timeseries_attr

__all__ = [
    "ImageVisualizationMethod",
    "TimeseriesVisualizationMethod",
    "VisualizationDataRecord",
    "VisualizeSign",
    "draw_mask_border",
    "draw_mask_legend",
    "explore",
    "format_classname",
    "format_special_tokens",
    "format_tooltip",
    "format_word_importances",
    "html_report",
    "normalize_attr",
    "overlay_png",
    "plot_image_attr",
    "plot_layer_token_attr",
    "plot_seq_attr",
    "plot_token_attr",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_text",
    "visualize_timeseries_attr",
    "write_explorer",
]
