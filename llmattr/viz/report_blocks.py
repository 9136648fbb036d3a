"""The HTML building blocks of the reports: escaping, the safe JSON data block, the colour
legend, token chips, number formatting and the target-token × feature heatmap table.

:mod:`.report` assembles them into a page; :mod:`.image_report` reuses them for the image
section, so an image result's prompt looks exactly like a text result's.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from . import palette
from .scale import as_array

__all__ = [
    "COMPACT_FROM",
    "cell_text",
    "chip",
    "escape",
    "floats",
    "heatmap_table",
    "legend",
    "plural",
    "rounded",
    "script_json",
    "total_text",
    "value_text",
]

#: From this many prompt features on, heatmap cells are small coloured squares without numbers.
COMPACT_FROM = 41


def escape(text: Any) -> str:
    """``text`` as HTML text or a double-quoted attribute value."""
    return html.escape(str(text), quote=True)


def script_json(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<`` at all (so no
    ``</script>`` or ``<!--``), and no ``>``, ``&`` or line separators either."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, code in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, code)
    return text


def legend(limit: float, note: str, kind: str) -> str:
    """A colour bar from ``-limit`` to ``+limit`` with what the ends mean."""
    bar = "".join(f'<i class="q{s}"></i>' for s in range(2 * palette.LEVELS + 1))
    extra = f'<span class="note">{escape(note)}</span>'
    return (
        f'<div class="legend {kind}"><span>{-limit:.3g} lowers the target</span>'
        f'<span class="bar" title="attribution">{bar}</span>'
        f"<span>raises the target +{limit:.3g}</span>{extra}</div>"
    )


def floats(x: Any) -> list[float]:
    """Any array-like (a tensor on any device, an array, a list) as a flat list of floats."""
    return [float(v) for v in as_array(x).reshape(-1).tolist()]


def value_text(v: float) -> str:
    """What hovering shows (the page's script formats the same way): ``+inf``, ``nan``."""
    if math.isnan(v):
        return "nan"
    return f"{v:+.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:+.3e}"


def cell_text(v: float, limit: float) -> str:
    """A heatmap cell's number, with as many digits as the scale ``limit`` needs."""
    if math.isnan(v):
        return "nan"
    return f"{v:+.2f}" if 0.01 <= limit < 1000 else f"{v:+.1e}"


def chip(name: str, value: float, limit: float) -> str:
    """One prompt feature as a ``span.tok`` coloured by ``value`` on the ``±limit`` scale, its
    value in the native tooltip."""
    step = palette.level(value, limit) + palette.LEVELS
    return (
        f'<span class="tok q{step}" title="{escape(name)}: {value_text(value)}">'
        f"{escape(name)}</span>"
    )


def rounded(values: list[float]) -> list[float | str | None]:
    """``values`` for the JSON data block: six significant digits (plenty to read, and the data
    block of a 1,000 × 100 map stays near 1 MB; result.save() keeps every bit). JSON has no NaN
    or infinity: NaN is written as null, infinities as "inf" and "-inf" (the script reads them
    back)."""
    return [_json_number(v) for v in values]


def _json_number(v: float) -> float | str | None:
    if math.isfinite(v):
        return float(f"{v:.6g}")
    return None if math.isnan(v) else ("inf" if v > 0 else "-inf")


def plural(n: int, noun: str) -> str:
    """``"1 token"``, ``"2 tokens"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def total_text(values: list[float]) -> str:
    """The sum of ``values`` as the summary line shows it: ``nan`` or ``±inf`` when some are
    not finite, saying how many."""
    total = sum(values)
    if math.isfinite(total):  # a finite sum has only finite terms
        return f"{total:+.4g}"
    bad = sum(not math.isfinite(v) for v in values)
    shown = "nan" if math.isnan(total) else f"{total:+}"
    return f"{shown} ({plural(bad, 'non-finite value')})"


def heatmap_table(
    names: list[str], targets: list[str], rows: list[list[float]], probs: list[float], limit: float
) -> str:
    """The target-token × prompt-feature table: a row per target token (with its probability),
    a column per feature, cells coloured on the ``±limit`` scale (compact from
    :data:`COMPACT_FROM` features on)."""
    compact = len(names) >= COMPACT_FROM
    head = "".join(
        f'<th class="col" title="{escape(n)}"><span>{escape(n)}</span></th>' for n in names
    )
    body = []
    for tok, p, row in zip(targets, probs, rows):
        p_text = f"{p:.4f}" if math.isfinite(p) else "nan"
        cells = "".join(
            f'<td class="q{palette.level(v, limit) + palette.LEVELS}">'
            f"{'' if compact else cell_text(v, limit)}</td>"
            for v in row
        )
        body.append(
            f'<tr><th class="row" title="p={p_text}">{escape(tok)}</th>'
            f'<th class="prob">{p_text[:5]}</th>{cells}</tr>'
        )
    return (
        f'<div class="heat"><table class="hm{" compact" if compact else ""}">'
        f'<thead><tr><th class="row">target</th><th class="prob">p</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
