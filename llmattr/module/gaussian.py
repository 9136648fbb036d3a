"""Stochastic gates with a Gaussian distribution (Yamada et al., 2020,
https://arxiv.org/abs/1810.04247); Captum's ``GaussianStochasticGates``.

A gate is ``clamp(mu + std * n, 0, 1)`` with ``n ~ N(0, 1)`` and a fixed ``std``; it is open
with probability ``P(z > 0) = Phi(mu / std)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .gates_base import StochasticGatesBase

__all__ = ["GaussianStochasticGates"]


class GaussianStochasticGates(StochasticGatesBase):
    """Stochastic gates whose distribution is a rectified Gaussian of fixed ``std``.

    The learnable parameter is ``mu`` ``(n_gates,)`` (Captum's name; initialized from
    ``N(0.5, 0.01^2)``). In training mode each example draws its own gates; in eval mode the
    gates are ``clamp(mu, 0, 1)``.

    Args:
        n_gates: the number of gates.
        mask: gate index of each input element (see :class:`StochasticGatesBase`).
        reg_weight: factor of the regularization term.
        std: the noise's standard deviation, positive, fixed.
        reg_reduction: ``"sum"``, ``"mean"`` or ``"none"``.

    Example::

        >>> gates = GaussianStochasticGates(5, reg_weight=0.01)
        >>> gated, reg = gates(torch.randn(3, 5))   # (3, 5) and a scalar

    Raises:
        InputError: ``std <= 0``, or what :class:`StochasticGatesBase` rejects.
    """

    def __init__(
        self,
        n_gates: int,
        mask: Tensor | None = None,
        reg_weight: float = 1.0,
        std: float = 0.5,
        reg_reduction: str = "sum",
    ) -> None:
        super().__init__(n_gates, mask=mask, reg_weight=reg_weight, reg_reduction=reg_reduction)
        if not std > 0:
            raise InputError(f"std must be positive, got {std}.")
        self.std = std
        self.mu = nn.Parameter(torch.empty(n_gates).normal_(0.5, 0.01))

    def _sample_gate_values(self, batch_size: int) -> Tensor:
        mu = self.mu
        if not self.training:
            return mu.expand(batch_size, self.n_gates)
        noise = torch.empty(batch_size, self.n_gates, dtype=mu.dtype, device=mu.device)
        return mu + noise.normal_(0.0, self.std)

    def _get_gate_values(self) -> Tensor:
        return self.mu

    def _get_gate_active_probs(self) -> Tensor:
        # the normal CDF at mu / std
        return 0.5 * (1 + torch.erf(self.mu / self.std / math.sqrt(2)))

    @classmethod
    def _from_pretrained(cls, mu: Tensor, *args: Any, **kwargs: Any) -> GaussianStochasticGates:
        """Gates with the given ``mu`` ``(n_gates,)`` (copied); further arguments as in the
        constructor, after ``n_gates`` (taken from the tensor)."""
        if not isinstance(mu, Tensor) or mu.dim() != 1:
            raise InputError("mu must be a 1-D tensor of shape (n_gates,).")
        gates = cls(mu.numel(), *args, **kwargs)
        gates.load_state_dict({"mu": mu}, strict=False)
        return gates
