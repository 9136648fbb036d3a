"""Objectives for input optimization, with optim-wip's semantics and composition rules.

A loss maps ``{target: activation}`` (what :class:`~llmattr.optim.layers.ModuleOutputsHook`
captures; keys are modules or their dotted names) to a tensor that
:func:`default_loss_summarize` turns into a scalar to **minimize** (``-mean``), so a loss is
something to *maximize*. Activations are ``(N, C, H, W)`` for conv layers and ``(N, C)`` for linear
layers; ``x`` is a column (width) index and ``y`` a row (height) index, both defaulting to the
centre (``W // 2``, ``H // 2``).

Composition (optim-wip's rules): ``loss op number`` and ``number op loss`` apply ``op``
elementwise, except ``number / loss`` and ``number ** loss``, which use the loss's mean;
``loss op loss`` reduces each side to its mean first, so shapes never clash.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError, InputTypeError

__all__ = [
    "L1", "L2", "ActivationInterpolation", "Alignment", "BaseLoss", "ChannelActivation",
    "CompositeLoss", "DeepDream", "Diversity", "LayerActivation", "Loss", "NeuronActivation",
    "TotalVariation", "default_loss_summarize", "sum_loss_list",
]  # fmt: skip

Target = nn.Module | str
Activations = Mapping[Any, Tensor]


def _flat_targets(target: Any) -> list[Target]:
    items = target if isinstance(target, list | tuple) else [target]
    out: list[Target] = []
    for t in items:
        if not any(t is o or (isinstance(t, str) and t == o) for o in out):
            out.append(t)
    return out


def _name(target: Any) -> str:
    return target if isinstance(target, str) else type(target).__name__


class Loss:
    """Base of all losses: ``loss(activations) -> Tensor`` and arithmetic composition."""

    __name__: str = "Loss"

    @property
    def target(self) -> Target | list[Target]:
        """The module(s) or name(s) whose activations this loss reads."""
        raise NotImplementedError

    def __call__(self, targets_to_values: Activations) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.__name__

    def __neg__(self) -> CompositeLoss:
        return CompositeLoss(lambda m: -self(m), self.__name__, self.target)

    def __add__(self, other: float | Loss) -> CompositeLoss:
        return _compose(self, other, operator.add)

    def __sub__(self, other: float | Loss) -> CompositeLoss:
        return _compose(self, other, operator.sub)

    def __mul__(self, other: float | Loss) -> CompositeLoss:
        return _compose(self, other, operator.mul)

    def __truediv__(self, other: float | Loss) -> CompositeLoss:
        return _compose(self, other, operator.truediv)

    def __pow__(self, other: float | Loss) -> CompositeLoss:
        return _compose(self, other, operator.pow)

    def __radd__(self, other: float) -> CompositeLoss:
        return _compose(self, other, lambda a, b: b + a)

    def __rsub__(self, other: float) -> CompositeLoss:
        return _compose(self, other, lambda a, b: b - a)

    def __rmul__(self, other: float) -> CompositeLoss:
        return _compose(self, other, lambda a, b: b * a)

    def __rtruediv__(self, other: float) -> CompositeLoss:
        return _compose(self, other, lambda a, b: b / a.mean())

    def __rpow__(self, other: float) -> CompositeLoss:
        return _compose(self, other, lambda a, b: b ** a.mean())


def _compose(a: Loss, b: Any, op: Callable[[Any, Any], Tensor]) -> CompositeLoss:
    if isinstance(b, Loss):
        name = f"Compose({a.__name__}, {b.__name__})"
        targets = _flat_targets(a.target) + _flat_targets(b.target)
        return CompositeLoss(lambda m: op(a(m).mean(), b(m).mean()), name, _flat_targets(targets))
    if isinstance(b, int | float) and not isinstance(b, bool):
        return CompositeLoss(lambda m: op(a(m), b), a.__name__, a.target)
    raise InputTypeError(f"Losses combine with int, float or Loss; got {type(b).__name__}.")


class CompositeLoss(Loss):
    """A loss given by a function of the activations (what composition builds)."""

    def __init__(self, loss_fn: Callable[[Activations], Tensor], name: str, target: Any) -> None:
        self.loss_fn, self.__name__, self._target = loss_fn, name, target

    @property
    def target(self) -> Target | list[Target]:
        return self._target

    def __call__(self, targets_to_values: Activations) -> Tensor:
        return self.loss_fn(targets_to_values)


class BaseLoss(Loss):
    """A loss on one target's activation, optionally on one example (``batch_index``)."""

    def __init__(self, target: Target, batch_index: int | None = None) -> None:
        if not isinstance(target, nn.Module | str):
            raise InputTypeError(
                f"A loss target must be an nn.Module or its dotted name, got "
                f"{type(target).__name__}."
            )
        self._target = target
        self.batch_index = batch_index
        self.__name__ = f"{type(self).__name__} [{_name(target)}]"

    @property
    def target(self) -> Target | list[Target]:
        return self._target

    def _get(self, targets_to_values: Activations, target: Target | None = None) -> Tensor:
        target = self._target if target is None else target
        if target not in targets_to_values:
            raise InputError(
                f"{self.__name__}: no activation captured for target {_name(target)!r}; the "
                "InputOptimization hooks every target of its loss."
            )
        return targets_to_values[target]

    def _acts(self, targets_to_values: Activations) -> Tensor:
        """The target's activation, restricted to ``batch_index`` when set: ``(N', C, ...)``."""
        acts = self._get(targets_to_values)
        if self.batch_index is not None:
            if not -acts.shape[0] <= self.batch_index < acts.shape[0]:
                raise InputError(
                    f"{self.__name__}: batch_index {self.batch_index} is out of range for a "
                    f"batch of {acts.shape[0]}."
                )
            i = self.batch_index % acts.shape[0]
            acts = acts[i : i + 1]
        return acts

    def _channel(self, acts: Tensor, index: int) -> int:
        if acts.dim() < 2 or not -acts.shape[1] <= index < acts.shape[1]:
            n = acts.shape[1] if acts.dim() >= 2 else 0
            raise InputError(
                f"{self.__name__}: channel index {index} is out of range; layer "
                f"{_name(self._target)!r} has {n} channels (shape {tuple(acts.shape)})."
            )
        return index

    def _pos(self, acts: Tensor, x: int | None, y: int | None) -> tuple[int, int]:
        """``(row, column)`` of the neuron: ``y``/``x`` or the centre of ``(N, C, H, W)``."""
        if acts.dim() != 4:
            raise InputError(
                f"{self.__name__}: needs an (N, C, H, W) activation, got shape {tuple(acts.shape)}."
            )
        h, w = acts.shape[2:]
        row, col = h // 2 if y is None else y, w // 2 if x is None else x
        if not (0 <= row < h and 0 <= col < w):
            raise InputError(f"{self.__name__}: position x={x}, y={y} is outside {h}x{w}.")
        return row, col


class LayerActivation(BaseLoss):
    """The whole activation ``(N, C, ...)``: maximize every unit of the layer."""

    def __call__(self, targets_to_values: Activations) -> Tensor:
        return self._acts(targets_to_values)


class ChannelActivation(BaseLoss):
    """One channel, ``(N, H, W)`` (``(N,)`` for a linear layer)."""

    def __init__(self, target: Target, channel_index: int, batch_index: int | None = None) -> None:
        super().__init__(target, batch_index)
        self.channel_index = channel_index
        self.__name__ = f"ChannelActivation [{_name(target)}, {channel_index}]"

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        return acts[:, self._channel(acts, self.channel_index)]


class NeuronActivation(BaseLoss):
    """One unit of one channel at column ``x``, row ``y`` (default centre): ``(N, 1, 1)``."""

    def __init__(
        self,
        target: Target,
        channel_index: int,
        x: int | None = None,
        y: int | None = None,
        batch_index: int | None = None,
    ) -> None:
        super().__init__(target, batch_index)
        self.channel_index, self.x, self.y = channel_index, x, y

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        c = self._channel(acts, self.channel_index)
        row, col = self._pos(acts, self.x, self.y)
        return acts[:, c, row : row + 1, col : col + 1]


class DeepDream(BaseLoss):
    """Squared activation (Mordvintsev et al., 2015), same shape as the activation."""

    def __call__(self, targets_to_values: Activations) -> Tensor:
        return self._acts(targets_to_values) ** 2


class TotalVariation(BaseLoss):
    """``sum |a[.., i+1, :] - a[.., i, :]| + sum |a[.., j+1] - a[.., j]|`` (scalar): a
    smoothness penalty over the last two dimensions (Mahendran & Vedaldi, 2014)."""

    def __call__(self, targets_to_values: Activations) -> Tensor:
        a = self._acts(targets_to_values)
        return (a[..., 1:, :] - a[..., :-1, :]).abs().sum() + (a[..., 1:] - a[..., :-1]).abs().sum()


class L1(BaseLoss):
    """``sum |a - constant|`` (scalar), usually a penalty (subtract it)."""

    def __init__(
        self, target: Target, constant: float = 0.0, batch_index: int | None = None
    ) -> None:
        super().__init__(target, batch_index)
        self.constant = constant

    def __call__(self, targets_to_values: Activations) -> Tensor:
        return (self._acts(targets_to_values) - self.constant).abs().sum()


class L2(BaseLoss):
    """``sqrt(epsilon + sum (a - constant)^2)`` (scalar), usually a penalty."""

    def __init__(
        self,
        target: Target,
        constant: float = 0.0,
        epsilon: float = 1e-6,
        batch_index: int | None = None,
    ) -> None:
        super().__init__(target, batch_index)
        self.constant, self.epsilon = constant, epsilon

    def __call__(self, targets_to_values: Activations) -> Tensor:
        a = self._acts(targets_to_values)
        return torch.sqrt(self.epsilon + ((a - self.constant) ** 2).sum())


class Diversity(BaseLoss):
    """Penalizes similar examples in a batch (Olah et al., 2017): with ``G_n`` the channel Gram
    matrix of example ``n`` normalized to unit Frobenius norm, ``-sum_{n != m} <G_n, G_m> / N``
    (scalar)."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)

    def __call__(self, targets_to_values: Activations) -> Tensor:
        a = self._get(targets_to_values)
        n, c = a.shape[:2]
        flat = a.reshape(n, c, -1)
        grams = (flat @ flat.transpose(1, 2)).reshape(n, -1)
        grams = grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sims = grams @ grams.T
        return -(sims.sum() - sims.diagonal().sum()) / n


class ActivationInterpolation(BaseLoss):
    """Interpolates between two objectives across the batch (Olah et al., 2017): example ``n`` of
    ``N`` weighs ``w = n / (N - 1)``, and the loss is ``sum_n mean((1 - w) a1[n]) + mean(w a2[n])``
    (scalar), ``a1``/``a2`` the channels ``channel_index1/2`` (-1: all) of the two targets."""

    def __init__(
        self,
        target1: Target,
        channel_index1: int = -1,
        target2: Target | None = None,
        channel_index2: int = -1,
    ) -> None:
        super().__init__(target1)
        self.target_one, self.target_two = target1, target1 if target2 is None else target2
        self.channel_index_one, self.channel_index_two = channel_index1, channel_index2
        self.__name__ = f"ActivationInterpolation [{_name(target1)}, {_name(self.target_two)}]"

    @property
    def target(self) -> Target | list[Target]:
        return _flat_targets([self.target_one, self.target_two])

    def __call__(self, targets_to_values: Activations) -> Tensor:
        a1 = self._get(targets_to_values, self.target_one)
        a2 = self._get(targets_to_values, self.target_two)
        if a1.shape[0] != a2.shape[0] or a1.shape[0] < 2:
            raise InputError(
                f"{self.__name__}: needs the same batch of at least 2 at both targets, got "
                f"{a1.shape[0]} and {a2.shape[0]}."
            )
        if self.channel_index_one > -1:
            a1 = a1[:, self._channel(a1, self.channel_index_one)]
        if self.channel_index_two > -1:
            a2 = a2[:, self._channel(a2, self.channel_index_two)]
        n = a1.shape[0]
        w = torch.arange(n, dtype=a1.dtype, device=a1.device) / (n - 1)
        return ((1 - w) * a1.reshape(n, -1).mean(1) + w * a2.reshape(n, -1).mean(1)).sum()


class Alignment(BaseLoss):
    """Pulls neighbouring examples together (Olah et al., 2017):
    ``-sum_{d=1..4} sum_i mean((a_i - a_{i+d})^2) / decay_ratio^d`` (scalar)."""

    def __init__(self, target: Target, decay_ratio: float = 2.0) -> None:
        super().__init__(target)
        self.decay_ratio = decay_ratio

    def __call__(self, targets_to_values: Activations) -> Tensor:
        a = self._get(targets_to_values)
        total = a.new_zeros(())
        for d in range(1, 5):
            if d < a.shape[0]:
                sq = ((a[:-d] - a[d:]) ** 2).reshape(a.shape[0] - d, -1).mean(1)
                total = total + sq.sum() / self.decay_ratio**d
        return -total


def sum_loss_list(
    loss_list: Sequence[Loss], to_scalar_fn: Callable[[Tensor], Tensor] = torch.mean
) -> CompositeLoss:
    """``sum(to_scalar_fn(loss(acts)) for loss in loss_list)`` as one loss, without the deep
    recursion that chaining hundreds of ``+`` builds. Targets are merged without duplicates."""
    losses = list(loss_list)
    if not losses or not all(isinstance(loss, Loss) for loss in losses):
        raise InputError("sum_loss_list takes a non-empty sequence of losses.")
    name = "Sum(" + ", ".join(loss.__name__ for loss in losses) + ")"
    targets = _flat_targets([t for loss in losses for t in _flat_targets(loss.target)])
    return CompositeLoss(lambda m: sum(to_scalar_fn(loss(m)) for loss in losses), name, targets)


def default_loss_summarize(loss_value: Tensor) -> Tensor:
    """``-mean(loss_value)``: the scalar that the optimizer minimizes (maximizing the loss)."""
    return -loss_value.mean()
