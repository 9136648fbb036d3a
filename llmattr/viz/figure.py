"""Figures for the Captum-style views: creating them with or without pyplot, showing them, and
the default colour map and range of each sign choice."""

from __future__ import annotations

from typing import Any

from .scale import check_sign

__all__ = ["new_figure", "show_figure", "sign_colormap"]

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def new_figure(fig_size: tuple[float, float], use_pyplot: bool, **subplots: Any) -> tuple[Any, Any]:
    """``(fig, axes)``: through pyplot (so notebooks show it) or as a bare ``Figure`` that no
    global state keeps alive."""
    if use_pyplot:
        import matplotlib.pyplot as plt

        return plt.subplots(figsize=fig_size, **subplots)
    from matplotlib.figure import Figure

    fig = Figure(figsize=fig_size)
    return fig, fig.subplots(**subplots)


def show_figure() -> None:
    """``plt.show()``, skipped on non-interactive backends such as Agg (where it would only
    warn)."""
    import matplotlib

    if matplotlib.get_backend().lower() in _NON_INTERACTIVE:
        return
    import matplotlib.pyplot as plt

    plt.show()


def sign_colormap(sign: str, cmap: Any = None) -> tuple[Any, float, float]:
    """``(cmap, vmin, vmax)`` for normalized attributions of ``sign``; Captum's defaults:
    red–white–green over ``[-1, 1]`` for ``"all"``, and over ``[0, 1]`` greens for
    ``"positive"``, reds for ``"negative"``, blues for ``"absolute_value"``."""
    from matplotlib.colors import LinearSegmentedColormap

    check_sign(sign)
    if sign == "all":
        default: Any = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
        low = -1.0
    else:
        default = {"positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}[sign]
        low = 0.0
    return (default if cmap is None else cmap), low, 1.0
