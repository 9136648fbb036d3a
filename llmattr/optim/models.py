"""Model surgery for feature visualization: redirected ReLUs and layer replacement.

A ReLU whose inputs are all negative passes no gradient, so an input optimization that starts
from a random image can stay blank forever (the FAQ's "poor renders" answer).
:class:`RedirectedReLU` computes ``relu`` in the forward pass and, for a sample whose ReLU
gradient is zero everywhere, lets the incoming gradient through unchanged instead.
:func:`replace_layers` swaps every layer of one class for another, in place as optim-wip does, and
returns a :class:`ReplacedLayers` handle that puts the original modules back (``.restore()``, or
use it as a ``with`` block).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError

__all__ = [
    "MaxPool2dRelaxed",
    "RedirectedReLU",
    "RedirectedReluLayer",
    "ReplacedLayers",
    "SkipLayer",
    "replace_layers",
    "skip_layers",
]


class _RedirectedReLUFunction(torch.autograd.Function):
    """``relu`` whose gradient falls back to the identity for samples where ReLU's is all zero."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = grad_output * (x > 0).to(grad_output.dtype)
        if relu_grad.dim() < 2:  # no batch dimension: the whole tensor is one sample
            return grad_output.clone() if not bool(relu_grad.any()) else relu_grad
        dead = ~relu_grad.reshape(relu_grad.shape[0], -1).any(dim=1)  # (N,)
        dead = dead.reshape((-1,) + (1,) * (relu_grad.dim() - 1))
        return torch.where(dead, grad_output, relu_grad)


class RedirectedReLU(nn.Module):
    """ReLU with a redirected gradient (Lucid's ``redirected_relu_grad``; optim-wip's layer).

    Forward: exactly ``torch.relu(x)``. Backward, per sample (first dimension; a 0-D or 1-D input
    is one sample): ReLU's own gradient ``grad * (x > 0)`` when it is non-zero somewhere in the
    sample, else the incoming gradient unchanged, so that the optimization can leave a region
    where every unit is dead. optim-wip decides once for the whole batch; deciding per sample
    keeps one live render in a batch from blocking the redirect for the dead ones.

    Shapes: any ``(N, ...)`` in, the same shape out.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Extra arguments (``inplace=True`` from an ``nn.ReLU``) are accepted and ignored.
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return _RedirectedReLUFunction.apply(x)


RedirectedReluLayer = RedirectedReLU
"""optim-wip's name for the module form of :class:`RedirectedReLU`."""


class MaxPool2dRelaxed(nn.Module):
    """Max pooling in the forward pass (up to rounding), average pooling's gradient backward.

    The relaxed gradient spreads over the whole window instead of one winner, which smooths
    spatial attributions (Carter et al., "Activation Atlas"; Lucid's ``smoothed_maxpool_grad``).
    Arguments as ``nn.MaxPool2d``; shapes ``(N, C, H, W)`` -> ``(N, C, H', W')``.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
        self.avgpool = nn.AvgPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        avg = self.avgpool(x)
        return self.maxpool(x.detach()) + avg - avg.detach()


class SkipLayer(nn.Module):
    """Identity that ignores extra arguments: stands in for a skipped layer (e.g. a ReLU when
    computing expanded weights). The replaced layer must map its input to the same shape."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return x


class ReplacedLayers:
    """What :func:`replace_layers` changed: ``(parent, attribute name, original module)``.

    ``restore()`` puts every original module back (idempotent). Used as a context manager, the
    originals come back when the block exits, also on error.
    """

    def __init__(self, changes: list[tuple[nn.Module, str, nn.Module]]) -> None:
        self.changes = changes

    def __len__(self) -> int:
        return len(self.changes)

    def restore(self) -> None:
        """Put the original modules back where they were."""
        for parent, name, original in reversed(self.changes):
            setattr(parent, name, original)
        self.changes = []

    def __enter__(self) -> ReplacedLayers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _transfer_layer_vars(old: nn.Module, new_cls: type[nn.Module], **kwargs: Any) -> nn.Module:
    """Build ``new_cls`` with the constructor arguments it shares with ``old``'s public attributes
    (``kwargs`` win)."""
    params = inspect.signature(new_cls.__init__).parameters
    names = {
        n
        for n, p in params.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    shared = {k: v for k, v in vars(old).items() if not k.startswith("_") and k in names}
    return new_cls(**{**shared, **kwargs})


def replace_layers(
    model: nn.Module,
    layer1: type[nn.Module] | tuple[type[nn.Module], ...] = nn.ReLU,
    layer2: type[nn.Module] = RedirectedReLU,
    transfer_vars: bool = False,
    **kwargs: Any,
) -> ReplacedLayers:
    """Replace, **in place** (as optim-wip), every submodule that is a ``layer1`` by a new
    ``layer2``.

    Args:
        model: the model to edit; the root module itself is never replaced.
        layer1: the class (or tuple of classes) to replace.
        layer2: the class to build for each replaced module, called as ``layer2(**kwargs)``.
        transfer_vars: also pass the constructor arguments ``layer2`` shares with the old
            module's public attributes (e.g. ``kernel_size`` of a pooling layer).
        **kwargs: extra constructor arguments for ``layer2``.

    Returns:
        A :class:`ReplacedLayers` handle: ``.restore()`` undoes the change, and ``with
        replace_layers(model): ...`` undoes it when the block ends. To keep the original model
        untouched instead, pass ``copy.deepcopy(model)``.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    classes = layer1 if isinstance(layer1, tuple) else (layer1,)
    if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise InputTypeError("layer1 must be an nn.Module class or a tuple of them.")
    if not (isinstance(layer2, type) and issubclass(layer2, nn.Module)):
        raise InputTypeError(f"layer2 must be an nn.Module class, got {layer2!r}.")

    changes: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, classes):
                new = (
                    _transfer_layer_vars(child, layer2, **kwargs)
                    if transfer_vars
                    else layer2(**kwargs)
                )
                setattr(parent, name, new)
                changes.append((parent, name, child))
            else:
                visit(child)

    try:
        visit(model)
    except Exception:
        ReplacedLayers(changes).restore()
        raise
    return ReplacedLayers(changes)


def skip_layers(
    model: nn.Module, layers: type[nn.Module] | Iterable[type[nn.Module]]
) -> ReplacedLayers:
    """Replace every submodule of the given class(es) by a :class:`SkipLayer` (identity), in
    place; e.g. ``skip_layers(model, nn.ReLU)`` linearizes a network for expanded weights.
    Returns the :class:`ReplacedLayers` handle that restores them."""
    classes = (layers,) if isinstance(layers, type) else tuple(layers)
    if not classes:
        raise InputError("skip_layers needs at least one layer class.")
    return replace_layers(model, classes, SkipLayer)
