"""Pixel flipping (Bach et al. 2015; Samek et al. 2017): deletion with random replacement values
and the area over the perturbation curve (AOPC). Conventions as :mod:`llmattr.metrics.image`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._core.batching import ChunkSize
from .._core.targets import TargetType
from .image import CurveResult, _check_inputs, _counts, _finish, perturbation_curve

__all__ = ["pixel_flipping", "uniform_noise"]


def uniform_noise(inputs: Tensor, seed: int = 0) -> Tensor:
    """Seeded uniform noise ``(N, ...)`` in each example's value range ``[min, max]``."""
    x = inputs.detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(x.device)
    flat = x.reshape(x.shape[0], -1)
    view = (-1,) + (1,) * (x.dim() - 1)
    lo, hi = flat.min(1).values.view(view), flat.max(1).values.view(view)
    return (lo + u * (hi - lo)).to(x.dtype)


def pixel_flipping(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    feature_mask: Tensor | None = None,
    baselines: Any = "uniform",
    target: TargetType = None,
    n_steps: int | None = None,
    steps: Sequence[float] | None = None,
    additional_forward_args: Any = None,
    batch_size: ChunkSize = 64,
    seed: int = 0,
) -> CurveResult:
    """Pixel flipping (Bach et al. 2015; Samek et al. 2017's region perturbation, MoRF).

    The same walk as :func:`deletion_curve` (features flipped most relevant first), with two
    differences: by default a flipped element takes a seeded random value drawn uniformly from the
    example's own value range (``baselines="uniform"``, ``seed``) instead of a constant, and the
    result's ``aopc`` holds the area over the perturbation curve, ``mean_j (s_0 - s_j)`` over the
    ``n_points`` points including the unperturbed one (higher is better). ``auc`` and
    ``normalized_auc`` are computed as for deletion. Other arguments as :func:`deletion_curve`.
    """
    x = _check_inputs(inputs)
    base = (
        uniform_noise(x, seed)
        if isinstance(baselines, str) and baselines == "uniform"
        else baselines
    )
    fr, sc, order = perturbation_curve(
        forward_func,
        x,
        attributions,
        counts=lambda k: _counts(k, n_steps, steps),
        feature_mask=feature_mask,
        baselines=base,
        target=target,
        additional_forward_args=additional_forward_args,
        batch_size=batch_size,
    )
    res = _finish("pixel_flipping", fr, sc, order)
    res.aopc = (sc[:, :1] - sc).double().mean(1)
    return res
