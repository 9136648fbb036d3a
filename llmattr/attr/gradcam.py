"""Grad-CAM and Guided Grad-CAM: class activation maps from a layer's gradients.

Both read a (usually convolutional) layer through the same :class:`~llmattr._core.layers.LayerCut`
as the other layer methods. Grad-CAM weights each channel of the activation by its gradient
averaged over the spatial dimensions; Guided Grad-CAM multiplies guided backpropagation by that
map upsampled to the input's size.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._core.base import LayerAttribution
from .._core.call import Call
from .._core.inputs import TensorOrTuple
from .._core.targets import TargetType
from .backprop import GuidedBackprop
from .layer_base import LayerResult, _FixedLayer, _form

__all__ = ["GuidedGradCam", "LayerGradCam"]


class LayerGradCam(_FixedLayer):
    """Grad-CAM (Selvaraju et al., 2017): the layer's activation weighted by its gradient
    averaged over the spatial dimensions, summed over channels.

    Args:
        forward_func: the model or forward function.
        layer: a module (usually the last convolution).
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    _layer_lists = False

    _multiplies = False  # as in Captum

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> LayerResult:
        """Grad-CAM maps of shape ``(batch, 1, *spatial)`` (``(batch, channels, *spatial)``
        without ``attr_dim_summation``).

        Args:
            inputs: the model's inputs.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            attribute_to_layer_input: use the layer's inputs.
            relu_attributions: keep only positive evidence.
            attr_dim_summation: sum over channels (dimension 1).
            grad_kwargs: keyword arguments for ``torch.autograd.grad``.
        """
        call = Call.of(inputs, target, additional_forward_args)
        (cut,) = self._cuts(attribute_to_layer_input)
        (grads,), (acts,), _ = cut.gradients(call.inputs, call.target, call.args, grad_kwargs)
        maps = []
        for g, a in zip(grads, acts):
            weights = g.mean(dim=tuple(range(2, g.dim())), keepdim=True) if g.dim() > 2 else g
            cam = weights * a
            if attr_dim_summation:
                cam = cam.sum(1, keepdim=True)
            maps.append(torch.relu(cam) if relu_attributions else cam)
        return _form([tuple(maps)], False)


class GuidedGradCam(_FixedLayer):
    """Guided Grad-CAM: guided backpropagation times the layer's Grad-CAM map upsampled to the
    input's spatial size.

    Args:
        model: the network (an ``nn.Module``).
        layer: the module whose Grad-CAM is used (usually the last convolution).
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    _layer_lists = False

    _multiplies = False  # as in Captum

    def __init__(
        self, model: nn.Module, layer: nn.Module, device_ids: list[int] | None = None
    ) -> None:
        super().__init__(model, layer, device_ids)
        self.grad_cam = LayerGradCam(model, layer, device_ids)
        self.guided_backprop = GuidedBackprop(model)

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ) -> TensorOrTuple:
        """Guided Grad-CAM attributions shaped like ``inputs``.

        Args:
            inputs: ``(batch, channels, *spatial)`` float tensors (or a tuple); the map is
                upsampled to each input's spatial size.
            target: which output to explain.
            additional_forward_args: extra forward arguments.
            interpolate_mode: upsampling mode (see ``torch.nn.functional.interpolate``).
            attribute_to_layer_input: use the layer's inputs for Grad-CAM.
        """
        call = Call.of(inputs, target, additional_forward_args, gradient_method=self.get_name())
        cam = self.grad_cam.attribute(
            call.inputs, call.target, call.args, attribute_to_layer_input, relu_attributions=True
        )
        if not isinstance(cam, Tensor):
            raise TypeError("GuidedGradCam needs a layer whose activation is one tensor.")
        guided = self.guided_backprop.attribute(call.inputs, call.target, call.args)
        out = []
        for x, g in zip(call.inputs, guided):
            # as Captum: an input the Grad-CAM map cannot be resized to (another rank, an
            # unknown interpolate_mode) gets an empty attribution and a warning, so the other
            # inputs of a multi-input model are still explained
            try:
                if x.dim() != cam.dim():
                    raise ValueError("different numbers of dimensions")
                up = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode)
                out.append(g * up)
            except (ValueError, RuntimeError, NotImplementedError) as err:
                warnings.warn(
                    f"GuidedGradCam: the layer's Grad-CAM map of shape {tuple(cam.shape)} cannot "
                    f"be resized to the input of shape {tuple(x.shape)} with interpolate_mode="
                    f"{interpolate_mode!r} ({err}); that input's attribution is an empty tensor. "
                    "GuidedGradCam needs (batch, channels, *spatial) inputs matching the layer.",
                    stacklevel=2,
                )
                out.append(torch.empty(0))
        return call.result(out)
