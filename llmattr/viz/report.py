"""Self-contained HTML reports of LLM attribution results.

One file, no network: the CSS and a small script are inline, and a Content-Security-Policy lets
the page load nothing and run only its own script (matched by hash), so a prompt that smuggles
in markup can neither fetch nor execute anything even if it escaped the escaping. Every token,
title and label is HTML-escaped; the data the script reads sits in a JSON block whose ``<``,
``>`` and ``&`` are written as ``\\u003c`` etc., so ``</script>`` or ``<!--`` inside a token
cannot end the block.

The page works without its script (colours, numbers and native tooltips are plain HTML); the
script adds a tooltip with value and probability for every heatmap cell, highlights the prompt
token under the cursor, and recolours the prompt by one target token when its row is clicked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import palette
from .image_report import IMAGE_CSS, has_image, image_section
from .report_blocks import (
    COMPACT_FROM,
    chip,
    escape,
    floats,
    heatmap_table,
    legend,
    plural,
    rounded,
    script_json,
    total_text,
)
from .scale import as_array, symmetric_limit
from .tokens import display_tokens, tokens_to_text

if TYPE_CHECKING:
    from ..text.result import LLMAttributionResult

__all__ = ["COMPACT_FROM", "escape", "html_report", "page", "robustness_block", "script_json"]

REPORT_CSS = (
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em 2em;"
    "color:#222;background:#fff}"
    "h1{font-size:1.5em}h2{font-size:1.25em;margin-bottom:.2em}"
    "h3{font-size:1em;margin:1.2em 0 .3em}"
    "nav li{margin:.15em 0}.llmattr-result{margin-bottom:3em}"
    ".meta{color:#555;font-size:13px;margin:.2em 0}"
    ".info{font-size:12px;color:#555;display:grid;grid-template-columns:max-content auto;"
    "gap:0 .8em;margin:.3em 0}.info dt{font-weight:600}.info dd{margin:0;white-space:pre-wrap}"
    ".legend{display:flex;flex-wrap:wrap;align-items:center;gap:.5em;font-size:12px;color:#444;"
    "margin:.3em 0}.legend .bar{display:inline-flex;border:1px solid #ccc}"
    ".legend .bar i{display:inline-block;width:9px;height:12px}.legend .note{color:#777}"
    ".prompt{font:13px/2.1 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
    "border:1px solid #ddd;border-radius:4px;padding:.5em .7em;overflow-wrap:anywhere;"
    "max-height:60vh;overflow-y:auto}"
    ".tok{padding:2px 3px;border-radius:3px;white-space:pre-wrap;unicode-bidi:isolate;"
    "box-decoration-break:clone;-webkit-box-decoration-break:clone}"
    ".tok.hl{outline:2px solid #111}"
    ".heat{max-height:70vh;max-width:100%;overflow:auto;border:1px solid #ddd;border-radius:4px;"
    "display:inline-block}"
    "table.hm{border-collapse:separate;border-spacing:0;font-size:11px}"
    ".hm th{background:#f6f6f6;font-weight:normal;white-space:pre;position:sticky;"
    "box-sizing:border-box;unicode-bidi:isolate}"
    ".hm thead th{top:0;z-index:2;vertical-align:bottom;padding:3px 1px}"
    ".hm thead th.col span{display:inline-block;writing-mode:vertical-rl;"
    "transform:rotate(180deg);max-height:10em;overflow:hidden;text-overflow:ellipsis}"
    ".hm tbody th{z-index:1;padding:1px 5px}"
    ".hm th.row{left:0;width:10em;min-width:10em;max-width:10em;overflow:hidden;"
    "text-overflow:ellipsis;text-align:right;cursor:pointer}"
    ".hm th.prob{left:10em;width:4em;min-width:4em;text-align:right;color:#555}"
    ".hm thead th.row,.hm thead th.prob{z-index:3}"
    ".hm th.row.sel{background:#222;color:#fff}.hm th.col.hl,.hm tr.hl th{background:#ffe08a}"
    ".hm td{text-align:center;padding:2px 4px;min-width:3.3em;white-space:nowrap}"
    ".hm.compact td{min-width:0;width:10px;height:15px;padding:0}"
    ".robust{border-left:3px solid #999;padding:.1em .8em;margin:.6em 0}"
    ".robust code{background:#f1f1f1;border-radius:3px;padding:0 3px;white-space:pre-wrap}"
    ".llmattr-tip{position:fixed;display:none;pointer-events:none;z-index:10;max-width:40em;"
    "background:#222;color:#fff;padding:4px 8px;border-radius:4px;white-space:pre-wrap;"
    "font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}"
) + palette.css_rules()

_SCRIPT = """(function () {
  "use strict";
  var doc = document, tip = doc.querySelector(".llmattr-tip");
  if (!tip) {
    tip = doc.createElement("div"); tip.className = "llmattr-tip"; doc.body.appendChild(tip);
  }
  function num(v) {
    if (v === null) return "nan";
    if (!isFinite(v)) return (v < 0 ? "-" : "+") + "inf";
    var a = Math.abs(v), s = (a >= 1e-3 && a < 1e4) || a === 0 ? a.toFixed(4) : a.toExponential(3);
    // Two exponent digits, as Python's "{:+.3e}" writes them.
    s = s.replace(/e([+-])(\\d)$/, function (m, sign, digit) { return "e" + sign + "0" + digit; });
    return (v < 0 ? "-" : "+") + s;
  }
  function place(e) {
    var x = e.clientX + 14, y = e.clientY + 14, r = tip.getBoundingClientRect();
    if (x + r.width > innerWidth) x = Math.max(0, e.clientX - r.width - 8);
    if (y + r.height > innerHeight) y = Math.max(0, e.clientY - r.height - 8);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  function step(v, lim, n) {
    if (v === null || !(lim > 0)) return n;
    return n + Math.max(-n, Math.min(n, Math.round(v / lim * n)));
  }
  doc.querySelectorAll("section.llmattr-result").forEach(function (sec) {
    if (sec.getAttribute("data-ready")) return;
    sec.setAttribute("data-ready", "1");
    var d = JSON.parse(sec.querySelector("script.llmattr-data").textContent);
    function real(vals) {  // JSON has no infinities: they come as "inf" and "-inf"
      return vals.map(function (v) {
        return v === "inf" ? Infinity : v === "-inf" ? -Infinity : v;
      });
    }
    d.seq_attr = real(d.seq_attr); d.token_attr = d.token_attr.map(real);
    var chips = sec.querySelectorAll(".prompt .tok"), cols = sec.querySelectorAll("th.col");
    var caption = sec.querySelector(".legend.seq .note"), table = sec.querySelector("table.hm");
    var lit = null, chosen = -1;
    function paint(row) {
      var vals = row < 0 ? d.seq_attr : d.token_attr[row];
      var lim = row < 0 ? d.seq_limit : d.token_limit;
      chips.forEach(function (c, j) {
        c.className = "tok q" + step(vals[j], lim, d.levels);
        c.title = d.input_tokens[j] + ": " + num(vals[j]);
      });
      if (caption) caption.textContent = row < 0 ? "colour: attribution to the whole target"
        : "colour: attribution to target token " + (row + 1) + " " +
          JSON.stringify(d.output_tokens[row]);
    }
    function unlight() {
      if (lit) lit.forEach(function (el) { el.classList.remove("hl"); });
      lit = null; tip.style.display = "none";
    }
    if (!table) return;
    table.addEventListener("mouseover", function (e) {
      var cell = e.target.closest("td"), tr = cell && cell.parentNode;
      unlight();
      if (!cell) return;
      var t = tr.sectionRowIndex, j = cell.cellIndex - 2;
      lit = [chips[j], cols[j], tr].filter(Boolean);
      lit.forEach(function (el) { el.classList.add("hl"); });
      tip.textContent = JSON.stringify(d.output_tokens[t]) + " \\u2190 " +
        JSON.stringify(d.input_tokens[j]) + "\\nattribution " + num(d.token_attr[t][j]) +
        "\\np(" + JSON.stringify(d.output_tokens[t]) + ") = " +
        (d.output_probs[t] === null ? "nan" : d.output_probs[t].toFixed(4));
      tip.style.display = "block"; place(e);
    });
    table.addEventListener("mousemove", function (e) { if (lit) place(e); });
    table.addEventListener("mouseleave", unlight);
    table.addEventListener("click", function (e) {
      var head = e.target.closest("th.row"), tr = head && head.parentNode;
      if (!head || !tr.parentNode || tr.parentNode.tagName !== "TBODY") return;
      var t = tr.sectionRowIndex;
      sec.querySelectorAll("th.row.sel").forEach(function (h) { h.classList.remove("sel"); });
      chosen = chosen === t ? -1 : t;
      if (chosen >= 0) head.classList.add("sel");
      paint(chosen);
    });
  });
  doc.documentElement.setAttribute("data-llmattr", "ready");
})();"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode()
_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{_SCRIPT_HASH}'"
)


def page(title: str, body: str, script: bool = True) -> str:
    """A complete HTML document around ``body`` (already HTML); ``title`` is escaped here."""
    code = f"<script>{_SCRIPT}</script>" if script else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{REPORT_CSS}{IMAGE_CSS}</style></head>"
        f'<body>{body}<div class="llmattr-tip" aria-hidden="true"></div>{code}</body></html>'
    )


def default_title(result: LLMAttributionResult) -> str:
    """``"<method>: <target text>"``, the target cut to 80 characters: ``info["target_text"]``
    (what the tokenizer decodes the target to, recorded by LLMAttribution and
    LLMGradientAttribution), else the target tokens read by :func:`.tokens.tokens_to_text`."""
    text = (result.info or {}).get("target_text")
    if not isinstance(text, str):
        text = tokens_to_text(result.output_tokens)
    target = " ".join(text.split())
    if len(target) > 80:
        target = target[:79] + "…"
    return f"{result.method or 'Attribution'}: {target}"


def _quoted(text: Any) -> str:
    return f"<code>{escape(text)}</code>"


def robustness_block(data: Any, noun: str = "feature") -> str:
    """The answer-robustness block: how many top-ranked features had to be removed before the
    answer changed (:func:`llmattr.robust.text.answer_robustness`).

    Args:
        data: an :class:`~llmattr.robust.text.AnswerRobustness` or its ``to_dict()``.
        noun: what a feature is (``"word"``); pluralized with ``s``.
    """
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    if not isinstance(data, Mapping) or "n_features" not in data:
        raise ValueError("robustness must be an AnswerRobustness or its to_dict().")
    n = None if data.get("n_removed") is None else int(data["n_removed"])
    total = int(data["n_features"])
    given = bool(data.get("target_given"))
    what = "The target" if given else "The answer"
    many = plural(total, noun)
    if n is None:
        k_max = int(data.get("k_max") or total)
        tried = f"all {many}" if k_max >= total else f"the top {k_max} of {many}"
        stays = "stays preferred" if given else "never changes"
        text = f"<p>{what} {stays}, even after removing {tried}."
    elif n == 0:
        text = "<p>The model does not prefer the target even with nothing removed."
    else:
        words = " ".join(_quoted(w) for w in data.get("removed_words", []))
        share = f" ({100 * n / total:.0f}%)" if total else ""
        change = "is no longer preferred" if given else "changes"
        text = (
            f"<p>{what} {change} after removing <b>{n}</b> of {many}{share}, the most "
            f"important first: {words}."
        )
    answer = f"{'target' if given else 'answer'}: {_quoted(data.get('answer', ''))}"
    if data.get("new_answer") is not None:
        answer += f" → after the removal the model says {_quoted(data['new_answer'])}"
    mode = escape(data.get("mode", "linear"))
    return (
        f'<h3>Answer robustness</h3><div class="robust">{text}</p><p>{answer}</p>'
        f'<p class="meta">features removed in the order of the attribution ({mode} search)'
        "</p></div>"
    )


def _noun(result: LLMAttributionResult) -> str:
    kind = (result.info or {}).get("features")
    return {"tokens": "token", "words": "word", "sentences": "sentence"}.get(str(kind), "feature")


def result_section(
    result: LLMAttributionResult, title: str, anchor: str, robustness: Any = None
) -> str:
    """One result as a ``<section>``: summary, the answer-robustness block when ``robustness``
    is given or ``result.info["robustness"]`` holds one (:func:`robustness_block`), the image
    section when ``result.inp`` has an image (:func:`.image_report.image_section`), prompt
    coloured by ``seq_attr``, and the target token × prompt feature heatmap of
    ``token_attr``."""
    names = display_tokens(result.input_tokens)
    targets = display_tokens(result.output_tokens)
    seq = floats(result.seq_attr)
    probs = floats(result.output_probs)
    if len(seq) != len(names):
        raise ValueError(f"seq_attr has {len(seq)} values for {len(names)} input tokens.")
    rows: list[list[float]] = []
    if result.token_attr is not None:
        grid = as_array(result.token_attr)
        if grid.ndim != 2 or grid.shape[1] != len(names):
            raise ValueError(
                f"token_attr has shape {tuple(grid.shape)}; expected (n_output_tokens, "
                f"{len(names)})."
            )
        rows = [[float(v) for v in row] for row in grid.tolist()]
    probs += [math.nan] * (len(rows) - len(probs))
    seq_limit = symmetric_limit(seq)
    token_limit = symmetric_limit([v for row in rows for v in row])

    parts = [
        f'<section class="llmattr-result" id="{anchor}"><h2>{escape(title)}</h2>',
        f'<p class="meta">{escape(result.method or "attribution")} · '
        f"{plural(len(names), 'prompt feature')} · {plural(len(targets), 'target token')} · "
        f"sum of attributions {total_text(seq)}</p>",
    ]
    info = dict(result.info or {})
    if robustness is None:
        robustness = info.get("robustness")
    if robustness is not None:
        info.pop("robustness", None)  # shown as its own block
    if info:
        items = "".join(
            f"<dt>{escape(k)}</dt><dd>{escape(json.dumps(v, ensure_ascii=False, default=str))}</dd>"
            for k, v in info.items()
        )
        parts.append(f'<dl class="info">{items}</dl>')
    if robustness is not None:
        parts.append(robustness_block(robustness, _noun(result)))
    image = has_image(result)
    if image:
        parts.append(image_section(result))
    chips = " ".join(chip(n, v, seq_limit) for n, v in zip(names, seq))
    parts += [
        f"<h3>{'All features' if image else 'Prompt'}</h3>",
        legend(seq_limit, "colour: attribution to the whole target", "seq"),
        f'<div class="prompt">{chips}</div>',
    ]
    if rows:
        parts += [
            "<h3>Each target token</h3>",
            legend(
                token_limit,
                "hover a cell for its value; click a target token to colour the prompt by it",
                "tokens",
            ),
            heatmap_table(names, targets, rows, probs, token_limit),
        ]
    data = {
        "input_tokens": names,
        "output_tokens": targets,
        "seq_attr": rounded(seq),
        "token_attr": [rounded(r) for r in rows],
        "output_probs": rounded(probs),
        "seq_limit": seq_limit,
        "token_limit": token_limit,
        "levels": palette.LEVELS,
        "method": result.method,
    }
    parts.append(
        f'<script type="application/json" class="llmattr-data">{script_json(data)}'
        "</script></section>"
    )
    return "".join(parts)


def html_report(
    results: LLMAttributionResult | Sequence[LLMAttributionResult],
    path: str | Path | None = None,
    titles: Sequence[str] | None = None,
    robustness: Any = None,
) -> str:
    """One self-contained HTML page showing one or several LLM attribution results.

    For each result: its prompt features coloured by ``seq_attr`` with a colour legend, and a
    target-token × prompt-feature heatmap of ``token_attr`` whose cells show their value and the
    target token's probability on hover. Prompts of thousands of tokens wrap, and their heatmap
    scrolls under sticky headers with compact cells. Nothing is loaded from the network.

    Args:
        results: an :class:`~llmattr.LLMAttributionResult` or a sequence of them.
        path: if given, the page is also written there (UTF-8).
        titles: one heading per result (default: ``"<method>: <target text>"``).
        robustness: an answer-robustness block per result
            (:class:`~llmattr.robust.text.AnswerRobustness`, its ``to_dict()``, or None), or
            one for a single result; default: each result's ``info["robustness"]``, if any.

    Returns:
        The HTML document.
    """
    if hasattr(results, "seq_attr"):
        items: list[Any] = [results]
    else:
        items = list(cast(Sequence[Any], results))
    if not items:
        raise ValueError("html_report needs at least one result.")
    if titles is None:
        heads = [default_title(r) for r in items]
    else:
        heads = [str(t) for t in titles]
        if len(heads) != len(items):
            raise ValueError(f"Got {len(heads)} titles for {len(items)} results.")
    if robustness is None or hasattr(robustness, "to_dict") or isinstance(robustness, Mapping):
        blocks = [robustness] + [None] * (len(items) - 1)
        if robustness is not None and len(items) != 1:
            raise ValueError("Give one robustness per result (a list) for several results.")
    else:
        blocks = list(robustness)
        if len(blocks) != len(items):
            raise ValueError(f"Got {len(blocks)} robustness blocks for {len(items)} results.")
    sections = [
        result_section(r, h, f"llmattr-r{i}", b)
        for i, (r, h, b) in enumerate(zip(items, heads, blocks))
    ]
    if len(items) == 1:
        doc = page(heads[0], sections[0])
    else:
        links = "".join(
            f'<li><a href="#llmattr-r{i}">{escape(h)}</a></li>' for i, h in enumerate(heads)
        )
        name = f"Attribution report ({len(items)} results)"
        doc = page(name, f"<h1>{escape(name)}</h1><nav><ol>{links}</ol></nav>{''.join(sections)}")
    if path is not None:
        Path(path).write_text(doc, encoding="utf-8")
    return doc
