"""KernelShap (Lundberg and Lee, 2017): Shapley values from a linear fit on kernel-drawn coalitions.

Coalitions are drawn as Captum draws them (the full and the empty coalition first, then a size
from the Shapley kernel and that many features by a random ranking), per example when the forward
returns one value per example, so the same ``torch.manual_seed`` gives Captum's coalitions.

The fit is where llmattr differs by default: Captum approximates the Shapley constraints by
weighting the full and empty coalitions 10⁶ times the others in an ordinary float32 regression;
llmattr solves the constrained least-squares problem exactly (no intercept beyond
``f(baselines)``, attributions summing to ``f(x) - f(baselines)``), so every estimate is complete
and the estimates converge to the exact Shapley values. Passing an ``interpretable_model`` (e.g.
``SkLearnLinearRegression()``) runs Captum's weighted regression instead, with Captum's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.call import Call
from .._core.features import FeatureMasks
from .._core.inputs import BaselineType, TensorOrTuple, format_baselines
from .._core.perturbation import PerturbationRun, check_positive_int, make_generator
from .._core.targets import TargetType
from ._sampled import (
    SampledSurrogate,
    captum_fit_draws,
    check_interpretable_model,
    fits_like_captum_regression,
    lime_feature_masks,
)
from .lime import Lime
from .surrogates import LinearRegression

__all__ = ["KernelShap", "shapley_kernel_samples"]

# Captum's weight of the full and the empty coalition in its unconstrained regression
INF_WEIGHT = 1e6


class KernelShap(Lime):
    """KernelShap: Shapley values from a linear fit on coalitions drawn from the Shapley kernel.

    Args:
        forward_func: the model or forward function.
        interpretable_model: None (default) for llmattr's exactly constrained fit; or a
            surrogate (Captum-style such as ``SkLearnLinearRegression()``, or an llmattr one) to
            fit Captum's way: an unconstrained regression where the full and empty coalitions
            weigh 10⁶ and the others 1. ``SkLearnLinearRegression()`` reproduces Captum's
            KernelShap.
    """

    def __init__(self, forward_func: Callable[..., Any], interpretable_model: Any = None) -> None:
        # a Lime (as Captum's KernelShap is, so isinstance checks hold), but not Lime.__init__:
        # KernelShap draws its own coalitions and, by default, fits no interpretable model
        SampledSurrogate.__init__(self, forward_func)
        check_interpretable_model(interpretable_model)
        self.interpretable_model = interpretable_model
        self.similarity_func = None
        self.perturb_func = None
        self.from_interp_rep_transform = None
        self.to_interp_rep_transform = None
        self.perturb_interpretable_space = True

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
            baselines: values of absent features (default 0).
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input (Captum's rules: shifted to start at 0,
                gaps allowed).
            n_samples: coalitions per example, the full and the empty one included (as Captum).
            perturbations_per_eval: coalitions evaluated in one forward.
            return_input_shape: spread over the elements (default) or return per feature.
            show_progress: show a progress bar.
            generator: a ``torch.Generator`` or an int seed (default: torch's global generator).

        Returns:
            Attributions shaped like ``inputs``, or ``(batch, *out, n_features)``.
        """
        check_positive_int(n_samples, "n_samples")
        call = Call.of(inputs, target, additional_forward_args)
        masks = lime_feature_masks(feature_mask, call.inputs)
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
        gen = make_generator(generator)
        model = self.interpretable_model
        if self._per_example(run) and (model is None or fits_like_captum_regression(model)):
            return self._attribute_all(run, masks, n_samples, gen, return_input_shape)
        coefs = []
        for group in self._groups(run, masks, {}):
            # Captum's sequence per example: the full and the empty coalition, then
            # n_samples - 2 kernel draws
            drawn = shapley_kernel_samples(n, max(n_samples - 2, 0), gen)
            full, empty = torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool)
            if self.interpretable_model is not None:
                samples = torch.cat([full, empty, drawn])[:n_samples].double()
                outputs, _ = self._evaluate(group, [], samples, None, None)
                size = samples.sum(1)
                weights = torch.where((size == 0) | (size == n), INF_WEIGHT, 1.0).double()
                coefs.append(self._fit(self.interpretable_model, samples, outputs, weights))
                continue
            # the full coalition's output is the unperturbed one the run already has
            samples = torch.cat([empty, drawn]).double()
            outputs, _ = self._evaluate(group, [], samples, None, None)
            coefs.append(
                _constrained_fit(samples[1:], outputs[1:], outputs[0], group.run.initial[0])
            )
            _draw_like_captums_fit(n, gen)
        return self._result(run, masks, torch.stack(coefs), return_input_shape)

    def _attribute_all(
        self,
        run: PerturbationRun,
        masks: FeatureMasks,
        n_samples: int,
        gen: torch.Generator | None,
        return_input_shape: bool,
    ) -> TensorOrTuple:
        """Captum's numbers, faster: every example's coalitions drawn in Captum's order (with
        the draws of Captum's fit in between), evaluated in one run, then each example fitted."""
        n, batch, model = masks.n_features, run.call.batch, self.interpretable_model
        full, empty = torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool)
        drawn = []
        for _ in range(batch):
            coalitions = shapley_kernel_samples(n, max(n_samples - 2, 0), gen)
            if model is None:  # the full coalition's output is the unperturbed one
                drawn.append(torch.cat([empty, coalitions]))
                _draw_like_captums_fit(n, gen)
            else:
                drawn.append(torch.cat([full, empty, coalitions])[:n_samples])
                for _ in range(run.n_outputs):  # one fit per output
                    captum_fit_draws(model, n)
        samples = torch.stack(drawn, 1).double()  # (samples, batch, n)
        outputs, _ = self._evaluate_all(run, masks, samples, None)
        if model is None:
            coefs = [
                _constrained_fit(samples[1:, e], outputs[1:, e], outputs[0, e], run.initial[e])
                for e in range(batch)
            ]
            return self._result(run, masks, torch.stack(coefs), return_input_shape)
        size = samples[:, 0].sum(1)
        weights = torch.where((size == 0) | (size == n), INF_WEIGHT, 1.0).double()
        state = torch.get_rng_state()  # the fits' own draws were made above already
        try:
            coefs = [self._fit(model, samples[:, e], outputs[:, e], weights) for e in range(batch)]
        finally:
            torch.set_rng_state(state)
        return self._result(run, masks, torch.stack(coefs), return_input_shape)


def _draw_like_captums_fit(n: int, generator: torch.Generator | None) -> None:
    """Draw the random numbers Captum's fit (``SkLearnLinearRegression``) draws: a DataLoader's
    seed, then a fresh ``nn.Linear(n, 1)``'s initial weights and bias; so the next example's
    coalitions are Captum's too."""
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    torch.empty(1, n).uniform_(generator=generator)
    torch.empty(1).uniform_(generator=generator)


def _constrained_fit(z: Tensor, y: Tensor, v0: Tensor, vx: Tensor) -> Tensor:
    """Least squares ``y - v0 ≈ z @ φ`` subject to ``Σ φ = vx - v0``, per output.

    Args:
        z: ``(m, n)`` coalitions; y: ``(m, n_outputs)`` their outputs; v0, vx: ``(n_outputs,)``
            outputs of the empty and the full coalition.

    Returns:
        ``(n_outputs, n)``.
    """
    gain = (vx - v0).reshape(1, -1)  # (1, n_outputs)
    n = z.shape[1]
    if n == 1 or z.shape[0] == 0:
        # nothing to regress on: the gain shared equally (the exact answer for n == 1)
        return (gain.t() / n).expand(-1, n).clone()
    # eliminate the last feature with the constraint: φ_n = gain - Σ_{i<n} φ_i
    rhs = y - v0.reshape(1, -1) - z[:, -1:] * gain
    design = z[:, :-1] - z[:, -1:]
    head, _ = LinearRegression(fit_intercept=False).fit(design, rhs)
    return torch.cat([head, gain.t() - head.sum(1, keepdim=True)], 1)


def shapley_kernel_samples(n: int, n_samples: int, generator: torch.Generator | None) -> Tensor:
    """``(n_samples, n)`` bool coalitions drawn from the Shapley kernel, as Captum draws them.

    Each draw takes a size ``s`` in ``1 .. n - 1`` with probability ``∝ (n - 1) / (s (n - s))``
    (Captum: ``torch.multinomial`` over float32 probabilities) and then keeps the ``s`` features
    with the largest of ``n`` standard normal values. On torch's global generator the draws
    follow one another as Captum's do, so a seed gives Captum's coalitions; with an explicit
    ``generator`` (llmattr's argument, no order owed) all sizes and all normals are drawn in
    two calls.
    """
    if n < 2:  # no coalition but the empty and the full one
        return torch.zeros(0, n, dtype=torch.bool)
    sizes = torch.arange(n, dtype=torch.float32)
    probs = torch.tensor(n - 1) / (sizes * (n - sizes))
    probs[0] = 0.0
    probs = (probs / probs.sum()).reshape(1, -1)
    # torch.multinomial(probs, 1) is argmax(probs / q) for q ~ Exp(1) shaped like probs, drawn
    # on the same generator (torch's one-sample path); drawing q ourselves gives the same sizes
    # and the same stream without multinomial's per-call validity check, its main cost
    exp = torch.empty(n_samples, n)
    values = torch.empty(n_samples, n)
    if generator is not None:
        exp.exponential_(generator=generator)
        values.normal_(generator=generator)
    else:
        for i in range(n_samples):  # interleaved draws: Captum's random stream
            exp[i : i + 1].exponential_()
            torch.randn(1, n, out=values[i : i + 1])
    drawn = torch.div(probs, exp).argmax(dim=1, keepdim=True)
    # "above the (n - s)-th smallest value" is "among the s largest" (normals do not tie)
    ranks = values.argsort(dim=1, descending=True).argsort(dim=1)
    return ranks < drawn
