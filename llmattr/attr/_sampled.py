"""What Lime and KernelShap share: Captum's feature-mask rules, the per-example groups Captum draws
samples for, evaluating the samples on the perturbation engine, similarity weights, and fitting
either kind of interpretable model (llmattr's batched torch surrogates or a Captum-style
``fit(DataLoader)`` / ``representation()`` model).

Captum explains a batch one example at a time (its own samples, its own fit) when the forward
returns one value per example, and the whole batch at once (one set of samples, one fit) when it
returns one value for the batch. A *group* is that unit: one example, or the whole batch. Samples
are drawn group by group in Captum's order, so a seed reproduces Captum's samples; all groups'
samples are then evaluated together, ``perturbations_per_eval`` samples per forward.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._core.base import PerturbationAttribution
from .._core.call import Call
from .._core.features import FeatureMasks
from .._core.inputs import TensorOrTuple, as_tuple
from .._core.perturbation import PerturbationRun
from .surrogates import InterpretableModel

__all__ = ["Group", "SampledSurrogate", "fit_captum_model", "lime_feature_masks"]


def lime_feature_masks(feature_mask: Any, inputs: tuple[Tensor, ...]) -> FeatureMasks:
    """Feature masks under Captum's Lime rules: ids need not start at 0 (they are shifted, with a
    warning) nor be contiguous (``n_features`` is the largest id + 1; an unused id is a feature
    that changes nothing)."""
    entries = None if feature_mask is None else as_tuple(feature_mask)
    if entries is None or not all(
        isinstance(m, Tensor)
        and not (m.is_complex() or m.dtype == torch.bool)
        and not (m.is_floating_point() and not bool((m == m.round()).all()))
        for m in entries
    ):
        # the default (one feature per element), or the engine's errors
        return _warn_if_large(FeatureMasks.of(feature_mask, inputs))
    flat = [m.reshape(-1).long() for m in entries]
    ids = torch.cat([f.cpu() for f in flat]) if flat else torch.zeros(0, dtype=torch.long)
    if ids.numel() == 0:
        return _warn_if_large(FeatureMasks.of(feature_mask, inputs))
    # validate shapes with contiguous ids, then put the real ids back
    unique, inverse = torch.unique(ids, return_inverse=True)
    sizes = [f.numel() for f in flat]
    remapped = tuple(i.reshape(m.shape).to(m.device) for i, m in zip(inverse.split(sizes), entries))
    checked = FeatureMasks.of(remapped if isinstance(feature_mask, tuple) else remapped[0], inputs)
    low = int(unique[0])
    if low != 0:
        warnings.warn(
            f"The smallest feature_mask id is {low}, not 0: ids are shifted to start at 0.",
            stacklevel=3,
        )
    masks = tuple(unique.to(m.device)[m] - low for m in checked.masks)
    return _warn_if_large(FeatureMasks(masks, int(unique[-1]) - low + 1))


def _warn_if_large(masks: FeatureMasks) -> FeatureMasks:
    if masks.n_features > 10000:  # Captum's threshold
        warnings.warn(
            f"Fitting an interpretable model on {masks.n_features} features can be very slow or "
            "run out of memory; group input elements into fewer features with feature_mask.",
            stacklevel=4,
        )
    return masks


@dataclass
class Group:
    """One unit Captum draws samples for and fits: an example, or the whole batch.

    Attributes:
        inputs: the group's inputs in the user's form (a tensor or a tuple).
        kwargs: what perturb, similarity and transform functions receive
            (``num_interp_features``, ``feature_mask``, ``baselines``, ...).
        run: the perturbation run evaluating the group's samples (its own for an example).
        masks: the group's feature masks.
    """

    inputs: TensorOrTuple
    kwargs: dict[str, Any]
    run: PerturbationRun
    masks: FeatureMasks


class SampledSurrogate(PerturbationAttribution):
    """Shared flow: groups, evaluating samples, similarity weights, fitting."""

    @property
    def multiplies_by_inputs(self) -> bool:
        """False, as Captum's Lime: the coefficients are not scaled by the inputs."""
        return False

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported, as in Captum (each example's fit needs its outputs first)."""
        raise NotImplementedError(f"{self.get_name()} does not support attribute_future.")

    def _groups(
        self, run: PerturbationRun, masks: FeatureMasks, extra: dict[str, Any]
    ) -> Iterator[Group]:
        """The groups, one after the other: one per example when each example has its own output
        rows (each evaluated by a run of its own, so that drawing, evaluating and fitting follow
        Captum's order, example by example), else the whole batch."""
        call = run.call
        if not (run.rows == call.batch and call.batch > 1):
            yield Group(call.result(list(call.inputs)), self._kwargs(run, masks, extra), run, masks)
            return
        for e in range(call.batch):
            target, args = call.for_rows(torch.tensor([e]))
            one = Call(tuple(x[e : e + 1] for x in call.inputs), call.was_tuple, target, args)
            bases = tuple(b[e : e + 1] for b in run.baselines)
            sub = PerturbationRun(
                run.forward_func, one, bases, run.ppe, run.show_progress, run.method
            )
            own = FeatureMasks(
                tuple(m if m.shape[0] == 1 else m[e : e + 1] for m in masks.masks),
                masks.n_features,
            )
            yield Group(one.result(list(one.inputs)), self._kwargs(sub, own, extra), sub, own)

    @staticmethod
    def _kwargs(run: PerturbationRun, masks: FeatureMasks, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "num_interp_features": masks.n_features,
            "feature_mask": run.call.result(list(masks.masks)),
            "baselines": run.call.result(list(run.baselines)),
            **extra,
        }

    @staticmethod
    def _evaluate(
        group: Group,
        raw: list[Any],
        samples: Tensor,
        make_input: Callable[[int], Any] | None,
        similarity: Callable[..., Any] | None,
    ) -> tuple[Tensor, Tensor]:
        """Evaluate a group's samples.

        Args:
            raw: the samples as drawn (what user functions are shown).
            samples: ``(n, n_features)`` their float values (what is fitted).
            make_input: ``make_input(j)`` the model input of sample ``j`` (default: absent
                features, zeros of the sample, set to the baselines).
            similarity: the similarity function, or None for unit weights.

        Returns:
            Outputs ``(n, n_outputs)`` and weights ``(n,)``, float64.
        """
        run, masks = group.run, group.masks
        n = samples.shape[0]
        outputs = torch.empty(n, run.n_outputs, dtype=torch.float64)
        weights = torch.ones(n, dtype=torch.float64)
        kernel = getattr(similarity, "_kernel", None)
        original = _flat(run.call.inputs, 1)

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            k = end - start
            if make_input is None:
                present = (samples[start:end] != 0).to(masks.masks[0].device)
                stacked = run.perturbed(masks.absent(present))
            else:
                pieces = [as_tuple(make_input(j)) for j in range(start, end)]
                stacked = tuple(torch.cat([p[i] for p in pieces]) for i in range(len(pieces[0])))
            if kernel is not None:  # Lime's default, for the whole chunk at once
                weights[start:end] = _exp_kernel(original, _flat(stacked, k), *kernel)
            elif similarity is not None:
                # split by the known batch, not -1: an empty input has no size to infer
                per = run.call.batch
                for j in range(k):
                    own = tuple(t.reshape(k, per, *t.shape[1:])[j] for t in stacked)
                    value = similarity(
                        group.inputs, run.call.result(list(own)), raw[start + j], **group.kwargs
                    )
                    weights[start + j] = _one_weight(value)
            return stacked

        def fold(start: int, end: int, out: Tensor) -> None:
            outputs[start:end] = out.reshape(end - start, -1)

        run.evaluate(n, build, fold)
        return outputs, weights

    @staticmethod
    def _per_example(run: PerturbationRun) -> bool:
        """Whether each example is a group of its own (one output row per example)."""
        return run.rows == run.call.batch and run.call.batch > 1

    @staticmethod
    def _evaluate_all(
        run: PerturbationRun, masks: FeatureMasks, samples: Tensor, kernel: Any
    ) -> tuple[Tensor, Tensor]:
        """Evaluate every example's samples in one run (the fast path of per-example groups).

        Args:
            samples: ``(n, batch, n_features)``, sample ``j`` of example ``e`` at ``[j, e]``;
                nonzero entries are present features.
            kernel: ``(mode, width)`` of the exponential-kernel similarity, or None for unit
                weights.

        Returns:
            Outputs ``(n, batch, n_outputs)`` and weights ``(n, batch)``, float64.
        """
        n, batch = samples.shape[0], samples.shape[1]
        outputs = torch.empty(n, batch, run.n_outputs, dtype=torch.float64)
        weights = torch.ones(n, batch, dtype=torch.float64)
        original = _flat(run.call.inputs, batch)  # (batch, elements)
        device = masks.masks[0].device

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            stacked = run.perturbed(masks.absent((samples[start:end] != 0).to(device)))
            if kernel is not None:
                k = end - start
                both = _exp_kernel(original.repeat(k, 1), _flat(stacked, k * batch), *kernel)
                weights[start:end] = both.reshape(k, batch)
            return stacked

        def fold(start: int, end: int, out: Tensor) -> None:
            outputs[start:end] = out

        run.evaluate(n, build, fold)
        return outputs, weights

    @staticmethod
    def _fit(model: Any, X: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """Fit one group: ``X (n, f)``, ``y (n, n_outputs)``, ``w (n,)`` → ``(n_outputs, f)``.

        A Captum-style model (with ``representation()``) is fitted once per output on a
        DataLoader of float32 ``(x, y, w)``, as Captum fits it; llmattr's surrogates (and any
        object whose ``fit(X, y, weights)`` returns ``(coef, intercept)``) fit every output in
        one float64 call.
        """
        f = X.shape[1]
        if isinstance(model, InterpretableModel) or not hasattr(model, "representation"):
            coef, _ = model.fit(X.double(), y.double(), w.double()[:, None].expand_as(y))
            return torch.as_tensor(coef, dtype=torch.float64).reshape(y.shape[1], f)
        rows = []
        for o in range(y.shape[1]):
            coef = torch.as_tensor(fit_captum_model(model, X, y[:, o], w)).detach().reshape(-1)
            if coef.numel() != f:
                raise ValueError(
                    f"The interpretable model's representation() has {coef.numel()} entries "
                    f"but there are {f} interpretable features; it must return one "
                    "coefficient per feature."
                )
            rows.append(coef.double().cpu())
        return torch.stack(rows)

    @staticmethod
    def _result(
        run: PerturbationRun, masks: FeatureMasks, coef: Tensor, return_input_shape: bool
    ) -> TensorOrTuple:
        """``coef (rows, n_outputs, f)`` spread over the inputs, or per feature."""
        credits = coef.reshape(run.rows, run.n_outputs, masks.n_features)
        if return_input_shape:
            return run.call.result(run.feature_attributions(credits, masks))
        return credits.reshape(run.rows, *run.out_shape, masks.n_features).to(run._dtype())


def fits_like_captum_regression(model: Any) -> bool:
    """Whether fitting ``model`` draws from torch's global generator exactly what Captum's
    ``SkLearnLinearRegression`` fit draws (a DataLoader seed and a fresh ``nn.Linear(n, 1)``'s
    weights and bias), or nothing at all (llmattr's surrogates): then samples can be drawn for
    all examples before any fit, and the stream stays Captum's."""
    from .linear_models import SkLearnLinearModel

    if isinstance(model, InterpretableModel):
        return True
    return (
        isinstance(model, SkLearnLinearModel)
        and type(model).__module__ == SkLearnLinearModel.__module__
    )


def captum_fit_draws(model: Any, n: int, generator: torch.Generator | None = None) -> None:
    """Draw what fitting ``model`` (see :func:`fits_like_captum_regression`) on ``n`` features
    draws from the generator."""
    if isinstance(model, InterpretableModel):
        return
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    torch.empty(1, n).uniform_(generator=generator)
    torch.empty(1).uniform_(generator=generator)


def fit_captum_model(model: Any, X: Tensor, y: Tensor, w: Tensor) -> Any:
    """Fit a Captum-style model as Captum does and return its ``representation()``.

    Args:
        X: ``(n, n_features)`` interpretable samples; y: ``(n,)`` outputs; w: ``(n,)`` weights.

    The data go in as float32, in one DataLoader batch of all ``n`` samples: Captum's numbers
    (and Captum's draws from torch's global generator, which iterating a DataLoader makes).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from . import linear_models

    if type(model).__module__ == linear_models.__name__:
        # one of llmattr's own models: they only iterate the data and take its len, so a
        # one-batch stand-in gives them the same float32 tensors (a DataLoader collates the
        # same rows, one at a time, which is slow) and the same global random draws
        model.fit(_OneBatch(X.float(), y.float(), w.float()))
    else:
        data = TensorDataset(X.float(), y.float(), w.float())
        model.fit(DataLoader(data, batch_size=X.shape[0]))
    return model.representation()


class _OneBatch:
    """A stand-in for ``DataLoader(TensorDataset(x, y, w), batch_size=len(x))``: one batch per
    pass, and, per pass, the one draw from torch's global generator a DataLoader's iterator
    makes (its base seed), so the random stream after a fit is the same."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        torch.empty((), dtype=torch.int64).random_()
        yield self.tensors


def check_interpretable_model(model: Any) -> None:
    """A surrogate needs ``fit``; Captum-style ones also ``representation``."""
    if model is not None and not callable(getattr(model, "fit", None)):
        raise TypeError(
            "interpretable_model must have a fit method: a Captum-style model "
            "(fit(DataLoader) and representation(), e.g. SkLearnLasso) or an llmattr surrogate "
            "(fit(X, y, weights) returning (coef, intercept), e.g. Lasso)."
        )


def _one_weight(value: Any) -> float:
    """A similarity as one number (Captum flattens it; a group shares one weight)."""
    sim = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    return float(sim[0] if sim.numel() == 1 else sim.mean())


def _flat(stacked: tuple[Tensor, ...], k: int) -> Tensor:
    """``k`` stacked copies of a group's inputs as ``(k, elements)``, float64 (Captum compares
    a group's inputs as one concatenated vector)."""
    return torch.cat([t.detach().reshape(k, -1).double().cpu() for t in stacked], dim=1)


def _exp_kernel(original: Tensor, perturbed: Tensor, mode: str, width: float) -> Tensor:
    """``exp(-d² / (2 w²))`` between ``original (1, D)`` and ``perturbed (k, D)``."""
    if mode == "cosine":
        d = 1 - torch.nn.functional.cosine_similarity(perturbed, original, dim=1)
    else:
        d = (perturbed - original).norm(dim=1)
    return torch.exp(-(d**2) / (2 * width**2))
