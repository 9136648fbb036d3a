"""Captum-compatible text visualization: ``VisualizationDataRecord`` and ``visualize_text``.

Same record fields and the same table as Captum's, with two differences: every word and label is
HTML-escaped (Captum inserts them raw, so a ``<script>`` token would run), and the words are
coloured with llmattr's red/blue scale instead of green/red. IPython is optional.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import palette
from .report import escape, page
from .scale import as_array

__all__ = ["HTMLString", "VisualizationDataRecord", "visualize_text"]


@dataclass(slots=True)
class VisualizationDataRecord:
    """What one row of :func:`visualize_text` shows (Captum's fields, in Captum's order).

    Attributes:
        word_attributions: ``(n_words,)`` (or longer) attributions, expected in ``[-1, 1]``
            (values outside are clipped for colouring).
        pred_prob: the predicted class's probability.
        pred_class: the predicted class (any printable label).
        true_class: the true class.
        attr_class: the class the attributions explain.
        attr_score: the attributions' total (or any score to show).
        raw_input_ids: the words or tokens, as strings.
        convergence_score: the completeness gap, or None.
    """

    word_attributions: Any
    pred_prob: float
    pred_class: Any
    true_class: Any
    attr_class: Any
    attr_score: float
    raw_input_ids: Any
    convergence_score: Any


class HTMLString(str):
    """An HTML fragment that is also a plain ``str``; notebooks render it, and ``.data`` gives
    the text as on IPython's ``HTML`` object that Captum returns."""

    @property
    def data(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return str(self)


_WORD = "padding:1px 3px;margin:0 1px;border-radius:3px;line-height:1.9;white-space:pre-wrap"


def _words(words: Any, importances: Any) -> str:
    if importances is None:
        return "<td></td>"
    values = as_array(importances).reshape(-1).tolist()
    if not values:
        return "<td></td>"
    names = [str(w) for w in words]
    if len(names) > len(values):
        raise ValueError(f"{len(names)} words but only {len(values)} attributions.")
    marks = []
    for name, v in zip(names, values):
        step = palette.level(v, 1.0)  # values in [-1, 1], as Captum expects; outside: clipped
        title = f"{v:+.4f}" if math.isfinite(v) else "nan"
        marks.append(
            f'<span style="{_WORD};background:{palette.colour(step)};'
            f'color:{palette.text_colour(step)}" title="{title}">{escape(name)}</span>'
        )
    return f'<td style="padding:4px 8px">{" ".join(marks)}</td>'


def _label(text: Any) -> str:
    return f'<td style="padding:4px 2em 4px 4px"><b>{escape(text)}</b></td>'


def _number(x: Any) -> float:
    return float(as_array(x).reshape(-1)[0]) if x is not None else math.nan


def _table(records: list[VisualizationDataRecord], legend: bool) -> str:
    deltas = any(r.convergence_score is not None for r in records)
    heads = ["True Label", "Predicted Label", "Attribution Label", "Attribution Score"]
    heads += ["Convergence Delta"] * deltas + ["Word Importance"]
    rows = [
        "<tr>"
        + "".join(f'<th style="text-align:left;padding:4px">{h}</th>' for h in heads)
        + "</tr>"
    ]
    for r in records:
        cells = [
            _label(r.true_class),
            _label(f"{r.pred_class} ({_number(r.pred_prob):.2f})"),
            _label(r.attr_class),
            _label(f"{_number(r.attr_score):.2f}"),
        ]
        if deltas:
            gap = r.convergence_score
            cells.append(_label("" if gap is None else f"{_number(gap):.2e}"))
        cells.append(_words(r.raw_input_ids, r.word_attributions))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts = [
        '<div class="llmattr-text" style="font-family:system-ui,sans-serif;font-size:14px">',
        '<table style="width:100%;border-collapse:collapse">',
        *rows,
        "</table>",
    ]
    if legend:
        swatches = "".join(
            f'<span style="display:inline-block;width:10px;height:10px;border:1px solid #999;'
            f'background:{palette.colour(palette.level(v, 1.0))}"></span> {name} '
            for v, name in ((-1, "Negative"), (0, "Neutral"), (1, "Positive"))
        )
        parts.append(
            '<div style="border-top:1px solid #999;margin-top:5px;padding-top:5px;'
            f'display:inline-block"><b>Legend: </b>{swatches}</div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _notebook_display() -> Any:
    """IPython's ``display`` when running in a kernel (a notebook), else None."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython.display import display

    return display


def visualize_text(
    datarecords: Iterable[VisualizationDataRecord],
    legend: bool = True,
    return_html: bool = False,
    path: str | Path | None = None,
) -> HTMLString | None:
    """A table of records with their words coloured by attribution (Captum's ``visualize_text``).

    Args:
        datarecords: :class:`VisualizationDataRecord` objects, one row each.
        legend: add a colour legend below the table.
        return_html: return the HTML even when it was displayed in a notebook.
        path: also write a complete HTML page with the table there (an llmattr addition).

    Returns:
        In a notebook, the table is displayed and returned only with ``return_html=True``;
        elsewhere it is always returned. The return value is a ``str`` (the HTML fragment)
        whose ``.data`` is the same text, like IPython's ``HTML`` object.
    """
    fragment = HTMLString(_table(list(datarecords), legend))
    if path is not None:
        Path(path).write_text(page("Text attributions", fragment, script=False), encoding="utf-8")
    display = _notebook_display()
    if display is None:
        return fragment
    display(fragment)
    return fragment if return_html else None
