"""Layer-wise relevance propagation (Bach et al., 2015) with per-layer rules.

Relevance is propagated in *gradient form*: what flows backward is ``g`` with relevance
``R = activation * g``. A rule replaces a layer's output ``y`` by a tensor with the same value whose
gradient is ``Σ_k c_k J_{z_k}^T (g * y / stab(z_k))`` for modified pre-activations ``z_k`` of the
layer (the epsilon, gamma and alpha-beta rules differ only in the ``z_k`` and ``c_k``). The input's
relevance is then ``x * g`` and, with bias-free layers, sums to the explained output.
Element-wise activations pass relevance unchanged (the identity rule); operations outside modules
(additions, reshapes) split it in proportion to their inputs, the z-rule for linear operations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._core.base import GradientAttribution
from .._core.call import Call
from .._core.forward import gradients
from .._core.hooks import replace_outputs
from .._core.inputs import TensorOrTuple, format_inputs, per_example_sum
from .._core.targets import TargetType
from .deeplift import RESCALE

__all__ = [
    "LRP",
    "Alpha1_Beta0_Rule",
    "AlphaBetaRule",
    "EpsilonRule",
    "GammaRule",
    "IdentityRule",
    "PropagationRule",
]


def _stabilize(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _route_through(y: Tensor, terms: list[tuple[float, Tensor]], eps: float) -> Tensor:
    """``y``'s value; gradient ``Σ c_k J_{z_k}^T (g * y / stab(z_k))``."""
    out = y.detach()
    for coef, z in terms:
        scale = (y / _stabilize(z, eps)).detach()
        scaled = z * scale
        out = out + coef * (scaled - scaled.detach())
    return out


class PropagationRule:
    """A relevance rule for one layer; subclasses say how relevance flows through it."""

    def apply(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Return ``y``'s value with the rule's backward."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class EpsilonRule(PropagationRule):
    """LRP-ε: ``R_i = x_i Σ_j w_ji R_j / (z_j + ε sign(z_j))``.

    Args:
        epsilon: stabilizer; larger values absorb weak or contradictory relevance.
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.epsilon = epsilon

    def apply(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return _route_through(y, [(1.0, y)], self.epsilon)


def _modified_call(
    module: nn.Module, x: Tensor, weight_fn: Any, zero_bias: bool, bias_fn: Any = None
) -> Tensor:
    params = {}
    for name, p in module.named_parameters(recurse=False):
        if name == "bias":
            params[name] = torch.zeros_like(p) if zero_bias else (bias_fn or weight_fn)(p)
        else:
            params[name] = weight_fn(p)
    return functional_call(module, params, (x,))


class GammaRule(PropagationRule):
    """LRP-γ: positive weights are amplified, ``w + γ w⁺``, favouring positive contributions.

    As in Captum, the bias enters the modified pre-activation unchanged
    (``z = (W + γ W⁺) x + b``), or not at all with ``set_bias_to_zero``.

    Args:
        gamma: amplification of the positive weights.
        set_bias_to_zero: ignore the bias in the modified pre-activation.
    """

    def __init__(self, gamma: float = 0.25, set_bias_to_zero: bool = False) -> None:
        self.gamma = gamma
        self.set_bias_to_zero = set_bias_to_zero

    def apply(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        z = _modified_call(
            module,
            x,
            lambda w: w + self.gamma * w.clamp(min=0),
            self.set_bias_to_zero,
            lambda b: b,
        )
        return _route_through(y, [(1.0, z)], 1e-9)


class AlphaBetaRule(PropagationRule):
    """LRP-αβ: positive and negative contributions are propagated separately,
    ``R_i = α R_i⁺ - β R_i⁻`` with ``α - β = 1`` for conservation.

    Args:
        alpha: weight of the positive contributions.
        beta: weight of the negative contributions.
        set_bias_to_zero: ignore the bias in the modified pre-activations.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, set_bias_to_zero: bool = False):
        if abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(
                f"AlphaBetaRule needs alpha - beta = 1, got alpha={alpha}, beta={beta}."
            )
        self.alpha = alpha
        self.beta = beta
        self.set_bias_to_zero = set_bias_to_zero

    def apply(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        xp, xn = x.clamp(min=0), x.clamp(max=0)

        def part(positive: bool) -> Tensor:
            keep = (lambda w: w.clamp(min=0)) if positive else (lambda w: w.clamp(max=0))
            drop = (lambda w: w.clamp(max=0)) if positive else (lambda w: w.clamp(min=0))
            bias_free = self.set_bias_to_zero
            # z⁺ = W⁺x⁺ + W⁻x⁻ (+ b⁺): every product that is positive
            return _modified_call(module, xp, keep, bias_free, keep) + _modified_call(
                module, xn, drop, True
            )

        terms = [(self.alpha, part(True))]
        if self.beta:
            terms.append((-self.beta, part(False)))
        return _route_through(y, terms, 1e-9)


class Alpha1_Beta0_Rule(AlphaBetaRule):
    """LRP-α1β0: only positive contributions ``(x_i w_ji)⁺`` are propagated.

    Captum's rule clamps the weights only (``W⁺ x + b``), which is the same on non-negative inputs
    without bias (after a ReLU, ``set_bias_to_zero=True``); on inputs of either sign it lets
    negative contributions through, ours does not. With a bias, ours keeps its positive part.

    Args:
        set_bias_to_zero: ignore the bias in the modified pre-activation.
    """

    def __init__(self, set_bias_to_zero: bool = False) -> None:
        super().__init__(1.0, 0.0, set_bias_to_zero)


class IdentityRule(PropagationRule):
    """Relevance passes unchanged, element by element (``R_in = R_out``); input and output must
    have the same shape. The default for element-wise activations."""

    def apply(self, module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(
                f"IdentityRule on {type(module).__name__} needs equal input and output shapes, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}."
            )
        scale = (y / _stabilize(x, 1e-9)).detach()
        return y.detach() + (x * scale - (x * scale).detach())


_EPSILON_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.MaxPool1d,
    nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
# Relevance is preserved by their ordinary gradient: nothing to change.
_PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.Flatten, nn.Unflatten,
)  # fmt: skip
_SOFTMAX = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
# Containers in name only: their forward computes non-linearly with their children's parameters
# without calling the children, so no child rule ever applies. Refused like a leaf without a rule.
_OPAQUE: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


def default_rule(module: nn.Module) -> PropagationRule | None:
    """The rule LRP uses for ``module`` when none is set; None when no change is needed."""
    if isinstance(module, _EPSILON_LAYERS):
        return EpsilonRule()
    if isinstance(module, RESCALE) and not isinstance(module, _SOFTMAX):
        return IdentityRule()
    return None


@contextmanager
def _both(
    first: AbstractContextManager[None], second: AbstractContextManager[None]
) -> Iterator[None]:
    with first, second:
        yield


class LRP(GradientAttribution):
    """Layer-wise relevance propagation.

    Rules are chosen per layer: a ``rule`` attribute set on a module (Captum's way, e.g.
    ``model.fc1.rule = GammaRule()``), else an entry of ``rules`` (keyed by module or by module
    type), else the default — :class:`EpsilonRule` for linear, convolution, batch-norm and pooling
    layers and :class:`IdentityRule` for element-wise activations. Any other leaf module without a
    rule is refused before any work, and so is ``nn.MultiheadAttention`` (its forward does not call
    its children, so their rules would never apply). The model is not modified.

    Args:
        model: the network (an ``nn.Module``); its non-linearities must be modules.
        rules: optional ``{module or module type: PropagationRule}``.
    """

    def __init__(
        self,
        model: nn.Module,
        rules: Mapping[nn.Module | type[nn.Module], PropagationRule] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"LRP needs an nn.Module, got {type(model).__name__}.")
        super().__init__(model)
        self.model = model
        self.rules = dict(rules or {})
        # a rule that is not a PropagationRule is refused now, as Captum does at construction
        given = [(f"rules[{key!r}]", rule) for key, rule in self.rules.items()]
        given += [
            (f"module '{n}'.rule", getattr(m, "rule", None)) for n, m in model.named_modules()
        ]
        for where, rule in given:
            if rule is not None and not isinstance(rule, PropagationRule):
                raise TypeError(
                    f"{where} must be a PropagationRule (e.g. EpsilonRule()), got {rule!r}."
                )

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def rule_for(self, name: str, module: nn.Module) -> PropagationRule | None:
        """The rule applied to ``module`` (None: its ordinary gradient is kept)."""
        rule = getattr(module, "rule", None)
        if rule is None:
            rule = self.rules.get(module)
        if rule is None:
            rule = next(
                (r for t, r in self.rules.items() if isinstance(t, type) and isinstance(module, t)),
                None,
            )
        if rule is None:
            rule = default_rule(module)
        opaque = isinstance(module, _OPAQUE) or not list(module.children())
        if rule is None and not isinstance(module, _PASS_THROUGH) and opaque:
            raise TypeError(
                f"LRP has no rule for {type(module).__name__} (module '{name}') and no default "
                "exists for this type. Set one that fits the layer, e.g. "
                f"LRP(model, rules={{{type(module).__name__}: EpsilonRule()}}) or "
                "module.rule = EpsilonRule()."
            )
        if rule is not None and not isinstance(rule, PropagationRule):
            raise TypeError(
                f"The rule for module '{name}' must be a PropagationRule, got {rule!r}."
            )
        return rule

    def rules_applied(self, verbose: bool = False) -> AbstractContextManager[None]:
        """A ``with`` block inside which the model's backward follows the LRP rules."""
        # a layer whose rule reads its input (all but the identity rule) must run once per
        # forward, as in Captum (RuntimeError); element-wise activations may be reused
        once: dict[nn.Module, Any] = {}
        reusable: dict[nn.Module, Any] = {}
        for name, module in self.model.named_modules():
            rule = self.rule_for(name, module)
            if verbose:
                print(f"{name or '<model>'} ({type(module).__name__}): {rule}")
            if rule is not None:
                (reusable if isinstance(rule, IdentityRule) else once)[module] = rule.apply
        return _both(replace_outputs(once, single_use="LRP"), replace_outputs(reusable))

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        verbose: bool = False,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """Relevance of every input element.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            target: which output to explain; its value is the relevance distributed.
            additional_forward_args: extra forward arguments.
            return_convergence_delta: also return ``output - sum(relevance)`` per example
                (Captum's sign).
            verbose: print the rule used for every layer.

        Returns:
            Relevance shaped like ``inputs``, and with ``return_convergence_delta`` a delta of
            shape ``(batch,)``.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method="LRP")
        with self.rules_applied(verbose):
            grads, out = gradients(self.model, call.inputs, call.target, call.args)
        relevance = tuple(x * g for x, g in zip(call.inputs, grads))
        result = call.result(relevance)
        if not return_convergence_delta:
            return result
        return result, self.compute_convergence_delta(relevance, out)

    def compute_convergence_delta(  # type: ignore[override]
        self, attributions: TensorOrTuple, output: Tensor
    ) -> Tensor:
        """``output - sum(attributions)`` per example, as in Captum; ``output`` has shape
        ``(batch,)`` (or any shape with one value per example)."""
        attrs, _ = format_inputs(attributions, "attributions")
        total = per_example_sum(attrs)
        return output.reshape(total.shape).to(total.dtype) - total
