"""Token heatmap, sequence bars and layer × token map: the data drawn is the data given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from llmattr import plot_layer_token_attr, plot_seq_attr, plot_token_attr

TOKENS = ["The", " key", " of", " box", " is"]


pytestmark = pytest.mark.usefixtures("close_figures")


def _labels(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


def test_token_heatmap_data_labels_scale_and_annotations():
    attr = torch.tensor([[0.5, -1.0, 0.0, 0.25, 2.0], [0.1, 0.2, -0.3, 0.0, 0.0]])
    fig, ax = plot_token_attr(attr, TOKENS, [" red", "."])
    (image,) = ax.get_images()
    assert np.array_equal(image.get_array(), attr.double().numpy())
    assert image.get_clim() == (-2.0, 2.0)
    assert image.get_cmap().name == "RdBu_r"
    assert _labels(ax.get_xticklabels()) == TOKENS
    assert _labels(ax.get_yticklabels()) == [" red", "."]
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in attr.reshape(-1).tolist()]
    assert len(fig.axes) == 2  # the heatmap and its colour bar


def test_token_heatmap_on_given_axes_and_many_tokens():
    fig, ax = plt.subplots()
    n = 1000
    attr = np.random.default_rng(0).normal(size=(3, n))
    tokens = [f"t{i}" for i in range(n)]
    fig2, ax2 = plot_token_attr(attr, tokens, ["a", "b", "c"], ax=ax)
    assert fig2 is fig and ax2 is ax
    labels = _labels(ax.get_xticklabels())
    assert 50 <= len(labels) <= 100 and labels[:2] == ["t0", "t10"]  # every 10th: legible
    assert list(ax.get_xticks()[:2]) == [0, 10]
    assert len(ax.texts) == 0  # too many cells to print values
    assert fig.get_size_inches()[0] <= 24


def test_token_heatmap_shape_mismatch():
    with pytest.raises(ValueError, match=r"expected \(2, 5\)"):
        plot_token_attr(np.zeros((2, 4)), TOKENS, ["a", "b"])


def test_seq_bars_heights_positions_colours():
    values = np.array([0.5, -0.25, 0.0, 1.5, -2.0])
    _fig, ax = plot_seq_attr(values, TOKENS)
    bars = ax.patches
    assert [b.get_height() for b in bars] == values.tolist()
    assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx(range(5))
    assert _labels(ax.get_xticklabels()) == TOKENS
    red, blue = bars[0].get_facecolor(), bars[1].get_facecolor()
    assert red != blue
    assert bars[3].get_facecolor() == red and bars[4].get_facecolor() == blue
    with pytest.raises(ValueError, match="4 attributions for 5 tokens"):
        plot_seq_attr(values[:4], TOKENS)


def test_layer_token_map_from_a_matrix():
    attr = np.arange(15, dtype=float).reshape(3, 5) - 7
    _fig, ax = plot_layer_token_attr(attr, TOKENS, layer_names=["emb", "block 0", "block 1"])
    (image,) = ax.get_images()
    assert np.array_equal(image.get_array(), attr)
    assert image.get_clim() == (-7.0, 7.0)
    assert _labels(ax.get_xticklabels()) == TOKENS
    assert _labels(ax.get_yticklabels()) == ["emb", "block 0", "block 1"]
    assert ax.get_ylabel() == "layers" and ax.get_xlabel() == "tokens"


def test_layer_token_map_from_per_layer_attributions():
    # What LayerIntegratedGradients returns for a list of layers: (1, tokens, hidden) each.
    layers = [torch.randn(1, 5, 4) for _ in range(3)]
    _fig, ax = plot_layer_token_attr(layers, TOKENS)
    (image,) = ax.get_images()
    expected = torch.stack([layer[0].sum(-1) for layer in layers]).double().numpy()
    assert np.allclose(image.get_array(), expected)
    assert _labels(ax.get_yticklabels()) == ["layer 0", "layer 1", "layer 2"]
    # the same maps stacked into one (layers, 1, tokens, hidden) tensor
    _fig, ax = plot_layer_token_attr(torch.stack(layers), TOKENS)
    assert np.allclose(ax.get_images()[0].get_array(), expected)


def test_layer_token_map_errors():
    with pytest.raises(ValueError, match="one value per token"):
        plot_layer_token_attr([np.zeros(5), np.zeros(4)], TOKENS)
    with pytest.raises(ValueError, match=r"expected \(2 layers, 5 tokens\)"):
        plot_layer_token_attr(np.zeros((3, 5)), TOKENS, layer_names=["a", "b"])
    with pytest.raises(ValueError, match="layers, tokens"):
        plot_layer_token_attr(np.zeros(5), TOKENS)


def test_show_is_safe_on_agg():
    _fig, ax = plot_seq_attr(np.ones(5), TOKENS, show=True)  # no warning, no error
    assert len(ax.patches) == 5
