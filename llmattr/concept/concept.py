"""Concepts, the interpreter base class, and the checks every experimental set goes through.

A :class:`Concept` is a named set of examples (tensors, or texts for a language model) reached
through ``data_iter``; an *experimental set* is a list of two or more concepts whose activations
a classifier separates. Its key (:func:`concepts_to_str`) joins the concept ids with ``-``, as in
Captum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from .._core.errors import InputError, InputTypeError

__all__ = [
    "Concept",
    "ConceptInterpreter",
    "check_examples",
    "check_experimental_sets",
    "concepts_to_str",
]


class Concept:
    """A human-friendly idea ("striped", "polite") given by examples.

    Args:
        id: the concept's unique integer id (the classifier's label).
        name: the concept's name.
        data_iter: an iterable of example batches: a ``DataLoader`` of tensors ``(B, ...)`` for a
            tensor model, or, when :class:`~llmattr.concept.TCAV` has a tokenizer, batches of
            texts (a list of strings, or a ``DataLoader`` over strings). ``None`` for a concept
            only known by id and name (e.g. loaded with a :class:`CAV`).
    """

    def __init__(self, id: int, name: str, data_iter: Iterable[Any] | None) -> None:
        self.id = id
        self.name = name
        self.data_iter = data_iter

    @property
    def identifier(self) -> str:
        """``"<name>-<id>"``, as in Captum."""
        return f"{self.name}-{self.id}"

    def __repr__(self) -> str:
        return f"Concept({self.id!r}, {self.name!r})"


class ConceptInterpreter:
    """Base class of concept-based interpreters: holds the model; subclasses define
    ``interpret(inputs, ...)``.

    Args:
        model: the model to interpret.
    """

    interpret: Callable[..., Any]

    def __init__(self, model: nn.Module) -> None:
        self.model = model


def concepts_to_str(concepts: Sequence[Concept]) -> str:
    """The key of an experimental set: the concept ids joined by ``-`` (``"0-1-2"``)."""
    return "-".join(str(c.id) for c in concepts)


def _known_empty(data_iter: Any) -> bool:
    """True when ``data_iter`` reports a length of 0 (a list, a map-style DataLoader)."""
    try:
        return len(data_iter) == 0
    except TypeError:  # an iterable dataset or a generator: cannot tell before iterating
        return False


def check_examples(concepts: Iterable[Concept]) -> None:
    """An InputError for a concept whose ``data_iter`` is ``None`` or reports no examples."""
    for c in concepts:
        if c.data_iter is None or _known_empty(c.data_iter):
            raise InputError(
                f"{c!r} has no examples (data_iter is "
                f"{'None' if c.data_iter is None else 'empty'}); give it a DataLoader of "
                "example tensors, or a list of texts when TCAV has a tokenizer."
            )


def check_experimental_sets(experimental_sets: Any, need_data: bool = True) -> list[list[Concept]]:
    """Validate ``experimental_sets`` before any forward; return it as lists of concepts.

    Each set holds two or more :class:`Concept` objects; a concept id names one concept only
    (one name); with ``need_data`` each concept has examples.
    """
    if not isinstance(experimental_sets, list | tuple) or not experimental_sets:
        raise InputError(
            "experimental_sets must be a non-empty list of lists of Concept, e.g. "
            "[[stripes, random_0], [stripes, random_1]]."
        )
    names: dict[Any, str] = {}
    out = []
    for i, concepts in enumerate(experimental_sets):
        if isinstance(concepts, Concept) or not isinstance(concepts, list | tuple):
            raise InputTypeError(
                f"experimental_sets[{i}] must be a list of Concept, got "
                f"{type(concepts).__name__}; wrap it: [[concept_a, concept_b]]."
            )
        if len(concepts) < 2:
            raise InputError(
                f"experimental_sets[{i}] has {len(concepts)} concept(s); a CAV separates two or "
                "more concepts: pair the concept with a random or contrasting concept, e.g. "
                "[[stripes, random_0]]."
            )
        for c in concepts:
            if not isinstance(c, Concept):
                raise InputTypeError(
                    f"experimental_sets[{i}] holds a {type(c).__name__}; expected Concept."
                )
            if c.id in names and names[c.id] != c.name:
                raise InputError(
                    f"Concept id {c.id!r} is used with two names ({names[c.id]!r} and "
                    f"{c.name!r}); give each concept its own id (the id is its label and the key "
                    "of its cached activations and CAVs)."
                )
            names[c.id] = c.name
        if need_data:
            check_examples(concepts)
        ids = [c.id for c in concepts]
        if len(set(ids)) != len(ids):
            raise InputError(f"experimental_sets[{i}] repeats a concept id: {ids}.")
        out.append(list(concepts))
    return out
