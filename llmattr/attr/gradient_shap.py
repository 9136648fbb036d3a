"""GradientShap: expected gradients between random baselines and noisy inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._core.base import GradientAttribution
from .._core.batching import ChunkSize, run_in_chunks
from .._core.call import Call
from .._core.errors import InputError
from .._core.forward import accumulate_gradients, run_forward
from .._core.inputs import (
    TensorOrTuple,
    as_tuple,
    format_baseline_distribution,
    per_example_sum,
)
from .._core.layers import LayerCut
from .._core.perturbation import make_generator

__all__ = ["Draws", "GradientShap", "expected_gradients", "noise_stdevs"]


def noise_stdevs(stdevs: float | tuple[float, ...], n_inputs: int) -> tuple[float, ...]:
    """One noise standard deviation per input, validated."""
    values = as_tuple(stdevs)
    if len(values) == 1:
        values = values * n_inputs
    if len(values) != n_inputs:
        raise InputError(
            f"Got {len(values)} stdevs for {n_inputs} inputs; pass one number, or one per input."
        )
    for s in values:
        if isinstance(s, bool) or not isinstance(s, int | float) or s < 0:
            raise InputError(f"stdevs must be non-negative numbers, got {stdevs!r}.")
    return tuple(float(s) for s in values)


class GradientShap(GradientAttribution):
    """GradientShap (Lundberg and Lee, 2017): SHAP values estimated with expected gradients.

    For each of ``n_samples`` draws per example: a baseline ``b`` picked at random from the
    baseline distribution, Gaussian noise ``ε`` (std ``stdevs``) added to the input and a point
    ``b + α (x + ε - b)`` with ``α ~ U(0, 1)``; the attribution is the mean over draws of
    ``gradient(point) * (x + ε - b)``.

    Random numbers are drawn before any model evaluation (so results do not depend on
    ``internal_batch_size``) and, by default, as Captum draws them: the baseline rows from numpy's
    global generator, then each input's noise from torch's, then the ``α`` from numpy's. Seeding
    both, ``np.random.seed(s); torch.manual_seed(s)``, reproduces Captum's numbers for one input;
    ``generator=`` (a ``torch.Generator`` or an int seed) draws everything from that generator
    instead. Unlike Captum, one baseline row per draw is used for *every* input of a tuple (the
    distribution's rows are joint samples, as in DeepLiftShap), not one row per input.

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
        generator: torch.Generator | int | None = None,
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
            generator: None to draw like Captum (numpy's and torch's global generators), or a
                ``torch.Generator`` / int seed to draw every random number from it.

        Returns:
            Attributions shaped like ``inputs``; with ``return_convergence_delta`` also a delta of
            shape ``(batch * n_samples,)``, example-major (draw ``s`` of example ``i`` at
            ``i * n_samples + s``).
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InputError(f"n_samples must be a positive int, got {n_samples!r}.")
        dist = format_baseline_distribution(baselines, call.inputs, inputs)
        sds = noise_stdevs(stdevs, len(call.inputs))
        gen = make_generator(generator)
        draws = Draws.sample(call, dist, n_samples, sds, gen, numpy_global=gen is None)
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


def _noise(x: Tensor, sd: float, generator: torch.Generator | None) -> Tensor:
    """``N(0, sd²)`` noise shaped like ``x``, drawn as Captum draws it: from a tensor of standard
    deviations in torch's default dtype, on ``x``'s device (the generator's when one is given)."""
    device = x.device if generator is None else generator.device
    std = torch.tensor(sd, device=device).repeat(x.shape)
    return torch.normal(0.0, std, generator=generator).to(device=x.device, dtype=x.dtype)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, in its dtype (drawn on the generator's device)."""
    device = x.device if generator is None else generator.device
    z = torch.randn(x.shape, dtype=x.dtype, device=device, generator=generator)
    return z.to(x.device)


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
        generator: torch.Generator | None = None,
        *,
        numpy_global: bool = False,
    ) -> Draws:
        """Draw the baseline rows, noise and ``α`` of ``batch * n_samples`` rows, all at once.

        Args:
            call: the normalized call (``batch`` examples).
            baselines: the distribution, per input ``(n_baselines, ...)``.
            n_samples: draws per example; rows are example-major.
            stdevs: noise standard deviation per input.
            generator: the torch generator to draw from (None: torch's global one).
            numpy_global: draw as Captum does, so that seeding numpy and torch gives Captum's
                numbers: baseline rows from numpy's global generator, then each input's noise
                from torch's, then ``α`` from numpy's. Otherwise everything comes from torch
                (rows, ``α``, then the noise of inputs whose ``stdevs`` is not 0).
        """
        n_rows = call.batch * n_samples
        examples = torch.arange(call.batch).repeat_interleave(n_samples)
        n_base = baselines[0].shape[0]
        repeated = tuple(x.repeat_interleave(n_samples, dim=0) for x in call.inputs)
        if numpy_global:
            index = torch.as_tensor(np.random.choice(n_base, n_rows), dtype=torch.long)
            noisy = tuple(
                x + _noise(x, sd, generator) for x, sd in zip(repeated, stdevs)
            )  # Captum draws it even for sd = 0: torch's generator then advances the same way
            alphas = torch.as_tensor(np.random.uniform(0.0, 1.0, n_rows), dtype=torch.float64)
        else:
            index = torch.randint(0, n_base, (n_rows,), generator=generator)
            alphas = torch.rand(n_rows, dtype=torch.float64, generator=generator)
            noisy = tuple(
                x + sd * _randn_like(x, generator) if sd else x for x, sd in zip(repeated, stdevs)
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
        # α x̃ + (1 - α) b, in Captum's arithmetic so that seeded results agree to the last bits
        out = []
        for k, x in enumerate(call.inputs):
            a = draws.alpha(start, end, x)
            out.append(a * draws.noisy[k][start:end] + (1 - a) * draws.base(k, start, end))
        return tuple(out)

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
