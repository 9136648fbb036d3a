"""Checks of an input optimization's setup, run once before the first optimizer step.

:func:`dry_run` renders the parameterization, applies the transform and runs the model once
without gradients. It turns the usual setup mistakes into an :class:`InputError` that says what
is wrong and how to fix it, before any optimizer step:

- the input's channel count differs from what the first ``Conv``/``Linear`` layer it reaches takes
  (e.g. a 4-channel ``NaturalImage`` into an RGB model);
- the image size does not fit the model (e.g. a ``Linear`` after ``Flatten`` built for another
  size, or an image smaller than a kernel);
- a loss target layer never runs in the forward pass.

The dry run leaves no trace: its hooks exist only inside a ``with`` block, the global RNG and every
``torch.Generator`` held by the parameterization or transform are restored, and so are the model's
buffers (e.g. BatchNorm running statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .._core.hooks import registered

__all__ = ["checked_forward", "dry_run"]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _size_text(image: Tensor) -> str:
    """``"2x3x32x32 (N x C x H x W)"``-style description of the model input."""
    dims = "x".join(str(s) for s in image.shape)
    if image.dim() == 4:
        return f"{dims} (N x C x H x W: a {image.shape[2]}x{image.shape[3]} image)"
    return f"of shape {dims}"


def _expected_size(in_features: int, channels: int) -> str:
    """What a flattening ``Linear``'s ``in_features`` means for a ``channels``-channel image."""
    if channels <= 0 or in_features % channels:
        return f"{in_features} input features"
    area = in_features // channels
    side = math.isqrt(area)
    if side * side == area:
        return f"{in_features} input features (a {side}x{side} image with {channels} channels)"
    return f"{in_features} input features ({channels} channels x H x W with H*W = {area})"


class _FirstLayerCheck:
    """Forward pre-hooks on every Conv/Linear: the first one reached is checked against the
    model input's channels, and a ``Linear`` fed the flattened image against its size."""

    def __init__(self, model: nn.Module, image: Tensor) -> None:
        self.image = image
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
        self.first: tuple[str, nn.Module] | None = None

    def registrations(self) -> list[Callable[[], Any]]:
        return [
            (lambda n=n, m=m: m.register_forward_pre_hook(self._make(n))) for n, m in self.layers
        ]

    def _make(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], Tensor):
                return
            x = args[0]
            first = self.first is None
            if first:
                self.first = (name, module)
            if isinstance(module, nn.Linear):
                self._check_linear(name, module, x, first)
            elif first:
                self._check_conv(name, module, x)

        return hook

    def _check_conv(self, name: str, conv: nn.Module, x: Tensor) -> None:
        image = self.image
        want = conv.in_channels  # type: ignore[attr-defined]
        if x.dim() < 2 or x.shape[1] == want:
            return
        got = x.shape[1]
        if image.dim() >= 2 and image.shape[1] == got and x.shape[2:] == image.shape[2:]:
            size = tuple(image.shape[2:])
            raise InputError(
                f"The input has {got} channels but the model's first layer {name!r} "
                f"({type(conv).__name__}) takes {want}. Build the parameterization with the "
                f"model's channel count, e.g. NaturalImage({size}, channels={want})."
            )

    def _check_linear(self, name: str, linear: nn.Linear, x: Tensor, first: bool) -> None:
        want, got = linear.in_features, x.shape[-1]
        if got == want:
            return
        image = self.image
        flat = image.dim() >= 3 and got == math.prod(image.shape[1:])
        if flat:
            raise InputError(
                f"The model cannot take an input {_size_text(image)}: layer {name!r} (Linear) "
                f"gets the flattened input with {got} features but expects "
                f"{_expected_size(want, image.shape[1])}. Use the image size the model was "
                "built for."
            )
        if first and image.dim() == 2 and image.shape[1] == got:
            raise InputError(
                f"The input has {got} channels (features) but the model's first layer {name!r} "
                f"(Linear) takes {want}; build the parameterization with {want} channels."
            )
        raise InputError(
            f"The model cannot take an input {_size_text(image)}: layer {name!r} (Linear) gets "
            f"{got} features but expects in_features={want}. Use the image size the model was "
            "built for."
        )


def _generators(*modules: Any) -> list[torch.Generator]:
    """Every ``torch.Generator`` held as an attribute by the given modules' submodules."""
    found: list[torch.Generator] = []
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        for sub in module.modules():
            for value in vars(sub).values():
                if isinstance(value, torch.Generator) and all(value is not g for g in found):
                    found.append(value)
    return found


@contextmanager
def _no_trace(model: nn.Module, *others: Any) -> Iterator[None]:
    """Restore the global RNG, the generators held by ``others`` and every buffer on exit."""
    gens = _generators(*others)
    gen_states = [g.get_state() for g in gens]
    buffers = [
        (b, b.detach().clone())
        for m in (model, *others)
        if isinstance(m, nn.Module)
        for b in m.buffers()
    ]
    cuda = sorted(
        {
            p.device.index or 0
            for m in (model, *others)
            if isinstance(m, nn.Module)
            for p in m.parameters()
            if p.device.type == "cuda"
        }
    )
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        for g, state in zip(gens, gen_states, strict=True):
            g.set_state(state)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _render(input_param: nn.Module, transform: Callable[[Tensor], Tensor] | None) -> Tensor:
    image = input_param()
    if not isinstance(image, Tensor):
        raise InputError(
            f"input_param() must return a tensor (the model input), got {type(image).__name__}."
        )
    return transform(image) if transform is not None else image


def checked_forward(
    model: nn.Module, image: Tensor, targets: Sequence[nn.Module], names: Sequence[Any]
) -> Any:
    """``model(image)``, with the setup checks: raises :class:`InputError` for an input the
    model cannot run on, or a target that did not run. Used for an optimization's first forward.

    Args:
        model: the model.
        image: the model input (after the transform), e.g. ``(N, C, H, W)``.
        targets: the loss's target modules (each must run in the forward).
        names: how the user gave each target (dotted name or module), same length as ``targets``.

    Returns:
        The model's output.

    Raises:
        InputError: the input's channel count differs from the first Conv/Linear layer's (both
            counts and the fix are given); the model fails on the image size (the size and, when
            it can be read, what the model expects are given); a target never runs.
    """
    if len(targets) != len(names):
        raise InputError(f"checked_forward: {len(targets)} targets but {len(names)} names.")
    fired: set[int] = set()

    def mark(module: nn.Module, args: Any, output: Any) -> None:
        fired.add(id(module))

    check = _FirstLayerCheck(model, image)
    regs = check.registrations()
    regs += [(lambda m=m: m.register_forward_hook(mark)) for m in targets]
    with registered(*regs):
        try:
            output = model(image)
        except InputError:
            raise
        except (RuntimeError, ValueError, IndexError) as err:
            raise InputError(
                f"The model failed on an input {_size_text(image)}; check the image size "
                f"and channel count the model expects. The model said: {err}"
            ) from err
    missing = [_label(n) for n, m in zip(names, targets, strict=True) if id(m) not in fired]
    if missing:
        raise InputError(
            f"Loss target layer(s) {missing} never ran in the model's forward pass, so they have "
            "no activation; choose a layer the forward uses."
        )
    return output


def dry_run(
    model: nn.Module,
    input_param: nn.Module,
    transform: Callable[[Tensor], Tensor] | None,
    targets: Sequence[nn.Module],
    names: Sequence[Any],
) -> None:
    """One forward of ``transform(input_param())`` through ``model`` without gradients and
    without a trace (global RNG, the generators held by ``input_param``/``transform`` and every
    buffer are restored), with the checks of :func:`checked_forward`.

    Args:
        model, targets, names: as for :func:`checked_forward`.
        input_param: the parameterization; ``input_param()`` is the model input.
        transform: applied to the input before the model, or None.

    Raises:
        InputError: as :func:`checked_forward`, or ``input_param()`` is not a tensor.
    """
    with _no_trace(model, input_param, transform), torch.no_grad():
        checked_forward(model, _render(input_param, transform), targets, names)


def _label(target: Any) -> str:
    return target if isinstance(target, str) else type(target).__name__
