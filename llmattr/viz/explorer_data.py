"""The data behind the explorer: reading a results file, one compact row per example, and the
dataset-wide feature statistics.

A results file is UTF-8 JSONL: a header line ``{"llmattr_results": 1, "settings": {...}}`` and
one line per prompt, ``{"id", "index", "prompt", "target", "meta", "result"}`` (``result`` is
:meth:`LLMAttributionResult.to_dict`), or ``{..., "error": "message"}`` for a prompt that failed.
Lines may come in any order; examples are sorted by ``index``.

The page's data block stores each distinct feature label once (``vocab``) and every example's
features as indices into it, which keeps 10,000 examples small and makes the per-feature
averages (:func:`aggregate`, recomputed by the page over the rows a filter keeps) a single pass.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core.errors import InputError
from .report_blocks import rounded
from .scale import symmetric_limit
from .tokens import display_tokens, tokens_to_text

__all__ = [
    "FORMAT_VERSION",
    "FeatureStat",
    "aggregate",
    "build_payload",
    "check_record",
    "read_results",
]

#: The results-file format version this reader understands (the header's ``llmattr_results``).
FORMAT_VERSION = 1
#: Token × target values embedded in one page at most (about 8 bytes each in the data block).
MAX_CELLS = 2_000_000
_TOP = 3  # top features listed per example in the table
_HEADER_MAX = 1 << 20  # a header line longer than this is no results header
_HUGE = 2**1023  # integers past this are no float
_DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]+=*")


def _not_ours(path: Path, why: str) -> InputError:
    return InputError(
        f"{path} is not an llmattr results file: {why}. The explorer reads the JSONL that "
        "`llmattr explain-file PROMPTS --out RESULTS.jsonl` writes (first line "
        '{"llmattr_results": 1, "settings": {...}}).'
    )


def read_results(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(settings, records)`` of a results file, the records sorted by ``index``.

    The header line is read (and checked) first, so a large file that is no results file is
    refused without loading it. A last line cut short (a run killed while writing) is skipped
    with a warning; a record whose id appears again later is replaced by the later one (a
    prompt redone after a crash).

    Raises:
        InputError: the file is missing or empty, its first line is not an llmattr results
            header, it was written by another format, or a later line (its number is given) is
            not a well-formed record.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No results file at {path}.")
    try:
        with path.open("rb") as file:
            first = file.readline(_HEADER_MAX).removeprefix(b"\xef\xbb\xbf")  # a BOM
            if first.strip() and not first.endswith(b"\n") and file.read(1):
                raise _not_ours(path, "its first line is not a results header (too long)")
            settings = _header(path, first.decode("utf-8"), file)
            text = file.read().decode("utf-8")
    except UnicodeDecodeError:
        raise _not_ours(path, "it is not UTF-8 text") from None
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), start=2) if line.strip()]
    records: dict[str, dict[str, Any]] = {}
    for k, (n, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if k == len(numbered) - 1 and not text.endswith("\n"):
                warnings.warn(
                    f"{path}: line {n} is cut short (a run stopped while writing it); skipped.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            raise InputError(f"{path}, line {n}: not JSON ({error.msg}).") from None
        records[check_record(record, f"{path}, line {n}")] = record
    return settings, sorted(records.values(), key=lambda r: r["index"])


def _header(path: Path, first: str, file: Any) -> dict[str, Any]:
    if not first.strip():
        if not file.read(1 << 16).strip():  # bytes: blank lines only
            raise _not_ours(path, "it is empty")
        raise _not_ours(path, "its first line is not JSON")
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        raise _not_ours(path, "its first line is not JSON") from None
    if not isinstance(header, dict) or "llmattr_results" not in header:
        raise _not_ours(path, 'its first line has no "llmattr_results" header')
    version = header["llmattr_results"]
    if type(version) is not int or version != FORMAT_VERSION:  # true == 1 in Python
        raise InputError(
            f"{path} is a results file of format {version!r}; this llmattr reads format "
            f"{FORMAT_VERSION}. Upgrade llmattr (or re-run explain-file with this version)."
        )
    settings = header.get("settings") or {}
    if not isinstance(settings, dict):
        raise _not_ours(path, 'its header\'s "settings" is not an object')
    return settings


def _numbers(packed: Any, name: str, where: str, size: int | None = None) -> None:
    """Check a packed tensor: ``{"data": [numbers]}`` (``size`` of them, or a multiple of it)."""
    if packed is None and name != "seq_attr":
        return
    data = packed.get("data") if isinstance(packed, dict) else None
    if not isinstance(data, list) or not all(
        type(v) is float or (type(v) is int and -_HUGE < v < _HUGE) for v in data
    ):
        raise InputError(
            f'{where}: the result\'s "{name}" must be {{"dtype", "shape", "data": [numbers]}} '
            "as LLMAttributionResult.to_dict() writes it."
        )
    if size is not None and (len(data) != size if name == "seq_attr" else len(data) % max(size, 1)):
        raise InputError(
            f'{where}: the result\'s "{name}" has {len(data)} values for {size} input tokens.'
        )


def check_record(record: Any, where: str) -> str:
    """The record's id, after checking every field the explorer reads.

    Raises:
        InputError: naming ``where`` (the file and line) and the field that is malformed.
    """
    if not isinstance(record, dict):
        raise InputError(f"{where}: a record must be a JSON object; got {type(record).__name__}.")
    if "id" not in record or type(record.get("index")) is not int:
        raise InputError(f'{where}: a record needs an "id" and an integer "index".')
    if not isinstance(record.get("meta") or {}, dict):
        raise InputError(f'{where}: a record\'s "meta" must be an object (or absent).')
    if "error" in record:
        return str(record["id"])
    result = record.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("seq_attr"), dict):
        raise InputError(f'{where}: a record needs a "result" (a result\'s to_dict()).')
    tokens = result.get("input_tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InputError(f'{where}: the result\'s "input_tokens" must be a list of strings.')
    if not isinstance(result.get("output_tokens") or [], list):
        raise InputError(f'{where}: the result\'s "output_tokens" must be a list of strings.')
    _numbers(result["seq_attr"], "seq_attr", where, len(tokens))
    _numbers(result.get("token_attr"), "token_attr", where, len(tokens))
    _numbers(result.get("output_probs"), "output_probs", where)
    info = result.get("info") or {}
    if not isinstance(info, dict):
        raise InputError(f'{where}: the result\'s "info" must be an object.')
    image = record.get("image")
    found = info.get("modalities") or (image.get("modalities") if isinstance(image, dict) else None)
    if found and (not isinstance(found, list) or len(found) != len(tokens)):
        raise InputError(
            f'{where}: "modalities" must be a list of one name per input token '
            f"({len(tokens)}); got {found!r:.80}."
        )
    return str(record["id"])


def _unpack(packed: Any) -> list[float] | None:
    """The flat values of a packed tensor (``{"dtype", "shape", "data"}``), or None."""
    if packed is None:
        return None
    return [float(v) for v in packed["data"]]


def _rows(packed: Any, width: int) -> list[list[float]] | None:
    flat = _unpack(packed)
    if flat is None or width == 0:
        return None
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _target_probability(probs: list[float] | None) -> float | None:
    """The whole target's probability: the product of its tokens' (None when unknown)."""
    if not probs:
        return None
    p = math.prod(probs)
    return p if math.isfinite(p) else None


def _shares(result: dict[str, Any], image: Any) -> dict[str, float] | None:
    """Each modality's share of ``|seq_attr|`` (:meth:`LLMAttributionResult.modality_shares`),
    for results that record their modalities; None for text-only results."""
    from ..text.result import LLMAttributionResult

    info = dict(result.get("info") or {})
    modalities = info.get("modalities") or (image or {}).get("modalities")
    if not modalities:
        return None
    info["modalities"] = list(modalities)
    loaded = LLMAttributionResult.from_dict({**result, "info": info})
    try:
        shares = loaded.modality_shares()
    except ValueError:  # every attribution is 0
        return None
    return {k: (v if math.isfinite(v) else None) for k, v in shares.items()}  # NaN: JSON null


def _image(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record's pictures (``image_record``'s data URIs), kept only when they are PNG data."""
    found = record.get("image")
    if not isinstance(found, Mapping):
        return None
    kept = {k: found[k] for k in ("overlay", "image") if isinstance(found.get(k), str)}
    if not kept or not all(_DATA_URI.fullmatch(v) for v in kept.values()):
        return None
    return kept


class _Vocab:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, names: Iterable[str]) -> list[int]:
        return [self.index.setdefault(n, len(self.index)) for n in names]

    @property
    def words(self) -> list[str]:
        return list(self.index)


def _meta_value(value: Any) -> str | float | bool | None:
    """A metadata value as a table cell: numbers, strings, booleans and null as they are,
    anything else as its JSON text."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and not -_HUGE < value < _HUGE:
        return str(value)  # no float holds it
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def build_payload(
    settings: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    title: str,
    max_cells: int = MAX_CELLS,
) -> dict[str, Any]:
    """The page's data: settings, the metadata keys, the feature vocabulary and one compact
    entry per example (its features as vocabulary indices, ``seq_attr``, the token × target
    rows while the page's budget of ``max_cells`` values lasts, target probability, top
    features, modality shares, pictures)."""
    keys = list(dict.fromkeys(k for r in records for k in (r.get("meta") or {})))
    vocab, examples, cells, notes = _Vocab(), [], 0, []
    omitted = 0
    for record in records:
        meta = record.get("meta") or {}
        entry: dict[str, Any] = {
            "id": str(record["id"]),
            "i": record["index"],
            "prompt": str(record.get("prompt") or ""),
            "meta": [_meta_value(meta.get(k)) for k in keys],
        }
        if "error" in record:
            entry["error"] = str(record["error"]) or "(failed, no message)"
            entry["target"] = "" if record.get("target") is None else str(record["target"])
            examples.append(entry)
            continue
        result = record["result"]
        names = display_tokens(result.get("input_tokens") or [])
        seq = _unpack(result["seq_attr"]) or []
        if len(seq) != len(names):
            raise InputError(
                f"Record {entry['id']!r}: seq_attr has {len(seq)} values for {len(names)} "
                "input tokens."
            )
        probs = _unpack(result.get("output_probs"))
        rows = _rows(result.get("token_attr"), len(names))
        if rows is not None and cells + len(names) * len(rows) > max_cells:
            rows, omitted = None, omitted + 1
        cells += 0 if rows is None else len(names) * len(rows)
        info = result.get("info") or {}
        text = info.get("target_text")
        if not isinstance(text, str):
            text = tokens_to_text(result.get("output_tokens") or [])
        order = sorted(
            (j for j, v in enumerate(seq) if math.isfinite(v)), key=lambda j: -abs(seq[j])
        )
        image = _image(record)
        entry.update(
            target=text,
            p=_target_probability(probs),
            tok=vocab(names),
            seq=rounded(seq),
            sl=symmetric_limit(seq),
            out=display_tokens(result.get("output_tokens") or []),
            probs=None if probs is None else rounded(probs),
            rows=None if rows is None else [rounded(r) for r in rows],
            tl=None if rows is None else symmetric_limit([v for r in rows for v in r]),
            top=[[names[j], rounded([seq[j]])[0]] for j in order[:_TOP]],
            method=str(result.get("method") or ""),
            shares=_shares(dict(result), record.get("image")),
            image=image,
        )
        if rows is None and result.get("token_attr") is not None:
            entry["omitted"] = True
        examples.append({k: v for k, v in entry.items() if v is not None})  # absent: null
    if omitted:
        notes.append(
            f"The token × target heatmaps of {omitted} examples are not embedded: the page keeps "
            f"at most {max_cells:,} such values. Open an example with html_report to see it."
        )
    return {
        "title": title,
        "settings": dict(settings),
        "keys": keys,
        "vocab": vocab.words,
        "examples": examples,
        "notes": notes,
    }


@dataclass(frozen=True)
class FeatureStat:
    """One feature label's attributions over a set of examples (``seq_attr``, finite values).

    Attributes:
        feature: the label as shown (:func:`.tokens.display_tokens`).
        count: how many times it occurs as a feature.
        examples: in how many examples it occurs.
        mean: mean signed attribution.
        mean_abs: mean absolute attribution.
    """

    feature: str
    count: int
    examples: int
    mean: float
    mean_abs: float


def aggregate(
    records: Sequence[Mapping[str, Any]], by: str | None = None, min_count: int = 1
) -> dict[str, list[FeatureStat]]:
    """Which features matter most on average, per metadata group: ``{group: [FeatureStat, ...]}``
    sorted by ``mean_abs`` (largest first, then by label). Failed records and non-finite values
    are left out.

    Args:
        records: results-file records (:func:`read_results`).
        by: a ``meta`` key to group by (each group is the value's text: ``str`` of a string,
            JSON of anything else, ``"(none)"`` when missing); None: one group, ``"all"``.
        min_count: keep features that occur at least this many times.
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for record in records:
        if "error" in record:
            continue
        group = "all" if by is None else _group(record.get("meta") or {}, by)
        table = sums.setdefault(group, {})
        result = record["result"]
        seen: set[str] = set()
        for name, v in zip(
            display_tokens(result["input_tokens"]), _unpack(result["seq_attr"]) or []
        ):
            if not math.isfinite(v):
                continue
            stat = table.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            stat[0] += 1
            stat[1] += name not in seen
            stat[2] += v
            stat[3] += abs(v)
            seen.add(name)
    out = {}
    for group, table in sums.items():
        stats = [
            FeatureStat(name, int(n), int(e), s / n, a / n)
            for name, (n, e, s, a) in table.items()
            if n >= min_count
        ]
        out[group] = sorted(stats, key=lambda f: (-f.mean_abs, f.feature))
    return out


def _group(meta: Mapping[str, Any], key: str) -> str:
    """The group of a metadata value, as the page names it."""
    if key not in meta or meta[key] is None:
        return "(none)"
    value = _meta_value(meta[key])
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)
