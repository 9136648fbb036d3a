"""Where a vision transformer's patch tokens sit: the patch grid and the tokens before it.

A ViT turns an image of ``H x W`` pixels into ``(H / p) * (W / p)`` patch tokens, in row-major
order (left to right, then top to bottom), after a few *prefix* tokens: the class token, DeiT's
distillation token, DINOv2's register tokens (SigLIP has none). :class:`PatchLayout` reads this
from the model's config, so token sequences can be reshaped to the grid and pixel masks built in
the model's own token order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError

__all__ = ["PatchLayout"]

# model_type -> tokens before the patches (register tokens are added from the config)
_PREFIX = {
    "vit": 1,
    "vit_msn": 1,
    "vit_mae": 1,
    "beit": 1,
    "data2vec-vision": 1,
    "dinov2": 1,
    "dinov2_with_registers": 1,
    "deit": 2,  # class + distillation token
    "clip_vision_model": 1,
    "clip": 1,
    "siglip_vision_model": 0,
    "siglip": 0,
    "llava": 1,
}


def _vision_config(config: Any) -> Any:
    """The vision part of a config (CLIP, LLaVA and SigLIP keep it under ``vision_config``)."""
    inner = getattr(config, "vision_config", None)
    return inner if inner is not None else config


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int | float):
        return int(value), int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise InputError(f"The config's {what} must be an int or a pair of ints, got {value!r}.")


@dataclass(frozen=True)
class PatchLayout:
    """The token layout of a vision transformer's hidden states.

    Attributes:
        grid: ``(rows, cols)`` of patches.
        patch_size: ``(ph, pw)`` pixels per patch.
        n_prefix: tokens before the patches (class, distillation, register tokens).
    """

    grid: tuple[int, int]
    patch_size: tuple[int, int]
    n_prefix: int = 1

    @classmethod
    def from_config(
        cls, config_or_model: Any, image_size: int | tuple[int, int] | None = None
    ) -> PatchLayout:
        """The layout of a ``transformers`` ViT-like model (or its config; for CLIP and LLaVA
        the vision tower's). ``image_size`` overrides the config's (a model run at another
        resolution, with interpolated position embeddings)."""
        config = getattr(config_or_model, "config", config_or_model)
        model_type = str(getattr(config, "model_type", ""))
        vision = _vision_config(config)
        vision_type = str(getattr(vision, "model_type", model_type))
        if not hasattr(vision, "patch_size"):
            raise InputError(
                f"The config of model type {model_type!r} has no patch_size: PatchLayout is for "
                "vision transformers (ViT, DeiT, BEiT, DINOv2, CLIP, SigLIP, LLaVA's tower)."
            )
        patch = _pair(vision.patch_size, "patch_size")
        size = _pair(image_size if image_size is not None else vision.image_size, "image_size")
        if size[0] % patch[0] or size[1] % patch[1]:
            raise InputError(
                f"The image size {size} is not a multiple of the patch size {patch}; resize the "
                "image to a multiple of the patch size."
            )
        prefix = _PREFIX.get(vision_type, _PREFIX.get(model_type, 1))
        prefix += int(getattr(vision, "num_register_tokens", 0) or 0)
        return cls((size[0] // patch[0], size[1] // patch[1]), patch, prefix)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        """Tokens in a hidden state: prefix tokens plus patches."""
        return self.n_prefix + self.n_patches

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1]

    def check_tokens(self, n_tokens: int, what: str = "The layer's output") -> None:
        """Raise a clear error unless a hidden state has this layout's token count."""
        if n_tokens != self.n_tokens:
            raise InputError(
                f"{what} has {n_tokens} tokens, but the patch grid {self.grid[0]}x{self.grid[1]} "
                f"plus {self.n_prefix} prefix token(s) makes {self.n_tokens}. Pick a layer that "
                "outputs the transformer's hidden states (batch, tokens, dim), or build the "
                "PatchLayout for the image size the model was run at."
            )

    def to_grid(self, tokens: Tensor) -> Tensor:
        """``(N, T, D)`` hidden states -> ``(N, D, rows, cols)`` (prefix tokens dropped)."""
        if tokens.dim() != 3:
            raise InputError(
                f"Expected hidden states of shape (batch, tokens, dim), got {tuple(tokens.shape)}."
            )
        self.check_tokens(tokens.shape[1])
        patches = tokens[:, self.n_prefix :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid)

    def pixel_mask(self) -> Tensor:
        """``(H, W)`` long mask: each pixel's patch index, in the model's token order."""
        rows, cols = self.grid
        ids = torch.arange(rows * cols).reshape(rows, cols)
        return ids.repeat_interleave(self.patch_size[0], 0).repeat_interleave(self.patch_size[1], 1)
