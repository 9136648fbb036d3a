"""Feature masks: which input elements form one feature for the perturbation methods.

A feature mask is an integer tensor per input, broadcastable to it, whose values are feature ids;
elements sharing an id are perturbed together, across inputs too (id 3 in input 0 and in input 1
is one feature). Ids must be ``0 .. n_features - 1`` with none missing. The mask's first dimension
is 1 (one grouping for every example) or the batch size (a grouping per example). Without a mask,
every element of every input is its own feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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
        cls, feature_mask: Any, inputs: tuple[Tensor, ...], name: str = "feature_mask"
    ) -> FeatureMasks:
        """Validate ``feature_mask`` (None, a tensor, or a tuple with one per input)."""
        if feature_mask is None:
            masks, offset = [], 0
            for x in inputs:
                n = x[0].numel()
                masks.append(
                    torch.arange(offset, offset + n, device=x.device).reshape(1, *x.shape[1:])
                )
                offset += n
            return cls(tuple(masks), offset)
        entries = as_tuple(feature_mask)
        if len(entries) != len(inputs):
            raise ValueError(
                f"Got {len(entries)} {name} tensors for {len(inputs)} inputs; pass one mask per "
                "input tensor (a tuple)."
            )
        batch = inputs[0].shape[0]
        masks = []
        for i, (m, x) in enumerate(zip(entries, inputs)):
            if not isinstance(m, Tensor):
                raise TypeError(f"{name}[{i}] must be an integer tensor, got {type(m).__name__}.")
            if m.is_floating_point() or m.is_complex() or m.dtype == torch.bool:
                raise TypeError(f"{name}[{i}] must hold integer feature ids, got dtype {m.dtype}.")
            m = m.to(device=x.device, dtype=torch.long)
            if m.dim() < x.dim():
                m = m.reshape(*([1] * (x.dim() - m.dim())), *m.shape)
            ok = (
                m.dim() == x.dim()
                and m.shape[0] in (1, batch)
                and all(a in (1, b) for a, b in zip(m.shape[1:], x.shape[1:]))
            )
            if not ok:
                raise ValueError(
                    f"{name}[{i}] has shape {tuple(entries[i].shape)}, which does not fit input "
                    f"{i} of shape {tuple(x.shape)}: it must broadcast to the input, with first "
                    f"dimension 1 (shared by every example) or {batch} (one per example)."
                )
            masks.append(m.expand(m.shape[0], *x.shape[1:]))
        ids = torch.cat([m.reshape(-1).cpu() for m in masks])
        if ids.numel() and int(ids.min()) < 0:
            negative = ids[ids < 0].unique()
            raise ValueError(
                f"{name} holds negative feature ids {negative.tolist()[:5]}; ids must be >= 0."
            )
        used = torch.bincount(ids) > 0 if ids.numel() else torch.zeros(0, dtype=torch.bool)
        n = used.shape[0]
        if not bool(used.all()):
            missing = torch.nonzero(~used).flatten()[:5].tolist()
            raise ValueError(
                f"{name} ids must be contiguous 0 .. n_features - 1; ids {missing} are missing. "
                "Renumber the mask, e.g. with torch.unique(mask, return_inverse=True)[1]."
            )
        return cls(tuple(masks), n)

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
        """Element masks of features ``start .. end - 1``, one feature per perturbation.

        The same as :meth:`absent` with all features but one present, without building the
        ``(k, n_features)`` table (ablation and permutation remove one feature at a time).

        Returns:
            Per input a bool tensor ``(end - start, 1 or batch, *input.shape[1:])``.
        """
        out = []
        for m in self.masks:
            ids = torch.arange(start, end, device=m.device).view(-1, *([1] * m.dim()))
            out.append(m.unsqueeze(0) == ids)
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
            flat = m.reshape(m.shape[0], -1)
            credits = credits.to(m.device)
            if m.shape[0] == 1:
                values = credits[:, :, flat[0]]
            else:
                values = credits.gather(2, flat.unsqueeze(1).expand(rows, n_out, -1))
            out.append(values.reshape(rows, n_out, *m.shape[1:]))
        return tuple(out)
