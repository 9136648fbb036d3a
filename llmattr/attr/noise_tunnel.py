"""NoiseTunnel: SmoothGrad, SmoothGrad² and VarGrad around any attribution method."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor

from .._core.base import Attribution
from .._core.errors import InputError
from .._core.inputs import (
    TensorOrTuple,
    as_tuple,
    expand_args,
    expand_batch,
    format_additional_args,
    format_baseline_distribution,
    format_inputs,
    restore_form,
)
from .._core.targets import normalize_target
from .gradient_shap import noise_stdevs

__all__ = ["NoiseTunnel", "NoiseTunnelType"]


class NoiseTunnelType(Enum):
    """How the attributions of the noisy copies are combined."""

    smoothgrad = 1
    smoothgrad_sq = 2
    vargrad = 3


class NoiseTunnel(Attribution):
    """Average an attribution method over Gaussian-noised copies of the inputs.

    ``smoothgrad`` returns the mean of the attributions of ``nt_samples`` noisy copies
    (Smilkov et al., 2017), ``smoothgrad_sq`` the mean of their squares and ``vargrad`` their
    variance (Adebayo et al., 2018). Noise comes from torch's global generator.

    Args:
        attribution_method: any llmattr attribution object (e.g. ``IntegratedGradients(model)``).
    """

    def __init__(self, attribution_method: Attribution) -> None:
        if not isinstance(attribution_method, Attribution):
            raise TypeError(
                "NoiseTunnel wraps an attribution method instance, e.g. "
                f"NoiseTunnel(Saliency(model)); got {type(attribution_method).__name__}."
            )
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        self.is_delta_supported = attribution_method.has_convergence_delta()

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    def attribute(
        self,
        inputs: TensorOrTuple,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs: float | tuple[float, ...] = 1.0,
        draw_baseline_from_distrib: bool = False,
        **kwargs: Any,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        """Attributions of the wrapped method, combined over noisy copies of the inputs.

        Args:
            inputs: a ``(batch, ...)`` float tensor or a tuple of them.
            nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
            nt_samples: noisy copies per example.
            nt_samples_batch_size: copies per example handed to the wrapped method at once (None:
                all); results do not depend on it beyond the random draws.
            stdevs: noise standard deviation, one number or one per input.
            draw_baseline_from_distrib: treat ``baselines`` as a distribution and give every
                noisy copy one baseline drawn from it.
            **kwargs: arguments of the wrapped method (``target``, ``baselines``,
                ``additional_forward_args``, ``n_steps``, ``return_convergence_delta``, ...).

        Returns:
            Attributions shaped like the wrapped method's for ``inputs``; with
            ``return_convergence_delta`` also the wrapped method's deltas for every noisy copy,
            example-major, shape ``(batch * nt_samples * k,)`` where ``k`` is the number of deltas
            the method returns per example (1 for most): ``delta.reshape(batch, -1)[i]`` are
            example ``i``'s, whatever ``nt_samples_batch_size`` (Captum concatenates the
            partitions, so its order changes with ``nt_samples_batch_size``). A per-example
            ``feature_mask`` (first dimension ``batch``) follows its example over the copies.
        """
        xs, was_tuple = format_inputs(inputs)
        try:
            kind = NoiseTunnelType[nt_type]
        except KeyError:
            raise InputError(
                f"nt_type must be one of {[t.name for t in NoiseTunnelType]}, got {nt_type!r}."
            ) from None
        for name, value in (
            ("nt_samples", nt_samples),
            ("nt_samples_batch_size", nt_samples_batch_size),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InputError(f"{name} must be a positive int, got {value!r}.")
        for i, x in enumerate(xs):
            if not x.is_floating_point():
                raise TypeError(
                    f"NoiseTunnel adds Gaussian noise to the inputs, but input {i} has dtype "
                    f"{x.dtype}; pass float inputs (for token ids, use embeddings)."
                )
        with_delta = bool(kwargs.get("return_convergence_delta", False))
        if with_delta and not self.is_delta_supported:
            raise ValueError(
                f"{self.attribution_method.get_name()} has no convergence delta; drop "
                "return_convergence_delta."
            )
        sds = noise_stdevs(stdevs, len(xs))
        batch = xs[0].shape[0]
        target = normalize_target(kwargs.pop("target", None), batch)
        args = format_additional_args(kwargs.pop("additional_forward_args", None))
        baselines = kwargs.pop("baselines", None)
        has_baselines = baselines is not None
        if draw_baseline_from_distrib:
            if not has_baselines:
                raise ValueError("draw_baseline_from_distrib=True needs baselines to draw from.")
            baselines = format_baseline_distribution(baselines, xs, inputs)
            # every draw made up front: partitions (nt_samples_batch_size) do not change them
            drawn = torch.randint(0, baselines[0].shape[0], (batch, nt_samples))
        per_batch = nt_samples_batch_size or nt_samples

        sums: list[Tensor] | None = None
        sq_sums: list[Tensor] | None = None
        deltas: list[Tensor] = []
        done = 0
        while done < nt_samples:
            k = min(per_batch, nt_samples - done)
            noisy = _noisy_copies(xs, sds, k)
            call_kwargs = dict(kwargs)
            call_kwargs["target"] = target.expand(k, "interleave")
            if args:
                call_kwargs["additional_forward_args"] = expand_args(args, batch, k, "interleave")
            if kwargs.get("feature_mask") is not None:
                call_kwargs["feature_mask"] = _expand_masks(kwargs["feature_mask"], k)
            if has_baselines:
                index = (
                    drawn[:, done : done + k].reshape(-1) if draw_baseline_from_distrib else None
                )
                call_kwargs["baselines"] = self._baselines_for(baselines, xs, k, index)
            out = self.attribution_method.attribute(noisy if was_tuple else noisy[0], **call_kwargs)
            if with_delta:
                out, delta = out
                deltas.append(delta.reshape(batch, -1))
            # rows are example-major over the copies; a method giving m rows per example (one
            # per output, Captum's FeatureAblation layout) keeps them after the copy axis
            rows = tuple(
                a.reshape(batch, k, a.shape[0] // (batch * k), *a.shape[1:]) for a in as_tuple(out)
            )
            part = [r.sum(1) for r in rows]
            part_sq = [(r * r).sum(1) for r in rows]
            sums = part if sums is None else [s + p for s, p in zip(sums, part)]
            sq_sums = part_sq if sq_sums is None else [s + p for s, p in zip(sq_sums, part_sq)]
            done += k

        assert sums is not None and sq_sums is not None
        means = [s / nt_samples for s in sums]
        if kind is NoiseTunnelType.smoothgrad:
            result = means
        elif kind is NoiseTunnelType.smoothgrad_sq:
            result = [s / nt_samples for s in sq_sums]
        else:
            result = [s / nt_samples - m * m for s, m in zip(sq_sums, means)]
        attrs = restore_form([r.reshape(-1, *r.shape[2:]) for r in result], was_tuple)
        if with_delta:
            return attrs, torch.cat(deltas, dim=1).reshape(-1)
        return attrs

    def _baselines_for(
        self, baselines: Any, xs: tuple[Tensor, ...], k: int, index: Tensor | None
    ) -> Any:
        """Baselines for the ``batch * k`` noisy rows of one partition; ``index`` holds the rows
        of the distribution drawn for them (when drawing from a distribution)."""
        if index is not None:
            return tuple(b[index.to(b.device)] for b in baselines)
        if getattr(self.attribution_method, "_baseline_distribution", False):
            return baselines
        # A per-example baseline (the input's number of dimensions, one row per example) follows
        # its example over the noisy copies. Anything else already broadcasts to the expanded
        # rows: a number, a (1, ...) tensor, or a lower-dimensional tensor broadcast over the
        # batch (even when its first size happens to equal the batch size).
        batch = xs[0].shape[0]
        entries = as_tuple(baselines)
        expanded = tuple(
            expand_batch(b, k, "interleave")
            if isinstance(b, Tensor)
            and i < len(xs)
            and b.dim() == xs[i].dim()
            and b.shape[0] == batch
            and batch > 1
            else b
            for i, b in enumerate(entries)
        )
        return expanded if isinstance(baselines, tuple | list) else expanded[0]


def _expand_masks(feature_mask: Any, k: int) -> Any:
    """A per-example feature mask (first dimension > 1) follows its example over the ``k``
    noisy copies (example-major, like the copies); a shared mask is passed as it is."""
    entries = tuple(
        m.repeat_interleave(k, dim=0) if isinstance(m, Tensor) and m.dim() and m.shape[0] > 1 else m
        for m in as_tuple(feature_mask)
    )
    return entries if isinstance(feature_mask, tuple | list) else entries[0]


def _noisy_copies(xs: tuple[Tensor, ...], stdevs: tuple[float, ...], k: int) -> tuple[Tensor, ...]:
    """``k`` noisy copies of every example, example-major (copy ``s`` of example ``i`` at row
    ``i * k + s``). The noise is drawn one copy at a time, so splitting the copies into partitions
    (``nt_samples_batch_size``) leaves the random draws unchanged."""
    noise = [
        [sd * torch.randn_like(x) if sd else torch.zeros_like(x) for x, sd in zip(xs, stdevs)]
        for _ in range(k)
    ]
    return tuple(
        (x.unsqueeze(1) + torch.stack([copy[j] for copy in noise], 1)).reshape(-1, *x.shape[1:])
        for j, x in enumerate(xs)
    )
