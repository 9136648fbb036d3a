"""Image parameterizations for input optimization (optim-wip semantics, our own code).

Each parameterization is an ``nn.Module`` that holds the trainable parameters and whose
``forward()`` returns the image, shape ``(N, C, H, W)``. An optional ``init`` image (``(C, H, W)``
or ``(N, C, H, W)``) is mapped into the parameter space so that ``forward()`` reproduces it
(to rounding). Random starts are seeded through ``generator``. Any channel count works
(1 = greyscale, 3 = RGB, 4 = RGBA). Modules convert with ``.double()`` / ``.to(dtype)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmattr._core.errors import InputError, InputTypeError
from llmattr.optim.image_tensor import ImageTensor as ImageTensor

__all__ = [
    "FFTImage",
    "ImageParameterization",
    "LaplacianImage",
    "PixelImage",
    "SharedImage",
    "StackImage",
    "fft_frequencies",
]

Size = int | tuple[int, int] | None


def _size(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise InputError(f"image size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _check_count(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def _prepare(
    size: Size, channels: int, batch: int, init: torch.Tensor | None
) -> tuple[tuple[int, int], torch.Tensor | None]:
    """Validate the common arguments; returns ``(H, W)`` and init as ``(batch, C, H, W)``."""
    hw = _size(size)
    _check_count("channels", channels)
    _check_count("batch", batch)
    if init is None:
        if hw is None:
            raise InputError("give an image size, or an init image to take the size from")
        return hw, None
    if not isinstance(init, torch.Tensor):
        raise InputTypeError(f"init must be a tensor, got {type(init).__name__}")
    init = init.detach().as_subclass(torch.Tensor)
    if not init.is_floating_point():
        init = init.to(torch.get_default_dtype())
    if init.dim() == 3:
        init = init.unsqueeze(0)
    if init.dim() != 4:
        raise InputError(f"init must be (C, H, W) or (N, C, H, W), got shape {tuple(init.shape)}")
    if init.shape[1] != channels:
        raise InputError(f"init has {init.shape[1]} channels, the image has {channels}")
    if hw is not None and tuple(init.shape[2:]) != hw:
        raise InputError(f"init has size {tuple(init.shape[2:])}, the image size is {hw}")
    if init.shape[0] not in (1, batch):
        raise InputError(f"init has batch {init.shape[0]}, expected 1 or {batch}")
    if not bool(torch.isfinite(init).all()):
        raise InputError("init has NaN or infinite values")
    return (int(init.shape[2]), int(init.shape[3])), init.expand(batch, -1, -1, -1).clone()


def _linear_weights(n_out: int, n_in: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` float64 matrix of 1-D linear resizing (``align_corners=False``),
    read off ``F.interpolate`` applied to the identity, so it matches PyTorch's weights."""
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def _upsample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear resize ``(N, C, h, w) -> (N, C, H, W)`` as ``rows @ x @ cols.T`` (separable).

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False)``, and unlike it compiles
    with inductor on CPU (whose bilinear backward fails in torch 2.13).
    """
    rows = rows.to(device=x.device, dtype=x.dtype)
    cols = cols.to(device=x.device, dtype=x.dtype)
    return torch.einsum("Hh,nchw,Ww->ncHW", rows, x, cols)


def _randn(shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def _resize_weights(
    shapes: Sequence[tuple[int, ...]], size: tuple[int, int]
) -> dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]:
    """Row and column resize matrices (float64, kept as plain attributes so that ``.float()``
    does not round them) for each low-resolution shape."""
    return {s: (_linear_weights(size[0], s[0]), _linear_weights(size[1], s[1])) for s in shapes}


class ImageParameterization(nn.Module):
    """Base class: ``forward()`` returns the image ``(batch, channels, H, W)``."""

    size: tuple[int, int]
    channels: int
    batch: int

    def image(self) -> ImageTensor:
        """The current image, detached, as an :class:`ImageTensor`."""
        with torch.no_grad():
            return ImageTensor(self().detach())

    def extra_repr(self) -> str:
        return f"size={self.size}, channels={self.channels}, batch={self.batch}"


class PixelImage(ImageParameterization):
    """One parameter per pixel: ``forward()`` returns the parameter tensor itself.

    Random start: ``N(0.5, 0.1^2)`` per pixel. Shape ``(batch, channels, H, W)``.
    """

    def __init__(
        self,
        size: Size = None,
        channels: int = 3,
        batch: int = 1,
        init: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.size, init = _prepare(size, channels, batch, init)
        self.channels, self.batch = channels, batch
        if init is None:
            init = _randn((batch, channels, *self.size), generator) * 0.1 + 0.5
        self.image_param = nn.Parameter(init)

    def forward(self) -> torch.Tensor:
        return self.image_param


def fft_frequencies(height: int, width: int) -> torch.Tensor:
    """Spatial frequency magnitudes (cycles per pixel) of the ``rfft2`` grid, float64.

    Shape ``(H, W // 2 + 1)``; row ``ky`` has ``fftfreq(H)[ky]``, column ``kx`` has ``kx / W``.
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class FFTImage(ImageParameterization):
    """Parameters in the (orthonormal) ``rfft2`` spectrum, scaled by ``1 / f**decay_power``.

    ``forward() = irfft2(coeffs * scale, s=(H, W), norm="ortho")`` with
    ``scale = 1 / max(f, 1 / max(H, W)) ** decay_power`` (``f`` in cycles per pixel, so the DC term
    has scale ``max(H, W)``): equal steps in the parameters move low frequencies more, which is
    the natural-image prior. ``coeffs`` is stored as a real tensor ``(N, C, H, W // 2 + 1, 2)``
    (real, imaginary). ``init`` is mapped by ``rfft2(init) / scale``.
    Random start: ``0.01 * N(0, 1)``.
    """

    def __init__(
        self,
        size: Size = None,
        channels: int = 3,
        batch: int = 1,
        init: torch.Tensor | None = None,
        decay_power: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.size, init = _prepare(size, channels, batch, init)
        self.channels, self.batch = channels, batch
        self.decay_power = float(decay_power)
        h, w = self.size
        if init is None:
            dtype = torch.get_default_dtype()
            coeffs = _randn((batch, channels, h, w // 2 + 1, 2), generator).to(dtype) * 0.01
        else:
            low = init.dtype in (torch.float16, torch.bfloat16)
            work = init.float() if low else init
            spectrum = torch.fft.rfft2(work, norm="ortho") / self._scale(work.dtype, work.device)
            coeffs = torch.view_as_real(spectrum).clone().to(init.dtype)
        self.fourier_coeffs = nn.Parameter(coeffs)

    def _scale(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        h, w = self.size
        freqs = fft_frequencies(h, w).clamp(min=1.0 / max(h, w))
        return (1.0 / freqs**self.decay_power).to(device=device, dtype=dtype)

    @property
    def spectrum_scale(self) -> torch.Tensor:
        """``1 / max(f, 1 / max(H, W)) ** decay_power``, ``(H, W // 2 + 1)``, in the parameters'
        dtype (computed in float64, so ``.double()`` loses nothing)."""
        return self._scale(self.fourier_coeffs.dtype, self.fourier_coeffs.device)

    def forward(self) -> torch.Tensor:
        coeffs = self.fourier_coeffs
        # torch has no CPU FFT for float16 and no complex bfloat16: the transform runs in float32
        # for those and the image comes back in the parameters' dtype (gradients flow through).
        low = coeffs.dtype in (torch.float16, torch.bfloat16)
        work = coeffs.float() if low else coeffs
        spectrum = torch.view_as_complex(work.contiguous()) * self._scale(work.dtype, work.device)
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        return image.to(coeffs.dtype) if low else image


class LaplacianImage(ImageParameterization):
    """A Laplacian-style pyramid: pixel tensors at ``H / s x W / s`` for each scale ``s``,
    upsampled bilinearly to ``(H, W)`` and summed.

    Coarse levels collect the gradient of many pixels, so they learn low frequencies quickly.
    ``init`` goes to the full-resolution level (the others start at zero), so ``forward()``
    returns it exactly. Random start: ``0.01 * N(0, 1)`` at every level.
    """

    def __init__(
        self,
        size: Size = None,
        channels: int = 3,
        batch: int = 1,
        init: torch.Tensor | None = None,
        scales: Sequence[int] = (1, 2, 4, 8, 16, 32),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.size, init = _prepare(size, channels, batch, init)
        self.channels, self.batch = channels, batch
        if not scales or not all(isinstance(s, int) and s >= 1 for s in scales):
            raise InputError(f"scales must be positive ints, got {scales!r}")
        self.scales = tuple(sorted(set(scales)))
        h, w = self.size
        dtype = init.dtype if init is not None else torch.get_default_dtype()
        levels = []
        for s in self.scales:
            shape = (batch, channels, max(1, math.ceil(h / s)), max(1, math.ceil(w / s)))
            if init is None:
                levels.append(nn.Parameter(_randn(shape, generator).to(dtype) * 0.01))
            elif s == 1:
                levels.append(nn.Parameter(init))
            else:
                levels.append(nn.Parameter(torch.zeros(shape, dtype=dtype)))
        if init is not None and 1 not in self.scales:
            raise InputError("an init image needs scale 1 in the pyramid")
        self.levels = nn.ParameterList(levels)
        self._weights = _resize_weights([tuple(p.shape[2:]) for p in levels], self.size)

    def forward(self) -> torch.Tensor:
        out = None
        for level in self.levels:
            if tuple(level.shape[2:]) != self.size:
                level = _upsample(level, *self._weights[tuple(level.shape[2:])])
            out = level if out is None else out + level
        assert out is not None
        return out


class SharedImage(ImageParameterization):
    """Low-resolution parameters shared across the batch (or channels), upsampled bilinearly to
    ``(H, W)`` and added to a base parameterization's image.

    Each entry of ``shapes`` is ``(h, w)``, ``(c, h, w)`` or ``(n, c, h, w)`` with ``n`` in
    ``{1, batch}`` and ``c`` in ``{1, channels}`` (size 1 broadcasts: shared by all images or all
    channels). Random start: ``0.01 * N(0, 1)``.
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        parameterization: ImageParameterization,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(parameterization, ImageParameterization):
            raise InputTypeError("SharedImage needs an ImageParameterization to add to")
        if not shapes:
            raise InputError("SharedImage needs at least one shape")
        base = parameterization
        self.size, self.channels, self.batch = base.size, base.channels, base.batch
        self.parameterization = base
        dtype = next(iter(base.parameters()), torch.empty(0)).dtype
        shared = []
        for shape in shapes:
            dims = tuple(int(d) for d in shape)
            if len(dims) not in (2, 3, 4) or any(d < 1 for d in dims):
                raise InputError(f"shared shape must be (h, w), (c, h, w) or (n, c, h, w): {shape}")
            dims = (1,) * (4 - len(dims)) + dims
            if dims[0] not in (1, self.batch) or dims[1] not in (1, self.channels):
                raise InputError(
                    f"shared shape {tuple(shape)}: batch must be 1 or {self.batch}, "
                    f"channels 1 or {self.channels}"
                )
            shared.append(nn.Parameter(_randn(dims, generator).to(dtype) * 0.01))
        self.shared = nn.ParameterList(shared)
        self._weights = _resize_weights([tuple(p.shape[2:]) for p in shared], self.size)

    def forward(self) -> torch.Tensor:
        out = self.parameterization()
        for param in self.shared:
            out = out + _upsample(param, *self._weights[tuple(param.shape[2:])])
        return out


class StackImage(ImageParameterization):
    """Several parameterizations (same channels and size) concatenated along the batch."""

    def __init__(self, parameterizations: Sequence[ImageParameterization]) -> None:
        super().__init__()
        params = list(parameterizations)
        if not params or not all(isinstance(p, ImageParameterization) for p in params):
            raise InputError("StackImage needs a non-empty list of ImageParameterization")
        first = params[0]
        for i, p in enumerate(params):
            if p.channels != first.channels or p.size != first.size:
                raise InputError(
                    f"StackImage: parameterization {i} is {p.channels} x {p.size}, "
                    f"parameterization 0 is {first.channels} x {first.size}"
                )
        self.parameterizations = nn.ModuleList(params)
        self.size, self.channels = first.size, first.channels
        self.batch = sum(p.batch for p in params)

    def forward(self) -> torch.Tensor:
        return torch.cat([p() for p in self.parameterizations], dim=0)


def __getattr__(name: str) -> object:
    """``images.NaturalImage`` (optim-wip's location) lives in :mod:`.natural_image`."""
    if name == "NaturalImage":
        from .natural_image import NaturalImage

        return NaturalImage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
