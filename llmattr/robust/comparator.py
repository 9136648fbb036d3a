"""AttackComparator: a model's metric on original inputs and under each of several attacks.

For every batch, ``evaluate`` runs the model on the inputs and on each attack's output (each
attack repeated ``num_attempts`` times), applies the metric, and returns the batch's results: the
mean for one attempt, and the mean, min and max over attempts otherwise. ``summary`` keeps running
means of those results over all batches since construction or ``reset``.
"""

from __future__ import annotations

import warnings
from collections import namedtuple
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .._core.inputs import format_additional_args
from .._core.perturbation import check_positive_int
from ..attr.stat import Max, Mean, Min
from ..attr.summarizer import Summarizer
from .perturbation import forward_each

__all__ = ["ORIGINAL_KEY", "AttackComparator", "AttackInfo", "agg_metric"]

ORIGINAL_KEY = "Original"


class AttackInfo(NamedTuple):
    """An attack registered with :meth:`AttackComparator.add_attack`."""

    attack_fn: Callable[..., Any]
    name: str
    num_attempts: int
    apply_before_preproc: bool
    attack_kwargs: dict[str, Any]
    additional_args: list[str]


def agg_metric(inp: Any) -> Any:
    """A batch's metric reduced for the running summary: tensors averaged over dimension 0,
    tuples element by element, numbers as they are."""
    if isinstance(inp, Tensor):
        return inp.mean(dim=0)
    if isinstance(inp, tuple):
        return tuple(agg_metric(elem) for elem in inp)
    return inp


class AttackComparator:
    """Compare a model's metric on original and attacked inputs (Captum's ``AttackComparator``).

    Args:
        forward_func: the model; called as ``forward_func(x, *additional_forward_args)`` with
            ``x`` the (pre-processed) input, a tuple input passed as one argument.
        metric: ``metric(model_out, **kwargs)`` -> a float, a tensor (first dimension the batch,
            averaged in summaries) or a tuple / named tuple of them; ``kwargs`` are those given
            to :meth:`evaluate`.
        preproc_fn: applied to the inputs (and to the outputs of attacks applied before it)
            before the model.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        metric: Callable[..., Any],
        preproc_fn: Callable[..., Any] | None = None,
    ) -> None:
        if not callable(forward_func) or not callable(metric):
            raise InputTypeError("forward_func and metric must be callable.")
        self.forward_func = forward_func
        self.metric = metric
        self.preproc_fn = preproc_fn
        self.attacks: dict[str, AttackInfo] = {}
        self.summary_results: dict[str, Summarizer] = {}
        self.metric_aggregator = agg_metric
        self.batch_stats = [Mean, Min, Max]
        self.aggregate_stats = [Mean]
        self.out_format: Any = None

    def add_attack(
        self,
        attack: Callable[..., Any],
        name: str | None = None,
        num_attempts: int = 1,
        apply_before_preproc: bool = True,
        attack_kwargs: dict[str, Any] | None = None,
        additional_attack_arg_names: list[str] | None = None,
    ) -> None:
        """Register an attack to run in :meth:`evaluate`.

        Args:
            attack: a :class:`Perturbation` (FGSM, PGD, ...) or any function of the inputs
                (e.g. a torchvision transform).
            name: key of its results; the attack's class name by default. Must be unique.
            num_attempts: how often to repeat it (> 1 for random attacks: min, max and mean
                over attempts are reported).
            apply_before_preproc: attack the raw inputs (True) or the pre-processed ones.
            attack_kwargs: keyword arguments for every call of the attack.
            additional_attack_arg_names: names of :meth:`evaluate` keyword arguments passed to
                the attack too (per-batch values such as ``target``).

        Raises:
            RuntimeError: the name is taken (as Captum). InputError: ``num_attempts < 1`` or
            the name ``"Original"``, which holds the unattacked results.
        """
        if not callable(attack):
            raise InputTypeError(f"attack must be callable, got {type(attack).__name__}.")
        check_positive_int(num_attempts, "num_attempts")
        if name is None:
            name = attack.__class__.__name__
        if name == ORIGINAL_KEY:
            raise InputError(f"{ORIGINAL_KEY!r} names the unattacked results; choose another name.")
        if name in self.attacks:
            raise RuntimeError(f"Cannot add attack with same name as existing attack {name}")
        self.attacks[name] = AttackInfo(
            attack_fn=attack,
            name=name,
            num_attempts=num_attempts,
            apply_before_preproc=apply_before_preproc,
            attack_kwargs=dict(attack_kwargs or {}),
            additional_args=list(additional_attack_arg_names or []),
        )

    def _format_summary(self, summary: Any) -> dict[str, Any]:
        """A Summarizer's summary as one dict; for tuple metrics, ``{stat: tuple}`` (a named tuple
        when the metric returns one) instead of a list of dicts."""
        if isinstance(summary, dict):
            return summary
        out: dict[str, Any] = {}
        for key in summary[0]:
            values = tuple(s[key] for s in summary)
            out[key] = self.out_format(*values) if self.out_format else values
        return out

    def _update_out_format(self, out_metric: Any) -> None:
        if not self.out_format and isinstance(out_metric, tuple) and hasattr(out_metric, "_fields"):
            self.out_format = namedtuple(type(out_metric).__name__, out_metric._fields)  # type: ignore[misc]

    def _attacked(self, attack: AttackInfo, inputs: Any, preproc_input: Any, kw: dict) -> Any:
        if attack.apply_before_preproc:
            attacked = attack.attack_fn(inputs, **kw, **attack.attack_kwargs)
            return self.preproc_fn(attacked) if self.preproc_fn else attacked
        return attack.attack_fn(preproc_input, **kw, **attack.attack_kwargs)

    def evaluate(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The metric on ``inputs`` and on every registered attack's output, for one batch.

        Args:
            inputs: a tensor, tuple of tensors, or any raw input (text, PIL image) that
                ``preproc_fn`` (or the model) accepts.
            additional_forward_args: extra arguments of ``forward_func`` after the input;
                tensors whose first dimension is the batch are repeated when inputs are grouped.
            perturbations_per_eval: how many of (original, attack attempts) share one forward,
                concatenated along dimension 0. Inputs that cannot be concatenated (text,
                images) are evaluated one at a time.
            kwargs: passed to the metric, and to attacks that named them in
                ``additional_attack_arg_names``.

        Returns:
            ``{"Original": metric, name: {"mean": metric}}`` with ``"max"`` and ``"min"`` too
            for attacks with ``num_attempts > 1``.
        """
        check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        args = format_additional_args(additional_forward_args)
        preproc_input = self.preproc_fn(inputs) if self.preproc_fn is not None else inputs
        batch_summarizers: dict[str, Summarizer] = {ORIGINAL_KEY: Summarizer([Mean()])}
        if ORIGINAL_KEY not in self.summary_results:
            self.summary_results[ORIGINAL_KEY] = Summarizer([s() for s in self.aggregate_stats])

        pending: list[tuple[str, Any]] = []

        def flush() -> None:
            items = [item for _, item in pending]
            for (key, _), out in zip(pending, forward_each(self.forward_func, items, args)):
                out_metric = self.metric(out, **kwargs)
                self._update_out_format(out_metric)
                batch_summarizers[key].update(out_metric)
            pending.clear()

        def add(key: str, item: Any) -> None:
            pending.append((key, item))
            if len(pending) == perturbations_per_eval:
                flush()

        add(ORIGINAL_KEY, preproc_input)
        for attack in self.attacks.values():
            stats = [s() for s in self.batch_stats] if attack.num_attempts > 1 else [Mean()]
            batch_summarizers[attack.name] = Summarizer(stats)
            kw: dict[str, Any] = {}
            for key in attack.additional_args:
                if key not in kwargs:
                    warnings.warn(
                        f"Additional sample arg {key} not provided for {attack.name}", stacklevel=2
                    )
                else:
                    kw[key] = kwargs[key]
            for _ in range(attack.num_attempts):
                add(attack.name, self._attacked(attack, inputs, preproc_input, kw))
        if pending:
            flush()
        return self._parse_and_update_results(batch_summarizers)

    def _parse_and_update_results(self, batch_summarizers: dict[str, Summarizer]) -> dict[str, Any]:
        results: dict[str, Any] = {
            ORIGINAL_KEY: self._format_summary(batch_summarizers[ORIGINAL_KEY].summary)["mean"]
        }
        self.summary_results[ORIGINAL_KEY].update(self.metric_aggregator(results[ORIGINAL_KEY]))
        for attack in self.attacks.values():
            attack_results = self._format_summary(batch_summarizers[attack.name].summary)
            results[attack.name] = attack_results
            for key, value in attack_results.items():
                several = len(attack_results) > 1
                summary_key = f"{attack.name} {key.title()} Attempt" if several else attack.name
                if summary_key not in self.summary_results:
                    self.summary_results[summary_key] = Summarizer(
                        [s() for s in self.aggregate_stats]
                    )
                self.summary_results[summary_key].update(self.metric_aggregator(value))
        return results

    def summary(self) -> dict[str, dict[str, Any]]:
        """Running means over every batch evaluated since construction or :meth:`reset`.

        Returns:
            ``{key: {"mean": value}}``, one key per attack (``"<name> Mean Attempt"``,
            ``"<name> Min Attempt"`` and ``"<name> Max Attempt"`` for attacks with several
            attempts) and ``"Original"``.
        """
        return {
            key: self._format_summary(summ.summary) for key, summ in self.summary_results.items()
        }

    def reset(self) -> None:
        """Forget the running summaries (registered attacks stay)."""
        self.summary_results = {}
