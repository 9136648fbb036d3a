"""Choosing the scalar to explain: the ``target`` argument.

``target`` picks one scalar per example out of the model's output of shape ``(batch, *out)``:

* ``None``: the output already has one value per example (``(batch,)`` or ``(batch, 1, ...)``).
* an ``int``: ``output[:, target]`` for every example (2-D outputs).
* a ``tuple`` of ints: ``output[(slice(None), *target)]`` for outputs with more than 2 dimensions.
* a ``list`` with one int or tuple per example, or a tensor: a different index per example
  (a 0-d / one-element tensor acts like an int, shape ``(batch,)`` like a list of ints and
  ``(batch, k)`` like a list of k-tuples).

The user's target is normalized once into :class:`Target`, whose form is checked before any work;
the check against the output's shape happens at the first forward, before any backward pass.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import Tensor

from .errors import InputError, InputTypeError, TargetIndexError
from .inputs import Layout, expand_batch

__all__ = ["Target", "TargetIndexError", "TargetType", "normalize_target"]


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _as_index(x: Any, where: str) -> tuple[int, ...]:
    if _is_int(x):
        return (int(x),)
    if isinstance(x, tuple) and len(x) > 0 and all(_is_int(v) for v in x):
        return tuple(int(v) for v in x)
    raise InputTypeError(
        f"{where} is {x!r}; a target index must be an int or a non-empty tuple of ints."
    )


@dataclass(frozen=True)
class Target:
    """A normalized target.

    Attributes:
        index: ``None`` (the output is already one value per example), a ``(k,)`` long tensor
            shared by every example, or a ``(batch, k)`` long tensor with one index per example.
        per_example: whether ``index`` has one row per example.
    """

    index: Tensor | None
    per_example: bool = False

    def expand(self, n: int, layout: Layout) -> Target:
        """The target for ``n`` stacked copies of the batch (see :func:`expand_batch`)."""
        if not self.per_example or self.index is None:
            return self
        return Target(expand_batch(self.index, n, layout), True)

    def rows(self, rows: Tensor | slice) -> Target:
        """The target for a subset of the batch's rows."""
        if not self.per_example or self.index is None:
            return self
        return Target(self.index[rows], True)

    def select(self, output: Tensor, batch: int) -> Tensor:
        """Pick one scalar per example from ``output``; returns shape ``(batch,)``."""
        if not isinstance(output, Tensor):
            raise TypeError(
                f"The forward function returned a {type(output).__name__}; it must return a tensor "
                "(wrap the model to return e.g. the logits)."
            )
        if output.dim() == 0:
            if batch != 1:
                raise ValueError(
                    f"The forward function returned a single scalar for a batch of {batch} "
                    "examples; it must return one value (or one row of values) per example."
                )
            output = output.reshape(1)
        if output.shape[0] != batch:
            raise ValueError(
                f"The forward function returned shape {tuple(output.shape)} for a batch of "
                f"{batch} examples; dimension 0 of the output must index the examples."
            )
        rest = tuple(output.shape[1:])
        if self.index is None:
            if output[0].numel() != 1:
                raise InputError(
                    f"The output has shape {tuple(output.shape)}, i.e. {output[0].numel()} values "
                    "per example, but no target was given. Pass target=<class index> (an int for "
                    "2-D outputs, a tuple for more dimensions) to choose the value to explain."
                )
            return output.reshape(batch)
        k = self.index.shape[-1]
        if k > len(rest) or any(s != 1 for s in rest[k:]):
            raise InputError(
                f"The target indexes {k} output dimension(s) but the output has shape "
                f"{tuple(output.shape)}: give one index per dimension after the batch "
                f"(a tuple of {len(rest)} ints)."
            )
        idx = self.index.to(output.device)
        sizes = torch.tensor(rest[:k], device=output.device)
        bad = (idx >= sizes) | (idx < -sizes)
        if bool(bad.any()):
            first = idx[bad.any(-1)][0] if self.per_example else idx
            raise TargetIndexError(
                f"Target index {tuple(first.tolist())} is out of range for an output of shape "
                f"{tuple(output.shape)}."
            )
        return self.picker(tuple(output.shape), output.device)(output)

    def picker(self, shape: tuple[int, ...], device: torch.device) -> Callable[[Tensor], Tensor]:
        """A function picking this target's scalars from outputs of ``shape`` (already checked
        by :meth:`select`), for evaluating many outputs of one shape without re-checking.

        Returns:
            ``pick(output) -> (shape[0],)``.
        """
        batch, rest = shape[0], shape[1:]
        if self.index is None:
            return lambda output: output.reshape(batch)
        k = self.index.shape[-1]
        view = (batch, *rest[:k])  # trailing dims past k are all 1
        index: tuple[Any, ...]
        if self.per_example:
            idx = self.index.to(device)
            index = (torch.arange(batch, device=device), *idx.unbind(-1))
        else:
            index = (slice(None), *self.index.tolist())
        return lambda output: output.reshape(view)[index]


TargetType: TypeAlias = None | int | tuple[int, ...] | Tensor | list[Any] | Target


def normalize_target(target: TargetType, batch: int) -> Target:
    """Check the form of ``target`` for a batch of ``batch`` examples and normalize it."""
    if target is None:
        return Target(None)
    if isinstance(target, Target):
        return target
    if _is_int(target) or isinstance(target, tuple):
        return Target(torch.tensor(_as_index(target, "target")))
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise InputTypeError(f"A target tensor must hold integers, got dtype {target.dtype}.")
        t = target.detach().long().cpu()
        if t.numel() == 1 and t.dim() <= 1 and not (t.dim() == 1 and batch == 1):
            return Target(t.reshape(1))
        if t.dim() == 1 and t.shape[0] == batch:
            return Target(t.reshape(batch, 1), True)
        if t.dim() == 2 and t.shape[0] == batch:
            return Target(t, True)
        raise InputError(
            f"A target tensor of shape {tuple(target.shape)} does not fit a batch of {batch}: "
            f"pass one index (0-d), one per example (shape ({batch},)), or one index tuple per "
            f"example (shape ({batch}, k))."
        )
    if isinstance(target, list):
        if len(target) != batch:
            raise InputError(
                f"target is a list of {len(target)} entries for a batch of {batch} examples; a "
                "list target needs exactly one entry per example."
            )
        rows = [_as_index(t, f"target[{i}]") for i, t in enumerate(target)]
        if len({len(r) for r in rows}) > 1:
            raise InputError("All entries of a list target must have the same number of indices.")
        return Target(torch.tensor(rows, dtype=torch.long), True)
    raise InputTypeError(
        f"target of type {type(target).__name__} is not understood; pass None, an int, a tuple of "
        "ints, a list (one per example) or an integer tensor."
    )
