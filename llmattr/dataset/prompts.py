"""Reading a file of prompts: JSONL records or plain text, one prompt a line, checked whole
before any model is loaded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.errors import InputError

__all__ = ["PromptRecord", "prompts_digest", "read_prompts"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt",)


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a prompts file.

    Attributes:
        index: 0-based position among the file's prompts (blank lines are not prompts).
        id: the record's ``"id"`` (an int is turned into its decimal string), else the 1-based
            line number as a string.
        prompt: the text to explain.
        target: the continuation to explain, or None to explain the greedy generation.
        meta: the record's other fields, as given (a plain text file has none).
    """

    index: int
    id: str
    prompt: str
    target: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return True
    if suffix in TEXT_SUFFIXES:
        return False
    first = next((line for line in lines if line.strip()), "")
    return first.lstrip().startswith("{")


def _record(path: Path, number: int, line: str, index: int) -> PromptRecord:
    where = f"{path}, line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(
            f"{where}: not valid JSON ({error.msg} at column {error.colno}); each line of a "
            'JSONL prompts file is one object such as {"prompt": "...", "target": "..."}'
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: a JSON {type(data).__name__}, expected an object with a prompt")
    if "prompt" not in data:
        raise InputError(f'{where}: no "prompt" field (the fields are {sorted(data)})')
    try:  # a lone surrogate ("\ud800") is valid JSON but no text: refuse it here, with the line
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: an unpaired surrogate (such as \\ud800) is not text") from None
    prompt, target, given_id = data["prompt"], data.get("target"), data.get("id")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f'{where}: "prompt" must be a non-empty string, got {prompt!r}')
    if target is not None and (not isinstance(target, str) or not target):
        raise InputError(
            f'{where}: "target" must be a non-empty string (or null: explain the generation), '
            f"got {target!r}"
        )
    if given_id is None:
        record_id = str(number)
    elif isinstance(given_id, str) and given_id:
        record_id = given_id
    elif isinstance(given_id, int) and not isinstance(given_id, bool):
        record_id = str(given_id)
    else:
        raise InputError(
            f'{where}: "id" must be a non-empty string or an integer, got {given_id!r}'
        )
    meta = {k: v for k, v in data.items() if k not in ("prompt", "target", "id")}
    return PromptRecord(index, record_id, prompt, target, meta)


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """The prompts of ``path``, checked.

    The format: a file ending in ``.jsonl`` or ``.ndjson`` is JSONL, one ending in ``.txt``
    plain text; any other is JSONL when its first non-blank line starts with ``{``, else plain
    text. JSONL lines are objects with ``"prompt"``, optional ``"target"`` and ``"id"``; other
    fields are kept as ``meta``. A plain text file holds one prompt a line. Blank lines are
    skipped in both.

    Args:
        path: the prompts file (UTF-8).

    Returns:
        The prompts in file order, ``index`` 0, 1, ...

    Raises:
        InputError: the file is missing, empty, not UTF-8, has a line that is not a JSON object
            with a non-empty ``"prompt"`` (the message gives its line number), or two prompts
            with the same id.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"the prompts file {path} does not exist (or is not a file)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path} is not UTF-8 text (byte {error.start})") from None
    # only "\n" ends a line (JSON strings may hold U+2028 or a form feed; "\r\n" is fine)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    jsonl = _is_jsonl(path, lines)
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index = len(records)
        record = (
            _record(path, number, line, index) if jsonl else PromptRecord(index, str(number), line)
        )
        if record.id in seen:
            raise InputError(
                f"{path}, line {number}: the id {record.id!r} is also the id of line "
                f"{seen[record.id]}; ids must be unique (results are matched to prompts by id)"
            )
        seen[record.id] = number
        records.append(record)
    if not records:
        raise InputError(f"the prompts file {path} is empty: it holds no prompt")
    return records


def prompts_digest(records: list[PromptRecord]) -> str:
    """A short hash of the prompts (ids, texts, targets, meta), for processes to check that
    they read the same file."""
    blob = json.dumps(
        [[r.id, r.prompt, r.target, r.meta] for r in records], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
