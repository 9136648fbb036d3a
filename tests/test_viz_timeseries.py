"""visualize_timeseries_attr: curves are the data, strips and colours are the normalized attr."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, QuadMesh

from llmattr import normalize_attr, visualize_timeseries_attr

N, C = 6, 2
DATA = np.stack([np.sin(np.arange(N)), np.arange(N) / 2.0], axis=1)  # (N, C)
ATTR = np.array([[1.0, -2.0], [0.0, 4.0], [-3.0, 1.0], [2.0, 0.0], [0.5, -1.0], [8.0, 2.0]])


pytestmark = pytest.mark.usefixtures("close_figures")


def _mesh(ax) -> np.ndarray:
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return np.asarray(mesh.get_array()).reshape(-1)


def _draw(**kwargs):
    return visualize_timeseries_attr(ATTR, DATA, use_pyplot=False, **kwargs)


@pytest.mark.parametrize("method", ["overlay_individual", "individual_channels"])
def test_overlay_individual_one_panel_per_channel(method):
    _fig, axes = _draw(method=method, sign="all", channel_labels=["sin", "ramp"])
    assert isinstance(axes, np.ndarray) and len(axes) == C
    norm = normalize_attr(ATTR.T, "all", 2)  # normalized over all channels together
    for c, ax in enumerate(axes):
        (line,) = ax.get_lines()
        assert np.array_equal(line.get_xdata(), np.arange(N))
        assert np.array_equal(line.get_ydata(), DATA[:, c])
        assert np.allclose(_mesh(ax), norm[c])
        assert ax.get_ylabel() == ["sin", "ramp"][c]
        assert ax.get_xlim() == (0, N - 1)
    (mesh,) = [m for m in axes[0].collections if isinstance(m, QuadMesh)]
    assert mesh.get_cmap().name == "RdWhGn" and mesh.get_clim() == (-1, 1)
    assert mesh.get_alpha() == 0.7


def test_strip_cells_span_the_midpoints_between_samples():
    x = np.array([0.0, 1.0, 3.0, 4.0, 8.0, 10.0])
    _fig, axes = _draw(x_values=x)
    (mesh,) = [m for m in axes[0].collections if isinstance(m, QuadMesh)]
    xs = np.unique(mesh.get_coordinates()[..., 0])
    assert np.allclose(xs, [-0.5, 0.5, 2.0, 3.5, 6.0, 9.0, 11.0])
    assert axes[0].get_xlim() == (0.0, 10.0)


def test_overlay_combined_sums_channels_into_one_strip():
    _fig, ax = _draw(
        method="overlay_combined", sign="positive", outlier_perc=0, channel_labels=["a", "b"]
    )
    assert isinstance(ax, Axes)  # one panel: a single Axes, as Captum returns
    axes = [ax]
    lines = axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [list(DATA[:, 0]), list(DATA[:, 1])]
    total = np.maximum(ATTR.sum(axis=1), 0)
    assert np.allclose(_mesh(axes[0]), total / total.max())
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["a", "b"]


def test_colored_graph_colours_each_segment():
    _fig, axes = _draw(method="colored_graph", sign="absolute_value", outlier_perc=0, linewidth=3)
    norm = np.abs(ATTR.T) / 8
    for c, ax in enumerate(axes):
        (lines,) = [col for col in ax.collections if isinstance(col, LineCollection)]
        segments = lines.get_segments()
        assert len(segments) == N - 1
        assert np.allclose(segments[0], [[0, DATA[0, c]], [1, DATA[1, c]]])
        assert np.allclose(lines.get_array(), (norm[c][:-1] + norm[c][1:]) / 2)
        assert lines.get_cmap().name == "Blues" and lines.get_linewidth()[0] == 3
        low, high = ax.get_ylim()
        assert low <= DATA[:, c].min() and high >= DATA[:, c].max()


def test_channels_first_and_tensors():
    _fig, a = visualize_timeseries_attr(
        torch.tensor(ATTR.T), torch.tensor(DATA.T), channels_last=False, use_pyplot=False
    )
    _fig, b = _draw()
    for ax_a, ax_b in zip(a, b):
        assert np.allclose(_mesh(ax_a), _mesh(ax_b))
        assert np.array_equal(ax_a.get_lines()[0].get_ydata(), ax_b.get_lines()[0].get_ydata())


def test_colorbar_title_and_given_axes():
    fig, axes = plt.subplots(C, 1)
    out_fig, out_axes = visualize_timeseries_attr(
        ATTR, DATA, plt_fig_axis=(fig, axes), title="DeepLift", show_colorbar=True
    )
    assert out_fig is fig and list(out_axes) == list(axes)
    assert axes[0].get_title() == "DeepLift"
    assert len(fig.axes) == C + 1


def test_refusals():
    with pytest.raises(ValueError, match="method must be one of"):
        _draw(method="heat_map")
    with pytest.raises(ValueError, match="sign must be one of"):
        _draw(sign="none")
    with pytest.raises(ValueError, match=r"both be \(N, C\)"):
        visualize_timeseries_attr(ATTR, DATA[:, :1], use_pyplot=False)
    with pytest.raises(ValueError, match="x_values has shape"):
        _draw(x_values=np.arange(N + 1))
    with pytest.raises(ValueError, match="1 channel labels for 2 channels"):
        _draw(channel_labels=["a"])
    with pytest.raises(ValueError, match="draws 2 panels; got 1 axes"):
        fig, ax = plt.subplots()
        visualize_timeseries_attr(ATTR, DATA, plt_fig_axis=(fig, ax))
    with pytest.warns(UserWarning, match="channels_last"):
        visualize_timeseries_attr(ATTR.T, DATA.T, use_pyplot=False)  # (C, N) passed as (N, C)


def test_default_method_is_overlay_individual_as_captums():
    import inspect

    default = inspect.signature(visualize_timeseries_attr).parameters["method"].default
    assert default == "overlay_individual"
    _fig, axes = _draw(sign="all")
    assert isinstance(axes, np.ndarray) and len(axes) == C
    for ax in axes:
        assert (
            len(ax.get_lines()) == 1
            and len([m for m in ax.collections if isinstance(m, QuadMesh)]) == 1
        )


def test_one_channel_gives_a_single_axes():
    fig, ax = visualize_timeseries_attr(ATTR[:, :1], DATA[:, :1], use_pyplot=False)
    assert isinstance(ax, Axes) and ax.figure is fig
    assert np.array_equal(ax.get_lines()[0].get_ydata(), DATA[:, 0])
