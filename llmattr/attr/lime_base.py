"""LimeBase: the general Lime, with Captum's interface, in an interpretable space the user defines.

The user supplies how to draw a sample (``perturb_func``, in the interpretable space or in the
input space), how to go from one space to the other, how to weigh a sample
(``similarity_func``) and the interpretable model; ``attribute`` draws ``n_samples`` samples,
evaluates the model on them (``perturbations_per_eval`` per forward), fits the interpretable
model and returns its ``representation()``, e.g. a linear model's ``(1, n_features)``
coefficients. :class:`~llmattr.attr.Lime` is its specialization to binary samples over a
feature mask (it subclasses LimeBase, as in Captum, with its own vectorized evaluation).

Samples are drawn, transformed and weighed one at a time in Captum's order (sample, transform,
similarity, and a forward every ``perturbations_per_eval`` samples), so the same seed and the
same interpretable model give Captum's numbers.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .._core.call import Call
from .._core.errors import InputError
from .._core.inputs import TensorOrTuple, as_tuple
from .._core.perturbation import as_output, check_positive_int, perturbation_call
from .._core.progress import progress
from .._core.targets import TargetType
from ._sampled import SampledSurrogate, check_interpretable_model, fit_captum_model
from .surrogates import InterpretableModel

__all__ = ["LimeBase"]


class LimeBase(SampledSurrogate):
    """Lime with user-defined sampling and interpretable representation (Captum's LimeBase).

    Args:
        forward_func: the model or forward function. It must give one value per sample: one
            per example for a batch of one (after ``target``), or one for the whole batch.
        interpretable_model: a Captum-style model (``fit(DataLoader of (x, y, w))`` and
            ``representation()``, e.g. :class:`~llmattr.attr.SkLearnLasso`, ``SGDLinear
            Regression`` or Captum's own), fitted on float32 data as Captum fits it; or an
            llmattr surrogate (:class:`~llmattr.attr.Lasso`, ...: ``fit(X, y, weights)``
            returning ``(coef, intercept)``), fitted in float64, whose coefficients are
            returned as ``(1, n_features)``. The same object is refitted at every call.
        similarity_func: ``f(original_input, perturbed_input, perturbed_interpretable_input,
            **kwargs)`` returning the sample's weight (a number or a one-element tensor).
            ``perturbed_input`` has the form of ``original_input``.
        perturb_func: ``f(original_input, **kwargs)`` returning one sample, or a generator
            function yielding samples (``n_samples`` are taken). A sample is a
            ``(1, n_interp_features)`` tensor when ``perturb_interpretable_space`` is True, else
            an input of the form of ``original_input``.
        perturb_interpretable_space: whether ``perturb_func`` samples in the interpretable
            space (it then needs ``from_interp_rep_transform``) or in the input space (it then
            needs ``to_interp_rep_transform``).
        from_interp_rep_transform: ``f(sample, original_input, **kwargs)`` returning the model
            input of a ``(1, n_interp_features)`` sample; may be None in input-space mode.
        to_interp_rep_transform: ``f(perturbed_input, original_input, **kwargs)`` returning its
            ``(1, n_interp_features)`` interpretable sample; may be None in interpretable-space
            mode.

    Raises:
        InputError: (an ``AssertionError``, as Captum's check) the transform the chosen mode
            needs is missing.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        interpretable_model: Any,
        similarity_func: Callable[..., Any],
        perturb_func: Callable[..., Any],
        perturb_interpretable_space: bool,
        from_interp_rep_transform: Callable[..., Any] | None,
        to_interp_rep_transform: Callable[..., Any] | None,
    ) -> None:
        super().__init__(forward_func)
        check_interpretable_model(interpretable_model)
        for name, func in (("similarity_func", similarity_func), ("perturb_func", perturb_func)):
            if not callable(func):
                raise TypeError(f"{name} must be callable, got {type(func).__name__}.")
        if perturb_interpretable_space and from_interp_rep_transform is None:
            raise InputError(
                "perturb_interpretable_space=True samples in the interpretable space, so a "
                "from_interp_rep_transform (interpretable sample -> model input) is required."
            )
        if not perturb_interpretable_space and to_interp_rep_transform is None:
            raise InputError(
                "perturb_interpretable_space=False samples in the input space, so a "
                "to_interp_rep_transform (model input -> interpretable sample) is required."
            )
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_samples: int = 50,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Fit the interpretable model on ``n_samples`` samples around ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them, given as is to the user
                functions. For a batch of several examples the forward must return one value
                for the whole batch (e.g. a loss), and ``perturbations_per_eval`` stay 1 unless
                the forward returns one value per stacked copy.
            target: which output to explain (Captum's forms).
            additional_forward_args: extra forward arguments (not attributed).
            n_samples: samples drawn (fewer if a generator ``perturb_func`` stops first).
            perturbations_per_eval: samples evaluated in one forward (stacked along dim 0).
            show_progress: show a progress bar over the forwards.
            **kwargs: passed to ``perturb_func``, ``similarity_func`` and the transforms.

        Returns:
            The interpretable model's ``representation()`` after fitting, as it returns it
            (Captum's linear models: ``(1, n_interp_features)`` float32 coefficients).

        Raises:
            InputError: (also an ``AssertionError``, what Captum raises) the forward does not
                give one value per sample, samples or similarities have the wrong size, or
                ``n_samples`` / ``perturbations_per_eval`` is not a positive int.
        """
        check_positive_int(n_samples, "n_samples")
        ppe = check_positive_int(perturbations_per_eval, "perturbations_per_eval")
        call = perturbation_call(inputs, target, additional_forward_args)
        device = call.inputs[0].device
        interps: list[Tensor] = []
        weights: list[Tensor] = []
        outputs: list[Tensor] = []
        pending: list[Any] = []
        desc = f"{self.get_name()} attribution"
        with torch.no_grad(), progress(show_progress, math.ceil(n_samples / ppe), desc) as advance:
            for interp, model_input in self._samples(inputs, n_samples, kwargs):
                interps.append(_interp_row(interp, device))
                pending.append(model_input)
                sim = self.similarity_func(inputs, model_input, interp, **kwargs)
                weights.append(_weight(sim, device))
                if len(pending) == ppe:
                    outputs.append(self._evaluate_batch(call, pending, device))
                    pending = []
                    advance(1)
            if pending:
                outputs.append(self._evaluate_batch(call, pending, device))
                advance(1)
        X = torch.cat(interps)
        if any(row.shape[1] != X.shape[1] for row in interps):
            raise InputError("The interpretable samples do not all have the same size.")
        return _fit(self.interpretable_model, X, torch.cat(outputs), torch.cat(weights))

    def _samples(
        self, inputs: TensorOrTuple, n_samples: int, kwargs: dict[str, Any]
    ) -> Iterator[tuple[Any, Any]]:
        """``(interpretable sample, model input)`` pairs, drawn one at a time."""
        stream = (
            self.perturb_func(inputs, **kwargs)
            if inspect.isgeneratorfunction(self.perturb_func)
            else None
        )
        for drawn in range(n_samples):
            if stream is None:
                sample = self.perturb_func(inputs, **kwargs)
            else:
                try:
                    sample = next(stream)
                except StopIteration:
                    warnings.warn(
                        f"perturb_func's generator stopped after {drawn} of "
                        f"n_samples={n_samples} samples; the model is fitted on those.",
                        stacklevel=4,
                    )
                    if drawn == 0:
                        raise InputError("perturb_func's generator yielded no samples.") from None
                    return
            if self.perturb_interpretable_space:
                transform = self.from_interp_rep_transform
                yield sample, transform(sample, inputs, **kwargs)  # type: ignore[misc]
            else:
                transform = self.to_interp_rep_transform
                yield transform(sample, inputs, **kwargs), sample  # type: ignore[misc]

    def _evaluate_batch(self, call: Call, model_inputs: list[Any], device: torch.device) -> Tensor:
        """One forward of ``k`` stacked model inputs; returns their ``(k,)`` outputs."""
        k = len(model_inputs)
        pieces = [as_tuple(m) for m in model_inputs]
        if any(len(p) != len(pieces[0]) for p in pieces):
            raise InputError("The perturbed inputs do not all have the same number of tensors.")
        stacked = tuple(
            torch.cat([p[i].to(pieces[0][i].device) for p in pieces]) for i in range(len(pieces[0]))
        )
        # the target and extra args of k copies of the batch, copy-major as the stacked inputs
        target, args = call.for_rows(torch.arange(call.batch).repeat(k))
        output = as_output(self.forward_func(*stacked, *args))
        if target.index is not None:
            if target.per_example and (output.dim() == 0 or output.shape[0] != k * call.batch):
                raise InputError(
                    f"The target has one entry per example ({k * call.batch} for {k} stacked "
                    f"perturbations), but the output has shape {tuple(output.shape)}."
                )
            shared = output.shape[0] if output.dim() else 1  # Captum does not check it
            rows = k * call.batch if target.per_example else shared
            output = target.select(output, rows)
        if output.numel() != k:
            raise InputError(
                f"The forward function returned {output.numel()} values for {k} perturbed "
                f"input(s); LimeBase needs one output per perturbed input (for a batch of "
                f"{call.batch} examples: one value for the whole batch, e.g. a loss)."
            )
        return output.detach().reshape(k).to(device)


def _interp_row(sample: Any, device: torch.device) -> Tensor:
    """An interpretable sample as a ``(1, n_interp_features)`` float32 row (Captum's dtype)."""
    if not isinstance(sample, Tensor):
        raise TypeError(
            f"An interpretable sample must be a tensor of shape (1, n_interp_features), got "
            f"{type(sample).__name__}."
        )
    if sample.dim() > 2 or (sample.dim() == 2 and sample.shape[0] != 1):
        raise InputError(
            f"An interpretable sample has shape {tuple(sample.shape)}; it must be "
            "(1, n_interp_features), one sample at a time."
        )
    return sample.detach().reshape(1, -1).to(device=device, dtype=torch.float32)


def _weight(value: Any, device: torch.device) -> Tensor:
    """A similarity as a ``(1,)`` float32 weight."""
    weight = torch.as_tensor(value).detach().reshape(-1).to(device=device, dtype=torch.float32)
    if weight.numel() != 1:
        raise InputError(
            f"similarity_func returned {weight.numel()} values; it must return one weight (a "
            "number or a one-element tensor) per sample."
        )
    return weight


def _fit(model: Any, X: Tensor, y: Tensor, w: Tensor) -> Any:
    """Fit ``X (n, f)``, ``y (n,)``, ``w (n,)``; return the model's representation."""
    if isinstance(model, InterpretableModel) or not hasattr(model, "representation"):
        coef, _ = model.fit(X.double(), y.double()[:, None], w.double()[:, None])
        return torch.as_tensor(coef, dtype=torch.float64).reshape(1, X.shape[1])
    return fit_captum_model(model, X, y, w)
