"""Direction objectives: how far activations point along a given direction (optim-wip's
``Direction``, ``NeuronDirection``, ``AngledNeuronDirection``, ``TensorDirection``) and
``ActivationWeights``. Conventions and composition as :mod:`llmattr.optim.loss`."""

from __future__ import annotations

import torch
from torch import Tensor

from .._core.errors import InputError
from .loss import Activations, BaseLoss, Target, _name

__all__ = [
    "ActivationWeights",
    "AngledNeuronDirection",
    "Direction",
    "NeuronDirection",
    "TensorDirection",
]


def _dot_cossim(vec: Tensor, acts: Tensor, cossim_pow: float, dim: int = 1) -> Tensor:
    """``<vec, acts>`` along ``dim``, times ``max(cos, 0.1) ** cossim_pow`` when the power > 0."""
    dot = (vec * acts).sum(dim)
    if cossim_pow == 0:
        return dot
    cos = torch.cosine_similarity(vec, acts, dim=dim, eps=1e-8)
    return dot * cos.clamp(min=0.1) ** cossim_pow


def _as_channel_vec(loss: BaseLoss, vec: Tensor, acts: Tensor) -> Tensor:
    """``vec`` (C,) shaped to broadcast along dim 1 of ``acts``, in its dtype and device."""
    if vec.numel() != acts.shape[1]:
        raise InputError(
            f"{loss.__name__}: the direction has {vec.numel()} entries but layer "
            f"{_name(loss._target)!r} has {acts.shape[1]} channels."
        )
    shape = (1, -1) + (1,) * (acts.dim() - 2)
    return vec.reshape(shape).to(acts.dtype).to(acts.device)


class Direction(BaseLoss):
    """Dot product of each position's channel vector with ``vec`` (times
    ``max(cos, 0.1) ** cossim_pow`` when > 0): ``(N, H, W)`` (Carter et al., 2019)."""

    def __init__(
        self,
        target: Target,
        vec: Tensor,
        cossim_pow: float = 0.0,
        batch_index: int | None = None,
    ) -> None:
        super().__init__(target, batch_index)
        self.direction, self.cossim_pow = vec.reshape(-1), cossim_pow

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        return _dot_cossim(_as_channel_vec(self, self.direction, acts), acts, self.cossim_pow)


class NeuronDirection(Direction):
    """:class:`Direction` at one position (column ``x``, row ``y``; default centre):
    ``(N, 1, 1)``. With ``channel_index`` only that channel is dotted with ``vec``."""

    def __init__(
        self,
        target: Target,
        vec: Tensor,
        x: int | None = None,
        y: int | None = None,
        channel_index: int | None = None,
        cossim_pow: float = 0.0,
        batch_index: int | None = None,
    ) -> None:
        super().__init__(target, vec, cossim_pow, batch_index)
        self.x, self.y, self.channel_index = x, y, channel_index

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        row, col = self._pos(acts, self.x, self.y)
        vec = _as_channel_vec(self, self.direction, acts)
        acts = acts[:, :, row : row + 1, col : col + 1]
        if self.channel_index is not None:
            acts = acts[:, self._channel(acts, self.channel_index)].unsqueeze(1)
        return _dot_cossim(vec, acts, self.cossim_pow)


class AngledNeuronDirection(BaseLoss):
    """A direction objective weighted towards angle (Lucid issue 116, Carter et al., 2019).

    ``a`` is the centre (or ``x``, ``y``) channel vector ``(N, C)`` of a conv layer, or the
    ``(N, C)`` activation of a linear one; ``v = vec`` (or ``vec @ vec_whitened``). With
    ``cossim_pow == 0`` returns ``a * v`` ``(N, C)``; otherwise the scalar
    ``d * max(d / (eps + ||a||), 0.1) ** cossim_pow`` with ``d = mean(a * v)``.
    """

    def __init__(
        self,
        target: Target,
        vec: Tensor,
        vec_whitened: Tensor | None = None,
        cossim_pow: float = 4.0,
        x: int | None = None,
        y: int | None = None,
        eps: float = 1.0e-4,
        batch_index: int | None = None,
    ) -> None:
        super().__init__(target, batch_index)
        if vec_whitened is not None and vec_whitened.dim() != 2:
            raise InputError("AngledNeuronDirection: vec_whitened must be a (C, C) matrix.")
        self.vec = vec.reshape(1, -1)
        self.vec_whitened, self.cossim_pow, self.eps, self.x, self.y = (
            vec_whitened, cossim_pow, eps, x, y,
        )  # fmt: skip

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        if acts.dim() == 4:
            row, col = self._pos(acts, self.x, self.y)
            acts = acts[:, :, row, col]
        vec = self.vec if self.vec_whitened is None else self.vec @ self.vec_whitened
        vec = _as_channel_vec(self, vec, acts)
        if self.cossim_pow == 0:
            return acts * vec
        dot = (acts * vec).mean()
        cos = dot / (self.eps + acts.pow(2).sum().sqrt())
        return dot * cos.clamp(min=0.1) ** self.cossim_pow


class TensorDirection(BaseLoss):
    """Dot product with a ``(1, C, h, w)`` direction tensor on the centre ``h x w`` crop of the
    activation, along channels (times ``max(cos, 0.1) ** cossim_pow``): ``(N, h, w)``."""

    def __init__(
        self,
        target: Target,
        vec: Tensor,
        cossim_pow: float = 0.0,
        batch_index: int | None = None,
    ) -> None:
        super().__init__(target, batch_index)
        if vec.dim() != 4:
            raise InputError("TensorDirection: vec must be (1, C, h, w).")
        self.direction, self.cossim_pow = vec, cossim_pow

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        self._pos(acts, None, None)  # checks the activation is (N, C, H, W)
        h, w = self.direction.shape[2:]
        if acts.shape[1] != self.direction.shape[1] or h > acts.shape[2] or w > acts.shape[3]:
            raise InputError(
                f"{self.__name__}: direction {tuple(self.direction.shape)} does not fit the "
                f"activation {tuple(acts.shape)}."
            )
        top, left = (acts.shape[2] - h) // 2, (acts.shape[3] - w) // 2
        crop = acts[:, :, top : top + h, left : left + w]
        return _dot_cossim(self.direction.to(acts), crop, self.cossim_pow)


class ActivationWeights(BaseLoss):
    """Weights channels: ``a * weights[c]`` over the whole map ``(N, C, H, W)``; with ``neuron``
    (or ``x``/``y``) at one position ``(N, C)``; with ``wx``/``wy`` on the window
    ``[y:y+wy, x:x+wx]``."""

    def __init__(
        self,
        target: Target,
        weights: Tensor,
        neuron: bool = False,
        x: int | None = None,
        y: int | None = None,
        wx: int | None = None,
        wy: int | None = None,
    ) -> None:
        super().__init__(target)
        if (wx is None) != (wy is None) or (wx is not None and (x is None or y is None)):
            raise InputError("ActivationWeights: wx and wy go together, and need x and y.")
        self.weights, self.x, self.y, self.wx, self.wy = weights, x, y, wx, wy
        self.neuron = neuron or x is not None or y is not None

    def __call__(self, targets_to_values: Activations) -> Tensor:
        acts = self._acts(targets_to_values)
        weights = _as_channel_vec(self, self.weights, acts)
        if not self.neuron:
            return acts * weights
        row, col = self._pos(acts, self.x, self.y)
        if self.wx is None or self.wy is None:
            return acts[:, :, row, col] * weights.reshape(1, -1)
        return acts[:, :, row : row + self.wy, col : col + self.wx] * weights
