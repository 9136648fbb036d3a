"""Differentiable image transforms for transformation robustness (optim-wip semantics).

Every transform is an ``nn.Module`` on ``(N, C, H, W)`` tensors and is differentiable in its
input. Random transforms draw their parameters from an optional ``torch.Generator`` (CPU or the
generator's own device); with ``generator=None`` they use torch's global RNG, so
``torch.manual_seed`` makes them reproducible too.

Differences from optim-wip (fixes): ``SymmetricPadding`` back-propagates through the reflected
pixels (optim-wip only cropped the gradient); ``RandomRotation`` rotates in pixel space, so
non-square images are not sheared; ``RandomSpatialJitter`` shifts by ``[-t, t]`` (symmetric) and
``translate=0`` is the identity; a sampled scale of 1 or angle of 0 returns the input unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmattr._core.errors import InputError

__all__ = [
    "CenterCrop",
    "RandomCrop",
    "RandomRotation",
    "RandomScale",
    "RandomScaleAffine",
    "RandomSpatialJitter",
    "SymmetricPadding",
    "TransformationRobustness",
    "center_crop",
    "symmetric_pad",
]

Values = Sequence[float] | torch.Tensor | torch.distributions.Distribution


def _check_nchw(x: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} expects an (N, C, H, W) tensor, got {shape}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{name} expects {channels} channels, got {x.shape[1]}")


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = [int(s) for s in size]
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise InputError(f"{name} takes an int or (h, w), got {size}")
    return size[0], size[1]


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """One integer drawn uniformly from ``[low, high]`` (both inclusive)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(low, high + 1, (1,), generator=generator, device=device).item())


class _Sampler:
    """Draws one value from a list (uniformly) or from a scalar torch distribution."""

    def __init__(self, values: Values, name: str) -> None:
        self.distribution: torch.distributions.Distribution | None = None
        self.values: list[float] = []
        if isinstance(values, torch.distributions.Distribution):
            if values.batch_shape != torch.Size([]):
                raise InputError(f"{name}: the distribution must be scalar (empty batch_shape)")
            self.distribution = values
        elif isinstance(values, int | float):
            self.values = [float(values)]
        else:
            if isinstance(values, torch.Tensor) and values.dim() != 1:
                raise InputError(f"{name}: a tensor of values must be 1-D")
            self.values = [float(v) for v in values]
            if not self.values:
                raise InputError(f"{name}: give at least one value")

    def __call__(self, generator: torch.Generator | None) -> float:
        if self.distribution is None:
            return self.values[_randint(0, len(self.values) - 1, generator)]
        device = generator.device if generator is not None else "cpu"
        u = torch.rand((), generator=generator, device=device)
        try:  # inverse CDF keeps the draw on the given generator
            return float(self.distribution.icdf(u).item())
        except NotImplementedError:
            return float(self.distribution.sample().item())


def center_crop(
    x: torch.Tensor,
    size: int | Sequence[int],
    pixels_from_edges: bool = False,
    offset_left: bool = False,
    padding_mode: str = "constant",
    padding_value: float = 0.0,
) -> torch.Tensor:
    """Center crop ``(..., H, W)`` to ``size`` ``(h, w)``, padding where ``size`` is larger.

    Along a dimension of length ``n`` cropped to ``s``, the window starts at ``(n - s) // 2``
    (``+1`` with ``offset_left`` when ``n - s`` is odd); a negative start pads. With
    ``pixels_from_edges`` the output is ``(H - h, W - w)``, starting at ``n // 2 - (n - s) // 2``.
    """
    if x.dim() < 3:
        raise InputError(f"center_crop expects (C, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    sh, sw = _pair(size, "center_crop size")
    h, w = x.shape[-2:]
    if pixels_from_edges:
        if not (0 <= sh < h and 0 <= sw < w):
            raise InputError(f"cannot crop {(sh, sw)} pixels from a {h}x{w} image")
        oh, ow = h - sh, w - sw
        top, left = h // 2 - oh // 2, w // 2 - ow // 2
        return x[..., top : top + oh, left : left + ow]
    if sh <= 0 or sw <= 0:
        raise InputError(f"crop size must be positive, got {(sh, sw)}")
    starts = []
    for n, s in ((h, sh), (w, sw)):
        d = n - s
        starts.append(d // 2 + (1 if offset_left and d % 2 else 0))
    top, left = starts
    pad = [max(-left, 0), max(left + sw - w, 0), max(-top, 0), max(top + sh - h, 0)]
    if any(pad):
        x = F.pad(
            x, pad, mode=padding_mode, value=padding_value if padding_mode == "constant" else None
        )
        top, left = top + pad[2], left + pad[0]
    return x[..., top : top + sh, left : left + sw]


class CenterCrop(nn.Module):
    """:func:`center_crop` as a module: ``(N, C, H, W)`` -> ``(N, C, h, w)``."""

    def __init__(
        self,
        size: int | Sequence[int] = 0,
        pixels_from_edges: bool = False,
        offset_left: bool = False,
        padding_mode: str = "constant",
        padding_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.size = _pair(size, "CenterCrop size")
        self.pixels_from_edges = pixels_from_edges
        self.offset_left = offset_left
        self.padding_mode = padding_mode
        self.padding_value = padding_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return center_crop(
            x,
            self.size,
            self.pixels_from_edges,
            self.offset_left,
            self.padding_mode,
            self.padding_value,
        )


class RandomCrop(nn.Module):
    """Roll ``(N, C, H, W)`` by a random shift in ``[-ceil(d/2), ceil(d/2))`` per axis
    (``d = H - h``), then center crop to ``crop_size`` ``(h, w)``."""

    def __init__(
        self, crop_size: int | Sequence[int], generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.crop_size = _pair(crop_size, "RandomCrop crop_size")
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "RandomCrop")
        h, w = self.crop_size
        if h > x.shape[2] or w > x.shape[3]:
            raise InputError(f"RandomCrop {(h, w)} is larger than the input {tuple(x.shape[2:])}")
        hs, ws = math.ceil((x.shape[2] - h) / 2), math.ceil((x.shape[3] - w) / 2)
        dy = _randint(-hs, hs - 1, self.generator) if hs else 0
        dx = _randint(-ws, ws - 1, self.generator) if ws else 0
        return center_crop(torch.roll(x, (dy, dx), dims=(2, 3)), (h, w))


class RandomScale(nn.Module):
    """Resize ``(N, C, H, W)`` by a random factor with ``F.interpolate``; the output size
    changes (``floor(H * s)``). ``scale``: values to pick from, or a scalar distribution."""

    def __init__(
        self,
        scale: Values,
        mode: str = "bilinear",
        align_corners: bool | None = False,
        recompute_scale_factor: bool = False,
        antialias: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sampler = _Sampler(scale, "RandomScale scale")
        if any(s <= 0 for s in self.sampler.values):
            raise InputError(f"RandomScale scales must be positive, got {self.sampler.values}")
        self.mode = mode
        self.align_corners = None if mode in ("nearest", "area") else align_corners
        self.recompute_scale_factor = recompute_scale_factor
        self.antialias = antialias
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "RandomScale")
        s = self.sampler(self.generator)
        if s == 1.0:
            return x
        return F.interpolate(
            x,
            scale_factor=s,
            mode=self.mode,
            align_corners=self.align_corners,
            recompute_scale_factor=self.recompute_scale_factor,
            antialias=self.antialias,
        )


def _affine(x: torch.Tensor, m: list[list[float]], mode: str, pad: str, ac: bool) -> torch.Tensor:
    theta = torch.tensor([m], dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=ac)
    return F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=ac)


class RandomScaleAffine(nn.Module):
    """Zoom ``(N, C, H, W)`` about its center with ``affine_grid``/``grid_sample``; the shape is
    kept. A factor ``m`` samples input coordinates ``m * p``: ``m > 1`` shrinks the content
    (padding with ``padding_mode``), ``m < 1`` zooms in (optim-wip's convention)."""

    def __init__(
        self,
        scale: Values,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        align_corners: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sampler = _Sampler(scale, "RandomScaleAffine scale")
        self.mode, self.padding_mode, self.align_corners = mode, padding_mode, align_corners
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "RandomScaleAffine")
        m = self.sampler(self.generator)
        if m == 1.0:
            return x
        mat = [[m, 0.0, 0.0], [0.0, m, 0.0]]
        return _affine(x, mat, self.mode, self.padding_mode, self.align_corners)


class RandomSpatialJitter(nn.Module):
    """Translate ``(N, C, H, W)`` by a random ``(dy, dx)`` in ``[-translate, translate]``,
    filling uncovered pixels by reflection; the shape is kept (needs ``translate < H, W``)."""

    def __init__(self, translate: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if int(translate) != translate or translate < 0:
            raise InputError(f"translate must be a non-negative int, got {translate!r}")
        self.translate = int(translate)
        self.generator = generator

    def shift(self, x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """``out[..., i, j] = x[..., i - dy, j - dx]``, reflected at the borders."""
        t = self.translate
        if abs(dy) > t or abs(dx) > t:
            raise InputError(f"shift {(dy, dx)} exceeds translate={t}")
        if t == 0:
            return x
        if t >= x.shape[2] or t >= x.shape[3]:
            raise InputError(f"translate {t} must be smaller than the image {tuple(x.shape[2:])}")
        padded = F.pad(x, [t, t, t, t], mode="reflect")
        h, w = x.shape[2:]
        return padded[:, :, t - dy : t - dy + h, t - dx : t - dx + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "RandomSpatialJitter")
        if self.translate == 0:
            return x
        t = self.translate
        dy, dx = _randint(-t, t, self.generator), _randint(-t, t, self.generator)
        return self.shift(x, dy, dx)


class RandomRotation(nn.Module):
    """Rotate ``(N, C, H, W)`` about its center by a random angle in degrees (picked from
    ``degrees`` or a scalar distribution); the shape is kept, outside pixels use
    ``padding_mode``. The rotation is in pixel space, so non-square images are not sheared."""

    def __init__(
        self,
        degrees: Values,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        align_corners: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sampler = _Sampler(degrees, "RandomRotation degrees")
        self.mode, self.padding_mode, self.align_corners = mode, padding_mode, align_corners
        self.generator = generator

    def rotate(self, x: torch.Tensor, degrees: float) -> torch.Tensor:
        """Rotate by ``degrees`` (counterclockwise on screen for positive angles)."""
        _check_nchw(x, "RandomRotation")
        if degrees % 360 == 0:
            return x
        a = math.radians(degrees)
        c, s = math.cos(a), math.sin(a)
        h, w = x.shape[2:]
        k = 1 if self.align_corners else 0
        r = (h - k) / (w - k) if w - k and h - k else 1.0  # pixel units per normalized unit
        mat = [[c, -s * r, 0.0], [s / r, c, 0.0]]
        return _affine(x, mat, self.mode, self.padding_mode, self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "RandomRotation")
        return self.rotate(x, self.sampler(self.generator))


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def symmetric_pad(x: torch.Tensor, padding: Sequence[Sequence[int]]) -> torch.Tensor:
    """NumPy's ``np.pad(mode="symmetric")`` (edge repeated) with exact autograd.

    ``padding``: one ``(before, after)`` pair per dimension of ``x`` (NumPy's ``pad_width``);
    pads larger than the dimension tile the mirrored signal, as NumPy does.
    """
    if len(padding) != x.dim():
        raise InputError(f"give one (before, after) pair per dimension ({x.dim()})")
    for d, (before, after) in enumerate(padding):
        if before < 0 or after < 0:
            raise InputError(f"padding must be non-negative, got {tuple(padding[d])}")
        if before or after:
            x = x.index_select(d, _symmetric_index(x.shape[d], before, after, x.device))
    return x


class SymmetricPadding(nn.Module):
    """Symmetric (edge-repeating) padding as a module.

    ``padding``: an int (H and W both sides), ``(pad_h, pad_w)``, or NumPy ``pad_width`` pairs,
    one per dimension (optim-wip's form). ``(N, C, H, W)`` -> ``(N, C, H + 2p, W + 2p)``.
    """

    def __init__(self, padding: int | Sequence[int] | Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if isinstance(p, int):
            pairs = [(0, 0)] * (x.dim() - 2) + [(p, p), (p, p)]
        elif all(isinstance(v, int) for v in p):
            if len(p) != 2:
                raise InputError(f"SymmetricPadding: give (pad_h, pad_w), got {tuple(p)}")
            pairs = [(0, 0)] * (x.dim() - 2) + [(p[0], p[0]), (p[1], p[1])]
        else:
            pairs = [tuple(v) for v in p]
        return symmetric_pad(x, pairs)


_DEFAULT_SCALE = [0.995**n for n in range(-5, 80)] + [0.998**n for n in 2 * list(range(20, 40))]
_DEFAULT_DEGREES = [*range(-20, 20), *range(-10, 10), *range(-5, 5), *[0] * 5]


class TransformationRobustness(nn.Module):
    """optim-wip's default pipeline on ``(N, C, H, W)``: pad, jitter (one per ``translate``
    entry), random scale, random rotation, final jitter, then optionally crop/pad back to
    ``(H, W)`` (``crop_or_pad_output``). Any stage set to None is skipped; all random stages
    share ``generator``. ``padding_transform="default"`` is ``nn.ConstantPad2d(2, 0.5)``.
    """

    def __init__(
        self,
        padding_transform: nn.Module | Literal["default"] | None = "default",
        translate: int | Sequence[int] | None = (4,) * 10,
        scale: Values | None = tuple(_DEFAULT_SCALE),
        degrees: Values | None = tuple(_DEFAULT_DEGREES),
        final_translate: int | None = 2,
        crop_or_pad_output: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(padding_transform, str):
            if padding_transform != "default":
                raise InputError(
                    f"padding_transform: a module, None or 'default', got {padding_transform!r}"
                )
            padding_transform = nn.ConstantPad2d(2, value=0.5)
        self.padding_transform = padding_transform
        g = generator
        if translate is None:
            self.jitter_transforms: nn.Module | None = None
        elif isinstance(translate, int):
            self.jitter_transforms = RandomSpatialJitter(translate, generator=g)
        else:
            self.jitter_transforms = nn.Sequential(
                *[RandomSpatialJitter(t, generator=g) for t in translate]
            )
        self.random_scale = None if scale is None else RandomScale(scale, generator=g)
        self.random_rotation = None if degrees is None else RandomRotation(degrees, generator=g)
        self.final_jitter = (
            None if final_translate is None else RandomSpatialJitter(final_translate, generator=g)
        )
        self.crop_or_pad_output = crop_or_pad_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "TransformationRobustness")
        size = tuple(x.shape[2:])
        for stage in (
            self.padding_transform,
            self.jitter_transforms,
            self.random_scale,
            self.random_rotation,
            self.final_jitter,
        ):
            if stage is not None:
                x = stage(x)
        if self.crop_or_pad_output:
            x = center_crop(x, size)
        return x
