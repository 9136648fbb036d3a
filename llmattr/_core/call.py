"""One ``attribute()`` call, normalized once at the boundary.

Every algorithm starts by turning its user-facing arguments into a :class:`Call` and ends by
converting its per-input results back with :meth:`Call.result`; nothing in between deals with
"tensor or tuple", target forms or extra-argument expansion again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .inputs import (
    TensorOrTuple,
    check_differentiable,
    format_additional_args,
    format_inputs,
    restore_form,
    select_rows,
)
from .targets import Target, TargetType, normalize_target

__all__ = ["Call"]


@dataclass(frozen=True)
class Call:
    """Normalized inputs, target and extra forward args of one call.

    Attributes:
        inputs: one tensor per input, dimension 0 the batch.
        was_tuple: whether the user passed a tuple (results are returned the same way).
        target: the normalized target.
        args: the extra forward arguments, as a tuple.
    """

    inputs: tuple[Tensor, ...]
    was_tuple: bool
    target: Target
    args: tuple[Any, ...]

    @classmethod
    def of(
        cls,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        gradient_method: str | None = None,
    ) -> Call:
        """Normalize and validate; ``gradient_method`` names the method for integer-input errors."""
        tensors, was_tuple = format_inputs(inputs)
        if gradient_method is not None:
            check_differentiable(tensors, gradient_method)
        return cls(
            tensors,
            was_tuple,
            normalize_target(target, tensors[0].shape[0]),
            format_additional_args(additional_forward_args),
        )

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    def for_rows(self, examples: Tensor) -> tuple[Target, tuple[Any, ...]]:
        """Target and extra args for expanded rows, row ``r`` being example ``examples[r]``."""
        return self.target.rows(examples), select_rows(self.args, self.batch, examples)

    def result(self, values: tuple[Tensor, ...] | list[Tensor]) -> TensorOrTuple:
        """Return per-input results in the form the user passed the inputs."""
        return restore_form(values, self.was_tuple)
