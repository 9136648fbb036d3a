"""Training functions of the Captum-style linear models (:mod:`llmattr.attr.linear_models`): SGD
in torch, and scikit-learn estimators copied into a torch linear model."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .linear_models import LinearModel

__all__ = ["l2_loss", "sgd_train_linear_model", "sklearn_train_linear_model"]


# --- SGD training ---------------------------------------------------------------------------------


def l2_loss(x1: Tensor, x2: Tensor, weights: Tensor | None = None) -> Tensor:
    """Half the (weighted) mean squared error; weights are normalized to sum to 1."""
    if weights is None:
        return (x1 - x2).pow(2).mean() / 2.0
    return ((weights / weights.norm(p=1)) * (x1 - x2).pow(2)).sum() / 2.0


class _Plateau:
    """Convergence test on the running loss: ``patience`` steps in a row without beating the
    best loss by more than ``threshold`` means converged."""

    def __init__(self, patience: int, threshold: float) -> None:
        self.patience, self.threshold = patience, threshold
        self.best: Tensor | None = None
        self.stalled = 0
        self.converged = False

    def update(self, loss: Tensor) -> bool:
        if self.best is not None:
            if loss > self.best or torch.isclose(self.best, loss, atol=self.threshold):
                self.stalled += 1
                if self.stalled >= self.patience:
                    self.converged = True
                    return True
            else:
                self.stalled = 0
        if self.best is None or self.best >= loss:
            self.best = loss.clone()
        return False


def _unpack(batch: Any, device: str | None) -> tuple[Tensor, Tensor, Tensor | None]:
    x, y, w = (*batch, None) if len(batch) == 2 else batch
    if device is not None:
        x, y = x.to(device), y.to(device)
        w = None if w is None else w.to(device)
    return x, y, w


def sgd_train_linear_model(
    model: LinearModel,
    dataloader: Any,
    construct_kwargs: dict[str, Any],
    max_epoch: int = 100,
    reduce_lr: bool = True,
    initial_lr: float = 0.01,
    alpha: float = 1.0,
    loss_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor] = l2_loss,
    reg_term: int | None = 1,
    patience: int = 10,
    threshold: float = 1e-4,
    running_loss_window: int | None = None,
    device: str | None = None,
    init_scheme: str = "zeros",
    debug: bool = False,
) -> dict[str, float]:
    """Train ``model`` by SGD until the running loss plateaus or ``max_epoch`` epochs pass.

    The loss is ``loss_fn(y, model(x), w) + alpha * ||W||_{reg_term}`` (no penalty when
    ``reg_term`` is None); the learning rate halves on plateaus when ``reduce_lr``. The running
    loss averages the last ``running_loss_window`` steps (default: examples per epoch). Same
    algorithm and defaults as Captum's trainer of the same name.

    Returns:
        ``train_time``, ``train_loss`` (running), ``train_iter`` and ``train_epoch``.
    """
    plateau = _Plateau(patience, threshold)
    batches = iter(dataloader)
    x, y, w = _unpack(next(batches), device)
    window_size = running_loss_window or x.shape[0] * len(dataloader)
    window: list[Tensor] = []
    model._construct_model_params(
        in_features=x.shape[1], out_features=y.shape[1] if y.dim() == 2 else 1,
        **construct_kwargs,
    )  # fmt: skip
    if x.is_floating_point():
        model.to(dtype=x.dtype)  # train in the data's precision
    model.train()
    linear = model.linear
    assert linear is not None
    if init_scheme is not None:
        if init_scheme not in ("xavier", "zeros"):
            raise ValueError(f"init_scheme must be 'xavier' or 'zeros', got {init_scheme!r}.")
        with torch.no_grad():
            if init_scheme == "xavier":
                nn.init.xavier_uniform_(linear.weight)
            else:
                linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
    steps = epoch = 0
    start = time.time()
    with torch.enable_grad():
        optim = torch.optim.SGD(model.parameters(), lr=initial_lr)
        scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optim, factor=0.5, patience=patience, threshold=threshold
            )
            if reduce_lr
            else None
        )
        while epoch < max_epoch:
            while True:
                y = y.view(x.shape[0], -1)
                w = None if w is None else w.view(x.shape[0], -1)
                steps += 1
                loss = loss_fn(y, model(x), w)
                if reg_term is not None:
                    loss = loss + torch.norm(linear.weight, p=reg_term).sum() * alpha
                # the window keeps its last `window_size` losses before each append
                window = [*window[-window_size:], loss.detach().clone()]
                average = torch.stack(window).mean()
                if plateau.update(average):
                    break
                if debug:
                    print(f"lr={optim.param_groups[0]['lr']}, loss={loss}, average={average}")
                loss.backward()
                optim.step()
                model.zero_grad()
                if scheduler is not None:
                    scheduler.step(average)
                nxt = next(batches, None)
                if nxt is None:
                    break
                x, y, w = _unpack(nxt, device)
            if plateau.converged:
                break
            epoch += 1
            batches = iter(dataloader)
            x, y, w = _unpack(next(batches), device)
    return {
        "train_time": time.time() - start,
        "train_loss": torch.stack(window).mean().item(),
        "train_iter": steps,
        "train_epoch": epoch,
    }


# --- scikit-learn training ----------------------------------------------------------------------


def _sklearn() -> Any:
    try:
        import sklearn
        import sklearn.linear_model
        import sklearn.svm  # estimators are looked up by dotted path below
    except ImportError as error:
        raise ImportError(
            "The SkLearn* interpretable models need scikit-learn (>= 0.23 for sample weights): "
            "pip install scikit-learn. Without it use llmattr's torch surrogates "
            "(llmattr.Lasso, Ridge, LinearRegression) or the SGD* models."
        ) from error
    return sklearn


def sklearn_train_linear_model(
    model: LinearModel,
    dataloader: Any,
    construct_kwargs: dict[str, Any],
    sklearn_trainer: str = "Lasso",
    norm_input: bool = False,
    **fit_kwargs: Any,
) -> dict[str, float]:
    """Fit ``sklearn.<sklearn_trainer>(**construct_kwargs)`` on the whole of ``dataloader``
    (with ``sample_weight`` from the ``w`` of ``(x, y, w)`` batches) and copy its ``coef_`` and
    ``intercept_`` into ``model``. ``norm_input`` standardizes the features first (the model
    then normalizes its inputs the same way).

    Returns:
        ``train_time``.
    """
    import numpy as np

    sklearn = _sklearn()
    xs, ys, ws = [], [], []
    for batch in dataloader:
        if len(batch) not in (2, 3):
            raise ValueError("The training data must yield (x, y) or (x, y, w) batches.")
        xs.append(batch[0].detach().cpu().numpy())
        ys.append(batch[1].detach().cpu().numpy())
        if len(batch) == 3 and batch[2] is not None:
            ws.append(batch[2].detach().cpu().numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    w = np.concatenate(ws) if ws else None
    mean = std = None
    if norm_input:
        mean, std = x.mean(0), x.std(0)
        x = (x - mean) / std
    estimator_cls = functools.reduce(getattr, sklearn_trainer.split("."), sklearn)
    estimator = estimator_cls(**construct_kwargs)
    start = time.time()
    try:
        estimator.fit(x, y, sample_weight=w, **fit_kwargs)
    except TypeError:
        estimator.fit(x, y, **fit_kwargs)
        warnings.warn(
            f"{sklearn_trainer} does not take sample_weight: it was fitted without the sample "
            "weights (for Lasso, upgrade scikit-learn to >= 0.23).",
            stacklevel=2,
        )
    elapsed = time.time() - start
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    coef = torch.as_tensor(np.asarray(estimator.coef_), dtype=dtype)
    n_out = coef.shape[0] if coef.dim() > 1 else 1
    intercept = torch.as_tensor(np.asarray(estimator.intercept_), dtype=dtype).reshape(-1)
    classes = getattr(estimator, "classes_", None)
    model._construct_model_params(
        norm_type=None,
        weight_values=coef.reshape(n_out, -1),
        bias_value=intercept.expand(n_out).clone(),
        classes=None if classes is None else torch.as_tensor(classes),
    )
    if norm_input:
        assert mean is not None and std is not None
        model.norm = _Standardize(torch.as_tensor(mean), torch.as_tensor(std))
    return {"train_time": elapsed}


class _Standardize(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor, eps: float = 1e-8) -> None:
        super().__init__()
        self.mean, self.std, self.eps = mean, std, eps

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / (self.std + self.eps)
