"""Lime (Ribeiro et al., 2016) and KernelShap (Lundberg and Lee, 2017) on the perturbation engine.

Both draw binary *interpretable* samples (which features are present), evaluate the model on the
corresponding perturbed inputs, and fit a linear surrogate from samples to outputs; its
coefficients are the attributions. Lime weighs samples by their similarity to the input and fits a
regularized model; KernelShap draws coalitions from the Shapley kernel and solves the constrained
least-squares problem whose solution converges to the exact Shapley values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.base import PerturbationAttribution
from .._core.call import Call
from .._core.features import FeatureMasks
from .._core.inputs import BaselineType, TensorOrTuple, as_tuple, format_baselines
from .._core.perturbation import PerturbationRun, check_positive_int, make_generator
from .._core.targets import TargetType
from .surrogates import InterpretableModel, Lasso, LinearRegression

__all__ = ["KernelShap", "Lime", "exp_kernel_similarity", "shapley_kernel_samples"]


def exp_kernel_similarity(
    distance_mode: str = "cosine", kernel_width: float = 1.0
) -> Callable[..., Tensor]:
    """Lime's default similarity: ``exp(-d² / (2 w²))`` of the distance between the original and
    the perturbed input (``"cosine"``: 1 - cosine similarity, or ``"euclidean"``).

    The returned function takes ``(original_input, perturbed_input, perturbed_interpretable_input)``
    (tensors or tuples, batch first) and returns one similarity per example, ``(batch,)``.
    """
    if distance_mode not in ("cosine", "euclidean"):
        raise ValueError(f"distance_mode must be 'cosine' or 'euclidean', got {distance_mode!r}.")

    def similarity(
        original: Any, perturbed: Any, interpretable: Any = None, **kwargs: Any
    ) -> Tensor:
        a = torch.cat([t.reshape(t.shape[0], -1).double() for t in as_tuple(original)], 1)
        b = torch.cat([t.reshape(t.shape[0], -1).double() for t in as_tuple(perturbed)], 1)
        if distance_mode == "cosine":
            d = 1 - F.cosine_similarity(a, b.to(a.device), dim=1)
        else:
            d = (a - b.to(a.device)).norm(dim=1)
        return torch.exp(-(d**2) / (2 * kernel_width**2))

    similarity.batched = True  # type: ignore[attr-defined]
    return similarity


class _SampledSurrogate(PerturbationAttribution):
    """Shared flow: draw interpretable samples, evaluate them, fit, return coefficients."""

    def _evaluate_samples(
        self,
        run: PerturbationRun,
        masks: FeatureMasks,
        samples: Tensor,
        make_inputs: Callable[[int, int], tuple[Tensor, ...]] | None = None,
        similarity: Callable[..., Any] | None = None,
        similarity_kwargs: dict[str, Any] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Outputs ``(n, rows, n_outputs)`` of the samples and, when ``similarity`` is given,
        their weights ``(n, rows)``. ``make_inputs(start, end)`` builds the stacked inputs of
        samples ``[start, end)`` when they are not the default baseline substitution. A user's
        ``similarity`` is called as Captum calls it: ``(original, perturbed, sample, **kwargs)``
        with the float ``(1, n_features)`` interpretable sample."""
        extra = similarity_kwargs or {}
        n = samples.shape[0]
        outputs = torch.empty(n, run.rows, run.n_outputs, dtype=torch.float64)
        weights = torch.empty(n, run.rows, dtype=torch.float64) if similarity else None
        device = masks.masks[0].device
        call = run.call

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            if make_inputs is None:
                present = samples[start:end] != 0  # binary by default; nonzero is present
                stacked = run.perturbed(masks.absent(present.to(device)))
            else:
                stacked = make_inputs(start, end)
            k = end - start
            if getattr(similarity, "batched", False) and weights is not None and not run.aggregate:
                # the built-in kernel compares rows: one call for the whole chunk
                original = tuple(x.repeat(k, *([1] * (x.dim() - 1))) for x in call.inputs)
                sim = similarity(original, stacked)  # type: ignore[misc]
                weights[start:end] = sim.reshape(k, call.batch).double().cpu()
            elif similarity is not None and weights is not None:
                for j in range(k):
                    rows = tuple(t[j * call.batch : (j + 1) * call.batch] for t in stacked)
                    sim = similarity(
                        call.result(list(call.inputs)),
                        call.result(list(rows)),
                        _as_float(samples[start + j : start + j + 1]),
                        **extra,
                    )
                    weights[start + j] = _per_row(sim, run.rows)
            return stacked

        def fold(start: int, end: int, out: Tensor) -> None:
            outputs[start:end] = out

        run.evaluate(n, build, fold)
        return outputs, weights

    @staticmethod
    def _result(
        call: Call,
        run: PerturbationRun,
        masks: FeatureMasks,
        coef: Tensor,
        return_input_shape: bool,
    ) -> TensorOrTuple:
        credits = coef.reshape(run.rows, run.n_outputs, masks.n_features)
        if return_input_shape:
            return call.result(run.feature_attributions(credits, masks))
        return credits.reshape(run.rows, *run.out_shape, masks.n_features).to(run._dtype())


def _per_row(similarity: Any, rows: int) -> Tensor:
    sim = torch.as_tensor(similarity, dtype=torch.float64).reshape(-1).cpu()
    if sim.numel() == 1:
        return sim.expand(rows)
    if sim.numel() != rows:
        # an aggregate output has one row: the batch's examples are averaged
        return sim.mean().expand(rows)
    return sim


class Lime(_SampledSurrogate):
    """Lime: a weighted, regularized linear surrogate fitted on random feature subsets.

    By default ``n_samples`` interpretable samples are drawn with each feature present with
    probability 1/2, the absent features set to the baseline, samples weighted by
    :func:`exp_kernel_similarity` and a :class:`~llmattr.attr.surrogates.Lasso` (α = 0.01) fitted
    per example and output. Every piece can be replaced.

    Args:
        forward_func: the model or forward function.
        interpretable_model: an :class:`~llmattr.attr.surrogates.InterpretableModel`
            (``LinearRegression``, ``Ridge``, ``Lasso`` or your own).
        similarity_func: ``f(original_input, perturbed_input, perturbed_interpretable_input,
            **kwargs)`` returning a weight per example (or one number).
        perturb_func: ``f(original_input, **kwargs)`` returning one ``(1, n_features)``
            interpretable sample (kwargs carry ``num_interp_features``, ``feature_mask``,
            ``baselines``, ``generator``); with ``to_interp_rep_transform`` it returns a
            perturbed input instead. The surrogate is fitted on the sample's values; without a
            ``from_interp_rep_transform``, nonzero entries mark the features kept.
        from_interp_rep_transform: ``f(sample, original_input, **kwargs)`` building the model
            input of an interpretable sample (default: absent features set to the baseline).
        to_interp_rep_transform: ``f(perturbed_input, original_input, **kwargs)`` mapping a
            perturbed input back to its ``(1, n_features)`` interpretable sample; set it to
            sample in input space with ``perturb_func``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        interpretable_model: InterpretableModel | None = None,
        similarity_func: Callable[..., Any] | None = None,
        perturb_func: Callable[..., Any] | None = None,
        from_interp_rep_transform: Callable[..., Any] | None = None,
        to_interp_rep_transform: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(forward_func)
        if interpretable_model is not None and not hasattr(interpretable_model, "fit"):
            raise TypeError("interpretable_model must have a fit(X, y, weights) method.")
        if to_interp_rep_transform is not None and perturb_func is None:
            raise ValueError(
                "to_interp_rep_transform maps perturbed inputs back to samples; it needs a "
                "perturb_func that returns perturbed inputs."
            )
        self.interpretable_model = interpretable_model or Lasso(alpha=0.01)
        self.similarity_func = similarity_func or exp_kernel_similarity()
        self.perturb_func = perturb_func
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        n_samples: int = 50,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> TensorOrTuple:
        """Lime attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: values of absent features.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input (the interpretable features).
            n_samples: interpretable samples drawn.
            perturbations_per_eval: samples evaluated in one forward.
            return_input_shape: spread coefficients over the inputs' elements (default), or
                return them per feature, shape ``(batch, *out, n_features)``.
            show_progress: show a progress bar.
            generator: a ``torch.Generator`` or an int seed for the default sampler.

        Returns:
            Attributions shaped like ``inputs``, or per-feature coefficients.
        """
        check_positive_int(n_samples, "n_samples")
        call = Call.of(inputs, target, additional_forward_args)
        masks = FeatureMasks.of(feature_mask, call.inputs)
        bases = format_baselines(baselines, call.inputs)
        run = PerturbationRun(
            self.forward_func, call, bases, perturbations_per_eval, show_progress, self.get_name()
        )
        run.check_masks(masks)
        gen = make_generator(generator)
        original = call.result(list(call.inputs))
        kwargs = {
            "num_interp_features": masks.n_features,
            "feature_mask": feature_mask,
            "baselines": baselines,
            "target": target,
            "additional_forward_args": additional_forward_args,
            "generator": gen,
        }
        make_inputs: Callable[[int, int], tuple[Tensor, ...]] | None = None
        if self.to_interp_rep_transform is not None and self.perturb_func is not None:
            # sampling in input space: perturbed inputs first, their samples from the transform
            to_interp = self.to_interp_rep_transform
            drawn = [self.perturb_func(original, **kwargs) for _ in range(n_samples)]
            samples = torch.stack(
                [_as_sample(to_interp(p, original, **kwargs), masks) for p in drawn]
            )

            def make_inputs(start: int, end: int) -> tuple[Tensor, ...]:
                return _stack_inputs(drawn[start:end])

        else:
            if self.perturb_func is None:
                samples = (torch.rand(n_samples, masks.n_features, generator=gen) < 0.5).float()
            else:
                perturb = self.perturb_func
                samples = torch.stack(
                    [_as_sample(perturb(original, **kwargs), masks) for _ in range(n_samples)]
                )
            if self.from_interp_rep_transform is not None:
                from_interp = self.from_interp_rep_transform

                def make_inputs(start: int, end: int) -> tuple[Tensor, ...]:
                    return _stack_inputs(
                        [
                            from_interp(samples[i : i + 1], original, **kwargs)
                            for i in range(start, end)
                        ]
                    )

        outputs, weights = self._evaluate_samples(
            run, masks, samples, make_inputs, self.similarity_func, kwargs
        )
        assert weights is not None
        n = samples.shape[0]
        y = outputs.reshape(n, -1)
        w = weights.repeat_interleave(run.n_outputs, dim=1)
        coef, _ = self.interpretable_model.fit(samples.double(), y, w)
        return self._result(call, run, masks, coef, return_input_shape)


def _as_sample(value: Any, masks: FeatureMasks) -> Tensor:
    """One interpretable sample as a float vector. Values are kept as given (Captum fits the
    surrogate on them, so a custom ``from_interp_rep_transform`` may use non-binary ones); the
    default input construction treats nonzero entries as present."""
    sample = _as_float(torch.as_tensor(value).detach().reshape(-1).cpu())
    if sample.numel() != masks.n_features:
        raise ValueError(
            f"An interpretable sample has {sample.numel()} entries but there are "
            f"{masks.n_features} features."
        )
    return sample


def _as_float(sample: Tensor) -> Tensor:
    return sample if sample.is_floating_point() else sample.float()


def _stack_inputs(perturbed: list[Any]) -> tuple[Tensor, ...]:
    parts = [as_tuple(p) for p in perturbed]
    return tuple(torch.cat([p[j] for p in parts]) for j in range(len(parts[0])))


class KernelShap(_SampledSurrogate):
    """KernelShap: Shapley values from a linear fit on coalitions drawn from the Shapley kernel.

    Coalition sizes ``s`` are drawn with probability ``∝ (n - 1) / (s (n - s))`` and members
    uniformly; the empty coalition is evaluated once. The fit enforces the Shapley constraints —
    no intercept beyond ``f(baselines)`` and attributions summing to ``f(x) - f(baselines)`` — so
    the estimate converges to the exact Shapley values as ``n_samples`` grows, and every estimate
    is complete.

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
        return_input_shape: bool = True,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> TensorOrTuple:
        """KernelShap attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: values of absent features.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input.
            n_samples: coalitions drawn.
            perturbations_per_eval: coalitions evaluated in one forward.
            return_input_shape: spread over the elements (default) or return per feature.
            show_progress: show a progress bar.
            generator: a ``torch.Generator`` or an int seed.

        Returns:
            Attributions shaped like ``inputs``, or ``(batch, *out, n_features)``.
        """
        check_positive_int(n_samples, "n_samples")
        call = Call.of(inputs, target, additional_forward_args)
        masks = FeatureMasks.of(feature_mask, call.inputs)
        run = PerturbationRun(
            self.forward_func,
            call,
            format_baselines(baselines, call.inputs),
            perturbations_per_eval,
            show_progress,
            self.get_name(),
        )
        run.check_masks(masks)
        n = masks.n_features
        coalitions = shapley_kernel_samples(n, n_samples, make_generator(generator))
        empty = torch.zeros(1, n, dtype=torch.bool)
        outputs, _ = self._evaluate_samples(run, masks, torch.cat([empty, coalitions]))
        v0 = outputs[0].reshape(1, -1)  # (1, rows * out)
        gain = run.initial.reshape(1, -1) - v0  # f(x) - f(baselines)
        if n == 1:
            coef = gain.t()
        else:
            z = coalitions.double()
            y = outputs[1:].reshape(coalitions.shape[0], -1) - v0 - z[:, -1:] * gain
            X = z[:, :-1] - z[:, -1:]
            head, _ = LinearRegression(fit_intercept=False).fit(X, y)
            coef = torch.cat([head, gain.t() - head.sum(1, keepdim=True)], 1)
        return self._result(call, run, masks, coef, return_input_shape)


def shapley_kernel_samples(n: int, n_samples: int, generator: torch.Generator | None) -> Tensor:
    """``(n_samples, n)`` coalitions drawn from the Shapley kernel (sizes 1 .. n - 1)."""
    if n < 2:
        return torch.zeros(0, n, dtype=torch.bool)
    sizes = torch.arange(1, n)
    probs = (n - 1) / (sizes * (n - sizes)).double()
    drawn = sizes[torch.multinomial(probs / probs.sum(), n_samples, True, generator=generator)]
    order = torch.argsort(torch.rand(n_samples, n, generator=generator), dim=1)
    ranks = torch.argsort(order, dim=1)
    return ranks < drawn[:, None]
