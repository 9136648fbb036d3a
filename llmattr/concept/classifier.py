"""The classifiers that learn concept activation vectors from layer activations.

:class:`Classifier` is Captum's interface (``train_and_eval``, ``weights``, ``classes``); any
object with those three methods can be plugged into :class:`~llmattr.concept.TCAV`, e.g. a wrapper
around scikit-learn's ``SGDClassifier``. :class:`DefaultClassifier` is a regularized logistic
regression trained with torch (full batch, accelerated gradient): deterministic, on the
activations' device and dtype, and with no scikit-learn dependency.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._core.errors import InputError

__all__ = ["Classifier", "DefaultClassifier", "train_test_split"]


class Classifier(ABC):
    """What TCAV needs from a concept classifier (Captum's abstract class)."""

    @abstractmethod
    def __init__(self) -> None: ...

    @abstractmethod
    def train_and_eval(self, dataloader: DataLoader, **kwargs: Any) -> dict | None:
        """Train on the ``(activations (B, F), labels (B,))`` batches of ``dataloader``; return
        statistics (e.g. ``{"accs": accuracy}``) or ``None``."""

    @abstractmethod
    def weights(self) -> Tensor:
        """The trained weights, ``(C, F)``: one row per class, in the order of :meth:`classes`."""

    @abstractmethod
    def classes(self) -> list[int]:
        """The class labels (concept ids) in the order of the rows of :meth:`weights`."""


def train_test_split(
    x: Tensor, y: Tensor, test_split: float = 0.33, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shuffle with a seeded generator and split: ``(x_train, x_test, y_train, y_test)``.

    Args:
        x: ``(N, F)`` activations.
        y: ``(N,)`` labels.
        test_split: the fraction of examples held out.
        seed: the shuffle's seed (Captum shuffles with the global ``random``; a fixed seed makes
            the CAVs reproducible).
    """
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    n_test = int(test_split * len(x))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], x[test], y[train], y[test]


class DefaultClassifier(Classifier):
    """L2-regularized logistic regression on the activations, trained with torch, full batch.

    Two concepts give one weight vector ``w`` and :meth:`weights` returns ``[-w, w]`` (the rows
    for the lower and the higher concept id), as Captum's default does; more concepts give a
    softmax model, one row per concept.

    Args:
        alpha: the L2 penalty, ``alpha / 2 * ||W||^2`` added to the mean cross-entropy (Captum's
            SGDClassifier uses ``alpha=0.01``).
        max_iter: gradient iterations (at most).
        tol: stop when no gradient entry exceeds this.
        seed: the seed of the train/test shuffle.
    """

    def __init__(
        self, alpha: float = 0.01, max_iter: int = 1000, tol: float = 1e-6, seed: int = 0
    ) -> None:
        self.alpha = alpha
        self.tol = tol
        self.max_iter = max_iter
        self.seed = seed
        self._weights: Tensor | None = None
        self._classes: list[int] = []

    def train_and_eval(
        self, dataloader: DataLoader, test_split_ratio: float = 0.33, **kwargs: Any
    ) -> dict:
        """Train on a ``1 - test_split_ratio`` share of the examples; return ``{"accs": accuracy
        on the held-out share}`` (on the training share when none is held out)."""
        xs, ys = zip(*((x.reshape(len(x), -1), y.reshape(-1)) for x, y in dataloader))
        x, y = torch.cat(xs).detach(), torch.cat(ys).detach()
        if not x.is_floating_point():
            x = x.float()
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_split_ratio, self.seed)
        classes = torch.unique(y).tolist()
        if len(classes) < 2 or torch.unique(y_train).numel() < len(classes):
            raise InputError(
                f"The classifier needs examples of every concept in its training split; got "
                f"labels {sorted(set(torch.unique(y_train).tolist()))} of {classes}: give each "
                "concept more examples or lower test_split_ratio."
            )
        self._classes = [int(c) for c in classes]
        index = torch.searchsorted(torch.tensor(classes, device=y.device), y_train)
        self._weights, bias = self._fit(x_train, index, len(classes))
        xe, ye = (x_test, y_test) if len(x_test) else (x_train, y_train)
        pred = torch.tensor(self._classes, device=x.device)[(xe @ self._weights.T + bias).argmax(1)]
        return {"accs": (pred == ye).to(x.dtype).mean()}

    def _fit(self, x: Tensor, index: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
        """Minimize ``mean cross-entropy + alpha / 2 * ||W||^2`` (bias unpenalized) by Nesterov's
        accelerated gradient with step ``1 / L``: a convex problem, a deterministic answer, and no
        ``torch.optim`` (whose first use imports the compiler stack, seconds)."""
        n, rows = len(x), 1 if n_classes == 2 else n_classes
        xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)  # bias column
        target = (
            index.to(x.dtype).unsqueeze(1)
            if rows == 1
            else torch.nn.functional.one_hot(index, rows).to(x.dtype)
        )
        penalty = torch.ones(xb.shape[1], dtype=x.dtype, device=x.device)
        penalty[-1] = 0.0
        # the loss's curvature is at most ||X||^2 / (4n) (sigmoid) or / (2n) (softmax)
        gram = xb @ xb.T if n <= xb.shape[1] else xb.T @ xb  # same largest eigenvalue, smaller
        lipschitz = torch.linalg.eigvalsh(gram)[-1] / (4 * n if rows == 1 else 2 * n)
        step = 1.0 / float(lipschitz + self.alpha)
        w = torch.zeros(xb.shape[1], rows, dtype=x.dtype, device=x.device)
        ahead, t = w.clone(), 1.0
        for _ in range(self.max_iter):
            logits = xb @ ahead
            p = torch.sigmoid(logits) if rows == 1 else torch.softmax(logits, 1)
            grad = xb.T @ (p - target) / n + self.alpha * penalty[:, None] * ahead
            new = ahead - step * grad
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            ahead = new + (t - 1) / t_next * (new - w)
            w, t = new, t_next
            if float(grad.abs().max()) < self.tol:
                break
        weight, bias = w[:-1].T, w[-1]
        if rows == 1:  # sigmoid(w x + b) is the higher class: rows [-w, w] and [-b/2, b/2]
            return torch.cat([-weight, weight]), torch.cat([-bias, bias]) / 2
        return weight, bias

    def weights(self) -> Tensor:
        """``(C, F)`` weights, one row per class of :meth:`classes`."""
        if self._weights is None:
            raise InputError("No weights yet: call train_and_eval first.")
        return self._weights

    def classes(self) -> list[int]:
        """The concept ids, ascending, in the order of the rows of :meth:`weights`."""
        return list(self._classes)
