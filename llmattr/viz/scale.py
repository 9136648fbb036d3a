"""Numbers behind every view: arrays from tensors, sign selection and outlier-robust scaling.

The image and time-series views follow Captum's normalization: keep the attributions of the
chosen sign, find the smallest value among the largest ones that together hold ``outlier_perc``
percent of the total, divide by it and clip to ``[-1, 1]``. Token views scale symmetrically by
the largest finite magnitude, so that 0 always sits in the middle of the colour scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import Enum
from typing import Any

import numpy as np

__all__ = [
    "SIGNS",
    "VisualizeSign",
    "as_array",
    "normalize_attr",
    "outlier_threshold",
    "symmetric_limit",
]


class VisualizeSign(Enum):
    """The ``sign`` choices of the image and time-series views (Captum's names and values); the
    functions take the member's name."""

    positive = 1
    absolute_value = 2
    negative = 3
    all = 4


#: The sign choices of the image and time-series views (the names of :class:`VisualizeSign`).
SIGNS = tuple(m.name for m in VisualizeSign)


def as_array(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """A numpy copy of ``x`` (a tensor on any device, with or without grad, an array or a list)."""
    if hasattr(x, "detach"):  # a torch tensor (half and bfloat16 have no direct numpy route)
        x = x.detach().cpu().double().numpy()
    return np.array(x, dtype=dtype)


def check_sign(sign: str) -> str:
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(map(repr, SIGNS))}; got {sign!r}.")
    return sign


def outlier_threshold(values: np.ndarray, percentile: float) -> float:
    """The smallest of the sorted non-negative ``values`` at which their running sum reaches
    ``percentile`` percent of the total: the scale that saturates the top outliers."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"The percentile must lie in [0, 100]; got {percentile}.")
    ordered = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if ordered.size == 0:
        return 0.0
    running = np.cumsum(ordered)
    # The same expression as Captum's, so that ties at the boundary resolve identically.
    first = int(np.searchsorted(running, running[-1] * 0.01 * percentile, side="left"))
    return float(ordered[min(first, ordered.size - 1)])


def normalize_attr(
    attr: Any,
    sign: str = "absolute_value",
    outlier_perc: float = 2,
    reduction_axis: int | None = None,
) -> np.ndarray:
    """Attributions of one sign scaled into ``[-1, 1]`` (``[0, 1]`` unless ``sign="all"``).

    Args:
        attr: an array of any shape.
        sign: ``"all"`` keeps signs; ``"positive"`` zeroes negatives; ``"negative"`` zeroes
            positives and flips the rest to positive magnitudes; ``"absolute_value"`` takes
            magnitudes.
        outlier_perc: the share (in percent) of the total held by the largest values that
            saturate at 1.
        reduction_axis: an axis summed first (the channels of an ``(H, W, C)`` image).

    Returns:
        The scaled array, shaped like ``attr`` without ``reduction_axis``. All zeros when
        nothing of the chosen sign is present (Captum raises instead).
    """
    values = as_array(attr)
    if reduction_axis is not None:
        values = values.sum(axis=reduction_axis)
    check_sign(sign)
    if sign == "positive":
        values = np.where(values > 0, values, 0.0)
    elif sign == "negative":
        values = np.where(values < 0, -values, 0.0)
    elif sign == "absolute_value":
        values = np.abs(values)
    scale = outlier_threshold(np.abs(values), 100 - outlier_perc)
    if scale == 0:
        return np.zeros_like(values)
    return np.clip(values / scale, -1.0, 1.0)


def symmetric_limit(values: Iterable[float] | np.ndarray) -> float:
    """The largest finite magnitude among ``values``, or 1.0 when there is none (all zero,
    empty or non-finite), so that dividing by it is always safe."""
    finite = [
        abs(v)
        for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist()
        if math.isfinite(v)
    ]
    return max(finite, default=0.0) or 1.0
