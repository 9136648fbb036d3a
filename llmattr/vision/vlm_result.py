"""The result of :class:`~llmattr.vision.vlm_gradient.VLMGradientAttribution`: attributions of
each target token to the prompt's tokens and to the image features, on each image's grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError

__all__ = ["VLMGradientResult"]


@dataclass
class VLMGradientResult:
    """Per-target-token attributions of a vision-language model.

    Attributes:
        text_token_attr: ``(K, L)`` per target token, each prompt token's attribution (0 at
            image placeholders and special tokens).
        image_token_attr: ``(K, n_image_tokens)`` per target token, each image feature vector's
            attribution, in the prompt's image-token order.
        text_tokens: the ``L`` prompt tokens (image placeholders included).
        output_tokens: the ``K`` target tokens as text; ``target_ids`` ``(K,)`` their ids.
        output_probs: ``(K,)`` the target tokens' probabilities.
        image_grids: per image, its feature grid ``(rows, cols)`` (LLaVA: the patch grid, the
            class token dropped by the model; Qwen2-VL: the merged grid ``(t*h/2, w/2)``).
        image_frames: per image, ``(H, W)`` of the pixels the grid covers: the processor's
            resized/cropped image (what ``pixel_values`` hold), not the original image.
        delta: ``(K,)`` completeness error per target token (``sum of attributions - (log p at
            the input - log p at the baseline)``), when asked for.
        text_features: positions of the prompt tokens that are features (not special tokens,
            not image placeholders).

    :meth:`to_llm_result` turns it into an ``LLMAttributionResult`` over the first image's grid
    cells and the text features, so ``to_html()`` and ``plot_image_heatmap()`` draw it.
    """

    text_token_attr: Tensor
    image_token_attr: Tensor
    text_tokens: list[str]
    output_tokens: list[str]
    target_ids: Tensor
    output_probs: Tensor
    image_grids: list[tuple[int, int]]
    image_frames: list[tuple[int, int]]
    delta: Tensor | None = None
    text_features: list[int] = field(default_factory=list)

    def _rows(self, target_token_pos: int | tuple[int, int] | None) -> slice:
        K = self.text_token_attr.shape[0]
        if target_token_pos is None:
            return slice(0, K)
        if isinstance(target_token_pos, int) and not isinstance(target_token_pos, bool):
            if not -K <= target_token_pos < K:
                raise InputError(f"target_token_pos {target_token_pos} is out of range for {K}.")
            k = target_token_pos % K
            return slice(k, k + 1)
        if isinstance(target_token_pos, tuple) and len(target_token_pos) == 2:
            m, n = (int(v) for v in target_token_pos)
            if not 0 <= m < n <= K:
                raise InputError(
                    f"target_token_pos {target_token_pos} must satisfy 0 <= m < n <= {K}."
                )
            return slice(m, n)
        raise InputError("target_token_pos must be None, an int or a pair (m, n).")

    @property
    def text_attr(self) -> Tensor:
        """``(L,)`` each prompt token's attribution, summed over the target tokens."""
        return self.text_token_attr.sum(0)

    @property
    def image_attr(self) -> list[Tensor]:
        """Per image, ``(rows, cols)`` attributions summed over the target tokens."""
        return self.image_attr_of(None)

    def image_attr_of(self, target_token_pos: int | tuple[int, int] | None = None) -> list[Tensor]:
        """Per image, ``(rows, cols)``: None sums every target token, an int is one target
        token, ``(m, n)`` sums target tokens ``m..n-1``."""
        flat = self.image_token_attr[self._rows(target_token_pos)].sum(0)
        out, start = [], 0
        for rows, cols in self.image_grids:
            out.append(flat[start : start + rows * cols].reshape(rows, cols))
            start += rows * cols
        return out

    def pixel_attr(
        self,
        image: int = 0,
        target_token_pos: int | tuple[int, int] | None = None,
        spread: bool = False,
    ) -> Tensor:
        """``(H, W)`` pixel map of one image in its frame (:attr:`image_frames`).

        Each pixel gets the attribution of the grid cell covering it (Captum's rule for
        ``format_pixel_attr``); ``spread=True`` divides it by the cell's pixel count, so the map
        sums to the grid's total.
        """
        if not 0 <= image < len(self.image_grids):
            raise InputError(f"image must be in [0, {len(self.image_grids)}), got {image}.")
        grid = self.image_attr_of(target_token_pos)[image]
        (rows, cols), (H, W) = self.image_grids[image], self.image_frames[image]
        r = torch.arange(H) * rows // H
        c = torch.arange(W) * cols // W
        pixels = grid[r][:, c]
        if spread:
            area = torch.bincount(r, minlength=rows)[:, None] * torch.bincount(c, minlength=cols)
            pixels = pixels / area[r][:, c].to(pixels)
        return pixels

    def modality_shares(self) -> dict[str, float]:
        """Each modality's share of the total absolute attribution (image, text; summing to 1)."""
        image = float(self.image_token_attr.sum(0).abs().sum())
        text = float(self.text_token_attr.sum(0).abs().sum())
        total = image + text
        if total == 0:
            return {"image": 0.0, "text": 0.0}
        return {"image": image / total, "text": text / total}

    # ---- views ---------------------------------------------------------------------------------

    def to_llm_result(self, image: Any) -> Any:
        """An :class:`~llmattr.text.result.LLMAttributionResult` whose features are the grid
        cells of the first image (``patch_<row>_<col>``) and then the text features, with an
        input that draws ``image`` (the picture as the processor framed it; resized to
        :attr:`image_frames` ``[0]`` when its size differs)."""
        from ..text.result import LLMAttributionResult

        rows, cols = self.image_grids[0]
        n = rows * cols
        cells = self.image_token_attr[:, :n]
        words = self.text_token_attr[:, self.text_features]
        token_attr = torch.cat([cells, words], 1)
        inp = _GridImage(image, (rows, cols), self.image_frames[0],
                         [self.text_tokens[i] for i in self.text_features])  # fmt: skip
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.values,
            output_tokens=self.output_tokens,
            output_probs=self.output_probs,
            method="VLMGradientAttribution",
            info={"modalities": inp.modalities},
            inp=inp,
        )

    def to_html(self, image: Any, title: str | None = None, path: str | Path | None = None) -> str:
        """The HTML report of :meth:`to_llm_result` (the image's heatmap beside the prompt)."""
        return str(self.to_llm_result(image).to_html(title=title, path=path))

    def plot_image_heatmap(self, image: Any, **kwargs: Any) -> Any:
        """Captum 0.9's image heatmap of :meth:`to_llm_result` (same keyword arguments)."""
        return self.to_llm_result(image).plot_image_heatmap(**kwargs)


class _GridImage:
    """The image-input contract of the views for a feature grid over one image: pixel ``(y, x)``
    of the ``(H, W)`` frame belongs to cell ``(y * rows // H, x * cols // W)``."""

    def __init__(
        self, image: Any, grid: tuple[int, int], frame: tuple[int, int], words: list[str]
    ) -> None:
        from .image_input import as_rgb

        (rows, cols), (H, W) = grid, frame
        image = as_rgb(image)
        self.image = image if image.size == (W, H) else image.resize((W, H))
        cell = (torch.arange(H) * rows // H)[:, None] * cols + (torch.arange(W) * cols // W)
        self._cell = cell
        self.n_image = rows * cols
        self.values = [f"patch_{r}_{c}" for r in range(rows) for c in range(cols)] + words
        self.modalities = ["image"] * self.n_image + ["text"] * len(words)
        self.mask_id_to_idx = {i: i for i in range(self.n_image)}
        self.n_itp_features = len(self.values)

    def format_pixel_attr(self, itp_attr: Tensor) -> Tensor:
        """``(..., n_features)`` -> ``(..., H, W)``: each pixel its cell's value."""
        return torch.as_tensor(itp_attr)[..., : self.n_image][..., self._cell]

    def get_mask_list(self) -> list[Tensor]:
        """One ``(H, W)`` bool mask per grid cell."""
        return [self._cell == i for i in range(self.n_image)]
