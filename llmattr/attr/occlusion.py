"""Occlusion on the perturbation engine: a sliding window replaced by the baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.base import PerturbationAttribution
from .._core.errors import InputError
from .._core.inputs import BaselineType, TensorOrTuple, as_tuple, format_baselines
from .._core.perturbation import PerturbationRun, perturbation_call
from .._core.targets import TargetType

__all__ = ["Occlusion"]

Strides = int | tuple[int, ...] | tuple[int | tuple[int, ...], ...] | None


class Occlusion(PerturbationAttribution):
    """Occlusion (Zeiler and Fergus, 2014): slide a window over each input, replace it by the
    baseline, and credit the output's drop to the window's elements.

    Each element's attribution is the mean drop over the windows that cover it. Windows start
    every ``strides`` along each dimension and the last one is clipped at the edge, so every
    element is covered (as in Captum, a stride may not exceed its window unless the window spans
    the whole dimension). Shapes as for :class:`~llmattr.FeatureAblation`
    (``(output.numel(), *input.shape[1:])``); an integer forward gives float32 means, as Captum.

    Args:
        forward_func: the model or forward function.
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    def attribute(
        self,
        inputs: TensorOrTuple,
        sliding_window_shapes: tuple[int, ...] | tuple[tuple[int, ...], ...],
        strides: Strides = None,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        per_example_outputs: bool = False,
    ) -> TensorOrTuple:
        """Occlusion attributions.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            sliding_window_shapes: the window over ``input.shape[1:]`` (a tuple of ints), or one
                such tuple per input.
            strides: the step of the window: an int for every dimension, a tuple with one per
                dimension, or one of those per input (default 1); for several inputs a tuple of
                ints has one int per input, as in Captum.
            baselines: replacement values, as for :class:`~llmattr.FeatureAblation`.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            perturbations_per_eval: windows evaluated in one forward.
            show_progress: show a progress bar titled ``"Occlusion attribution"``.
            per_example_outputs: llmattr: one map per output of each example,
                ``(batch, *output.shape[1:], ...)``, instead of ``(output.numel(), ...)``.

        Returns:
            Attributions per input, ``(output.numel(), *input.shape[1:])``.
        """
        return self._occlusion(
            False, inputs, sliding_window_shapes, strides, baselines, target,
            additional_forward_args, perturbations_per_eval, show_progress, per_example_outputs,
        )  # fmt: skip

    def attribute_future(
        self,
        inputs: TensorOrTuple,
        sliding_window_shapes: tuple[int, ...] | tuple[tuple[int, ...], ...],
        strides: Strides = None,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        per_example_outputs: bool = False,
    ) -> torch.Future:
        """llmattr (Captum's Occlusion has none): :meth:`attribute` for a forward that returns
        ``torch.futures.Future``; returns a Future of the attributions."""
        return self._occlusion(
            True, inputs, sliding_window_shapes, strides, baselines, target,
            additional_forward_args, perturbations_per_eval, show_progress, per_example_outputs,
        )  # fmt: skip

    def _occlusion(
        self,
        futures: bool,
        inputs: TensorOrTuple,
        sliding_window_shapes: Any,
        strides: Strides,
        baselines: BaselineType,
        target: TargetType,
        additional_forward_args: Any,
        perturbations_per_eval: int,
        show_progress: bool,
        per_example_outputs: bool,
    ) -> Any:
        call = perturbation_call(inputs, target, additional_forward_args)
        windows = _window_grids(call.inputs, sliding_window_shapes, strides)
        run = PerturbationRun(
            self.forward_func, call, format_baselines(baselines, call.inputs),
            perturbations_per_eval, show_progress, self.get_name(),
            layout="rows" if per_example_outputs else "flat", futures=futures, float_result=True,
        )  # fmt: skip
        offsets = [0]
        for grid in windows:
            offsets.append(offsets[-1] + grid.count)
        drops: list[Tensor] = []  # allocated once the output's size is known

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
            if not drops:
                drops.append(torch.empty(offsets[-1], run.rows, run.n_outputs, dtype=torch.float64))
            drops[0][start:end] = run.initial.unsqueeze(0) - outputs

        def result() -> TensorOrTuple:
            # each element's mean drop over the windows covering it (windows are boxes, so the
            # sum over windows factorizes into one contraction per dimension)
            per_element = []
            for j, grid in enumerate(windows):
                sums = grid.spread(drops[0][offsets[j] : offsets[j + 1]])
                counts = grid.spread(torch.ones(grid.count, 1, 1, dtype=torch.float64))
                per_element.append(sums / counts.clamp(min=1))
            return call.result(run.attributions(tuple(per_element)))

        run.evaluate(offsets[-1], build, fold)
        return run.finish(result)


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
        if n_inputs == 1:  # Captum: a 1-tuple of strides for one input is that input's stride
            return (entries[0] if scalar_ok and len(entries) == 1 else tuple(entries),)
        if scalar_ok and len(entries) == n_inputs:  # one int per input, as in Captum
            return tuple(entries)
        raise InputError(f"{name} is one tuple of ints for {n_inputs} inputs; pass one per input.")
    if len(entries) != n_inputs:
        raise InputError(f"Got {len(entries)} {name} for {n_inputs} inputs; pass one per input.")
    return tuple(entries)


def _window_grids(inputs: tuple[Tensor, ...], windows: Any, strides: Any) -> list[_WindowGrid]:
    shapes = _per_input(windows, len(inputs), "sliding_window_shapes", scalar_ok=False)
    steps = _per_input(strides, len(inputs), "strides", scalar_ok=True)
    grids = []
    for i, (x, w, s) in enumerate(zip(inputs, shapes, steps)):
        dims = tuple(x.shape[1:])
        w = as_tuple(w)
        if len(w) != len(dims) or not all(isinstance(v, int) and v >= 1 for v in w):
            raise InputError(
                f"sliding_window_shapes for input {i} is {w}; it needs one positive int per "
                f"dimension after the batch, {len(dims)} for shape {tuple(x.shape)}."
            )
        s = (1,) * len(dims) if s is None else (s,) * len(dims) if isinstance(s, int) else tuple(s)
        if len(s) != len(dims) or not all(isinstance(v, int) and v >= 1 for v in s):
            raise InputError(
                f"strides for input {i} is {s}; use a positive int or one per dimension "
                f"({len(dims)})."
            )
        if any(wd > d for wd, d in zip(w, dims)):
            raise InputError(f"sliding window {w} is larger than input {i}'s dimensions {dims}.")
        if any(sd > wd and wd != d for sd, wd, d in zip(s, w, dims)):
            raise InputError(
                f"strides {s} for input {i} exceed the sliding window {w}: elements between "
                "windows would never be occluded. Use strides no larger than the window."
            )
        grids.append(_WindowGrid(dims, tuple(w), s))
    return grids
