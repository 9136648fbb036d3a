"""Hooks that live exactly as long as a ``with`` block.

Nothing in llmattr registers a hook outside these context managers, so an exception raised anywhere
inside the block (in the model, in a rule, in the user's forward) still removes every hook.

Two building blocks:

* :func:`registered` runs registration callables and removes their handles on exit.
* :func:`replace_outputs` substitutes the output of chosen modules by a function of their input
  and output. Backward rules (DeepLift multipliers, guided backprop, LRP) are written this way:
  the replacement has the same forward value and routes the gradient the way the rule says, with
  :func:`route_gradient` or a detached-difference trick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

OutputRule = Callable[[nn.Module, Tensor, Tensor], Tensor]
BackwardFn = Callable[[Tensor, Tensor, Tensor], Tensor]

__all__ = ["BackwardFn", "OutputRule", "registered", "replace_outputs", "route_gradient"]


@contextmanager
def registered(*registrations: Callable[[], RemovableHandle]) -> Iterator[None]:
    """Call each registration (e.g. ``lambda: m.register_forward_hook(f)``); remove all on exit."""
    with ExitStack() as stack:
        for register in registrations:
            handle = register()
            stack.callback(handle.remove)
        yield


class _RoutedGrad(torch.autograd.Function):
    """Forward: ``y``. Backward: the gradient w.r.t. ``x`` is ``backward_fn(x, y, grad_y)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, backward_fn: BackwardFn) -> Tensor:
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, None, None]:
        x, y = ctx.saved_tensors
        return ctx.backward_fn(x, y, grad_y), None, None


def route_gradient(x: Tensor, y: Tensor, backward_fn: BackwardFn) -> Tensor:
    """Return a tensor equal to ``y`` whose gradient flows to ``x`` as ``backward_fn`` says.

    The module's own backward is bypassed: ``y`` is detached, and ``backward_fn(x, y, grad_y)``
    gives the gradient with respect to ``x`` (same shape as ``x``).
    """
    return _RoutedGrad.apply(x, y.detach(), backward_fn)


def _first_tensor(args: tuple[Any, ...], module: nn.Module) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        raise TypeError(
            f"{type(module).__name__} was called without a tensor as its first argument; "
            "backward rules apply to modules that map one tensor to one tensor."
        )
    return args[0]


@contextmanager
def replace_outputs(
    rules: Mapping[nn.Module, OutputRule],
    *,
    single_use: str | None = None,
) -> Iterator[None]:
    """Replace each module's output by ``rule(module, input, output)`` inside the block.

    Modules with ``inplace=True`` (``nn.ReLU(inplace=True)``) still overwrite an intermediate
    input, so a model that relies on that aliasing computes what it always does; the rule is given
    a copy of the input taken before the call. A model input (a leaf tensor) is never overwritten:
    the module gets a copy. (Gradients that reach the overwritten tensor through another
    path use the module's ordinary backward, and the convergence delta shows it.)

    Args:
        rules: module → rule; the rule returns the tensor the rest of the model sees.
        single_use: when set, a module that runs twice in one forward raises an error naming
            this method (e.g. DeepLift, whose multipliers assume one call per module).
    """
    calls: dict[nn.Module, int] = {}
    stashed: dict[nn.Module, list[Tensor]] = {}
    # modules whose rule is running: a rule may call its module again (e.g. with modified
    # weights), and that inner call must be the plain module
    running: set[nn.Module] = set()

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if module in running:
            return None
        if single_use is not None:
            calls[module] = calls.get(module, 0) + 1
            if calls[module] > 1:
                raise RuntimeError(
                    f"{single_use}: module {type(module).__name__} "
                    "runs more than once in one forward pass, so its multipliers are ambiguous. "
                    "Give each use its own module instance (e.g. self.relu1, self.relu2)."
                )
        if getattr(module, "inplace", False):
            x = _first_tensor(args, module)
            if x.is_leaf:
                # an input of the model: overwriting it would break autograd (and could change
                # the caller's tensor), so the module works on a copy
                stashed.setdefault(module, []).append(x)
                return (x.clone(), *args[1:])
            # the module overwrites an intermediate tensor, and the model may rely on that
            # aliasing; keep a copy (with its autograd history) so the rule sees the input
            stashed.setdefault(module, []).append(x.clone())
        return None

    def forward_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor | None:
        if module in running:
            return None
        x = stashed[module].pop() if getattr(module, "inplace", False) else None
        if x is None:
            x = _first_tensor(args, module)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned a {type(output).__name__}; backward rules apply "
                "to modules that return one tensor."
            )
        running.add(module)
        try:
            return rules[module](module, x, output)
        finally:
            running.discard(module)

    registrations: list[Callable[[], RemovableHandle]] = []
    for module in rules:
        registrations.append(partial(module.register_forward_pre_hook, pre_hook))
        registrations.append(partial(module.register_forward_hook, forward_hook))
    with registered(*registrations):
        yield
