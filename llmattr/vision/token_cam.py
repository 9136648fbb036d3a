"""Grad-CAM and Guided Grad-CAM on a vision transformer's blocks.

A block outputs a token sequence ``(N, T, D)``. Dropping the prefix tokens (class, distillation,
register tokens, counted from the config by :class:`~llmattr.vision.layout.PatchLayout`) and
reshaping the patch tokens to the grid gives ``(N, D, rows, cols)``: the hidden dimension plays
the channels, and Grad-CAM's weighting applies unchanged. This is what pytorch-grad-cam's ViT
recipe does with its ``reshape_transform`` (``tensor[:, 1:, :].reshape(N, rows, cols, D)``
moved to channels-first).

The trap: in ``ViTForImageClassification`` only the class token of the last block reaches the
head, so the last block's patch tokens get no gradient and the map is zero. Use the block before
the last, or the last block's ``layernorm_before`` (whose input holds every token's state).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .._core.base import LayerAttribution
from .._core.call import Call
from .._core.errors import InputError
from .._core.hooks import registered
from ..attr.backprop import GuidedBackprop
from ..attr.gradcam import LayerGradCam
from .layout import PatchLayout
from .vit import ModelLogits, logits_forward, patch_layout

__all__ = ["GuidedTokenGradCam", "TokenGradCam", "token_cam"]


def token_cam(
    grads: Tensor,
    acts: Tensor,
    layout: PatchLayout,
    relu_attributions: bool = False,
    attr_dim_summation: bool = True,
) -> Tensor:
    """Grad-CAM of ``(N, T, D)`` token activations and their gradients on the patch grid:
    weights = gradients averaged over the patches, map = weighted sum over ``D``.

    Returns:
        ``(N, 1, rows, cols)`` (``(N, D, rows, cols)`` without ``attr_dim_summation``).
    """
    g, a = layout.to_grid(grads), layout.to_grid(acts)
    cam = g.mean(dim=(2, 3), keepdim=True) * a
    if attr_dim_summation:
        cam = cam.sum(1, keepdim=True)
    return torch.relu(cam) if relu_attributions else cam


def _as_forward(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """A ``transformers`` model returns a ``ModelOutput``; the engine wants the logits."""
    if isinstance(forward_func, nn.Module) and not isinstance(forward_func, ModelLogits):
        if hasattr(forward_func, "config"):
            return logits_forward(forward_func)
    return forward_func


@contextmanager
def _token_check(layer: nn.Module, layout: PatchLayout, to_input: bool) -> Iterator[None]:
    """Check the layer's token count as soon as it runs (before any backward)."""

    def check(value: Any) -> None:
        t = value[0] if isinstance(value, tuple) else value
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise InputError(
                f"TokenGradCam needs a layer whose {'input' if to_input else 'output'} is a "
                f"(batch, tokens, dim) hidden state, got {shape}; pick a transformer block "
                "(e.g. model.vit.layers[-2]) or its layernorm_before."
            )
        layout.check_tokens(t.shape[1])

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any = None) -> None:
        check(args if to_input else output)

    if to_input:
        reg = partial(layer.register_forward_pre_hook, hook, prepend=True)
    else:
        reg = partial(layer.register_forward_hook, hook, prepend=True)
    with registered(reg):
        yield


class TokenGradCam(LayerGradCam):
    """Grad-CAM on a transformer block: ``(N, T, D)`` tokens -> ``(N, 1, rows, cols)`` maps.

    Captum ``LayerGradCam``'s constructor and ``attribute`` arguments; the layer's token sequence
    is reshaped to the patch grid (prefix tokens dropped) before the channel weighting, so the
    "spatial" mean runs over patches and the "channels" are the hidden dimension. Upsample with
    ``LayerAttribution.interpolate(cam, (H, W))``.

    Args:
        forward_func: the model (a ``transformers`` model is wrapped with
            :func:`~llmattr.vision.vit.logits_forward`) or a forward function.
        layer: a block (``model.vit.layers[-2]``) or a module with ``(N, T, D)`` output.
        layout: the token layout; read from the model's config (for the input's image size)
            when not given.
        device_ids: see :class:`~llmattr.LayerAttribution`.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        layout: PatchLayout | None = None,
        device_ids: list[int] | None = None,
    ) -> None:
        forward = _as_forward(forward_func)
        super().__init__(forward, layer, device_ids)
        if layout is None and getattr(forward, "config", None) is None:
            raise InputError(
                "TokenGradCam cannot read the patch grid: the forward function has no "
                "transformers config. Pass layout=PatchLayout.from_config(model)."
            )
        self.layout = layout

    def _layout(self, pixel_values: Tensor) -> PatchLayout:
        if self.layout is not None:
            return self.layout
        size = pixel_values if pixel_values.dim() == 4 else None
        return patch_layout(self.forward_func, size)

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor:
        """Grad-CAM maps ``(N, 1, rows, cols)`` (``(N, D, rows, cols)`` without
        ``attr_dim_summation``); arguments as for ``LayerGradCam``. Warns when the map is all
        zero (no gradient reached the patch tokens)."""
        call = Call.of(inputs, target, additional_forward_args)
        layout = self._layout(call.inputs[0])
        (cut,) = self._cuts(attribute_to_layer_input)
        with _token_check(self.layer, layout, attribute_to_layer_input):
            (grads,), (acts,), _ = cut.gradients(call.inputs, call.target, call.args, grad_kwargs)
        cam = token_cam(grads[0], acts[0], layout, relu_attributions, attr_dim_summation)
        if not torch.any(layout.to_grid(grads[0]) != 0):
            warnings.warn(
                "TokenGradCam: the map is all zero because no gradient reached the patch tokens "
                "of this layer. In a ViT classifier only the class token of the last block "
                "reaches the head: use the block before the last, or layernorm_before of the "
                "last block (layer_norm1 in CLIP) with attribute_to_layer_input=True (its input "
                "holds every token).",
                UserWarning,
                stacklevel=2,
            )
        return cam


class GuidedTokenGradCam(TokenGradCam):
    """Guided Grad-CAM for vision transformers: guided backpropagation ``(N, C, H, W)`` times
    the :class:`TokenGradCam` map (ReLU'd) upsampled to the image, as Captum's
    ``GuidedGradCam`` does with a convolution's map.

    Guided backpropagation changes only ``nn.ReLU`` modules (as Captum's); a ViT with GELU
    therefore gets the plain input gradient times the map.

    Args:
        model: the model (a ``transformers`` model is wrapped with ``logits_forward``).
        layer, layout, device_ids: as for :class:`TokenGradCam`.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        layout: PatchLayout | None = None,
        device_ids: list[int] | None = None,
    ) -> None:
        super().__init__(model, layer, layout, device_ids)
        if not isinstance(self.forward_func, nn.Module):
            raise InputError("GuidedTokenGradCam needs the model as an nn.Module.")
        self.guided_backprop = GuidedBackprop(self.forward_func)

    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ) -> Tensor:
        """Guided Grad-CAM attributions shaped like ``inputs`` ``(N, C, H, W)``."""
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            raise InputError(
                "GuidedTokenGradCam takes one (N, C, H, W) pixel tensor, got "
                f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}."
            )
        cam = super().attribute(
            inputs, target, additional_forward_args, attribute_to_layer_input, True
        )
        guided = self.guided_backprop.attribute(inputs, target, additional_forward_args)
        up = LayerAttribution.interpolate(cam, tuple(inputs.shape[2:]), interpolate_mode)
        return guided * up
