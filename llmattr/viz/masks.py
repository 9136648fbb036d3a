"""Outlines and labels of mask regions over an image (Captum's ``draw_mask_border`` and
``draw_mask_legend``), e.g. to show the segments a feature mask groups pixels into.

The border is the mask minus its erosion, as Captum computes it with scipy; here the erosion is
a few numpy shifts (the cross-shaped neighbourhood scipy uses by default, pixels outside the
image counting as outside the mask), so scipy is not needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["draw_mask_border", "draw_mask_legend"]


def _erode(mask: np.ndarray) -> np.ndarray:
    """One erosion step: a pixel stays when it and its four neighbours are in the mask."""
    padded = np.pad(mask, 1, constant_values=False)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _check(mask: Any) -> np.ndarray:
    data = np.asarray(mask)
    if data.ndim != 2:
        raise ValueError(f"mask must be a 2-D (height, width) array; got shape {data.shape}.")
    return data.astype(bool)


def draw_mask_border(
    ax: Any,
    mask: Any,
    border_width: int = 1,
    border_color: Any = "black",
) -> None:
    """Draw the inner border of a mask region on ``ax`` (nothing for an empty mask).

    Args:
        ax: the matplotlib axes (usually showing the image the mask belongs to).
        mask: ``(height, width)`` booleans, True inside the region.
        border_width: the border's width in pixels (erosion steps); below 1, the region is
            eroded until nothing changes, so the whole region is the border.
        border_color: a matplotlib colour name or an RGBA array of 4 values in ``[0, 1]``.
    """
    from matplotlib import colors

    region = _check(mask)
    if not region.any():
        return
    rgba = np.asarray(colors.to_rgba(border_color) if isinstance(border_color, str)
                      else border_color, dtype=np.float64)  # fmt: skip
    eroded = region
    steps = 0
    while border_width < 1 or steps < border_width:
        shrunk = _erode(eroded)
        steps += 1
        if border_width < 1 and np.array_equal(shrunk, eroded):
            break
        eroded = shrunk
    border = region & ~eroded
    ax.imshow(border[:, :, None] * rgba.reshape(1, 1, -1))


def draw_mask_legend(
    ax: Any,
    mask: Any,
    label: str,
    fontsize: int = 10,
    text_color: str = "white",
    bbox_facecolor: str = "black",
    bbox_alpha: float = 0.6,
) -> None:
    """Write ``label`` at the centre of mass of a mask region (nothing for an empty mask).

    Args:
        ax: the matplotlib axes.
        mask: ``(height, width)`` booleans, True inside the region.
        label: the text.
        fontsize: its size in points.
        text_color: its colour.
        bbox_facecolor: the colour of the rounded box behind it.
        bbox_alpha: the box's opacity.
    """
    region = _check(mask)
    if not region.any():
        return
    rows, cols = np.nonzero(region)
    ax.text(
        cols.mean(),
        rows.mean(),
        label,
        color=text_color,
        fontsize=fontsize,
        ha="center",
        va="center",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": bbox_facecolor, "alpha": bbox_alpha},
    )
