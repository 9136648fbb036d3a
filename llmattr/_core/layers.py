"""Cutting a model at a layer: read a layer's activations, or run the model with them replaced.

Layer attributions are primary algorithms applied to the function "layer activation → model
output" (:class:`LayerCut`); neuron attributions to "input → one neuron's value"
(:func:`neuron_function`). Both are built here from forward hooks that live only inside ``with``
blocks.

A layer's *activation* is its output (or, with ``to_input=True``, its positional inputs). When it
is a tuple (as many ``transformers`` layers return), its floating-point tensors are the
activation and everything else passes through untouched. A module that runs several times in one
forward is cut at its **first** call (for T5's shared embedding: the encoder's), and later calls
run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .forward import grad_options
from .hooks import registered
from .targets import Target

__all__ = [
    "LayerCut",
    "NeuronSelector",
    "check_device_ids",
    "check_layers",
    "neuron_function",
    "neuron_index",
    "select_neuron",
]

NeuronSelector = int | tuple[int | slice, ...] | Callable[[Any], Tensor]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed activation exists."""


def _tensors_of(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, Tensor) and v.is_floating_point()]
    return []


def _with_tensors(value: Any, tensors: Sequence[Tensor]) -> Any:
    """``value`` with its floating tensors replaced, in order, by ``tensors``."""
    if isinstance(value, Tensor):
        return tensors[0]
    it = iter(tensors)
    rebuilt = [next(it) if isinstance(v, Tensor) and v.is_floating_point() else v for v in value]
    return type(value)(rebuilt) if isinstance(value, tuple) else rebuilt


def check_layers(model: Any, layers: Sequence[nn.Module]) -> None:
    """Refuse layers that are not modules, or not part of ``model`` when it is a module."""
    for layer in layers:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"A layer must be an nn.Module, got {type(layer).__name__}.")
    if isinstance(model, nn.Module):
        known = {id(m) for m in model.modules()}
        for layer in layers:
            if id(layer) not in known:
                raise ValueError(
                    f"The layer {type(layer).__name__} is not a submodule of the model "
                    f"({type(model).__name__}); pass a module reached from the model, e.g. "
                    "model.encoder.layer[3]."
                )


def _replicas_message(where: str) -> str:
    return (
        f"Layer {where} runs in torch.nn.DataParallel replicas on several devices, each on a "
        "slice of the batch; layer and neuron attribution does not gather activations from "
        "replicas. Attribute through the wrapped model instead: pass `model.module` (and "
        "layers reached from it) on one device; to use several GPUs, split the inputs between "
        "processes (e.g. with accelerate)."
    )


def check_device_ids(
    forward_func: Any, layers: Sequence[nn.Module], device_ids: Sequence[int] | None
) -> None:
    """Refuse, before any work, layers that would run in DataParallel replicas on several
    devices.

    A DataParallel model on CPU or on one device just calls its module, and works unchanged.
    ``device_ids`` (Captum's argument, for a forward function that wraps a DataParallel model)
    naming several devices is refused for the same reason; a replica met during a forward is
    refused too (see :class:`LayerCut`).
    """
    if device_ids is not None and len(device_ids) > 1:
        raise NotImplementedError(_replicas_message(f"with device_ids={list(device_ids)}"))
    if not isinstance(forward_func, nn.Module):
        return
    for module in forward_func.modules():
        if isinstance(module, nn.DataParallel) and len(module.device_ids) > 1:
            inside = {id(m) for m in module.modules()}
            for layer in layers:
                if id(layer) in inside:
                    name = type(layer).__name__
                    raise NotImplementedError(
                        _replicas_message(f"{name} (device_ids={module.device_ids})")
                    )


class LayerCut:
    """The model seen from one or several layers.

    Args:
        forward_func: the model or forward function.
        layers: the modules to cut at.
        to_input: cut at the layers' positional inputs instead of their outputs.
    """

    def __init__(
        self, forward_func: Callable[..., Any], layers: Sequence[nn.Module], to_input: bool = False
    ) -> None:
        check_layers(forward_func, layers)
        self.forward_func = forward_func
        self.layers = list(layers)
        self.to_input = to_input

    def _registrations(self, on_call: Callable[[int, Any], Any]) -> list[Callable[[], Any]]:
        """Hooks calling ``on_call(layer index, activation)`` at each layer's first call; the
        return value, when not None, replaces the activation."""
        seen: set[int] = set()

        def hook(index: int, module: nn.Module, args: tuple[Any, ...], output: Any = None) -> Any:
            if module is not self.layers[index]:
                # a copy carrying our hook: a DataParallel replica, running on part of the batch
                raise NotImplementedError(_replicas_message(self._describe(self.layers[index])))
            if index in seen:
                return None
            seen.add(index)
            return on_call(index, args if self.to_input else output)

        regs: list[Callable[[], Any]] = []
        for i, layer in enumerate(self.layers):
            if self.to_input:
                # first among the layer's pre-hooks: a backward rule's pre-hook (e.g. DeepLift's
                # stash of an in-place ReLU's input) then sees the tensor that we substitute
                regs.append(
                    partial(layer.register_forward_pre_hook, partial(hook, i), prepend=True)
                )
            else:
                regs.append(partial(layer.register_forward_hook, partial(hook, i)))
        return regs

    def activations(
        self,
        inputs: tuple[Any, ...],
        args: tuple[Any, ...] = (),
        *,
        stop_early: bool = True,
        grad: bool = False,
    ) -> tuple[list[tuple[Tensor, ...]], Any]:
        """Run the model and return each layer's activation (and the model output, or None
        when the forward was stopped after the last layer ran).

        Returns:
            ``(activations, output)``: per layer a tuple of tensors ``(batch, ...)``.
        """
        found: dict[int, tuple[Tensor, ...]] = {}

        def record(index: int, value: Any) -> None:
            tensors = _tensors_of(value)
            if self.to_input and not (stop_early and len(found) + 1 == len(self.layers)):
                # the layer (e.g. ReLU(inplace=True)) may overwrite its input once it runs
                tensors = [t.clone() for t in tensors]
            found[index] = tuple(tensors)
            if stop_early and len(found) == len(self.layers):
                raise _StopForward

        output = None
        with torch.set_grad_enabled(grad), registered(*self._registrations(record)):
            try:
                output = self.forward_func(*inputs, *args)
            except _StopForward:
                pass
        self._check_ran(found)
        self._check_tensors(found)
        return [found[i] for i in range(len(self.layers))], output

    def _check_ran(self, ran: Any) -> None:
        missing = [m for i, m in enumerate(self.layers) if i not in ran]
        if missing:
            names = ", ".join(self._describe(m) for m in missing)
            raise RuntimeError(
                f"Layer(s) {names} never ran in the forward "
                "pass, so there is nothing to attribute to: check that the layer belongs to the "
                f"path the inputs take.{self._weight_sharers(missing)}"
            )

    def _describe(self, module: nn.Module) -> str:
        """``Linear ('encoder.proj')``: the type and, when the model is a module, the name."""
        if isinstance(self.forward_func, nn.Module):
            for name, m in self.forward_func.named_modules():
                if m is module:
                    return f"{type(module).__name__} ('{name or '<model>'}')"
        return type(module).__name__

    def _weight_sharers(self, missing: list[nn.Module]) -> str:
        """Name modules that share a missing layer's weights (e.g. T5's ``shared`` embedding,
        which ``transformers`` 5 does not call: ``encoder.embed_tokens`` is)."""
        if not isinstance(self.forward_func, nn.Module):
            return ""
        pointers = {p.data_ptr() for m in missing for p in m.parameters(recurse=False)}
        names = [
            name
            for name, module in self.forward_func.named_modules()
            if module not in missing
            and any(p.data_ptr() in pointers for p in module.parameters(recurse=False))
        ]
        return (
            f" Modules sharing its weights that may run instead: {', '.join(names)}."
            if names
            else ""
        )

    def _check_tensors(self, found: dict[int, tuple[Tensor, ...]]) -> None:
        for i, tensors in found.items():
            if not tensors:
                where = "positional inputs" if self.to_input else "output"
                raise TypeError(
                    f"The {where} of layer {type(self.layers[i]).__name__} holds no floating-point "
                    "tensor to attribute to."
                )

    def check_floating(self, index: int, tensors: Sequence[Tensor]) -> None:
        """Refuse an activation that cannot be differentiated (e.g. token ids)."""
        for t in tensors:
            if not t.is_floating_point():
                where = "positional inputs" if self.to_input else "output"
                raise TypeError(
                    f"The {where} of layer {self._describe(self.layers[index])} is a {t.dtype} "
                    "tensor, and gradient methods need floating-point activations to "
                    "differentiate. Choose a layer with a floating output instead; for token "
                    "ids, the embedding layer that consumes them (e.g. "
                    "model.get_input_embeddings())."
                )

    def gradients(
        self,
        inputs: tuple[Any, ...],
        target: Target,
        args: tuple[Any, ...] = (),
        grad_kwargs: dict[str, Any] | None = None,
    ) -> tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]], Tensor]:
        """Gradients of the selected output with respect to each layer's activation.

        Nothing upstream of the first layer to run is differentiated. ``grad_kwargs`` go to
        ``torch.autograd.grad`` (see :func:`~llmattr._core.forward.grad_options`).

        Returns:
            ``(grads, activations, outputs)``: per layer the gradients and activations (tuples
            of ``(batch, ...)`` tensors) and the selected outputs ``(batch,)``, detached.
        """
        leaves: dict[int, tuple[Tensor, ...]] = {}
        acts: dict[int, tuple[Tensor, ...]] = {}

        def as_leaves(index: int, value: Any) -> Any:
            tensors = _tensors_of(value)
            self.check_floating(index, tensors)
            if not acts:
                # the first layer to run needs nothing upstream: its activation becomes the
                # leaf, and the forward goes on with a copy (so that in-place operations
                # downstream cannot touch a leaf that requires grad)
                leaves[index] = tuple(t.detach().requires_grad_() for t in tensors)
                acts[index] = tuple(leaf.detach() for leaf in leaves[index])
                return _with_tensors(value, [leaf.clone() for leaf in leaves[index]])
            # a later layer keeps its graph, so an earlier layer's gradient still flows through
            # it: activation + a zero leaf, whose gradient is the activation's
            # (a copy: the layer may overwrite its input in place)
            acts[index] = tuple(
                t.detach().clone() if self.to_input else t.detach() for t in tensors
            )
            leaves[index] = tuple(torch.zeros_like(t, requires_grad=True) for t in tensors)
            return _with_tensors(value, [t + z for t, z in zip(tensors, leaves[index])])

        with torch.enable_grad(), registered(*self._registrations(as_leaves)):
            output = self.forward_func(*inputs, *args)
            self._check_ran(leaves)
            self._check_tensors(leaves)
            batch = next(t for t in inputs if isinstance(t, Tensor)).shape[0]
            selected = target.select(output, batch)
            flat = [t for i in range(len(self.layers)) for t in leaves[i]]
            grads = torch.autograd.grad(selected.sum(), flat, **grad_options(grad_kwargs))
        it = iter(torch.zeros_like(t) if g is None else g for g, t in zip(grads, flat))
        per_layer = [tuple(next(it) for _ in leaves[i]) for i in range(len(self.layers))]
        return per_layer, [acts[i] for i in range(len(self.layers))], selected.detach()

    @contextmanager
    def replaced(self, values: Sequence[tuple[Tensor, ...]]) -> Iterator[None]:
        """Inside the block, each layer's first call returns ``values[i]`` instead."""
        done: set[int] = set()

        def swap(index: int, value: Any) -> Any:
            done.add(index)
            # a leaf that requires grad goes on as a copy: an in-place operation downstream
            # (e.g. ReLU(inplace=True)) would otherwise be refused by autograd
            new = [v.clone() if v.is_leaf and v.requires_grad else v for v in values[index]]
            if self.to_input:
                return _with_tensors(value, new)
            old = _tensors_of(value)
            for a, b in zip(old, new):
                if a.shape != b.shape:
                    raise RuntimeError(
                        f"Layer {type(self.layers[index]).__name__} produced shape "
                        f"{tuple(a.shape)} but the substituted activation has shape "
                        f"{tuple(b.shape)}."
                    )
            return _with_tensors(value, new)

        with registered(*self._registrations(swap)):
            yield
        self._check_ran(done)

    def function(self, sizes: Sequence[int]) -> Callable[..., Any]:
        """``g(*activation_tensors, *inputs, *args)``: the model run with the layers' activations
        given. ``sizes[i]`` is the number of tensors of layer ``i``'s activation; the remaining
        arguments go to the forward function."""

        def g(*all_args: Any) -> Any:
            acts: list[tuple[Tensor, ...]] = []
            rest = all_args
            for n in sizes:
                acts.append(tuple(rest[:n]))
                rest = rest[n:]
            with self.replaced(acts):
                return self.forward_func(*rest)

        return g


# The neuron selectors live in their own module; imported here for the existing import paths.
from .neurons import neuron_function, neuron_index, select_neuron  # noqa: E402
