"""GradientShap: expected gradients between random baselines and noisy inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.base import GradientAttribution
from .._core.batching import ChunkSize, run_in_chunks
from .._core.call import Call
from .._core.forward import accumulate_gradients, run_forward
from .._core.inputs import (
    TensorOrTuple,
    as_tuple,
    format_baseline_distribution,
    per_example_sum,
)
from .._core.layers import LayerCut

__all__ = ["Draws", "GradientShap", "expected_gradients", "noise_stdevs"]


def noise_stdevs(stdevs: float | tuple[float, ...], n_inputs: int) -> tuple[float, ...]:
    """One noise standard deviation per input, validated."""
    values = as_tuple(stdevs)
    if len(values) == 1:
        values = values * n_inputs
    if len(values) != n_inputs:
        raise ValueError(
            f"Got {len(values)} stdevs for {n_inputs} inputs; pass one number, or one per input."
        )
    for s in values:
        if not isinstance(s, int | float) or s < 0:
            raise ValueError(f"stdevs must be non-negative numbers, got {stdevs!r}.")
    return tuple(float(s) for s in values)


class GradientShap(GradientAttribution):
    """GradientShap (Lundberg and Lee, 2017): SHAP values estimated with expected gradients.

    For each of ``n_samples`` draws per example: a baseline ``b`` picked at random from the
    baseline distribution, Gaussian noise ``ε`` (std ``stdevs``) added to the input and a point
    ``b + α (x + ε - b)`` with ``α ~ U(0, 1)``; the attribution is the mean over draws of
    ``gradient(point) * (x + ε - b)``. Random numbers come from torch's global generator
    (``torch.manual_seed`` makes results reproducible, whatever ``internal_batch_size``).

    Args:
        forward_func: the model or forward function.
        multiply_by_inputs: multiply by ``x + ε - b`` (global, default) or not (local).
    """

    _baseline_distribution = True

    def __init__(self, forward_func: Callable[..., Any], multiply_by_inputs: bool = True) -> None:
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
        baselines: Any,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        internal_batch_size: ChunkSize = None,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """Expected-gradients attributions.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            baselines: the baseline distribution: per input a ``(n_baselines, ...)`` tensor (a
                tuple for several inputs), or a callable returning it (called with no arguments
                when it takes none, else with ``inputs``, as in Captum).
            n_samples: draws per example.
            stdevs: standard deviation of the input noise (one number, or one per input).
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            return_convergence_delta: also return the completeness gap of every draw.
            internal_batch_size: draws (``batch * n_samples`` rows) per forward/backward; None for
                all at once, ``"auto"`` to halve on out-of-memory.

        Returns:
            Attributions shaped like ``inputs``; with ``return_convergence_delta`` also a delta of
            shape ``(batch * n_samples,)``, example-major (draw ``s`` of example ``i`` at
            ``i * n_samples + s``).
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}.")
        dist = format_baseline_distribution(baselines, call.inputs, inputs)
        sds = noise_stdevs(stdevs, len(call.inputs))
        draws = Draws.sample(call, dist, n_samples, sds)
        attrs, delta = expected_gradients(
            self.forward_func,
            call,
            draws,
            self._multiply_by_inputs,
            internal_batch_size,
            return_convergence_delta,
        )
        result = call.result(attrs)
        if delta is None:
            return result
        return result, delta


class Draws:
    """The random draws of an expected-gradients estimate, ``batch * n_samples`` rows.

    Attributes:
        examples: ``(n_rows,)`` example of each row (example-major).
        baseline_index: ``(n_rows,)`` row of the baseline distribution used.
        alphas: ``(n_rows,)`` interpolation coefficients.
        noisy: per input, the ``(n_rows, ...)`` noisy inputs.
        baselines: per input, the ``(n_baselines, ...)`` distribution.
        n_samples: draws per example.
    """

    def __init__(
        self,
        examples: Tensor,
        baseline_index: Tensor,
        alphas: Tensor,
        noisy: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        n_samples: int,
    ) -> None:
        self.examples = examples
        self.baseline_index = baseline_index
        self.alphas = alphas
        self.noisy = noisy
        self.baselines = baselines
        self.n_samples = n_samples

    @classmethod
    def sample(
        cls,
        call: Call,
        baselines: tuple[Tensor, ...],
        n_samples: int,
        stdevs: tuple[float, ...],
    ) -> Draws:
        n_rows = call.batch * n_samples
        examples = torch.arange(call.batch).repeat_interleave(n_samples)
        index = torch.randint(0, baselines[0].shape[0], (n_rows,))
        alphas = torch.rand(n_rows, dtype=torch.float64)
        noisy = tuple(
            x.repeat_interleave(n_samples, dim=0)
            + (
                sd * torch.randn((n_rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
                if sd
                else 0
            )
            for x, sd in zip(call.inputs, stdevs)
        )
        return cls(examples, index, alphas, noisy, baselines, n_samples)

    def base(self, k: int, start: int, end: int) -> Tensor:
        b = self.baselines[k]
        return b[self.baseline_index[start:end].to(b.device)]

    def alpha(self, start: int, end: int, like: Tensor) -> Tensor:
        a = self.alphas[start:end].to(device=like.device, dtype=like.dtype)
        return a.reshape(-1, *([1] * (like.dim() - 1)))


def expected_gradients(
    forward_func: Callable[..., Any],
    call: Call,
    draws: Draws,
    multiply_by_inputs: bool,
    chunk_size: ChunkSize,
    with_delta: bool,
    cut: LayerCut | None = None,
) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """Mean over draws of ``gradient(b + α (x̃ - b)) [* (x̃ - b)]``, and optionally the per-draw
    completeness gap ``sum(gradient * (x̃ - b)) - (f(x̃) - f(b))`` of shape ``(n_rows,)``.

    With a layer ``cut`` the gradients are taken at the layer and multiplied by the change of
    the layer's activation, ``a(x̃) - a(b)`` (the path stays in input space)."""
    n_rows = len(draws.examples)
    row_sums = torch.zeros(n_rows, dtype=torch.float64)

    def diff(k: int, start: int, end: int) -> Tensor:
        return draws.noisy[k][start:end] - draws.base(k, start, end)

    def diffs(start: int, end: int) -> tuple[Tensor, ...]:
        if cut is None:
            return tuple(diff(k, start, end) for k in range(len(call.inputs)))
        _, args = call.for_rows(draws.examples[start:end])
        noisy = tuple(x[start:end] for x in draws.noisy)
        bases = tuple(draws.base(k, start, end) for k in range(len(call.inputs)))
        (at_x,), _ = cut.activations(noisy, args)
        (at_b,), _ = cut.activations(bases, args)
        return tuple(a - b for a, b in zip(at_x, at_b))

    grad_fn = None
    if cut is not None:
        layer_cut = cut

        def grad_fn(
            pts: tuple[Tensor, ...], target: Any, args: tuple[Any, ...]
        ) -> tuple[Tensor, ...]:
            (grads,), _, _ = layer_cut.gradients(pts, target, args)
            return grads

    def points(start: int, end: int) -> tuple[Tensor, ...]:
        return tuple(
            draws.base(k, start, end) + draws.alpha(start, end, x) * diff(k, start, end)
            for k, x in enumerate(call.inputs)
        )

    def contribution(start: int, end: int, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        global_parts = tuple(g * d for g, d in zip(grads, diffs(start, end)))
        if with_delta:
            row_sums[start:end] = per_example_sum(global_parts).double().cpu()
        parts = global_parts if multiply_by_inputs else grads
        return tuple(p / draws.n_samples for p in parts)

    attrs = accumulate_gradients(
        forward_func, call, draws.examples, points, contribution, chunk_size, grad_fn=grad_fn
    )
    if not with_delta:
        return attrs, None

    def gap(start: int, end: int) -> Tensor:
        target, args = call.for_rows(draws.examples[start:end])
        noisy = tuple(x[start:end] for x in draws.noisy)
        bases = tuple(draws.base(k, start, end) for k in range(len(call.inputs)))
        with torch.no_grad():
            f_x = run_forward(forward_func, noisy, target, args)
            f_b = run_forward(forward_func, bases, target, args)
        return (f_x - f_b).double().cpu()

    gaps = torch.cat(run_in_chunks(n_rows, chunk_size, gap))
    return attrs, (row_sums - gaps).to(device=attrs[0].device, dtype=attrs[0].dtype)
