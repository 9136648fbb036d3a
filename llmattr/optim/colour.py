"""Colour-space transforms for image parameterizations (optim-wip's ``ToRGB``).

Feature visualizations optimize in a decorrelated colour space: the parameters of each channel
are (roughly) independent, and :class:`ToRGB` maps them to RGB with a fixed 3x3 matrix. The map
is linear, so it has an exact inverse (``inverse=True``), which is used to put an initial RGB image
into the decorrelated space.
"""

from __future__ import annotations

import torch
from torch import nn

from llmattr._core.errors import InputError, InputTypeError

__all__ = ["ToRGB", "i1i2i3_matrix", "klt_matrix"]


def klt_matrix() -> torch.Tensor:
    """The KLT colour matrix of Lucid / optim-wip, shape ``(3, 3)``, float64.

    The square root of ImageNet's colour correlation (its SVD), with each column divided by the
    largest column norm, so that unit-variance decorrelated channels give RGB values of at most
    unit scale.
    """
    klt = torch.tensor(
        [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
    )
    return klt / klt.norm(dim=0).max()


def i1i2i3_matrix() -> torch.Tensor:
    """The I1I2I3 colour matrix (Ohta et al.), shape ``(3, 3)``, float64."""
    return torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0.0, -1 / 2], [-1 / 4, 1 / 2, -1 / 4]],
        dtype=torch.float64,
    )


class ToRGB(nn.Module):
    """Map decorrelated colour channels to RGB (or back, with ``inverse=True``).

    ``forward(x)`` computes, at every pixel, ``rgb = M @ x[:, :K]`` where ``M`` is the ``(K, K)``
    transform (``K = 3`` for ``"klt"`` and ``"i1i2i3"``). A fourth channel when ``K = 3`` (in
    general channel ``K``) is an alpha channel: it is passed through unchanged. ``inverse=True``
    applies ``M^-1``, so ``to_rgb(to_rgb(x), inverse=True) == x`` up to rounding.

    Args:
        transform: ``"klt"`` (default), ``"i1i2i3"``, or a square invertible matrix ``(K, K)``
            (a tensor or nested sequence), for ``K`` colour channels.

    Inputs: ``x`` of shape ``(N, C, H, W)`` or ``(C, H, W)`` with ``C == K`` or ``C == K + 1``
    (the last channel is alpha). Output: the same shape and dtype.
    """

    transform: torch.Tensor
    inverse_transform: torch.Tensor

    def __init__(self, transform: str | torch.Tensor | list = "klt") -> None:
        super().__init__()
        if isinstance(transform, str):
            if transform == "klt":
                matrix = klt_matrix()
            elif transform == "i1i2i3":
                matrix = i1i2i3_matrix()
            else:
                raise InputError(
                    f"ToRGB transform {transform!r} is unknown; use 'klt', 'i1i2i3' or a matrix"
                )
        else:
            try:
                matrix = torch.as_tensor(transform).detach().to(torch.float64)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputTypeError(
                    f"ToRGB transform must be 'klt', 'i1i2i3' or a square matrix, "
                    f"got {type(transform).__name__}"
                ) from exc
            if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
                raise InputError(
                    f"ToRGB transform matrix must be square (K, K), got shape {tuple(matrix.shape)}"
                )
            if not bool(torch.isfinite(matrix).all()):
                raise InputError("ToRGB transform matrix has NaN or infinite entries")
            if torch.linalg.matrix_rank(matrix) < matrix.shape[0]:
                raise InputError("ToRGB transform matrix is singular, so it has no inverse")
        self.register_buffer("transform", matrix)
        self.register_buffer("inverse_transform", torch.linalg.inv(matrix))

    @property
    def n_colours(self) -> int:
        """``K``, the number of colour channels the matrix mixes."""
        return int(self.transform.shape[0])

    def forward(self, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Apply the colour matrix (or its inverse) to ``x`` ``(N, C, H, W)`` or ``(C, H, W)``."""
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"ToRGB expects a tensor, got {type(x).__name__}")
        if x.dim() not in (3, 4):
            raise InputError(f"ToRGB expects (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputTypeError(f"ToRGB expects a floating-point tensor, got {x.dtype}")
        k = self.n_colours
        cdim = x.dim() - 3
        channels = x.shape[cdim]
        if channels not in (k, k + 1):
            raise InputError(
                f"ToRGB with a {k}x{k} matrix takes {k} channels (or {k + 1} with alpha), "
                f"got {channels}"
            )
        matrix = self.inverse_transform if inverse else self.transform
        matrix = matrix.to(device=x.device, dtype=x.dtype)
        colour, alpha = x.narrow(cdim, 0, k), x.narrow(cdim, k, channels - k)
        mixed = torch.einsum("ij,...jhw->...ihw", matrix, colour)
        return torch.cat([mixed, alpha], dim=cdim) if channels > k else mixed

    def extra_repr(self) -> str:
        return f"n_colours={self.n_colours}"
