"""Stochastic gates: a differentiable stand-in for the L0 norm (Captum's ``StochasticGatesBase``).

A gate is a random variable on ``[0, 1]`` that is exactly 0 with positive probability: a
continuous distribution (binary concrete, Gaussian) with learnable parameters, rectified by the
hard sigmoid ``min(1, max(0, s))``. The expected number of open gates, ``sum_i P(z_i > 0)``, is
then a smooth function of the parameters, so a sparsity penalty (an expected L0 norm) is trained
by ordinary gradient descent, with gate samples reparameterized as ``s = f(params, noise)``.

:class:`StochasticGatesBase` holds what every distribution shares: the mask that lets several
input elements share one gate, the rectification and gating of the input, and the reduction of
the regularization. A subclass says how to sample raw gate values, what their means are, and
what the probability of a gate being open is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError

__all__ = ["StochasticGatesBase"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_mask(mask: Tensor, n_gates: int) -> Tensor:
    """The mask as a detached ``long`` copy, after checking it holds every gate index once or
    more and nothing else."""
    if not isinstance(mask, Tensor):
        raise InputTypeError(f"mask must be a tensor of gate indices, got {type(mask).__name__}.")
    if mask.dtype.is_floating_point or mask.dtype.is_complex or mask.dtype == torch.bool:
        raise InputTypeError(
            f"mask must hold integer gate indices (e.g. torch.long), got {mask.dtype}; "
            "convert it with mask.long()."
        )
    if mask.numel() == 0:
        raise InputError("mask is empty; give one gate index per input element (broadcastable).")
    low, high = int(mask.min()), int(mask.max())
    if low < 0:
        raise InputError(f"mask holds a negative gate index ({low}); indices are 0..n_gates - 1.")
    if high != n_gates - 1:
        # as in Captum: every gate must be used by some element, so the largest index is n_gates-1
        raise InputError(
            f"The largest mask index is {high}, but with n_gates={n_gates} it must be "
            f"{n_gates - 1} (indices 0..n_gates - 1, each gate used by some element). Pass "
            f"n_gates=int(mask.max()) + 1."
        )
    return mask.detach().clone().long()


class StochasticGatesBase(nn.Module, ABC):
    """Gates an input with stochastic gates and returns the gated input and an L0 penalty.

    Args:
        n_gates: the number of gates.
        mask: optional integer tensor, broadcastable to the input (e.g. without the batch
            dimension, ``(*input.shape[1:])``, or with a batch dimension of 1), giving each input
            element the index of its gate, in ``0..n_gates - 1``; elements with the same index
            share a gate. Without it, every element of one example (all but dimension 0) has its
            own gate, so ``input[0].numel()`` must equal ``n_gates``.
        reg_weight: factor of the regularization term.
        reg_reduction: ``"sum"`` (default) of the gates' open probabilities, ``"mean"`` over
            gates, or ``"none"``: the ``(n_gates,)`` probabilities themselves.

    Raises:
        InputError: ``n_gates`` not a positive int, a mask whose largest index is not
            ``n_gates - 1`` or that holds negative indices, an unknown ``reg_reduction``.
        InputTypeError: a mask that is not an integer tensor.
    """

    mask: Tensor | None

    def __init__(
        self,
        n_gates: int,
        mask: Tensor | None = None,
        reg_weight: float = 1.0,
        reg_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if isinstance(n_gates, bool) or not isinstance(n_gates, int) or n_gates < 1:
            raise InputError(f"n_gates must be a positive int, got {n_gates!r}.")
        if reg_reduction not in _REDUCTIONS:
            raise InputError(
                f"reg_reduction must be one of {list(_REDUCTIONS)}, got {reg_reduction!r}."
            )
        self.n_gates = n_gates
        self.reg_weight = reg_weight
        self.reg_reduction = reg_reduction
        # a buffer, named as in Captum, so state dicts move between the two libraries
        self.register_buffer("mask", None if mask is None else _check_mask(mask, n_gates))

    # ---- the distribution (subclasses) -----------------------------------------------------

    @abstractmethod
    def _sample_gate_values(self, batch_size: int) -> Tensor:
        """Raw (unrectified) gate values ``(batch_size, n_gates)``: samples in training mode,
        the distribution means in eval mode."""

    @abstractmethod
    def _get_gate_values(self) -> Tensor:
        """The distributions' means ``(n_gates,)``, unrectified, with autograd history."""

    @abstractmethod
    def _get_gate_active_probs(self) -> Tensor:
        """``P(gate > 0)`` for each gate, ``(n_gates,)``, with autograd history."""

    # ---- shared logic ----------------------------------------------------------------------

    def _check_input(self, input_tensor: Tensor) -> None:
        if not isinstance(input_tensor, Tensor):
            raise InputTypeError(
                f"The gated input must be a tensor, got {type(input_tensor).__name__}."
            )
        if input_tensor.dim() < 2:
            raise InputError(
                "The gated input needs a batch dimension first and at least one more dimension; "
                f"got shape {tuple(input_tensor.shape)} (use input.unsqueeze(0) for one example)."
            )
        if self.mask is None:
            n = input_tensor[0].numel()
            if n != self.n_gates:
                raise InputError(
                    f"Without a mask every element of an example has its own gate, so each "
                    f"example must have n_gates={self.n_gates} elements; got {n} (input shape "
                    f"{tuple(input_tensor.shape)}). Pass a mask to share gates."
                )
            return
        shape, mask_shape = tuple(input_tensor.shape), tuple(self.mask.shape)
        fits = len(mask_shape) <= len(shape) and all(
            m in (1, s) for m, s in zip(mask_shape[::-1], shape[::-1])
        )
        if not fits:
            raise InputError(
                f"The mask of shape {mask_shape} does not broadcast to the input of shape "
                f"{shape}; each mask dimension must equal the input's (aligned from the last) "
                "or be 1."
            )

    def forward(self, input_tensor: Tensor) -> tuple[Tensor, Tensor]:
        """Gate ``input_tensor`` and compute the regularization.

        Args:
            input_tensor: ``(batch, *shape)``; one set of gates is sampled per example.

        Returns:
            ``(gated_input, reg)``: ``gated_input`` has the input's shape, each element times its
            gate (rectified to ``[0, 1]``); ``reg`` is ``reg_weight`` times the open
            probabilities reduced by ``reg_reduction`` (a scalar, or ``(n_gates,)`` for
            ``"none"``), to be added to the loss being minimized.
        """
        self._check_input(input_tensor)
        batch = input_tensor.shape[0]
        gates = self._sample_gate_values(batch).clamp(0, 1)  # (batch, n_gates)
        if self.mask is not None:
            index = self.mask.expand_as(input_tensor).reshape(batch, -1)
            gates = torch.gather(gates, 1, index)
        gated = input_tensor * gates.reshape(input_tensor.shape)
        probs = self._get_gate_active_probs()
        if self.reg_reduction == "sum":
            reg = probs.sum()
        elif self.reg_reduction == "mean":
            reg = probs.mean()
        else:
            reg = probs
        return gated, reg * self.reg_weight

    def get_gate_values(self, clamp: bool = True) -> Tensor:
        """The gates' means ``(n_gates,)``, detached; clamped to ``[0, 1]`` unless ``clamp`` is
        False (the raw means rank gates that are all beyond 0 or 1)."""
        values = self._get_gate_values()
        if clamp:
            values = values.clamp(0, 1)
        return values.detach()

    def get_gate_active_probs(self) -> Tensor:
        """``P(gate > 0)`` for each gate, ``(n_gates,)``, detached."""
        return self._get_gate_active_probs().detach()
