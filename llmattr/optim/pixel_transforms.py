"""Per-pixel and filtering transforms for feature visualization: alpha blending, input range,
channel order, Gaussian smoothing and mapping many channels to RGB. All are ``nn.Module`` s on
``(N, C, H, W)`` images and differentiable; the geometric ones are in
:mod:`llmattr.optim.transforms`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmattr._core.errors import InputError

from .transforms import _check_nchw, symmetric_pad

__all__ = [
    "BlendAlpha",
    "GaussianSmoothing",
    "IgnoreAlpha",
    "NChannelsToRGB",
    "RGBToBGR",
    "ScaleInputRange",
    "nchannels_to_rgb",
]


class BlendAlpha(nn.Module):
    """Blend RGBA ``(N, 4, H, W)`` into RGB ``(N, 3, H, W)``: ``alpha*rgb + (1-alpha)*bg``.

    ``background`` broadcastable to ``(N, 3, H, W)``; when None, a uniform random one is drawn
    from ``generator`` at each call (so renders cannot rely on the background).
    """

    def __init__(
        self, background: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.background = background
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "BlendAlpha", 4)
        rgb, alpha = x[:, :3], x[:, 3:4]
        if self.background is None:
            device = self.generator.device if self.generator is not None else "cpu"
            bg = torch.rand(rgb.shape, generator=self.generator, device=device, dtype=x.dtype)
            bg = bg.to(x.device)
        else:
            bg = self.background.to(x.device, x.dtype)
        return alpha * rgb + (1 - alpha) * bg


class IgnoreAlpha(nn.Module):
    """Drop the alpha channel: ``(N, 4, H, W)`` -> ``(N, 3, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "IgnoreAlpha", 4)
        return x[:, :3]


class ScaleInputRange(nn.Module):
    """Multiply by ``multiplier`` (for models that expect a range other than ``[0, 1]``)."""

    def __init__(self, multiplier: float = 1.0) -> None:
        super().__init__()
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.multiplier


class RGBToBGR(nn.Module):
    """Swap red and blue: ``(N, 3, H, W)``, or ``(N, 4, H, W)`` with alpha kept last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_nchw(x, "RGBToBGR")
        if x.shape[1] not in (3, 4):
            raise InputError(f"RGBToBGR expects 3 or 4 channels, got {x.shape[1]}")
        return x[:, [2, 1, 0, 3][: x.shape[1]]]


class GaussianSmoothing(nn.Module):
    """Depthwise Gaussian blur of ``(N, channels, *spatial)`` with ``dim`` spatial dims (1-3).

    The kernel is normalized to sum 1. ``padding=None`` (optim-wip) gives a valid convolution
    (each spatial size shrinks by ``kernel_size - 1``); ``"symmetric"`` (edge-repeating, which
    conserves the sum for odd kernels), ``"reflect"``, ``"replicate"``, ``"circular"`` or
    ``"zeros"`` keep the size for odd kernels.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Sequence[int],
        sigma: float | Sequence[float],
        dim: int = 2,
        padding: Literal["symmetric", "reflect", "replicate", "circular", "zeros"] | None = None,
    ) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise InputError(f"dim must be 1, 2 or 3, got {dim}")
        ks = [int(kernel_size)] * dim if isinstance(kernel_size, int) else list(kernel_size)
        sg = [float(sigma)] * dim if isinstance(sigma, int | float) else list(sigma)
        if len(ks) != dim or len(sg) != dim or min(ks) < 1 or min(sg) <= 0:
            raise InputError(f"need {dim} positive kernel sizes and sigmas, got {ks}, {sg}")
        kernel = torch.ones((), dtype=torch.float64)
        for size, std in zip(ks, sg):
            t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
            kernel = kernel[..., None] * torch.exp(-0.5 * (t / std) ** 2)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, *ks).contiguous().float())
        self.channels, self.dim, self.kernel_size, self.padding = channels, dim, ks, padding
        self._conv = (F.conv1d, F.conv2d, F.conv3d)[dim - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2 or x.shape[1] != self.channels:
            raise InputError(
                f"GaussianSmoothing expects (N, {self.channels}, *{self.dim} spatial dims), "
                f"got {tuple(x.shape)}"
            )
        if self.padding is not None:
            lo_hi = [((k - 1) // 2, k // 2) for k in self.kernel_size]
            if self.padding == "symmetric":
                x = symmetric_pad(x, [(0, 0), (0, 0), *lo_hi])
            else:
                flat = [p for pair in reversed(lo_hi) for p in pair]
                mode = "constant" if self.padding == "zeros" else self.padding
                x = F.pad(x, flat, mode=mode)
        return self._conv(x, self.weight.to(x.dtype), groups=self.channels)


def _hue_to_rgb(angle: float, warp: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = 1 / math.sqrt(2)
    colors = [[1, 0, 0], [r, r, 0], [0, 1, 0], [0, r, r], [0, 0, 1], [r, 0, r]]
    angle = angle % 360
    idx = int(angle // 60)
    d = (angle - idx * 60) / 60
    if warp:  # spreads hues so neighbouring channels are easier to tell apart
        d = math.sin(d * math.pi / 2) if idx % 2 == 0 else 1 - math.sin((1 - d) * math.pi / 2)
    a = torch.tensor(colors[idx], dtype=dtype, device=device)
    b = torch.tensor(colors[(idx + 1) % 6], dtype=dtype, device=device)
    vec = (1 - d) * a + d * b
    return vec / vec.norm()


def nchannels_to_rgb(x: torch.Tensor, warp: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Map ``(N, C, H, W)`` to RGB ``(N, 3, H, W)``: channel ``i`` gets the hue ``360 i / C``.

    Negative inputs are first split into positive and negative parts (``2C`` channels). Pixels
    whose energy spreads over channels move toward grey; each pixel keeps its L2 norm.
    """
    _check_nchw(x, "nchannels_to_rgb")
    if (x < 0).any():
        x = torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=1)
    n = x.shape[1]
    hues = torch.stack([_hue_to_rgb(360 * i / n, warp, x.dtype, x.device) for i in range(n)])
    rgb = torch.einsum("nchw,ck->nkhw", x, hues)
    rgb = rgb + (x.sum(1, keepdim=True) - x.max(1, keepdim=True).values)
    rgb = rgb / (eps + rgb.norm(dim=1, keepdim=True))
    return rgb * x.norm(dim=1, keepdim=True)


class NChannelsToRGB(nn.Module):
    """:func:`nchannels_to_rgb` as a module (``warp=False`` by default, as in optim-wip)."""

    def __init__(self, warp: bool = False) -> None:
        super().__init__()
        self.warp = warp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nchannels_to_rgb(x, self.warp)
