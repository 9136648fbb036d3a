"""The demo model's tasks: synthetic prompts whose decisive words are known by construction.

Every prompt is plain words separated by single spaces, and the demo tokenizer has one token per
word, so word ``i`` of ``prompt.split()`` is feature ``i`` of ``words(prompt, tok)`` and of
``TextTokenInput(prompt, tok, skip_tokens=[tok.bos_token_id])`` alike. A plain
``TextTokenInput(prompt, tok)`` keeps the BOS token the tokenizer adds as feature 0 (as Captum
does), so there word ``i`` is feature ``i + 1``; the indices in :class:`Example` count words.

* ``recall`` — key–value recall: ``the key of box seven is red . the key of box two is blue .
  the key of box seven is`` → ``red``. Decisive: the value of the queried box (``red``).
* ``copy`` — continue a copied list: ``copy : cat dog sun fish ; copy : cat dog`` → ``sun``
  (and then ``fish``: the model copies to the end of the list and stops). Decisive: the list
  word being copied (``sun`` in the first list).
* ``compare`` — a comparison of number words, after zero to two true statements:
  ``six is bigger than two . which is bigger : five or three ?`` → ``five``. Decisive: the
  number chosen (``five``); the relation and the other number are relevant.

Every prompt ends where its answer begins, and the answer ends the text (the model then writes
``<eos>``): nothing inside a prompt looks like an answered question, or the model could not tell
whether to stop after answering.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["COLORS", "NOUNS", "NUMBERS", "TASKS", "Example", "make_example"]

TASKS = ("recall", "copy", "compare")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
NOUNS = ("cat", "dog", "sun", "fish", "bird", "tree", "car", "book", "cup", "hat", "moon", "star")


@dataclass(frozen=True)
class Example:
    """One prompt of a task and its answer.

    Attributes:
        task: ``"recall"``, ``"copy"`` or ``"compare"``.
        prompt: the prompt (words separated by single spaces).
        answer: the word the model should generate next (for ``copy``, the first of the words
            that complete the list).
        decisive: indices into ``prompt.split()`` of the word(s) that decide the answer.
        relevant: indices of further words the answer depends on (the queried box, twice; the
            word the copy resumes after, twice; the relation and the other number).
    """

    task: str
    prompt: str
    answer: str
    decisive: list[int]
    relevant: list[int] = field(default_factory=list)

    @property
    def continuation(self) -> str:
        """What the model writes after the prompt, before ``<eos>``: the answer, and for a
        copy the rest of the list.

        A copy continues to the end of the list: were it to stop after one word, the model could
        not tell where a prompt ends and its own answer begins (``copy : a b c ; copy : a b`` is
        the prompt of ``c`` and also ``copy : a b c ; copy : a`` with its answer).
        """
        if self.task != "copy":
            return self.answer
        words = self.prompt.split()
        end = words.index(";")
        items, copied = words[2:end], len(words) - end - 3
        return " ".join(items[copied:])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        return cls(
            data["task"],
            data["prompt"],
            data["answer"],
            list(data["decisive"]),
            list(data.get("relevant", [])),
        )


def _recall(rng: random.Random) -> Example:
    n = rng.randint(2, 4)
    boxes = rng.sample(NUMBERS, n)
    colors = rng.sample(COLORS, n)
    asked = rng.randrange(n)
    words: list[str] = []
    decisive = relevant = -1
    for i, (box, color) in enumerate(zip(boxes, colors)):
        if i == asked:
            relevant, decisive = len(words) + 4, len(words) + 6
        words += ["the", "key", "of", "box", box, "is", color, "."]
    query_box = len(words) + 4
    words += ["the", "key", "of", "box", boxes[asked], "is"]
    return Example("recall", " ".join(words), colors[asked], [decisive], [relevant, query_box])


def _copy(rng: random.Random) -> Example:
    n = rng.randint(3, 6)
    items = rng.sample(NOUNS, n)
    k = rng.randint(1, n - 1)  # words already copied
    words = ["copy", ":", *items, ";", "copy", ":", *items[:k]]
    # the copied word sits at 2 + k in the first list; it follows item k-1 in both lists
    return Example("copy", " ".join(words), items[k], [2 + k], [2 + k - 1, len(words) - 1])


def _question(rng: random.Random) -> tuple[list[str], str, int]:
    """``which is bigger : five or three ?``, its answer and the answer's index in the words."""
    a, b = rng.sample(range(len(NUMBERS)), 2)
    relation = rng.choice(("bigger", "smaller"))
    first = (a > b) == (relation == "bigger")
    words = ["which", "is", relation, ":", NUMBERS[a], "or", NUMBERS[b], "?"]
    return words, NUMBERS[a] if first else NUMBERS[b], 4 if first else 6


def _statement(rng: random.Random) -> list[str]:
    """A true comparison, ``five is bigger than one .``: context whose numbers do not matter."""
    a, b = rng.sample(range(len(NUMBERS)), 2)
    return [NUMBERS[a], "is", "bigger" if a > b else "smaller", "than", NUMBERS[b], "."]


def _compare(rng: random.Random) -> Example:
    words: list[str] = []
    for _ in range(rng.randint(0, 2)):
        words += _statement(rng)
    question, answer, at = _question(rng)
    start = len(words)
    words += question
    other = start + (10 - at)  # the number not chosen (4 <-> 6)
    return Example("compare", " ".join(words), answer, [start + at], [start + 2, other])


_MAKERS = {"recall": _recall, "copy": _copy, "compare": _compare}


def make_example(task: str, rng: random.Random) -> Example:
    """Draw one example of ``task`` (one of :data:`TASKS`) with ``rng``."""
    try:
        maker = _MAKERS[task]
    except KeyError:
        raise ValueError(f"Unknown task {task!r}; the tasks are {list(TASKS)}.") from None
    return maker(rng)
