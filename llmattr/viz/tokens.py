"""Readable token labels: tokenizer pieces as the text a reader expects.

Results keep the tokenizer's raw pieces (``Ġred``, ``▁red``, ``##s``, ``Ċ``), as Captum's do; the
views (HTML reports, plots) show them through :func:`display_token` and :func:`tokens_to_text`:

* byte-level BPE (GPT-2, RoBERTa, Llama 3, ...) maps every byte to a printable character
  (``Ġ`` is a space, ``Ċ`` a newline); the mapping is inverted exactly, UTF-8 included;
* SentencePiece (Llama 2, T5, ...) marks a leading space with ``▁`` and spells raw bytes as
  ``<0x0A>``;
* WordPiece (BERT) marks a word's continuation with ``##``;
* pieces without any marker (a word-level tokenizer's, or labels written by hand) are shown
  as given.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["display_token", "display_tokens", "tokens_to_text"]

_SP_SPACE = "\u2581"  # ▁
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SP_BYTES = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")  # a run of byte pieces: one UTF-8 text
# what whitespace looks like on a chip or an axis label
_VISIBLE = {"\n": "⏎", "\r": "⏎", "\t": "⇥", " ": "␣"}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte → character table: printable Latin-1 bytes stand
    for themselves, the other 68 bytes (controls, space, ...) for ``chr(256 + i)`` in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _scheme(tokens: Sequence[str]) -> str:
    """``"byte"``, ``"sentencepiece"``, ``"wordpiece"`` or ``"words"``, from the markers the
    pieces carry: a piece starting with the space marker ``Ġ`` (or holding the newline marker
    ``Ċ``) while every character is one of byte-level BPE's 256; ``▁`` or ``<0xNN>`` pieces;
    ``##`` continuations. Text that happens to use those letters (a Maltese ``Ġermanja``) is
    read as byte-level: pass such labels with another scheme's markers, or none."""
    text = "".join(tokens)
    decoder = _byte_decoder()
    marked = any(t.startswith("Ġ") or "Ċ" in t for t in tokens)
    if marked and all(c in decoder for c in text):
        return "byte"
    if _SP_SPACE in text or any(_SP_BYTE.fullmatch(t) for t in tokens):
        return "sentencepiece"
    if any(t.startswith("##") and len(t) > 2 for t in tokens):
        return "wordpiece"
    return "words"


def _byte_text(pieces: str, errors: str = "strict") -> str | None:
    decoder = _byte_decoder()
    try:
        return bytes(decoder[c] for c in pieces).decode("utf-8", errors=errors)
    except (KeyError, UnicodeDecodeError):
        return None  # not byte-level, or half of a multi-byte character


def _sentencepiece_text(pieces: str, errors: str = "strict") -> str | None:
    """``▁`` as a space and each run of byte pieces (``<0xE6><0x9D><0xB1>``) as the UTF-8 text
    it encodes; None when a run is not whole UTF-8 and ``errors`` is ``"strict"``."""

    def run(match: re.Match[str]) -> str:
        data = bytes(int(b, 16) for b in _SP_BYTE.findall(match.group(0)))
        return data.decode("utf-8", errors=errors)

    try:
        return _SP_BYTES.sub(run, pieces).replace(_SP_SPACE, " ")
    except UnicodeDecodeError:
        return None  # a part of a multi-byte character


def tokens_to_text(tokens: Sequence[str]) -> str:
    """The text the pieces spell: ``["Ġthe", "Ġcat"]`` → ``" the cat"``, ``["▁the", "▁cat"]``
    → ``" the cat"``, ``["the", "cat", "##s"]`` → ``"the cats"``; pieces without markers (a
    word-level vocabulary) are joined with spaces."""
    tokens = [str(t) for t in tokens]
    scheme = _scheme(tokens)
    if scheme == "byte":
        return _byte_text("".join(tokens), errors="replace") or ""
    if scheme == "sentencepiece":
        return _sentencepiece_text("".join(tokens), errors="replace") or ""
    words: list[str] = []
    for t in tokens:
        if scheme == "wordpiece" and t.startswith("##") and len(t) > 2 and words:
            words[-1] += t[2:]
        else:
            words.append(t)
    return " ".join(words)


def display_token(token: str) -> str:
    """One piece as a label: its text without the leading space a marker stands for, other
    whitespace made visible (``Ġred`` → ``red``, ``Ċ`` → ``⏎``, a lone space → ``␣``). Read
    alone; :func:`display_tokens` reads a sequence's markers once for all its pieces."""
    return _display(str(token), _scheme([str(token)]))


def display_tokens(tokens: Sequence[str]) -> list[str]:
    """:func:`display_token` of every piece, the markers read the same way for all."""
    tokens = [str(t) for t in tokens]
    scheme = _scheme(tokens)
    return [_display(t, scheme) for t in tokens]


def _display(token: str, scheme: str) -> str:
    if scheme == "words":
        return token  # no markers to read: the caller's labels, shown as given
    text: str | None = token
    if scheme == "byte":
        text = _byte_text(token)
        if text is None:
            return token  # a part of a multi-byte character: the raw piece says more
    elif scheme == "sentencepiece":
        text = _sentencepiece_text(token)
        if text is None:
            return token
    elif scheme == "wordpiece" and token.startswith("##") and len(token) > 2:
        text = token[2:]
    assert text is not None
    stripped = text.strip(" ")
    if not stripped:
        return "␣" * len(text) if text else token
    return "".join(_VISIBLE.get(c, c) if c in "\n\r\t" else c for c in stripped)
