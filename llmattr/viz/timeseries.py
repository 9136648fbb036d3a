"""Captum-compatible time-series view: ``visualize_timeseries_attr``.

The attribution behind a curve is drawn as one colour strip (a ``QuadMesh`` whose cells span
the midpoints between samples) rather than one patch per time step, so long series stay fast
and the drawn values can be read back from the figure.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from enum import Enum
from typing import Any, cast

import numpy as np

from .figure import new_figure, show_figure, sign_colormap
from .scale import as_array, check_sign, normalize_attr

__all__ = ["TIMESERIES_METHODS", "TimeseriesVisualizationMethod", "visualize_timeseries_attr"]


class TimeseriesVisualizationMethod(Enum):
    """The ``method`` choices of :func:`visualize_timeseries_attr` (Captum's names and values);
    the function takes the member's name."""

    overlay_individual = 1
    overlay_combined = 2
    colored_graph = 3


TIMESERIES_METHODS = tuple(m.name for m in TimeseriesVisualizationMethod)
# "individual_channels", the default of some older Captum releases, is accepted as another name
# for "overlay_individual" (Captum 0.9's default).
_ALIASES = {"individual_channels": "overlay_individual"}


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell boundaries around each sample: midpoints inside, half a step beyond the ends."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def _strip(
    ax: Any, x: np.ndarray, values: np.ndarray, cmap: Any, vmin: float, vmax: float, alpha: float
) -> Any:
    """Colour the full height of ``ax`` behind the data by ``values`` (one cell per sample)."""
    ax.autoscale_view()
    low, high = ax.get_ylim()
    mesh = ax.pcolormesh(
        _edges(x),
        [low, high],
        values[None, :],
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        alpha=alpha,
        zorder=0,
        shading="flat",
    )
    ax.set_ylim(low, high)
    return mesh


def visualize_timeseries_attr(
    attr: Any,
    data: Any,
    x_values: Any = None,
    method: str = "overlay_individual",
    sign: str = "absolute_value",
    channel_labels: Sequence[str] | None = None,
    channels_last: bool = True,
    plt_fig_axis: tuple[Any, Any] | None = None,
    outlier_perc: float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.7,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[float, float] = (6, 6),
    use_pyplot: bool = True,
    **pyplot_kwargs: Any,
) -> tuple[Any, Any]:
    """Draw a multichannel time series with its attributions.

    Args:
        attr: ``(N, C)`` attributions (``(C, N)`` with ``channels_last=False``).
        data: the series, shaped like ``attr``.
        x_values: ``(N,)`` positions of the samples (default ``0 … N-1``).
        method: ``"overlay_individual"`` (alias ``"individual_channels"``): one panel per
            channel with its attributions as a colour strip behind the curve;
            ``"overlay_combined"``: all channels in one panel over the channels' summed
            attributions; ``"colored_graph"``: one panel per channel, the curve itself
            coloured by attribution (each segment by the mean of its two ends).
        sign: ``"all"``, ``"positive"``, ``"negative"`` or ``"absolute_value"``.
        channel_labels: a name per channel (y labels, or the legend of ``overlay_combined``).
        channels_last: whether the channels are the last dimension.
        plt_fig_axis: ``(fig, axes)`` to draw on, with one axes per panel.
        outlier_perc: percent of the total attribution that saturates the colour scale.
        cmap: colour map (default: by sign, as Captum).
        alpha_overlay: opacity of the colour strips.
        show_colorbar: add a horizontal colour bar below the last panel.
        title: title of the first panel.
        fig_size: size of a new figure, in inches.
        use_pyplot: create the figure through pyplot and call ``plt.show()`` (skipped on
            non-interactive backends).
        **pyplot_kwargs: passed to the curves (``linewidth=2``, ``color="k"``, ...).

    Returns:
        ``(fig, axes)`` as Captum's: the ``plt_fig_axis`` axes when given; otherwise a single
        ``Axes`` for one panel (``overlay_combined``, or one channel) and a numpy array of the
        panels for several.
    """
    kind = _ALIASES.get(method, method)
    if kind not in TIMESERIES_METHODS:
        names = (*TIMESERIES_METHODS, *_ALIASES)
        raise ValueError(f"method must be one of {', '.join(map(repr, names))}; got {method!r}.")
    check_sign(sign)
    attr, data = as_array(attr), as_array(data)
    if attr.ndim != 2 or data.shape != attr.shape:
        raise ValueError(
            f"attr and data must both be (N, C) (or (C, N) with channels_last="
            f"False); got {attr.shape} and {data.shape}."
        )
    if channels_last:
        attr, data = attr.T, data.T
    channels, length = attr.shape
    if channels > length:
        warnings.warn(
            f"{channels} channels but only {length} time steps: is channels_last right?",
            stacklevel=2,
        )
    x = np.arange(length, dtype=np.float64) if x_values is None else as_array(x_values)
    if x.shape != (length,):
        raise ValueError(f"x_values has shape {x.shape}; expected ({length},).")
    if channel_labels is not None and len(channel_labels) != channels:
        raise ValueError(f"Got {len(channel_labels)} channel labels for {channels} channels.")

    panels = 1 if kind == "overlay_combined" else channels
    if plt_fig_axis is not None:
        fig, given = plt_fig_axis
    else:
        fig, given = new_figure(fig_size, use_pyplot, nrows=panels, sharex=True)
    axes = np.asarray(given, dtype=object).reshape(-1)
    if len(axes) != panels:
        raise ValueError(f"method={method!r} draws {panels} panels; got {len(axes)} axes.")
    if kind == "overlay_combined":
        attr = attr.sum(axis=0)
    norm = normalize_attr(attr, sign, outlier_perc)
    colours, vmin, vmax = sign_colormap(sign, cmap)

    if kind == "overlay_combined":
        from matplotlib import colormaps

        axes[0].set_prop_cycle(
            color=cast(Any, colormaps["Dark2"]).colors
        )  # dark lines over the strip
        for c in range(channels):
            label = channel_labels[c] if channel_labels is not None else None
            axes[0].plot(x, data[c], label=label, **pyplot_kwargs)
        _strip(axes[0], x, norm, colours, vmin, vmax, alpha_overlay)
        if channel_labels is not None:
            axes[0].legend(loc="best")
    else:
        from matplotlib.collections import LineCollection

        for c, ax in enumerate(axes):
            if kind == "overlay_individual":
                ax.plot(x, data[c], **pyplot_kwargs)
                _strip(ax, x, norm[c], colours, vmin, vmax, alpha_overlay)
            else:  # colored_graph
                points = np.stack([x, data[c]], axis=1)
                segments = list(np.stack([points[:-1], points[1:]], axis=1))
                line = LineCollection(segments, cmap=colours, **pyplot_kwargs)
                line.set_array((norm[c][:-1] + norm[c][1:]) / 2)
                line.set_clim(vmin, vmax)
                ax.add_collection(line)
                ax.autoscale_view()
            if channel_labels is not None:
                ax.set_ylabel(channel_labels[c])
        if panels > 1:
            fig.subplots_adjust(hspace=0)
    if length > 1:
        for ax in axes:
            ax.set_xlim(x[0], x[-1])

    if show_colorbar:
        from matplotlib import colors
        from matplotlib.cm import ScalarMappable
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        bar_ax = make_axes_locatable(axes[-1]).append_axes("bottom", size="5%", pad=0.4)
        mappable = ScalarMappable(colors.Normalize(vmin, vmax), colours)
        fig.colorbar(
            mappable,
            orientation="horizontal",
            cax=bar_ax,
            alpha=1.0 if kind == "colored_graph" else alpha_overlay,
        )
    if title:
        axes[0].set_title(title)
    if use_pyplot:
        show_figure()
    return fig, given
