"""Guided backpropagation and deconvolution: ReLU backward passes that keep positive signal."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .._core.base import GradientAttribution
from .._core.call import Call
from .._core.forward import gradients
from .._core.hooks import OutputRule, replace_outputs, route_gradient
from .._core.inputs import TensorOrTuple
from .._core.targets import TargetType

__all__ = ["Deconvolution", "GuidedBackprop"]


def _guided(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    # the ReLU's own gradient (x > 0), then only the positive part passes
    return route_gradient(x, y, lambda x, y, g: F.relu(g * (x > 0)))


def _deconv(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    # the gradient arriving at the ReLU, rectified; the forward sign of x is ignored
    return route_gradient(x, y, lambda x, y, g: F.relu(g))


class _ReLUBackpropRule(GradientAttribution):
    _rule: Any

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}."
            )
        super().__init__(model)
        self.model = model

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        """Modified gradients, shaped like ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        with self.rules_applied():
            grads, _ = gradients(self.model, call.inputs, call.target, call.args)
        return call.result(grads)

    def rules_applied(self) -> AbstractContextManager[None]:
        """A ``with`` block inside which the model's ReLU modules follow the rule."""
        rules: dict[nn.Module, OutputRule] = {
            m: type(self)._rule for m in self.model.modules() if isinstance(m, nn.ReLU)
        }
        return replace_outputs(rules)


class GuidedBackprop(_ReLUBackpropRule):
    """Guided backpropagation (Springenberg et al., 2014).

    At every ``nn.ReLU`` module the backward pass keeps only positive gradients where the forward
    input was positive. ReLUs applied functionally (``F.relu``) keep their ordinary gradient, so
    define them as modules. A ReLU module may be reused within the forward.

    Args:
        model: the network (an ``nn.Module``).
    """

    _rule = staticmethod(_guided)


class Deconvolution(_ReLUBackpropRule):
    """Deconvolution (Zeiler and Fergus, 2014).

    At every ``nn.ReLU`` module the backward pass rectifies the incoming gradient, whatever the
    sign of the forward input. Functional ReLUs keep their ordinary gradient.

    Args:
        model: the network (an ``nn.Module``).
    """

    _rule = staticmethod(_deconv)
