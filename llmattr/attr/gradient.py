"""Plain gradient methods: Saliency and InputXGradient."""

from __future__ import annotations

from typing import Any

from .._core.base import GradientAttribution
from .._core.call import Call
from .._core.forward import gradients
from .._core.inputs import TensorOrTuple
from .._core.targets import TargetType

__all__ = ["InputXGradient", "Saliency"]


class Saliency(GradientAttribution):
    """The gradient of the target with respect to each input element (Simonyan et al., 2013).

    Args:
        forward_func: the model or forward function.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        abs: bool = True,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        """Gradients (their absolute values when ``abs``), shaped like ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            target: which output to explain (see :mod:`llmattr._core.targets`).
            abs: return ``|gradient|`` (the default) or the signed gradient.
            additional_forward_args: extra arguments passed to the forward after the inputs.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method="Saliency")
        grads, _ = gradients(self.forward_func, call.inputs, call.target, call.args)
        return call.result([g.abs() if abs else g for g in grads])


class InputXGradient(GradientAttribution):
    """The input times the gradient of the target with respect to it.

    Args:
        forward_func: the model or forward function.
    """

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        """``inputs * d target / d inputs``, shaped like ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` tensor or a tuple of them.
            target: which output to explain.
            additional_forward_args: extra arguments passed to the forward after the inputs.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method="InputXGradient")
        grads, _ = gradients(self.forward_func, call.inputs, call.target, call.args)
        return call.result([x * g for x, g in zip(call.inputs, grads)])
