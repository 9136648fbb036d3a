"""Captum-compatible text visualization: ``VisualizationDataRecord``, ``visualize_text`` and
Captum's HTML helpers ``format_word_importances``, ``format_classname``,
``format_special_tokens`` and ``format_tooltip``.

Same record fields, table and cells as Captum's, with these differences: every word and label is
HTML-escaped (Captum inserts them raw, so a ``<script>`` token would run); the words are
coloured with llmattr's red/blue scale instead of green/red; and ``visualize_text`` shows each
token as given (escaped), where Captum's turns ``"<s>"`` into ``"#s"`` (the helper
``format_word_importances`` does turn it, as Captum's). IPython is optional.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import palette
from .report import escape, page
from .scale import as_array

__all__ = [
    "HTMLString",
    "ShownHTML",
    "VisualizationDataRecord",
    "format_classname",
    "format_special_tokens",
    "format_tooltip",
    "format_word_importances",
    "visualize_text",
]


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


class ShownHTML(HTMLString):
    """The :class:`HTMLString` that :func:`visualize_text` returns: it remembers the notebook
    cell that already displayed it, so that being that cell's last expression does not show the
    table a second time. Displayed from any later cell, it renders as usual. Within the cell
    that called :func:`visualize_text`, an explicit ``display(h)`` is skipped too (the table is
    already there); cells run without history (``store_history=False``) share the previous
    count, so there re-display ``HTML(h.data)`` instead."""

    shown_in: int | None = None  # the kernel's execution count when it was displayed

    def _ipython_display_(self) -> None:
        shell = _kernel_shell()
        if (
            shell is not None
            and self.shown_in is not None
            and self.shown_in == getattr(shell, "execution_count", None)
        ):
            return  # the echo of the cell that displayed it: no second copy
        from IPython.display import display

        display({"text/html": str(self), "text/plain": str.__repr__(self)}, raw=True)


_WORD = "padding:1px 3px;margin:0 1px;border-radius:3px;line-height:1.9;white-space:pre-wrap"


def _words(words: Any, importances: Any) -> str:
    """The ``<td>`` of coloured words shared by :func:`visualize_text` and
    :func:`format_word_importances` (the words as given, escaped)."""
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
        title = "nan" if math.isnan(v) else f"{v:+.4f}"
        marks.append(
            f'<span style="{_WORD};background:{palette.colour(step)};'
            f'color:{palette.text_colour(step)}" title="{title}">{escape(name)}</span>'
        )
    return f'<td style="padding:4px 8px">{" ".join(marks)}</td>'


def format_special_tokens(token: str) -> str:
    """``"<s>"`` → ``"#s"``: a token wrapped in angle brackets loses them and gains a ``#`` (as
    Captum's). Other tokens come back unchanged. Plain text, not HTML: the functions that put it
    into HTML escape it."""
    if token.startswith("<") and token.endswith(">"):
        return "#" + token.strip("<>")
    return token


def format_word_importances(words: Sequence[str], importances: Any) -> str:
    """One ``<td>`` cell with each word coloured by its importance (Captum's helper).

    Args:
        words: the words or tokens; special tokens such as ``"<s>"`` are shown as ``"#s"``
            (:func:`format_special_tokens`).
        importances: at least as many values as words (extra ones are ignored), expected in
            ``[-1, 1]`` (values outside are clipped for colouring); a list, array or tensor.

    Returns:
        The cell's HTML; ``"<td></td>"`` when ``importances`` is None or empty. Unlike
        Captum's, every word is HTML-escaped, and the colours are llmattr's red/blue scale.
    """
    return _words([format_special_tokens(str(w)) for w in words], importances)


def format_classname(classname: Any) -> str:
    """One ``<td>`` cell with ``classname`` in bold (Captum's helper), HTML-escaped unlike
    Captum's."""
    return f'<td style="padding:4px 2em 4px 4px"><b>{escape(classname)}</b></td>'


def format_tooltip(item: Any, text: Any) -> str:
    """``item`` with ``text`` as its tooltip, in Captum's markup (a ``div.tooltip`` holding a
    ``span.tooltiptext``; the page supplies the CSS that hides and shows it). Both are
    HTML-escaped, unlike Captum's."""
    return (
        f'<div class="tooltip">{escape(item)}<span class="tooltiptext">{escape(text)}</span></div>'
    )


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
            format_classname(r.true_class),
            format_classname(f"{r.pred_class} ({_number(r.pred_prob):.2f})"),
            format_classname(r.attr_class),
            format_classname(f"{_number(r.attr_score):.2f}"),
        ]
        if deltas:
            gap = r.convergence_score
            cells.append(format_classname("" if gap is None else f"{_number(gap):.2e}"))
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


def _kernel_shell() -> Any:
    """The running IPython shell when it belongs to a kernel (a notebook), else None. IPython
    is looked up only if already imported, so it stays optional."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    return shell


def visualize_text(
    datarecords: Iterable[VisualizationDataRecord],
    legend: bool = True,
    return_html: bool = False,
    path: str | Path | None = None,
) -> HTMLString:
    """A table of records with their words coloured by attribution (Captum's ``visualize_text``).

    Args:
        datarecords: :class:`VisualizationDataRecord` objects, one row each.
        legend: add a colour legend below the table.
        return_html: accepted so that code which passes it keeps working; it has no effect
            (the HTML is always returned).
        path: also write a complete HTML page with the table there (an llmattr addition).

    Returns:
        The HTML fragment, as a ``str`` whose ``.data`` is the same text (like the IPython
        ``HTML`` object Captum returns). In a notebook the table is also displayed, once: left
        as the cell's last expression it is not echoed again, while showing the returned
        value from a later cell renders it.
    """
    del return_html  # kept for compatibility only
    fragment = ShownHTML(_table(list(datarecords), legend))
    if path is not None:
        Path(path).write_text(page("Text attributions", fragment, script=False), encoding="utf-8")
    shell = _kernel_shell()
    if shell is not None:
        from IPython.display import display

        display(fragment)  # _ipython_display_ renders it: not marked as shown yet
        fragment.shown_in = getattr(shell, "execution_count", None)
    return fragment
