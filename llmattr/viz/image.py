"""Captum-compatible image views: ``visualize_image_attr`` and ``visualize_image_attr_multiple``.

Arrays are ``(H, W, C)`` like Captum's (tensors are accepted too; a ``(C, H, W)`` tensor needs
``.permute(1, 2, 0)`` first). Attributions are summed over channels and scaled with
:func:`~llmattr.viz.scale.normalize_attr`. Beyond Captum: grayscale ``(H, W)`` inputs work with
every method, all-zero attributions give a blank map instead of an error, and bad choices raise
``ValueError`` naming the valid ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

from .figure import new_figure, show_figure, sign_colormap
from .scale import VisualizeSign, as_array, check_sign, normalize_attr

__all__ = [
    "IMAGE_METHODS",
    "ImageVisualizationMethod",
    "VisualizeSign",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
]


class ImageVisualizationMethod(Enum):
    """The ``method`` choices of :func:`visualize_image_attr` (Captum's names and values); the
    functions take the member's name."""

    heat_map = 1
    blended_heat_map = 2
    original_image = 3
    masked_image = 4
    alpha_scaling = 5


IMAGE_METHODS = tuple(m.name for m in ImageVisualizationMethod)


def _pixels(image: Any) -> np.ndarray:
    """An image as ``uint8``: values in ``[0, 1]`` are scaled by 255 first; fractions are
    truncated like Captum's."""
    data = as_array(image)
    if data.size and data.max() <= 1.0:
        data = data * 255
    return _uint8(data)


def _uint8(data: np.ndarray) -> np.ndarray:
    return np.clip(data.astype(np.int64), 0, 255).astype(np.uint8)


def _hwc(attr: Any) -> np.ndarray:
    data = as_array(attr)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ValueError(
            f"Image attributions must be (H, W, C) or (H, W); got shape {data.shape}. "
            "For a (C, H, W) tensor pass attr.permute(1, 2, 0)."
        )
    return data


def _check_method(method: str) -> None:
    if method not in IMAGE_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, IMAGE_METHODS))}; got {method!r}."
        )


def visualize_image_attr(
    attr: Any,
    original_image: Any = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    plt_fig_axis: tuple[Any, Any] | None = None,
    outlier_perc: float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[float, float] = (6, 6),
    use_pyplot: bool = True,
) -> tuple[Any, Any]:
    """Draw an image's attributions, alone or over the image.

    Args:
        attr: ``(H, W, C)`` (or ``(H, W)``) attributions, summed over channels for display.
        original_image: ``(H, W, C)`` or ``(H, W)`` image; values in ``[0, 1]`` are scaled to
            ``[0, 255]``. Needed by every method except ``"heat_map"``.
        method: ``"heat_map"``; ``"blended_heat_map"`` (the heat map with ``alpha_overlay``
            over the grayscale image); ``"original_image"``; ``"masked_image"`` (the image
            times the normalized attributions, so pixels without attribution of the chosen sign
            turn black); ``"alpha_scaling"`` (the image with the normalized attributions as its
            alpha channel).
        sign: ``"all"``, ``"positive"``, ``"negative"`` or ``"absolute_value"`` (see
            :func:`~llmattr.viz.scale.normalize_attr`). ``masked_image`` and ``alpha_scaling``
            need one sign, not ``"all"``.
        plt_fig_axis: ``(fig, ax)`` to draw on (default: a new figure).
        outlier_perc: percent of the total attribution, held by the largest values, that
            saturates the colour scale.
        cmap: colour map of the heat map (default: by sign, as Captum).
        alpha_overlay: opacity of the heat map in ``"blended_heat_map"``.
        show_colorbar: add a horizontal colour bar below the axes (an empty slot for methods
            without a heat map, so panels side by side stay aligned).
        title: the axes' title.
        fig_size: size of a new figure, in inches.
        use_pyplot: create the figure through pyplot and call ``plt.show()`` (skipped on
            non-interactive backends); False returns a bare ``Figure``.

    Returns:
        ``(fig, ax)``.
    """
    _check_method(method)
    check_sign(sign)
    attr = _hwc(attr)
    image: Any = None  # checked below: only "heat_map" may go without it
    if original_image is not None:
        image = _pixels(original_image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.shape[:2] != attr.shape[:2]:
            raise ValueError(
                f"The image is {image.shape[:2]} pixels but the attributions are "
                f"{attr.shape[:2]}; both must be (H, W, ...)."
            )
    elif method != "heat_map":
        raise ValueError(f"method={method!r} needs original_image.")
    if sign == "all" and method in ("masked_image", "alpha_scaling"):
        raise ValueError(
            f"method={method!r} shows one sign; choose sign='positive', "
            "'negative' or 'absolute_value'."
        )

    fig, ax = plt_fig_axis if plt_fig_axis is not None else new_figure(fig_size, use_pyplot)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)

    heat = None
    if method == "original_image":
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    else:
        norm = normalize_attr(attr, sign, outlier_perc, reduction_axis=2)
        colours, vmin, vmax = sign_colormap(sign, cmap)
        if method == "heat_map":
            heat = ax.imshow(norm, cmap=colours, vmin=vmin, vmax=vmax)
        elif method == "blended_heat_map":
            gray = image if image.ndim == 2 else image.mean(axis=2)
            ax.imshow(gray, cmap="gray")
            heat = ax.imshow(norm, cmap=colours, vmin=vmin, vmax=vmax, alpha=alpha_overlay)
        elif method == "masked_image":
            weights = norm if image.ndim == 2 else norm[:, :, None]
            ax.imshow(
                _uint8(image * weights), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255
            )
        else:  # alpha_scaling
            rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3]
            alpha = _uint8(norm * 255)
            ax.imshow(np.concatenate([rgb, alpha[:, :, None]], axis=2))

    if show_colorbar:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        bar_ax = make_axes_locatable(ax).append_axes("bottom", size="5%", pad=0.1)
        if heat is not None:
            fig.colorbar(heat, orientation="horizontal", cax=bar_ax)
        else:
            bar_ax.axis("off")
    if title:
        ax.set_title(title)
    if use_pyplot:
        show_figure()
    return fig, ax


def visualize_image_attr_multiple(
    attr: Any,
    original_image: Any,
    methods: Sequence[str],
    signs: Sequence[str],
    titles: Sequence[str] | None = None,
    fig_size: tuple[float, float] = (8, 6),
    use_pyplot: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Several :func:`visualize_image_attr` views side by side, one per ``(method, sign)``.

    Args:
        attr, original_image: as in :func:`visualize_image_attr`.
        methods, signs: equally long lists; panel ``i`` shows ``methods[i]`` with ``signs[i]``.
        titles: one title per panel, or None.
        fig_size: the figure's size in inches.
        use_pyplot: as in :func:`visualize_image_attr`.
        **kwargs: passed to every :func:`visualize_image_attr` call (``outlier_perc``,
            ``cmap``, ``alpha_overlay``, ``show_colorbar``).

    Returns:
        ``(fig, axes)`` as Captum's: ``axes`` is a single ``Axes`` for one method and a list of
        them for several.
    """
    if len(methods) != len(signs):
        raise ValueError(f"Got {len(methods)} methods but {len(signs)} signs.")
    if titles is not None and len(titles) != len(methods):
        raise ValueError(f"Got {len(titles)} titles for {len(methods)} methods.")
    for method, sign in zip(methods, signs):  # fail before drawing anything
        _check_method(method)
        check_sign(sign)
    fig, grid = new_figure(fig_size, use_pyplot, ncols=len(methods), squeeze=False)
    axes: list[Any] = grid.reshape(-1).tolist()
    for i, (method, sign) in enumerate(zip(methods, signs)):
        visualize_image_attr(
            attr,
            original_image=original_image,
            method=method,
            sign=sign,
            plt_fig_axis=(fig, axes[i]),
            use_pyplot=False,
            title=titles[i] if titles else None,
            **kwargs,
        )
    fig.tight_layout()
    if use_pyplot:
        show_figure()
    return fig, (axes[0] if len(axes) == 1 else axes)
