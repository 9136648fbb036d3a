"""The results file: JSONL, a header line with the settings, then one line per prompt.

Lines are appended whole, flushed and fsync'ed, so a run killed mid-way leaves at most a
truncated last line, which :func:`scan` detects and :func:`truncate_to` drops. Files are
merged by writing a new file and renaming it over the old one, so a crash while merging
leaves the old file as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.errors import InputError
from ..viz.explorer_data import FORMAT_VERSION, read_results

# ``read_results`` (the one reader of the format: header first, records checked, a redone id
# replacing the earlier line) lives with the explorer, which must read files of any origin

__all__ = [
    "Entry",
    "ResultsWriter",
    "Scan",
    "header_line",
    "merge_results",
    "read_results",
    "scan",
    "truncate_to",
]

HEADER_KEY = "llmattr_results"


def header_line(settings: dict[str, Any]) -> dict[str, Any]:
    """The header object of a results file with ``settings``."""
    return {HEADER_KEY: FORMAT_VERSION, "settings": settings}


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Entry:
    """Where one prompt's line is: ``offset`` and ``length`` (bytes, with the newline)."""

    index: int
    id: str
    ok: bool
    offset: int
    length: int
    prompt: str = ""
    target: str | None = None


@dataclass
class Scan:
    """A results file read through: its header's settings (None: no header yet), its entries in
    file order, and ``end``, the byte offset after the last complete line (``size`` beyond it
    is a truncated line to drop)."""

    path: Path
    settings: dict[str, Any] | None = None
    entries: list[Entry] = field(default_factory=list)
    end: int = 0
    size: int = 0


def scan(path: str | Path) -> Scan:
    """Read a results file's header and where each line is; a missing file scans as empty.

    A last line without its newline, or one that is not valid JSON, is a write cut short by a
    crash: it is left out (``end`` stops before it). Raises InputError for a file that is not
    a results file (its first line is not the header) or has an unreadable line in the middle.
    """
    path = Path(path)
    out = Scan(path)
    if not path.exists():
        return out
    with path.open("rb") as f:
        offset = 0
        number = 0
        for raw in f:
            number += 1
            complete = raw.endswith(b"\n")
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = None
            if not complete or data is None:
                header_start = raw.startswith(b'{"' + HEADER_KEY.encode())
                # lines are appended whole, so only a last line without its newline can be a
                # write cut short by a crash (on line 1: only the start of our header)
                if not complete and (number > 1 or header_start):
                    break
                if number == 1:
                    raise InputError(
                        f"{path} is not an llmattr results file (its first line is not "
                        f'{{"{HEADER_KEY}": {FORMAT_VERSION}, "settings": ...}}); give another '
                        "output file, or --overwrite to replace it"
                    )
                raise InputError(
                    f"{path}, line {number}: not valid JSON; the results file is damaged "
                    "(only a last line without its newline can have been cut short by a crash)"
                )
            if number == 1:
                if not isinstance(data, dict) or data.get(HEADER_KEY) != FORMAT_VERSION:
                    raise InputError(
                        f"{path} is not an llmattr results file (its first line is not "
                        f'{{"{HEADER_KEY}": {FORMAT_VERSION}, "settings": ...}}); give another '
                        "output file, or --overwrite to replace it"
                    )
                out.settings = dict(data.get("settings") or {})
            else:
                try:
                    out.entries.append(
                        Entry(
                            int(data["index"]),
                            str(data["id"]),
                            "result" in data,
                            offset,
                            len(raw),
                            data.get("prompt", ""),
                            data.get("target"),
                        )
                    )
                except (KeyError, TypeError, ValueError):
                    raise InputError(
                        f'{path}, line {number}: a line without "id" and "index"; not a '
                        "results line"
                    ) from None
            offset += len(raw)
            out.end = offset
        out.size = path.stat().st_size
    return out


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def truncate_to(path: str | Path, end: int) -> bool:
    """Cut ``path`` back to ``end`` bytes (drop a truncated last line); True when it did."""
    path = Path(path)
    if not path.exists() or path.stat().st_size <= end:
        return False
    with path.open("r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return True


class ResultsWriter:
    """Appends whole lines to a results file, each flushed and fsync'ed before the next.

    Writes the header first when the file is empty or missing. Use as a context manager.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.file = self.path.open("ab")
        self.appended: list[Entry] = []
        if self.file.tell() == 0:
            self._write(_dumps(header_line(settings)))

    def _write(self, line: bytes) -> int:
        offset = self.file.tell()
        self.file.write(line)
        self.file.flush()
        os.fsync(self.file.fileno())
        return offset

    def write(self, record: dict[str, Any]) -> None:
        """Append one prompt's line (``id``, ``index``, ... and ``result`` or ``error``)."""
        line = _dumps(record)
        offset = self._write(line)
        self.appended.append(
            Entry(record["index"], record["id"], "result" in record, offset, len(line))
        )

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chosen(scans: list[Scan]) -> list[tuple[Scan, Entry]]:
    """One line per id, in index order: a result beats an error; among results the first
    (a result is never redone), among errors the last (the latest try)."""
    best: dict[str, tuple[Scan, Entry]] = {}
    for s in scans:
        for e in s.entries:
            old = best.get(e.id)
            if old is None or (e.ok and not old[1].ok) or (not e.ok and not old[1].ok):
                best[e.id] = (s, e)
    return sorted(best.values(), key=lambda pair: pair[1].index)


def merge_results(out: str | Path, scans: list[Scan], settings: dict[str, Any]) -> int:
    """Write ``out`` anew from the lines of ``scans`` (the output itself and shards): the
    header, then one line per id in index order (see :func:`_chosen`); written to a temporary
    file, fsync'ed and renamed over ``out``. Returns the number of lines written."""
    out = Path(out)
    tmp = out.with_name(out.name + ".merging")
    chosen = _chosen(scans)
    handles = {s.path: s.path.open("rb") for s in scans if s.entries}
    try:
        with tmp.open("wb") as f:
            f.write(_dumps(header_line(settings)))
            for s, e in chosen:
                source = handles[s.path]
                source.seek(e.offset)
                f.write(source.read(e.length))
            f.flush()
            os.fsync(f.fileno())
    finally:
        for h in handles.values():
            h.close()
    os.replace(tmp, out)
    _fsync_folder(out.parent)
    return len(chosen)
