"""Loss targets and the hooks that capture their activations.

A loss *target* is a module of the model or its dotted name (``"features.3"``, as
``model.named_modules()`` spells it; optim-wip's bracket form ``"features[3]"`` is accepted too).
A name ending in ``":input"`` (or :func:`layer_input` of a module) targets the module's *input*
instead of its output: ``"model.layers.1.mlp.down_proj:input"`` is a gated MLP's neuron vector
``act(gate(x)) * up(x)``, which no module outputs.
:class:`ModuleOutputsHook` records the output of each target during one forward pass; its hooks
exist only inside a ``with`` block, so an exception anywhere in the model or the loss removes them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from .._core.hooks import registered

__all__ = [
    "ModuleOutputsHook",
    "Target",
    "collect_activations",
    "get_model_layers",
    "layer_input",
    "resolve_target",
]

Target = nn.Module | str


def get_model_layers(model: nn.Module) -> list[str]:
    """Dotted names of every submodule of ``model`` (depth first, the order of
    ``named_modules``), each usable as a loss target. The model itself (name ``""``) is left out."""
    return [name for name, _ in model.named_modules() if name]


def _normalize(name: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", name).lstrip(".")


class _InputTap(nn.Module):
    """Stands for the input (first positional tensor) of ``tapped``: a forward hook registered on
    it is a forward *pre*-hook on ``tapped`` called as ``hook(tap, args, input)``, so every hook
    user (capture, checks, early stop) treats the input like an output."""

    def __init__(self, tapped: nn.Module) -> None:
        super().__init__()
        self.__dict__["tapped"] = tapped  # not a submodule: the model's parameters stay its own

    def register_forward_hook(  # type: ignore[override]
        self, hook: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        def pre(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            value = next((v for v in inputs if isinstance(v, Tensor)), None)
            if value is None:
                raise InputTypeError(
                    f"{type(module).__name__} was called without a positional tensor input, so "
                    "its input cannot be a target; target the module's output instead."
                )
            hook(self, inputs, value)

        return self.tapped.register_forward_pre_hook(pre)

    def forward(self, *args: Any) -> Any:
        raise InputError("An input target is not callable; run the model instead.")

    def extra_repr(self) -> str:
        return f"input of {type(self.tapped).__name__}"


_TAPS: weakref.WeakKeyDictionary[nn.Module, _InputTap] = weakref.WeakKeyDictionary()


def layer_input(module: nn.Module) -> nn.Module:
    """A target standing for ``module``'s input (its first positional tensor), usable wherever a
    module target is (losses, :class:`ModuleOutputsHook`, :func:`max_activating_examples`, prompt
    search). The same object comes back for the same module. By name: ``"<name>:input"``."""
    if isinstance(module, _InputTap):
        return module
    if not isinstance(module, nn.Module):
        raise InputTypeError(f"layer_input takes a module, got {type(module).__name__}.")
    tap = _TAPS.get(module)
    if tap is None:
        tap = _TAPS[module] = _InputTap(module)
    return tap


def resolve_target(model: nn.Module, target: Target) -> nn.Module:
    """The module that ``target`` names in ``model``.

    Raises:
        InputError: a name that is not a submodule of ``model`` (the message lists the valid
            names), or a module that is not part of ``model``.
        InputTypeError: neither a module nor a string.
    """
    if isinstance(target, str) and target.endswith(":input"):
        return layer_input(resolve_target(model, target[: -len(":input")]))
    if isinstance(target, _InputTap):
        resolve_target(model, target.tapped)
        return target
    if isinstance(target, str):
        modules = dict(model.named_modules())
        name = _normalize(target)
        if name and name in modules:
            return modules[name]
        valid = ", ".join(repr(n) for n in get_model_layers(model))
        raise InputError(
            f"Loss target {target!r} is not a layer of {type(model).__name__}. "
            f"Valid names: {valid} (append ':input' to target a layer's input)."
        )
    if isinstance(target, nn.Module):
        if not any(m is target for m in model.modules()):
            raise InputError(
                f"Loss target {type(target).__name__} is not a submodule of the model "
                f"({type(model).__name__}); pass a module reached from the model or its name "
                f"(one of {get_model_layers(model)})."
            )
        return target
    raise InputTypeError(
        f"A loss target must be an nn.Module or its dotted name, got {type(target).__name__}."
    )


def _output_tensor(module: nn.Module, output: Any) -> Tensor:
    """The activation of a module: its output, or the first tensor of a tuple/list output."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list):
        for value in output:
            if isinstance(value, Tensor):
                return value
    raise InputTypeError(
        f"{type(module).__name__} returned a {type(output).__name__}; a loss target must "
        "return a tensor (or a tuple whose first tensor is the activation)."
    )


class ModuleOutputsHook:
    """Captures the output of each target module, as a context manager.

    ``with ModuleOutputsHook([m1, m2]) as hook: model(x); acts = hook.consume_outputs()`` gives
    ``{m1: output1, m2: output2}`` (tensors keep their autograd graph). A module that runs several
    times in one forward keeps its **first** output. Hooks are registered on ``__enter__`` and
    removed on ``__exit__``, also when the block raises.
    """

    def __init__(self, target_modules: Iterable[nn.Module]) -> None:
        self._targets: list[nn.Module] = []
        for module in target_modules:
            if not isinstance(module, nn.Module):
                raise InputTypeError(
                    f"ModuleOutputsHook takes modules, got {type(module).__name__}."
                )
            if not any(m is module for m in self._targets):
                self._targets.append(module)
        self.outputs: dict[nn.Module, Tensor | None] = dict.fromkeys(self._targets)
        self._registered: Any = None

    @property
    def targets(self) -> list[nn.Module]:
        """The hooked modules, without duplicates."""
        return list(self._targets)

    @property
    def is_ready(self) -> bool:
        """True once every target has produced an output since the last consume."""
        return all(v is not None for v in self.outputs.values())

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.outputs.get(module) is None:
            self.outputs[module] = _output_tensor(module, output)

    def __enter__(self) -> ModuleOutputsHook:
        self._registered = registered(
            *(lambda m=m: m.register_forward_hook(self._hook) for m in self._targets)
        )
        self._registered.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove_hooks(exc_type, exc, tb)

    def remove_hooks(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Remove every hook now (``__exit__`` calls this); safe to call twice."""
        if self._registered is not None:
            registered_, self._registered = self._registered, None
            registered_.__exit__(exc_type, exc, tb)

    def consume_outputs(self) -> dict[nn.Module, Tensor]:
        """The captured outputs, then forget them (ready for the next forward).

        Raises:
            InputError: a target did not run in the forward pass (its name is given).
        """
        missing = [type(m).__name__ for m, v in self.outputs.items() if v is None]
        if missing:
            self.outputs = dict.fromkeys(self._targets)
            raise InputError(
                f"Loss target layer(s) {missing} never ran in the model's forward pass, so they "
                "have no activation; choose a layer the forward uses."
            )
        outputs: dict[nn.Module, Tensor] = {m: v for m, v in self.outputs.items() if v is not None}
        self.outputs = dict.fromkeys(self._targets)
        return outputs


def collect_activations(
    model: nn.Module,
    targets: Target | Sequence[Target],
    model_input: Tensor | tuple[Tensor, ...] | None = None,
) -> dict[Target, Tensor]:
    """Run ``model(model_input)`` once (without gradients) and return each target's activation.

    Args:
        model: the model.
        targets: a module or dotted name, or a sequence of them.
        model_input: one tensor, or a tuple of positional inputs. Default: zeros
            ``(1, 3, 224, 224)`` in the model's dtype, as optim-wip does.

    Returns:
        ``{target: activation}``, keyed by the targets as given (module or name).
    """
    many = isinstance(targets, list | tuple)
    given: list[Target] = list(targets) if many else [targets]  # type: ignore[arg-type]
    modules = [resolve_target(model, t) for t in given]
    if model_input is None:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        device = param.device if param is not None else None
        model_input = torch.zeros(1, 3, 224, 224, dtype=dtype, device=device)
    args = model_input if isinstance(model_input, tuple) else (model_input,)
    with torch.no_grad(), ModuleOutputsHook(modules) as hook:
        model(*args)
        outputs = hook.consume_outputs()
    return {t: outputs[m] for t, m in zip(given, modules, strict=True)}
