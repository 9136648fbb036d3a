"""The perturbation engine shared by ablation, occlusion, permutation, Shapley, Lime and KernelShap.

The methods differ only in *which* perturbations they evaluate and *how* they credit output
changes to features. The engine owns everything else:

* the unperturbed evaluation and the output mode it reveals — one scalar per example (the usual
  case, after ``target``), several outputs per example (e.g. one per generated token:
  attributions then get the output's dimensions after the batch), or one output for the whole
  batch (an *aggregate* such as a loss: attributions have batch dimension 1);
* building perturbed batches with vectorized ``torch.where`` (no loop over features), stacking
  ``perturbations_per_eval`` perturbations into one forward, expanding targets and extra args;
* progress bars, and turning per-feature credit back into per-element attributions.

A method hands :meth:`PerturbationRun.evaluate` a builder of the elements each perturbation
replaces and a ``fold`` that consumes the outputs chunk by chunk, so memory stays bounded by one
chunk whatever the number of perturbations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .call import Call
from .features import FeatureMasks
from .progress import progress
from .targets import Target

__all__ = ["PerturbationRun", "check_positive_int", "make_generator"]


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` if it is a positive int, else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def make_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """A ``torch.Generator`` from a seed (int), a generator, or None (torch's global one)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator or an int seed, got {generator!r}.")
    return torch.Generator().manual_seed(generator)


@dataclass
class _StackPlan:
    """Targets and extra args for ``k`` stacked copies of the batch, and, once the first output
    of this stack size passed the target checks, its shape and a picker for later outputs."""

    target: Target
    args: tuple[Any, ...]
    shape: torch.Size | None = None
    pick: Callable[[Tensor], Tensor] | None = None


class PerturbationRun:
    """One attribution call's perturbation evaluations.

    Args:
        forward_func: the function explained.
        call: the normalized call.
        baselines: per input, the replacement values broadcast to the input ``(batch, ...)``.
        perturbations_per_eval: perturbations stacked into one forward.
        show_progress: show a tqdm bar over the forward evaluations.
        method: the method's name (progress bar, error messages).

    Attributes:
        initial: ``(rows, n_outputs)`` outputs of the unperturbed inputs, float64.
        rows: the batch size, or 1 for an aggregate output.
        out_shape: the shape of one row's outputs (``()`` for one scalar).
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        call: Call,
        baselines: tuple[Tensor, ...],
        perturbations_per_eval: int,
        show_progress: bool = False,
        method: str = "attribution",
    ) -> None:
        self.forward_func = forward_func
        self.call = call
        self.baselines = baselines
        self.ppe = check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        self.show_progress = show_progress
        self.method = method
        self.forward_count = 0
        self._plans: dict[int, _StackPlan] = {}
        with torch.no_grad():
            output = self._forward(call.inputs, call.target, call.args)
        self.output_dtype = output.dtype
        batch = call.batch
        self.out_shape: tuple[int, ...] = ()
        self.aggregate = False
        if call.target.index is not None:
            selected = call.target.select(output, batch)
        elif output.dim() >= 1 and output.shape[0] == batch:
            self.out_shape = tuple(output.shape[1:]) if output[0].numel() > 1 else ()
            selected = output
        else:
            self.aggregate, self.out_shape = True, tuple(output.shape)
            selected = output.reshape(1, -1)
        self.rows = 1 if self.aggregate else batch
        self.n_outputs = int(torch.Size(self.out_shape).numel())
        self.initial = selected.detach().reshape(self.rows, self.n_outputs).double().cpu()
        if self.aggregate and self.ppe > 1:
            raise ValueError(
                f"The forward function returned one output of shape {tuple(output.shape)} for the "
                f"whole batch of {batch} (an aggregate), so perturbations_per_eval="
                f"{self.ppe} could not tell stacked perturbations apart. Use "
                "perturbations_per_eval=1, or return one value per example."
            )

    def check_masks(self, masks: FeatureMasks) -> None:
        """An aggregate output has no per-example rows, so masks must be shared."""
        if self.aggregate and masks.per_example:
            raise ValueError(
                "The forward function returns one output for the whole batch (an aggregate), so "
                "feature masks must be shared by every example (first dimension 1)."
            )

    def _forward(self, inputs: tuple[Tensor, ...], target: Any, args: tuple[Any, ...]) -> Tensor:
        self.forward_count += 1
        output = self.forward_func(*inputs, *args)
        if not isinstance(output, Tensor):
            output = torch.as_tensor(output)
        return output

    def outputs_of(self, inputs: tuple[Tensor, ...], k: int) -> Tensor:
        """Evaluate ``k`` stacked copies of the batch (rows ``copy * batch + example``).

        Returns:
            ``(k, rows, n_outputs)`` float64.
        """
        plan = self._plans.get(k)
        if plan is None:  # rows' targets and args, built once per stack size
            target, args = self.call.for_rows(torch.arange(self.call.batch).repeat(k))
            plan = self._plans[k] = _StackPlan(target, args)
        with torch.no_grad():
            output = self._forward(inputs, plan.target, plan.args)
        n = k * self.call.batch
        if plan.target.index is not None:
            if plan.pick is None or output.shape != plan.shape:  # full checks once per shape
                shape = output.shape
                output = plan.target.select(output, n)
                plan.shape, plan.pick = shape, plan.target.picker(tuple(shape), output.device)
            else:
                output = plan.pick(output)
        elif self.aggregate:
            if tuple(output.shape) != self.out_shape:
                raise ValueError(
                    f"The aggregate output changed shape from {self.out_shape} to "
                    f"{tuple(output.shape)} under perturbation."
                )
        elif output.shape[0] != n:
            raise ValueError(
                f"The forward function returned shape {tuple(output.shape)} for {n} "
                "stacked examples; it must return one row per example."
            )
        return output.detach().reshape(k, self.rows, self.n_outputs).double().cpu()

    def perturbed(
        self, absent: tuple[Tensor, ...], replacements: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, ...]:
        """Inputs with the ``absent`` elements replaced, ``k`` copies stacked.

        Args:
            absent: per input a bool ``(k, 1 or batch, *input.shape[1:])``.
            replacements: per input ``(batch, ...)`` or ``(k, batch, ...)`` values (default: the
                baselines).

        Returns:
            Per input ``(k * batch, *input.shape[1:])``.
        """
        replacements = replacements or self.baselines
        out = []
        for x, a, r in zip(self.call.inputs, absent, replacements):
            k = a.shape[0]
            stacked = torch.where(a.to(x.device), r.to(x.dtype), x.unsqueeze(0))
            out.append(stacked.expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:]))
        return tuple(out)

    def evaluate(
        self,
        n_perturbations: int,
        build: Callable[[int, int], tuple[Tensor, ...]],
        fold: Callable[[int, int, Tensor], None],
    ) -> None:
        """Evaluate perturbations ``0 .. n - 1``, ``perturbations_per_eval`` per forward.

        Args:
            n_perturbations: how many perturbations.
            build: ``build(start, end)`` returns the stacked perturbed inputs of perturbations
                ``[start, end)`` (see :meth:`perturbed`).
            fold: ``fold(start, end, outputs)`` consumes their ``(end - start, rows, n_outputs)``
                outputs, in order.
        """
        with progress(self.show_progress, n_perturbations, self.method) as advance:
            for start in range(0, n_perturbations, self.ppe):
                end = min(start + self.ppe, n_perturbations)
                fold(start, end, self.outputs_of(build(start, end), end - start))
                advance(end - start)

    def attributions(self, per_element: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Reshape ``(rows, n_outputs, *input.shape[1:])`` credits to the returned form.

        Returns:
            Per input ``(rows, *out_shape, *input.shape[1:])`` in the output's dtype.
        """
        dtype = self._dtype()
        return tuple(
            a.reshape(self.rows, *self.out_shape, *a.shape[2:]).to(device=x.device, dtype=dtype)
            for a, x in zip(per_element, self.call.inputs)
        )

    def feature_attributions(self, credits: Tensor, masks: FeatureMasks) -> tuple[Tensor, ...]:
        """Per-feature credit ``(rows, n_outputs, n_features)`` spread over the elements."""
        return self.attributions(masks.spread(credits))

    def _dtype(self) -> torch.dtype:
        """The output's floating dtype (else the first floating input's, else torch's default)."""
        if self.output_dtype.is_floating_point:
            return self.output_dtype
        floats = [x.dtype for x in self.call.inputs if x.is_floating_point()]
        return floats[0] if floats else torch.get_default_dtype()
