"""FGSM: one signed-gradient step of size epsilon (Goodfellow et al., https://arxiv.org/abs/1412.6572).

Untargeted, the step goes up the loss of the true label, ``x' = x + epsilon * sign(dL(x, y)/dx)``;
targeted, it goes down the loss of the wanted label, ``x' = x - epsilon * sign(dL(x, t)/dx)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.inputs import TensorOrTuple, restore_form
from .perturbation import (
    Perturbation,
    attack_inputs,
    check_amount,
    format_masks,
    loss_gradients,
    sign_step,
)

__all__ = ["FGSM"]


class FGSM(Perturbation):
    """Fast Gradient Sign Method, with Captum's arguments.

    Args:
        forward_func: the model, or any function of the inputs (and extra args).
        loss_func: ``loss_func(outputs, target)`` giving the loss per example (or its sum);
            None uses ``-log(outputs[target])``, i.e. the model returns probabilities.
        lower_bound: smallest value an input element may take after the step.
        upper_bound: largest value an input element may take (e.g. 1 for images in [0, 1]).

    Attributes:
        bound: function clamping perturbed inputs to the bounds (may be replaced).
        zero_thresh: gradients with ``|g| <= zero_thresh`` leave their element unchanged.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        loss_func: Callable[..., Tensor] | None = None,
        lower_bound: float = float("-inf"),
        upper_bound: float = float("inf"),
    ) -> None:
        super().__init__()
        self.forward_func = forward_func
        self.loss_func = loss_func
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.bound: Callable[[Tensor], Tensor] = self._clamp
        self.zero_thresh = 10**-6

    def _clamp(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=self.lower_bound, max=self.upper_bound)

    def perturb(
        self,
        inputs: TensorOrTuple,
        epsilon: float | Tensor,
        target: Any,
        additional_forward_args: Any = None,
        targeted: bool = False,
        mask: TensorOrTuple | None = None,
    ) -> TensorOrTuple:
        """Perturb ``inputs`` by one signed-gradient step.

        Args:
            inputs: a floating-point tensor ``(N, ...)`` or a tuple of them (same ``N``).
            epsilon: the step size (>= 0): a number, or a tensor broadcast against the inputs
                (e.g. ``(N, 1)``: one step size per example), as Captum takes it.
            target: the true labels (untargeted) or the wanted ones (targeted), as given to
                ``loss_func``; with the default loss an int, a tuple, a list or a tensor as for
                any attribution's ``target``.
            additional_forward_args: extra arguments passed to ``forward_func`` after the inputs.
            targeted: step towards ``target`` instead of away from it.
            mask: a tensor (or tuple, one per input) multiplying the step: 0 freezes an element.
                Same shape as its input, or broadcastable to it.

        Returns:
            The perturbed inputs, in the form and shapes of ``inputs`` (detached).

        Raises:
            InputError: a negative epsilon, integer inputs (token ids: attack the embeddings),
                a mask whose shape does not fit its input.
        """
        epsilon = check_amount(epsilon, "epsilon", per_example=True)
        tensors, was_tuple = attack_inputs(inputs, type(self).__name__)
        masks = format_masks(mask, tensors)
        perturbed = self._step(tensors, epsilon, target, additional_forward_args, targeted, masks)
        return restore_form([self.bound(p) for p in perturbed], was_tuple)

    def _step(
        self,
        inputs: tuple[Tensor, ...],
        epsilon: float | Tensor,
        target: Any,
        additional_forward_args: Any,
        targeted: bool,
        masks: tuple[Tensor | float, ...],
    ) -> tuple[Tensor, ...]:
        """One unbounded step on validated inputs (PGD calls this once per iteration)."""
        grads = loss_gradients(
            self.forward_func, self.loss_func, inputs, target, additional_forward_args
        )
        return tuple(
            sign_step(x, g, epsilon, targeted, m, self.zero_thresh)
            for x, g, m in zip(inputs, grads, masks)
        )
