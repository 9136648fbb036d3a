"""DeepLift with the rescale rule (Shrikumar et al., 2017) and DeepLiftShap.

Inputs and baselines run through the model as one batch ``[inputs; baselines]``. Every supported
non-linearity's output is replaced (see :func:`~llmattr._core.hooks.replace_outputs`) by one whose
backward multiplies the incoming gradient by the layer's multiplier ``Δy / Δx`` instead of its
local derivative; linear layers keep their ordinary gradient. The gradient reaching the inputs is
then DeepLift's multiplier ``m``, and ``(x - x') * m`` sums exactly to ``f(x) - f(x')``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.base import GradientAttribution
from .._core.call import Call
from .._core.errors import InputError
from .._core.forward import gradients
from .._core.hooks import replace_outputs, route_gradient
from .._core.inputs import (
    BaselineType,
    TensorOrTuple,
    as_tuple,
    expand_args,
    format_baseline_distribution,
    format_baselines,
    per_example_sum,
)
from .._core.targets import Target, TargetType

__all__ = ["DeepLift", "DeepLiftShap", "deeplift_multipliers"]

# Shape-preserving non-linearities: the rescale rule ``Δy / Δx`` applies elementwise. For the
# softmax family this is still exact for completeness: Σ_i g_i Δy_i / Δx_i · Δx_i = Σ_i g_i Δy_i.
RESCALE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.LogSigmoid,
    nn.Threshold, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d,
)  # fmt: skip
MAXPOOL: dict[type[nn.Module], Callable[..., Any]] = {
    nn.MaxPool1d: F.max_pool1d,
    nn.MaxPool2d: F.max_pool2d,
    nn.MaxPool3d: F.max_pool3d,
}
# Non-linear modules DeepLift has no rule for: their ordinary gradient would silently break
# completeness, so they are refused.
UNSUPPORTED: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d,
        nn.LPPool2d, getattr(nn, "LPPool3d", None), nn.FractionalMaxPool2d,
        nn.FractionalMaxPool3d, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None),
        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
        nn.MultiheadAttention, nn.GLU, nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell,
        nn.GRUCell, nn.Bilinear, nn.CosineSimilarity, nn.PairwiseDistance,
    )
    if t is not None
)  # fmt: skip
GradFn = Callable[[tuple[Tensor, ...], Target, tuple[Any, ...]], tuple[tuple[Tensor, ...], Tensor]]
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _halves(t: Tensor) -> tuple[Tensor, Tensor]:
    n = t.shape[0] // 2
    return t[:n], t[n:]


def _local_vjp(module: nn.Module, x: Tensor, g: Tensor) -> Tensor:
    """The module's ordinary vector-Jacobian product at ``x`` (bypassing hooks)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(module.forward(leaf.clone()), leaf, g)
    return grad


def _rescale_rule(eps: float) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    def rule(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        def backward(x: Tensor, y: Tensor, g: Tensor) -> Tensor:
            (xi, xb), (yi, yb) = _halves(x), _halves(y)
            dx, dy = xi - xb, yi - yb
            small = dx.abs() < eps
            ratio = dy / torch.where(small, torch.ones_like(dx), dx)
            grad = g * torch.cat([ratio, ratio])
            if bool(small.any()):
                both = torch.cat([small, small])
                grad = torch.where(both, _local_vjp(module, x, g), grad)
            return grad

        return route_gradient(x, y, backward)

    return rule


def _maxpool_rule(
    eps: float, pool: Callable[..., Any]
) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """Rescale rule for max pooling.

    Each output's change ``Δy = y - y'`` is credited to one input position: the arg-max of the
    input's window when ``y >= y'``, else the arg-max of the baseline's window. That position's
    ``Δx`` is then non-zero whenever ``Δy`` is (``Δx >= Δy > 0`` or ``Δx <= Δy < 0``), so the
    multipliers ``(Σ g Δy) / Δx`` satisfy completeness exactly, overlapping windows included.
    """

    def rule(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        kwargs = dict(
            kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
            dilation=module.dilation, ceil_mode=module.ceil_mode, return_indices=True,
        )  # fmt: skip

        def backward(x: Tensor, y: Tensor, g: Tensor) -> Tensor:
            (xi, xb), (yi, yb), (gi, gb) = _halves(x), _halves(y), _halves(g)
            _, idx_i = pool(xi, **kwargs)
            _, idx_b = pool(xb, **kwargs)
            route = torch.where(yi >= yb, idx_i, idx_b)
            dy, dx = yi - yb, xi - xb

            def unpool(values: Tensor, idx: Tensor) -> Tensor:
                out = values.new_zeros(xi.shape).flatten(2)
                out.scatter_add_(2, idx.flatten(2), values.flatten(2))
                return out.view_as(xi)

            small = dx.abs() < eps
            safe = torch.where(small, torch.ones_like(dx), dx)
            mult_i = torch.where(small, unpool(gi, idx_i), unpool(gi * dy, route) / safe)
            mult_b = torch.where(small, unpool(gb, idx_b), unpool(gb * dy, route) / safe)
            return torch.cat([mult_i, mult_b])

        return route_gradient(x, y, backward)

    return rule


def _maxpool_function(module: nn.Module) -> Callable[..., Any] | None:
    # isinstance, not type(): a subclass of MaxPool2d pools the same way and needs the same rule
    return next((f for t, f in MAXPOOL.items() if isinstance(module, t)), None)


def deeplift_rules(model: nn.Module, eps: float, method: str) -> dict[nn.Module, Any]:
    """Choose the rule of every module of ``model``; refuse unsupported non-linearities."""
    rules: dict[nn.Module, Any] = {}
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED):
            raise TypeError(
                f"{method} has no rule for {type(module).__name__} (module '{name}'): its ordinary "
                "gradient would break the attributions' completeness. Supported non-linearities: "
                "elementwise activations (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, ...), "
                "Softmax and MaxPool1d/2d/3d. Use IntegratedGradients or GradientShap for this "
                "model."
            )
        if isinstance(module, _BATCHNORM) and module.training:
            raise RuntimeError(
                f"{method} needs batch statistics frozen, but {type(module).__name__} "
                f"(module '{name}') is in training mode: call model.eval() first."
            )
        if isinstance(module, RESCALE):
            rules[module] = _rescale_rule(eps)
        elif (pool := _maxpool_function(module)) is not None:
            if module.return_indices:
                raise TypeError(f"{method} does not support MaxPool with return_indices=True.")
            rules[module] = _maxpool_rule(eps, pool)
    return rules


def deeplift_multipliers(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    target: Target,
    args: tuple[Any, ...],
    eps: float = 1e-10,
    method: str = "DeepLift",
    grad_fn: GradFn | None = None,
) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    """DeepLift's multipliers for a batch of (input, baseline) pairs.

    Args:
        model: the network; its non-linearities must be modules (see the module docstring).
        inputs: per input, ``(batch, ...)``.
        baselines: per input, the same shape.
        target: normalized target for the batch.
        args: extra forward arguments for the batch.
        grad_fn: ``grad_fn(joint_inputs, target, args) -> (grads, outputs)`` when the multipliers
            are wanted elsewhere than at the inputs (a layer, or a neuron's function); the
            default differentiates ``model`` with respect to its inputs.

    Returns:
        ``(multipliers, f_inputs, f_baselines)``: per gradient tensor the multipliers of the
        inputs' half ``(batch, ...)``, and the selected outputs at the inputs and at the
        baselines, ``(batch,)`` each.
    """
    rules = deeplift_rules(model, eps, method)
    batch = inputs[0].shape[0]
    joint = tuple(torch.cat([x, b.expand_as(x)]) for x, b in zip(inputs, baselines))
    differentiate = grad_fn or partial(gradients, model)
    with replace_outputs(rules, single_use=method):
        grads, out = differentiate(
            joint, target.expand(2, "repeat"), expand_args(args, batch, 2, "repeat")
        )
    return tuple(g[:batch] for g in grads), out[:batch], out[batch:]


def _custom_attributions(
    func: Callable[..., Any],
    multipliers: tuple[Tensor, ...],
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
) -> tuple[Tensor, ...]:
    n_params = len(inspect.signature(func).parameters)
    call_args = (multipliers, inputs, baselines)[: max(1, min(n_params, 3))]
    out = as_tuple(func(*call_args))
    if len(out) != len(inputs):
        raise ValueError(
            f"custom_attribution_func returned {len(out)} tensors for {len(inputs)} inputs."
        )
    return tuple(out)


class DeepLift(GradientAttribution):
    """DeepLift with the rescale rule.

    Supported non-linearities are modules (not functional calls): ReLU, ELU, LeakyReLU, Sigmoid,
    Tanh, Softmax, MaxPool1d/2d/3d and the other elementwise activations of ``torch.nn``. Known
    non-linear modules without a rule (LayerNorm, MultiheadAttention, LSTM, ...) are refused, and
    so is a rule-carrying module that runs twice in one forward. Functional non-linearities inside
    custom modules keep their ordinary gradient, which breaks completeness: define them as modules.

    Args:
        model: the network (an ``nn.Module``).
        multiply_by_inputs: return ``(x - x') * m`` (global, default) or the multipliers ``m``.
        eps: below this ``|Δx|`` a non-linearity falls back to its ordinary gradient.
    """

    def __init__(
        self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{type(self).__name__} needs an nn.Module, got {type(model).__name__}."
            )
        super().__init__(model)
        self.model = model
        self.eps = eps
        self._multiply_by_inputs = multiply_by_inputs
        # what is differentiated (None: the model w.r.t. its inputs); neuron variants set it
        self._grad_fn: GradFn | None = None

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    def _finish(
        self,
        call: Call,
        multipliers: tuple[Tensor, ...],
        inputs: tuple[Tensor, ...],
        bases: tuple[Tensor, ...],
        custom_attribution_func: Callable[..., Any] | None,
    ) -> tuple[Tensor, ...]:
        if custom_attribution_func is not None:
            return _custom_attributions(custom_attribution_func, multipliers, inputs, bases)
        if self._multiply_by_inputs:
            return tuple((x - b) * m for x, b, m in zip(inputs, bases, multipliers))
        return multipliers

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """DeepLift attributions.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            baselines: references: None (zeros), a number, a tensor broadcastable to the input,
                or a tuple of those.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            return_convergence_delta: also return ``sum(attr) - (f(x) - f(x'))`` per example.
            custom_attribution_func: ``f(multipliers)``, ``f(multipliers, inputs)`` or
                ``f(multipliers, inputs, baselines)`` (tuples) returning the attributions.

        Returns:
            Attributions shaped like ``inputs``, and with ``return_convergence_delta`` a delta of
            shape ``(batch,)``.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        bases = format_baselines(baselines, call.inputs)
        mult, f_x, f_b = deeplift_multipliers(
            self.model, call.inputs, bases, call.target, call.args, self.eps, self.get_name(),
            self._grad_fn,
        )  # fmt: skip
        attrs = self._finish(call, mult, call.inputs, bases, custom_attribution_func)
        result = call.result(attrs)
        if not return_convergence_delta:
            return result
        return result, _gap(attrs, f_x, f_b)


def _gap(attrs: tuple[Tensor, ...], f_x: Tensor, f_b: Tensor) -> Tensor:
    return per_example_sum(attrs).to(f_x.dtype) - (f_x - f_b)


def shap_baselines(
    baselines: Any, inputs: tuple[Tensor, ...], passed: Any, method: str
) -> tuple[Tensor, ...]:
    """The baseline distribution of a DeepLift-SHAP method: as Captum, at least two baseline
    examples (one baseline, or a number, is plain DeepLift); one ``(n, ...)`` tensor per input."""
    dist = format_baseline_distribution(baselines, inputs, passed)
    if dist[0].shape[0] < 2:
        raise InputError(
            f"{method} averages over a distribution of baselines and got "
            f"{dist[0].shape[0]} baseline example: pass an (n_baselines, ...) tensor with "
            "n_baselines >= 2 per input (or a callable returning them), or use DeepLift / "
            "LayerDeepLift for a single baseline."
        )
    return dist


class DeepLiftShap(DeepLift):
    """DeepLift averaged over a distribution of baselines (an approximation of SHAP values).

    Every example is paired with every baseline of the distribution; the attributions are the
    mean over baselines of DeepLift's.

    Args:
        model: the network (an ``nn.Module``).
        multiply_by_inputs: see :class:`DeepLift`.
        eps: see :class:`DeepLift`.
    """

    _baseline_distribution = True

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: Any,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """DeepLiftShap attributions.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            baselines: the distribution: per input an ``(n_baselines, ...)`` tensor (a tuple for
                several inputs), or a callable returning it; a callable with parameters is called
                with ``inputs`` (as passed), one without parameters with nothing.
            target, additional_forward_args, return_convergence_delta, custom_attribution_func:
                as for :class:`DeepLift`.

        Returns:
            Attributions shaped like ``inputs``; the delta has shape ``(batch * n_baselines,)``,
            example-major (baseline ``j`` of example ``i`` at ``i * n_baselines + j``).
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        dist = shap_baselines(baselines, call.inputs, inputs, self.get_name())
        n_base, batch = dist[0].shape[0], call.batch
        xs = tuple(x.repeat_interleave(n_base, dim=0) for x in call.inputs)
        bs = tuple(b.repeat(batch, *([1] * (b.dim() - 1))) for b in dist)
        mult, f_x, f_b = deeplift_multipliers(
            self.model,
            xs,
            bs,
            call.target.expand(n_base, "interleave"),
            expand_args(call.args, batch, n_base, "interleave"),
            self.eps,
            self.get_name(),
            self._grad_fn,
        )
        rows = self._finish(call, mult, xs, bs, custom_attribution_func)
        attrs = tuple(r.reshape(batch, n_base, *r.shape[1:]).mean(1) for r in rows)
        result = call.result(attrs)
        if not return_convergence_delta:
            return result
        return result, _gap(rows, f_x, f_b)
