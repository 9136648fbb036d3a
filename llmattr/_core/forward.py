"""Running the forward function and taking gradients of the selected outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .batching import ChunkSize, run_in_chunks
from .targets import Target

__all__ = ["accumulate_gradients", "add_rows", "grad_options", "gradients", "run_forward"]


def grad_options(grad_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for ``torch.autograd.grad`` from a user's ``grad_kwargs`` (Captum's
    argument, e.g. ``{"materialize_grads": True}`` or ``{"create_graph": True}``).

    ``allow_unused`` defaults to True (an input the output does not depend on gets a zero
    gradient); pass ``{"allow_unused": False}`` to make autograd raise instead, as torch does.
    """
    if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
        raise TypeError(
            f"grad_kwargs must be a dict of torch.autograd.grad arguments, got "
            f"{type(grad_kwargs).__name__}."
        )
    options = dict(grad_kwargs or {})
    options.setdefault("allow_unused", True)
    return options


def run_forward(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    target: Target,
    args: tuple[Any, ...] = (),
) -> Tensor:
    """Evaluate ``forward_func(*inputs, *args)`` and select the target: shape ``(batch,)``."""
    output = forward_func(*inputs, *args)
    return target.select(output, inputs[0].shape[0])


def gradients(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    target: Target,
    args: tuple[Any, ...] = (),
    grad_kwargs: dict[str, Any] | None = None,
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Gradients of each example's selected output with respect to each input.

    The inputs are detached copies that share storage, so the caller's tensors (and their
    ``requires_grad``) are untouched and model parameters accumulate no ``.grad``.
    ``grad_kwargs`` go to ``torch.autograd.grad`` (see :func:`grad_options`).

    Returns:
        ``(grads, outputs)``: one gradient per input (its shape; zeros for an input the output
        does not depend on) and the selected outputs, shape ``(batch,)``, detached.
    """
    with torch.enable_grad():
        leaves = tuple(x.detach().requires_grad_() for x in inputs)
        out = run_forward(forward_func, leaves, target, args)
        if not out.requires_grad:
            raise RuntimeError(
                "The selected output does not depend on the inputs through differentiable "
                "operations (it has no gradient). Check that the forward function uses its inputs "
                "and does not run under torch.no_grad()."
            )
        grads = torch.autograd.grad(out.sum(), leaves, **grad_options(grad_kwargs))
    return (
        tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)),
        out.detach(),
    )


def add_rows(total: Tensor, examples: Tensor, part: Tensor) -> None:
    """``total[examples[r]] += part[r]`` for every row ``r``.

    Rows that run over the examples in order, whole batches at a time (the step-major layout of
    a path: row ``step * batch + example``), are summed as a ``(steps, batch, ...)`` view:
    ``index_add_`` scatters element by element on CPU and costs several times more.

    Args:
        total: ``(batch, ...)``, updated in place.
        examples: ``(rows,)`` long tensor, the example of each row (on any device).
        part: ``(rows, ...)``.
    """
    batch, rows = total.shape[0], len(examples)
    if rows % batch == 0 and torch.equal(
        examples.view(-1, batch),
        torch.arange(batch, device=examples.device).expand(rows // batch, batch),
    ):
        total.add_(part.reshape(rows // batch, batch, *part.shape[1:]).sum(0))
    else:
        total.index_add_(0, examples.to(part.device), part)


def accumulate_gradients(
    forward_func: Callable[..., Any],
    call: Any,
    row_examples: Tensor,
    points: Callable[[int, int], tuple[Tensor, ...]],
    contribution: Callable[[int, int, tuple[Tensor, ...]], tuple[Tensor, ...]],
    chunk_size: ChunkSize,
    *,
    name: str = "internal_batch_size",
    grad_fn: Callable[[tuple[Tensor, ...], Target, tuple[Any, ...]], tuple[Tensor, ...]]
    | None = None,
    grad_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, ...]:
    """Sum per-row gradient contributions into per-example totals, evaluating rows in chunks.

    An expanded evaluation has ``len(row_examples)`` rows; row ``r`` belongs to example
    ``row_examples[r]``. For each chunk ``[start, end)`` the gradient of the target at
    ``points(start, end)`` is taken and ``contribution(start, end, grads)`` (one tensor per input,
    rows first) is added to its example's total.

    Args:
        forward_func: the function being explained.
        call: the normalized :class:`~llmattr._core.call.Call`.
        row_examples: ``(n_rows,)`` long tensor, the example of each row.
        points: builds the inputs of rows ``[start, end)``.
        contribution: weighs the gradients of those rows.
        chunk_size: rows per evaluation (see :func:`~llmattr._core.batching.run_in_chunks`).
        grad_fn: ``grad_fn(points, target, args)`` returning the gradients to weigh, when they
            are not the gradients with respect to the points (e.g. at a layer).
        grad_kwargs: passed to ``torch.autograd.grad`` when ``grad_fn`` is None.

    Returns:
        Per gradient tensor, the ``(batch, ...)`` per-example sums of the contributions.
    """
    totals: list[Tensor] = []

    def evaluate(start: int, end: int) -> tuple[Tensor, ...]:
        examples = row_examples[start:end]
        target, args = call.for_rows(examples)
        pts = points(start, end)
        if grad_fn is not None:
            return contribution(start, end, grad_fn(pts, target, args))
        grads, _ = gradients(forward_func, pts, target, args, grad_kwargs)
        return contribution(start, end, grads)

    def fold(start: int, end: int) -> None:
        parts = evaluate(start, end)
        if not totals:
            totals.extend(p.new_zeros((call.batch, *p.shape[1:])) for p in parts)
        for total, part in zip(totals, parts):
            add_rows(total, row_examples[start:end], part)

    run_in_chunks(len(row_examples), chunk_size, fold, name=name)
    return tuple(totals)
