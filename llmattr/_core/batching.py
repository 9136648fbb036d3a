"""Evaluating an expanded batch in chunks: the one batching mechanism every algorithm uses.

Integrated gradients evaluates ``n_steps`` points per example, GradientShap ``n_samples``, a
perturbation method one forward per perturbation. All of them describe the expanded evaluation as
``total`` rows and hand :func:`run_in_chunks` a function that evaluates rows ``[start, end)``.

``chunk_size`` is

* ``None``: every row at once (Captum's default);
* a positive ``int``: at most that many rows per evaluation;
* ``"auto"``: start with every row and halve the chunk whenever the device runs out of memory,
  retrying the failed chunk (results are the same, only the grouping changes).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Literal, TypeAlias, TypeVar

import torch

from .errors import InputError

ChunkSize: TypeAlias = int | None | Literal["auto"]
T = TypeVar("T")

__all__ = ["ChunkSize", "check_chunk_size", "is_out_of_memory", "run_in_chunks"]

_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {
        t
        for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError)
        if t is not None
    }
)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator out-of-memory error."""
    return isinstance(err, _OOM_TYPES) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def check_chunk_size(chunk_size: ChunkSize, name: str) -> None:
    """Validate a chunk-size argument, naming it in the error."""
    if chunk_size is None or chunk_size == "auto":
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(
            f"{name} must be a positive int, None (everything at once) or 'auto' (halve on "
            f"out-of-memory), got {chunk_size!r}."
        )


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_chunks(
    total: int,
    chunk_size: ChunkSize,
    evaluate: Callable[[int, int], T],
    *,
    name: str = "internal_batch_size",
    progress: Callable[[int], object] | None = None,
) -> list[T]:
    """Evaluate rows ``[0, total)`` in consecutive chunks and return the chunks' results in order.

    Args:
        total: number of rows of the expanded evaluation.
        chunk_size: see the module docstring.
        evaluate: ``evaluate(start, end)`` computes rows ``[start, end)``; it must not keep state
            between calls, since a chunk that ran out of memory is evaluated again, smaller.
        name: the argument's name, for error messages.
        progress: called with the number of rows finished after each chunk.
    """
    check_chunk_size(chunk_size, name)
    auto = chunk_size == "auto"
    size = total if chunk_size is None or auto else min(int(chunk_size), total)
    size = max(size, 1)
    results: list[T] = []
    start = 0
    while start < total:
        end = min(start + size, total)
        try:
            results.append(evaluate(start, end))
        except Exception as err:
            if not (auto and is_out_of_memory(err)) or size == 1:
                raise
            del err
            _release_memory()
            size = max(size // 2, 1)
            continue
        if progress is not None:
            progress(end - start)
        start = end
    return results
