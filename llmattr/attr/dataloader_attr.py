"""DataLoaderAttribution: feature ablation against a metric of a whole data set.

Instead of one batch, the explained quantity is a metric computed over every batch a
``DataLoader`` yields (an accuracy, a mean loss, a precision...). Feature ``p``'s attribution is
``metric(data) - metric(data with feature p set to its baseline in every batch)``.

It is built the way Captum builds it, by composition: the wrapped :class:`FeatureAblation`
explains a function of a ``(1, n_features)`` tensor of ones, where ablating element ``p`` (setting
it to 0) means "ablate feature ``p`` everywhere"; that function traverses the loader once per
group of ``perturbations_per_pass`` ablations, so the perturbation engine does the batching and
progress, and the loader is read ``1 + ceil(n_features / perturbations_per_pass)`` times.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .._core.base import Attribution
from .._core.errors import InputError
from .ablation import FeatureAblation

__all__ = ["DataLoaderAttribution", "InputRole"]


class InputRole:
    """What each element a data loader yields is for (``input_roles``)."""

    need_attr = 0  #: passed to the forward and attributed (a tensor)
    need_forward = 1  #: passed to the forward, not attributed (like additional_forward_args)
    no_forward = 2  #: not passed to the forward (e.g. labels; ``reduce`` still sees it)


_ROLES = (InputRole.need_attr, InputRole.need_forward, InputRole.no_forward)


def _concat_outputs(accum: Tensor | None, output: Tensor, _inputs: Any) -> Tensor:
    """The default ``reduce``: every batch's output, concatenated along the batch."""
    return output if accum is None else torch.cat([accum, output])


def _as_elements(batch: Any) -> tuple[tuple[Any, ...], bool]:
    """A loader's batch as a tuple of elements, and whether it was a list/tuple."""
    if isinstance(batch, list | tuple):
        return tuple(batch), True
    return (batch,), False


def _check_roles(input_roles: Any, n_elements: int) -> tuple[int, ...]:
    if not input_roles:
        return (InputRole.need_attr,) * n_elements
    roles = tuple(input_roles)
    if len(roles) != n_elements:
        raise InputError(
            f"input_roles has {len(roles)} entries but the data loader yields {n_elements} "
            "elements per batch; give one role per element (0: attribute, 1: forward only, "
            "2: not passed to the forward)."
        )
    if any(r not in _ROLES for r in roles):
        raise InputError(f"input_roles must hold 0, 1 or 2 per element, got {roles}.")
    if InputRole.need_attr not in roles:
        raise InputError(
            f"input_roles {roles} has no element to attribute; mark at least one with 0 "
            "(InputRole.need_attr)."
        )
    return roles


def _check_baselines(baselines: Any, attr_inputs: tuple[Tensor, ...]) -> tuple[Any, ...]:
    if baselines is None:
        return (0,) * len(attr_inputs)
    values = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(values) != len(attr_inputs):
        raise InputError(
            f"Got {len(values)} baselines for {len(attr_inputs)} attributed elements (role 0); "
            "pass one baseline per attributed element."
        )
    for i, b in enumerate(values):
        if isinstance(b, bool) or not isinstance(b, Tensor | int | float):
            raise InputError(
                f"baselines[{i}] must be a tensor or a number, got {type(b).__name__}."
            )
        if isinstance(b, Tensor) and (b.dim() == 0 or b.shape[0] != 1):
            raise InputError(
                f"baselines[{i}] has shape {tuple(b.shape)}; a baseline tensor is shared by every "
                "batch of the loader, so its first dimension must be 1."
            )
    return values


def _check_masks(feature_mask: Any, attr_inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    if feature_mask is None:  # every element its own feature, numbered across inputs
        masks, offset = [], 0
        for x in attr_inputs:
            n = x[0:1].numel()
            masks.append(offset + torch.arange(n, device=x.device).reshape(x[0:1].shape))
            offset += n
        return tuple(masks)
    masks_t = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(masks_t) != len(attr_inputs):
        raise InputError(
            f"Got {len(masks_t)} feature masks for {len(attr_inputs)} attributed elements "
            "(role 0); pass one mask per attributed element."
        )
    for i, (m, x) in enumerate(zip(masks_t, attr_inputs)):
        if not isinstance(m, Tensor) or m.dim() == 0 or m.shape[0] != 1:
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise InputError(
                f"feature_mask[{i}] is {shape}; a mask is shared by every batch of the loader, so "
                "it must be a tensor whose first dimension is 1."
            )
        if m.is_floating_point() or m.dtype == torch.bool:
            raise InputError(f"feature_mask[{i}] must hold integer feature ids, got {m.dtype}.")
        try:
            torch.broadcast_shapes(m.shape, (1, *x.shape[1:]))
        except RuntimeError:
            raise InputError(
                f"feature_mask[{i}] of shape {tuple(m.shape)} does not broadcast to one example "
                f"of shape {(1, *x.shape[1:])}."
            ) from None
    return tuple(m.to(x.device).long() for m, x in zip(masks_t, attr_inputs))


class DataLoaderAttribution(Attribution):
    """Attribute a metric of a whole data loader to input features, by feature ablation.

    Args:
        attr_method: a :class:`FeatureAblation` instance (the only supported method, as in
            Captum); its ``forward_func`` is the model evaluated on every batch.
    """

    def __init__(self, attr_method: Attribution) -> None:
        if not isinstance(attr_method, FeatureAblation):
            raise InputError(
                f"DataLoaderAttribution supports FeatureAblation, got {type(attr_method).__name__}."
            )
        super().__init__(attr_method.forward_func)
        self.attr_method = copy.copy(attr_method)  # the user's instance is left untouched

    def attribute(
        self,
        dataloader: Iterable[Any],
        input_roles: tuple[int, ...] | None = None,
        baselines: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        reduce: Callable[[Any, Tensor, tuple[Any, ...]], Any] | None = None,
        to_metric: Callable[[Any], Tensor] | None = None,
        perturbations_per_pass: int = 1,
        show_progress: bool = False,
        return_input_shape: bool = True,
    ) -> Tensor | tuple[Tensor, ...]:
        """Ablation attributions of ``to_metric(reduce(outputs over the loader))``.

        Args:
            dataloader: yields a tensor, or a list/tuple of elements, per batch (the same layout
                every time); it is traversed several times.
            input_roles: one role per element (see :class:`InputRole`); default: all 0.
            baselines: per attributed element a number or a ``(1, ...)`` tensor broadcast to
                every batch (None: zeros).
            feature_mask: per attributed element a ``(1, ...)`` integer tensor of feature ids
                shared by every batch; ids run over ``0 .. n_features - 1`` across elements.
                Default: every element of one example is its own feature.
            reduce: ``reduce(accum, output, batch_elements) -> accum`` folds the forward's output
                of each batch (``accum`` is None at the first batch; ``batch_elements`` are the
                perturbed elements, labels included). Default: concatenate the outputs.
            to_metric: ``to_metric(accum) -> Tensor`` turns the final ``accum`` into the metric
                explained (default: ``accum`` itself, which must be a tensor).
            perturbations_per_pass: ablations evaluated per traversal of the loader (each keeps
                its own ``accum``), trading memory for fewer traversals.
            show_progress: show a progress bar over the ablations.
            return_input_shape: True: per attributed element ``(n_outputs, *element.shape[1:])``
                (a tuple when the loader yields lists/tuples); False: one
                ``(n_outputs, n_features)`` tensor. ``n_outputs`` is the metric's element count.

        Returns:
            The attributions, as described for ``return_input_shape``.
        """
        if (
            isinstance(perturbations_per_pass, bool)
            or not isinstance(perturbations_per_pass, int)
            or perturbations_per_pass < 1
        ):
            raise InputError(
                f"perturbations_per_pass must be a positive int, got {perturbations_per_pass!r}."
            )
        elements, was_tuple = _as_elements(next(iter(dataloader)))
        roles = _check_roles(input_roles, len(elements))
        attr_inputs = tuple(e for e, r in zip(elements, roles) if r == InputRole.need_attr)
        for i, e in enumerate(attr_inputs):
            if not isinstance(e, Tensor) or e.dim() == 0:
                raise InputError(
                    f"Attributed element {i} (role 0) is a {type(e).__name__}; attributed "
                    "elements must be tensors with a batch dimension."
                )
        bases = _check_baselines(baselines, attr_inputs)
        masks = _check_masks(feature_mask, attr_inputs)
        n_features = 1 + max(int(m.max()) for m in masks if m.numel())
        reduce_fn = _concat_outputs if reduce is None else reduce
        forward = self._metric_of_ablations(dataloader, roles, bases, masks, reduce_fn, to_metric)

        ablation = copy.copy(self.attr_method)
        ablation.forward_func = forward
        ones = torch.ones((1, n_features), device=attr_inputs[0].device)
        credit = ablation.attribute(
            ones, perturbations_per_eval=perturbations_per_pass, show_progress=show_progress
        )
        assert isinstance(credit, Tensor)  # one input in, one attribution out
        unique = credit.reshape(-1, n_features)  # (n_outputs, n_features)
        if not return_input_shape:
            return unique
        per_input = tuple(
            unique[:, m.expand(1, *x.shape[1:]).reshape(-1)].reshape(-1, *x.shape[1:])
            for m, x in zip(masks, attr_inputs)
        )
        return per_input if was_tuple else per_input[0]

    def _metric_of_ablations(
        self,
        dataloader: Iterable[Any],
        roles: tuple[int, ...],
        bases: tuple[Any, ...],
        masks: tuple[Tensor, ...],
        reduce: Callable[[Any, Tensor, tuple[Any, ...]], Any],
        to_metric: Callable[[Any], Tensor] | None,
    ) -> Callable[[Tensor], Tensor]:
        """The function FeatureAblation explains: ``(k, n_features)`` keep-flags (0 = ablate)
        → ``(k, n_outputs)`` metrics, one loader traversal for all ``k`` rows."""
        model = self.forward_func

        def ablated(x: Tensor, absent: Tensor | None, base: Any) -> Tensor:
            if absent is None:
                return x
            value = base.to(x.device, x.dtype) if isinstance(base, Tensor) else base
            # where, not x*keep + b*(1-keep): exact for inf/nan inputs and keeps integer dtypes
            return torch.where(absent.to(x.device), torch.as_tensor(value, dtype=x.dtype), x)

        def forward(keep: Tensor) -> Tensor:
            absent_per_row = []
            for row in keep:
                off = row == 0
                absents = tuple(off.to(m.device)[m] for m in masks)
                absent_per_row.append(tuple(a if bool(a.any()) else None for a in absents))
            accums: list[Any] = [None] * len(absent_per_row)
            for batch in dataloader:
                elements, _ = _as_elements(batch)
                for j, absents in enumerate(absent_per_row):
                    k = 0
                    perturbed = []
                    for e, role in zip(elements, roles):
                        if role == InputRole.need_attr:
                            e = ablated(e, absents[k], bases[k])
                            k += 1
                        perturbed.append(e)
                    args = [e for e, r in zip(perturbed, roles) if r != InputRole.no_forward]
                    accums[j] = reduce(accums[j], model(*args), tuple(perturbed))
            metrics = [to_metric(a) if to_metric is not None else a for a in accums]
            for m in metrics:
                if not isinstance(m, Tensor):
                    raise InputError(
                        "The accumulated metric must be a tensor, got "
                        f"{type(m).__name__}; return one from reduce or to_metric."
                    )
            return torch.stack(metrics).reshape(len(metrics), -1)

        return forward

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """Not available for DataLoaderAttribution (as in Captum)."""
        raise NotImplementedError("attribute_future is not implemented for DataLoaderAttribution")
