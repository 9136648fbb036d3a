"""Interpretable surrogate models for Lime, written in torch and batched.

A surrogate fits ``y ≈ X @ coef + intercept`` with sample weights, for many targets at once:
``X`` is ``(n_samples, n_features)`` (the interpretable samples, shared), ``y`` and ``weights``
are ``(n_samples, n_targets)`` (one column per example and output). Fitting all columns together
is what lets Lime explain a batch, or every generated token, in one solve.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["InterpretableModel", "Lasso", "LinearRegression", "Ridge"]


class InterpretableModel:
    """Base class: ``fit`` returns ``(coef, intercept)`` of shapes ``(n_targets, n_features)``
    and ``(n_targets,)``; subclasses implement :meth:`_solve` on centred data."""

    fit_intercept: bool = True

    def fit(self, X: Tensor, y: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Fit every column of ``y``.

        Args:
            X: ``(n_samples, n_features)`` interpretable inputs.
            y: ``(n_samples, n_targets)`` outputs (a 1-D ``y`` is one target).
            weights: ``(n_samples, n_targets)`` or ``(n_samples,)`` non-negative sample weights
                (default: all ones).

        Returns:
            ``(coef, intercept)``, float64, shapes ``(n_targets, n_features)`` and
            ``(n_targets,)``.
        """
        X = X.double()
        y = (y.unsqueeze(1) if y.dim() == 1 else y).double()
        n, n_targets = y.shape
        if X.shape[0] != n:
            raise ValueError(f"X has {X.shape[0]} samples but y has {n}.")
        w = torch.ones_like(y) if weights is None else weights.double().to(y.device)
        if w.dim() == 1:
            w = w.unsqueeze(1).expand(n, n_targets)
        if bool((w < 0).any()):
            raise ValueError("Sample weights must be non-negative.")
        w = w.t().contiguous()  # (targets, n)
        Xb = X.unsqueeze(0).expand(n_targets, -1, -1)  # (targets, n, f)
        yb = y.t().unsqueeze(-1)  # (targets, n, 1)
        if self.fit_intercept:
            total = w.sum(1, keepdim=True).clamp(min=1e-300)
            x_mean = (w.unsqueeze(-1) * Xb).sum(1, keepdim=True) / total.unsqueeze(-1)
            y_mean = (w.unsqueeze(-1) * yb).sum(1, keepdim=True) / total.unsqueeze(-1)
            Xb, yb = Xb - x_mean, yb - y_mean
        coef = self._solve(Xb, yb, w)  # (targets, f)
        if self.fit_intercept:
            intercept = (y_mean - x_mean @ coef.unsqueeze(-1)).reshape(n_targets)
        else:
            intercept = torch.zeros(n_targets, dtype=torch.float64, device=y.device)
        return coef, intercept

    def _solve(self, X: Tensor, y: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError


class LinearRegression(InterpretableModel):
    """Weighted least squares (the minimum-norm solution when under-determined).

    Args:
        fit_intercept: fit an intercept (default) or force it to 0.
    """

    def __init__(self, fit_intercept: bool = True) -> None:
        self.fit_intercept = fit_intercept

    def _solve(self, X: Tensor, y: Tensor, w: Tensor) -> Tensor:
        root = w.sqrt().unsqueeze(-1)
        return (torch.linalg.pinv(root * X) @ (root * y)).squeeze(-1)


class Ridge(InterpretableModel):
    """Weighted ridge: ``Σ w_i (y_i - x_i·β - b)² + α ||β||²`` (scikit-learn's ``Ridge``).

    Args:
        alpha: strength of the L2 penalty.
        fit_intercept: fit an (unpenalized) intercept.
    """

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def _solve(self, X: Tensor, y: Tensor, w: Tensor) -> Tensor:
        Xw = X * w.unsqueeze(-1)
        gram = Xw.transpose(1, 2) @ X
        eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
        rhs = Xw.transpose(1, 2) @ y
        return torch.linalg.lstsq(gram + self.alpha * eye, rhs).solution.squeeze(-1)


class Lasso(InterpretableModel):
    """Weighted lasso: ``(1 / (2 Σw)) Σ w_i (y_i - x_i·β - b)² + α ||β||₁`` (scikit-learn's
    ``Lasso`` with sample weights), solved by accelerated proximal gradient (FISTA, with adaptive
    restart) for every target at once.

    Args:
        alpha: strength of the L1 penalty.
        fit_intercept: fit an (unpenalized) intercept.
        max_iter: iteration limit (a warning says when it is reached first).
        tol: stop when the optimality conditions hold to within ``tol`` times the largest
            feature–target correlation ``|Xᵀ W y| / Σw``.
    """

    def __init__(
        self,
        alpha: float = 0.01,
        fit_intercept: bool = True,
        max_iter: int = 5000,
        tol: float = 1e-10,
    ) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

    def _solve(self, X: Tensor, y: Tensor, w: Tensor) -> Tensor:
        scale = w / w.sum(1, keepdim=True).clamp(min=1e-300)  # weights summing to 1
        Xw = X * scale.unsqueeze(-1)
        gram = Xw.transpose(1, 2) @ X  # (t, f, f)
        corr = (Xw.transpose(1, 2) @ y).squeeze(-1)  # (t, f)
        lipschitz = torch.linalg.eigvalsh(gram)[:, -1].clamp(min=1e-12).unsqueeze(-1)
        step = 1.0 / lipschitz
        limit = self.tol * corr.abs().amax(1, keepdim=True)
        beta = torch.zeros_like(corr)
        momentum, t = beta, torch.ones_like(lipschitz)
        for it in range(self.max_iter):
            grad = (gram @ momentum.unsqueeze(-1)).squeeze(-1) - corr
            z = momentum - step * grad
            new = torch.sign(z) * (z.abs() - step * self.alpha).clamp(min=0)
            # adaptive restart (O'Donoghue and Candès, 2015): drop the momentum of a target
            # whose step went against its proximal gradient
            uphill = ((momentum - new) * (new - beta)).sum(1, keepdim=True) > 0
            t = torch.where(uphill, torch.ones_like(t), t)
            t_next = (1 + (1 + 4 * t * t).sqrt()) / 2
            momentum = new + ((t - 1) / t_next) * (new - beta)
            beta, t = new, t_next
            if it % 10 == 9 and bool((self._violation(gram, corr, beta) <= limit).all()):
                return beta
        if self.max_iter > 0 and not bool((self._violation(gram, corr, beta) <= limit).all()):
            warnings.warn(
                f"Lasso did not converge in max_iter={self.max_iter} iterations (the design is "
                "ill-conditioned); raise max_iter or alpha, or loosen tol.",
                stacklevel=3,
            )
        return beta

    def _violation(self, gram: Tensor, corr: Tensor, beta: Tensor) -> Tensor:
        """How far ``beta`` is from the optimality conditions, per target and feature: the
        loss gradient must be ``-α sign(β_j)`` where ``β_j ≠ 0`` and within ``±α`` where
        ``β_j = 0``."""
        g = (gram @ beta.unsqueeze(-1)).squeeze(-1) - corr
        return torch.where(
            beta != 0, (g + self.alpha * beta.sign()).abs(), (g.abs() - self.alpha).clamp(min=0)
        ).amax(1, keepdim=True)
