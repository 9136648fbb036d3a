"""Faithfulness curves for image attributions: deletion and insertion (pixel flipping, the same
walk with noise, is in :mod:`llmattr.metrics.flipping`; ROAD in :mod:`llmattr.metrics.road`).

An attribution ranks the input's features. A faithful ranking names the features the model really
uses, so removing them first (*deletion*, most important first) makes the target's score fall fast,
and adding them first to an empty image (*insertion*) makes it rise fast. Conventions:

* **Features.** With a ``feature_mask`` (integer ids ``0 .. K-1``, broadcastable to the input like
  Captum's masks: ``(1, 1, H, W)`` for one segmentation shared by every channel and example,
  ``(N, 1, H, W)`` for one per example), a feature is the set of elements with one id. Without a
  mask each element of the input is a feature. Attributions may be given per feature
  ``(N, K)`` or per element (the input's shape; a dimension of size 1 where the mask has size 1,
  e.g. a ``(N, 1, H, W)`` saliency map): a feature's score is then the sum over its elements.
  Features are ranked per example, ties broken by the lower id.
* **Removing** a feature replaces its elements by the baseline: a number, a tensor broadcastable to
  the input, or an object with ``fill(image, removed) -> image`` (an image baseline from
  :mod:`llmattr.vision.baselines`, or :class:`~llmattr.metrics.road.NoisyLinearImputer`), which
  gets one ``(C, H, W)`` image and the ``(H, W)`` bool map of its removed pixels (or, if it has
  ``fills_batches = True`` or is a vision ``ImageBaseline``, a whole chunk: ``(B, C, H, W)`` and
  ``(B, H, W)``).
* **Scores** are whatever the forward returns for the target (a probability if it ends with a
  softmax, else a logit): ``scores[i, j]`` is the target's output for example ``i`` at the curve's
  point ``j``. **Lower deletion AUC and higher insertion AUC are better.** The AUC is the
  trapezoid over the fraction of features removed (deletion) or present (insertion), in [0, 1].
* **Batching.** Every point of every example goes through the forward in chunks of
  ``batch_size`` rows (default 64; ``None``: all at once; ``"auto"``: halve on out-of-memory),
  so memory is bounded and the curves do not depend on ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._core.batching import ChunkSize, run_in_chunks
from .._core.errors import InputError, InputTypeError
from .._core.inputs import format_additional_args, select_rows
from .._core.targets import TargetType, normalize_target

__all__ = ["CurveResult", "deletion_curve", "insertion_curve"]


@dataclass
class CurveResult:
    """A faithfulness curve per example.

    Attributes:
        kind: ``"deletion"``, ``"insertion"``, ``"pixel_flipping"``, ``"road-morf"`` or
            ``"road-lerf"``.
        fractions: ``(n_points,)`` fraction of features removed (deletion, pixel flipping, ROAD)
            or present (insertion) at each point, exactly ``count / n_features``.
        scores: ``(N, n_points)`` the target's output at each point.
        auc: ``(N,)`` trapezoid area under ``scores`` over ``fractions``.
        normalized_auc: ``(N,)`` area under ``(scores - s_empty) / (s_full - s_empty)``, where
            ``s_full`` is the score with every feature present and ``s_empty`` with none (the
            curve's two ends), so deletion runs from 1 to 0 and insertion from 0 to 1 whatever the
            output's scale; NaN where the two ends are equal. ``None`` when the curve does not
            reach both ends (ROAD).
        aopc: ``(N,)`` pixel flipping only: the mean of ``scores[:, 0] - scores`` over the
            points (Samek et al.'s area over the perturbation curve; higher is better).
        order: ``(N, n_features)`` feature ids in the order they were removed or inserted.
    """

    kind: str
    fractions: Tensor
    scores: Tensor
    auc: Tensor
    normalized_auc: Tensor | None
    order: Tensor
    aopc: Tensor | None = None

    def plot(self, ax: Any = None, label: str | None = None, normalized: bool = False) -> Any:
        """Plot the mean curve over examples (with the min-max band); returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        s = self.scores.detach().double().cpu()
        if normalized:
            s = _normalized(self.kind, s)
        x = self.fractions.detach().double().cpu().numpy()
        ax.plot(x, s.mean(0).numpy(), label=label or self.kind)
        if s.shape[0] > 1:
            ax.fill_between(x, s.min(0).values.numpy(), s.max(0).values.numpy(), alpha=0.2)
        removed = self.kind != "insertion"
        ax.set_xlabel("fraction of features " + ("removed" if removed else "inserted"))
        ax.set_ylabel("normalized score" if normalized else "target score")
        return ax


def _normalized(kind: str, s: Tensor) -> Tensor:
    """``(s - s_empty) / (s_full - s_empty)`` from a curve's two ends (NaN where they are equal)."""
    if kind.startswith("road"):
        raise ValueError("A ROAD curve does not reach both ends; it has no normalized form.")
    full, empty = (s[:, -1:], s[:, :1]) if kind == "insertion" else (s[:, :1], s[:, -1:])
    span = full - empty
    return torch.where(span != 0, (s - empty) / span.where(span != 0, 1.0), torch.nan)


def _check_inputs(inputs: Any) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise InputTypeError(
            f"inputs must be a tensor of shape (N, ...) such as (N, C, H, W), got "
            f"{type(inputs).__name__}."
        )
    if inputs.dim() < 2 or not inputs.is_floating_point():
        raise InputError(
            f"inputs must be a floating tensor (N, ...) with a batch dimension, got shape "
            f"{tuple(inputs.shape)} and dtype {inputs.dtype}."
        )
    return inputs.detach()


def check_feature_mask(feature_mask: Any, inputs: Tensor) -> tuple[Tensor, int]:
    """Validate a mask of integer ids ``0 .. K-1`` broadcastable to ``inputs`` ``(N, ...)``.

    A ``(H, W)`` mask is taken as ``(1, 1, H, W)`` for ``(N, C, H, W)`` inputs.

    Returns:
        ``(mask, K)`` with ``mask`` of ``inputs.dim()`` dimensions, each 1 or the input's size.
    """
    shape = tuple(inputs.shape)
    if feature_mask is None:
        n = inputs[0].numel()
        return torch.arange(n, device=inputs.device).reshape(1, *shape[1:]), n
    if not isinstance(feature_mask, Tensor):
        raise InputTypeError(f"feature_mask must be a tensor, got {type(feature_mask).__name__}.")
    mask = feature_mask.detach()
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise InputError(
            f"feature_mask must hold integer feature ids (0 .. K-1), got dtype {mask.dtype}; "
            "convert it with .long() after checking its values are whole numbers."
        )
    if mask.dim() == 2 and len(shape) == 4:
        mask = mask[None, None]
    fits = mask.dim() == len(shape) and all(
        m in (1, s) for m, s in zip(mask.shape, shape, strict=True)
    )
    if not fits:
        raise InputError(
            f"feature_mask of shape {tuple(feature_mask.shape)} does not fit inputs of shape "
            f"{shape}: every dimension must be 1 or the input's size (e.g. (1, 1, H, W) for one "
            "segmentation shared by all channels and examples). Resize the mask to the image."
        )
    if mask.numel() == 0 or int(mask.min()) < 0:
        raise InputError("feature_mask ids must be non-negative integers 0 .. K-1.")
    return mask.long().to(inputs.device), int(mask.max()) + 1


def feature_scores(attributions: Any, mask: Tensor, n_features: int, inputs: Tensor) -> Tensor:
    """Each feature's attribution: ``(N, K)`` from per-feature ``(N, K)`` or per-element
    attributions (the input's shape, or size 1 where the mask has size 1), summed per feature."""
    if not isinstance(attributions, Tensor):
        raise InputTypeError(f"attributions must be a tensor, got {type(attributions).__name__}.")
    a = attributions.detach().to(inputs.device)
    n, shape = inputs.shape[0], tuple(inputs.shape)
    per_element = (
        a.dim() == len(shape)
        and a.shape[0] == n
        and all(
            s == t or (s == 1 and m == 1)
            for s, t, m in zip(a.shape[1:], shape[1:], mask.shape[1:], strict=True)
        )
    )
    if per_element:
        ids = mask.expand(n, *a.shape[1:]).reshape(n, -1)
        flat = a.reshape(n, -1).double()
        scores = torch.zeros(n, n_features, dtype=flat.dtype, device=a.device)
        scores.scatter_add_(1, ids, flat)
    elif tuple(a.shape) == (n, n_features):
        scores = a.double()
    else:
        raise InputError(
            f"attributions of shape {tuple(a.shape)} fit neither the inputs {shape} (one value "
            f"per element) nor the {n_features} features (shape ({n}, {n_features})). A map with "
            "fewer channels than the image needs a feature_mask with size 1 in those dimensions, "
            "e.g. torch.arange(H * W).reshape(1, 1, H, W) for single pixels."
        )
    if not bool(torch.isfinite(scores).all()):
        raise InputError("attributions contain NaN or infinite values; cannot rank features.")
    return scores


def _check_baselines(baselines: Any, inputs: Tensor) -> Tensor | Any:
    if hasattr(baselines, "fill") and callable(baselines.fill):
        if inputs.dim() != 4:
            raise InputError(
                f"A fill baseline ({type(baselines).__name__}) needs images (N, C, H, W), got "
                f"inputs of shape {tuple(inputs.shape)}."
            )
        if getattr(baselines, "region_dependent", True) is False and hasattr(
            baselines, "as_tensor"
        ):
            # the fill does not depend on which pixels are removed: one full baseline per image
            full = [torch.as_tensor(baselines.as_tensor(img)) for img in inputs]
            return torch.stack(full).to(inputs)
        return baselines
    if isinstance(baselines, bool) or not isinstance(baselines, int | float | Tensor):
        raise InputTypeError(
            "baselines must be a number, a tensor broadcastable to the inputs, or an image "
            f"baseline with fill(image, removed); got {type(baselines).__name__}."
        )
    b = torch.as_tensor(baselines, dtype=inputs.dtype, device=inputs.device).detach()
    try:
        return torch.broadcast_to(b, inputs.shape)
    except RuntimeError:
        raise InputError(
            f"baselines of shape {tuple(b.shape)} cannot be broadcast to inputs of shape "
            f"{tuple(inputs.shape)}."
        ) from None


def _counts(n_features: int, n_steps: int | None, steps: Sequence[float] | None) -> Tensor:
    if steps is not None:
        f = torch.as_tensor(list(steps), dtype=torch.float64)
        if f.dim() != 1 or f.numel() < 2 or f[0] != 0 or f[-1] != 1 or bool((f.diff() <= 0).any()):
            raise InputError(
                f"steps must be increasing fractions from 0.0 to 1.0 (both included), got {steps}."
            )
        return torch.unique(torch.round(f * n_features).long())
    n = min(n_features, 100) if n_steps is None else n_steps
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n_steps must be a positive int, got {n_steps!r}.")
    k = torch.arange(min(n, n_features) + 1, dtype=torch.float64)
    return torch.unique(torch.round(k * n_features / min(n, n_features)).long())


def _fills_batches(filler: Any) -> bool:
    """Whether ``filler.fill`` takes ``(B, C, H, W)`` images with ``(B, H, W)`` maps at once."""
    if getattr(filler, "fills_batches", False) is True:
        return True
    try:  # the image baselines of llmattr.vision fill batches
        from ..vision.baselines import ImageBaseline
    except ImportError:  # pragma: no cover - only while that module is absent
        return False
    return isinstance(filler, ImageBaseline)


def perturbation_curve(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    *,
    counts: Tensor | Callable[[int], Tensor],
    feature_mask: Tensor | None = None,
    baselines: Any = 0.0,
    target: TargetType = None,
    additional_forward_args: Any = None,
    batch_size: ChunkSize = None,
    descending: bool = True,
    insert: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The engine behind every curve: rank features, perturb, run the forward in chunks.

    At point ``j``, the first ``counts[j]`` features of the ranking (by attribution, descending or
    ascending) are removed, or, with ``insert``, are the only ones present. Everything is checked
    before the first forward.

    Returns:
        ``(fractions (P,), scores (N, P), order (N, K))``.
    """
    x = _check_inputs(inputs)
    mask, n_features = check_feature_mask(feature_mask, x)
    scores_k = feature_scores(attributions, mask, n_features, x)
    base = _check_baselines(baselines, x)
    filler = None if isinstance(base, Tensor) else base
    if filler is not None and mask.shape[1] != 1:
        raise InputError(
            f"A fill baseline removes whole pixels, but the feature_mask (shape "
            f"{tuple(mask.shape)}) differs across channels; pass a mask of shape (1, 1, H, W) or "
            "(N, 1, H, W), e.g. torch.arange(H * W).reshape(1, 1, H, W) for single pixels."
        )
    cnt = counts(n_features) if callable(counts) else counts
    n, p = x.shape[0], cnt.numel()
    tgt = normalize_target(target, n)
    args = format_additional_args(additional_forward_args)

    order = torch.sort(scores_k, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_features, device=x.device).expand(n, -1))
    # rank of the feature each element belongs to: (N, *inputs.shape[1:])
    pix_rank = rank.gather(1, mask.expand(n, *x.shape[1:]).reshape(n, -1)).reshape(x.shape)
    cnt_dev = cnt.to(x.device)
    batched_fill = filler is not None and _fills_batches(filler)

    def evaluate(start: int, end: int) -> Tensor:
        rows = torch.arange(start, end, device=x.device)
        ex, pt = rows // p, rows % p
        view = (-1,) + (1,) * (x.dim() - 1)
        first = pix_rank[ex] < cnt_dev[pt].view(view)
        removed = ~first if insert else first
        xs = x[ex]
        if filler is None:
            filled = base[ex]
        elif batched_fill:
            filled = torch.as_tensor(filler.fill(xs, removed[:, 0])).to(xs)
        else:
            filled = torch.stack(
                [torch.as_tensor(filler.fill(xs[r], removed[r, 0])) for r in range(len(rows))]
            ).to(xs)
        batch = torch.where(removed, filled, xs)
        out = forward_func(batch, *select_rows(args, n, ex))
        return tgt.rows(ex.cpu()).select(out, len(rows)).detach()

    with torch.no_grad():
        parts = run_in_chunks(n * p, batch_size, evaluate, name="batch_size")
    scores = torch.cat(parts).reshape(n, p)
    return cnt.double() / n_features, scores, order


def _finish(kind: str, fractions: Tensor, scores: Tensor, order: Tensor) -> CurveResult:
    f = fractions.to(scores.device, torch.float64)
    s = scores.double()
    norm = None if kind.startswith("road") else torch.trapezoid(_normalized(kind, s), f, dim=1)
    return CurveResult(kind, f, scores, torch.trapezoid(s, f, dim=1), norm, order)


def deletion_curve(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    feature_mask: Tensor | None = None,
    baselines: Any = 0.0,
    target: TargetType = None,
    n_steps: int | None = None,
    steps: Sequence[float] | None = None,
    additional_forward_args: Any = None,
    batch_size: ChunkSize = 64,
) -> CurveResult:
    """Deletion curve (Petsiuk et al. 2018): remove features most important first.

    Point 0 is ``f(inputs)``, the last point ``f(baseline)``; a lower AUC is better.

    Args:
        forward_func: the model or any function ``(N, ...) -> (N, ...)`` outputs.
        inputs: ``(N, ...)``, e.g. images ``(N, C, H, W)``; never modified.
        attributions: ``(N, K)`` per feature, or per element (the input's shape; size 1 where the
            mask has size 1, e.g. a ``(N, 1, H, W)`` map); per element they are summed per feature.
        feature_mask: integer ids ``0 .. K-1`` broadcastable to ``inputs`` (``(1, 1, H, W)``,
            ``(N, 1, H, W)``, ``(H, W)`` for images); ``None``: each element is a feature.
        baselines: what replaces a removed feature: a number, a tensor broadcastable to
            ``inputs``, or an object with ``fill(image (C, H, W), removed (H, W) bool)``.
        target: Captum's target (an int, a tuple, one per example as a list or tensor, or
            ``None`` when the forward returns one value per example).
        n_steps: number of steps after the first point (at most ``K``; default
            ``min(K, 100)``); point ``k`` removes ``round(k * K / n_steps)`` features.
        steps: instead of ``n_steps``, increasing fractions from 0.0 to 1.0.
        additional_forward_args: extra forward arguments; tensors with the batch size as
            dimension 0 follow their example.
        batch_size: curve points per forward (default 64; ``None``: all at once; ``"auto"``:
            all at once, halving on out of memory).

    Returns:
        :class:`CurveResult` with ``fractions (P,)``, ``scores (N, P)``, ``auc (N,)``,
        ``normalized_auc (N,)``, ``order (N, K)``.
    """
    fr, sc, order = perturbation_curve(
        forward_func,
        inputs,
        attributions,
        counts=lambda k: _counts(k, n_steps, steps),
        feature_mask=feature_mask,
        baselines=baselines,
        target=target,
        additional_forward_args=additional_forward_args,
        batch_size=batch_size,
    )
    return _finish("deletion", fr, sc, order)


def insertion_curve(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    feature_mask: Tensor | None = None,
    baselines: Any = 0.0,
    target: TargetType = None,
    n_steps: int | None = None,
    steps: Sequence[float] | None = None,
    additional_forward_args: Any = None,
    batch_size: ChunkSize = 64,
) -> CurveResult:
    """Insertion curve (Petsiuk et al. 2018): start from the baseline, add features most
    important first.

    Point 0 is ``f(baseline)``, the last point ``f(inputs)``; a higher AUC is better. Arguments
    and result as :func:`deletion_curve`, the fractions counting the features present.
    """
    fr, sc, order = perturbation_curve(
        forward_func,
        inputs,
        attributions,
        counts=lambda k: _counts(k, n_steps, steps),
        feature_mask=feature_mask,
        baselines=baselines,
        target=target,
        additional_forward_args=additional_forward_args,
        batch_size=batch_size,
        insert=True,
    )
    return _finish("insertion", fr, sc, order)
