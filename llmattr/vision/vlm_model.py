"""What VLMGradientAttribution needs to know about a vision-language model: the module producing
the image features, the image placeholder token, each image's feature grid and pixel frame, and
the state some models keep between calls (Qwen2-VL's ``rope_deltas``)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .._core.errors import InputError

__all__ = [
    "find_image_feature_layer",
    "forward_params",
    "image_grids",
    "image_token_id",
    "restore_rope_state",
    "rope_state",
]

# modules whose output is the image features scattered into the prompt, by name suffix
_IMAGE_LAYER_NAMES = ("multi_modal_projector", "visual.merger", "mm_projector", "connector")


def find_image_feature_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the image features entering the language model: the first
    submodule named ``multi_modal_projector`` (LLaVA), ``visual.merger`` (Qwen2-VL),
    ``mm_projector`` or ``connector``.

    Raises:
        InputError: none found (pass ``image_layer=`` explicitly).
    """
    for suffix in _IMAGE_LAYER_NAMES:
        for name, module in model.named_modules():
            if name == suffix or name.endswith("." + suffix):
                return module
    raise InputError(
        f"Found no image-feature module in {type(model).__name__} (looked for "
        f"{', '.join(_IMAGE_LAYER_NAMES)}); pass image_layer=, the module whose output is the "
        "image features written over the image tokens (e.g. the multimodal projector)."
    )


def image_token_id(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise InputError(
        f"{type(model).__name__}'s config has no image_token_id; VLMGradientAttribution needs "
        "it to find the image placeholder tokens."
    )


def forward_params(model: nn.Module) -> set[str]:
    """The names of ``model.forward``'s parameters."""
    return set(inspect.signature(model.forward).parameters)


def rope_state(model: nn.Module) -> list[tuple[nn.Module, Any]]:
    """Modules keeping ``rope_deltas`` between calls (Qwen2-VL) and their current value."""
    return [(m, m.rope_deltas) for m in model.modules() if hasattr(m, "rope_deltas")]


def restore_rope_state(states: list[tuple[nn.Module, Any]]) -> None:
    for module, value in states:
        module.rope_deltas = value


def image_grids(
    model: nn.Module, inputs: dict[str, Any], n_tokens: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per image, its feature grid ``(rows, cols)`` and the pixel frame ``(H, W)`` it covers
    (the processor's resized/cropped image, i.e. what ``pixel_values`` hold)."""
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    thw = inputs.get("image_grid_thw")
    if thw is not None:  # Qwen2-VL: patches of patch_size pixels, merged s x s
        s = int(getattr(vision, "spatial_merge_size", 1))
        p = int(getattr(vision, "patch_size", 14))
        grids = [(int(t) * int(h) // s, int(w) // s) for t, h, w in thw.tolist()]
        frames = [(int(h) * p, int(w) * p) for _, h, w in thw.tolist()]
        return grids, frames
    pix = inputs["pixel_values"]
    n_images = pix.shape[0] if pix.dim() == 4 else 1
    per = n_tokens // max(n_images, 1)
    side = round(per**0.5)
    grid = (side, side) if side * side == per else (1, per)
    frame = (int(pix.shape[-2]), int(pix.shape[-1])) if pix.dim() == 4 else grid
    return [grid] * n_images, [frame] * n_images
