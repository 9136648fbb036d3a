"""Feature ablation and feature permutation on the perturbation engine (Occlusion lives in
:mod:`llmattr.attr.occlusion` and is re-exported here)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.base import PerturbationAttribution
from .._core.errors import InputError
from .._core.features import FeatureMasks
from .._core.inputs import BaselineType, TensorOrTuple, format_baselines
from .._core.perturbation import PerturbationRun, make_generator, perturbation_call
from .._core.targets import TargetType

__all__ = ["FeatureAblation", "FeaturePermutation", "Occlusion"]

MaskType = Tensor | tuple[Tensor, ...] | None


def ablate_each_feature(
    run: PerturbationRun,
    masks: FeatureMasks,
    replacements: Callable[[Tensor], tuple[Tensor, ...] | None],
    skip: Tensor | None = None,
) -> Any:
    """``f(x) - f(x with feature p replaced)`` for every feature ``p``, spread over its elements.

    Features are visited in Captum's order (:meth:`FeatureMasks.order`); ``replacements(ids)``
    gives the replacement values of one forward's features (None: the baselines). Returns the
    attributions in the user's form (a Future of them with futures); the features ``skip``
    marks (bool per feature id) are not evaluated and keep attribution 0.
    """
    order = masks.order()
    if skip is not None:
        order = order[~skip[order]]
    credits: list[Tensor] = []  # allocated once the output's size is known (futures: later)

    def build(start: int, end: int) -> tuple[Tensor, ...]:
        return run.perturbed(masks.each(order[start:end]), replacements(order[start:end]))

    def table() -> Tensor:
        if not credits:
            shape = (run.rows, run.n_outputs, masks.n_features)
            credits.append(torch.zeros(shape, dtype=torch.float64))
        return credits[0]

    def fold(start: int, end: int, outputs: Tensor) -> None:
        table()[:, :, order[start:end]] = (run.initial.unsqueeze(0) - outputs).permute(1, 2, 0)

    run.evaluate(len(order), build, fold)
    return run.finish(lambda: run.call.result(run.feature_attributions(table(), masks)))


def _layout(per_example_outputs: bool) -> Any:
    return "rows" if per_example_outputs else "flat"


def _holders(masks: FeatureMasks) -> list[Tensor]:
    """Per input, bool per feature id: whether the input holds elements of that feature."""
    holds = []
    for m in masks.masks:
        has = torch.zeros(masks.n_features, dtype=torch.bool)
        has[m.reshape(-1).unique().cpu()] = True
        holds.append(has)
    return holds


def _too_small(
    inputs: tuple[Tensor, ...], holds: list[Tensor], min_examples: int | None
) -> Tensor | None:
    """Captum's ``_min_examples_per_batch_grouped`` rule: a feature held by an input whose first
    dimension is below ``min_examples`` is skipped (attribution 0). Returns the bool per feature
    id, or None when nothing is skipped (``min_examples`` None)."""
    if min_examples is None:
        return None
    skip = torch.zeros(holds[0].shape[0] if holds else 0, dtype=torch.bool)
    for x, has in zip(inputs, holds):
        if x.shape[0] < min_examples:
            skip |= has
    return skip


class FeatureAblation(PerturbationAttribution):
    """Feature ablation: replace one feature (group) at a time by its baseline and record how
    much the output drops.

    The attribution of feature ``p`` — given to every element of the group — is
    ``f(x) - f(x with group p set to the baseline)``. By default every element of every input is
    its own feature; ``feature_mask`` groups elements (image segments, words, ...).

    As in Captum, attributions have shape ``(output.numel(), *input.shape[1:])`` per input: the
    inputs' shape when the forward returns one scalar per example (after ``target``), first
    dimension 1 for one scalar for the whole batch (an aggregate such as a loss), and one row
    per output element otherwise (a ``(batch, C)`` output gives ``batch * C`` rows, example-major).
    ``per_example_outputs=True`` (llmattr) shapes the last case ``(batch, C, *input.shape[1:])``.
    The attributions' dtype is the output's (an integer forward gives int64 differences).

    Args:
        forward_func: the model or forward function; it may return a tensor, an int or a float
            (or, for :meth:`attribute_future`, a ``torch.futures.Future`` of one).
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)
        # Captum's attribute name: features held by an input whose first dimension is below
        # this are skipped (attribution 0); None skips nothing
        self._min_examples_per_batch_grouped: int | None = None

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        per_example_outputs: bool = False,
    ) -> TensorOrTuple:
        """Ablation attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them (an input whose dimension 0 is
                not the batch, such as a flat list of EmbeddingBag indices, is one feature
                unless masked otherwise).
            baselines: replacement values: None (zeros), a number, a tensor broadcastable to the
                input (e.g. one value per feature position), or a tuple of those.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: feature ids per input (see :mod:`llmattr._core.features`), integer or
                whole-number floats; as in Captum, ids may skip numbers.
            perturbations_per_eval: ablations evaluated in one forward (results do not depend
                on it); the output must then grow with the batch.
            show_progress: show a progress bar titled ``"Feature Ablation attribution"``.
            per_example_outputs: llmattr: attributions ``(batch, *output.shape[1:], ...)``, one
                map per output of each example, instead of Captum's ``(output.numel(), ...)``.

        Returns:
            Attributions per input, ``(output.numel(), *input.shape[1:])`` (see the class).
        """
        return self._ablation(
            False, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, per_example_outputs,
        )  # fmt: skip

    def attribute_future(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        per_example_outputs: bool = False,
    ) -> torch.Future:
        """:meth:`attribute` for a forward that returns ``torch.futures.Future``: every forward
        is issued at once, and the returned Future holds the attributions once all outputs
        arrived (an error in one of them is set on it). Arguments as for :meth:`attribute`."""
        return self._ablation(
            True, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, per_example_outputs,
        )  # fmt: skip

    def _ablation(
        self,
        futures: bool,
        inputs: TensorOrTuple,
        baselines: BaselineType,
        target: TargetType,
        additional_forward_args: Any,
        feature_mask: MaskType,
        perturbations_per_eval: int,
        show_progress: bool,
        per_example_outputs: bool,
    ) -> Any:
        call = perturbation_call(inputs, target, additional_forward_args)
        masks = FeatureMasks.of(feature_mask, call.inputs, allow_gaps=True)
        run = PerturbationRun(
            self.forward_func, call, format_baselines(baselines, call.inputs),
            perturbations_per_eval, show_progress, self.get_name(),
            layout=_layout(per_example_outputs), futures=futures,
        )  # fmt: skip
        run.check_masks(masks)
        skip = _too_small(call.inputs, _holders(masks), self._min_examples_per_batch_grouped)
        return ablate_each_feature(run, masks, lambda ids: None, skip)


class FeaturePermutation(PerturbationAttribution):
    """Permutation feature importance: shuffle one feature (group) across the batch at a time
    and record the output's change, ``f(x) - f(x with feature p permuted)``.

    Shapes and dtypes as for :class:`FeatureAblation`. A batch of one example cannot be shuffled:
    as in Captum, a feature held by an input with fewer than ``_min_examples_per_batch_grouped``
    (Captum's attribute, default 2) entries is skipped, its attribution 0 (with a warning); set
    lower, such a feature is refused (InputError) unless ``perm_func`` handles it. Inputs may
    have different first dimensions (the batch is ``inputs[0]``'s); a mask with one grouping per
    entry of such an input must give each position one credit (see :mod:`llmattr._core.features`).

    The default permutations are drawn as Captum draws them (``torch.randperm`` of the batch,
    redrawn while it is the identity, one per input holding a feature of the current forward and
    per feature of that forward, in that order), so the same ``torch.manual_seed`` gives
    Captum's numbers for the same ``perturbations_per_eval``.

    Args:
        forward_func: the model or forward function.
        perm_func: ``perm_func(x, mask)`` returns ``x`` with the masked elements permuted across
            the batch (``mask``: bool, the feature mask's shape); default: a random non-identity
            permutation of the examples.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        perm_func: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(forward_func)
        self.perm_func = perm_func
        # Captum's attribute name: a feature held by an input with fewer entries than this is
        # skipped (attribution 0, with a warning): there is nothing to shuffle it with
        self._min_examples_per_batch_grouped: int | None = 2

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
        *,
        per_example_outputs: bool = False,
    ) -> TensorOrTuple:
        """Permutation attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or tuple of them.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: feature ids per input.
            perturbations_per_eval: permutations evaluated in one forward.
            show_progress: show a progress bar titled ``"Feature Permutation attribution"``.
            generator: llmattr: a ``torch.Generator`` or an int seed for the default
                permutations (default: torch's global generator, as Captum).
            per_example_outputs: as for :meth:`FeatureAblation.attribute`.

        Returns:
            Attributions per input, ``(output.numel(), *input.shape[1:])``.
        """
        return self._permutation(
            False, inputs, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, generator, per_example_outputs,
        )  # fmt: skip

    def attribute_future(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: MaskType = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
        *,
        per_example_outputs: bool = False,
    ) -> torch.Future:
        """:meth:`attribute` for a forward that returns ``torch.futures.Future``; returns a
        Future of the attributions (see :meth:`FeatureAblation.attribute_future`)."""
        return self._permutation(
            True, inputs, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, generator, per_example_outputs,
        )  # fmt: skip

    def _permutation(
        self,
        futures: bool,
        inputs: TensorOrTuple,
        target: TargetType,
        additional_forward_args: Any,
        feature_mask: MaskType,
        perturbations_per_eval: int,
        show_progress: bool,
        generator: torch.Generator | int | None,
        per_example_outputs: bool,
    ) -> Any:
        call = perturbation_call(inputs, target, additional_forward_args)
        masks = FeatureMasks.of(feature_mask, call.inputs, allow_gaps=True)
        gen = make_generator(generator)
        # which inputs hold which features: a forward permutes only the inputs holding one of
        # its features (Captum's order of random draws depends on it)
        holds = _holders(masks)
        minimum = self._min_examples_per_batch_grouped
        skip = _too_small(call.inputs, holds, minimum)
        if skip is not None and bool(skip.any()):
            warnings.warn(
                f"FeaturePermutation shuffles features across the batch, so a batch of one "
                f"example (or any input with fewer than {minimum} entries) gives the features it "
                "holds attribution 0 (as in Captum); pass more examples.",
                stacklevel=3,
            )
        perm_func = self.perm_func
        if perm_func is None:
            kept = ~skip if skip is not None else torch.ones(masks.n_features, dtype=torch.bool)
            for i, (x, has) in enumerate(zip(call.inputs, holds)):
                if x.shape[0] < 2 and bool((has & kept).any()):
                    raise InputError(
                        f"FeaturePermutation cannot permute features of input {i}: it has "
                        f"{x.shape[0]} entries, and permuting needs at least 2. Pass more "
                        "examples, or leave _min_examples_per_batch_grouped at 2 to skip them."
                    )
        run = PerturbationRun(
            self.forward_func, call, call.inputs, perturbations_per_eval, show_progress,
            self.get_name(), layout=_layout(per_example_outputs), futures=futures,
        )  # fmt: skip
        run.check_masks(masks)

        def replacements(ids: Tensor) -> tuple[Tensor, ...]:
            touched = [bool(has[ids].any()) for has in holds]
            if perm_func is not None:
                return tuple(
                    torch.stack([perm_func(x, m == p) for p in ids.tolist()])
                    if hit
                    else x.unsqueeze(0)
                    for x, m, hit in zip(call.inputs, masks.masks, touched)
                )
            # Captum's draws: per input holding a feature of this forward, then per feature
            drawn = {
                i: torch.stack([_non_identity(x.shape[0], gen) for _ in range(len(ids))])
                for i, x in enumerate(call.inputs)
                if touched[i]
            }
            # a feature spanning several inputs moves whole examples: each input uses the
            # permutation drawn for the first input holding the feature (Captum permutes each
            # input with its own draw, which breaks the group apart)
            leader = torch.stack([has[ids] for has in holds]).int().argmax(0).tolist()
            out = []
            for i, x in enumerate(call.inputs):
                if i not in drawn:
                    out.append(x.unsqueeze(0))  # untouched: nothing of this forward is here
                    continue
                rows = [
                    drawn[f][j] if drawn[f].shape[1] == x.shape[0] else drawn[i][j]
                    for j, f in enumerate(leader)
                ]
                out.append(x[torch.stack(rows).to(x.device)])  # (k, n, ...)
            return tuple(out)

        return ablate_each_feature(run, masks, replacements, skip)


def _non_identity(n: int, gen: torch.Generator | None) -> Tensor:
    """A random permutation of ``0 .. n - 1`` other than the identity; for ``n < 2`` (an input
    of one entry, or empty) there is none, and nothing moves."""
    identity = torch.arange(n)
    if n < 2:
        return identity
    perm = torch.randperm(n, generator=gen)
    while torch.equal(perm, identity):
        perm = torch.randperm(n, generator=gen)
    return perm


from .occlusion import Occlusion  # noqa: E402  (re-exported from its own module)
