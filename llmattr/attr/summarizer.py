"""Summaries of attributions over many batches: :class:`Summarizer` and :class:`ClassSummarizer`.

A summarizer keeps running statistics (:mod:`llmattr.attr.stat`) of the tensors it is updated
with, one set per input when updates are tuples::

    summ = Summarizer([Mean(), StdDev()])
    for batch in loader:
        summ.update(ig.attribute(batch, target=0).mean(0))
    summ.summary["mean"], summ.summary["std_dev"]

The statistics a list needs are added (``StdDev`` needs ``Var``, which needs ``MSE``, ``Mean`` and
``Count``) and updated in dependency order; only the requested ones appear in the summary.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Hashable
from typing import Any, TypeAlias

import torch
from torch import Tensor

from .._core.errors import InputError
from .stat import MSE, Count, Mean, Stat, StatValue, StdDev, Var

__all__ = ["ClassSummarizer", "Summarizer", "SummarizerSingleTensor"]

Summary: TypeAlias = dict[str, StatValue | None]

# update order: a statistic comes after everything it reads (Count → Mean → MSE → Var → StdDev);
# the rest (Min, Max, Sum, user-defined statistics) read nothing built in and come last
_RANK: dict[type[Stat], int] = {Count: 0, Mean: 1, MSE: 2, Var: 3, StdDev: 4}
_AFTER_ALL = 5
_CHAIN: tuple[type[Stat], ...] = (Var, MSE, Mean, Count)  # each needs those after it


def _with_dependencies(stats: list[Stat]) -> tuple[list[Stat], list[int]]:
    """All statistics to update, in update order, and the positions of the requested ones.

    Duplicates (equal class and parameters) are merged; dependencies are added with default
    parameters, except that ``StdDev(order=k)`` gets ``Var(order=k)``.
    """
    requested: list[Stat] = list(dict.fromkeys(stats))  # dedupe, keep the user's order
    needed: list[Stat] = list(requested)
    for stat in requested:
        if type(stat) is StdDev:
            needed.append(Var(order=stat.order))
    present = {type(s) for s in needed}
    for i, kind in enumerate(_CHAIN):
        if kind in present:
            needed.extend(dep() for dep in _CHAIN[i:])
            break
    ordered = sorted(dict.fromkeys(needed), key=lambda s: _RANK.get(type(s), _AFTER_ALL))
    wanted = set(requested)
    return ordered, [i for i, s in enumerate(ordered) if s in wanted]


def _as_update_tuple(x: Any) -> tuple[Any, ...]:
    if isinstance(x, tuple):
        return x
    if isinstance(x, Tensor | float | int) and not isinstance(x, bool):
        return (x,)
    raise InputError(
        f"Summarizer.update takes a tensor, a float or a tuple of them, got {type(x).__name__}."
    )


class SummarizerSingleTensor:
    """The statistics of one stream of tensors (one input). Prefer :class:`Summarizer`.

    Args:
        stats: every statistic to update, in update order (see :class:`Summarizer`); they become
            owned by this object.
        summary_stats_indices: positions in ``stats`` of the statistics shown in the summary.
    """

    def __init__(self, stats: list[Stat], summary_stats_indices: list[int]) -> None:
        self._stats = stats
        self._stat_to_stat: dict[Stat, Stat] = {s: s for s in stats}
        self._summary_stats = [stats[i] for i in summary_stats_indices]
        for stat in stats:
            stat._other_stats = self
            stat.init()

    def update(self, x: Tensor) -> None:
        """Add one tensor to every statistic."""
        for stat in self._stats:
            stat.update(x)

    def get(self, stat: Stat) -> Stat | None:
        """This summarizer's statistic equal to ``stat`` (same class and parameters), or None."""
        return self._stat_to_stat.get(stat)

    @property
    def summary(self) -> Summary:
        """``{stat.name: stat.get()}`` for the requested statistics."""
        return {stat.name: stat.get() for stat in self._summary_stats}


class Summarizer:
    """Running statistics of a tensor, or of each tensor of a tuple, over many updates.

    Args:
        stats: the statistics to report, e.g. ``[Mean(), Var(order=1)]`` or ``CommonStats()``.
    """

    def __init__(self, stats: list[Stat]) -> None:
        self._summarizers: list[SummarizerSingleTensor] = []
        self._is_inputs_tuple: bool | None = None
        self._stats, self._summary_stats_indicies = _with_dependencies(list(stats))

    def _copy_stats(self) -> list[Stat]:
        return copy.deepcopy(self._stats)

    def update(self, x: float | Tensor | tuple[float | Tensor, ...]) -> None:
        """Add one value per input: a tensor (or float), or a tuple of them, always in the same
        form (statistics are elementwise, so each input keeps the shape of its updates)."""
        is_tuple = isinstance(x, tuple)
        if self._is_inputs_tuple is None:
            self._is_inputs_tuple = is_tuple
        elif self._is_inputs_tuple != is_tuple:
            first = "tuples" if self._is_inputs_tuple else "single tensors"
            raise InputError(
                f"This summarizer was first updated with {first}; pass every update in the "
                "same form (a tuple per update, or a single tensor per update)."
            )
        for i, value in enumerate(_as_update_tuple(x)):
            if i >= len(self._summarizers):
                # every input gets its own copies: statistics hold per-input state and shapes
                self._summarizers.append(
                    SummarizerSingleTensor(self._copy_stats(), self._summary_stats_indicies)
                )
            if not isinstance(value, Tensor):
                value = torch.tensor(value, dtype=torch.float)
            self._summarizers[i].update(value)

    @property
    def summary(self) -> Summary | list[Summary] | None:
        """``{name: value}`` per statistic (a list of them, one per input, for tuple updates);
        None before the first update."""
        if not self._summarizers:
            return None
        summaries = [s.summary for s in self._summarizers]
        return summaries if self._is_inputs_tuple else summaries[0]


def _label_key(label: Any) -> Hashable:
    """A dict key for a label: tensors become Python numbers, so equal labels share a class."""
    if isinstance(label, Tensor):
        if label.numel() != 1:
            raise InputError(
                f"A label tensor must hold one value per example, got shape {tuple(label.shape)}."
            )
        return label.item()
    return label


class ClassSummarizer(Summarizer):
    """A :class:`Summarizer` over all examples plus one per class label.

    Args:
        stats: the statistics to report.
    """

    def __init__(self, stats: list[Stat]) -> None:
        super().__init__(stats)
        self.summaries: defaultdict[Hashable, Summarizer] = defaultdict(
            lambda: Summarizer(stats=stats)
        )

    def update(  # type: ignore[override]
        self, x: Tensor | tuple[Tensor, ...], labels: Any = None
    ) -> None:
        """Add a batch.

        Args:
            x: a ``(batch, ...)`` tensor or a tuple of them.
            labels: None (update only the overall summary, with ``x`` as one update); one label
                for the whole batch (any hashable value, or a one-element list or tensor); or one
                label per example (a list or a ``(batch,)`` tensor). With labels, every example
                is one update of its class's summary and of the overall summary, and summaries
                are lists (one entry per input), as in Captum. Tensor labels are keyed by their
                Python value (``tensor(3)`` → ``3``).
        """
        if labels is None:
            super().update(x)
            return
        xs = x if isinstance(x, tuple) else (x,)
        for i, t in enumerate(xs):
            if not isinstance(t, Tensor):
                raise InputError(f"x[{i}] is a {type(t).__name__}; ClassSummarizer needs tensors.")
        if isinstance(labels, Tensor):
            keys = [_label_key(v) for v in labels.reshape(-1)]
        elif isinstance(labels, list):
            keys = [_label_key(v) for v in labels]
        else:
            keys = [_label_key(labels)]
        if len(keys) > 1:
            for t in xs:
                if t.shape[0] != len(keys):
                    raise InputError(
                        f"Got {len(keys)} labels for a batch of {t.shape[0]} examples; pass one "
                        "label for the whole batch or one per example."
                    )
        for i in range(xs[0].shape[0]):
            key = keys[0] if len(keys) == 1 else keys[i]
            self.summaries[key].update(tuple(t[i] for t in xs))
            super().update(tuple(t[i].clone() for t in xs))

    @property
    def class_summaries(self) -> dict[Hashable, Summary | list[Summary] | None]:
        """The summary of each class seen, keyed by label."""
        return {key: value.summary for key, value in self.summaries.items()}
