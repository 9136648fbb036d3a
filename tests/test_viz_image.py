"""Image views: outlier-percentile normalization, sign filtering, and what each method draws."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llmattr import normalize_attr, visualize_image_attr, visualize_image_attr_multiple
from llmattr.viz.scale import outlier_threshold

# Channel sums of the attributions (H=2, W=3), split over two channels.
SUMS = np.array([[4.0, -2.0, 1.0], [0.0, 8.0, -1.0]])
ATTR = np.stack([SUMS / 4, 3 * SUMS / 4], axis=2)
IMAGE = np.linspace(0.2, 1.0, 18).reshape(2, 3, 3)  # RGB in [0, 1]
PIXELS = (IMAGE * 255).astype(np.int64).astype(np.uint8)


pytestmark = pytest.mark.usefixtures("close_figures")


def _draw(**kwargs):
    return visualize_image_attr(ATTR, IMAGE, use_pyplot=False, **kwargs)


def _arrays(ax) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for im in ax.get_images()]


# ---- normalization --------------------------------------------------------------------------


def test_outlier_threshold_is_where_the_running_sum_reaches_the_percentile():
    values = np.arange(1.0, 11.0)  # total 55; running sums 1, 3, 6, 10, 15, 21, 28, 36, 45, 55
    assert outlier_threshold(values, 80) == 9.0  # 44 is first reached at 45 (value 9)
    assert outlier_threshold(values, 100) == 10.0
    assert outlier_threshold(values[::-1], 80) == 9.0  # order does not matter
    assert outlier_threshold(np.zeros(4), 98) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        outlier_threshold(values, 101)


def test_normalize_saturates_the_top_outliers():
    values = np.arange(1.0, 11.0)
    assert np.allclose(
        normalize_attr(values, "absolute_value", outlier_perc=20), np.minimum(values / 9, 1)
    )
    assert np.allclose(normalize_attr(values, "absolute_value", outlier_perc=0), values / 10)


def test_normalize_by_sign():
    x = np.array([-1.0, 2.0, 0.0, -4.0])
    # positive: [0, 2, 0, 0] -> scale 2
    assert np.allclose(normalize_attr(x, "positive"), [0, 1, 0, 0])
    # negative: magnitudes [1, 0, 0, 4] -> scale 4, shown as positive values
    assert np.allclose(normalize_attr(x, "negative"), [0.25, 0, 0, 1])
    # absolute: [1, 2, 0, 4] -> scale 4
    assert np.allclose(normalize_attr(x, "absolute_value"), [0.25, 0.5, 0, 1])
    # all: signs kept, scaled by magnitude
    assert np.allclose(normalize_attr(x, "all"), [-0.25, 0.5, 0, -1])
    assert np.array_equal(normalize_attr(-np.abs(x), "positive"), np.zeros(4))  # nothing: blank
    with pytest.raises(ValueError, match="sign must be one of"):
        normalize_attr(x, "both")


def test_normalize_sums_the_reduction_axis_and_takes_tensors():
    out = normalize_attr(torch.tensor(ATTR), "all", outlier_perc=0, reduction_axis=2)
    assert out.shape == (2, 3) and np.allclose(out, SUMS / 8)


# ---- visualize_image_attr -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sign", "cmap", "clim", "expected"),
    [
        ("absolute_value", "Blues", (0, 1), np.abs(SUMS) / 8),
        ("positive", "Greens", (0, 1), np.maximum(SUMS, 0) / 8),
        ("negative", "Reds", (0, 1), np.maximum(-SUMS, 0) / 2),
        ("all", "RdWhGn", (-1, 1), SUMS / 8),
    ],
)
def test_heat_map_shows_normalized_attributions_of_the_sign(sign, cmap, clim, expected):
    fig, ax = visualize_image_attr(
        ATTR, method="heat_map", sign=sign, outlier_perc=0, use_pyplot=False
    )
    assert isinstance(fig, Figure) and ax.figure is fig
    (image,) = ax.get_images()
    assert np.allclose(image.get_array(), expected)
    assert image.get_cmap().name == cmap and image.get_clim() == clim
    assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0


def test_outlier_percentage_saturates_the_heat_map():
    # |sums| sorted 0, 1, 1, 2, 4, 8 (total 16): 50% is reached at 4, so 4 and 8 both show as 1.
    _fig, ax = _draw(method="heat_map", outlier_perc=50)
    assert np.allclose(_arrays(ax)[0], np.minimum(np.abs(SUMS) / 4, 1))


def test_original_image_is_scaled_to_bytes():
    _fig, ax = _draw(method="original_image")
    (image,) = _arrays(ax)
    assert image.dtype == np.uint8 and np.array_equal(image, PIXELS)
    _fig, ax = visualize_image_attr(
        ATTR, PIXELS.astype(float), method="original_image", use_pyplot=False
    )  # already 0..255: kept
    assert np.array_equal(_arrays(ax)[0], PIXELS)


def test_masked_image_keeps_attributed_pixels_and_zeroes_the_rest():
    # Positive sums sorted 0, 0, 0, 1, 4, 8 (total 13): 30% of it is first reached at 4, so
    # with 70% outliers the scale is 4 and the weights are 1, 0, .25, 0, 1, 0.
    _fig, ax = _draw(method="masked_image", sign="positive", outlier_perc=70)
    (masked,) = _arrays(ax)
    weights = np.minimum(np.maximum(SUMS, 0) / 4, 1)
    expected = (PIXELS * weights[:, :, None]).astype(np.int64)
    assert np.array_equal(masked, expected)
    assert np.array_equal(masked[weights == 0], np.zeros_like(masked[weights == 0]))
    assert np.array_equal(masked[weights == 1], PIXELS[weights == 1])  # saturated: unchanged


def test_alpha_scaling_puts_attributions_in_the_alpha_channel():
    _fig, ax = _draw(method="alpha_scaling", sign="absolute_value", outlier_perc=0)
    (rgba,) = _arrays(ax)
    assert rgba.shape == (2, 3, 4)
    assert np.array_equal(rgba[:, :, :3], PIXELS)
    assert np.array_equal(rgba[:, :, 3], (np.abs(SUMS) / 8 * 255).astype(np.int64))


def test_blended_heat_map_lays_the_map_over_the_grayscale_image():
    _fig, ax = _draw(method="blended_heat_map", sign="all", outlier_perc=0, alpha_overlay=0.3)
    gray, heat = ax.get_images()
    assert np.allclose(gray.get_array(), PIXELS.mean(axis=2)) and gray.get_cmap().name == "gray"
    assert np.allclose(heat.get_array(), SUMS / 8) and heat.get_alpha() == 0.3


def test_grayscale_images_and_custom_colormap():
    gray_image = IMAGE.mean(axis=2)
    _fig, ax = visualize_image_attr(
        SUMS, gray_image, method="masked_image", sign="absolute_value", use_pyplot=False
    )
    assert _arrays(ax)[0].shape == (2, 3)
    _fig, ax = visualize_image_attr(SUMS, gray_image, method="original_image", use_pyplot=False)
    (image,) = ax.get_images()
    assert image.get_clim() == (0, 255) and image.get_cmap().name == "gray"  # not stretched
    _fig, ax = visualize_image_attr(SUMS, None, cmap="viridis", use_pyplot=False)
    assert ax.get_images()[0].get_cmap().name == "viridis"


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="needs original_image"):
        visualize_image_attr(ATTR, None, method="blended_heat_map", use_pyplot=False)
    for method in ("masked_image", "alpha_scaling"):
        with pytest.raises(ValueError, match="shows one sign"):
            _draw(method=method, sign="all")
    with pytest.raises(ValueError, match="method must be one of"):
        _draw(method="heatmap")
    with pytest.raises(ValueError, match="sign must be one of"):
        _draw(sign="pos")
    with pytest.raises(ValueError, match=r"permute\(1, 2, 0\)"):
        visualize_image_attr(np.zeros((1, 3, 2, 3)), use_pyplot=False)
    with pytest.raises(ValueError, match="pixels but the attributions"):
        visualize_image_attr(ATTR, np.zeros((3, 2, 3)), method="masked_image", use_pyplot=False)


def test_given_axes_title_and_colorbar():
    fig, ax = plt.subplots()
    out = visualize_image_attr(ATTR, IMAGE, plt_fig_axis=(fig, ax), title="IG", show_colorbar=True)
    assert out == (fig, ax) and ax.get_title() == "IG"
    assert len(fig.axes) == 2  # the colour bar's axes
    fig2, _ax2 = _draw(method="masked_image", show_colorbar=True)
    assert len(fig2.axes) == 2 and not fig2.axes[1].axison  # an empty slot keeps alignment


def test_use_pyplot_false_leaves_pyplot_alone():
    before = plt.get_fignums()
    _draw()
    assert plt.get_fignums() == before
    fig, _ax = visualize_image_attr(ATTR, IMAGE)  # pyplot, and show() is a no-op on Agg
    assert fig.number in plt.get_fignums()


# ---- visualize_image_attr_multiple ----------------------------------------------------------


def test_multiple_draws_one_panel_per_method():
    methods = ["original_image", "heat_map", "masked_image", "alpha_scaling"]
    signs = ["all", "all", "positive", "absolute_value"]
    fig, axes = visualize_image_attr_multiple(
        ATTR, IMAGE, methods, signs, titles=["a", "b", "c", "d"], use_pyplot=False, outlier_perc=0
    )
    assert isinstance(axes, list) and len(axes) == 4  # a list, as Captum's
    assert all(isinstance(ax, Axes) and ax.figure is fig for ax in axes)
    assert [ax.get_title() for ax in axes] == ["a", "b", "c", "d"]
    assert np.array_equal(_arrays(axes[0])[0], PIXELS)
    assert np.allclose(_arrays(axes[1])[0], SUMS / 8)
    assert _arrays(axes[3])[0].shape == (2, 3, 4)


def test_multiple_with_one_method_and_mismatches():
    fig, axes = visualize_image_attr_multiple(ATTR, IMAGE, ["heat_map"], ["all"], use_pyplot=False)
    assert isinstance(axes, Axes) and axes.figure is fig  # one method: the Axes itself
    with pytest.raises(ValueError, match="2 methods but 1 signs"):
        visualize_image_attr_multiple(ATTR, IMAGE, ["heat_map", "heat_map"], ["all"])
    with pytest.raises(ValueError, match="1 titles for 2 methods"):
        visualize_image_attr_multiple(ATTR, IMAGE, ["heat_map"] * 2, ["all"] * 2, titles=["x"])
    with pytest.raises(ValueError, match="shows one sign"):
        visualize_image_attr_multiple(ATTR, IMAGE, ["masked_image"], ["all"], use_pyplot=False)
