"""What "absent" pixels become: constant colour, dataset mean, blur, seeded noise, inpainting.

An :class:`ImageBaseline` fills the removed pixels of an image. It works on float tensors
``(C, H, W)`` / ``(N, C, H, W)`` (classifiers; values in the tensor's own units) and on PIL
images (VLMs, before the processor; values in 0-255 units, the result is a new image of the same
mode and size). PIL modes ``L``, ``LA``, ``RGB`` and ``RGBA`` are supported; the alpha channel of
``LA``/``RGBA`` images is kept as is and only colour channels are filled.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError

__all__ = [
    "BlurBaseline",
    "ConstantBaseline",
    "ImageBaseline",
    "InpaintBaseline",
    "MeanBaseline",
    "NoiseBaseline",
    "baseline_from",
    "dataset_mean",
    "gaussian_blur",
]

_PIL_MODES = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3}  # mode -> colour channels


def _is_pil(image: Any) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "mode")


def pil_to_tensor(image: Any) -> tuple[Tensor, Tensor | None]:
    """PIL image -> ``(C, H, W)`` float64 colour channels in 0-255, and the alpha ``(H, W)``."""
    if image.mode not in _PIL_MODES:
        raise InputError(
            f"PIL images of mode {image.mode!r} are not supported; convert it first, e.g. "
            "image.convert('RGB')."
        )
    arr = torch.from_numpy(np.asarray(image).astype(np.float64))
    arr = arr[..., None] if arr.dim() == 2 else arr
    colours = _PIL_MODES[image.mode]
    alpha = arr[..., colours] if arr.shape[-1] > colours else None
    return arr[..., :colours].permute(2, 0, 1).contiguous(), alpha


def _tensor_to_pil(colour: Tensor, alpha: Tensor | None, mode: str) -> Any:
    from PIL import Image

    hwc = colour.permute(1, 2, 0)
    if alpha is not None:
        hwc = torch.cat([hwc, alpha[..., None]], -1)
    arr = hwc.round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, mode=mode)


def _check_removed(removed: Any, image: Tensor) -> Tensor:
    """``removed`` as bool ``(N, H, W)`` or ``(1, H, W)`` for an ``(N, C, H, W)`` image."""
    if isinstance(removed, np.ndarray):
        removed = torch.from_numpy(removed)
    if not isinstance(removed, Tensor):
        raise InputTypeError(
            f"removed must be an (H, W) bool tensor, got {type(removed).__name__}."
        )
    if removed.dtype != torch.bool and not bool(((removed == 0) | (removed == 1)).all()):
        raise InputError("removed must be boolean (True where a pixel is absent).")
    given = tuple(removed.shape)
    removed = removed.bool().to(image.device)
    if removed.dim() == 2:
        removed = removed[None]
    if removed.dim() != 3 or tuple(removed.shape[-2:]) != tuple(image.shape[-2:]):
        raise InputError(
            f"removed has shape {given} but the image is "
            f"{tuple(image.shape[-2:])} (height, width): resize the mask with nearest-neighbour "
            "interpolation to the image's size."
        )
    if removed.shape[0] not in (1, image.shape[0]):
        raise InputError(
            f"removed has {removed.shape[0]} masks for {image.shape[0]} images; give one (H, W) "
            "mask or one per image (N, H, W)."
        )
    return removed


class ImageBaseline(ABC):
    """Fills the removed pixels of an image. Subclasses implement :meth:`_values`."""

    #: whether the value of a removed pixel depends on which pixels are removed
    region_dependent: bool = False
    #: fill takes a batch ``(N, C, H, W)`` with one map per image ``(N, H, W)``
    fills_batches: bool = True

    @abstractmethod
    def _values(self, image: Tensor, removed: Tensor, pil: bool) -> Tensor:
        """The baseline image ``(N, C, H, W)`` for an ``(N, C, H, W)`` float image; only the
        pixels where ``removed`` ``(N or 1, H, W)`` is True are used."""

    def fill(self, image: Any, removed: Any) -> Any:
        """A copy of ``image`` with the pixels where ``removed`` is True replaced.

        Args:
            image: float tensor ``(C, H, W)`` or ``(N, C, H, W)``, or a PIL image.
            removed: ``(H, W)`` bool (or ``(N, H, W)``, one mask per image of a batch).

        Returns:
            The same kind and shape as ``image`` (a new PIL image of the same mode for PIL).
        """
        if _is_pil(image):
            colour, alpha = pil_to_tensor(image)
            out = self._fill4(colour[None], removed, pil=True)[0]
            return _tensor_to_pil(out, alpha, image.mode)
        if not isinstance(image, Tensor) or image.dim() not in (3, 4):
            raise InputError(
                "image must be a float tensor (C, H, W) / (N, C, H, W) or a PIL image, got "
                f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}."
            )
        if not image.is_floating_point():
            raise InputTypeError(f"image must be a float tensor, got dtype {image.dtype}.")
        batch = image if image.dim() == 4 else image[None]
        out = self._fill4(batch, removed, pil=False)
        return out if image.dim() == 4 else out[0]

    def _fill4(self, image: Tensor, removed: Any, pil: bool) -> Tensor:
        removed = _check_removed(removed, image)
        values = self._values(image, removed, pil).to(image.dtype)
        return torch.where(removed[:, None], values, image)

    def as_tensor(self, image: Any) -> Tensor:
        """The full baseline image (every pixel removed), as a tensor of the image's shape
        (PIL: ``(C, H, W)`` colour channels in 0-255); usable as ``baselines=``."""
        if _is_pil(image):
            image = pil_to_tensor(image)[0]
        if not isinstance(image, Tensor):
            raise InputTypeError(
                f"image must be a tensor or PIL image, got {type(image).__name__}."
            )
        ones = torch.ones(image.shape[-2:], dtype=torch.bool)
        return self.fill(image, ones)


def _colour_vector(colour: Any, channels: int, pil: bool, what: str) -> Tensor:
    value = torch.as_tensor(colour, dtype=torch.float64).flatten()
    if value.numel() not in (1, channels):
        kind = "ints 0-255" if pil else "values"
        raise InputError(
            f"{what} {colour!r} has {value.numel()} value(s) but the image has {channels} colour "
            f"channel(s): give {channels} {kind} (e.g. (255, 255, 255) for white) or one value."
        )
    if pil:
        ints = isinstance(colour, int | np.integer) or (
            isinstance(colour, Sequence) and all(isinstance(v, int | np.integer) for v in colour)
        )
        if not ints or bool(((value < 0) | (value > 255)).any()):
            raise InputError(
                f"{what} {colour!r} is not valid for a PIL image: give {channels} ints in 0-255 "
                "(e.g. (255, 255, 255) for white)."
            )
    return value.expand(channels)


class ConstantBaseline(ImageBaseline):
    """A constant colour: a scalar, or one value per channel, in the image's units.

    For PIL images the colour must be ints in 0-255 (3 for RGB/RGBA, 1 for L/LA) or a single
    int; ``pil_colour`` (optional) overrides it for PIL images, so one object can say "white" as
    ``1.0`` for tensors and ``255`` for PIL.
    """

    def __init__(self, colour: float | Sequence[float] = 0.0, pil_colour: Any = None) -> None:
        self.colour = colour
        self.pil_colour = pil_colour

    def _values(self, image: Tensor, removed: Tensor, pil: bool) -> Tensor:
        colour = self.pil_colour if pil and self.pil_colour is not None else self.colour
        value = _colour_vector(colour, image.shape[1], pil, "The baseline colour")
        return value.to(image.device)[None, :, None, None].expand_as(image)

    def __repr__(self) -> str:
        return f"ConstantBaseline({self.colour!r})"


class MeanBaseline(ImageBaseline):
    """A per-channel mean colour (e.g. the dataset mean from :func:`dataset_mean`); with
    ``mean=None`` each image's own per-channel mean."""

    def __init__(self, mean: float | Sequence[float] | Tensor | None = None) -> None:
        self.mean = mean

    def _values(self, image: Tensor, removed: Tensor, pil: bool) -> Tensor:
        if self.mean is None:
            return image.mean((2, 3), keepdim=True).expand_as(image)
        mean = torch.as_tensor(self.mean, dtype=torch.float64).flatten()
        if mean.numel() not in (1, image.shape[1]):
            raise InputError(
                f"The mean has {mean.numel()} values but the image has {image.shape[1]} channels."
            )
        return mean.to(image.device).expand(image.shape[1])[None, :, None, None].expand_as(image)


def dataset_mean(images: Tensor | Iterable[Any]) -> Tensor:
    """The per-channel mean over images: an ``(N, C, H, W)`` tensor or an iterable of
    ``(C, H, W)`` tensors / PIL images (PIL: 0-255 units, colour channels only).

    Returns:
        ``(C,)`` float64 tensor.
    """
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise InputError(f"Expected images (N, C, H, W), got {tuple(images.shape)}.")
        return images.double().mean((0, 2, 3))
    total, count = None, 0
    for image in images:
        t = pil_to_tensor(image)[0] if _is_pil(image) else torch.as_tensor(image).double()
        s = t.reshape(t.shape[0], -1).sum(1)
        if total is not None and s.shape != total.shape:
            raise InputError("The images do not all have the same number of channels.")
        total = s if total is None else total + s
        count += t.shape[-1] * t.shape[-2]
    if total is None:
        raise InputError("dataset_mean got no images.")
    return total / count


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflect padding (radius ``3 sigma``,
    capped at the image size minus one, which reflect padding requires)."""
    if sigma <= 0:
        return image
    h, w = image.shape[-2:]
    out = image
    for dim, size in ((2, h), (3, w)):
        radius = min(math.ceil(3 * sigma), size - 1)
        if radius == 0:
            continue
        x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        c = out.shape[1]
        if dim == 2:
            pad, weight = (0, 0, radius, radius), kernel.view(1, 1, -1, 1)
        else:
            pad, weight = (radius, radius, 0, 0), kernel.view(1, 1, 1, -1)
        padded = torch.nn.functional.pad(out, pad, mode="reflect")
        out = torch.nn.functional.conv2d(padded, weight.expand(c, 1, -1, -1), groups=c)
    return out


class BlurBaseline(ImageBaseline):
    """The image blurred with a Gaussian of standard deviation ``sigma`` pixels."""

    def __init__(self, sigma: float = 10.0) -> None:
        if not sigma > 0:
            raise InputError(f"sigma must be > 0, got {sigma!r}.")
        self.sigma = float(sigma)

    def _values(self, image: Tensor, removed: Tensor, pil: bool) -> Tensor:
        return gaussian_blur(image, self.sigma)


class NoiseBaseline(ImageBaseline):
    """Gaussian noise ``mean + std * z`` from a private generator seeded with ``seed``: the same
    seed gives the same pixels (whichever pixels are removed), independent of the global RNG.
    ``mean=None`` uses each image's per-channel mean. ``std`` is in tensor units (images in 0-1);
    for PIL images it is scaled by 255 (and ``mean``, if given, is in 0-255), and the result is
    clamped to 0-255."""

    def __init__(
        self, std: float = 0.1, seed: int = 0, mean: float | Sequence[float] | None = None
    ) -> None:
        if not std >= 0:
            raise InputError(f"std must be >= 0, got {std!r}.")
        self.std, self.seed, self.mean = float(std), int(seed), mean

    def _values(self, image: Tensor, removed: Tensor, pil: bool) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        z = torch.randn(image.shape[1:], generator=gen, dtype=torch.float64).to(image.device)
        mean = MeanBaseline(self.mean)._values(image.double(), removed, pil)
        return mean + self.std * (255.0 if pil else 1.0) * z


class InpaintBaseline(ImageBaseline):
    """Harmonic (diffusion) fill: removed pixels solve Laplace's equation (5-point stencil) with
    the kept pixels as boundary values and no flux across the image border, by preconditioned
    conjugate gradients (all images and channels at once). An image with no kept pixel is filled
    with ``fallback``."""

    region_dependent = True

    def __init__(self, iterations: int = 2000, tol: float = 1e-8, fallback: float = 0.0) -> None:
        self.iterations, self.tol, self.fallback = int(iterations), float(tol), float(fallback)

    def _values(self, image: Tensor, removed: Tensor, pil: bool) -> Tensor:
        x = image.double()
        free = removed[:, None].expand_as(x).to(x.dtype)  # 1 on unknowns
        ones = torch.ones_like(x[:1, :1])
        degree = _neighbour_sum(ones)  # in-image neighbours of each pixel (2, 3 or 4)

        def apply(u: Tensor) -> Tensor:  # the Laplacian restricted to the unknowns
            return free * (degree * u - _neighbour_sum(u * free))

        b = free * _neighbour_sum(x * (1 - free))
        u = torch.zeros_like(x)
        r = b.clone()
        z = r / degree
        p = z.clone()
        rz = (r * z).sum((2, 3), keepdim=True)
        scale = b.abs().amax((2, 3), keepdim=True).clamp_min(1e-30)
        for _ in range(self.iterations):
            # a converged system stops moving, so a result never depends on its batch-mates
            active = (r.abs().amax((2, 3), keepdim=True) > self.tol * scale).to(x.dtype)
            if not bool(active.any()):
                break
            ap = apply(p)
            alpha = active * rz / (p * ap).sum((2, 3), keepdim=True).clamp_min(1e-300)
            u = u + alpha * p
            r = r - alpha * ap
            z = r / degree
            rz_new = (r * z).sum((2, 3), keepdim=True)
            p = torch.where(active > 0, z + rz_new / rz.clamp_min(1e-300) * p, p)
            rz = torch.where(active > 0, rz_new, rz)
        none_kept = removed.all(-1).all(-1)[:, None, None, None]
        return torch.where(none_kept, torch.full_like(u, self.fallback), u)

    def as_tensor(self, image: Any) -> Tensor:
        raise InputError(
            "An inpainting baseline depends on which pixels are removed, so it has no single "
            "baseline image; use ImageSegments (or fill) to paint each perturbation."
        )


def _neighbour_sum(u: Tensor) -> Tensor:
    """Sum of each pixel's 4 neighbours inside the image (zero padding)."""
    out = torch.zeros_like(u)
    out[..., 1:, :] += u[..., :-1, :]
    out[..., :-1, :] += u[..., 1:, :]
    out[..., :, 1:] += u[..., :, :-1]
    out[..., :, :-1] += u[..., :, 1:]
    return out


_NAMED = {
    "black": lambda: ConstantBaseline(0.0, pil_colour=0),
    "white": lambda: ConstantBaseline(1.0, pil_colour=255),
    "mean": MeanBaseline,
    "blur": BlurBaseline,
    "noise": NoiseBaseline,
    "inpaint": InpaintBaseline,
}


def baseline_from(spec: Any) -> ImageBaseline:
    """An :class:`ImageBaseline` from Captum's ``(255, 255, 255)``-style colour tuple, a number,
    a name (``"black"``, ``"white"`` = 1.0 for tensors / 255 for PIL, ``"mean"`` = the image's
    own mean, ``"blur"``, ``"noise"``, ``"inpaint"``) or an ImageBaseline (returned as is)."""
    if isinstance(spec, ImageBaseline):
        return spec
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise InputError(f"Unknown baseline {spec!r}; use one of {sorted(_NAMED)}.")
        return _NAMED[spec]()
    if isinstance(spec, bool) or spec is None:
        raise InputTypeError(f"Cannot make an image baseline from {spec!r}.")
    if isinstance(spec, int | float | np.number):
        return ConstantBaseline(spec)
    if isinstance(spec, Sequence | Tensor | np.ndarray):
        values = torch.as_tensor(spec).flatten().tolist()
        if not all(isinstance(v, int | float) for v in values):
            raise InputTypeError(f"A baseline colour must be numbers, got {spec!r}.")
        return ConstantBaseline(tuple(values))
    raise InputTypeError(
        f"Cannot make an image baseline from {type(spec).__name__}: give a colour, a number, a "
        f"name ({', '.join(sorted(_NAMED))}) or an ImageBaseline."
    )
