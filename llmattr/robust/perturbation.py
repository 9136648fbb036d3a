"""The base of every attack, and what the gradient attacks share.

:class:`Perturbation` is Captum's base class: an attack is called like its ``perturb`` method. The
functions below are the pieces FGSM and PGD are made of, validated once at the boundary: checking
inputs (floating point, since token ids have no gradient), masks and step sizes, the gradient of
the attack's loss, and the signed-gradient step itself.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .._core.inputs import expand_args, format_additional_args, format_inputs
from .._core.targets import normalize_target

__all__ = [
    "Perturbation",
    "attack_inputs",
    "check_amount",
    "format_masks",
    "forward_each",
    "loss_gradients",
    "sign_step",
]


class Perturbation:
    """Base class of perturbations and attacks: ``attack(...)`` is ``attack.perturb(...)``.

    Subclasses implement ``perturb(inputs, ...)``, returning perturbed inputs of the same form
    (a tensor, or a tuple of tensors, each of its input's shape).
    """

    def perturb(self, *args: Any, **kwargs: Any) -> Any:
        """Return the perturbed inputs; implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} does not implement perturb().")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.perturb(*args, **kwargs)


def attack_inputs(inputs: Any, method: str) -> tuple[tuple[Tensor, ...], bool]:
    """``(tensors, was_tuple)`` for a gradient attack, refusing integer tensors (token ids)."""
    tensors, was_tuple = format_inputs(inputs)
    for i, t in enumerate(tensors):
        if not t.is_floating_point():
            raise InputTypeError(
                f"{method} perturbs inputs along their gradient, but input {i} has dtype "
                f"{t.dtype}. "
                "Integer inputs such as token ids have no gradient and cannot be perturbed by a "
                "small amount: attack the embedding layer's output instead (llmattr.robust."
                "EmbeddingPGD / EmbeddingFGSM perturb a language model's input embeddings, or "
                "pass model.get_input_embeddings()(ids) as inputs to a forward that takes "
                "inputs_embeds)."
            )
    return tensors, was_tuple


def check_amount(value: Any, name: str, per_example: bool = False) -> Any:
    """A finite real number >= 0 (epsilon, radius, step size) as a float; with
    ``per_example``, also a tensor of such numbers (e.g. ``(N, 1)``, one per example, as Captum
    broadcasts it against the inputs), returned detached."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    elif per_example and isinstance(value, Tensor):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise InputError(f"{name} as a tensor must hold finite floating-point numbers.")
        if bool((value < 0).any()):
            raise InputError(f"{name} must be >= 0 everywhere, got a minimum of {value.min()}.")
        return value.detach()
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InputTypeError(f"{name} must be a real number, got {type(value).__name__}.")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value}.")
    return float(value)


def format_masks(mask: Any, inputs: tuple[Tensor, ...]) -> tuple[Tensor | float, ...]:
    """One mask per input: ``1`` (perturb everything) when ``mask`` is None.

    A mask is a number or a tensor that broadcasts to its input's shape without enlarging it
    (e.g. ``(1, C, H, W)`` for inputs ``(N, C, H, W)``); it multiplies the step, so 0 freezes an
    element and 1 lets it move.
    """
    if mask is None:
        return (1,) * len(inputs)
    masks = mask if isinstance(mask, tuple | list) else (mask,)
    if len(masks) != len(inputs):
        raise InputError(
            f"mask has {len(masks)} element(s) for {len(inputs)} input(s); pass one mask per input."
        )
    out: list[Tensor | float] = []
    for i, (m, x) in enumerate(zip(masks, inputs)):
        if isinstance(m, numbers.Real) and not isinstance(m, bool):
            out.append(m)
            continue
        if not isinstance(m, Tensor):
            raise InputTypeError(f"mask[{i}] is a {type(m).__name__}; a mask must be a tensor.")
        try:
            fits = torch.broadcast_shapes(m.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise InputError(
                f"mask[{i}] has shape {tuple(m.shape)}, which does not match input {i} of shape "
                f"{tuple(x.shape)}; a mask has the input's shape (or broadcasts to it, e.g. "
                f"{(1, *tuple(x.shape[1:]))})."
            )
        out.append(m.to(x.device))
    return tuple(out)


def loss_gradients(
    forward_func: Callable[..., Any],
    loss_func: Callable[..., Tensor] | None,
    inputs: tuple[Tensor, ...],
    target: Any,
    additional_forward_args: Any,
) -> tuple[Tensor, ...]:
    """Gradient of the summed attack loss with respect to each input (same shapes).

    The loss is ``loss_func(forward_func(*inputs, *args), target)``, or ``-log`` of the target's
    output when ``loss_func`` is None (the model returns probabilities). The inputs are fresh
    leaves: the caller's tensors and their ``requires_grad`` are untouched.
    """
    args = format_additional_args(additional_forward_args)
    picked = None if loss_func is not None else normalize_target(target, inputs[0].shape[0])
    with torch.enable_grad():
        leaves = tuple(x.detach().requires_grad_() for x in inputs)
        outputs = forward_func(*leaves, *args)
        if picked is None:
            loss = loss_func(outputs, target)  # type: ignore[misc]
        else:
            loss = -torch.log(picked.select(outputs, leaves[0].shape[0]))
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            raise RuntimeError(
                "The attack's loss does not depend on the inputs through differentiable "
                "operations; check that the forward function uses its inputs and does not run "
                "under torch.no_grad()."
            )
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))


def sign_step(
    inp: Tensor,
    grad: Tensor,
    epsilon: float | Tensor,
    targeted: bool,
    mask: Tensor | float,
    zero_thresh: float,
) -> Tensor:
    """``inp ± epsilon * sign(grad) * mask`` where ``|grad| > zero_thresh``, else ``inp``.

    Up the loss for an untargeted attack, down for a targeted one. Shape of ``inp``.
    """
    multiplier = -1 if targeted else 1
    return torch.where(
        grad.abs() > zero_thresh, inp + multiplier * epsilon * torch.sign(grad) * mask, inp
    ).detach()


def _batch_size(item: Any) -> int | None:
    """Examples in an attacked input: a tensor's dimension 0, or that of a tuple's first tensor;
    None for anything that cannot be concatenated (text, images, mixed tuples)."""
    if isinstance(item, Tensor):
        return item.shape[0] if item.dim() > 0 else None
    if isinstance(item, tuple | list) and item and all(isinstance(t, Tensor) for t in item):
        return _batch_size(item[0])
    return None


def _shapes(item: Any) -> tuple[Any, ...]:
    """The shapes past dimension 0 (per tensor of a tuple): items concatenate when they agree."""
    if isinstance(item, Tensor):
        return tuple(item.shape[1:])
    return tuple(tuple(t.shape[1:]) for t in item)


def _concat(items: list[Any]) -> Any:
    if isinstance(items[0], Tensor):
        device = items[0].device
        return torch.cat([t.to(device) for t in items])
    return tuple(_concat([item[i] for item in items]) for i in range(len(items[0])))


def _rows(output: Any, start: int, stop: int) -> Any:
    if isinstance(output, tuple | list):
        return type(output)(_rows(o, start, stop) for o in output)
    return output[start:stop]


def forward_each(forward_func: Callable[..., Any], items: list[Any], args: tuple[Any, ...]) -> Any:
    """``forward_func(item, *args)`` for every item, in one forward when they can be stacked.

    Items that are tensors (or tuples of tensors) of the same shapes, batch size ``n``, are
    concatenated along dimension 0 and run together, the batch-sized tensors among ``args``
    repeated to match; each item's output is its ``n`` rows of the joint output (of each tensor
    of a tuple output). Anything else (strings, images, text inputs, token ids of different
    lengths) runs one item at a time. Each item is passed as one argument, as Captum does.

    Returns:
        A list with one output per item.
    """
    sizes = [_batch_size(item) for item in items]
    if len(items) == 1 or None in sizes or len(set(sizes)) > 1:
        return [forward_func(item, *args) for item in items]
    if any(type(i) is not type(items[0]) or _shapes(i) != _shapes(items[0]) for i in items):
        return [forward_func(item, *args) for item in items]
    n = sizes[0]
    assert n is not None
    output = forward_func(_concat(items), *expand_args(args, n, len(items), "repeat"))
    return [_rows(output, i * n, (i + 1) * n) for i in range(len(items))]
