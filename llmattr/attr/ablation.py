"""Feature ablation, occlusion and feature permutation on the perturbation engine."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.base import PerturbationAttribution
from .._core.call import Call
from .._core.features import FeatureMasks
from .._core.inputs import BaselineType, TensorOrTuple, as_tuple, format_baselines
from .._core.perturbation import PerturbationRun, make_generator
from .._core.targets import TargetType

__all__ = ["FeatureAblation", "FeaturePermutation", "Occlusion"]


def _ablate_each_feature(
    run: PerturbationRun,
    masks: FeatureMasks,
    replacements: Callable[[int, int], tuple[Tensor, ...] | None],
) -> tuple[Tensor, ...]:
    """``f(x) - f(x with feature p replaced)`` for every feature ``p``, spread over its elements."""
    credits = torch.zeros(run.rows, run.n_outputs, masks.n_features, dtype=torch.float64)

    def build(start: int, end: int) -> tuple[Tensor, ...]:
        return run.perturbed(masks.single(start, end), replacements(start, end))

    def fold(start: int, end: int, outputs: Tensor) -> None:
        credits[:, :, start:end] = (run.initial.unsqueeze(0) - outputs).permute(1, 2, 0)

    run.evaluate(masks.n_features, build, fold)
    return run.feature_attributions(credits, masks)


class FeatureAblation(PerturbationAttribution):
    """Feature ablation: replace one feature (group) at a time by its baseline and record how
    much the output drops.

    The attribution of feature ``p`` — given to every element of the group — is
    ``f(x) - f(x with group p set to the baseline)``. By default every element of every input is
    its own feature; ``feature_mask`` groups elements (image segments, words, ...).

    The forward may return one scalar per example (after ``target``); several values per example
    (with ``target=None``: attributions then have shape ``(batch, *out, *input.shape[1:])``, one
    map per output, e.g. per generated token); or one output for the whole batch (an aggregate
    such as a loss: attributions have batch dimension 1 and ``perturbations_per_eval`` must be 1).

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
        """Ablation attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            baselines: replacement values: None (zeros), a number, a tensor broadcastable to the
                input (e.g. one value per feature position), or a tuple of those.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input (see :mod:`llmattr._core.features`).
            perturbations_per_eval: ablations evaluated in one forward (results do not depend
                on it).
            show_progress: show a progress bar.

        Returns:
            Attributions shaped like ``inputs`` (with the output's dimensions inserted after the
            batch for multi-output forwards).
        """
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
        return call.result(_ablate_each_feature(run, masks, lambda start, end: None))


class FeaturePermutation(PerturbationAttribution):
    """Permutation feature importance: shuffle one feature (group) across the batch at a time
    and record the output's change, ``f(x) - f(x with feature p permuted)``.

    Needs a batch of more than one example; masks must be shared by the batch.

    Args:
        forward_func: the model or forward function.
        perm_func: ``perm_func(x, mask)`` returns ``x`` with the masked elements permuted across
            the batch (default: a random non-identity permutation of the examples).
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        perm_func: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(forward_func)
        self.perm_func = perm_func

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        generator: torch.Generator | int | None = None,
    ) -> TensorOrTuple:
        """Permutation attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or tuple of them, batch > 1.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            feature_mask: integer feature ids per input, first dimension 1.
            perturbations_per_eval: permutations evaluated in one forward.
            show_progress: show a progress bar.
            generator: a ``torch.Generator`` or an int seed for the permutations.

        Returns:
            Attributions shaped like ``inputs``.
        """
        call = Call.of(inputs, target, additional_forward_args)
        if call.batch < 2:
            raise ValueError(
                "FeaturePermutation shuffles features across the batch, so it needs more than one "
                f"example; got a batch of {call.batch}."
            )
        masks = FeatureMasks.of(feature_mask, call.inputs)
        if masks.per_example:
            raise ValueError("FeaturePermutation needs feature masks shared by the batch.")
        gen = make_generator(generator)
        run = PerturbationRun(
            self.forward_func, call, call.inputs, perturbations_per_eval, show_progress,
            self.get_name(),
        )  # fmt: skip
        if self.perm_func is None:
            perms = _non_identity_permutations(masks.n_features, call.batch, gen)

            def replacements(start: int, end: int) -> tuple[Tensor, ...]:
                idx = perms[start:end]
                return tuple(x[idx.to(x.device)] for x in call.inputs)  # (k, batch, ...)

            return call.result(_ablate_each_feature(run, masks, replacements))

        perm_func = self.perm_func

        def custom(start: int, end: int) -> tuple[Tensor, ...]:
            out = []
            for x, m in zip(call.inputs, masks.masks):
                out.append(
                    torch.stack([perm_func(x, (m == p).expand_as(x)) for p in range(start, end)])
                )
            return tuple(out)

        return call.result(_ablate_each_feature(run, masks, custom))


def _non_identity_permutations(n: int, batch: int, gen: torch.Generator | None) -> Tensor:
    """``(n, batch)`` random permutations of the examples, none the identity."""
    perms = torch.argsort(torch.rand(n, batch, generator=gen), dim=1)
    identity = torch.arange(batch)
    for row in range(n):  # redraw the rare identity (probability 1 / batch!)
        while torch.equal(perms[row], identity):
            perms[row] = torch.randperm(batch, generator=gen)
    return perms


class Occlusion(PerturbationAttribution):
    """Occlusion (Zeiler and Fergus, 2014): slide a window over each input, replace it by the
    baseline, and credit the output's drop to the window's elements.

    Each element's attribution is the mean drop over the windows that cover it. Windows start
    every ``strides`` along each dimension; the last one is clipped at the edge, so every element
    is covered when no stride exceeds its window (elements that fall between windows because a
    stride is longer than the window get 0).

    Args:
        forward_func: the model or forward function.
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    def attribute(
        self,
        inputs: TensorOrTuple,
        sliding_window_shapes: tuple[int, ...] | tuple[tuple[int, ...], ...],
        strides: int | tuple[int, ...] | tuple[int | tuple[int, ...], ...] | None = None,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        """Occlusion attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            sliding_window_shapes: the window over ``input.shape[1:]`` (a tuple of ints), or one
                such tuple per input.
            strides: the step of the window: an int for every dimension, a tuple with one per
                dimension, or one of those per input (default 1); for several inputs a tuple of
                ints has one int per input, as in Captum.
            baselines: replacement values, as for :class:`FeatureAblation`.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            perturbations_per_eval: windows evaluated in one forward.
            show_progress: show a progress bar.

        Returns:
            Attributions shaped like ``inputs`` (output dimensions after the batch for
            multi-output forwards).
        """
        call = Call.of(inputs, target, additional_forward_args)
        windows = _window_grids(call.inputs, sliding_window_shapes, strides)
        run = PerturbationRun(
            self.forward_func, call, format_baselines(baselines, call.inputs),
            perturbations_per_eval, show_progress, self.get_name(),
        )  # fmt: skip
        offsets = [0]
        for grid in windows:
            offsets.append(offsets[-1] + grid.count)
        drops = torch.empty(offsets[-1], run.rows, run.n_outputs, dtype=torch.float64)

        def build(start: int, end: int) -> tuple[Tensor, ...]:
            """Per input ``k`` copies of the batch, each with its window (if any) replaced."""
            k, out = end - start, []
            for j, (x, r, grid) in enumerate(zip(call.inputs, run.baselines, windows)):
                stacked = x.unsqueeze(0).repeat(k, *([1] * x.dim()))
                lo, hi = max(start, offsets[j]), min(end, offsets[j + 1])
                if lo < hi:  # windows are boxes: scatter their few baseline values
                    flat = stacked.view(k, x.shape[0], -1)[lo - start : hi - start]
                    idx = grid.elements(lo - offsets[j], hi - offsets[j]).to(x.device)
                    idx = idx.unsqueeze(1).expand(-1, x.shape[0], -1)
                    values = r.to(x.dtype).reshape(1, x.shape[0], -1).expand(hi - lo, -1, -1)
                    flat.scatter_(2, idx, values.gather(2, idx))
                out.append(stacked.reshape(k * x.shape[0], *x.shape[1:]))
            return tuple(out)

        def fold(start: int, end: int, outputs: Tensor) -> None:
            drops[start:end] = run.initial.unsqueeze(0) - outputs

        run.evaluate(offsets[-1], build, fold)
        # each element's mean drop over the windows covering it (windows are boxes, so the sum
        # over windows factorizes into one contraction per dimension); elements no window covers
        # (only when a stride exceeds the window) get 0, not 0 / 0
        per_element = []
        for j, grid in enumerate(windows):
            sums = grid.spread(drops[offsets[j] : offsets[j + 1]])
            counts = grid.spread(torch.ones(grid.count, 1, 1, dtype=torch.float64))
            per_element.append(sums / counts.clamp(min=1))
        return call.result(run.attributions(tuple(per_element)))


class _WindowGrid:
    """The windows of one input: per dimension, the start positions and the window length."""

    def __init__(self, shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]):
        self.shape = shape
        self.window = window
        self.first: list[Tensor] = []  # per dimension, the windows' first indices
        self.per_dim = []  # per dimension, one bool row per start: the covered indices
        for size, w, s in zip(shape, window, stride):
            n = math.ceil(max(size - w, 0) / s) + 1
            starts = [i * s for i in range(n) if i * s < size]  # a long stride can overshoot
            idx, first = torch.arange(size), torch.tensor(starts)
            self.first.append(first)
            self.per_dim.append((idx >= first[:, None]) & (idx < first[:, None] + w))
        self.counts = [len(f) for f in self.first]
        self.count = math.prod(self.counts)
        self._elements: Tensor | None = None

    def elements(self, start: int, end: int) -> Tensor:
        """Flat (row-major) element indices of windows ``[start, end)``.

        Computed once for all windows (``count * prod(window)`` indices, a few times the input's
        size at most), then sliced per chunk.

        Returns:
            ``(end - start, prod(window))`` long; a window clipped at an edge repeats one of
            its elements in place of the missing ones.
        """
        if self._elements is None:
            q = torch.arange(self.count)
            flat = torch.zeros(self.count, *([1] * len(self.shape)), dtype=torch.long)
            step = 1
            for d in reversed(range(len(self.shape))):
                q, i = q // self.counts[d], q % self.counts[d]
                idx = self.first[d][i, None] + torch.arange(self.window[d])  # (count, w_d)
                idx = torch.where(idx < self.shape[d], idx, idx[:, :1])  # clipped: repeat
                view = [self.count] + [1] * len(self.shape)
                view[d + 1] = self.window[d]
                flat = flat + (idx * step).reshape(view)
                step *= self.shape[d]
            self._elements = flat.reshape(self.count, -1)
        return self._elements[start:end]

    def spread(self, values: Tensor) -> Tensor:
        """Sum per-window values over the windows covering each element.

        Args:
            values: ``(count, rows, n_outputs)``, one entry per window (row-major order).

        Returns:
            ``(rows, n_outputs, *shape)``.
        """
        rows, n_out = values.shape[1:]
        out = values.reshape(*self.counts, rows * n_out)
        for cover in self.per_dim:  # contract the leading window axis, append the element axis
            out = torch.tensordot(out, cover.to(values.dtype), dims=([0], [0]))
        return out.reshape(rows, n_out, *self.shape)


def _per_input(value: Any, n_inputs: int, name: str, scalar_ok: bool) -> tuple[Any, ...]:
    """One entry per input: a tuple of tuples is per input; a tuple of ints is shared."""
    if value is None or (scalar_ok and isinstance(value, int)):
        return (value,) * n_inputs
    entries = as_tuple(value)
    if entries and all(isinstance(e, int) for e in entries):
        if n_inputs == 1:
            return (tuple(entries),)
        if scalar_ok and len(entries) == n_inputs:  # one int per input, as in Captum
            return tuple(entries)
        raise ValueError(f"{name} is one tuple of ints for {n_inputs} inputs; pass one per input.")
    if len(entries) != n_inputs:
        raise ValueError(f"Got {len(entries)} {name} for {n_inputs} inputs; pass one per input.")
    return tuple(entries)


def _window_grids(inputs: tuple[Tensor, ...], windows: Any, strides: Any) -> list[_WindowGrid]:
    shapes = _per_input(windows, len(inputs), "sliding_window_shapes", scalar_ok=False)
    steps = _per_input(strides, len(inputs), "strides", scalar_ok=True)
    grids = []
    for i, (x, w, s) in enumerate(zip(inputs, shapes, steps)):
        dims = tuple(x.shape[1:])
        w = as_tuple(w)
        if len(w) != len(dims) or not all(isinstance(v, int) and v >= 1 for v in w):
            raise ValueError(
                f"sliding_window_shapes for input {i} is {w}; it needs one positive int per "
                f"dimension after the batch, {len(dims)} for shape {tuple(x.shape)}."
            )
        s = (1,) * len(dims) if s is None else (s,) * len(dims) if isinstance(s, int) else tuple(s)
        if len(s) != len(dims) or not all(isinstance(v, int) and v >= 1 for v in s):
            raise ValueError(
                f"strides for input {i} is {s}; use a positive int or one per dimension "
                f"({len(dims)})."
            )
        if any(wd > d for wd, d in zip(w, dims)):
            raise ValueError(f"sliding window {w} is larger than input {i}'s dimensions {dims}.")
        grids.append(_WindowGrid(dims, tuple(w), s))
    return grids
