"""Matplotlib views of token attributions: target × prompt heatmaps, per-feature bars, and
layer × token maps. Each returns ``(fig, ax)``, draws on ``ax`` when one is given, and works
under any backend (Agg included); pyplot is imported only when a function runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .figure import show_figure
from .scale import as_array, symmetric_limit
from .tokens import display_tokens

__all__ = ["plot_layer_token_attr", "plot_seq_attr", "plot_token_attr"]

#: Beyond this many tokens an axis labels every k-th one so the labels stay legible.
_MAX_LABELS = 100
#: Heatmaps with at most this many cells print each value in its cell.
_MAX_ANNOTATED = 400
_POSITIVE, _NEGATIVE = "#b2182b", "#2166ac"


def _axes(ax: Any, width: float, height: float) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    return plt.subplots(
        figsize=(max(4.0, min(width, 24.0)), max(2.5, min(height, 16.0))), layout="tight"
    )


def _label_axis(set_ticks: Any, labels: Sequence[str], **kwargs: Any) -> None:
    """Tick labels as readable text (``Ġred`` → ``red``, see :mod:`.tokens`), thinned to at
    most ``_MAX_LABELS``."""
    labels = display_tokens(labels)
    every = max(1, math.ceil(len(labels) / _MAX_LABELS))
    where = list(range(0, len(labels), every))
    set_ticks(where, [str(labels[i]) for i in where], **kwargs)


def _heatmap(ax: Any, data: np.ndarray, cmap: str, label: str) -> Any:
    limit = symmetric_limit(data)
    image = ax.imshow(
        data, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    ax.figure.colorbar(image, ax=ax, label=label)
    if data.size <= _MAX_ANNOTATED:
        for (i, j), v in np.ndenumerate(data):
            strong = math.isfinite(v) and abs(v) > 0.6 * limit
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if strong else "black",
            )
    return image


def plot_token_attr(
    token_attr: Any,
    input_tokens: Sequence[str],
    output_tokens: Sequence[str],
    ax: Any = None,
    cmap: str = "RdBu_r",
    show: bool = False,
) -> tuple[Any, Any]:
    """Heatmap of attributions of each target token (rows) to each prompt feature (columns).

    Args:
        token_attr: ``(n_output_tokens, n_input_tokens)`` tensor or array.
        input_tokens, output_tokens: the column and row labels.
        ax: draw on these axes (default: a new figure).
        cmap: a diverging colour map; the scale is symmetric, so 0 is its middle colour.
        show: call ``plt.show()`` (skipped on non-interactive backends).

    Returns:
        ``(fig, ax)``. Cells are annotated with their values when there are at most 400.
    """
    data = as_array(token_attr)
    if data.shape != (len(output_tokens), len(input_tokens)):
        raise ValueError(
            f"token_attr has shape {data.shape}; expected "
            f"({len(output_tokens)}, {len(input_tokens)})."
        )
    fig, ax = _axes(ax, 0.5 * len(input_tokens) + 2, 0.4 * len(output_tokens) + 1.5)
    _heatmap(ax, data, cmap, "attribution")
    _label_axis(ax.set_xticks, input_tokens, rotation=60, ha="right")
    _label_axis(ax.set_yticks, output_tokens)
    ax.set_xlabel("prompt features")
    ax.set_ylabel("target tokens")
    if show:
        show_figure()
    return fig, ax


def plot_seq_attr(
    seq_attr: Any, input_tokens: Sequence[str], ax: Any = None, show: bool = False
) -> tuple[Any, Any]:
    """Bar chart of one attribution per prompt feature: red bars raise the target, blue lower it.

    Args:
        seq_attr: ``(n_input_tokens,)`` tensor or array.
        input_tokens: the bars' labels.
        ax: draw on these axes (default: a new figure).
        show: call ``plt.show()`` (skipped on non-interactive backends).

    Returns:
        ``(fig, ax)``; bar ``i`` is centred at ``x = i`` with height ``seq_attr[i]``.
    """
    values = as_array(seq_attr).reshape(-1)
    if len(values) != len(input_tokens):
        raise ValueError(f"{len(values)} attributions for {len(input_tokens)} tokens.")
    fig, ax = _axes(ax, 0.5 * len(values) + 2, 3)
    ax.bar(range(len(values)), values, color=[_POSITIVE if v > 0 else _NEGATIVE for v in values])
    _label_axis(ax.set_xticks, input_tokens, rotation=60, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("attribution")
    if show:
        show_figure()
    return fig, ax


def _layer_rows(attr: Any) -> np.ndarray:
    if isinstance(attr, (list, tuple)):
        rows: list[np.ndarray] = []
        for i, layer in enumerate(attr):
            row = as_array(layer)
            if row.ndim > 1 and row.shape[0] == 1:  # a batch of one
                row = row[0]
            if row.ndim > 1:  # (tokens, hidden, ...): one score per token
                row = row.reshape(row.shape[0], -1).sum(axis=1)
            if row.ndim != 1 or (rows and len(row) != len(rows[0])):
                raise ValueError(
                    f"Layer {i}'s attribution gives shape {row.shape}; every layer "
                    "needs one value per token."
                )
            rows.append(row)
        return np.stack(rows) if rows else np.zeros((0, 0))
    data = as_array(attr)
    if data.ndim > 2:  # (layers, [1,] tokens, hidden, ...): the per-layer maps stacked
        return _layer_rows(list(data))
    if data.ndim != 2:
        raise ValueError(
            f"attr must be (layers, tokens), a stack of per-layer attributions or a list of "
            f"them; got shape {data.shape}."
        )
    return data


def plot_layer_token_attr(
    attr: Any,
    tokens: Sequence[str],
    layer_names: Sequence[str] | None = None,
    ax: Any = None,
    cmap: str = "RdBu_r",
    show: bool = False,
) -> tuple[Any, Any]:
    """Heatmap of attributions per layer (rows) and token (columns).

    Args:
        attr: a ``(n_layers, n_tokens)`` tensor or array, or a list with one attribution per
            layer (e.g. what ``LayerIntegratedGradients`` returns for a list of layers with
            ``layers_jointly=False``, each layer's row then complete on its own), or
            those stacked along a first layer dimension (``(n_layers, 1, n_tokens, hidden)``):
            each layer's attribution is reduced to one value per token by dropping a leading
            batch dimension of size 1 and summing the dimensions after the token dimension.
        tokens: the column labels.
        layer_names: the row labels (default: ``"layer 0"``, ``"layer 1"``, ...).
        ax: draw on these axes (default: a new figure).
        cmap: a diverging colour map; the scale is symmetric around 0.
        show: call ``plt.show()`` (skipped on non-interactive backends).

    Returns:
        ``(fig, ax)``; the image's array is the ``(n_layers, n_tokens)`` map.
    """
    data = _layer_rows(attr)
    names = [f"layer {i}" for i in range(len(data))] if layer_names is None else list(layer_names)
    if data.shape != (len(names), len(tokens)):
        raise ValueError(
            f"The map has shape {data.shape}; expected ({len(names)} layers, {len(tokens)} tokens)."
        )
    fig, ax = _axes(ax, 0.5 * len(tokens) + 2.5, 0.35 * len(names) + 1.5)
    _heatmap(ax, data, cmap, "attribution")
    _label_axis(ax.set_xticks, tokens, rotation=60, ha="right")
    _label_axis(ax.set_yticks, [str(n) for n in names])
    ax.set_xlabel("tokens")
    ax.set_ylabel("layers")
    if show:
        show_figure()
    return fig, ax
