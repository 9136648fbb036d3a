"""Integrated gradients (Sundararajan et al., 2017) and its quadrature rules."""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._core.base import GradientAttribution
from .._core.batching import ChunkSize
from .._core.call import Call
from .._core.errors import InputError
from .._core.forward import accumulate_gradients
from .._core.inputs import BaselineType, TensorOrTuple, format_baselines
from .._core.targets import TargetType

__all__ = ["IntegratedGradients", "Method", "StraightPath", "path_rows", "step_rule"]

Method = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]


def step_rule(method: str, n_steps: int) -> tuple[Tensor, Tensor]:
    """Quadrature nodes and weights on ``[0, 1]`` for the path integral.

    ``riemann_trapezoid`` puts ``n_steps`` nodes at ``i / (n_steps - 1)`` with the composite
    trapezoid weights (half weight at both ends), which sum to 1. Captum's weights for it sum to
    ``(n_steps - 1) / n_steps``, so its attributions fall short of ``f(x) - f(baselines)`` by
    that factor even on a linear model; llmattr's do not.

    Returns:
        ``(alphas, weights)``, both float64 of shape ``(n_steps,)``; ``sum(weights) == 1``.

    Raises:
        InputError: for an unknown method or an ``n_steps`` that is not a positive int (at least
            2 for ``riemann_trapezoid``), as Captum's assertions do.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps must be a positive int, got {n_steps!r}.")
    alphas, weights = _cached_step_rule(method, n_steps)
    return alphas.clone(), weights.clone()


@functools.lru_cache(maxsize=64)
def _cached_step_rule(method: str, n_steps: int) -> tuple[Tensor, Tensor]:
    n = n_steps
    i = torch.arange(n, dtype=torch.float64)
    if method == "gausslegendre":
        nodes, gl_weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(gl_weights / 2)
    if method == "riemann_trapezoid":
        if n < 2:
            raise InputError(
                "riemann_trapezoid needs n_steps >= 2 (both ends of the path); pass a larger "
                "n_steps or another method."
            )
        w = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return i / (n - 1), w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if method not in offsets:
        raise InputError(
            f"Unknown integration method {method!r}; choose one of riemann_left, riemann_right, "
            "riemann_middle, riemann_trapezoid, gausslegendre."
        )
    return (i + offsets[method]) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)


def path_rows(alphas: Tensor, base: Tensor, diff: Tensor, start: int, end: int) -> Tensor:
    """Rows ``[start, end)`` of the straight path ``base + α (x - base)``, where row ``r`` is
    step ``r // batch`` of example ``r % batch``.

    The steps the rows touch are built at once as ``(steps, batch, ...)`` from broadcast
    products of whole (contiguous) tensors and then sliced: no per-row index gathers, which
    on CPU cost more than the arithmetic itself.

    Args:
        alphas: ``(n_steps,)`` positions on the path.
        base: ``(batch, ...)`` path starts (an expanded view is fine).
        diff: ``(batch, ...)`` ``x - base``.
        start, end: the rows wanted.

    Returns:
        ``(end - start, ...)`` in ``diff``'s dtype and device.
    """
    batch = diff.shape[0]
    first, last = start // batch, (end - 1) // batch + 1
    steps = alphas[first:last].to(device=diff.device, dtype=diff.dtype)
    rows = (steps.view(-1, *([1] * diff.dim())) * diff).add_(base)
    offset = first * batch
    return rows.view(-1, *diff.shape[1:])[start - offset : end - offset]


class StraightPath:
    """Rows ``step * batch + example`` of the straight input-space path from the baselines to
    the inputs; every chunk of rows is a plain slice.

    Args:
        batch: number of examples.
        inputs: the ``(batch, ...)`` inputs.
        bases: the baselines, each of its input's shape.
        alphas: ``(n_points,)`` positions on the path.
    """

    def __init__(
        self, batch: int, inputs: tuple[Tensor, ...], bases: tuple[Tensor, ...], alphas: Tensor
    ) -> None:
        self.alphas = alphas
        self.bases = bases
        self.diffs = tuple(x - b for x, b in zip(inputs, bases))
        self.row_steps = torch.arange(len(alphas)).repeat_interleave(batch)
        self.row_examples = torch.arange(batch).repeat(len(alphas))

    def per_row(self, values: Tensor, start: int, end: int, like: Tensor) -> Tensor:
        """``values[step of row]`` for rows ``[start, end)``, shaped to broadcast over ``like``."""
        v = values[self.row_steps[start:end]].to(device=like.device, dtype=like.dtype)
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    def points(self, start: int, end: int) -> tuple[Tensor, ...]:
        """The inputs at rows ``[start, end)``."""
        return tuple(
            path_rows(self.alphas, b, d, start, end) for b, d in zip(self.bases, self.diffs)
        )


class IntegratedGradients(GradientAttribution):
    """Integrated gradients: the path integral of gradients from a baseline to the input.

    ``attr = (x - x') * ∫₀¹ ∂f(x' + α (x - x')) / ∂x dα``, approximated with ``n_steps``
    quadrature points. The attributions of an example sum to ``f(x) - f(x')`` up to the
    quadrature error, reported by ``return_convergence_delta``.

    Args:
        forward_func: the model or forward function.
        multiply_by_inputs: multiply the integrated gradient by ``inputs - baselines`` (global
            attribution, the default) or return the integrated gradient alone (local).
    """

    def __init__(self, forward_func: Any, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: Method = "gausslegendre",
        internal_batch_size: ChunkSize = None,
        return_convergence_delta: bool = False,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """Integrated gradients of the target with respect to the inputs.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            baselines: the path's start: None (zeros), a number, a tensor broadcastable to the
                input, or a tuple of those (one per input).
            target: which output to explain.
            additional_forward_args: extra forward arguments; tensors with the batch dimension
                follow their example through the expansion.
            n_steps: quadrature points.
            method: ``gausslegendre`` (default) or a Riemann rule (``riemann_left``,
                ``riemann_right``, ``riemann_middle``, ``riemann_trapezoid``).
            internal_batch_size: rows (``n_steps * batch`` in all) per forward/backward; None for
                all at once, ``"auto"`` to halve on out-of-memory. Results do not depend on it.
            return_convergence_delta: also return the completeness gap per example.

        Returns:
            Attributions shaped like ``inputs``; with ``return_convergence_delta`` a tuple
            ``(attributions, delta)`` where ``delta`` has shape ``(batch,)``.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        bases = format_baselines(baselines, call.inputs)
        attrs, delta = self._integrate(
            call.inputs, bases, call.target, call.args, n_steps, method, internal_batch_size,
            return_convergence_delta,
        )  # fmt: skip
        result = call.result(attrs)
        return result if delta is None else (result, delta)

    def _integrate(
        self,
        inputs: tuple[Tensor, ...],
        bases: tuple[Tensor, ...],
        target: Any,
        args: tuple[Any, ...],
        n_steps: int,
        method: str,
        internal_batch_size: ChunkSize,
        return_convergence_delta: bool,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """IG of formatted inputs and baselines (the layer methods call this directly, with
        Captum's ``grad_kwargs`` for ``torch.autograd.grad``).

        Returns:
            ``(attributions, delta or None)``: one tensor per input, and ``(batch,)``.
        """
        call = Call.of(inputs, target, args, gradient_method=self.get_name())
        alphas, weights = step_rule(method, n_steps)
        path = StraightPath(call.batch, call.inputs, bases, alphas)

        def contribution(start: int, end: int, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(g * path.per_row(weights, start, end, g) for g in grads)

        integrated = accumulate_gradients(
            self.forward_func, call, path.row_examples, path.points, contribution,
            internal_batch_size, grad_kwargs=grad_kwargs,
        )  # fmt: skip
        attrs = (
            tuple(g * d for g, d in zip(integrated, path.diffs))
            if self._multiply_by_inputs
            else integrated
        )
        if not return_convergence_delta:
            return attrs, None
        # the delta is the completeness gap of the global attributions, also when the local
        # ones (multiply_by_inputs=False) are returned
        delta_attrs = (
            attrs
            if self._multiply_by_inputs
            else tuple(g * d for g, d in zip(integrated, path.diffs))
        )
        delta = self.compute_convergence_delta(
            delta_attrs, bases, call.inputs, call.target, call.args, internal_batch_size
        )
        return attrs, delta
