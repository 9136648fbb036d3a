"""Neuron attribution: which inputs make one neuron of a layer fire.

Each is a primary algorithm applied to the function "inputs → the neuron's value"
(:func:`~llmattr._core.layers.neuron_function`, whose forward stops once the layer has run).
``neuron_selector`` picks the neuron: an int (2-D activations), a tuple with one int or slice per
dimension after the batch (slices select several neurons, whose values are summed), or a callable
from the layer's activation to one value per example. NeuronConductance, which also needs the
model's output, has its own code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .._core.base import NeuronAttribution
from .._core.batching import ChunkSize
from .._core.call import Call
from .._core.forward import accumulate_gradients, gradients
from .._core.inputs import BaselineType, TensorOrTuple, format_baselines
from .._core.layers import (
    LayerCut,
    NeuronSelector,
    check_device_ids,
    check_layers,
    neuron_function,
    neuron_index,
    select_neuron,
)
from .._core.targets import Target, TargetType
from .ablation import FeatureAblation
from .backprop import Deconvolution, GuidedBackprop
from .deeplift import DeepLift, DeepLiftShap
from .gradient_shap import GradientShap
from .integrated_gradients import IntegratedGradients, StraightPath, step_rule

__all__ = [
    "NeuronConductance",
    "NeuronDeconvolution",
    "NeuronDeepLift",
    "NeuronDeepLiftShap",
    "NeuronFeatureAblation",
    "NeuronGradient",
    "NeuronGradientShap",
    "NeuronGuidedBackprop",
    "NeuronIntegratedGradients",
]


class _Neuron(NeuronAttribution):
    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
    ) -> None:
        super().__init__(forward_func, layer, device_ids)
        check_layers(forward_func, [layer])
        check_device_ids(forward_func, [layer], device_ids)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def _neuron(
        self, selector: NeuronSelector, to_input: bool, floating: bool = True
    ) -> Callable[..., Tensor]:
        return neuron_function(self.forward_func, self.layer, selector, to_input, floating)  # type: ignore[arg-type]


class NeuronGradient(_Neuron):
    """The gradient of one neuron's value with respect to the inputs.

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> TensorOrTuple:
        """Gradients shaped like ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` float tensor or tuple of them.
            neuron_selector: the neuron (see the module docstring).
            additional_forward_args: extra forward arguments.
            attribute_to_neuron_input: select the neuron among the layer's inputs.
        """
        call = Call.of(inputs, None, additional_forward_args, gradient_method=self.get_name())
        h = self._neuron(neuron_selector, attribute_to_neuron_input)
        grads, _ = gradients(h, call.inputs, call.target, call.args)
        return call.result(grads)


class NeuronIntegratedGradients(_Neuron):
    """Integrated gradients of one neuron's value (see :class:`~llmattr.IntegratedGradients`).

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
        multiply_by_inputs: multiply by ``inputs - baselines`` (default) or not.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: ChunkSize = None,
        attribute_to_neuron_input: bool = False,
    ) -> TensorOrTuple:
        """Attributions shaped like ``inputs``; arguments as for IntegratedGradients."""
        h = self._neuron(neuron_selector, attribute_to_neuron_input)
        return IntegratedGradients(h, self._multiply_by_inputs).attribute(  # type: ignore[return-value]
            inputs, baselines, None, additional_forward_args, n_steps, method,  # type: ignore[arg-type]
            internal_batch_size,
        )  # fmt: skip


class NeuronGradientShap(_Neuron):
    """GradientShap of one neuron's value (see :class:`~llmattr.GradientShap`).

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
        multiply_by_inputs: multiply by ``inputs - baselines`` (default) or not.
    """

    _baseline_distribution = True

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        baselines: Any,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> TensorOrTuple:
        """Attributions shaped like ``inputs``; arguments as for GradientShap."""
        h = self._neuron(neuron_selector, attribute_to_neuron_input)
        return GradientShap(h, self._multiply_by_inputs).attribute(  # type: ignore[return-value]
            inputs, baselines, n_samples, stdevs, None, additional_forward_args
        )


class NeuronFeatureAblation(_Neuron):
    """FeatureAblation of one neuron's value (see :class:`~llmattr.FeatureAblation`).

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
    ) -> TensorOrTuple:
        """Attributions shaped like ``inputs``; arguments as for FeatureAblation."""
        h = self._neuron(neuron_selector, attribute_to_neuron_input, floating=False)
        return FeatureAblation(h).attribute(
            inputs, baselines, None, additional_forward_args, feature_mask, perturbations_per_eval
        )


class NeuronDeepLift(_Neuron):
    """DeepLift of one neuron's value (rules as for :class:`~llmattr.DeepLift`).

    Args:
        model: the network (an ``nn.Module``).
        layer: the module holding the neuron.
        multiply_by_inputs: multiply by ``inputs - baselines`` (default) or not.
    """

    _primary: type[DeepLift] = DeepLift

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, layer, None, multiply_by_inputs)

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        baselines: Any = None,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> TensorOrTuple:
        """Attributions shaped like ``inputs``; arguments as for DeepLift (a distribution of
        baselines for NeuronDeepLiftShap)."""
        h = self._neuron(neuron_selector, attribute_to_neuron_input)
        primary = self._primary(self.forward_func, self._multiply_by_inputs)  # type: ignore[arg-type]
        primary._grad_fn = partial(gradients, h)  # rules from the model, values from the neuron
        return primary.attribute(  # type: ignore[return-value]
            inputs, baselines, None, additional_forward_args, False, custom_attribution_func
        )


class NeuronDeepLiftShap(NeuronDeepLift):
    """DeepLiftShap of one neuron's value (see :class:`~llmattr.DeepLiftShap`).

    Args:
        model: the network (an ``nn.Module``).
        layer: the module holding the neuron.
        multiply_by_inputs: multiply by ``inputs - baselines`` (default) or not.
    """

    _primary = DeepLiftShap
    _baseline_distribution = True


class NeuronGuidedBackprop(_Neuron):
    """Guided backpropagation of one neuron's value (see :class:`~llmattr.GuidedBackprop`).

    Args:
        model: the network (an ``nn.Module``).
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
    """

    _rules: type[GuidedBackprop] | type[Deconvolution] = GuidedBackprop

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> TensorOrTuple:
        """Modified gradients shaped like ``inputs``."""
        call = Call.of(inputs, None, additional_forward_args, gradient_method=self.get_name())
        h = self._neuron(neuron_selector, attribute_to_neuron_input)
        with self._rules(self.forward_func).rules_applied():  # type: ignore[arg-type]
            grads, _ = gradients(h, call.inputs, call.target, call.args)
        return call.result(grads)


class NeuronDeconvolution(NeuronGuidedBackprop):
    """Deconvolution of one neuron's value (see :class:`~llmattr.Deconvolution`).

    Args:
        model: the network (an ``nn.Module``).
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
    """

    _rules = Deconvolution


class NeuronConductance(_Neuron):
    """Neuron conductance (Dhamdhere et al., 2018): the part of the inputs' integrated gradients
    that flows through one neuron, ``(x - x') ∫ ∂f/∂y · ∂y/∂x dα`` along the straight path.

    Summed over every neuron of a layer that all paths cross, it gives IntegratedGradients.

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
        multiply_by_inputs: multiply by ``inputs - baselines`` (default) or not.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: int | tuple[int | slice, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size: ChunkSize = None,
        attribute_to_neuron_input: bool = False,
    ) -> TensorOrTuple:
        """Conductance of the inputs through the neuron, shaped like ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` float tensor or tuple of them.
            neuron_selector: an int or a tuple of ints/slices (not a callable: the output's
                gradient is taken at the selected neurons).
            baselines: input baselines.
            target: which model output to explain.
            additional_forward_args, n_steps, method, internal_batch_size: as for
                IntegratedGradients.
            attribute_to_neuron_input: select the neuron among the layer's inputs.
        """
        if callable(neuron_selector):
            raise TypeError(
                "NeuronConductance needs neuron_selector as an int or a tuple of ints/slices: "
                "the output's gradient is taken at the selected neurons."
            )
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        bases = format_baselines(baselines, call.inputs)
        alphas, weights = step_rule(method, n_steps)
        path = StraightPath(call.batch, call.inputs, bases, alphas)
        cut = LayerCut(self.forward_func, [self.layer], attribute_to_neuron_input)  # type: ignore[list-item]
        index = neuron_index(neuron_selector)

        def grad_fn(
            points: tuple[Tensor, ...], tgt: Target, args: tuple[Any, ...]
        ) -> tuple[Tensor, ...]:
            with torch.enable_grad():
                leaves = tuple(p.detach().requires_grad_() for p in points)
                (acts,), output = cut.activations(leaves, args, stop_early=False, grad=True)
                cut.check_floating(0, acts)
                act = acts[0]
                select_neuron(acts, neuron_selector)  # validates the selector before any backward
                selected = tgt.select(output, act.shape[0])
                (d_out,) = torch.autograd.grad(selected.sum(), act, retain_graph=True)
                keep = torch.zeros_like(act)
                keep[tuple([slice(None), *index])] = 1
                grads = torch.autograd.grad(
                    (act * (d_out * keep).detach()).sum(), leaves, allow_unused=True
                )
            return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))

        def contribution(start: int, end: int, grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return tuple(g * path.per_row(weights, start, end, g) for g in grads)

        totals = accumulate_gradients(
            self.forward_func, call, path.row_examples, path.points, contribution,
            internal_batch_size, grad_fn=grad_fn,
        )  # fmt: skip
        if self._multiply_by_inputs:
            totals = tuple(t * d for t, d in zip(totals, path.diffs))
        return call.result(totals)
