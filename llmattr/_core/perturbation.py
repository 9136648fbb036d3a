"""The perturbation engine shared by ablation, occlusion, permutation, Shapley, Lime and KernelShap.

The methods differ only in *which* perturbations they evaluate and *how* they credit output
changes to features. The engine owns everything else:

* the unperturbed evaluation and the output mode it reveals — one scalar per example (the usual
  case, after ``target``), several outputs per example (e.g. one per generated token), or outputs
  that do not follow the batch (an *aggregate* such as a loss);
* building perturbed batches with vectorized ``torch.where`` (no loop over features), stacking
  ``perturbations_per_eval`` perturbations into one forward, expanding targets and extra args;
* forwards that return ``torch.futures.Future`` (``attribute_future``): every forward is issued
  first, the outputs are folded in order once they have all arrived;
* progress bars, and turning per-feature credit back into per-element attributions, in one of
  three layouts (see :class:`PerturbationRun`).

A method hands :meth:`PerturbationRun.evaluate` a builder of the elements each perturbation
replaces and a ``fold`` that consumes the outputs chunk by chunk, then asks :meth:`PerturbationRun.
finish` for the result. Folds and the finishing step may read the run's output attributes
(``rows``, ``n_outputs``, ``initial``, ...) only: with futures they run after every forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.futures import Future, collect_all

from .call import Call
from .errors import InputError
from .features import FeatureMasks
from .inputs import TensorOrTuple, as_tuple, format_additional_args
from .progress import progress
from .targets import Target, TargetType, normalize_target

__all__ = [
    "Layout",
    "PerturbationRun",
    "as_output",
    "check_positive_int",
    "make_generator",
    "perturbation_call",
]

Layout = Literal["rows", "flat", "output"]


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` if it is a positive int, else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}.")
    return value


def make_generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """A ``torch.Generator`` from a seed (int), a generator, or None (torch's global one)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator or an int seed, got {generator!r}.")
    return torch.Generator().manual_seed(generator)


def as_output(value: Any) -> Tensor:
    """A forward's output as a tensor: a Python int becomes int64 and a float float64 (the dtype
    of the Python number, as in Captum); anything but a tensor or a number is refused."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, int | float):
        return torch.tensor(value, dtype=torch.int64 if isinstance(value, int) else torch.float64)
    raise InputError(
        f"The forward function must return a tensor, an int or a float, got {type(value).__name__}."
    )


def perturbation_call(
    inputs: TensorOrTuple, target: TargetType, additional_forward_args: Any
) -> Call:
    """Normalize a perturbation method's call.

    Unlike gradient methods, inputs need not share dimension 0: the batch is ``inputs[0]``'s, and
    another input may be a flat index list (EmbeddingBag indices) or even empty, as Captum allows.
    """
    was_tuple = isinstance(inputs, tuple | list)
    tensors = as_tuple(inputs)
    if len(tensors) == 0:
        raise InputError("inputs is an empty tuple: pass at least one tensor.")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(
                f"inputs[{i}] is a {type(t).__name__}; every input must be a torch.Tensor "
                "(pass non-tensor arguments through additional_forward_args)."
            )
        if t.dim() == 0:
            raise InputError(
                f"inputs[{i}] is a 0-dimensional tensor; inputs need a batch dimension first "
                "(use x.unsqueeze(0) for a single example)."
            )
    return Call(
        tensors,
        was_tuple,
        normalize_target(target, tensors[0].shape[0]),
        format_additional_args(additional_forward_args),
    )


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
        method: the method's name; the progress bar reads ``"<method> attribution"``.
        layout: the shape of the attributions :meth:`attributions` returns per input:
            ``"rows"`` ``(rows, *out_shape, *input.shape[1:])``, one map per output of each
            example (internal callers: Lime, the text layer); ``"flat"``
            ``(output.numel(), *input.shape[1:])`` (Captum's FeatureAblation family);
            ``"output"`` ``(*output.shape, *input.shape[1:])``, a scalar output counting as
            ``(1,)`` (Captum's Shapley methods).
        futures: the forward returns ``torch.futures.Future`` (``attribute_future``).
        float_result: an integer output gives float32 attributions (default: with the
            ``"output"`` layout, as Captum's Shapley methods; Occlusion's means need it too).

    Attributes (known after the unperturbed output arrived; with futures, inside folds only):
        initial: ``(rows, n_outputs)`` outputs of the unperturbed inputs, float64.
        rows: the batch size, or 1 for an aggregate output.
        out_shape: the shape of one row's outputs (``()`` for one scalar).
        output_shape: the (target-selected) output's shape, ``(1,)`` for a scalar.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        call: Call,
        baselines: tuple[Tensor, ...],
        perturbations_per_eval: int,
        show_progress: bool = False,
        method: str = "attribution",
        *,
        layout: Layout = "rows",
        futures: bool = False,
        float_result: bool | None = None,
    ) -> None:
        self.forward_func = forward_func
        self.call = call
        self.baselines = baselines
        self.ppe = check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        self.show_progress = show_progress
        self.method = method
        self.layout = layout
        self.futures = futures
        self.float_result = layout == "output" if float_result is None else float_result
        self.forward_count = 0
        self._plans: dict[int, _StackPlan] = {}
        self._pending: list[tuple[int, int, Callable[[int, int, Tensor], None], Any]] = []
        self._masks: FeatureMasks | None = None
        with torch.no_grad():
            output = self._forward(call.inputs, call.args)
        self._initial: Any = output
        if not futures:
            self._accept_initial(output)

    def _accept_initial(self, output: Any) -> None:
        output = as_output(output)
        self.output_dtype = output.dtype
        batch = self.call.batch
        self.out_shape: tuple[int, ...] = ()
        self.aggregate = False
        if self.call.target.index is not None:
            selected = self.call.target.select(output, batch)
        elif output.dim() >= 1 and output.shape[0] == batch:
            self.out_shape = tuple(output.shape[1:]) if output[0].numel() > 1 else ()
            selected = output
        else:
            self.aggregate, self.out_shape = True, tuple(output.shape)
            selected = output.reshape(1, -1)
        self.output_shape = tuple(output.shape if self.aggregate else selected.shape) or (1,)
        self.rows = 1 if self.aggregate else batch
        self.n_outputs = int(torch.Size(self.out_shape).numel())
        self.initial = selected.detach().reshape(self.rows, self.n_outputs).double().cpu()
        if self.aggregate and self.ppe > 1 and output.dim() == 0:
            raise InputError(
                f"The forward function returned one scalar for the whole batch of {batch} (an "
                f"aggregate), so perturbations_per_eval={self.ppe} could not tell stacked "
                "perturbations apart. Use perturbations_per_eval=1, or return one value per "
                "example."
            )
        if self._masks is not None:
            self.check_masks(self._masks)

    def check_masks(self, masks: FeatureMasks) -> None:
        """An aggregate output has no per-example rows, so masks must be shared (with futures
        the check runs once the unperturbed output arrived)."""
        if not hasattr(self, "aggregate"):
            self._masks = masks
            return
        if self.aggregate and masks.per_example:
            raise InputError(
                "The forward function returns outputs that do not follow the batch (an "
                "aggregate), so feature masks must be shared by every example (first dimension "
                "1)."
            )

    def _forward(self, inputs: tuple[Tensor, ...], args: tuple[Any, ...]) -> Any:
        self.forward_count += 1
        output = self.forward_func(*inputs, *args)
        if self.futures and not isinstance(output, torch.Future):  # either Future class
            raise InputError(
                "attribute_future needs a forward function that returns a torch.futures.Future, "
                f"got {type(output).__name__}; call attribute instead."
            )
        if not self.futures and isinstance(output, torch.Future):
            raise InputError(
                "The forward function returned a torch.futures.Future; call attribute_future "
                "for forwards that return futures."
            )
        return output

    def _plan(self, k: int) -> _StackPlan:
        plan = self._plans.get(k)
        if plan is None:  # rows' targets and args, built once per stack size
            target, args = self.call.for_rows(torch.arange(self.call.batch).repeat(k))
            plan = self._plans[k] = _StackPlan(target, args)
        return plan

    def _received(self, output: Any, k: int) -> Tensor:
        """``(k, rows, n_outputs)`` float64 from the output of ``k`` stacked copies."""
        output = as_output(output)
        plan = self._plan(k)
        n = k * self.call.batch
        if plan.target.index is not None:
            if plan.pick is None or output.shape != plan.shape:  # full checks once per shape
                shape = output.shape
                output = plan.target.select(output, n)
                plan.shape, plan.pick = shape, plan.target.picker(tuple(shape), output.device)
            else:
                output = plan.pick(output)
        elif self.aggregate:
            # stacked copies of an aggregate must give stacked outputs (Captum's rule)
            expected = self.out_shape if k == 1 else (k * self.out_shape[0], *self.out_shape[1:])
            if k == 1 and tuple(output.shape) != tuple(expected):
                raise InputError(
                    f"The aggregate output changed shape from {self.out_shape} to "
                    f"{tuple(output.shape)} under perturbation."
                )
            if tuple(output.shape) != tuple(expected):
                raise InputError(
                    f"The forward function's output does not follow the batch: shape "
                    f"{self.out_shape} for the inputs, {tuple(output.shape)} for {k} stacked "
                    "perturbations of them. With perturbations_per_eval > 1 the output's first "
                    "dimension must grow with the batch; use perturbations_per_eval=1."
                )
        elif output.dim() == 0 or output.shape[0] != n:
            raise InputError(
                f"The forward function returned shape {tuple(output.shape)} for {n} "
                "stacked examples; it must return one row per example."
            )
        return output.detach().reshape(k, self.rows, self.n_outputs).double().cpu()

    def outputs_of(self, inputs: tuple[Tensor, ...], k: int) -> Tensor:
        """Evaluate ``k`` stacked copies of the batch (rows ``copy * batch + example``).

        Returns:
            ``(k, rows, n_outputs)`` float64.
        """
        plan = self._plan(k)
        with torch.no_grad():
            output = self._forward(inputs, plan.args)
        return self._received(output, k)

    def perturbed(
        self, absent: tuple[Tensor, ...], replacements: tuple[Tensor, ...] | None = None
    ) -> tuple[Tensor, ...]:
        """Inputs with the ``absent`` elements replaced, ``k`` copies stacked.

        Args:
            absent: per input a bool ``(k, 1 or n, *input.shape[1:])`` (``n`` the input's
                first dimension).
            replacements: per input ``(n, ...)`` or ``(k, n, ...)`` values (default: the
                baselines).

        Returns:
            Per input ``(k * n, *input.shape[1:])``.
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
                outputs, in order (with futures: once every forward's output arrived).
        """
        total = math.ceil(n_perturbations / self.ppe) + 1  # forwards, the unperturbed one too
        with progress(self.show_progress, total, f"{self.method} attribution") as advance:
            advance(1)
            for start in range(0, n_perturbations, self.ppe):
                end = min(start + self.ppe, n_perturbations)
                if self.futures:
                    plan = self._plan(end - start)
                    with torch.no_grad():
                        future = self._forward(build(start, end), plan.args)
                    self._pending.append((start, end, fold, future))
                else:
                    fold(start, end, self.outputs_of(build(start, end), end - start))
                advance(1)

    def finish(self, result: Callable[[], Any]) -> Any:
        """``result()`` now, or, with futures, a Future of it computed once the unperturbed
        output and every perturbed one arrived (their folds run first, in order). An error in
        a forward's future or in the folds is set on the returned Future as it was raised."""
        if not self.futures:
            return result()
        pending, self._pending = self._pending, []
        # Captum returns a plain ``torch.Future`` (torch._C.Future, what ``collect_all(...).then``
        # gives), not the ``torch.futures.Future`` subclass; callers check ``type(f) is
        # torch.Future``
        done = torch.Future([])

        def complete(_: Future) -> None:
            try:
                self._accept_initial(self._initial.wait())
                for start, end, fold, future in pending:
                    fold(start, end, self._received(future.wait(), end - start))
                value = result()
            except Exception as err:  # handed to the waiting caller, type intact
                _set_exception(done, err)
            else:
                done.set_result(value)

        collect_all([self._initial, *(p[3] for p in pending)]).add_done_callback(complete)
        return done

    def attributions(self, per_element: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Reshape ``(rows, n_outputs, *mask.shape[1:])`` credits to the returned layout.

        Returns:
            Per input, see ``layout``; ``"rows"``: ``(rows, *out_shape, *input.shape[1:])``.
        """
        dtype = self._dtype()
        out = []
        for a, x in zip(per_element, self.call.inputs):
            a = a.expand(*a.shape[:2], *x.shape[1:])  # a broadcast mask covers the whole input
            if self.layout == "flat":
                shape: tuple[int, ...] = (self.rows * self.n_outputs,)
            elif self.layout == "output":
                shape = self.output_shape
            else:
                shape = (self.rows, *self.out_shape)
            out.append(a.reshape(*shape, *x.shape[1:]).to(device=x.device, dtype=dtype))
        return tuple(out)

    def feature_attributions(self, credits: Tensor, masks: FeatureMasks) -> tuple[Tensor, ...]:
        """Per-feature credit ``(rows, n_outputs, n_features)`` spread over the elements."""
        return self.attributions(masks.spread(credits))

    def _dtype(self) -> torch.dtype:
        """The attributions' dtype: a floating output's; for an integer output, float32 with
        ``float_result``, else with the ``"flat"`` layout the output's (int64 differences, as
        Captum's FeatureAblation), else the first floating input's, else torch's default."""
        if self.output_dtype.is_floating_point:
            return self.output_dtype
        if self.float_result:
            return torch.float32
        if self.layout == "flat":
            return self.output_dtype
        floats = [x.dtype for x in self.call.inputs if x.is_floating_point()]
        return floats[0] if floats else torch.get_default_dtype()


def _set_exception(future: Any, err: Exception) -> None:
    """Complete a ``torch.Future`` with ``err``, raised as it is (type intact) by ``wait()``.

    ``torch._C.Future`` has no ``set_exception``; this does exactly what
    ``torch.futures.Future.set_exception`` does: an unwrap function that raises the stored value.
    """

    def raise_error(value: Exception) -> None:
        raise value

    future._set_unwrap_func(raise_error)
    future.set_result(err)
