"""Image features as masks: label maps for ``feature_mask`` and overlapping boolean mask lists.

A *label map* is an ``(H, W)`` ``torch.long`` tensor whose values are feature ids ``0..n-1``
(contiguous): every pixel belongs to exactly one feature. It is what Captum-style perturbation
methods take as ``feature_mask`` (see :func:`as_feature_mask` for the shape they accept on
``(N, C, H, W)`` inputs). A *mask list* is a list of ``(H, W)`` boolean tensors: features may
overlap and pixels may belong to none (Captum's ``ImageMaskInput(mask_list=...)``).
:func:`scatter_to_pixels` turns per-feature attributions back into pixel maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .layout import PatchLayout

__all__ = [
    "LabelMap",
    "as_feature_mask",
    "check_mask",
    "check_mask_list",
    "grid_mask",
    "label_map_mask",
    "masks_from_boxes",
    "patch_mask",
    "scatter_to_pixels",
]

_RESIZE_HINT = "resize the mask with nearest-neighbour interpolation"


class LabelMap(NamedTuple):
    """A contiguous label map and the original id of each of its features.

    Attributes:
        mask: ``(H, W)`` long tensor with ids ``0..n-1``.
        ids: ``(n,)`` tensor; ``ids[k]`` is the original label of feature ``k``.
    """

    mask: Tensor
    ids: Tensor


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{what} must be a positive int, got {value!r}.")
    return int(value)


def _edges(length: int, parts: int) -> Tensor:
    """Which of ``parts`` near-equal cells each of ``length`` positions falls in."""
    # floor(i * parts / length): cells differ in size by at most one position
    return torch.arange(length) * parts // length


def grid_mask(height: int, width: int, rows: int, cols: int) -> Tensor:
    """A ``rows x cols`` grid of rectangular cells, ids in row-major order.

    When ``height`` (``width``) is not a multiple of ``rows`` (``cols``), the cells differ in
    size by at most one pixel along that axis (pixel ``i`` goes to cell ``i * rows // height``).

    Returns:
        ``(height, width)`` long tensor with ids ``0..rows*cols-1``.
    """
    height, width = _positive(height, "height"), _positive(width, "width")
    rows, cols = _positive(rows, "rows"), _positive(cols, "cols")
    if rows > height or cols > width:
        raise InputError(
            f"A {rows}x{cols} grid does not fit a {height}x{width} image: use at most one cell "
            "per pixel along each axis."
        )
    return _edges(height, rows)[:, None] * cols + _edges(width, cols)[None, :]


def patch_mask(model_or_config: Any, image_size: int | tuple[int, int] | None = None) -> Tensor:
    """A vision transformer's patches, id ``k`` = the ``k``-th patch token of the model.

    Args:
        model_or_config: a ``transformers`` ViT-like model or its config (CLIP/LLaVA: the
            vision tower's layout is used).
        image_size: the resolution the model runs at, if not the config's.

    Returns:
        ``(H, W)`` long tensor with ids ``0..n_patches-1``.
    """
    return PatchLayout.from_config(model_or_config, image_size).pixel_mask()


def _as_long_tensor(labels: Any, what: str) -> Tensor:
    if isinstance(labels, np.ndarray):
        if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
            raise InputTypeError(
                f"{what} must hold integer ids, got a numpy array of dtype {labels.dtype}. "
                "Round it and cast it with .astype(np.int64) if the values are ids."
            )
        labels = torch.from_numpy(labels.astype(np.int64))
    if not isinstance(labels, Tensor):
        raise InputTypeError(
            f"{what} must be a tensor or numpy array, got {type(labels).__name__}."
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputTypeError(
            f"{what} must hold integer ids, got dtype {labels.dtype}. Cast it with .long() if "
            "the values are ids."
        )
    if labels.dim() != 2:
        raise InputError(f"{what} must be an (H, W) map, got shape {tuple(labels.shape)}.")
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise InputError(f"{what} has negative ids (min {int(labels.min())}); ids must be >= 0.")
    return labels


def label_map_mask(labels: Any) -> LabelMap:
    """Any integer label map (e.g. from an external segmenter) -> contiguous ids.

    Args:
        labels: ``(H, W)`` integer tensor or numpy array with non-negative ids (any values).

    Returns:
        :class:`LabelMap` ``(mask, ids)``: ``mask`` ``(H, W)`` long with ids ``0..n-1`` in
        increasing order of the original ids, ``ids`` ``(n,)`` the original id of each feature.
    """
    labels = _as_long_tensor(labels, "The label map")
    ids, inverse = torch.unique(labels, return_inverse=True)
    return LabelMap(inverse.reshape(labels.shape), ids)


def check_mask(mask: Any, image_hw: Sequence[int] | None = None) -> Tensor:
    """Validate a label map: ``(H, W)`` integer ids ``0..n-1`` (contiguous), of the image's size.

    Returns:
        The mask as an ``(H, W)`` long tensor (not a copy when it already is one).
    """
    mask = _as_long_tensor(mask, "The feature mask")
    if image_hw is not None and tuple(mask.shape) != tuple(image_hw):
        raise InputError(
            f"The mask has shape {tuple(mask.shape)} but the image is {tuple(image_hw)} "
            f"(height, width): {_RESIZE_HINT} to the image's size, or build it for that size."
        )
    n = int(mask.max()) + 1 if mask.numel() else 0
    if n != int(torch.unique(mask).numel()):
        raise InputError(
            "The feature mask's ids are not contiguous 0..n-1; pass it through "
            "label_map_mask(mask).mask first."
        )
    return mask


def check_mask_list(mask_list: Any, image_hw: Sequence[int] | None = None) -> Tensor:
    """Validate a list of ``(H, W)`` boolean-like masks (0/1 values) of the image's size.

    Returns:
        ``(n_features, H, W)`` bool tensor.
    """
    if isinstance(mask_list, Tensor) and mask_list.dim() == 3:
        mask_list = list(mask_list)
    if not isinstance(mask_list, list | tuple):
        raise InputTypeError(
            f"mask_list must be a list of (H, W) boolean tensors, got {type(mask_list).__name__}."
        )
    if len(mask_list) == 0:
        raise InputError("mask_list is empty: give at least one (H, W) boolean mask.")
    out = []
    for i, m in enumerate(mask_list):
        if isinstance(m, np.ndarray):
            m = torch.from_numpy(m)
        if not isinstance(m, Tensor) or m.dim() != 2:
            raise InputError(f"mask_list[{i}] must be an (H, W) tensor, got {m!r:.80}.")
        if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
            raise InputError(
                f"mask_list[{i}] is not boolean: it holds values other than 0 and 1. Each entry "
                "marks one feature's pixels; use a label map (mask=) for integer ids."
            )
        shape = tuple(out[0].shape) if image_hw is None and out else image_hw
        if shape is not None and tuple(m.shape) != tuple(shape):
            raise InputError(
                f"mask_list[{i}] has shape {tuple(m.shape)} but the image is {tuple(shape)} "
                f"(height, width): {_RESIZE_HINT} to the image's size."
            )
        out.append(m.bool())
    return torch.stack(out)


def masks_from_boxes(height: int, width: int, boxes: Sequence[Sequence[float]]) -> list[Tensor]:
    """One ``(H, W)`` bool mask per ``(x0, y0, x1, y1)`` box (pixel coordinates, ``x1``/``y1``
    exclusive, clipped to the image). Boxes may overlap.

    Returns:
        list of ``(height, width)`` bool tensors, in the order of ``boxes``.
    """
    height, width = _positive(height, "height"), _positive(width, "width")
    if len(boxes) == 0:
        raise InputError("boxes is empty: give at least one (x0, y0, x1, y1) box.")
    ys, xs = torch.arange(height)[:, None], torch.arange(width)[None, :]
    masks = []
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise InputError(f"boxes[{i}] must be (x0, y0, x1, y1), got {box!r}.")
        x0, y0, x1, y1 = (float(v) for v in box)
        m = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        if not bool(m.any()):
            raise InputError(
                f"boxes[{i}] = {tuple(box)} covers no pixel of the {height}x{width} image "
                "(x1 and y1 are exclusive; x is the column)."
            )
        masks.append(m)
    return masks


def as_feature_mask(mask: Tensor, inputs: Tensor) -> Tensor:
    """An ``(H, W)`` label map reshaped for ``feature_mask=`` of a method run on ``inputs``.

    For ``(N, C, H, W)`` inputs this is a ``(1, 1, H, W)`` view (one feature per region, shared
    by every channel and every example), which FeatureAblation, ShapleyValueSampling, Lime and
    KernelShap of llmattr and Captum accept; for ``(C, H, W)`` inputs ``(1, H, W)``.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() not in (3, 4):
        raise InputError(
            "as_feature_mask expects image inputs of shape (N, C, H, W) or (C, H, W), got "
            f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}."
        )
    mask = check_mask(mask, inputs.shape[-2:]).to(inputs.device)
    return mask.reshape((1,) * (inputs.dim() - 2) + tuple(mask.shape))


def scatter_to_pixels(
    attr: Tensor,
    mask_or_list: Tensor | Sequence[Tensor],
    mode: Literal["spread", "repeat"] = "spread",
) -> Tensor:
    """Feature attributions ``(..., n_features)`` -> pixel maps ``(..., H, W)``.

    ``mode="spread"``: each pixel gets its feature's value divided by the feature's pixel count,
    so a feature's pixels sum to its attribution (mask lists: overlaps summed, the total is
    preserved; pixels in no feature get 0). ``mode="repeat"``: every pixel gets its feature's
    full value (Captum's ``format_pixel_attr``; overlaps summed).

    Args:
        attr: ``(..., n_features)`` tensor.
        mask_or_list: an ``(H, W)`` label map, or a list of ``(H, W)`` boolean masks.
    """
    if mode not in ("spread", "repeat"):
        raise InputError(f"mode must be 'spread' or 'repeat', got {mode!r}.")
    if not isinstance(attr, Tensor):
        raise InputTypeError(f"attr must be a tensor (..., n_features), got {type(attr).__name__}.")
    attr = attr if attr.is_floating_point() else attr.double()
    if isinstance(mask_or_list, Tensor | np.ndarray) and np.ndim(mask_or_list) == 2:
        mask = check_mask(mask_or_list).to(attr.device)
        n = int(mask.max()) + 1
        _check_n(attr, n)
        values = attr
        if mode == "spread":
            values = attr / torch.bincount(mask.flatten(), minlength=n).to(attr.dtype)
        return values[..., mask]
    masks = check_mask_list(mask_or_list).to(attr.device)
    _check_n(attr, masks.shape[0])
    weights = masks.to(attr.dtype)
    if mode == "spread":
        counts = weights.sum((1, 2))
        if bool((counts == 0).any()):
            empty = int(torch.nonzero(counts == 0)[0])
            raise InputError(f"mask_list[{empty}] selects no pixel: its value has nowhere to go.")
        weights = weights / counts[:, None, None]
    return torch.einsum("...f,fhw->...hw", attr, weights)


def _check_n(attr: Tensor, n: int) -> None:
    if attr.dim() == 0 or attr.shape[-1] != n:
        raise InputError(
            f"attr has shape {tuple(attr.shape)} but the mask has {n} features: attr's last "
            "dimension must be the number of features."
        )
