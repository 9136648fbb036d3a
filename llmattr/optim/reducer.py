"""Channel reduction of activations (Olah et al., "The Building Blocks of Interpretability").

:class:`ChannelReducer` factors the channel dimension of ``(N, C, H, W)`` activations into a few
components. Its default algorithm is a non-negative matrix factorization written in torch
(:class:`TorchNMF`, Lee & Seung multiplicative updates, seeded), so scikit-learn is not needed;
any object with ``fit_transform`` (an sklearn estimator class, for instance) also works.
:func:`posneg` makes signed activations non-negative for one-sided NMF.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._core.errors import InputError, InputTypeError

__all__ = ["ChannelReducer", "TorchNMF", "posneg"]


class TorchNMF:
    """Non-negative matrix factorization ``X ≈ W @ H`` by multiplicative updates (Frobenius loss).

    Args:
        n_components: rank ``k`` of the factorization.
        max_iter: most update rounds.
        tol: stop when the relative decrease of the reconstruction error over 10 rounds is below it.
        seed: seeds the random initialization (a ``torch.Generator``), so runs are reproducible.
        eps: guards the divisions.

    After ``fit_transform(X)`` with ``X`` of shape ``(n_samples, n_features)``: ``components_`` is
    ``H``, shape ``(k, n_features)``; the returned ``W`` has shape ``(n_samples, k)``;
    ``reconstruction_err_`` is ``||X - W H||_F`` and ``n_iter_`` the rounds run.
    """

    def __init__(
        self,
        n_components: int = 3,
        max_iter: int = 500,
        tol: float = 1e-5,
        seed: int = 0,
        eps: float = 1e-12,
    ) -> None:
        if not isinstance(n_components, int) or n_components < 1:
            raise InputError(f"n_components must be a positive int, got {n_components!r}.")
        if max_iter < 1:
            raise InputError(f"max_iter must be >= 1, got {max_iter}.")
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.eps = eps

    def _check(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise InputError("TorchNMF expects a 2-D tensor (n_samples, n_features).")
        if not x.is_floating_point():
            x = x.float()
        if not torch.isfinite(x).all():
            raise InputError("NMF input contains NaN or inf.")
        if (x < 0).any():
            raise InputError(
                "NMF needs non-negative input; split signed activations with posneg(x, dim) first."
            )
        return x

    def _init(self, rows: int, cols: int, x: Tensor) -> Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        scale = (x.mean() / self.n_components).sqrt().item()
        m = torch.rand(rows, cols, generator=gen, dtype=torch.float64) * scale
        return m.to(device=x.device, dtype=x.dtype)

    def fit_transform(self, x: Tensor) -> Tensor:
        """Fit to ``x`` ``(n_samples, n_features)``; return ``W`` ``(n_samples, k)``."""
        x = self._check(x)
        n, f = x.shape
        w = self._init(n, self.n_components, x)
        h = self._init(self.n_components, f, x)
        norm_x = x.norm().clamp_min(self.eps)
        prev = float("inf")
        it = 0
        for it in range(1, self.max_iter + 1):
            h = h * (w.T @ x) / ((w.T @ w) @ h + self.eps)
            w = w * (x @ h.T) / (w @ (h @ h.T) + self.eps)
            if it % 10 == 0 or it == self.max_iter:
                err = ((x - w @ h).norm() / norm_x).item()
                if prev - err < self.tol * max(prev, self.eps) and it > 10:
                    break
                prev = err
        self.components_ = h
        self.n_iter_ = it
        self.reconstruction_err_ = (x - w @ h).norm()
        return w

    def transform(self, x: Tensor) -> Tensor:
        """Coefficients ``W`` ``(n_samples, k)`` of new data on the fitted ``components_``."""
        if not hasattr(self, "components_"):
            raise InputError("Call fit_transform before transform.")
        x = self._check(x).to(self.components_.dtype)
        h = self.components_
        w = self._init(x.shape[0], self.n_components, x)
        for _ in range(self.max_iter):
            w = w * (x @ h.T) / (w @ (h @ h.T) + self.eps)
        return w


_ALGORITHMS = {"NMF": TorchNMF}


class ChannelReducer:
    """Reduce the channel dimension of activations to ``n_components``.

    Args:
        n_components: channels after reduction.
        reduction_alg: ``"NMF"`` (:class:`TorchNMF`), or a class / object with
            ``fit_transform(array_2d)`` (e.g. ``sklearn.decomposition.PCA``; a class is built as
            ``reduction_alg(n_components=n_components, **kwargs)``).
        **kwargs: passed to the algorithm (for NMF: ``max_iter``, ``tol``, ``seed``, ``eps``).

    Fitted attributes of the algorithm are read without their trailing underscore:
    ``reducer.components`` is ``components_``, shape ``(n_components, C)``.
    """

    def __init__(self, n_components: int = 3, reduction_alg: Any = "NMF", **kwargs: Any) -> None:
        if isinstance(reduction_alg, str):
            if reduction_alg not in _ALGORITHMS:
                raise InputError(
                    f"Unknown reduction_alg {reduction_alg!r}; built in: {sorted(_ALGORITHMS)}, "
                    "or pass a class or object with fit_transform."
                )
            reduction_alg = _ALGORITHMS[reduction_alg]
        if isinstance(reduction_alg, type):
            reducer = reduction_alg(n_components=n_components, **kwargs)
        else:
            reducer = reduction_alg
        if not callable(getattr(reducer, "fit_transform", None)):
            raise InputTypeError("reduction_alg has no fit_transform method.")
        self.n_components = n_components
        self._reducer = reducer

    def fit_transform(self, x: Tensor, swap_2nd_and_last_dims: bool = True) -> Tensor:
        """Fit the reduction on ``x`` and return it reduced along the channel dimension.

        Shapes: ``(N, C, H, W)`` -> ``(N, n_components, H, W)`` (any ``(N, C, ...)`` likewise);
        ``(C, H, W)`` -> ``(n_components, H, W)``; ``(N, C)`` -> ``(N, n_components)``. With
        ``swap_2nd_and_last_dims=False`` the channels are the last dimension instead. The result
        has ``x``'s device (and dtype for the built-in NMF).
        """
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise InputError("ChannelReducer.fit_transform expects a tensor with >= 2 dims.")
        if swap_2nd_and_last_dims and x.dim() >= 3:
            ch = 0 if x.dim() == 3 else 1
            moved = x.movedim(ch, -1)
        else:
            ch, moved = -1, x
        flat = moved.reshape(-1, moved.shape[-1])
        if not isinstance(self._reducer, TorchNMF):
            flat = flat.detach().cpu().numpy()
        out = torch.as_tensor(self._reducer.fit_transform(flat), device=x.device)
        out = out.reshape(*moved.shape[:-1], out.shape[-1])
        return out.movedim(-1, ch) if ch != -1 else out

    def __getattr__(self, name: str) -> Any:
        reducer = self.__dict__.get("_reducer")
        if reducer is not None and hasattr(reducer, name + "_"):
            value = getattr(reducer, name + "_")
            return value if isinstance(value, Tensor) else _as_tensor_if_array(value)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


def _as_tensor_if_array(value: Any) -> Any:
    return torch.as_tensor(value) if type(value).__name__ == "ndarray" else value


def posneg(x: Tensor, dim: int = 0) -> Tensor:
    """``cat([relu(x), relu(-x)], dim)``: a non-negative tensor twice as long along ``dim`` that
    keeps the sign information, so one-sided NMF can run on signed activations."""
    return torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=dim)
