"""Stochastic gates (Captum's ``captum.module``) and a prompt mask learned with them.

``BinaryConcreteStochasticGates`` and ``GaussianStochasticGates`` gate an input with learnable
stochastic gates and return the gated input and a differentiable L0 penalty (the expected number
of open gates); :func:`learn_prompt_mask` uses them to find the prompt features a language
model's answer needs.
"""

from .binary_concrete import BinaryConcreteStochasticGates
from .gates_base import StochasticGatesBase
from .gaussian import GaussianStochasticGates
from .prompt_mask import PromptMaskResult, learn_prompt_mask

__all__ = [
    "BinaryConcreteStochasticGates",
    "GaussianStochasticGates",
    "PromptMaskResult",
    "StochasticGatesBase",
    "learn_prompt_mask",
]
