"""Inputs, baselines and extra forward arguments: normalized once, validated with clear errors.

Every algorithm accepts ``inputs`` as a tensor or a tuple of tensors and answers in the same form.
The functions here turn what the user passed into one internal form (a tuple of tensors, a tuple of
baselines broadcast to the inputs, a tuple of extra arguments) and convert results back at the end.
Nothing the user passed is modified: every tensor that needs gradients is a fresh one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor

from .errors import InputError, InputTypeError

TensorOrTuple: TypeAlias = Tensor | tuple[Tensor, ...]
BaselineType: TypeAlias = None | int | float | Tensor | tuple[int | float | Tensor | None, ...]

__all__ = [
    "BaselineType",
    "InputTypeError",
    "TensorOrTuple",
    "as_tuple",
    "check_differentiable",
    "expand_args",
    "expand_batch",
    "format_additional_args",
    "format_baseline_distribution",
    "format_baselines",
    "format_inputs",
    "per_example_sum",
    "restore_form",
    "select_rows",
]


def as_tuple(value: Any) -> tuple[Any, ...]:
    """Wrap a non-tuple in a 1-tuple; leave tuples (and lists, converted) as they are."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(value)
    return (value,)


def restore_form(values: Sequence[Tensor], was_tuple: bool) -> TensorOrTuple:
    """Return ``values`` as a tuple when the user passed a tuple, else the single tensor."""
    return tuple(values) if was_tuple else values[0]


def format_inputs(inputs: TensorOrTuple, name: str = "inputs") -> tuple[tuple[Tensor, ...], bool]:
    """Normalize ``inputs`` to a tuple of tensors and check that they share a batch size.

    Returns:
        ``(tensors, was_tuple)``; every tensor has at least one dimension, dimension 0 being the
        batch of examples.
    """
    was_tuple = isinstance(inputs, tuple | list)
    tensors = as_tuple(inputs)
    if len(tensors) == 0:
        raise InputError(f"{name} is an empty tuple: pass at least one tensor.")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise InputTypeError(
                f"{name}[{i}] is a {type(t).__name__}; every input must be a torch.Tensor "
                "(pass non-tensor arguments through additional_forward_args)."
            )
        if t.dim() == 0:
            raise InputError(
                f"{name}[{i}] is a 0-dimensional tensor; inputs need a batch dimension first "
                "(use x.unsqueeze(0) for a single example)."
            )
    sizes = [t.shape[0] for t in tensors]
    if len(set(sizes)) > 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise InputError(
            f"The tensors in {name} have different batch sizes {sizes} (shapes {shapes}); "
            "dimension 0 of every input must index the same examples."
        )
    return tensors, was_tuple


def check_differentiable(inputs: tuple[Tensor, ...], method: str) -> None:
    """Raise a helpful error when a gradient method is given integer inputs (e.g. token ids)."""
    for i, t in enumerate(inputs):
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(
                f"{method} needs floating-point inputs to take gradients, but input {i} has dtype "
                f"{t.dtype}. Token ids cannot be differentiated: attribute to the embedding layer "
                "instead, with LayerIntegratedGradients(model, model.get_input_embeddings()), or "
                "replace the embedding with configure_interpretable_embedding_layer(model, ...) "
                "and pass embeddings as inputs."
            )


def _one_baseline(baseline: Any, inp: Tensor, index: int) -> Tensor:
    if baseline is None:
        return torch.zeros_like(inp)
    if isinstance(baseline, int | float | bool):
        return torch.full_like(inp, float(baseline))
    if not isinstance(baseline, Tensor):
        raise InputTypeError(
            f"baselines[{index}] is a {type(baseline).__name__}; a baseline must be None, a number "
            "or a tensor."
        )
    baseline = baseline.to(device=inp.device, dtype=inp.dtype)
    if baseline.dim() == 0:
        return baseline.expand_as(inp)
    try:
        shape = torch.broadcast_shapes(baseline.shape, inp.shape)
    except RuntimeError:
        shape = None
    if shape != inp.shape:
        raise InputError(
            f"baselines[{index}] has shape {tuple(baseline.shape)}, which cannot broadcast to "
            f"input {index} of shape {tuple(inp.shape)}. Pass a scalar, a tensor of the input's "
            f"shape, or one example of shape {(1, *inp.shape[1:])} to use for every example."
        )
    return baseline.expand_as(inp)


def format_baselines(baselines: BaselineType, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Broadcast baselines to the inputs' shapes.

    Args:
        baselines: None (zeros), a number, a tensor broadcastable to the input (same shape, or
            ``(1, *input.shape[1:])`` for one baseline shared by all examples), or a tuple with one
            such entry per input.
        inputs: the formatted inputs.

    Returns:
        One baseline per input, each of exactly that input's shape (possibly an expanded view).
    """
    if isinstance(baselines, tuple | list):
        if len(baselines) != len(inputs):
            raise InputError(
                f"Got {len(baselines)} baselines for {len(inputs)} inputs; pass one baseline per "
                "input tensor (None for zeros)."
            )
        return tuple(_one_baseline(b, x, i) for i, (b, x) in enumerate(zip(baselines, inputs)))
    if len(inputs) > 1 and isinstance(baselines, Tensor) and baselines.dim() > 0:
        raise InputError(
            f"A single baseline tensor was given for {len(inputs)} inputs; pass a tuple with one "
            "baseline per input."
        )
    return tuple(_one_baseline(baselines, x, i) for i, x in enumerate(inputs))


def format_baseline_distribution(
    baselines: BaselineType | Callable[..., Any],
    inputs: tuple[Tensor, ...],
    passed_inputs: Any = None,
) -> tuple[Tensor, ...]:
    """Normalize a *distribution* of baselines (GradientShap, DeepLiftShap).

    Args:
        baselines: a tensor of shape ``(n_baselines, *input.shape[1:])`` per input (a tuple when
            there are several inputs), a number, or a callable returning either. As in Captum, a
            callable that takes parameters is called with the inputs as the user passed them
            (``passed_inputs``), one without parameters with nothing.
        inputs: the formatted inputs.
        passed_inputs: the inputs in the user's form (defaults to ``inputs``).

    Returns:
        One tensor per input of shape ``(n_baselines, *input.shape[1:])``; every input gets the same
        ``n_baselines``.
    """
    if callable(baselines) and not isinstance(baselines, Tensor):
        try:
            takes_inputs = bool(inspect.signature(baselines).parameters)
        except (TypeError, ValueError):  # builtins without a signature
            takes_inputs = False
        baselines = (
            baselines(inputs if passed_inputs is None else passed_inputs)
            if (takes_inputs)
            else baselines()
        )
    entries = as_tuple(baselines)
    if len(entries) != len(inputs):
        raise InputError(
            f"Got {len(entries)} baseline distributions for {len(inputs)} inputs; pass one per "
            "input tensor."
        )
    out = []
    for i, (b, x) in enumerate(zip(entries, inputs)):
        if b is None or isinstance(b, int | float):
            b = torch.full((1, *x.shape[1:]), float(b or 0.0), dtype=x.dtype, device=x.device)
        if not isinstance(b, Tensor):
            raise InputTypeError(
                f"baselines[{i}] must be a tensor or a number, got {type(b).__name__}."
            )
        b = b.to(device=x.device, dtype=x.dtype)
        if b.dim() == 0:
            b = b.expand(1, *x.shape[1:])
        if tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise InputError(
                f"baselines[{i}] has shape {tuple(b.shape)}; a baseline distribution for input "
                f"of shape {tuple(x.shape)} must have shape (n_baselines, *{tuple(x.shape[1:])})."
            )
        out.append(b)
    counts = {b.shape[0] for b in out}
    if len(counts) > 1:
        raise InputError(
            f"The baseline distributions have different sizes {sorted(counts)}; every input needs "
            "the same number of baselines (they are drawn jointly)."
        )
    return tuple(out)


def format_additional_args(args: Any) -> tuple[Any, ...]:
    """Normalize ``additional_forward_args``: None → (), a non-tuple → a 1-tuple."""
    if args is None:
        return ()
    return as_tuple(args)


Layout = Literal["repeat", "interleave"]


def expand_batch(t: Tensor, n: int, layout: Layout) -> Tensor:
    """Stack ``n`` copies of a batch along dimension 0.

    ``"repeat"`` puts copy-major rows (row ``k * batch + i`` is example ``i`` of copy ``k``), as
    used for integration steps; ``"interleave"`` puts example-major rows (row ``i * n + k``), as
    used for noise samples.
    """
    if n == 1:
        return t
    if layout == "repeat":
        return t.repeat(n, *([1] * (t.dim() - 1)))
    return t.repeat_interleave(n, dim=0)


def expand_args(args: tuple[Any, ...], batch: int, n: int, layout: Layout) -> tuple[Any, ...]:
    """Expand the tensors among extra forward args that carry the batch dimension.

    A tensor whose dimension 0 has the batch size is expanded like the inputs; everything else
    (other tensors, numbers, strings, modules) is passed through unchanged.
    """
    return tuple(
        expand_batch(a, n, layout)
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch
        else a
        for a in args
    )


def per_example_sum(values: Sequence[Tensor]) -> Tensor:
    """Sum every element of every tensor per example: ``(batch,)`` from ``(batch, ...)`` tensors."""
    batch = values[0].shape[0]
    total = values[0].reshape(batch, -1).sum(1)
    for v in values[1:]:
        total = total + v.reshape(batch, -1).sum(1).to(total.dtype)
    return total


def select_rows(args: tuple[Any, ...], batch: int, rows: Tensor | slice) -> tuple[Any, ...]:
    """Take rows of the batched tensors among ``args`` (the rest passes through)."""
    return tuple(
        a[rows] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch else a
        for a in args
    )
