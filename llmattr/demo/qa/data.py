"""A synthetic SQuAD-style corpus: short passages, questions about one of their facts, exact spans.

Each passage holds 2-5 sentences: the fact a question asks about, distractor facts (the same
kind of fact about other people, or other facts about the same person) and sometimes a filler
sentence. Questions are who / where / when / what, worded with other verbs and in another order
than the passage ("X relocated to Y" is asked as "Which city did X make a new home in?"), so
word overlap alone does not find the answer: the distractor sentences share the question's words
too. Answers are 1-4 words (names, places, years or dates, objects, titles, organizations).

Entity lists come in two disjoint halves: ``"train"`` names, places and things, and
``"unseen"`` ones that only the held-out set uses, so the held-out set measures both new
passages about known names and passages about names never seen in training.

Training passages also use invented names (a few syllables glued together, split into several
word pieces like many unseen names), so that a name is found by its place in the sentence.

Generation is deterministic: :func:`generate` with the same seed gives the same examples.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from .templates import ENTITIES, FACTS, FILLERS, MONTHS

__all__ = ["ENTITIES", "QTYPES", "QAExample", "generate"]

QTYPES = ("who", "where", "when", "what")


@dataclass(frozen=True)
class QAExample:
    """One question about one passage; ``context[answer_start:][: len(answer)] == answer``.

    ``qtype`` is ``"who"``, ``"where"``, ``"when"`` or ``"what"``; ``unseen`` is True when the
    passage's entities come from the lists never used in training.
    """

    question: str
    context: str
    answer: str
    answer_start: int
    qtype: str
    unseen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QAExample:
        return cls(**d)


OPEN, CLOSE = "\x02", "\x03"  # mark the answer while the passage is assembled

# Training also uses invented names (a few syllables), so that the model learns where a name is
# from the sentence, not from the name: unseen names split into several word pieces too.
_INVENTED = ("first", "last", "place", "org_word")
_SYLLABLES = (
    "ka ren tol mi vas lor den bri sa nel tho quin ze ga rud fel mar ost in el bo dra wen hal "
    "ur ves pim cor lan sid go tem ab rik fo ny"
).split()
_UNSEEN_WORDS = {w for lists in ENTITIES.values() for w in lists[1]}


def _invented(rng: random.Random) -> str:
    while True:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if word not in _UNSEEN_WORDS:
            return word


class _Pool:
    """Entities of one half (``"train"`` or ``"unseen"``) drawn without repetition per passage."""

    def __init__(self, rng: random.Random, half: int) -> None:
        self.rng, self.half, self.used = rng, half, set()

    def pick(self, kind: str) -> str:
        while True:
            value = self._draw(kind)
            if value not in self.used:
                self.used.add(value)
                return value

    def _one(self, kind: str) -> str:
        if self.half == 0 and kind in _INVENTED and self.rng.random() < 0.35:
            return _invented(self.rng)
        return self.rng.choice(ENTITIES[kind][self.half]).replace("_", " ")

    def _draw(self, kind: str) -> str:
        if kind in ("p", "q"):
            return f"{self._one('first')} {self._one('last')}"
        if kind == "place":
            return self._one("place")
        if kind == "thing":
            return f"{self._one('adj')} {self._one('object')}"
        if kind == "title":
            title = f"The {self._one('title_adj')} {self._one('title_noun')}"
            return f"{title} {self._one('title_end')}" if self.rng.random() < 0.3 else title
        if kind == "org":
            return f"{self._one('org_word')} {self._one('org_kind')}"
        if kind == "when":
            year = str(self.rng.randint(1820, 2015))
            if self.rng.random() < 0.3:
                month = self.rng.choice(MONTHS)
                return f"{month} {self.rng.randint(1, 28)}, {year}"
            return year
        raise KeyError(kind)


def _article(phrase: str) -> str:
    return "an" if phrase[0].lower() in "aeiou" else "a"


def _render(template: str, values: dict[str, str], answer_slot: str | None) -> str:
    """The template with its slots filled; the answer slot's value wrapped in OPEN/CLOSE."""
    v = {k: (OPEN + x + CLOSE if k == answer_slot else x) for k, x in values.items()}
    when = values.get("when", "")
    prep = "on" if "," in when else "in"
    v["when"] = f"{prep} {v.get('when', '')}"
    v["When"] = v["when"][0].upper() + v["when"][1:]
    if "thing" in values:
        v["a_thing"] = f"{_article(values['thing'])} {v['thing']}"
        v["A_thing"] = v["a_thing"][0].upper() + v["a_thing"][1:]
    return template.format(**v)


def _example(rng: random.Random, half: int) -> QAExample:
    pool = _Pool(rng, half)
    qtype = rng.choice(QTYPES)
    kinds = [k for k, f in FACTS.items() if qtype in f["questions"]]
    kind = rng.choice(kinds)
    people = [pool.pick("p") for _ in range(rng.randint(2, 3))]

    def fact(k: str, subject: str) -> dict[str, str]:
        values = {s: pool.pick(s) for s in FACTS[k]["slots"] if s != "p"}
        return {"p": subject, **values}

    target = fact(kind, people[0])
    facts: list[tuple[str, dict[str, str]]] = [(kind, target)]
    n_sentences = rng.randint(2, 5)
    # a distractor of the same kind about someone else, then other facts about anyone
    facts.append((kind, fact(kind, people[1])))
    taken = {(kind, people[0]), (kind, people[1])}
    while len(facts) < n_sentences:
        if rng.random() < 0.2:
            facts.append(("filler", {"p": rng.choice(people), "place": pool.pick("place")}))
            continue
        k, who = rng.choice(list(FACTS)), rng.choice(people)
        if (k, who) not in taken:
            taken.add((k, who))
            facts.append((k, fact(k, who)))
    order = list(range(len(facts)))
    rng.shuffle(order)

    slot, q_templates = FACTS[kind]["questions"][qtype]
    sentences = []
    for i in order:
        k, values = facts[i]
        if k == "filler":
            sentences.append(_render(rng.choice(FILLERS), values, None))
        else:
            answer_slot = slot if i == 0 else None
            sentences.append(_render(rng.choice(FACTS[k]["sentences"]), values, answer_slot))
    marked = " ".join(sentences)
    start = marked.index(OPEN)
    answer = target[slot]
    context = marked.replace(OPEN, "").replace(CLOSE, "")
    question = _render(rng.choice(q_templates), target, None)
    if context[start : start + len(answer)] != answer:  # pragma: no cover - a template bug
        raise AssertionError(f"answer {answer!r} not at {start} in {context!r}")
    return QAExample(question, context, answer, start, qtype, unseen=half == 1)


def generate(n: int, seed: int, unseen: bool = False) -> list[QAExample]:
    """``n`` examples from a ``random.Random(seed)``: the same arguments, the same examples.

    Args:
        n: how many examples.
        seed: the generator's seed (training and held-out sets use different seeds).
        unseen: draw every entity from the lists the training set never uses.

    Returns:
        a list of :class:`QAExample`, question types drawn uniformly.
    """
    rng = random.Random(seed)
    return [_example(rng, 1 if unseen else 0) for _ in range(n)]
