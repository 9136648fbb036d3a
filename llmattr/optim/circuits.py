"""Expanded weights between two layers (Voss et al., "Visualizing Weights", Distill 2021).

For two layers that are not adjacent, or whose interaction is not one weight tensor, the
*expanded weights* are the gradient of each output channel of ``target2`` (at its spatial centre)
with respect to the activation of ``target1``. When everything between the two layers is linear
(replace ReLUs with :func:`llmattr.optim.models.skip_layers` first) this is exactly the composed
kernel of the layers in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from .._core.hooks import registered
from .models import ReplacedLayers, replace_layers

__all__ = ["center_crop_weights", "extract_expanded_weights", "max2avg_pool2d"]


class _Stop(Exception):
    """Ends the forward once ``target2`` has run."""


def _resolve(model: nn.Module, target: nn.Module | str, name: str) -> nn.Module:
    if isinstance(target, str):
        modules = dict(model.named_modules())
        if target not in modules or target == "":
            valid = ", ".join(repr(n) for n in modules if n)
            raise InputError(f"{name} {target!r} is not a layer of the model; valid: {valid}.")
        return modules[target]
    if not isinstance(target, nn.Module):
        raise InputTypeError(f"{name} must be a module or its dotted name, got {target!r}.")
    if not any(m is target for m in model.modules()):
        raise InputError(f"{name} ({type(target).__name__}) is not a submodule of the model.")
    return target


def center_crop_weights(weights: Tensor, crop_shape: int | Sequence[int]) -> Tensor:
    """Crop the last two dims of ``(..., H, W)`` to ``crop_shape`` around the centre.

    The crop starts at ``((H - h) // 2, (W - w) // 2)``, so for odd ``h`` it is centred on row
    ``(H - 1) // 2``, the row :func:`extract_expanded_weights` takes the gradient at.
    """
    hw = (crop_shape, crop_shape) if isinstance(crop_shape, int) else tuple(crop_shape)
    if len(hw) != 2 or any(int(s) != s or s < 1 for s in hw):
        raise InputError(f"crop_shape must be an int or (h, w) of positive ints, got {crop_shape}.")
    big_h, big_w = weights.shape[-2:]
    h, w = int(hw[0]), int(hw[1])
    if h > big_h or w > big_w:
        raise InputError(f"crop_shape {(h, w)} is larger than the weights' {(big_h, big_w)}.")
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return weights[..., top : top + h, left : left + w]


def extract_expanded_weights(
    model: nn.Module,
    target1: nn.Module | str,
    target2: nn.Module | str,
    crop_shape: int | Sequence[int] | None = None,
    model_input: Tensor | tuple[Tensor, ...] | None = None,
    crop_func: Callable[[Tensor, Any], Tensor] | None = center_crop_weights,
) -> Tensor:
    """The expanded weights from ``target1`` (lower) to ``target2`` (higher).

    Args:
        model: the model; it runs once on ``model_input``.
        target1: the lower layer (module or dotted name); its output must be one tensor
            ``(1, C1, H, W)`` (or ``(1, C1)``).
        target2: the higher layer; output ``(1, C2, H2, W2)`` (the centre position
            ``((H2 - 1) // 2, (W2 - 1) // 2)`` is used) or ``(1, C2)``.
        crop_shape: if given, ``crop_func`` crops the spatial dims to it (e.g. to the joint
            receptive field, cutting away zero padding).
        model_input: a tensor or tuple of tensors with batch size 1; default
            ``torch.zeros(1, 3, 224, 224)`` in the model's dtype and device (optim-wip's).
        crop_func: ``crop_func(weights, crop_shape)``; default centre crop.

    Returns:
        ``(C2, C1, H, W)`` (or ``(C2, C1)`` for a 2-D ``target1``): entry ``[j, i, y, x]`` is
        ``d target2[0, j, centre] / d target1[0, i, y, x]``.

    The gradient is taken with respect to ``target1``'s output itself (it is made a leaf during
    the forward), so it works for frozen models; hooks are removed when the call ends.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    layer1 = _resolve(model, target1, "target1")
    layer2 = _resolve(model, target2, "target2")
    if layer1 is layer2:
        raise InputError("target1 and target2 are the same layer.")
    if model_input is None:
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        device = p.device if p is not None else torch.device("cpu")
        model_input = torch.zeros(1, 3, 224, 224, dtype=dtype, device=device)
    inputs = model_input if isinstance(model_input, tuple) else (model_input,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise InputTypeError("model_input must be a tensor or a tuple of tensors.")
    if inputs[0].dim() == 0 or inputs[0].shape[0] != 1:
        raise InputError(f"model_input must have batch size 1, got shape {tuple(inputs[0].shape)}.")

    got: dict[str, Tensor] = {}

    def hook1(_m: nn.Module, _args: Any, out: Any) -> Tensor | None:
        if "a1" in got:
            return None
        if not isinstance(out, Tensor) or not out.is_floating_point():
            raise InputError("target1's output must be one floating-point tensor.")
        leaf = out.detach().requires_grad_(True)
        got["a1"] = leaf
        return leaf.clone()  # a later in-place op (ReLU(inplace=True)) must not touch the leaf

    def hook2(_m: nn.Module, _args: Any, out: Any) -> None:
        if not isinstance(out, Tensor):
            raise InputError("target2's output must be one tensor.")
        got["a2"] = out
        raise _Stop

    with (
        registered(
            lambda: layer1.register_forward_hook(hook1),
            lambda: layer2.register_forward_hook(hook2),
        ),
        torch.enable_grad(),
    ):
        try:
            model(*inputs)
        except _Stop:
            pass
    if "a1" not in got:
        raise InputError("target1 did not run before target2 in the model's forward.")
    if "a2" not in got:
        raise InputError("target2 never ran in the model's forward.")
    a1, a2 = got["a1"], got["a2"]
    if a2.dim() == 4:
        centre = a2[0, :, (a2.shape[2] - 1) // 2, (a2.shape[3] - 1) // 2]
    elif a2.dim() == 2:
        centre = a2[0]
    else:
        raise InputError(f"target2's output must be 2-D or 4-D, got {tuple(a2.shape)}.")
    if not centre.requires_grad:
        raise InputError("target2 does not depend on target1 (is target1 below target2?).")

    rows = []
    for j in range(centre.shape[0]):
        (g,) = torch.autograd.grad(centre[j], a1, retain_graph=True, allow_unused=True)
        if g is None:
            raise InputError("target2 does not depend on target1 (is target1 below target2?).")
        rows.append(g[0])
    weights = torch.stack(rows)  # (C2, C1, H, W) or (C2, C1)
    if crop_shape is not None and crop_func is not None:
        if weights.dim() != 4:
            raise InputError("crop_shape needs a 4-D (spatial) target1 output.")
        weights = crop_func(weights, crop_shape)
    return weights


def max2avg_pool2d(model: nn.Module) -> ReplacedLayers:
    """Replace every ``nn.MaxPool2d`` by the ``nn.AvgPool2d`` with the same window, in place, so
    that the model is linear there when computing expanded weights. Padding is zeros (counted in
    the average), as in optim-wip after it maps max pooling's ``-inf`` padding back to zero.
    Returns the :class:`~llmattr.optim.models.ReplacedLayers` handle that restores them.
    """
    return replace_layers(model, nn.MaxPool2d, nn.AvgPool2d, transfer_vars=True)
