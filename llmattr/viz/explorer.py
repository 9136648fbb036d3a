"""The explorer: one self-contained, offline HTML page over a whole results file.

What Captum Insights offered as a notebook widget, as one file that opens in any browser: a
sortable, filterable table of the examples (id, metadata, target, its probability, top
features; free-text search over prompts, ids and targets; a choice per metadata field), the
selected example's coloured prompt, target token × feature heatmap, picture and modality
shares, and which features matter most on average (signed and absolute, with counts) over the
examples the filter keeps, per metadata group.

Safety is that of :func:`llmattr.viz.html_report`: nothing is loaded from the network, the
Content-Security-Policy lets the page run only its own script (matched by hash), the data sits
in one JSON block whose ``<``, ``>``, ``&`` and line separators are escaped, and the script
builds every element with ``textContent``, so a prompt is never read as markup.

    from llmattr.viz.explorer import write_explorer
    write_explorer("results.jsonl", "explorer.html")      # or: llmattr explore results.jsonl
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._core.errors import InputError, InputTypeError
from .explorer_assets import EXPLORER_SCRIPT
from .explorer_data import MAX_CELLS, build_payload, check_record, read_results
from .image_report import IMAGE_CSS
from .report import REPORT_CSS
from .report_blocks import escape, plural, script_json

__all__ = ["explore", "explorer_html", "image_record", "write_explorer"]

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(EXPLORER_SCRIPT.encode("utf-8")).digest()).decode()
_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
_SHOWN_SETTINGS = ("model", "method", "features")
_DATA = ("keys", "vocab", "examples")  # what the script reads (the header is drawn here)

_CSS = (
    "body{margin:1em 1.5em}header .meta{margin:.1em 0 .5em}"
    "details.settings summary{cursor:pointer;font-size:13px;color:#555}"
    ".tabs{display:flex;gap:.3em;border-bottom:1px solid #ccc;margin:.8em 0 .6em}"
    ".tabs button{border:1px solid #ccc;border-bottom:none;background:#f6f6f6;padding:.35em 1em;"
    "border-radius:4px 4px 0 0;cursor:pointer;font:inherit}.tabs button.on{background:#fff;"
    "font-weight:600;position:relative;top:1px}"
    ".controls{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:center;margin:.4em 0;"
    "font-size:13px}.controls input[type=search]{width:24em;padding:.3em .5em;font:inherit}"
    ".controls select,.controls input{font:inherit}.count{color:#555}"
    ".layout{display:grid;grid-template-columns:minmax(0,11fr) minmax(0,9fr);gap:1.2em;"
    "align-items:start}@media (max-width:1100px){.layout{grid-template-columns:1fr}}"
    ".list{max-height:74vh;overflow:auto;border:1px solid #ddd;border-radius:4px}"
    "table.ex{border-collapse:collapse;font-size:12px;width:100%}"
    ".ex th{position:sticky;top:0;background:#f6f6f6;text-align:left;padding:4px 6px;"
    "cursor:pointer;white-space:nowrap;user-select:none;border-bottom:1px solid #ccc}"
    ".ex th.asc::after{content:' \\25B2'}.ex th.desc::after{content:' \\25BC'}"
    ".ex td{padding:3px 6px;border-bottom:1px solid #eee;white-space:nowrap;max-width:22em;"
    "overflow:hidden;text-overflow:ellipsis;unicode-bidi:isolate}"
    ".ex td.num{text-align:right;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"
    "monospace}.ex tbody tr{cursor:pointer}.ex tbody tr:hover{background:#f3f7ff}"
    ".ex tbody tr.sel{background:#ffe08a}.ex td.err{color:#a40000}"
    ".pager{display:flex;gap:.6em;align-items:center;padding:.4em .2em;font-size:12px}"
    ".detail{min-width:0}.detail h2{margin-top:0;overflow-wrap:anywhere}"
    ".detail .err{color:#a40000;white-space:pre-wrap}.detail .note{color:#777;font-size:12px}"
    ".pics{display:flex;flex-wrap:wrap;gap:1em}.pics figure{margin:0}.pics img{"
    "image-rendering:pixelated;width:224px;height:auto;border:1px solid #ddd;border-radius:4px}"
    ".pics figcaption{font-size:12px;color:#555}"
    ".agg{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}"
    ".agg h3{margin:.2em 0 .3em;overflow-wrap:anywhere}"
    "table.ag{border-collapse:collapse;font-size:12px}.ag th{background:#f6f6f6;padding:3px 6px;"
    "text-align:left;cursor:pointer;white-space:nowrap}.ag td{padding:2px 6px;white-space:pre;"
    "border-bottom:1px solid #eee;unicode-bidi:isolate}.ag td.num{text-align:right;"
    "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}"
    ".ag td.f{max-width:16em;overflow:hidden;text-overflow:ellipsis}"
    ".ag .barcell{width:80px}.ag .bar{display:block;height:9px;background:#555}"
)


def _summary(settings: Mapping[str, Any], examples: list[dict[str, Any]]) -> str:
    failed = sum("error" in e for e in examples)
    parts = [plural(len(examples), "example")]
    if failed:
        parts.append(f"{failed} failed")
    parts += [f"{k} {settings[k]}" for k in _SHOWN_SETTINGS if settings.get(k) is not None]
    return " · ".join(escape(p) for p in parts)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def explorer_html(payload: Mapping[str, Any]) -> str:
    """The page around ``payload`` (:func:`.explorer_data.build_payload`)."""
    settings = payload["settings"]
    items = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(_text(v))}</dd>" for k, v in sorted(settings.items())
    )
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in payload["notes"])
    body = (
        f"<header><h1>{escape(payload['title'])}</h1>"
        f'<p class="meta">{_summary(settings, payload["examples"])}</p>'
        f'<details class="settings"><summary>settings</summary><dl class="info">{items}</dl>'
        f"</details>{notes}</header>"
        "<noscript><p>The explorer needs JavaScript (only the page's own script runs).</p>"
        "</noscript>"
        '<nav class="tabs"><button type="button" class="on" data-tab="examples">Examples'
        '</button><button type="button" data-tab="features">Features on average</button></nav>'
        '<section id="examples"><div class="controls" id="filters"><input type="search" id="q" '
        'placeholder="search prompts, ids, targets" aria-label="search">'
        '<span class="count" id="count"></span></div><div class="layout"><div><div class="list">'
        '<table class="ex"><thead><tr id="head"></tr></thead><tbody id="rows"></tbody></table>'
        '</div><div class="pager"><button type="button" id="prev">&#8249; previous</button>'
        '<span id="page"></span><button type="button" id="next">next &#8250;</button></div>'
        '</div><div class="detail" id="detail"></div></div></section>'
        '<section id="features" hidden><div class="controls"><label>group by <select '
        'id="groupby"><option value="-1">(all examples)</option></select></label><label>'
        'features seen at least <input type="number" id="mincount" min="1" value="1" '
        'style="width:5em"> times</label><span class="count" id="aggnote"></span></div>'
        '<div class="agg" id="agg"></div></section>'
        '<script type="application/json" id="llmattr-explorer-data">'
        f"{script_json({k: payload[k] for k in _DATA})}</script><script>{EXPLORER_SCRIPT}</script>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(payload['title'])}</title>"
        f"<style>{REPORT_CSS}{IMAGE_CSS}{_CSS}</style></head><body>{body}</body></html>"
    )


def _default_title(settings: Mapping[str, Any], source: str) -> str:
    method = settings.get("method")
    return f"llmattr explorer: {source}" + (f" ({method})" if method else "")


def write_explorer(
    results: str | Path,
    out: str | Path,
    title: str | None = None,
    max_cells: int = MAX_CELLS,
) -> Path:
    """Write the explorer page of a results file (``llmattr explain-file``'s JSONL).

    Args:
        results: the results file: a header line ``{"llmattr_results": 1, "settings": ...}``
            and one record per prompt.
        out: where to write the HTML page (UTF-8).
        title: the page's heading (default: the file's name and the method).
        max_cells: token × target attribution values embedded at most; past it, later examples
            show their prompt colouring but no heatmap (the page says so).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``results`` is not an llmattr results file, or a record is malformed.
    """
    settings, records = read_results(results)
    name = title if title is not None else _default_title(settings, Path(results).name)
    return _write(build_payload(settings, records, name, max_cells), out)


def _write(payload: Mapping[str, Any], out: str | Path) -> Path:
    """Write the page whole or not at all: encoded first (a lone surrogate in a string becomes
    "?"), then written to a temporary file beside ``out`` and renamed over it."""
    path = Path(out)
    data = explorer_html(payload).encode("utf-8", errors="replace")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o666 & ~_umask())  # as a plain open() would have made it
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def explore(
    results: str | Path | Iterable[Any],
    out: str | Path,
    title: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """The explorer page of a results file, of results-file records, or of
    :class:`~llmattr.LLMAttributionResult` objects (their ids are their positions).

    Args:
        results: a path (as :func:`write_explorer`), or an iterable of records (dicts with
            ``id``, ``index``, ``prompt``, ``meta`` and ``result`` or ``error``) or results.
        out: where to write the page.
        title: the page's heading.
        settings: shown in the page's header for records or results (a file has its own).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.
    """
    if isinstance(results, str | Path):
        return write_explorer(results, out, title)
    if isinstance(results, Mapping) or not isinstance(results, Iterable):
        raise InputTypeError(
            "explore takes a results file's path, or a list of records or LLMAttributionResults; "
            f"got {type(results).__name__}."
        )
    records = sorted((_as_record(item, i) for i, item in enumerate(results)), key=_index)
    if not records:
        raise InputError("explore needs at least one record or result.")
    return _write(
        build_payload(dict(settings or {}), records, title or "llmattr explorer", MAX_CELLS), out
    )


def _index(record: Mapping[str, Any]) -> int:
    return int(record["index"])


def _as_record(item: Any, i: int) -> dict[str, Any]:
    if hasattr(item, "to_dict") and hasattr(item, "seq_attr"):
        from .tokens import tokens_to_text

        record = {"id": str(i), "index": i, "meta": {}, "result": item.to_dict()}
        record["prompt"] = tokens_to_text(item.input_tokens)
        image = image_record(item)
        if image is not None:
            record["image"] = image
        return record
    if isinstance(item, Mapping) and "id" in item and isinstance(item.get("index"), int):
        if "error" in item or isinstance(item.get("result"), Mapping):
            check_record(dict(item), f"record {i}")
            return dict(item)
    raise InputTypeError(
        f"Item {i} is neither an LLMAttributionResult nor a results-file record (a dict with "
        '"id", an integer "index" and a "result" or an "error").'
    )


def image_record(result: Any) -> dict[str, Any] | None:
    """What a results-file record carries so that the explorer shows an image result: the
    ``"overlay"`` (the image under its ``seq_attr`` heatmap, :func:`.image_report.overlay_png`)
    and the plain ``"image"``, as PNG ``data:`` URIs, and each feature's ``"modalities"``.
    None when ``result.inp`` is no image input (text results, loaded results)."""
    from .image_report import _png, _rgb, has_image, overlay_png

    if not has_image(result):
        return None
    inp = result.inp
    pixel = inp.format_pixel_attr(result.seq_attr.reshape(1, -1))[0]

    def uri(png: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN pixels are drawn as 0
        overlay = overlay_png(inp.image, pixel)
    names = getattr(inp, "modalities", None) or ["image"] * len(result.input_tokens)
    return {"overlay": uri(overlay), "image": uri(_png(_rgb(inp.image))), "modalities": names}
