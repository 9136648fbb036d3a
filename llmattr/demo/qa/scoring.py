"""Exact match and F1 of predicted answers, as SQuAD's evaluation script defines them.

Both compare normalized strings: lower case, punctuation and the articles a / an / the removed,
whitespace collapsed. F1 is over the bags of normalized words.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from .data import QTYPES, QAExample

__all__ = ["exact_match", "f1_score", "normalize_answer", "summarize"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def f1_score(prediction: str, answer: str) -> float:
    """The harmonic mean of word precision and recall between the normalized strings."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return float(pred == gold)  # both empty: a match
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def summarize(examples: Sequence[QAExample], predictions: Sequence[str]) -> dict[str, dict]:
    """Exact match and F1 (fractions in [0, 1]) overall, per question type, seen vs unseen.

    Returns:
        ``{group: {"exact_match": float, "f1": float, "n": int}}`` for the groups ``"all"``,
        ``"who"``, ``"where"``, ``"when"``, ``"what"``, ``"seen"`` and ``"unseen"`` (groups
        without examples are left out).
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    groups: dict[str, list[int]] = {"all": list(range(len(examples)))}
    for qtype in QTYPES:
        groups[qtype] = [i for i, e in enumerate(examples) if e.qtype == qtype]
    groups["seen"] = [i for i, e in enumerate(examples) if not e.unseen]
    groups["unseen"] = [i for i, e in enumerate(examples) if e.unseen]
    out = {}
    for group, idx in groups.items():
        if idx:
            em = sum(exact_match(predictions[i], examples[i].answer) for i in idx) / len(idx)
            f1 = sum(f1_score(predictions[i], examples[i].answer) for i in idx) / len(idx)
            out[group] = {"exact_match": round(em, 4), "f1": round(f1, 4), "n": len(idx)}
    return out
