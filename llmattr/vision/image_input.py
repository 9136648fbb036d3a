"""Image regions as the features of an LLM attribution (Captum 0.9's ``ImageMaskInput``).

An :class:`ImageMaskInput` holds a PIL image and its segments (an id per pixel, ``mask``, or one
boolean mask per feature, ``mask_list``). A presence row says which segments are kept; the absent
ones are painted with the baseline (a colour, or an :mod:`llmattr.vision.baselines` fill such as a
blur or an inpainting), and ``processor_fn`` turns the painted image into the model's inputs
(for a vision-language model: the processor's ``input_ids``, ``pixel_values``, ...).

Beyond Captum: every argument is checked before anything runs (mask size, ids, baseline colour);
greyscale, palette and RGBA images are converted to RGB with a warning (Captum's painting breaks on
them); :meth:`ImageMaskInput.perturbed_images` and :meth:`ImageMaskInput.perturbed_model_inputs`
build ``k`` perturbations at once, with one processor call when ``batch_processor_fn`` is given.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError

__all__ = ["ImageMaskInput", "as_rgb", "check_colour", "split_batch"]


def _identity(image: Any) -> Any:
    return image


def as_rgb(image: Any) -> Any:
    """A copy of a PIL image in RGB: greyscale (``L``, ``1``), palette (``P``) and ``RGBA``/``LA``
    images are converted with a warning (alpha is dropped, not composited); 32-bit float and
    16/32-bit integer images (``F``, ``I``, ``I;16``) are refused, their range being unknown."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputTypeError(
            f"image must be a PIL image (PIL.Image.open(path) or Image.fromarray(array)), got "
            f"{type(image).__name__}."
        )
    if image.mode in ("F", "I") or image.mode.startswith("I;"):
        raise InputError(
            f"The image is in mode {image.mode!r} (32-bit float or 16/32-bit integer pixels), "
            "whose value range PIL cannot convert to RGB reliably (floats in [0, 1] would turn "
            "black). Convert it to 8-bit yourself, e.g. Image.fromarray((np.asarray(image) * "
            "255).clip(0, 255).astype(np.uint8)).convert('RGB') for floats in [0, 1]."
        )
    if image.mode != "RGB":
        warnings.warn(
            f"The image is in mode {image.mode!r}; it is converted to RGB "
            "(image.convert('RGB'): greyscale is repeated over the 3 channels, alpha is dropped) "
            "so regions can be painted with an RGB baseline. Convert it yourself to silence this.",
            UserWarning,
            stacklevel=3,
        )
        return image.convert("RGB")
    return image.copy()


def check_colour(baseline: Any) -> tuple[int, int, int]:
    """A baseline colour as 3 ints in 0..255, or an :class:`InputError` saying why not."""
    ok = (
        isinstance(baseline, Sequence | np.ndarray)
        and not isinstance(baseline, str)
        and len(baseline) == 3
        and all(
            isinstance(c, int | np.integer) and not isinstance(c, bool) and 0 <= int(c) <= 255
            for c in baseline
        )
    )
    if not ok:
        raise InputError(
            f"baseline must be an RGB colour of 3 ints in 0..255, e.g. (255, 255, 255) for white "
            f"or (0, 0, 0) for black, or an ImageBaseline; got {baseline!r}."
        )
    return (int(baseline[0]), int(baseline[1]), int(baseline[2]))


def _as_mask(value: Any, what: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise InputTypeError(f"{what} must be a torch tensor (H, W), got {type(value).__name__}.")
    return value.detach().cpu()


def _check_shape(m: Tensor, hw: tuple[int, int], what: str) -> None:
    if tuple(m.shape) != hw:
        raise InputError(
            f"{what} has shape {tuple(m.shape)} but the image is {hw[0]} x {hw[1]} (height x "
            f"width; PIL's image.size is (width, height) = {hw[::-1]}); give a mask of shape "
            f"{hw}, e.g. torch.zeros(image.size[::-1], dtype=torch.long)."
        )


def split_batch(batch: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """Split a processor's output for ``k`` prompts (each with one image) into ``k`` mappings
    of one prompt each: sequence tensors and ``(k, ...)`` tensors by row; ``pixel_values`` of
    flattened patches ``(n_patches, D)`` by each image's ``image_grid_thw`` patch count."""
    rows: list[dict[str, Any]] = [{} for _ in range(k)]
    grid = batch.get("image_grid_thw")
    counts = None if grid is None else [int(c) for c in torch.as_tensor(grid).prod(-1).tolist()]
    for key, value in batch.items():
        if isinstance(value, Tensor) and key == "pixel_values" and counts is not None:
            parts: Sequence[Any] = torch.split(value, counts)
        elif isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == k:
            parts = list(value.split(1))
        else:
            parts = [value] * k
        for row, part in zip(rows, parts):
            row[key] = part
    return rows


class ImageMaskInput:
    """An image whose segments are the features (Captum 0.9's ``ImageMaskInput``).

    Args:
        image: a PIL image; converted to RGB (with a warning) when it is not.
        mask: ``(H, W)`` integer tensor, a segment id (>= 0) per pixel; None: the whole image is
            one feature. Ids need not be contiguous; features follow ``torch.unique`` order.
        mask_list: one ``(H, W)`` boolean mask per feature (they may overlap); overrides
            ``mask`` as in Captum.
        baseline: what absent pixels become: an RGB colour (3 ints in 0..255, default white),
            an ``ImageBaseline`` (blur, noise, mean colour, inpainting; anything with
            ``fill(image, removed)``), or its name (``"blur"``, ``"inpaint"``, ...).
        processor_fn: image -> model inputs (for a VLM: the processor call with the prompt).
        batch_processor_fn: optional, list of ``k`` images -> model inputs of ``k`` prompts in
            one call (``processor(text=[prompt] * k, images=images)``); otherwise
            ``processor_fn`` runs once per image. Results do not depend on it.

    Attributes:
        n_itp_features, mask_id_to_idx, values (``image_feature_<id>``), original_model_inputs,
        modalities (``"image"`` per feature), as in Captum.
    """

    def __init__(
        self,
        image: Any,
        mask: Tensor | None = None,
        mask_list: list[Tensor] | None = None,
        baseline: Any = (255, 255, 255),
        processor_fn: Callable[[Any], Any] = _identity,
        *,
        batch_processor_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.image = as_rgb(image)
        hw = (self.image.size[1], self.image.size[0])
        if mask_list is not None:
            if len(mask_list) == 0:
                raise InputError("mask_list is empty; give at least one (H, W) boolean mask.")
            masks = []
            for i, m in enumerate(mask_list):
                m = _as_mask(m, f"mask_list[{i}]")
                _check_shape(m, hw, f"mask_list[{i}]")
                if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
                    raise InputError(f"mask_list[{i}] must be boolean (or 0/1): True = in it.")
                masks.append(m.bool())
            self.mask_list: list[Tensor] = masks
            self.mask: Tensor = torch.empty(0)
            self._pixel_feature = None
            ids: list[int] = list(range(len(masks)))
        else:
            if mask is None:
                mask = torch.zeros(hw, dtype=torch.long)
            mask = _as_mask(mask, "mask")
            _check_shape(mask, hw, "mask")
            if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
                if mask.dtype == torch.bool or not bool((mask == mask.round()).all()):
                    raise InputError(
                        f"mask must hold integer segment ids, got dtype {mask.dtype}; use "
                        "mask.long() for whole numbers, or mask_list for boolean masks."
                    )
                mask = mask.long()
            if bool((mask < 0).any()):
                raise InputError(
                    f"mask ids must be >= 0; found {int(mask.min())}. Renumber the segments "
                    "(e.g. torch.unique(mask, return_inverse=True)[1])."
                )
            self.mask = mask
            self.mask_list = []
            unique, index = torch.unique(mask, return_inverse=True)
            ids = [int(i) for i in unique.tolist()]
            # each pixel's feature index: painting and pixel maps are one gather, in memory
            # of the image's size whatever the number of segments
            self._pixel_feature: Tensor | None = index.reshape(hw)
        if isinstance(baseline, str):  # "blur", "noise", "inpaint", "mean", ...
            from .baselines import baseline_from

            baseline = baseline_from(baseline)
        if callable(getattr(baseline, "fill", None)):
            self.baseline = baseline
        else:
            self.baseline = check_colour(baseline)
        self.processor_fn = processor_fn
        self.batch_processor_fn = batch_processor_fn
        self.n_itp_features = len(ids)
        self.mask_id_to_idx = {mid: i for i, mid in enumerate(ids)}
        self.values = [f"image_feature_{mid}" for mid in ids]
        self.modalities = ["image"] * self.n_itp_features
        self.original_model_inputs = processor_fn(self.image)

    # ---- Captum's methods ----------------------------------------------------------------

    def to_tensor(self) -> Tensor:
        """``(1, n_itp_features)`` ones: every segment present."""
        return torch.ones(1, self.n_itp_features)

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> Any:
        """The model inputs with the absent segments (zeros of ``perturbed_tensor``, ``(1, n)``)
        painted with the baseline; the original inputs for None."""
        if perturbed_tensor is None:
            return self.original_model_inputs
        return self.processor_fn(self.perturbed_images(perturbed_tensor)[0])

    def get_mask_list(self) -> list[Tensor]:
        """One ``(H, W)`` boolean mask per feature, in feature order."""
        return list(self.mask_list) or [self.mask == mid for mid in self.mask_id_to_idx]

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """Attributions per segment, unchanged: ``(..., n_itp_features)``."""
        return itp_attr

    def format_pixel_attr(self, itp_attr: Tensor) -> Tensor:
        """``(..., n_itp_features)`` -> ``(..., H, W)``: each pixel gets the sum of the
        attributions of the segments covering it (0 where none does)."""
        itp_attr = torch.as_tensor(itp_attr)
        if itp_attr.shape[-1] != self.n_itp_features:
            raise InputError(
                f"itp_attr must end in {self.n_itp_features} (one value per feature); got shape "
                f"{tuple(itp_attr.shape)}."
            )
        if self._pixel_feature is not None:
            return itp_attr[..., self._pixel_feature.to(itp_attr.device)]
        # overlapping masks: a sum over the covering segments only, one segment at a time (so
        # memory stays the image's size, and an infinite value stays in its segment)
        hw = self.mask_list[0].shape
        out = torch.zeros((*itp_attr.shape[:-1], *hw), dtype=itp_attr.dtype, device=itp_attr.device)
        zero = torch.zeros((), dtype=itp_attr.dtype, device=itp_attr.device)
        for j, m in enumerate(self.mask_list):
            out += torch.where(m.to(itp_attr.device), itp_attr[..., j, None, None], zero)
        return out

    def plot_mask_overlay(
        self, show: bool = False, border_width: int = 0, show_legends: bool = True
    ) -> tuple[Any, Any] | None:
        """The image with each segment tinted (a seeded colour per feature), its border and its
        id at its centroid. Returns ``(fig, ax)``, or None when ``show`` displays it."""
        import matplotlib.pyplot as plt

        from ..viz.masks import draw_mask_border, draw_mask_legend

        fig, ax = plt.subplots()
        ax.imshow(self.image)
        fig.set_facecolor("white")
        colours = np.random.default_rng(0).random((self.n_itp_features, 3))
        for m, colour, mid in zip(self.get_mask_list(), colours, self.mask_id_to_idx):
            m_np = m.numpy().astype(bool)
            ax.imshow(m_np[..., None] * np.array([*colour, 0.6]).reshape(1, 1, -1))
            if border_width > 0:
                draw_mask_border(ax, m_np, border_width, np.array([*colour, 0.8]))
            if show_legends:
                draw_mask_legend(ax, m_np, label=str(mid))
        ax.axis("off")
        if show:
            plt.show()
            return None
        return fig, ax

    # ---- llmattr's batched perturbations -------------------------------------------------------

    def removed_pixels(self, presence: Tensor) -> Tensor:
        """``(k, H, W)`` bool: the pixels each presence row ``(k, n)`` paints (absent segments)."""
        keep = torch.as_tensor(presence).detach().cpu()
        keep = keep.unsqueeze(0) if keep.dim() == 1 else keep
        if keep.dim() != 2 or keep.shape[1] != self.n_itp_features:
            raise InputError(
                f"presence must have shape (k, {self.n_itp_features}); got {tuple(keep.shape)}."
            )
        absent = keep == 0
        if self._pixel_feature is not None:
            return absent[:, self._pixel_feature]
        removed = torch.zeros((keep.shape[0], *self.mask_list[0].shape), dtype=torch.bool)
        for j, m in enumerate(self.mask_list):
            rows = absent[:, j]
            if bool(rows.any()):
                removed[rows] |= m
        return removed

    def perturbed_images(self, presence: Tensor) -> list[Any]:
        """``k`` PIL images, one per presence row ``(k, n)``, absent segments painted."""
        from PIL import Image

        out = []
        for removed in self.removed_pixels(presence):
            if not bool(removed.any()):
                out.append(self.image.copy())
            elif isinstance(self.baseline, tuple):
                array = np.array(self.image)
                array[removed.numpy()] = self.baseline
                out.append(Image.fromarray(array))
            else:
                out.append(_fill(self.baseline, self.image, removed))
        return out

    def perturbed_model_inputs(self, presence: Tensor) -> list[Any]:
        """The model inputs of each presence row ``(k, n)``: one mapping per row."""
        images = self.perturbed_images(presence)
        if self.batch_processor_fn is not None and len(images) > 1:
            return split_batch(self.batch_processor_fn(images), len(images))
        return [self.processor_fn(image) for image in images]


def _fill(baseline: Any, image: Any, removed: Tensor) -> Any:
    """Apply an ``ImageBaseline``: its ``fill`` may return a PIL image, an array or a tensor."""
    from PIL import Image

    filled = baseline.fill(image, removed)
    if isinstance(filled, Image.Image):
        return filled.convert("RGB")
    array = filled.detach().cpu().numpy() if isinstance(filled, Tensor) else np.asarray(filled)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * (255 if array.max() <= 1.0 else 1)), 0, 255)
    return Image.fromarray(array.astype(np.uint8))
