"""Explain a CLIP image-text similarity score by image patches and text tokens.

:class:`CLIPSimilarity` is the forward: ``(pixel_values, input_ids, attention_mask) -> (N,)``,
the score of pair ``i`` (image ``i`` with text ``i``): ``logit_per_image`` (the cosine times
``exp(logit_scale)``) or the cosine. Every attribution class of :mod:`llmattr` runs on it;
:class:`CLIPAttribution` does the two usual recipes and splits the result by modality:

* ``method="ablation"``: ``FeatureAblation`` with one feature per patch (pixels set to the pixel
  baseline) and one per token (the id set to the baseline id, the pad token by default), features
  of both modalities in one call.
* ``method="ig"``: ``LayerIntegratedGradients`` on the patch embedding and the token embedding
  together (one joint path), summed over the hidden dimension. Both modalities' attributions
  together sum to ``f(x) - g(baseline embeddings)`` up to the delta, where ``g`` runs the model with
  the two embeddings replaced (which token is pooled still comes from ``input_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError
from ..attr.ablation import FeatureAblation
from ..attr.layer import LayerIntegratedGradients
from .vit import _check_pixels, find_patch_embedding, patch_layout, patch_map

__all__ = ["CLIPAttribution", "CLIPAttributionResult", "CLIPSimilarity", "clip_similarity_forward"]

_SCORES = ("logit", "cosine")


class CLIPSimilarity(nn.Module):
    """The similarity of each (image, text) pair: ``(N, C, H, W), (N, L) -> (N,)``.

    Args:
        model: a ``transformers`` ``CLIPModel`` (or one with the same outputs, e.g. SigLIP's
            ``image_embeds``/``text_embeds``).
        score: ``"logit"`` (``exp(logit_scale) * cosine``, CLIP's ``logits_per_image`` diagonal)
            or ``"cosine"``.
    """

    def __init__(self, model: nn.Module, score: str = "logit") -> None:
        super().__init__()
        if score not in _SCORES:
            raise InputError(f"score must be one of {_SCORES}, got {score!r}.")
        if not (hasattr(model, "text_model") and hasattr(model, "vision_model")):
            raise InputTypeError(
                f"CLIPSimilarity needs a CLIP-like model with text_model and vision_model, got "
                f"{type(model).__name__}."
            )
        self.model = model
        self.score = score
        self.config = model.config

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        out = self.model(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
        )
        image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        cosine = (image * text).sum(-1)
        if self.score == "cosine":
            return cosine
        return cosine * self.model.logit_scale.exp()


def clip_similarity_forward(model: nn.Module, score: str = "logit") -> CLIPSimilarity:
    """:class:`CLIPSimilarity` of ``model`` (a function-style alias)."""
    return CLIPSimilarity(model, score)


@dataclass
class CLIPAttributionResult:
    """Attributions of ``N`` (image, text) similarity scores.

    Attributes:
        image_attr: ``(N, rows, cols)`` per patch.
        text_attr: ``(N, L)`` per token.
        score: ``(N,)`` the explained scores.
        delta: ``(N,)`` the completeness gap of integrated gradients (None for ablation).
    """

    image_attr: Tensor
    text_attr: Tensor
    score: Tensor
    delta: Tensor | None = None

    def shares(self) -> dict[str, Tensor]:
        """Each modality's share of the total absolute attribution, ``(N,)`` each."""
        img = self.image_attr.abs().flatten(1).sum(1)
        txt = self.text_attr.abs().sum(1)
        total = (img + txt).clamp_min(torch.finfo(img.dtype).tiny)
        return {"image": img / total, "text": txt / total}


def _token_embedding(model: nn.Module) -> nn.Module:
    text = getattr(model, "text_model", None)
    module = getattr(getattr(text, "embeddings", None), "token_embedding", None)
    if not isinstance(module, nn.Module):
        raise InputError(f"Found no text_model.embeddings.token_embedding in {type(model)}.")
    return module


class CLIPAttribution:
    """Attribute CLIP's image-text similarity to image patches and text tokens in one call.

    Args:
        model: a ``transformers`` ``CLIPModel``.
        score: ``"logit"`` or ``"cosine"`` (see :class:`CLIPSimilarity`).
    """

    def __init__(self, model: nn.Module, score: str = "logit") -> None:
        self.forward_func = CLIPSimilarity(model, score)
        self.model = model
        self.patch_embedding = find_patch_embedding(model)
        self.token_embedding = _token_embedding(model)

    def _check(self, pixel_values: Tensor, input_ids: Any, attention_mask: Any) -> tuple[int, int]:
        _check_pixels(pixel_values)
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dim() != 2
            or input_ids.is_floating_point()
        ):
            raise InputError(
                "input_ids must be a (N, L) integer tensor (the tokenizer's output with "
                "return_tensors='pt')."
            )
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise InputError(
                f"{pixel_values.shape[0]} images but {input_ids.shape[0]} texts: attribution "
                "explains pair i (image i, text i); repeat the image or the text to pair them."
            )
        if attention_mask is not None and (
            not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape
        ):
            raise InputError("attention_mask must be a tensor shaped like input_ids (N, L).")
        return input_ids.shape

    def _fixed_tokens(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """``(N, L)`` bool: padding, BOS/EOS/pad ids of the text config, and the position CLIP
        pools (legacy configs, ``eos_token_id == 2``, pool at the largest id)."""
        config = getattr(self.model.config, "text_config", self.model.config)
        fixed = torch.zeros_like(input_ids, dtype=torch.bool)
        if attention_mask is not None:
            fixed |= attention_mask == 0
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                fixed |= input_ids == value
        if getattr(config, "eos_token_id", None) == 2:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            fixed[rows, input_ids.argmax(-1)] = True
        return fixed

    def attribute(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        method: str = "ig",
        baselines: float | Tensor = 0.0,
        baseline_token_id: int | None = None,
        n_steps: int = 50,
        internal_batch_size: int | None = None,
        perturbations_per_eval: int = 1,
    ) -> CLIPAttributionResult:
        """Attribute the similarity of each pair to its patches and tokens.

        Args:
            pixel_values: ``(N, C, H, W)`` images.
            input_ids: ``(N, L)`` token ids.
            attention_mask: ``(N, L)`` (optional).
            method: ``"ig"`` (integrated gradients on both embeddings) or ``"ablation"``.
            baselines: the pixel baseline (a number or ``(N|1, C, H, W)``).
            baseline_token_id: the token standing for an absent token (the text config's
                ``pad_token_id``, else 0). Special tokens (BOS, EOS, pad) and padding are not
                features: they keep their ids, and their attribution is 0.
            n_steps, internal_batch_size: for ``"ig"``.
            perturbations_per_eval: for ``"ablation"``.
        """
        if method not in ("ig", "ablation"):
            raise InputError(f"method must be 'ig' or 'ablation', got {method!r}.")
        _, length = self._check(pixel_values, input_ids, attention_mask)
        layout = patch_layout(self.model, pixel_values)
        if baseline_token_id is None:
            text_config = getattr(self.model.config, "text_config", None)
            baseline_token_id = getattr(text_config, "pad_token_id", None) or 0
        # special tokens and padding are never features: they keep their ids on every path
        # (removing CLIP's EOS would move the position it pools, and measure something else)
        fixed = self._fixed_tokens(input_ids, attention_mask)
        ids_base = torch.where(fixed, input_ids, torch.full_like(input_ids, baseline_token_id))
        args = (attention_mask,)
        with torch.no_grad():
            score = self.forward_func(pixel_values, input_ids, attention_mask).detach()
        if method == "ablation":
            image_mask = layout.pixel_mask().to(pixel_values.device)[None, None]
            text_mask = torch.arange(length, device=input_ids.device)[None] + layout.n_patches
            attr = FeatureAblation(self.forward_func).attribute(
                (pixel_values, input_ids),
                baselines=(baselines, ids_base),
                additional_forward_args=args,
                feature_mask=(image_mask, text_mask),
                perturbations_per_eval=perturbations_per_eval,
            )
            # every pixel of a patch carries the patch's value; read one pixel per patch
            ph, pw = layout.patch_size
            image_attr = attr[0][:, 0, ::ph, ::pw]
            return CLIPAttributionResult(image_attr, attr[1].to(score.dtype), score)
        lig = LayerIntegratedGradients(
            self.forward_func, [self.patch_embedding, self.token_embedding]
        )
        (image, text), delta = lig.attribute(
            (pixel_values, input_ids),
            baselines=(baselines, ids_base),
            additional_forward_args=args,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        return CLIPAttributionResult(patch_map(image, layout), text.sum(-1), score, delta)
