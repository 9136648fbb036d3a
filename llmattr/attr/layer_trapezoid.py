"""The trapezoid panels of :class:`~llmattr.LayerConductance`, evaluated chunk by chunk.

Rows are point-major: row ``r`` is path point ``r // batch`` of example ``r % batch``; the panel
between points ``s - 1`` and ``s`` is credited at the rows of point ``s``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["trapezoid_panels"]


def _panel(out: Tensor, g: Tensor, g_prev: Tensor, a: Tensor, a_prev: Tensor) -> None:
    """``out = (g + g_prev) (a - a_prev)``: twice the trapezoid rule on one panel of the path
    (the caller halves the sum, which is exact)."""
    if len(out):
        torch.add(g, g_prev, out=out).mul_(a - a_prev)


def trapezoid_panels(
    start: int, end: int, batch: int, g: Tensor, a: Tensor, prev_g: Tensor, prev_a: Tensor
) -> Tensor:
    """Twice the trapezoid panels ending at rows ``start:end`` (point-major rows: row ``r`` is
    point ``r // batch``); ``prev_*`` are the rows just before ``start`` (up to ``batch``)."""
    first = start - len(prev_g)  # the row prev_g[0] stands for
    part = torch.empty_like(g)
    lo = max(start, min(batch, end))  # rows of point 0 (below `batch`) end no panel
    mid = min(end, start + batch)  # rows from here on find row r - batch in this chunk
    part[: lo - start].zero_()
    _panel(
        part[lo - start : mid - start], g[lo - start : mid - start],
        prev_g[lo - batch - first : mid - batch - first], a[lo - start : mid - start],
        prev_a[lo - batch - first : mid - batch - first],
    )  # fmt: skip
    _panel(
        part[mid - start :], g[mid - start :], g[mid - batch - start : end - batch - start],
        a[mid - start :], a[mid - batch - start : end - batch - start],
    )  # fmt: skip
    return part
