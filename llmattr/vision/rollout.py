"""Attention rollout and its gradient-weighted form, for ``transformers`` vision transformers.

* :class:`AttentionRollout` (Abnar & Zuidema, 2020, "Quantifying Attention Flow in
  Transformers"): fuse each layer's heads, add the residual as ``A' = 0.5 A + 0.5 I``,
  renormalize the rows, and multiply the layers: ``R = A'_L ... A'_1``. The class token's row of
  ``R`` over the patch tokens is the map.
* :class:`GradientAttentionRollout` (Chefer, Gur & Wolf, 2021, "Generic Attention-model
  Explainability"): ``R = I``; per layer ``R += mean_heads(clamp(dy/dA * A, min=0)) @ R``,
  where ``y`` is the target's logit. Unlike the plain rollout it depends on the target.

Attentions come from ``output_attentions=True``, which needs eager attention: a model on another
implementation (sdpa, flash) is switched to eager for the call and switched back afterwards.
A model without a class token (SigLIP) has no row to read: the mean over all rows is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError
from .._core.targets import normalize_target
from .layout import PatchLayout
from .vit import _check_pixels, _unwrap, patch_layout

__all__ = ["AttentionRollout", "GradientAttentionRollout", "fuse_heads", "rollout"]

_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: Tensor, head_fusion: str = "mean") -> Tensor:
    """``(N, heads, T, T)`` -> ``(N, T, T)`` by the mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise InputError(f"head_fusion must be one of {_FUSIONS}, got {head_fusion!r}.")


def _discard(fused: Tensor, ratio: float) -> Tensor:
    """Zero the lowest ``ratio`` of each example's ``(T, T)`` entries, never the class token's
    attention to itself (entry ``[0, 0]``), as in the reference implementation (vit-explain)."""
    n, t, _ = fused.shape
    k = int(t * t * ratio)
    if k == 0:
        return fused
    flat = fused.reshape(n, t * t).clone()
    keep = flat[:, 0].clone()
    lowest = flat.topk(k, dim=-1, largest=False).indices
    flat.scatter_(1, lowest, 0.0)
    flat[:, 0] = keep
    return flat.reshape(n, t, t)


def rollout(
    attentions: Sequence[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """The rollout matrix ``(N, T, T)`` of per-layer attentions ``(N, heads, T, T)`` (first
    layer first): ``R = A'_L ... A'_1`` with ``A' = rownorm(0.5 A + 0.5 I)``. Rows sum to 1."""
    result: Tensor | None = None
    for attention in attentions:
        fused = _discard(fuse_heads(attention, head_fusion), discard_ratio)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        a = 0.5 * fused + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    if result is None:
        raise InputError("No attention layers to roll out (check start_layer).")
    return result


def _read_row(matrix: Tensor, layout: PatchLayout) -> Tensor:
    """The class token's row (the mean row without one) over the patches: ``(N, rows, cols)``."""
    layout.check_tokens(matrix.shape[-1], "The attention matrix")
    row = matrix[:, 0] if layout.n_prefix > 0 else matrix.mean(1)
    return row[:, layout.n_prefix :].reshape(-1, *layout.grid)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch a ``transformers`` model to eager attention inside the block (restored after)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


class _Rollout:
    def __init__(self, model: nn.Module, layout: PatchLayout | None = None) -> None:
        model = _unwrap(model)
        if not isinstance(model, nn.Module):
            raise InputError(f"Expected a transformers model, got {type(model).__name__}.")
        vision = getattr(model, "vision_model", None)  # CLIPModel: the image tower
        self.model = vision if vision is not None and hasattr(model, "text_model") else model
        self.layout = layout
        if layout is None:
            patch_layout(self.model)  # a clear error now for a model that is not ViT-like

    def _prepare(self, pixel_values: Tensor, start_layer: int) -> PatchLayout:
        _check_pixels(pixel_values)
        if not isinstance(start_layer, int) or start_layer < 0:
            raise InputError(f"start_layer must be an int >= 0, got {start_layer!r}.")
        return self.layout or patch_layout(self.model, pixel_values)

    def _run(self, pixel_values: Tensor, **kwargs: Any) -> Any:
        with eager_attention(self.model):
            out = self.model(pixel_values=pixel_values, output_attentions=True, **kwargs)
        attentions = getattr(out, "attentions", None)
        if not attentions:
            raise InputError(
                f"{type(self.model).__name__} returned no attentions with "
                "output_attentions=True; rollout needs a model that returns them."
            )
        return out, list(attentions)

    @staticmethod
    def _layers(attentions: list[Tensor], start_layer: int) -> list[Tensor]:
        if start_layer >= len(attentions):
            raise InputError(
                f"start_layer={start_layer}, but the model has {len(attentions)} layers."
            )
        return attentions[start_layer:]


class AttentionRollout(_Rollout):
    """Attention rollout: how much each patch flows into the class token, through all layers.

    Args:
        model: a ``transformers`` vision transformer (``ViTForImageClassification``,
            ``ViTModel``, ``CLIPVisionModel``; for a ``CLIPModel`` its vision tower).
        layout: the token layout (read from the config when not given).
    """

    @torch.no_grad()
    def attribute(
        self,
        pixel_values: Tensor,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        start_layer: int = 0,
    ) -> Tensor:
        """Rollout maps ``(N, rows, cols)`` for images ``(N, C, H, W)``.

        Args:
            pixel_values: the images.
            head_fusion: "mean", "max" or "min" over the heads.
            discard_ratio: the fraction of the lowest fused attentions set to 0 in each layer
                (before the identity is added), in ``[0, 1)``.
            start_layer: the first layer to include.
        """
        fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)  # validates the name early
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise InputError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}.")
        layout = self._prepare(pixel_values, start_layer)
        _, attentions = self._run(pixel_values)
        matrix = rollout(self._layers(attentions, start_layer), head_fusion, discard_ratio)
        return _read_row(matrix, layout)


class GradientAttentionRollout(_Rollout):
    """Gradient-weighted attention rollout (Chefer et al. 2021's generic rule) for a target.

    Args:
        model: a ``transformers`` image classifier whose output has ``logits``.
        layout: the token layout (read from the config when not given).
    """

    def __init__(self, model: nn.Module, layout: PatchLayout | None = None) -> None:
        if hasattr(_unwrap(model), "text_model"):
            raise InputError(
                "GradientAttentionRollout needs a classifier with logits; a CLIP model has none. "
                "Use AttentionRollout, or TokenGradCam on CLIPSimilarity(model)."
            )
        super().__init__(model, layout)

    def attribute(self, pixel_values: Tensor, target: Any = None, start_layer: int = 0) -> Tensor:
        """Relevance maps ``(N, rows, cols)`` of the target logit over the patches.

        Args:
            pixel_values: images ``(N, C, H, W)``.
            target: the class index per example (an int, a list or a tensor; as in Captum).
            start_layer: the first layer to include.
        """
        layout = self._prepare(pixel_values, start_layer)
        selector = normalize_target(target, pixel_values.shape[0])
        with torch.enable_grad():
            out, attentions = self._run(pixel_values)
            logits = getattr(out, "logits", None)
            if not isinstance(logits, Tensor):
                raise InputError(
                    f"{type(self.model).__name__} returns no logits to take a target from."
                )
            layers = self._layers(attentions, start_layer)
            score = selector.select(logits, pixel_values.shape[0]).sum()
            grads = torch.autograd.grad(score, layers, allow_unused=True)
        n, _, t, _ = layers[0].shape
        relevance = torch.eye(t, dtype=layers[0].dtype, device=layers[0].device).expand(n, t, t)
        for a, g in zip(layers, grads):
            g = torch.zeros_like(a) if g is None else g
            cam = (g * a).detach().clamp(min=0).mean(1)
            relevance = relevance + cam @ relevance
        return _read_row(relevance, layout)
