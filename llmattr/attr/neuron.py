"""Neuron attribution: which inputs make one neuron of a layer fire.

Each is a primary algorithm applied to the function "inputs → the neuron's value"
(:func:`~llmattr._core.layers.neuron_function`, whose forward stops once the layer has run).
``neuron_selector`` picks the neuron as in Captum (see :mod:`llmattr._core.neurons`): an int, a
tuple of ints/slices (padded with full slices when shorter than the activation's rank; several
selected values are summed), or a callable from the layer's activation to one value per example.
NeuronConductance, which also needs the model's output, has its own code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .._core.base import NeuronAttribution
from .._core.batching import ChunkSize
from .._core.call import Call
from .._core.forward import accumulate_gradients, grad_options, gradients
from .._core.inputs import BaselineType, TensorOrTuple, format_baselines
from .._core.layers import LayerCut, check_device_ids, check_layers
from .._core.neurons import NeuronSelector, neuron_function, neuron_weights, select_neuron
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


class _FixedNeuron(_Neuron):
    """A neuron method without Captum's ``multiply_by_inputs`` argument: the constructor takes
    ``(forward_func, layer, device_ids)`` and ``multiplies_by_inputs`` is fixed, as in Captum."""

    _multiplies = False

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, type(self)._multiplies)


class NeuronGradient(_FixedNeuron):
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


class NeuronFeatureAblation(_FixedNeuron):
    """FeatureAblation of one neuron's value (see :class:`~llmattr.FeatureAblation`).

    Args:
        forward_func: the model or forward function.
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
    """

    _multiplies = True  # a perturbation method: the difference already carries the input

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

    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        baselines: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> TensorOrTuple:
        """Attributions shaped like ``inputs``; ``baselines`` is a distribution, as for
        DeepLiftShap (required, as in Captum)."""
        return super().attribute(
            inputs, neuron_selector, baselines, additional_forward_args,
            attribute_to_neuron_input, custom_attribution_func,
        )  # fmt: skip


class NeuronGuidedBackprop(_FixedNeuron):
    """Guided backpropagation of one neuron's value (see :class:`~llmattr.GuidedBackprop`).

    Args:
        model: the network (an ``nn.Module``).
        layer: the module holding the neuron.
        device_ids: see :class:`~llmattr.NeuronAttribution`.
    """

    _rules: type[GuidedBackprop] | type[Deconvolution] = GuidedBackprop

    def __init__(
        self, model: nn.Module, layer: nn.Module, device_ids: list[int] | None = None
    ) -> None:
        super().__init__(model, layer, device_ids)

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
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size: ChunkSize = None,
        attribute_to_neuron_input: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> TensorOrTuple:
        """Conductance of the inputs through the neuron, shaped like ``inputs``.

        Args:
            inputs: a ``(batch, ...)`` float tensor or tuple of them.
            neuron_selector: an int, a tuple of ints/slices or a callable. Each activation
                element's path gradient is weighted by how much it counts in the selected value
                (one at the selected neurons; a callable's derivative), so several selected
                neurons contribute the sum of their own conductances.
            baselines: input baselines.
            target: which model output to explain.
            additional_forward_args, n_steps, method, internal_batch_size: as for
                IntegratedGradients. The default ``"riemann_trapezoid"`` is the trapezoid rule
                on ``n_steps`` points, whose weights sum to 1 (Captum's sum to
                ``(n_steps - 1) / n_steps``, so its conductances fall short by that factor).
            attribute_to_neuron_input: select the neuron among the layer's inputs.
            grad_kwargs: keyword arguments for the ``torch.autograd.grad`` call that
                differentiates the output with respect to the layer (as in Captum).
        """
        grad_options(grad_kwargs)  # validated before any forward
        if callable(neuron_selector):
            # as Captum: a callable that does more than pick neurons has no clear meaning here
            warnings.warn(
                "neuron_selector is a callable: NeuronConductance weights each activation element "
                "by the callable's derivative, which is a conductance only when the callable "
                "selects (or sums) neurons of the layer.",
                stacklevel=2,
            )
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        bases = format_baselines(baselines, call.inputs)
        alphas, weights = step_rule(method, n_steps)
        path = StraightPath(call.batch, call.inputs, bases, alphas)
        cut = LayerCut(self.forward_func, [self.layer], attribute_to_neuron_input)  # type: ignore[list-item]

        def grad_fn(
            points: tuple[Tensor, ...], tgt: Target, args: tuple[Any, ...]
        ) -> tuple[Tensor, ...]:
            with torch.enable_grad():
                # forward up to the layer; the selector is checked here, before any backward
                leaves = tuple(p.detach().requires_grad_() for p in points)
                (acts,), _ = cut.activations(leaves, args, grad=True)
                cut.check_floating(0, acts)
                select_neuron(acts, neuron_selector)
                # ∂F/∂y at the layer, then Σ_j ∂F/∂y_j · w_j · ∂y_j/∂x with w_j = ∂selected/∂y_j
                # (one at the selected neurons): each selected neuron's conductance, summed
                (d_out,), _, _ = cut.gradients(points, tgt, args, grad_kwargs)
                counts = neuron_weights(
                    tuple(a.detach().requires_grad_() for a in acts), neuron_selector
                )
                through = sum((a * (w * d)).sum() for a, w, d in zip(acts, counts, d_out))
                if not isinstance(through, Tensor) or not through.requires_grad:
                    return tuple(torch.zeros_like(x) for x in leaves)
                grads = torch.autograd.grad(through, leaves, allow_unused=True)
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
