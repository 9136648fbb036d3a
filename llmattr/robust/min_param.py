"""MinParamPerturbation: the smallest value of an attack's parameter that changes the answer.

An attack parametrized by one number (a noise level, a rotation angle, the number of top-ranked
words removed from a prompt) is applied at increasing values; the first value at which the model
stops being "correct" (``correct_fn``) is returned with the perturbed input. ``mode="linear"``
tries ``arg_min, arg_min + arg_step, ...`` in order; ``mode="binary"`` bisects the range, which is
exact when success is monotone in the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any, TypeAlias

import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .._core.inputs import format_additional_args
from .._core.perturbation import check_positive_int
from .perturbation import forward_each

__all__ = ["MinParamPerturbation", "default_correct_fn", "drange"]

MODES = ("LINEAR", "BINARY")


class MinParamPerturbationMode(Enum):
    """The search of :class:`MinParamPerturbation` (Captum's enum: ``.mode`` holds one)."""

    LINEAR = 0
    BINARY = 1


# run(value) -> (model input, attack output); check(model inputs) -> index of the first failure
Runner: TypeAlias = Callable[[float], tuple[Any, Any]]
Checker: TypeAlias = Callable[[list[Any]], int | None]


def drange(min_val: float, max_val: float, step_val: float) -> Iterator[float]:
    """``min_val, min_val + step_val, ...`` while below ``max_val`` (accumulated as Captum does,
    so float steps give Captum's exact values)."""
    curr = min_val
    while curr < max_val:
        yield curr
        curr += step_val


def default_correct_fn(model_out: Tensor, target: Any) -> bool:
    """True when every example's argmax over the ``(N, n_classes)`` output is its target."""
    if not isinstance(model_out, Tensor) or model_out.ndim != 2:
        raise InputError(
            "The default correct_fn needs the model to return a 2-D (N, n_classes) tensor; pass "
            "correct_fn=lambda model_out, **kw: <bool> for other outputs."
        )
    target_tensor = target if isinstance(target, Tensor) else torch.tensor(target)
    return bool(torch.all(torch.argmax(model_out, dim=1) == target_tensor.to(model_out.device)))


def _number(value: Any, name: str) -> float | int:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputTypeError(f"{name} must be a finite int or float, got {value!r}.")
    return value


class MinParamPerturbation:
    """Smallest attack parameter that makes the model incorrect (Captum's class).

    Args:
        forward_func: the model; called as ``forward_func(x, *additional_forward_args)``.
        attack: a :class:`Perturbation` or any callable ``attack(inputs, **attack_kwargs,
            **{arg_name: value})``; ``inputs`` may be anything ``preproc_fn`` / the model accept
            (tensors, text, images).
        arg_name: the attack's keyword argument to search over.
        arg_min: first value tried.
        arg_max: end of the range (excluded).
        arg_step: spacing of the values tried (> 0).
        mode: ``"linear"`` (in order, first failure) or ``"binary"`` (bisection).
        num_attempts: attacks per value (> 1 for random attacks: any failing attempt counts).
        preproc_fn: applied to inputs before the model.
        apply_before_preproc: attack the raw inputs (True) or the pre-processed ones (False).
        correct_fn: ``correct_fn(model_out, **kwargs) -> bool``; by default every example's
            argmax equals ``target``.

    Raises:
        InputError: ``arg_step <= 0``, ``arg_min >= arg_max``, an unknown mode,
            ``num_attempts < 1``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        attack: Callable[..., Any],
        arg_name: str,
        arg_min: int | float,
        arg_max: int | float,
        arg_step: int | float,
        mode: str = "linear",
        num_attempts: int = 1,
        preproc_fn: Callable[..., Any] | None = None,
        apply_before_preproc: bool = False,
        correct_fn: Callable[..., bool] | None = None,
    ) -> None:
        if not callable(forward_func) or not callable(attack):
            raise InputTypeError("forward_func and attack must be callable.")
        if not isinstance(arg_name, str):
            raise InputTypeError(f"arg_name must be a str, got {type(arg_name).__name__}.")
        arg_min = _number(arg_min, "arg_min")
        arg_max = _number(arg_max, "arg_max")
        arg_step = _number(arg_step, "arg_step")
        if arg_step <= 0:
            raise InputError(f"arg_step must be > 0, got {arg_step}.")
        if arg_min >= arg_max:
            raise InputError(
                f"arg_min ({arg_min}) must be below arg_max ({arg_max}); arg_max is excluded from "
                "the values tried."
            )
        if not isinstance(mode, str) or mode.upper() not in MODES:
            raise InputError(f"mode must be 'linear' or 'binary', got {mode!r}.")
        self.forward_func = forward_func
        self.attack = attack
        self.arg_name = arg_name
        self.arg_min = arg_min
        self.arg_max = arg_max
        self.arg_step = arg_step
        self.num_attempts = check_positive_int(num_attempts, "num_attempts")
        self.preproc_fn = preproc_fn
        self.apply_before_preproc = apply_before_preproc
        self.correct_fn = correct_fn if correct_fn is not None else default_correct_fn
        self.mode = MinParamPerturbationMode[mode.upper()]

    def _first_incorrect(self, items: list[Any], args: tuple[Any, ...], kwargs: dict) -> int | None:
        """Index of the first item the model gets wrong (one forward for the group), or None."""
        for i, out in enumerate(forward_each(self.forward_func, items, args)):
            if not self.correct_fn(out, **kwargs):
                return i
        return None

    def _apply_attack(
        self, inputs: Any, preproc_input: Any, attack_kwargs: dict[str, Any], param: float
    ) -> tuple[Any, Any]:
        """``(model input, attack output)`` for one attack at ``param``."""
        if self.apply_before_preproc:
            attacked = self.attack(inputs, **attack_kwargs, **{self.arg_name: param})
            return (self.preproc_fn(attacked) if self.preproc_fn else attacked), attacked
        attacked = self.attack(preproc_input, **attack_kwargs, **{self.arg_name: param})
        return attacked, attacked

    def _linear_search(self, run: Runner, check: Checker, ppe: int) -> tuple[Any, float | None]:
        """Values in order, ``ppe`` attacked inputs per forward; the first failure wins."""
        group: list[tuple[Any, Any, float]] = []
        for param in drange(self.arg_min, self.arg_max, self.arg_step):
            for _ in range(self.num_attempts):
                group.append((*run(param), param))
                if len(group) == ppe:
                    hit = check([g[0] for g in group])
                    if hit is not None:
                        return group[hit][1], group[hit][2]
                    group = []
        if group:
            hit = check([g[0] for g in group])
            if hit is not None:
                return group[hit][1], group[hit][2]
        return None, None

    def _binary_search(self, run: Runner, check: Checker, ppe: int) -> tuple[Any, float | None]:
        """Bisection of ``[arg_min, arg_max)`` on the ``arg_step`` grid (Captum's steps)."""
        lo, hi = self.arg_min, self.arg_max
        best, best_input = None, None
        while hi > lo:
            # the midpoint on the grid arg_min + k * arg_step (at least one step above lo when
            # there is room), in Captum's arithmetic so float grids give the same values
            mid_step = ((hi - lo) // self.arg_step) // 2
            if mid_step == 0 and lo + self.arg_step < hi:
                mid_step = 1
            mid = lo + (mid_step * self.arg_step)
            success = False
            group: list[tuple[Any, Any]] = []
            for i in range(self.num_attempts):
                group.append(run(mid))
                if len(group) == ppe or i == self.num_attempts - 1:
                    hit = check([g[0] for g in group])
                    if hit is not None:
                        success = True
                        hi = mid
                        if best is None or best > mid:
                            best, best_input = mid, group[hit][1]
                        break
                    group = []
            if math.isclose(lo, mid):
                break
            if not success:
                lo = mid
        return best_input, best

    def evaluate(
        self,
        inputs: Any,
        additional_forward_args: Any = None,
        target: Any = None,
        perturbations_per_eval: int = 1,
        attack_kwargs: dict[str, Any] | None = None,
        correct_fn_kwargs: dict[str, Any] | None = None,
    ) -> tuple[Any, int | float | None]:
        """Search the parameter range for the smallest value the model gets wrong.

        Args:
            inputs: a tensor, tuple of tensors or any raw input the attack and the model
                (through ``preproc_fn``) accept. With the default ``correct_fn`` a batch
                counts as wrong as soon as one example is.
            additional_forward_args: extra arguments of ``forward_func`` after the input.
            target: passed to ``correct_fn`` as ``target`` (needed by the default one).
            perturbations_per_eval: attacked inputs per forward, concatenated along
                dimension 0 (inputs that cannot be concatenated run one at a time).
            attack_kwargs: keyword arguments of every attack call.
            correct_fn_kwargs: keyword arguments of every ``correct_fn`` call.

        Returns:
            ``(perturbed input, value)``: the attack's output at the smallest failing value and
            that value, or ``(None, None)`` when the model stays correct over the whole range.
        """
        check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        if target is None and self.correct_fn is default_correct_fn:
            raise InputError(
                "The default correct_fn compares the argmax with target: pass target=, or a "
                "correct_fn of your own."
            )
        args = format_additional_args(additional_forward_args)
        kwargs: dict[str, Any] = {} if target is None else {"target": target}
        kwargs.update(correct_fn_kwargs or {})
        attack_kw = dict(attack_kwargs or {})
        preproc_input = self.preproc_fn(inputs) if self.preproc_fn else inputs

        def run(param: float) -> tuple[Any, Any]:
            return self._apply_attack(inputs, preproc_input, attack_kw, param)

        def check(items: list[Any]) -> int | None:
            return self._first_incorrect(items, args, kwargs)

        search = (
            self._linear_search
            if self.mode is MinParamPerturbationMode.LINEAR
            else self._binary_search
        )
        return search(run, check, perturbations_per_eval)
