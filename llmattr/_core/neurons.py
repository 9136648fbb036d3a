"""Neuron selectors: which value of a layer's activation a neuron method explains.

A selector is, as in Captum,

- an ``int`` or a tuple of ints/slices indexing the activation after the batch dimension. A tuple
  shorter than the activation's rank is padded with full slices (``(2,)`` on a ``(batch, 4, 5)``
  activation is ``(2, slice(None))``). When the index keeps more than one value per example
  (slices, padding), those values are summed.
- a callable receiving the activation (the tensor, or the tuple of tensors when the layer returns
  several) and returning one value per example ``(batch,)``, any ``(batch, ...)`` shape (summed
  per example), or one scalar for the whole batch.

An int or tuple selector needs a layer with one tensor: for a layer returning several, give a
callable (``lambda out: out[0][:, 3]``), as Captum asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError

__all__ = [
    "NeuronSelector",
    "neuron_function",
    "neuron_index",
    "neuron_weights",
    "select_neuron",
]

NeuronSelector = int | tuple[int | slice, ...] | Callable[[Any], Tensor]


def neuron_index(selector: int | tuple[int | slice, ...]) -> tuple[Any, ...]:
    """The indices after the batch dimension that an int or tuple selector names (unpadded)."""
    if isinstance(selector, bool) or not isinstance(selector, int | tuple | list):
        raise TypeError(
            "neuron_selector must be an int, a tuple of ints/slices or a callable, got "
            f"{selector!r}."
        )
    return (selector,) if isinstance(selector, int) else tuple(selector)


def _padded_index(act: Tensor, selector: int | tuple[int | slice, ...]) -> tuple[Any, ...]:
    """The full index ``(slice(None), *selector, slice(None), ...)`` into ``act``, validated."""
    index = neuron_index(selector)
    if len(index) > act.dim() - 1:
        raise InputError(
            f"neuron_selector {selector!r} has {len(index)} index(es) but the layer's activation "
            f"has shape {tuple(act.shape)}: give at most one index per dimension after the "
            f"batch ({act.dim() - 1})."
        )
    for i, (ix, size) in enumerate(zip(index, act.shape[1:])):
        if isinstance(ix, bool) or not isinstance(ix, int | slice):
            raise TypeError(f"neuron_selector entries must be ints or slices, got {ix!r}.")
        if isinstance(ix, int) and not -size <= ix < size:
            raise IndexError(
                f"neuron_selector index {ix} at dimension {i + 1} is out of range for the "
                f"activation of shape {tuple(act.shape)}."
            )
    return (slice(None), *index)


def select_neuron(activation: tuple[Tensor, ...], selector: NeuronSelector) -> Tensor:
    """The selected neuron's value per example.

    Args:
        activation: the layer's activation tensors, each ``(batch, ...)``.
        selector: see the module docstring.

    Returns:
        ``(batch,)``; or a 0-d tensor when a callable returns one value for the whole batch.
    """
    batch = activation[0].shape[0]
    if callable(selector):
        value = selector(activation[0] if len(activation) == 1 else activation)
        if not isinstance(value, Tensor):
            raise InputError(
                "A callable neuron_selector must return a tensor (one value per example), got "
                f"{type(value).__name__}."
            )
        if value.dim() == 0:
            return value
        if value.shape[0] != batch:
            raise InputError(
                "A callable neuron_selector must return one value per example (a (batch, ...) "
                f"tensor is summed per example, or one scalar): got shape {tuple(value.shape)} "
                f"for a batch of {batch}."
            )
        return value.reshape(batch, -1).sum(1) if value.dim() > 1 else value
    if len(activation) != 1:
        raise InputError(
            f"The layer returns {len(activation)} tensors, so an int or tuple neuron_selector is "
            "ambiguous: give a callable that picks the neuron, e.g. "
            "neuron_selector=lambda out: out[0][:, 3]."
        )
    act = activation[0]
    picked = act[_padded_index(act, selector)]
    return picked.reshape(batch, -1).sum(1) if picked.dim() > 1 else picked


def neuron_weights(activation: tuple[Tensor, ...], selector: NeuronSelector) -> tuple[Tensor, ...]:
    """How much each activation element counts in the selected value: ``∂ select / ∂ activation``
    per tensor (ones at the selected neurons for an int/tuple selector), detached.

    ``activation`` must be part of an autograd graph or be leaves that require grad.
    """
    with torch.enable_grad():
        value = select_neuron(activation, selector)
        if not value.requires_grad:
            return tuple(torch.zeros_like(a) for a in activation)
        grads = torch.autograd.grad(value.sum(), activation, retain_graph=True, allow_unused=True)
    return tuple(
        torch.zeros_like(a) if g is None else g.detach() for g, a in zip(grads, activation)
    )


def neuron_function(
    forward_func: Callable[..., Any],
    layer: nn.Module,
    selector: NeuronSelector,
    to_input: bool = False,
    floating: bool = False,
) -> Callable[..., Tensor]:
    """``h(*inputs, *args)``: the selected neuron's value per example, ``(batch,)``; the forward
    stops as soon as the layer has run. With ``floating`` (gradient methods), an integer
    activation is refused with a TypeError, and a callable's single scalar for the whole batch is
    spread evenly over the examples, so that gradients are those of the scalar (as in Captum)."""
    from .layers import LayerCut  # layers imports this module back

    cut = LayerCut(forward_func, [layer], to_input)

    def h(*args: Any) -> Tensor:
        (activation,), _ = cut.activations(args, grad=torch.is_grad_enabled())
        if floating:
            cut.check_floating(0, activation)
        value = select_neuron(activation, selector)
        if floating and value.dim() == 0:
            batch = activation[0].shape[0]
            return value.expand(batch) / batch
        return value

    return h
