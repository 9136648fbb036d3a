"""Feature masks: which input elements form one feature for the perturbation methods.

A feature mask is an integer tensor per input, broadcastable to it, whose values are feature ids;
elements sharing an id are perturbed together, across inputs too (id 3 in input 0 and in input 1
is one feature). Ids must be ``0 .. n_features - 1`` with none missing, unless the caller allows
gaps (Captum's perturbation methods accept them: an unused id is a feature without elements). The
mask's first dimension is 1 (one grouping for every example) or the batch size (a grouping per
example). Without a mask, every element of every input is its own feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InputError
from .inputs import as_tuple

__all__ = ["FeatureMasks"]


@dataclass(frozen=True)
class FeatureMasks:
    """Normalized feature masks.

    Attributes:
        masks: one long tensor per input, of shape ``(1 or batch, *input.shape[1:])``.
        n_features: the number of features (the ids are ``0 .. n_features - 1``).
    """

    masks: tuple[Tensor, ...]
    n_features: int

    @classmethod
    def of(
        cls,
        feature_mask: Any,
        inputs: tuple[Tensor, ...],
        name: str = "feature_mask",
        *,
        allow_gaps: bool = False,
    ) -> FeatureMasks:
        """Validate ``feature_mask`` (None, a tensor, or a tuple with one per input).

        Integer masks are used as they are; a floating mask is accepted when its values are
        whole numbers (Captum compares ids with ``==``, so ``2.0`` is feature 2). With
        ``allow_gaps`` (Captum's perturbation methods) ids may skip numbers: ``n_features`` is
        then the largest id + 1, and an unused id is a feature without elements.
        """
        if feature_mask is None:
            masks, offset = [], 0
            for x in inputs:
                first = x[0:1]  # an empty input has no element, hence no feature
                n = first.numel()
                masks.append(torch.arange(offset, offset + n, device=x.device).reshape(first.shape))
                offset += n
            return cls(tuple(masks), offset)
        entries = as_tuple(feature_mask)
        if len(entries) != len(inputs):
            raise InputError(
                f"Got {len(entries)} {name} tensors for {len(inputs)} inputs; pass one mask per "
                "input tensor (a tuple)."
            )
        batch = inputs[0].shape[0]
        masks = []
        for i, (m, x) in enumerate(zip(entries, inputs)):
            if not isinstance(m, Tensor):
                raise TypeError(f"{name}[{i}] must be an integer tensor, got {type(m).__name__}.")
            if m.is_complex() or m.dtype == torch.bool:
                raise TypeError(f"{name}[{i}] must hold integer feature ids, got dtype {m.dtype}.")
            if m.is_floating_point():
                if not bool(torch.isfinite(m).all()) or not bool((m == m.round()).all()):
                    raise InputError(
                        f"{name}[{i}] is a floating mask with values that are not whole numbers; "
                        "feature ids must be integers 0 .. n_features - 1."
                    )
            m = m.to(device=x.device, dtype=torch.long)
            if m.dim() < x.dim():
                m = m.reshape(*([1] * (x.dim() - m.dim())), *m.shape)
            # dimension 0: one grouping for all examples (1) or one per example; an input whose
            # dimension 0 is not the batch (a flat index list) may have one id per entry
            ok = (
                m.dim() == x.dim()
                and m.shape[0] in (1, batch, x.shape[0])
                and all(a in (1, b) for a, b in zip(m.shape[1:], x.shape[1:]))
            )
            if not ok:
                raise InputError(
                    f"{name}[{i}] has shape {tuple(entries[i].shape)}, which does not fit input "
                    f"{i} of shape {tuple(x.shape)}: it must broadcast to the input, with first "
                    f"dimension 1 (shared by every example) or {batch} (one per example)."
                )
            if m.shape[0] not in (1, batch) and bool((m == m[0:1]).all()):
                m = m[0:1]  # one grouping repeated for each entry of a non-batch input: shared
            masks.append(m.expand(m.shape[0], *x.shape[1:]))
        ids = torch.cat([m.reshape(-1).cpu() for m in masks])
        if ids.numel() and int(ids.min()) < 0:
            negative = ids[ids < 0].unique()
            raise InputError(
                f"{name} holds negative feature ids {negative.tolist()[:5]}; ids must be >= 0."
            )
        used = torch.bincount(ids) > 0 if ids.numel() else torch.zeros(0, dtype=torch.bool)
        n = used.shape[0]
        if not allow_gaps and not bool(used.all()):
            missing = torch.nonzero(~used).flatten()[:5].tolist()
            raise InputError(
                f"{name} ids must be contiguous 0 .. n_features - 1; ids {missing} are missing. "
                "Renumber the mask, e.g. with torch.unique(mask, return_inverse=True)[1]."
            )
        return cls(tuple(masks), n)

    def order(self) -> Tensor:
        """The ids that have elements, in Captum's order: input by input, each input's new ids
        ascending (``torch.unique``), so features are visited as Captum visits them."""
        seen = torch.zeros(self.n_features, dtype=torch.bool)
        order = []
        for m in self.masks:
            ids = m.reshape(-1).unique().cpu()
            fresh = ids[~seen[ids]]
            seen[fresh] = True
            order.append(fresh)
        return torch.cat(order) if order else torch.zeros(0, dtype=torch.long)

    @property
    def per_example(self) -> bool:
        """Whether any mask has one grouping per example."""
        return any(m.shape[0] > 1 for m in self.masks)

    def absent(self, present: Tensor) -> tuple[Tensor, ...]:
        """Element masks of the features a perturbation removes.

        Args:
            present: ``(k, n_features)`` bool, or ``(k, batch, n_features)`` for per-example draws.

        Returns:
            Per input a bool tensor ``(k, 1 or batch, *input.shape[1:])``, True where the element
            is replaced.
        """
        out = []
        for m in self.masks:
            if present.dim() == 2:
                kept = present[:, m.reshape(-1)].reshape(present.shape[0], *m.shape)
            else:
                flat = m.reshape(m.shape[0], -1).expand(present.shape[1], -1)
                kept = present.gather(2, flat.unsqueeze(0).expand(present.shape[0], -1, -1))
                kept = kept.reshape(present.shape[0], present.shape[1], *m.shape[1:])
            out.append(~kept)
        return tuple(out)

    def single(self, start: int, end: int) -> tuple[Tensor, ...]:
        """Element masks of features ``start .. end - 1``, one feature per perturbation
        (:meth:`each` of those ids)."""
        return self.each(torch.arange(start, end))

    def each(self, ids: Tensor) -> tuple[Tensor, ...]:
        """Element masks of the features ``ids``, one feature per perturbation.

        The same as :meth:`absent` with all features but one present, without building the
        ``(k, n_features)`` table (ablation and permutation remove one feature at a time).

        Returns:
            Per input a bool tensor ``(len(ids), 1 or batch, *input.shape[1:])``.
        """
        out = []
        for m in self.masks:
            view = ids.to(m.device).view(-1, *([1] * m.dim()))
            out.append(m.unsqueeze(0) == view)
        return tuple(out)

    def spread(self, credits: Tensor) -> tuple[Tensor, ...]:
        """Give every element its feature's credit.

        Args:
            credits: ``(rows, n_outputs, n_features)`` per-feature credit, ``rows`` being the
                batch (or 1 for an aggregate output).

        Returns:
            Per input ``(rows, n_outputs, *input.shape[1:])``.
        """
        rows, n_out, _ = credits.shape
        out = []
        for m in self.masks:
            if m.numel() == 0:  # an empty input: nothing to credit
                out.append(credits.new_zeros(rows, n_out, *m.shape[1:]))
                continue
            flat = m.reshape(m.shape[0], -1)
            credits = credits.to(m.device)
            if m.shape[0] == 1:
                values = credits[:, :, flat[0]]
            elif m.shape[0] == rows:
                values = credits.gather(2, flat.unsqueeze(1).expand(rows, n_out, -1))
            else:
                values = _shared_credit(credits[:, :, flat])  # (rows, n_out, entries, positions)
            out.append(values.reshape(rows, n_out, *m.shape[1:]))
        return tuple(out)


def _shared_credit(values: Tensor) -> Tensor:
    """Per-position credit of an input whose mask has one grouping per entry of a first
    dimension that is not the batch (e.g. a flat index list), ``values`` being
    ``(rows, n_outputs, entries, positions)``. Attributions have one value per position, so the
    entries' credits must agree there (e.g. all 0, as for features FeaturePermutation skips);
    otherwise no per-position attribution exists and the mask must be shared instead."""
    if bool((values == values[:, :, 0:1]).all()):
        return values[:, :, 0]
    raise InputError(
        f"A feature mask has one grouping per entry ({values.shape[2]} entries) of an input whose "
        "first dimension is not the batch, and its features got different credit at the same "
        "position, so there is no per-position attribution. Give that input a mask with first "
        "dimension 1 (one grouping shared by every entry)."
    )
