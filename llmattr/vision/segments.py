"""Image features as a presence vector: overlapping masks and region-dependent baselines.

A ``feature_mask`` cannot express overlapping features, and ``baselines=`` cannot express a fill
that depends on which regions are removed (inpainting). :class:`ImageSegments` turns an image
and its features into a function of a *presence* vector ``(k, n_features)`` (1 = the feature is
kept, 0 = painted out), so any llmattr perturbation method attributes the features::

    seg = ImageSegments(image, mask=slic(image), baseline="inpaint")
    attr = FeatureAblation(seg.forward(model, target=3)).attribute(seg.presence())
    pixels = seg.to_pixels(attr)  # (1, H, W), each segment's pixels sum to its attribution

A pixel is removed when any absent feature covers it; pixels in no feature are never removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .baselines import ImageBaseline, baseline_from
from .masks import check_mask, check_mask_list, scatter_to_pixels

__all__ = ["ImageSegments"]


class ImageSegments:
    """An image whose features (a label map or overlapping masks) can be painted out.

    Args:
        image: float tensor ``(C, H, W)`` or ``(1, C, H, W)``.
        mask: ``(H, W)`` label map with ids ``0..n-1`` (exclusive with ``mask_list``).
        mask_list: list of ``(H, W)`` boolean masks (may overlap).
        baseline: what removed pixels become: anything :func:`baseline_from` takes
            (default ``0.0``, black).
    """

    def __init__(
        self,
        image: Tensor,
        mask: Tensor | None = None,
        mask_list: Sequence[Tensor] | None = None,
        baseline: Any = 0.0,
    ) -> None:
        if not isinstance(image, Tensor) or not image.is_floating_point():
            raise InputTypeError(
                "ImageSegments expects a float image tensor (C, H, W); convert PIL images with "
                "your preprocessing first."
            )
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() != 3:
            raise InputError(
                f"ImageSegments expects one image (C, H, W) or (1, C, H, W), got "
                f"{tuple(image.shape)}."
            )
        if (mask is None) == (mask_list is None):
            raise InputError("Give exactly one of mask= (a label map) and mask_list=.")
        hw = tuple(image.shape[-2:])
        if mask is not None:
            self.mask: Tensor | None = check_mask(mask, hw).to(image.device)
            n = int(self.mask.max()) + 1
            ids = torch.arange(n, device=image.device)
            self.features = self.mask[None] == ids[:, None, None]  # (F, H, W)
        else:
            self.mask = None
            self.features = check_mask_list(list(mask_list), hw).to(image.device)
        self.image = image.detach()
        self.baseline: ImageBaseline = baseline_from(baseline)
        self.baseline.fill(self.image[:, :1, :1], torch.ones(1, 1, dtype=torch.bool))

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    def presence(self) -> Tensor:
        """``(1, n_features)`` ones: every feature present (the input to attribute)."""
        return torch.ones(1, self.n_features, dtype=self.image.dtype, device=self.image.device)

    def removed(self, presence: Tensor) -> Tensor:
        """``(k, n_features)`` presence -> ``(k, H, W)`` bool: pixels covered by an absent
        feature."""
        presence = self._check_presence(presence)
        absent = (presence == 0).to(self.image.dtype)
        flat = self.features.reshape(self.n_features, -1).to(self.image.dtype)
        return (absent @ flat > 0).reshape(-1, *self.features.shape[1:])

    def paint(self, presence: Tensor) -> Tensor:
        """``(k, n_features)`` presence (0/1) -> ``(k, C, H, W)`` images, absent features filled
        (a region-dependent baseline such as inpainting is computed per row)."""
        removed = self.removed(presence)
        images = self.image[None].expand(removed.shape[0], *self.image.shape)
        return self.baseline.fill(images, removed)

    def forward(self, model: Callable[[Tensor], Tensor], target: Any = None) -> Callable:
        """A forward function of the presence vector: ``presence (k, F) -> model(paint(presence),
        *additional_forward_args)``, optionally selecting ``output[:, target]`` (then ``(k,)``)."""
        if not callable(model):
            raise InputTypeError(f"model must be callable, got {type(model).__name__}.")

        def forward_fn(presence: Tensor, *args: Any) -> Tensor:
            out = model(self.paint(presence), *args)
            return out if target is None else out[:, target]

        return forward_fn

    def to_pixels(self, attr: Tensor) -> Tensor:
        """``(..., n_features)`` attributions -> ``(..., H, W)`` pixel maps (spread mode: each
        feature's pixels sum to its value, overlaps summed)."""
        return scatter_to_pixels(attr, list(self.features), mode="spread")

    def _check_presence(self, presence: Any) -> Tensor:
        if not isinstance(presence, Tensor):
            raise InputTypeError(f"presence must be a tensor, got {type(presence).__name__}.")
        if presence.dim() == 1:
            presence = presence[None]
        if presence.dim() != 2 or presence.shape[1] != self.n_features:
            raise InputError(
                f"presence must have shape (k, {self.n_features}), got {tuple(presence.shape)}."
            )
        if not bool(((presence == 0) | (presence == 1)).all()):
            raise InputError(
                "presence must hold 0 (absent) and 1 (present) only: run perturbation methods "
                "with the default baselines=0 on seg.presence()."
            )
        return presence
