"""ROAD: remove and debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods").

Removing pixels by painting them a constant leaks the removed shape to the model (the mask itself
becomes a feature). ROAD fills removed pixels by *noisy linear imputation* instead: each removed
pixel is the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct, 1/12 for the 4
diagonal neighbours), with the kept pixels as boundary, plus a little Gaussian noise. The means of
all removed pixels depend on each other, so they are the solution of one sparse linear system,
solved here with conjugate gradients on the pixel grid (the system matrix is applied as a stencil,
never stored).

:func:`road` removes a fraction of the pixels (most relevant first, *MoRF*, or least relevant
first, *LeRF*) at each of ``percentages`` and records the target's score. A faithful attribution
makes the MoRF curve fall fast and the LeRF curve stay high.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._core.batching import ChunkSize
from .._core.errors import InputError, InputTypeError
from .._core.targets import TargetType
from .image import CurveResult, _check_inputs, _finish, perturbation_curve

__all__ = ["NoisyLinearImputer", "road"]

# 3x3 stencil of neighbour weights from the paper: 1/6 direct, 1/12 diagonal, 0 at the centre
_STENCIL = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64
)


def _neighbour_sum(v: Tensor) -> Tensor:
    """``sum_j w_j v_j`` over the in-image neighbours of every pixel: ``(C, H, W) -> (C, H, W)``."""
    k = _STENCIL.to(v)[None, None]
    return F.conv2d(v[:, None], k, padding=1)[:, 0]


class NoisyLinearImputer:
    """Fill removed pixels with the weighted mean of their neighbours, plus seeded noise.

    For the removed pixels ``R`` the values ``u`` solve, for every ``i`` in ``R``,
    ``d_i u_i - sum_{j in R} w_ij u_j = sum_{j kept} w_ij x_j`` with ``d_i = sum_j w_ij`` over the
    in-image neighbours (so at the border a pixel averages the neighbours it has). The matrix is
    symmetric and positive definite whenever some pixel is kept; conjugate gradients (Jacobi
    preconditioned, in float64) solve all channels and images at once. Kept pixels are returned
    unchanged.
    If every pixel is removed there is no boundary and the image is filled with zeros (plus noise).

    Args:
        noise: standard deviation of the Gaussian noise added to the imputed pixels (0.01 in the
            paper, for images scaled to about unit range); 0 for the pure linear imputation.
        seed: seed of the noise; every image gets the same noise for the same ``(C, H, W)``, so
            results do not depend on batching or call order.
        tol: relative residual at which conjugate gradients stop (the default is far below the
            paper's noise; use e.g. ``1e-12`` with ``noise=0`` for the exact linear imputation).
        max_iter: iteration cap (default ``10 * sqrt(number of removed pixels) + 100``).
    """

    #: the value of a removed pixel depends on which pixels are removed (see vision.baselines)
    region_dependent = True
    #: fill takes a batch (N, C, H, W) with maps (N, H, W)
    fills_batches = True

    def __init__(
        self, noise: float = 0.01, seed: int = 0, tol: float = 1e-6, max_iter: int | None = None
    ) -> None:
        if not isinstance(noise, int | float) or isinstance(noise, bool) or noise < 0:
            raise InputError(f"noise must be a non-negative number, got {noise!r}.")
        self.noise, self.seed, self.tol, self.max_iter = float(noise), int(seed), tol, max_iter

    def __repr__(self) -> str:
        return f"NoisyLinearImputer(noise={self.noise}, seed={self.seed})"

    def fill(self, image: Tensor, removed: Tensor) -> Tensor:
        """Impute the removed pixels of one image or of a batch of images.

        Args:
            image: ``(C, H, W)`` or a batch ``(N, C, H, W)``, floating; not modified.
            removed: ``(H, W)`` bool, True where a pixel is removed (all its channels); for a
                batch ``(N, H, W)``, one map per image (or ``(H, W)`` shared by all).

        Returns:
            ``image``'s shape and dtype: kept pixels unchanged, removed ones imputed. Every image
            gets the same seeded ``(C, H, W)`` noise, so a batch equals its images filled one by
            one (up to ``tol``: the solver stops when every image of the batch has converged).
        """
        if not isinstance(image, Tensor) or not isinstance(removed, Tensor):
            raise InputTypeError("image and removed must be tensors.")
        single = image.dim() == 3
        x = image.detach()[None] if single else image.detach()
        r = removed.to(x.device, torch.bool)
        r = r.expand(x.shape[0], *r.shape) if r.dim() == 2 else r
        if x.dim() != 4 or tuple(r.shape) != (x.shape[0], *x.shape[2:]):
            raise InputError(
                f"fill needs an image (C, H, W) with a removed map (H, W), or images (N, C, H, W) "
                f"with maps (N, H, W), of the same size; got {tuple(image.shape)} and "
                f"{tuple(removed.shape)}."
            )
        n, c, h, w = x.shape
        rm = r[:, None].expand(n, c, h, w).reshape(n * c, h, w)
        xd = x.double().reshape(n * c, h, w)
        out = torch.where(rm, self._solve(xd, rm.double()), xd).reshape(n, c, h, w)
        if self.noise > 0:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            eps = torch.randn((c, h, w), generator=gen, dtype=torch.float64).to(x.device)
            out = torch.where(r[:, None], out + self.noise * eps, out)
        out = out.to(x.dtype)
        return out[0] if single else out

    def _solve(self, x: Tensor, rm: Tensor) -> Tensor:
        """Conjugate gradients for the removed pixels of ``S`` independent systems.

        Args:
            x: ``(S, H, W)`` float64 images; rm: ``(S, H, W)`` 1.0 where removed, else 0.0.

        Returns:
            ``(S, H, W)``: the solution at removed pixels (0 elsewhere). A system without kept
            pixels has ``b = 0`` and stops at once with zeros.
        """
        diag = _neighbour_sum(torch.ones_like(x[:1]))  # (1, H, W) in-image weight sums

        def apply(u: Tensor) -> Tensor:
            return rm * (diag * u - _neighbour_sum(rm * u))

        b = rm * _neighbour_sum((1 - rm) * x)
        u = torch.zeros_like(x)
        res = b.clone()
        z = res / diag
        p = z.clone()
        rz = (res * z).sum((1, 2))
        stop = self.tol * b.flatten(1).norm(dim=1)
        n_removed = int(rm.sum((1, 2)).max())
        iters = self.max_iter or int(10 * n_removed**0.5) + 100
        for _ in range(iters):
            if bool((res.flatten(1).norm(dim=1) <= stop).all()):
                break
            ap = apply(p)
            alpha = rz / (p * ap).sum((1, 2)).clamp_min(1e-300)
            u = u + alpha[:, None, None] * p
            res = res - alpha[:, None, None] * ap
            z = res / diag
            rz_new = (res * z).sum((1, 2))
            p = z + (rz_new / rz.clamp_min(1e-300))[:, None, None] * p
            rz = rz_new
        return u


def road(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: Literal["morf", "lerf"] = "morf",
    imputer: Any = None,
    feature_mask: Tensor | None = None,
    additional_forward_args: Any = None,
    batch_size: ChunkSize = 64,
) -> CurveResult:
    """ROAD curve: at each percentage remove that fraction of the features and impute them.

    Args:
        forward_func: the model, ``(N, C, H, W) -> (N, ...)``.
        inputs: images ``(N, C, H, W)``; never modified.
        attributions: per pixel ``(N, C, H, W)`` (summed over channels) or ``(N, 1, H, W)``, or
            per feature ``(N, K)``.
        target: Captum's target (an int, one per example as a list or tensor, ...).
        percentages: fractions of the features removed, each in ``[0, 1]``, increasing.
        order: ``"morf"`` removes the most relevant features first, ``"lerf"`` the least.
        imputer: an object with ``fill(image (C, H, W), removed (H, W))``; default
            :class:`NoisyLinearImputer` ``()``.
        feature_mask: ids ``(1, 1, H, W)`` or ``(N, 1, H, W)`` of regions removed together;
            default: each pixel (all its channels) is a feature, as in the paper.
        additional_forward_args: extra forward arguments (batched tensors follow their example).
        batch_size: curve points per forward (default 64; ``None``: all at once; ``"auto"``:
            all at once, halving on out of memory).

    Returns:
        :class:`~llmattr.metrics.image.CurveResult` of kind ``"road-morf"`` or ``"road-lerf"``:
        ``fractions (P,)`` (the fractions really removed, ``round(p * K) / K``), ``scores (N, P)``,
        ``auc (N,)`` the trapezoid over ``fractions`` (MoRF: lower is better; LeRF: higher is
        better); ``normalized_auc`` is ``None``.
    """
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}.")
    x = _check_inputs(inputs)
    if x.dim() != 4:
        raise InputError(f"road needs images (N, C, H, W), got shape {tuple(x.shape)}.")
    pct = torch.as_tensor(list(percentages), dtype=torch.float64)
    if pct.dim() != 1 or pct.numel() == 0 or bool(((pct < 0) | (pct > 1)).any()):
        raise InputError(f"percentages must be fractions in [0, 1], got {percentages}.")
    if pct.numel() > 1 and bool((pct.diff() <= 0).any()):
        raise InputError(f"percentages must be increasing, got {percentages}.")
    if feature_mask is None:
        h, w = x.shape[-2:]
        feature_mask = torch.arange(h * w, device=x.device).reshape(1, 1, h, w)
    fr, sc, ranking = perturbation_curve(
        forward_func,
        x,
        attributions,
        counts=lambda k: torch.round(pct * k).long(),
        feature_mask=feature_mask,
        baselines=NoisyLinearImputer() if imputer is None else imputer,
        target=target,
        additional_forward_args=additional_forward_args,
        batch_size=batch_size,
        descending=order == "morf",
    )
    return _finish(f"road-{order}", fr, sc, ranking)
