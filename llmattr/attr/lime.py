"""Lime (Ribeiro et al., 2016) on the perturbation engine, with Captum's interface and sampling.

Lime draws binary *interpretable* samples (which features are present), evaluates the model on
the corresponding perturbed inputs, weighs each sample by its similarity to the input and fits a
linear surrogate from samples to outputs; its coefficients are the attributions. As in Captum,
each example of a batch gets its own samples and its own fit when the forward returns one value
per example, and the default sampler draws with ``torch.bernoulli`` in Captum's order, so the
same ``torch.manual_seed`` gives Captum's samples (and, with the same interpretable model,
Captum's attributions).

With the default sampler, transforms and similarity and a surrogate whose fit draws a known
amount of randomness (llmattr's ``SkLearn*`` models and torch surrogates), every example's
samples are drawn first (in Captum's order, the fits' draws in between), then evaluated
together, ``perturbations_per_eval`` samples of every example per forward, then fitted: the
same numbers and the same global random stream, in far fewer forwards.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.call import Call
from .._core.features import FeatureMasks
from .._core.inputs import BaselineType, TensorOrTuple, as_tuple, format_baselines
from .._core.perturbation import PerturbationRun, check_positive_int, make_generator
from .._core.targets import TargetType
from ._sampled import (
    Group,
    SampledSurrogate,
    captum_fit_draws,
    check_interpretable_model,
    fits_like_captum_regression,
    lime_feature_masks,
)
from .lime_base import LimeBase
from .surrogates import Lasso

__all__ = [
    "KernelShap",  # noqa: F822 (lazy: see __getattr__)
    "Lime",
    "LimeBase",
    "default_lime_model",
    "exp_kernel_similarity",
    "get_exp_kernel_similarity_function",
    "shapley_kernel_samples",  # noqa: F822
]


def __getattr__(name: str) -> Any:
    # KernelShap subclasses Lime (as in Captum), so kernel_shap imports this module; it is
    # re-exported here lazily, which keeps ``from llmattr.attr.lime import KernelShap`` working
    # without an import cycle
    if name in ("KernelShap", "shapley_kernel_samples"):
        from . import kernel_shap

        return getattr(kernel_shap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exp_kernel_similarity(
    distance_mode: str = "cosine", kernel_width: float = 1.0
) -> Callable[..., Tensor]:
    """Lime's default similarity: ``exp(-d² / (2 w²))`` of the distance between the original and
    the perturbed input (``"cosine"``: 1 - cosine similarity, or ``"euclidean"``).

    The returned function takes ``(original_input, perturbed_input, perturbed_interpretable_input)``
    (tensors or tuples, batch first) and returns one similarity per example, ``(batch,)``: the
    inputs of one example are compared as one concatenated vector. Lime computes it for all
    samples at once.
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

    similarity._kernel = (distance_mode, kernel_width)  # type: ignore[attr-defined]
    return similarity


def get_exp_kernel_similarity_function(
    distance_mode: str = "cosine", kernel_width: float = 1.0
) -> Callable[..., Tensor]:
    """Captum's name for :func:`exp_kernel_similarity` (a batch of one gives one similarity)."""
    return exp_kernel_similarity(distance_mode, kernel_width)


def default_lime_model() -> Any:
    """Lime's default surrogate: Captum's ``SkLearnLasso(alpha=0.01)`` when scikit-learn is
    installed (Captum's numbers), else llmattr's torch ``Lasso(alpha=0.01)``, which minimizes the
    same weighted objective (to a tighter tolerance, in float64)."""
    from .linear_models import SkLearnLasso

    try:
        return SkLearnLasso(alpha=0.01)
    except ImportError:
        return Lasso(alpha=0.01)


class Lime(LimeBase):
    """Lime: a weighted, regularized linear surrogate fitted on random feature subsets.

    A :class:`LimeBase` (as in Captum) whose interpretable space is binary: one entry per
    feature of ``feature_mask``, present or set to the baseline; its samples are evaluated in
    vectorized batches rather than one input at a time.

    By default each of ``n_samples`` interpretable samples keeps every feature with probability
    1/2 (``torch.bernoulli``, Captum's order), absent features take the baseline, samples are
    weighted by :func:`exp_kernel_similarity` (cosine, width 1) and :func:`default_lime_model`
    (``SkLearnLasso(alpha=0.01)``) is fitted per example. Every piece can be replaced.

    Args:
        forward_func: the model or forward function.
        interpretable_model: a Captum-style model (``fit(DataLoader of (x, y, w))`` and
            ``representation()``: :class:`~llmattr.attr.linear_models.SkLearnLasso`,
            ``SGDLasso``, ..., Captum's own, or your ``Model`` subclass), fitted once per example
            and output on float32 data as Captum does; or an llmattr surrogate
            (:class:`~llmattr.attr.surrogates.Lasso`, ``Ridge``, ``LinearRegression``, or any
            object whose ``fit(X, y, weights)`` returns ``(coef, intercept)``), fitted on every
            output at once in float64.
        similarity_func: ``f(original_input, perturbed_input, perturbed_interpretable_input,
            **kwargs)`` returning the sample's weight (a number or a one-element tensor).
        perturb_func: ``f(original_input, **kwargs)`` returning one ``(1, n_features)``
            interpretable sample, or a generator function yielding them (kwargs carry
            ``num_interp_features``, ``feature_mask``, ``baselines`` and, when given to
            ``attribute``, ``generator``); with ``to_interp_rep_transform`` it returns a
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
        interpretable_model: Any = None,
        similarity_func: Callable[..., Any] | None = None,
        perturb_func: Callable[..., Any] | None = None,
        from_interp_rep_transform: Callable[..., Any] | None = None,
        to_interp_rep_transform: Callable[..., Any] | None = None,
    ) -> None:
        # not LimeBase.__init__: Lime has defaults for every piece LimeBase requires
        SampledSurrogate.__init__(self, forward_func)
        check_interpretable_model(interpretable_model)
        if to_interp_rep_transform is not None and perturb_func is None:
            raise ValueError(
                "to_interp_rep_transform maps perturbed inputs back to samples; it needs a "
                "perturb_func that returns perturbed inputs."
            )
        self.interpretable_model = (
            default_lime_model() if interpretable_model is None else interpretable_model
        )
        self.similarity_func = similarity_func or exp_kernel_similarity()
        self.perturb_func = perturb_func
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform
        # LimeBase's attribute: samples are interpretable unless they are perturbed inputs
        self.perturb_interpretable_space = to_interp_rep_transform is None

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
        """Lime attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: values of absent features (default 0).
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input (the interpretable features); as in
                Captum ids are shifted to start at 0 and may skip values.
            n_samples: interpretable samples drawn per example (per batch for a forward that
                returns one value for the whole batch).
            perturbations_per_eval: samples evaluated in one forward.
            return_input_shape: spread coefficients over the inputs' elements (default), or
                return them per feature, shape ``(batch, *out, n_features)``.
            show_progress: show a progress bar.
            generator: a ``torch.Generator`` or an int seed for the sampling (default: torch's
                global generator, as Captum).

        Returns:
            Attributions shaped like ``inputs`` (batch 1 for a whole-batch output), or
            per-feature coefficients. A forward with several outputs per example gets one map
            per output, ``(batch, *out, ...)`` (Captum refuses such forwards).
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
        gen = make_generator(generator)
        extra = {} if generator is None else {"generator": gen}
        if self._all_at_once(run):
            return self._attribute_all(run, masks, n_samples, gen, return_input_shape)
        coefs = []
        for group in self._groups(run, masks, extra):
            # per group, in Captum's order: draw every sample, evaluate them, fit
            raw = self._draw(group, n_samples, gen)
            make_input: Callable[[int], Any] | None = None
            if self.to_interp_rep_transform is not None:
                drawn, to_interp = raw, self.to_interp_rep_transform
                raw = [to_interp(p, group.inputs, **group.kwargs) for p in drawn]
                make_input = drawn.__getitem__  # the model sees the drawn inputs themselves
            elif self.from_interp_rep_transform is not None:
                make_input = functools.partial(
                    _from_interp, self.from_interp_rep_transform, raw, group
                )
            if self.perturb_func is None and self.to_interp_rep_transform is None:
                samples = torch.cat(raw).double()  # the default sampler's (1, n) rows
            else:
                samples = torch.stack([_as_sample(s, masks) for s in raw])
            outputs, weights = self._evaluate(group, raw, samples, make_input, self.similarity_func)
            coefs.append(self._fit(self.interpretable_model, samples, outputs, weights))
        return self._result(run, masks, torch.stack(coefs), return_input_shape)

    def _all_at_once(self, run: PerturbationRun) -> bool:
        """Whether the fast path gives the same numbers: per-example groups with the default
        sampler, transforms and similarity, and a surrogate whose fit draws a known amount of
        randomness (so every example's samples can be drawn before the first fit)."""
        return (
            self._per_example(run)
            and self.perturb_func is None
            and self.from_interp_rep_transform is None
            and self.to_interp_rep_transform is None
            and getattr(self.similarity_func, "_kernel", None) is not None
            and fits_like_captum_regression(self.interpretable_model)
        )

    def _attribute_all(
        self,
        run: PerturbationRun,
        masks: FeatureMasks,
        n_samples: int,
        gen: torch.Generator | None,
        return_input_shape: bool,
    ) -> TensorOrTuple:
        """Captum's numbers, faster: every example's samples drawn in Captum's order (with the
        fit's draws in between), evaluated in one run, then each example fitted."""
        n, batch = masks.n_features, run.call.batch
        drawn = []
        for _ in range(batch):
            drawn.append(torch.bernoulli(torch.full((n_samples, n), 0.5), generator=gen))
            for _ in range(run.n_outputs):  # one fit per output
                captum_fit_draws(self.interpretable_model, n)
        samples = torch.stack(drawn, 1).double()  # (n_samples, batch, n)
        kernel = self.similarity_func._kernel  # type: ignore[union-attr]
        outputs, weights = self._evaluate_all(run, masks, samples, kernel)
        state = torch.get_rng_state()  # the fits' own draws were made above already
        try:
            coefs = [
                self._fit(self.interpretable_model, samples[:, e], outputs[:, e], weights[:, e])
                for e in range(batch)
            ]
        finally:
            torch.set_rng_state(state)
        return self._result(run, masks, torch.stack(coefs), return_input_shape)

    def _draw(self, group: Group, n_samples: int, gen: torch.Generator | None) -> list[Any]:
        """``n_samples`` interpretable samples (perturbed inputs with a
        ``to_interp_rep_transform``) of one group; a generator ``perturb_func`` may stop early."""
        perturb = self.perturb_func
        if perturb is None:
            # Captum's sampler draws one (1, n_features) Bernoulli(1/2) row at a time; one call
            # for all rows yields the same numbers
            n = group.masks.n_features
            drawn = torch.bernoulli(torch.full((n_samples, n), 0.5), generator=gen)
            return list(drawn.long().split(1))
        if not inspect.isgeneratorfunction(perturb):
            return [perturb(group.inputs, **group.kwargs) for _ in range(n_samples)]
        stream = perturb(group.inputs, **group.kwargs)
        taken = [s for _, s in zip(range(n_samples), stream)]
        if len(taken) < n_samples:
            warnings.warn(
                f"perturb_func's generator stopped after {len(taken)} of n_samples={n_samples} "
                "samples; Lime fits on those.",
                stacklevel=3,
            )
            if not taken:
                raise ValueError("perturb_func's generator yielded no samples.")
        return taken


def _from_interp(transform: Callable[..., Any], raw: list[Any], group: Group, j: int) -> Any:
    return transform(raw[j], group.inputs, **group.kwargs)


def _as_sample(value: Any, masks: FeatureMasks) -> Tensor:
    """One interpretable sample as a float64 vector. Values are kept as given (Captum fits the
    surrogate on them, so a custom ``from_interp_rep_transform`` may use non-binary ones); the
    default input construction treats nonzero entries as present."""
    sample = torch.as_tensor(value).detach().reshape(-1).cpu().double()
    if sample.numel() != masks.n_features:
        raise ValueError(
            f"An interpretable sample has {sample.numel()} entries but there are "
            f"{masks.n_features} features."
        )
    return sample
