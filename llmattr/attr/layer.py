"""Layer attribution: how much each neuron of a layer contributes to the output.

Most of these are a primary algorithm applied to the function "layer activation → output"
(:class:`~llmattr._core.layers.LayerCut`): LayerIntegratedGradients is IntegratedGradients
between the layer's activations at the baselines and at the inputs, LayerFeatureAblation is
FeatureAblation of the activation, and so on. The methods whose path stays in input space
(conductance, internal influence, GradientShap, DeepLift) are in :mod:`.layer_path`; Grad-CAM
and Guided Grad-CAM are in :mod:`.gradcam`.

``layer`` may be one module or, for LayerActivation, LayerGradientXActivation,
LayerIntegratedGradients and LayerLRP, a list of modules: the results come back as a list, one
entry per layer. LayerIntegratedGradients moves all listed layers along one joint path, as
Captum does (``layers_jointly=False`` attributes each layer on its own path instead). A layer
whose activation is a tuple gives a tuple of attributions.

The gradient methods take Captum's ``grad_kwargs`` (keyword arguments of
``torch.autograd.grad``, e.g. ``{"materialize_grads": True}``) where Captum 0.9 does.

``device_ids`` is accepted for Captum compatibility. A ``torch.nn.DataParallel`` model on CPU or
on one device just calls its module and works unchanged; replicas on several devices (the hooks
would fire in each, on a slice of the batch) are refused with a NotImplementedError, at
construction when the model or ``device_ids`` shows them, else at the first forward: attribute
through ``model.module`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._core.batching import ChunkSize
from .._core.call import Call
from .._core.inputs import (
    BaselineType,
    TensorOrTuple,
    format_baselines,
    per_example_sum,
)
from .._core.layers import LayerCut
from .._core.targets import TargetType
from .ablation import FeatureAblation, FeaturePermutation
from .integrated_gradients import IntegratedGradients, step_rule
from .layer_base import LayerResult, _FixedLayer, _form, _Layer
from .lrp import LRP

__all__ = [
    "LayerActivation",
    "LayerFeatureAblation",
    "LayerFeaturePermutation",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "LayerLRP",
]


class LayerActivation(_FixedLayer):
    """The activations of a layer (its output, or its input).

    Args:
        forward_func: the model or forward function.
        layer: a module, or a list of modules.
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> LayerResult:
        """Activations shaped like the layer's output (or input); the forward stops at the layer.

        Args:
            inputs: the model's inputs.
            additional_forward_args: extra forward arguments.
            attribute_to_layer_input: return the layer's inputs instead.
        """
        call = Call.of(inputs, None, additional_forward_args)
        cut = LayerCut(self.forward_func, self._layers(), attribute_to_layer_input)
        acts, _ = cut.activations(call.inputs, call.args)
        return _form(acts, self._many())


class LayerGradientXActivation(_Layer):
    """The layer's activation times the gradient of the output with respect to it.

    Args:
        forward_func: the model or forward function.
        layer: a module, or a list of modules (all from one forward and backward).
        device_ids: see :class:`~llmattr.LayerAttribution`.
        multiply_by_inputs: multiply by the activation (default) or return the gradient.
        memory_efficient: accepted for Captum compatibility; every layer's gradient already
            comes from one forward and one backward pass.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module | list[nn.Module],
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs)
        self.memory_efficient = memory_efficient

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> LayerResult:
        """``activation * d target / d activation``, shaped like the layer's activation.

        Args:
            inputs: the model's inputs.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            attribute_to_layer_input: attribute to the layer's inputs.
            grad_kwargs: keyword arguments for ``torch.autograd.grad``.
        """
        call = Call.of(inputs, target, additional_forward_args)
        cut = LayerCut(self.forward_func, self._layers(), attribute_to_layer_input)
        grads, acts, _ = cut.gradients(call.inputs, call.target, call.args, grad_kwargs)
        if self._multiply_by_inputs:
            grads = [tuple(g * a for g, a in zip(gs, as_)) for gs, as_ in zip(grads, acts)]
        return _form(grads, self._many())


class LayerIntegratedGradients(_Layer):
    """Integrated gradients in a layer's activation space.

    Let ``g(a)`` be the model run on the inputs ``x`` with the layer's activation replaced by
    ``a``. The path runs straight from ``a(baselines)`` to ``a(x)`` and the attributions are
    IntegratedGradients of ``g`` along it, so each example's attributions sum to
    ``g(a(x)) - g(a(baselines))`` up to the quadrature error (the delta reports the gap).
    ``g(a(x)) = f(x)``; ``g(a(baselines)) = f(baselines)`` when the output depends on the inputs
    only through the layer (e.g. a layer every path crosses, or the embedding of the only input
    whose baseline differs). Otherwise the baseline is applied *at the layer*: routes that bypass
    it (another input, a skip connection around it) still see ``x``, and completeness holds for
    ``f(x) - g(a(baselines))``. (Captum's delta compares with ``f(x) - f(baselines)`` instead,
    which such a route makes unreachable at any ``n_steps``.)

    For a list of layers, as in Captum, all the layers' activations move together along one
    path and are substituted in one forward: the attributions of all layers together are
    complete (one delta). A layer downstream of another then cuts the earlier one off (its
    attributions are zero where every route crosses the later layer). For a layer × token map,
    where each layer's result must be complete on its own, pass ``layers_jointly=False``.

    On an embedding layer this attributes token-id inputs, which cannot be differentiated: sum
    the result over the embedding dimension for one score per token.

    Args:
        forward_func: the model or forward function.
        layer: a module, or a list of modules.
        device_ids: see :class:`~llmattr.LayerAttribution`.
        multiply_by_inputs: multiply by the activation difference (default) or not.
    """

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
        *,
        layers_jointly: bool = True,
    ) -> LayerResult | tuple[LayerResult, Tensor | list[Tensor]]:
        """Layer integrated gradients.

        Args:
            inputs: the model's inputs (token ids are fine).
            baselines: input baselines (e.g. a pad/mask token id); the path starts at the
                layer's activation for them.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            n_steps, method, internal_batch_size: as for
                :class:`~llmattr.IntegratedGradients`.
            return_convergence_delta: also return the completeness gap per example,
                ``sum(attributions) - (f(x) - g(a(baselines)))``, summed over all layers.
            attribute_to_layer_input: attribute to the layer's inputs.
            grad_kwargs: keyword arguments for ``torch.autograd.grad``.
            layers_jointly: for a list of layers, interpolate them all along one path
                (Captum's semantics, default). ``False`` (llmattr only) attributes each layer
                independently, on its own path with the other layers left as the model computes
                them: each layer's attributions are complete on their own, and the delta is a
                list with one ``(batch,)`` tensor per layer.

        Returns:
            Attributions shaped like the layer's activation (a list over layers for a list of
            layers; a tuple for a layer whose activation is a tuple), and with
            ``return_convergence_delta`` the delta ``(batch,)``.
        """
        call = Call.of(inputs, target, additional_forward_args)
        bases = format_baselines(baselines, call.inputs)
        step_rule(method, n_steps)  # validates before any forward
        if self._many() and not layers_jointly:
            groups = [[m] for m in self._layers()]
        else:
            groups = [self._layers()]
        results: list[tuple[Tensor, ...]] = []
        deltas: list[Tensor] = []
        for layers in groups:
            cut = LayerCut(self.forward_func, layers, attribute_to_layer_input)
            at_x, _ = cut.activations(call.inputs, call.args)
            for i, acts in enumerate(at_x):
                cut.check_floating(i, acts)
            at_b, _ = cut.activations(bases, call.args)
            sizes = [len(acts) for acts in at_x]
            ig = IntegratedGradients(cut.function(sizes), self._multiply_by_inputs)
            # the layers' activation tensors, flattened: one IG input each (one joint path)
            flat, delta = ig._integrate(
                tuple(t for acts in at_x for t in acts),
                tuple(t for acts in at_b for t in acts),
                call.target,
                (*call.inputs, *call.args),
                n_steps,
                method,
                internal_batch_size,
                return_convergence_delta,
                grad_kwargs,
            )
            if delta is not None:
                deltas.append(delta)
            offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            results.extend(flat[offsets[i] : offsets[i + 1]] for i in range(len(sizes)))
        formed = _form(results, self._many())
        if not return_convergence_delta:
            return formed
        return formed, deltas if self._many() and not layers_jointly else deltas[0]


class LayerFeatureAblation(_FixedLayer):
    """FeatureAblation of a layer's neurons: replace neuron groups (``layer_mask``) by
    ``layer_baselines`` and record the output's drop.

    Args:
        forward_func: the model or forward function.
        layer: a module.
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    _layer_lists = False

    def attribute(
        self,
        inputs: TensorOrTuple,
        layer_baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        layer_mask: Tensor | tuple[Tensor, ...] | None = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
    ) -> LayerResult:
        """Ablation attributions shaped like the layer's activation.

        Args:
            inputs: the model's inputs.
            layer_baselines: replacement activations (None: zeros; a number; a tensor
                broadcastable to the activation).
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            layer_mask: neuron groups, like ``feature_mask`` over the activation.
            attribute_to_layer_input: ablate the layer's inputs.
            perturbations_per_eval: ablations per forward.
        """
        call = Call.of(inputs, target, additional_forward_args)
        (cut,) = self._cuts(attribute_to_layer_input)
        (acts,), _ = cut.activations(call.inputs, call.args)
        attrs = FeatureAblation(cut.function([len(acts)])).attribute(
            acts if len(acts) > 1 else acts[0], baselines=layer_baselines, target=call.target,
            additional_forward_args=(*call.inputs, *call.args), feature_mask=layer_mask,
            perturbations_per_eval=perturbations_per_eval,
        )  # fmt: skip
        return attrs


class LayerFeaturePermutation(_FixedLayer):
    """FeaturePermutation of a layer's neurons across the batch.

    Args:
        forward_func: the model or forward function.
        layer: a module.
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    _layer_lists = False

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        layer_mask: Tensor | tuple[Tensor, ...] | None = None,
        perturbations_per_eval: int = 1,
        generator: torch.Generator | int | None = None,
    ) -> LayerResult:
        """Permutation attributions shaped like the layer's output."""
        call = Call.of(inputs, target, additional_forward_args)
        (cut,) = self._cuts(False)
        (acts,), _ = cut.activations(call.inputs, call.args)
        return FeaturePermutation(cut.function([len(acts)])).attribute(
            acts if len(acts) > 1 else acts[0], target=call.target,
            additional_forward_args=(*call.inputs, *call.args), feature_mask=layer_mask,
            perturbations_per_eval=perturbations_per_eval,
            generator=generator,
        )  # fmt: skip


class LayerLRP(_Layer):
    """Relevance (LRP) arriving at a layer: ``activation * modified gradient`` with the rules of
    :class:`~llmattr.LRP`.

    Args:
        model: the network (an ``nn.Module``).
        layer: a module, or a list of modules.
    """

    def __init__(self, model: nn.Module, layer: nn.Module | list[nn.Module]) -> None:
        super().__init__(model, layer)
        self.lrp = LRP(model)

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        verbose: bool = False,
    ) -> LayerResult | tuple[LayerResult, Tensor | list[Tensor]]:
        """Relevance at the layer; the delta is ``output - sum(relevance)`` per example, Captum's
        sign (a list over layers for a list of layers)."""
        call = Call.of(inputs, target, additional_forward_args)
        cut = LayerCut(self.forward_func, self._layers(), attribute_to_layer_input)
        with self.lrp.rules_applied(verbose):
            grads, acts, out = cut.gradients(call.inputs, call.target, call.args)
        relevance = [tuple(g * a for g, a in zip(gs, as_)) for gs, as_ in zip(grads, acts)]
        result = _form(relevance, self._many())
        if not return_convergence_delta:
            return result
        deltas = [out - per_example_sum(r).to(out.dtype) for r in relevance]
        return result, deltas if self._many() else deltas[0]
