"""Render many channels in one batched optimization, and save renders as PNG files and grids.

:func:`render_channels` optimizes a batch of images, image ``k`` driven by
``ChannelActivation(target, channel_k, batch_index=k)``; the losses are summed, so each image's
gradient comes from its own channel only and the whole layer renders in one run (Adam's update is
elementwise, so the images do not interact). Every image of restart ``r`` starts from the random
start that the parameterization draws for batch 1 with seed ``seed + r``, whatever the other
channels are: a channel's render does not depend on which channels share its batch.

Saving uses Pillow (no matplotlib needed): 8-bit PNG, values ``round(clip(x, 0, 1) * 255)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from .image_tensor import ImageTensor
from .images import ImageParameterization
from .layers import ModuleOutputsHook, resolve_target
from .loss import ChannelActivation, Target, sum_loss_list
from .natural_image import NaturalImage
from .optimization import InputOptimization, model_dtype
from .optimization import n_steps as _stop_after

__all__ = ["image_grid", "render_channels", "save_grid", "save_png"]


def _batched_start(
    parameterization: type[ImageParameterization],
    size: tuple[int, int],
    input_channels: int,
    n_channels: int,
    seeds: Sequence[int],
) -> ImageParameterization:
    """One parameterization of batch ``len(seeds) * n_channels`` whose images ``r * n_channels
    ... (r + 1) * n_channels - 1`` all hold the batch-1 random start of seed ``seeds[r]``."""
    batch = len(seeds) * n_channels
    image = parameterization(size=size, channels=input_channels, batch=batch)
    singles = [
        dict(
            parameterization(
                size=size,
                channels=input_channels,
                batch=1,
                generator=torch.Generator().manual_seed(int(s)),
            ).named_parameters()
        )
        for s in seeds
    ]
    with torch.no_grad():
        for name, param in image.named_parameters():
            for r, single in enumerate(singles):
                one = single[name]
                if param.dim() == 0 or param.shape[0] != batch or one.shape[0] != 1:
                    raise InputError(
                        f"render_channels needs a parameterization whose parameters are batched "
                        f"along dim 0; {parameterization.__name__}.{name} has shape "
                        f"{tuple(param.shape)} for batch {batch}."
                    )
                param[r * n_channels : (r + 1) * n_channels] = one.expand_as(
                    param[r * n_channels : (r + 1) * n_channels]
                )
    return image


def render_channels(
    model: nn.Module,
    target: Target,
    channels: Sequence[int],
    size: int | tuple[int, int] = (64, 64),
    n_steps: int = 128,
    lr: float = 0.05,
    transform: nn.Module | Callable[[Tensor], Tensor] | None = None,
    input_channels: int = 3,
    parameterization: type[ImageParameterization] = NaturalImage,
    seed: int = 0,
    restarts: int = 1,
    return_activations: bool = False,
    max_batch: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Render one image per channel of ``target`` in a single batched optimization.

    Args:
        model: the model (put it in ``eval()`` mode: batch-dependent layers such as training-mode
            BatchNorm couple the images).
        target: the layer, a module or its dotted name; its output is ``(N, C, H', W')`` or
            ``(N, C)``.
        channels: the channel indices to render (repeats allowed).
        size: the image size ``(H, W)`` (or an int for a square).
        n_steps: optimizer steps (Adam with learning rate ``lr``).
        transform: applied to the whole batch each step (a random transform draws one set of
            parameters per step, shared by all images); None = no transform.
        input_channels: the model's input channels (1 = greyscale, 3 = RGB, 4 = RGBA).
        parameterization: an :class:`ImageParameterization` class built as
            ``cls(size=, channels=, batch=, generator=)`` with parameters batched along dim 0.
        seed: restart ``r`` starts every image from the batch-1 random start of seed ``seed + r``.
        restarts: independent starts per channel, all in the same batch; the one with the
            highest final activation (mean of the channel on the untransformed image) is kept.
        return_activations: also return the kept images' final activations, ``(len(channels),)``.
        max_batch: at most this many images (channels × restarts) per optimization; channels are
            rendered in consecutive chunks (all restarts of a channel in the same chunk). Equal to
            one run when the transform is deterministic (each image's optimization is
            independent). Without it, a CUDA out-of-memory error halves the batch and retries.

    Returns:
        ``(len(channels), input_channels, H, W)`` images (detached, in the model's dtype), and
        with ``return_activations`` the tuple ``(images, activations)``.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    chans = list(channels) if isinstance(channels, Sequence) else None
    if not chans or not all(isinstance(c, int) and not isinstance(c, bool) for c in chans):
        raise InputError(f"channels must be a non-empty sequence of ints, got {channels!r}.")
    for name, value, low in (("n_steps", n_steps, 0), ("restarts", restarts, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} must be an int >= {low}, got {value!r}.")
    if not (isinstance(parameterization, type) and issubclass(parameterization, nn.Module)):
        raise InputTypeError("parameterization must be an ImageParameterization class.")
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise InputError(f"size must be a positive int or (height, width), got {size!r}.")
    module = resolve_target(model, target)
    if max_batch is not None and (
        not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1
    ):
        raise InputError(f"max_batch must be a positive int or None, got {max_batch!r}.")
    n = len(chans)
    run = dict(size=size, n_steps=n_steps, lr=lr, transform=transform, seed=seed)
    run.update(input_channels=input_channels, parameterization=parameterization)
    if max_batch is None or n * restarts <= max_batch:
        try:
            images, acts = _render_batch(model, module, chans, restarts=restarts, **run)
        except torch.OutOfMemoryError:
            if n == 1 or max_batch is not None:
                raise
            images, acts = _render_chunks(model, module, chans, restarts, (n * restarts) // 2, run)
    else:
        images, acts = _render_chunks(model, module, chans, restarts, max_batch, run)
    return (images, acts) if return_activations else images


def _render_chunks(
    model: nn.Module,
    module: nn.Module,
    chans: list[int],
    restarts: int,
    max_batch: int,
    run: dict[str, Any],
) -> tuple[Tensor, Tensor]:
    step = max(1, max_batch // restarts)
    parts = [
        render_channels(
            model, module, chans[i : i + step], restarts=restarts, return_activations=True,
            max_batch=max(max_batch, restarts), **run,
        )
        for i in range(0, len(chans), step)
    ]  # fmt: skip
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _render_batch(
    model: nn.Module,
    module: nn.Module,
    chans: list[int],
    *,
    size: tuple[int, int],
    n_steps: int,
    lr: float,
    transform: nn.Module | Callable[[Tensor], Tensor] | None,
    input_channels: int,
    parameterization: type[ImageParameterization],
    seed: int,
    restarts: int,
) -> tuple[Tensor, Tensor]:
    n = len(chans)
    image = _batched_start(
        parameterization, (size[0], size[1]), input_channels, n, [seed + r for r in range(restarts)]
    ).to(model_dtype(model))
    losses = [
        ChannelActivation(module, c, batch_index=r * n + i)
        for r in range(restarts)
        for i, c in enumerate(chans)
    ]
    no_transform = nn.Identity() if transform is None else transform
    opt = InputOptimization(model, sum_loss_list(losses), image, no_transform)
    opt.optimize(_stop_after(n_steps, show_progress=False), lr=lr)
    with torch.no_grad():
        final = image().detach()
        with ModuleOutputsHook([module]) as hook:
            model(final)
            acts = hook.consume_outputs()[module]
        index = torch.tensor(chans * restarts)
        per_image = acts[torch.arange(n * restarts), index].reshape(n * restarts, -1).mean(1)
        best = per_image.reshape(restarts, n).argmax(0)  # (n,): the best restart per channel
        pick = best * n + torch.arange(n)
        out = final[pick].as_subclass(torch.Tensor)
    return out, per_image[pick]


def _as_chw(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor):
        raise InputTypeError(f"images must be a tensor, got {type(images).__name__}.")
    x = images.detach().as_subclass(torch.Tensor)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() not in (3, 4):
        raise InputError(f"images must be (H, W), (C, H, W) or (N, C, H, W), got {tuple(x.shape)}.")
    return x


def save_png(images: Tensor, path: str | Path) -> Path:
    """Save ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)`` (batch side by side, no gaps) with
    values in ``[0, 1]`` as an 8-bit PNG; ``C`` is 1 (grey, mode ``L``), 3 (RGB) or 4 (RGBA).
    Pixels are ``round(clip(x, 0, 1) * 255)``. Uses Pillow. Returns the path."""
    x = _as_chw(images)
    if not bool(torch.isfinite(x).all()):
        raise InputError("images contain NaN or infinite values.")
    return ImageTensor(x).export(path)


def image_grid(
    images: Tensor, ncols: int | None = None, padding: int = 2, pad_value: float = 1.0
) -> Tensor:
    """Tile ``(N, C, H, W)`` images row by row into one ``(C, H', W')`` image.

    With ``ncols`` columns (default ``ceil(sqrt(N))``, at most ``N``) and ``rows = ceil(N /
    ncols)``: ``H' = rows * (H + padding) + padding``, ``W' = ncols * (W + padding) + padding``,
    and image ``k`` has its top-left pixel at row ``padding + (k // ncols) * (H + padding)``,
    column ``padding + (k % ncols) * (W + padding)``. Gaps and empty cells hold ``pad_value``.
    """
    x = _as_chw(images)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    n, c, h, w = x.shape
    if n == 0:
        raise InputError("image_grid needs at least one image.")
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if not isinstance(ncols, int) or isinstance(ncols, bool) or ncols < 1:
        raise InputError(f"ncols must be a positive int, got {ncols!r}.")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise InputError(f"padding must be a non-negative int, got {padding!r}.")
    ncols = min(ncols, n)
    rows = math.ceil(n / ncols)
    grid = x.new_full(
        (c, rows * (h + padding) + padding, ncols * (w + padding) + padding), pad_value
    )
    for k in range(n):
        top = padding + (k // ncols) * (h + padding)
        left = padding + (k % ncols) * (w + padding)
        grid[:, top : top + h, left : left + w] = x[k]
    return grid


def save_grid(
    images: Tensor,
    path: str | Path,
    ncols: int | None = None,
    padding: int = 2,
    pad_value: float = 1.0,
) -> Path:
    """:func:`image_grid` then :func:`save_png`; returns the path."""
    return save_png(image_grid(images, ncols=ncols, padding=padding, pad_value=pad_value), path)
