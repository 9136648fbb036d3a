"""Image regions and prompt words as the features of one attribution (the VQA example).

:class:`MultimodalInput` holds an image with its segments (as :class:`ImageMaskInput`) and a
prompt whose words (or given character spans) are features too. A presence row paints the absent
regions and removes (or replaces) the absent words; ``processor_fn(image, text)`` rebuilds the
model inputs, so prompts of different lengths are scored together (right-padded, exactly).
``LLMAttribution`` returns one result over both modalities; ``result.modality_shares()`` gives
each modality's share of the total.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError
from .image_input import ImageMaskInput

__all__ = ["MultimodalInput"]

# words never made features by default: placeholders the processor expands (``<image>``,
# ``<|image_pad|>``) and chat role markers (``USER:``, ``ASSISTANT:``)
_MARKUP = re.compile(r"^(<[^<>\s]+>|[A-Za-z_]+:)$")


class MultimodalInput:
    """An image's regions and a prompt's words, as features of the same attribution.

    Features are the image regions first (``image_feature_<id>``, as :class:`ImageMaskInput`),
    then the text features in order of appearance (named by their text).

    Args:
        image: a PIL image (converted to RGB with a warning when it is not).
        text: the prompt, with the processor's image placeholder (e.g. ``<image>``).
        processor_fn: ``(image, text) -> model inputs`` (the processor call).
        mask, mask_list, baseline: the image's segments and the baseline of absent pixels, as
            in :class:`ImageMaskInput`.
        text_features: ``"words"`` (every whitespace-separated word but the ``fixed`` ones), or
            ``(start, end)`` character spans of ``text`` (non-overlapping).
        fixed: with ``"words"``, a word that is never a feature: a string set, or a predicate;
            default: placeholders written ``<...>`` and role markers such as ``USER:``.
        text_baseline: what an absent text feature becomes: None (default) removes it (and one
            space next to it), a string replaces it.
    """

    def __init__(
        self,
        image: Any,
        text: str,
        processor_fn: Callable[[Any, str], Any],
        mask: Tensor | None = None,
        mask_list: list[Tensor] | None = None,
        baseline: Any = (255, 255, 255),
        *,
        text_features: str | Sequence[tuple[int, int]] = "words",
        fixed: Callable[[str], bool] | Sequence[str] | None = None,
        text_baseline: str | None = None,
    ) -> None:
        if not isinstance(text, str):
            raise InputTypeError(f"text must be a string, got {type(text).__name__}.")
        if not callable(processor_fn):
            raise InputTypeError("processor_fn must be callable: (image, text) -> model inputs.")
        if text_baseline is not None and not isinstance(text_baseline, str):
            raise InputTypeError("text_baseline must be None (remove) or a string.")
        self.text = text
        self.image_part = ImageMaskInput(image, mask, mask_list, baseline)
        self.image = self.image_part.image
        self.processor_fn = processor_fn
        self.text_baseline = text_baseline
        self.spans = _spans(text, text_features, fixed)
        self.n_image = self.image_part.n_itp_features
        self.n_itp_features = self.n_image + len(self.spans)
        self.values = [*self.image_part.values, *(text[a:b] for a, b in self.spans)]
        self.modalities = ["image"] * self.n_image + ["text"] * len(self.spans)
        self.mask, self.mask_list = self.image_part.mask, self.image_part.mask_list
        self.mask_id_to_idx = self.image_part.mask_id_to_idx
        self.original_model_inputs = processor_fn(self.image, text)

    def to_tensor(self) -> Tensor:
        """``(1, n_itp_features)`` ones: every region and word present."""
        return torch.ones(1, self.n_itp_features)

    def format_attr(self, itp_attr: Tensor) -> Tensor:
        """Attributions per feature, unchanged: ``(..., n_itp_features)``."""
        return itp_attr

    def format_pixel_attr(self, itp_attr: Tensor) -> Tensor:
        """``(..., n_itp_features)`` -> ``(..., H, W)`` from the image features' columns (the
        text features' columns are ignored)."""
        itp_attr = torch.as_tensor(itp_attr)
        if itp_attr.shape[-1] != self.n_itp_features:
            raise InputError(
                f"itp_attr must end in {self.n_itp_features} (one value per feature); got shape "
                f"{tuple(itp_attr.shape)}."
            )
        return self.image_part.format_pixel_attr(itp_attr[..., : self.n_image])

    def get_mask_list(self) -> list[Tensor]:
        """One ``(H, W)`` boolean mask per image feature."""
        return self.image_part.get_mask_list()

    def plot_mask_overlay(
        self, show: bool = False, border_width: int = 0, show_legends: bool = True
    ) -> tuple[Any, Any] | None:
        """The image's segments (see :meth:`ImageMaskInput.plot_mask_overlay`)."""
        return self.image_part.plot_mask_overlay(show, border_width, show_legends)

    def perturbed_text(self, keep: Tensor) -> str:
        """The prompt with the text features whose ``keep`` entry ``(n_text,)`` is 0 removed
        (or replaced by ``text_baseline``)."""
        out, last = [], 0
        for (a, b), kept in zip(self.spans, keep.tolist()):
            if kept:
                continue
            before = self.text[last:a]
            if self.text_baseline is None:
                # drop the word and one separating space, so no double space is left
                if before.endswith(" ") and (b == len(self.text) or self.text[b] == " "):
                    before = before[:-1]
                elif not before and not any(out) and self.text[b : b + 1] == " ":
                    b += 1  # nothing before it is left: drop the space after it instead
                out.append(before)
            else:
                out.append(before + self.text_baseline)
            last = b
        out.append(self.text[last:])
        return "".join(out)

    def perturbed_model_inputs(self, presence: Tensor) -> list[Any]:
        """The model inputs of each presence row ``(k, n_itp_features)``."""
        keep = torch.as_tensor(presence).detach().cpu()
        keep = keep.unsqueeze(0) if keep.dim() == 1 else keep
        if keep.dim() != 2 or keep.shape[1] != self.n_itp_features:
            raise InputError(
                f"presence must have shape (k, {self.n_itp_features}); got {tuple(keep.shape)}."
            )
        images = self.image_part.perturbed_images(keep[:, : self.n_image])
        texts = [self.perturbed_text(row != 0) for row in keep[:, self.n_image :]]
        return [self.processor_fn(im, t) for im, t in zip(images, texts)]

    def to_model_input(self, perturbed_tensor: Tensor | None = None) -> Any:
        """The model inputs for one presence row ``(1, n)``; the original ones for None."""
        if perturbed_tensor is None:
            return self.original_model_inputs
        return self.perturbed_model_inputs(perturbed_tensor)[0]


def _spans(
    text: str,
    features: str | Sequence[tuple[int, int]],
    fixed: Callable[[str], bool] | Sequence[str] | None,
) -> list[tuple[int, int]]:
    if isinstance(features, str):
        if features != "words":
            raise InputError(
                f"text_features must be 'words' or a list of (start, end) spans, got {features!r}."
            )
        if fixed is None:
            is_fixed: Callable[[str], bool] = lambda w: bool(_MARKUP.match(w))  # noqa: E731
        elif callable(fixed):
            is_fixed = fixed
        else:
            names = set(fixed)
            is_fixed = names.__contains__
        spans = [m.span() for m in re.finditer(r"\S+", text) if not is_fixed(m.group())]
    else:
        spans = [(int(a), int(b)) for a, b in features]
        for (a, b), nxt in zip(spans, [*spans[1:], (len(text), len(text))]):
            if not 0 <= a < b <= nxt[0] <= len(text):
                raise InputError(
                    f"text feature span ({a}, {b}) is empty, out of range or overlaps the next "
                    f"one; spans must be sorted, non-overlapping (start, end) within the text of "
                    f"length {len(text)}."
                )
    if not spans:
        raise InputError(
            "The text has no features (every word is fixed markup); give text_features spans "
            "or fewer fixed words."
        )
    return spans
