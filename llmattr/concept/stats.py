"""Significance of TCAV scores: a two-sample t-test, as in Captum's TCAV tutorial.

A concept's score against several random concepts is compared with the scores of random concepts
against each other; a small p-value says the concept's score is not chance. Uses scipy when it is
installed and the same Student / Welch test written here otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["ttest_ind"]


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` (continued fraction, Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(log_front + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d, f = 1.0, 1.0 - (a + b) * x / (a + 1.0), 0.0
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def ttest_ind(
    a: Sequence[float], b: Sequence[float], equal_var: bool = True
) -> tuple[float, float]:
    """Two-sided two-sample t-test: ``(t statistic, p-value)``, like ``scipy.stats.ttest_ind``.

    Args:
        a: scores of one group (e.g. a concept's TCAV scores against several random sets).
        b: scores of the other group (e.g. random concepts' scores).
        equal_var: Student's test (pooled variance); ``False`` for Welch's.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError("ttest_ind needs at least two scores per group.")
    try:
        from scipy import stats
    except ImportError:
        return _ttest(a, b, equal_var)
    res = stats.ttest_ind(a, b, equal_var=equal_var)
    return float(res.statistic), float(res.pvalue)


def _ttest(a: list[float], b: list[float], equal_var: bool) -> tuple[float, float]:
    """The t-test without scipy."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((v - ma) ** 2 for v in a) / (na - 1)
    vb = sum((v - mb) ** 2 for v in b) / (nb - 1)
    if equal_var:
        df = na + nb - 2.0
        se = math.sqrt(((na - 1) * va + (nb - 1) * vb) / df * (1.0 / na + 1.0 / nb))
    else:
        qa, qb = va / na, vb / nb
        se = math.sqrt(qa + qb)
        df = (qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1)) if qa + qb > 0 else 1.0
    if se == 0.0:
        return (math.nan, math.nan) if ma == mb else (math.copysign(math.inf, ma - mb), 0.0)
    t = (ma - mb) / se
    return t, _betainc(df / 2.0, 0.5, df / (df + t * t))
