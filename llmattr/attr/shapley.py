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
from .._core.perturbation import (
    PerturbationRun,
    check_positive_int,
    make_generator,
    perturbation_call,
)
from .._core.targets import TargetType

MaskType = Tensor | tuple[Tensor, ...] | None

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
    futures: bool,
) -> tuple[Call, FeatureMasks, PerturbationRun]:
    call = perturbation_call(inputs, target, additional_forward_args)
    masks = FeatureMasks.of(feature_mask, call.inputs, allow_gaps=True)
    if masks.order().numel() < masks.n_features:  # Captum warns too, and keeps the gaps
        warnings.warn(
            "feature_mask skips some ids between 0 and its largest id; each missing id is a "
            "feature that changes nothing (and costs forwards). Renumber the mask to avoid it.",
            stacklevel=4,
        )
    run = PerturbationRun(
        method.forward_func,
        call,
        format_baselines(baselines, call.inputs),
        perturbations_per_eval,
        show_progress,
        method.get_name(),
        layout="output",
        futures=futures,
    )
    run.check_masks(masks)
    return call, masks, run


class ShapleyValueSampling(PerturbationAttribution):
    """Shapley values estimated from random feature orderings (Castro et al., 2009).

    For each of ``n_samples`` random orderings, features are switched from the baseline to the
    input one at a time and each is credited its marginal change of the output; the estimate is
    the mean. Every ordering's credits sum to ``f(x) - f(baselines)``, so the estimate does too.
    Costs ``n_samples * (n_features - 1) + 1`` forwards (Captum's ``n_samples * n_features + 1``:
    the last step of every ordering is the unperturbed input, evaluated once here).

    The orderings are drawn as Captum draws them (one ``torch.randperm(n_features)`` per sample,
    after the first forward), so the same ``torch.manual_seed`` gives Captum's numbers.

    Attributions have shape ``(*output.shape, *input.shape[1:])`` per input, as in Captum: the
    inputs' shape when the forward returns one scalar per example (after ``target``),
    ``(batch, C, ...)`` for a ``(batch, C)`` output (one map per output), first dimension 1 for
    one scalar for the whole batch. Their dtype is the output's floating dtype (float32 for an
    integer forward, as Captum; Captum returns float32 for float64 forwards too, llmattr
    float64).

    Args:
        forward_func: the model or forward function (for :meth:`attribute_future`, one that
            returns a ``torch.futures.Future``).
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
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
            feature_mask: feature ids per input (integer or whole-number floats; as in Captum,
                ``n_features`` is the largest id + 1).
            n_samples: random orderings.
            perturbations_per_eval: evaluations in one forward (results do not depend on it).
            show_progress: show a progress bar titled ``"Shapley Value Sampling attribution"``.
            generator: llmattr: a ``torch.Generator`` or an int seed (default: torch's global
                one, as Captum).

        Returns:
            Attributions per input, ``(*output.shape, *input.shape[1:])``.
        """
        return self._sampling(
            False, inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
            perturbations_per_eval, show_progress, generator,
        )  # fmt: skip

    def attribute_future(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> torch.Future:
        """:meth:`attribute` for a forward that returns ``torch.futures.Future``: every forward
        is issued at once; the returned Future holds the attributions once all outputs arrived
        (an error in one of them is set on it)."""
        return self._sampling(
            True, inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
            perturbations_per_eval, show_progress, generator,
        )  # fmt: skip

    def _sampling(
        self,
        futures: bool,
        inputs: TensorOrTuple,
        baselines: BaselineType,
        target: TargetType,
        additional_forward_args: Any,
        feature_mask: MaskType,
        n_samples: int,
        perturbations_per_eval: int,
        show_progress: bool,
        generator: torch.Generator | int | None,
    ) -> Any:
        check_positive_int(n_samples, "n_samples")
        call, masks, run = _setup(
            self, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, futures,
        )  # fmt: skip
        n = masks.n_features
        gen = make_generator(generator)
        orders = torch.stack([torch.randperm(n, generator=gen) for _ in range(n_samples)])
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

        outputs: list[Tensor] = []  # allocated once the output's size is known

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            return run.perturbed(masks.absent(present(start, end)))

        def fold(start: int, end: int, out: Tensor) -> None:
            if not outputs:
                outputs.append(torch.empty(total, run.rows, run.n_outputs, dtype=torch.float64))
            outputs[0][start:end] = out

        def result() -> TensorOrTuple:
            # values[s, t]: output with the first t features of ordering s present (t = 0 .. n)
            values = torch.cat(
                [
                    outputs[0][:1].expand(n_samples, 1, -1, -1),
                    outputs[0][1:].reshape(n_samples, n - 1, run.rows, run.n_outputs),
                    run.initial.expand(n_samples, 1, -1, -1),
                ],
                dim=1,
            )
            marginal = values[:, 1:] - values[:, :-1]  # (s, n, rows, out): feature orders[s, t]
            # feature f's marginal in ordering s sits at position ranks[s, f]
            index = ranks[:, :, None, None].expand(-1, -1, run.rows, run.n_outputs)
            credits = marginal.gather(1, index).mean(0).permute(1, 2, 0)  # (rows, out, n)
            return call.result(run.feature_attributions(credits, masks))

        run.evaluate(total, build, fold)
        return run.finish(result)


class ShapleyValues(ShapleyValueSampling):
    """Exact Shapley values over feature groups.

    Every one of the ``2^n`` coalitions of the ``n`` features is evaluated once (features outside
    the coalition set to the baseline) and combined with the Shapley weights — the same values as
    Captum's average of marginal contributions over all ``n!`` orderings, at ``2^n - 1`` forwards
    instead of ``n! · n``. Use :class:`ShapleyValueSampling` beyond ~15 features.

    Attributions have shape ``(*output.shape, *input.shape[1:])`` per input, as in Captum: the
    inputs' shape when the forward returns one scalar per example (after ``target``),
    ``(batch, C, ...)`` for a ``(batch, C)`` output (one map per output), first dimension 1 for
    one scalar for the whole batch. Their dtype is the output's floating dtype (float32 for an
    integer forward, as Captum; Captum returns float32 for float64 forwards too, llmattr
    float64).

    Args:
        forward_func: the model or forward function.
    """

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        """Exact Shapley values, given to every element of each feature.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: values of absent features (as for :class:`~llmattr.FeatureAblation`).
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: feature ids per input.
            perturbations_per_eval: coalitions evaluated in one forward.
            show_progress: show a progress bar titled ``"Shapley Values attribution"``.

        Returns:
            Attributions per input, ``(*output.shape, *input.shape[1:])``; per example they sum
            to ``f(x) - f(baselines)``.
        """
        return self._exact(
            False, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress,
        )  # fmt: skip

    def attribute_future(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> torch.Future:
        """:meth:`attribute` for a forward that returns ``torch.futures.Future``; returns a
        Future of the attributions. ``n_samples`` is ignored (Captum's signature, inherited
        from ShapleyValueSampling)."""
        return self._exact(
            True, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress,
        )  # fmt: skip

    def _exact(
        self,
        futures: bool,
        inputs: TensorOrTuple,
        baselines: BaselineType,
        target: TargetType,
        additional_forward_args: Any,
        feature_mask: MaskType,
        perturbations_per_eval: int,
        show_progress: bool,
    ) -> Any:
        call, masks, run = _setup(
            self, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, futures,
        )  # fmt: skip
        n = masks.n_features
        if n > 16:
            warnings.warn(
                f"Exact Shapley values over {n} features take {2**n - 1} forward passes; "
                "ShapleyValueSampling approximates them at a chosen cost.",
                stacklevel=3,
            )
        device = masks.masks[0].device
        bits = 1 << torch.arange(n)
        credits: list[Tensor] = []  # allocated once the output's size is known
        total = (1 << n) - 1  # every coalition but the full one, whose value is f(x)

        def subsets(start: int, end: int) -> Tensor:
            return (torch.arange(start, end)[:, None] & bits) != 0

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            return run.perturbed(masks.absent(subsets(start, end).to(device)))

        def table() -> Tensor:
            if not credits:
                shape = (run.rows, run.n_outputs, n)
                credits.append(torch.zeros(shape, dtype=torch.float64))
            return credits[0]

        def fold(start: int, end: int, outputs: Tensor) -> None:
            coef = shapley_coefficients(subsets(start, end))
            table().add_(torch.einsum("kro,kn->ron", outputs, coef))

        def result() -> TensorOrTuple:
            full = shapley_coefficients(torch.ones(1, n, dtype=torch.bool))
            table().add_(torch.einsum("ro,n->ron", run.initial, full[0]))
            return call.result(run.feature_attributions(table(), masks))

        run.evaluate(total, build, fold)
        return run.finish(result)
