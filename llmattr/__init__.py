"""llmattr: explain what models do — Captum's API, provably right answers, faster.

The public API is flat: ``from llmattr import IntegratedGradients`` works like
``from captum.attr import IntegratedGradients``.
"""

from .attr import *  # noqa: F403
from .attr import __all__ as _attr_all

__version__ = "0.1.0"
__all__ = [*_attr_all, "__version__"]
