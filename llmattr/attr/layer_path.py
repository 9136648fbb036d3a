"""Layer attribution along the input-space path: gradients taken *at* the layer while the
inputs move from the baselines to the inputs (internal influence, conductance, GradientShap) or
at the (input, baseline) pair (DeepLift). All use the cut of :mod:`llmattr._core.layers`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._core.base import GradientAttribution
from .._core.batching import ChunkSize
from .._core.call import Call
from .._core.forward import accumulate_gradients
from .._core.inputs import (
    BaselineType,
    TensorOrTuple,
    expand_args,
    format_baseline_distribution,
    format_baselines,
    per_example_sum,
)
from .._core.layers import LayerCut
from .._core.perturbation import check_positive_int, make_generator
from .._core.targets import TargetType
from .deeplift import _custom_attributions, deeplift_multipliers, shap_baselines
from .gradient_shap import Draws, expected_gradients, noise_stdevs
from .integrated_gradients import StraightPath, step_rule
from .layer_base import LayerResult, _FixedLayer, _form, _Layer
from .layer_trapezoid import trapezoid_panels

__all__ = [
    "InternalInfluence",
    "LayerConductance",
    "LayerDeepLift",
    "LayerDeepLiftShap",
    "LayerGradientShap",
]


class InternalInfluence(_FixedLayer):
    """Internal influence (Leino et al., 2018): the gradient at the layer integrated along the
    straight path from the baselines to the inputs *in input space*.

    Args:
        forward_func: the model or forward function.
        layer: a module.
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    _layer_lists = False

    _multiplies = False  # a gradient, as in Captum

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: ChunkSize = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> LayerResult:
        """Integrated layer gradients, shaped like the layer's activation.

        Args:
            inputs: a ``(batch, ...)`` float tensor or tuple of them.
            baselines: input baselines.
            target, additional_forward_args, n_steps, method, internal_batch_size: as for
                :class:`~llmattr.IntegratedGradients`.
            attribute_to_layer_input: attribute to the layer's inputs.
            grad_kwargs: keyword arguments for ``torch.autograd.grad``.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        (cut,) = self._cuts(attribute_to_layer_input)
        alphas, weights = step_rule(method, n_steps)
        bases = format_baselines(baselines, call.inputs)
        path = StraightPath(call.batch, call.inputs, bases, alphas)

        def contribution(start: int, end: int, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(g * path.per_row(weights, start, end, g) for g in grads)

        totals = accumulate_gradients(
            self.forward_func, call, path.row_examples, path.points, contribution,
            internal_batch_size, grad_fn=_layer_grads(cut, grad_kwargs),
        )  # fmt: skip
        return _form([totals], False)


def _layer_grads(
    cut: LayerCut, grad_kwargs: dict[str, Any] | None
) -> Callable[..., tuple[Tensor, ...]]:
    def grad_fn(
        points: tuple[Tensor, ...], target: Any, args: tuple[Any, ...]
    ) -> tuple[Tensor, ...]:
        (grads,), _, _ = cut.gradients(points, target, args, grad_kwargs)
        return grads

    return grad_fn


class LayerConductance(_FixedLayer, GradientAttribution):
    """Conductance (Dhamdhere et al., 2018): each neuron's share of the integrated gradients.

    Along the straight input-space path the output's change is the sum over neurons of
    ``∫ ∂f/∂a_j · da_j``; conductance is neuron ``j``'s term, computed with the trapezoid rule on
    the path's partition (the method's nodes plus both ends). Summed over the layer it equals
    ``f(x) - f(baselines)`` when every path from the inputs to the output crosses the layer.
    Captum sums the left-point products over ``n_steps + 1`` points that stop short of the
    inputs: on a smooth path its error falls as ``1/n_steps`` where ours falls as
    ``1/n_steps²``. Where a ReLU switches along the path the integrand jumps and both rules are
    first order (the gap depends on where the jump falls in its panel, so at a given
    ``n_steps`` either may be the closer). A layer whose activation is a tuple gets a tuple of
    conductances, one per activation tensor.

    Args:
        forward_func: the model or forward function.
        layer: a module.
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    _layer_lists = False

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: ChunkSize = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> LayerResult | tuple[LayerResult, Tensor]:
        """Conductance of every neuron of the layer.

        Args:
            inputs: a ``(batch, ...)`` float tensor or tuple of them.
            baselines: input baselines.
            target, additional_forward_args, n_steps, method, internal_batch_size: as for
                :class:`~llmattr.IntegratedGradients`.
            return_convergence_delta: also return ``sum(conductance) - (f(x) - f(b))``.
            attribute_to_layer_input: attribute to the layer's inputs.
            grad_kwargs: keyword arguments for ``torch.autograd.grad``.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        (cut,) = self._cuts(attribute_to_layer_input)
        bases = format_baselines(baselines, call.inputs)
        nodes, _ = step_rule(method, n_steps)
        partition = torch.unique(torch.cat([nodes, torch.tensor([0.0, 1.0], dtype=nodes.dtype)]))
        path = StraightPath(call.batch, call.inputs, bases, partition)
        batch = call.batch
        # one pass: each chunk's gradients and activations at the layer; the trapezoid panel
        # between points s-1 and s (rows r-batch and r) is credited at row r, so the last
        # `batch` rows of the previous chunks are carried over (per activation tensor)
        carry: list[tuple[Tensor, ...]] = []

        def grad_fn(
            points: tuple[Tensor, ...], tgt: Any, args: tuple[Any, ...]
        ) -> tuple[Tensor, ...]:
            (grads,), (acts,), _ = cut.gradients(points, tgt, args, grad_kwargs)
            return (*grads, *acts)

        def contribution(start: int, end: int, pairs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            k = len(pairs) // 2
            prev = carry[0] if carry else tuple(t[:0] for t in pairs)
            parts = tuple(
                trapezoid_panels(start, end, batch, g, a, pg, pa)
                for g, a, pg, pa in zip(pairs[:k], pairs[k:], prev[:k], prev[k:])
            )
            if end - start >= batch:
                carry[:] = [tuple(t[-batch:].clone() for t in pairs)]
            else:
                carry[:] = [tuple(torch.cat([p, t])[-batch:] for p, t in zip(prev, pairs))]
            return parts

        twice = accumulate_gradients(
            self.forward_func, call, path.row_examples, path.points, contribution,
            internal_batch_size, grad_fn=grad_fn,
        )  # fmt: skip
        conds = tuple(t.mul_(0.5) for t in twice)
        cond = _form([conds], False)
        if not return_convergence_delta:
            return cond
        # the delta sums every activation tensor's conductance; Captum's completeness gap
        # (one term per example), however many inputs or activation tensors there are
        sums = per_example_sum(conds)
        as_inputs = tuple(
            (sums if i == 0 else torch.zeros_like(sums)).reshape(batch, 1)
            for i in range(len(call.inputs))
        )
        delta = self.compute_convergence_delta(
            as_inputs, bases, call.inputs, call.target, call.args, internal_batch_size
        )
        return cond, delta


class LayerGradientShap(_Layer):
    """GradientShap at a layer: expected gradients at the layer along random input-space paths,
    times the change of the layer's activation ``a(x + ε) - a(b)``.

    Args:
        forward_func: the model or forward function.
        layer: a module.
        device_ids: see :class:`~llmattr.LayerAttribution`.
        multiply_by_inputs: multiply by the activation change (default) or not.
    """

    _layer_lists = False

    _baseline_distribution = True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        internal_batch_size: ChunkSize = None,
        generator: torch.Generator | int | None = None,
    ) -> LayerResult | tuple[LayerResult, Tensor]:
        """Layer GradientShap attributions (see :class:`~llmattr.GradientShap` for the
        arguments, ``internal_batch_size`` and ``generator`` included); the delta has shape
        ``(batch * n_samples,)``, example-major.

        With ``generator=None`` the random numbers are drawn as Captum draws them (baseline rows
        and ``α`` from numpy's global generator, noise from torch's), so seeding both gives
        Captum's numbers."""
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        check_positive_int(n_samples, "n_samples")
        dist = format_baseline_distribution(baselines, call.inputs, inputs)
        gen = make_generator(generator)
        draws = Draws.sample(
            call, dist, n_samples, noise_stdevs(stdevs, len(call.inputs)), gen,
            numpy_global=gen is None,
        )  # fmt: skip
        (cut,) = self._cuts(attribute_to_layer_input)
        attrs, delta = expected_gradients(
            self.forward_func, call, draws, self._multiply_by_inputs, internal_batch_size,
            return_convergence_delta, cut,
        )  # fmt: skip
        result = _form([attrs], False)
        return result if delta is None else (result, delta)


class LayerDeepLift(_Layer):
    """DeepLift's attribution to a layer: ``(a(x) - a(x')) * m`` with ``m`` the multipliers at
    the layer (same rules and restrictions as :class:`~llmattr.DeepLift`).

    Args:
        model: the network (an ``nn.Module``).
        layer: a module of the model.
        multiply_by_inputs: multiply by the activation difference (default) or not.
    """

    _layer_lists = False

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer, None, multiply_by_inputs)
        self.model = model
        self.eps = 1e-10

    def has_convergence_delta(self) -> bool:
        return True

    def _pairs(
        self,
        call: Call,
        inputs: tuple[Tensor, ...],
        bases: tuple[Tensor, ...],
        target: Any,
        args: tuple[Any, ...],
        to_input: bool,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...], Tensor, Tensor]:
        (cut,) = self._cuts(to_input)
        joint_acts: list[tuple[Tensor, ...]] = []

        def grad_fn(joint: tuple[Tensor, ...], tgt: Any, a: tuple[Any, ...]) -> Any:
            (grads,), (acts,), out = cut.gradients(joint, tgt, a, grad_kwargs)
            joint_acts.append(acts)
            return grads, out

        mult, f_x, f_b = deeplift_multipliers(
            self.model, inputs, bases, target, args, self.eps, self.get_name(), grad_fn
        )
        n = inputs[0].shape[0]
        at_x = tuple(a[:n] for a in joint_acts[0])
        at_b = tuple(a[n:] for a in joint_acts[0])
        return mult, at_x, at_b, f_x, f_b

    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> LayerResult | tuple[LayerResult, Tensor]:
        """Layer DeepLift attributions (arguments as for :class:`~llmattr.DeepLift`), shaped
        like the layer's activation; ``grad_kwargs`` go to ``torch.autograd.grad``.

        With ``attribute_to_layer_input=True`` the multipliers are taken at the layer's input,
        so a nonlinear layer's own DeepLift rule applies and the attributions are complete
        (Captum uses the layer's plain derivative there). The delta, shape ``(batch,)``, is
        ``sum(returned attributions) - (f(x) - f(baselines))``, also with
        ``multiply_by_inputs=False`` (then it is not a completeness gap: Captum's contract).
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        bases = format_baselines(baselines, call.inputs)
        mult, at_x, at_b, f_x, f_b = self._pairs(
            call, call.inputs, bases, call.target, call.args, attribute_to_layer_input,
            grad_kwargs,
        )  # fmt: skip
        attrs = _deeplift_finish(
            mult, at_x, at_b, self._multiply_by_inputs, custom_attribution_func
        )
        result = _form([attrs], False)
        if not return_convergence_delta:
            return result
        return result, per_example_sum(attrs).to(f_x.dtype) - (f_x - f_b)


def _deeplift_finish(
    mult: tuple[Tensor, ...],
    at_x: tuple[Tensor, ...],
    at_b: tuple[Tensor, ...],
    multiply: bool,
    custom: Callable[..., Any] | None,
) -> tuple[Tensor, ...]:
    if custom is not None:
        return _custom_attributions(custom, mult, at_x, at_b)
    return tuple((x - b) * m for x, b, m in zip(at_x, at_b, mult)) if multiply else mult


class LayerDeepLiftShap(LayerDeepLift):
    """LayerDeepLift averaged over a distribution of baselines.

    Args:
        model: the network (an ``nn.Module``).
        layer: a module of the model.
        multiply_by_inputs: multiply by the activation difference (default) or not.
    """

    _baseline_distribution = True

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        baselines: Any,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> LayerResult | tuple[LayerResult, Tensor]:
        """Mean over baselines of LayerDeepLift; the delta has shape ``(batch * n_baselines,)``,
        example-major."""
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        dist = shap_baselines(baselines, call.inputs, inputs, self.get_name())
        n_base, batch = dist[0].shape[0], call.batch
        xs = tuple(x.repeat_interleave(n_base, dim=0) for x in call.inputs)
        bs = tuple(b.repeat(batch, *([1] * (b.dim() - 1))) for b in dist)
        mult, at_x, at_b, f_x, f_b = self._pairs(
            call, xs, bs, call.target.expand(n_base, "interleave"),
            expand_args(call.args, batch, n_base, "interleave"), attribute_to_layer_input,
        )  # fmt: skip
        rows = _deeplift_finish(mult, at_x, at_b, self._multiply_by_inputs, custom_attribution_func)
        attrs = tuple(r.reshape(batch, n_base, *r.shape[1:]).mean(1) for r in rows)
        result = _form([attrs], False)
        if not return_convergence_delta:
            return result
        return result, per_example_sum(rows).to(f_x.dtype) - (f_x - f_b)
