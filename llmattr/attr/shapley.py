"""Shapley values: exact (every coalition) and sampled (random feature orderings)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.base import PerturbationAttribution
from .._core.call import Call
from .._core.features import FeatureMasks
from .._core.inputs import BaselineType, TensorOrTuple, format_baselines
from .._core.perturbation import PerturbationRun, check_positive_int, make_generator
from .._core.targets import TargetType

__all__ = ["ShapleyValueSampling", "ShapleyValues", "shapley_coefficients"]


def shapley_coefficients(subsets: Tensor) -> Tensor:
    """Weights that turn coalition values into Shapley values.

    ``φ_k = Σ_S c_k(S) v(S)`` with ``c_k(S) = w(|S| - 1)`` when ``k ∈ S`` and ``-w(|S|)``
    otherwise, where ``w(s) = s! (n - s - 1)! / n!``.

    Args:
        subsets: ``(m, n)`` bool, the coalitions.

    Returns:
        ``(m, n)`` float64 coefficients.
    """
    n = subsets.shape[1]
    size = subsets.sum(1, keepdim=True)
    # w(s) = 1 / (n * C(n - 1, s)), from exact integers
    table = torch.tensor([1.0 / (n * math.comb(n - 1, k)) for k in range(n)], dtype=torch.float64)
    inside = table[(size - 1).clamp(min=0)]
    outside = table[size.clamp(max=n - 1)]
    return torch.where(subsets, inside, -outside)


def _setup(
    method: PerturbationAttribution,
    inputs: TensorOrTuple,
    baselines: BaselineType,
    target: TargetType,
    additional_forward_args: Any,
    feature_mask: Any,
    perturbations_per_eval: int,
    show_progress: bool,
) -> tuple[Call, FeatureMasks, PerturbationRun]:
    call = Call.of(inputs, target, additional_forward_args)
    masks = FeatureMasks.of(feature_mask, call.inputs)
    run = PerturbationRun(
        method.forward_func,
        call,
        format_baselines(baselines, call.inputs),
        perturbations_per_eval,
        show_progress,
        method.get_name(),
    )
    run.check_masks(masks)
    return call, masks, run


class ShapleyValues(PerturbationAttribution):
    """Exact Shapley values over feature groups.

    Every one of the ``2^n`` coalitions of the ``n`` features is evaluated once (features outside
    the coalition set to the baseline) and combined with the Shapley weights — the same values as
    averaging marginal contributions over all ``n!`` orderings, at ``2^n - 1`` forwards instead of
    ``n! · n``. Use :class:`ShapleyValueSampling` beyond ~15 features.

    Args:
        forward_func: the model or forward function.
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        """Exact Shapley values, given to every element of each feature.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: values of absent features (as for :class:`FeatureAblation`).
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input.
            perturbations_per_eval: coalitions evaluated in one forward.
            show_progress: show a progress bar.

        Returns:
            Attributions shaped like ``inputs`` (output dimensions after the batch for
            multi-output forwards). Per example they sum to ``f(x) - f(baselines)``.
        """
        call, masks, run = _setup(
            self, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress,
        )  # fmt: skip
        n = masks.n_features
        if n > 16:
            warnings.warn(
                f"Exact Shapley values over {n} features take {2**n - 1} forward passes; "
                "ShapleyValueSampling approximates them at a chosen cost.",
                stacklevel=2,
            )
        device = masks.masks[0].device
        bits = 1 << torch.arange(n)
        credits = torch.zeros(run.rows, run.n_outputs, n, dtype=torch.float64)
        total = (1 << n) - 1  # every coalition but the full one, whose value is f(x)

        def subsets(start: int, end: int) -> Tensor:
            return (torch.arange(start, end)[:, None] & bits) != 0

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            return run.perturbed(masks.absent(subsets(start, end).to(device)))

        def fold(start: int, end: int, outputs: Tensor) -> None:
            coef = shapley_coefficients(subsets(start, end))
            credits.add_(torch.einsum("kro,kn->ron", outputs, coef))

        run.evaluate(total, build, fold)
        full = shapley_coefficients(torch.ones(1, n, dtype=torch.bool))
        credits.add_(torch.einsum("ro,n->ron", run.initial, full[0]))
        return call.result(run.feature_attributions(credits, masks))


class ShapleyValueSampling(PerturbationAttribution):
    """Shapley values estimated from random feature orderings (Castro et al., 2009).

    For each of ``n_samples`` random orderings, features are switched from the baseline to the
    input one at a time and each is credited its marginal change of the output; the estimate is
    the mean. Every ordering's credits sum to ``f(x) - f(baselines)``, so the estimate does too.
    Costs ``n_samples * (n_features - 1) + 1`` forwards.

    Args:
        forward_func: the model or forward function.
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> TensorOrTuple:
        """Sampled Shapley values.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: values of absent features.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input.
            n_samples: random orderings.
            perturbations_per_eval: evaluations in one forward (results do not depend on it).
            show_progress: show a progress bar.
            generator: a ``torch.Generator`` or an int seed (default: torch's global one).

        Returns:
            Attributions shaped like ``inputs`` (output dimensions after the batch for
            multi-output forwards).
        """
        check_positive_int(n_samples, "n_samples")
        call, masks, run = _setup(
            self, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress,
        )  # fmt: skip
        n = masks.n_features
        gen = make_generator(generator)
        orders = torch.argsort(torch.rand(n_samples, n, generator=gen), dim=1)  # (s, n)
        ranks = torch.argsort(orders, dim=1)  # position of each feature in its ordering
        device = masks.masks[0].device
        # evaluation 0: every feature absent; then, per ordering s, the first t + 1 features
        # present for t = 0 .. n - 2 (all n present is the unperturbed input, already known)
        total = 1 + n_samples * (n - 1)
        ranks_on = ranks.to(device)

        def present(start: int, end: int) -> Tensor:
            q = torch.arange(max(start, 1), end, device=device) - 1
            rows = ranks_on[q // max(n - 1, 1)] <= (q % max(n - 1, 1))[:, None]
            if start == 0:
                rows = torch.cat([torch.zeros(1, n, dtype=torch.bool, device=device), rows])
            return rows

        outputs = torch.empty(total, run.rows, run.n_outputs, dtype=torch.float64)

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            return run.perturbed(masks.absent(present(start, end)))

        def fold(start: int, end: int, out: Tensor) -> None:
            outputs[start:end] = out

        run.evaluate(total, build, fold)
        # values[s, t]: output with the first t features of ordering s present (t = 0 .. n)
        values = torch.cat(
            [
                outputs[:1].expand(n_samples, 1, -1, -1),
                outputs[1:].reshape(n_samples, n - 1, run.rows, run.n_outputs),
                run.initial.expand(n_samples, 1, -1, -1),
            ],
            dim=1,
        )
        marginal = values[:, 1:] - values[:, :-1]  # (s, n, rows, out): feature orders[s, t]
        # feature f's marginal in ordering s sits at position ranks[s, f]
        index = ranks[:, :, None, None].expand(-1, -1, run.rows, run.n_outputs)
        credits = marginal.gather(1, index).mean(0).permute(1, 2, 0)  # (rows, out, n)
        return call.result(run.feature_attributions(credits, masks))
