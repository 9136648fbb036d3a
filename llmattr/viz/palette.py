"""The diverging colour scale of the HTML views: red raises the target, blue lowers it.

Values are quantized to ``2 * LEVELS + 1`` steps so that a report styles each cell with a short
class name (``q0`` … ``q20``) instead of a colour per cell, which keeps 1,000-token reports small.
The end colours are those of matplotlib's ``RdBu_r``, the colour map of the token plots.
"""

from __future__ import annotations

import math

__all__ = ["LEVELS", "colour", "css_rules", "level"]

LEVELS = 10
_POSITIVE = (178, 24, 43)  # #b2182b
_NEGATIVE = (33, 102, 172)  # #2166ac
_DARK_FROM = 6  # levels this far from neutral get white text


def level(value: float, limit: float) -> int:
    """The step of ``value`` on a scale whose ends are ``-limit`` and ``+limit``: an int in
    ``[-LEVELS, LEVELS]``; ``+inf`` and ``-inf`` take the strongest step of their sign, NaN is
    neutral (0)."""
    if math.isinf(value):
        return LEVELS if value > 0 else -LEVELS
    if math.isnan(value) or limit <= 0:
        return 0
    return max(-LEVELS, min(LEVELS, round(value / limit * LEVELS)))


def colour(step: int) -> str:
    """The ``#rrggbb`` background of a step (white at 0)."""
    end = _POSITIVE if step > 0 else _NEGATIVE
    t = abs(step) / LEVELS
    return "#" + "".join(f"{round(255 + (c - 255) * t):02x}" for c in end)


def text_colour(step: int) -> str:
    return "#fff" if abs(step) >= _DARK_FROM else "#111"


def css_rules(prefix: str = "") -> str:
    """One rule per step: ``{prefix}.q{step + LEVELS}{background; color}``."""
    return "".join(
        f"{prefix}.q{s + LEVELS}{{background:{colour(s)};color:{text_colour(s)}}}"
        for s in range(-LEVELS, LEVELS + 1)
    )
