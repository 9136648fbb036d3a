"""Stochastic gates with a stretched binary concrete distribution (Louizos et al., 2018,
https://arxiv.org/abs/1712.01312); Captum's ``BinaryConcreteStochasticGates``.

A binary concrete sample ``s = sigmoid((logit(u) + log_alpha) / temperature)``, ``u ~ U(0, 1)``,
lies strictly inside ``(0, 1)``; stretching it to ``(lower_bound, upper_bound)`` (with
``lower_bound < 0 < 1 < upper_bound``) and rectifying it to ``[0, 1]`` gives exact zeros and ones
with positive probability. The probability that a gate is open has the closed form
``P(z > 0) = sigmoid(log_alpha - temperature * log(-lower_bound / upper_bound))``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .gates_base import StochasticGatesBase

__all__ = ["BinaryConcreteStochasticGates"]


class BinaryConcreteStochasticGates(StochasticGatesBase):
    """Stochastic gates whose distribution is a stretched, rectified binary concrete.

    The learnable parameter is ``log_alpha_param`` ``(n_gates,)`` (Captum's name; initialized
    from ``N(0, 0.01^2)``). In training mode each example draws its own gates; in eval mode the
    gates are deterministic, ``clamp(sigmoid(log_alpha) * (upper - lower) + lower, 0, 1)``.

    Args:
        n_gates: the number of gates.
        mask: gate index of each input element (see :class:`StochasticGatesBase`).
        reg_weight: factor of the regularization term.
        temperature: the concrete distribution's temperature, in ``(0, 1)``; smaller is closer to
            a Bernoulli.
        lower_bound: the stretch's lower end, below 0.
        upper_bound: the stretch's upper end, above 1.
        eps: the uniform noise is drawn from ``[eps, 1 - eps]``, keeping ``logit(u)`` finite.
        reg_reduction: ``"sum"``, ``"mean"`` or ``"none"``.

    Example::

        >>> gates = BinaryConcreteStochasticGates(5, reg_weight=0.01)
        >>> gated, reg = gates(torch.randn(3, 5))   # (3, 5) and a scalar

    Raises:
        InputError: a temperature outside ``(0, 1)``, ``lower_bound >= 0``, ``upper_bound <= 1``,
            or what :class:`StochasticGatesBase` rejects.
    """

    def __init__(
        self,
        n_gates: int,
        mask: Tensor | None = None,
        reg_weight: float = 1.0,
        temperature: float = 2 / 3,
        lower_bound: float = -0.1,
        upper_bound: float = 1.1,
        eps: float = 1e-8,
        reg_reduction: str = "sum",
    ) -> None:
        super().__init__(n_gates, mask=mask, reg_weight=reg_weight, reg_reduction=reg_reduction)
        if not 0 < temperature < 1:
            raise InputError(f"temperature must be in (0, 1), got {temperature}.")
        if not lower_bound < 0:
            raise InputError(f"lower_bound must be below 0, got {lower_bound}.")
        if not upper_bound > 1:
            raise InputError(f"upper_bound must be above 1, got {upper_bound}.")
        if not 0 <= eps < 0.5:
            raise InputError(f"eps must be in [0, 0.5), got {eps}.")
        self.temperature = temperature
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.eps = eps
        self.log_alpha_param = nn.Parameter(torch.empty(n_gates).normal_(0.0, 0.01))
        # P(z > 0) = sigmoid(log_alpha - offset): the stretched sample crosses 0 where
        # s = -lower / (upper - lower), i.e. logit(s) = log(-lower / upper)
        self.active_prob_offset = temperature * math.log(-lower_bound / upper_bound)

    def _stretch(self, s: Tensor) -> Tensor:
        return s * (self.upper_bound - self.lower_bound) + self.lower_bound

    def _sample_gate_values(self, batch_size: int) -> Tensor:
        log_alpha = self.log_alpha_param
        if not self.training:
            return self._stretch(torch.sigmoid(log_alpha)).expand(batch_size, self.n_gates)
        # the noise in the parameter's dtype (Captum draws it in float32 whatever the dtype)
        u = torch.empty(batch_size, self.n_gates, dtype=log_alpha.dtype, device=log_alpha.device)
        u.uniform_(self.eps, 1 - self.eps)
        return self._stretch(torch.sigmoid((torch.logit(u) + log_alpha) / self.temperature))

    def _get_gate_values(self) -> Tensor:
        return self._stretch(torch.sigmoid(self.log_alpha_param))

    def _get_gate_active_probs(self) -> Tensor:
        return torch.sigmoid(self.log_alpha_param - self.active_prob_offset)

    @classmethod
    def _from_pretrained(
        cls, log_alpha_param: Tensor, *args: Any, **kwargs: Any
    ) -> BinaryConcreteStochasticGates:
        """Gates with the given ``log_alpha_param`` ``(n_gates,)`` (copied); further arguments
        as in the constructor, after ``n_gates`` (taken from the tensor)."""
        if not isinstance(log_alpha_param, Tensor) or log_alpha_param.dim() != 1:
            raise InputError("log_alpha_param must be a 1-D tensor of shape (n_gates,).")
        gates = cls(log_alpha_param.numel(), *args, **kwargs)
        gates.load_state_dict({"log_alpha_param": log_alpha_param}, strict=False)
        return gates
