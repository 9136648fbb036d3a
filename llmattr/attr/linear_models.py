"""Captum-style trainable interpretable models: ``fit(DataLoader)`` plus ``representation()``.

Captum's Lime fits its interpretable model through a small interface: ``fit`` receives a
``DataLoader`` of ``(x, y, w)`` batches (interpretable samples, model outputs, similarity
weights) and ``representation()`` returns the fitted coefficients, shape
``(n_outputs, n_features)``. This module provides the same names Captum exports
(``Model``, ``LinearModel``, ``SGDLinearModel``, ``SGDLasso``, ``SGDRidge``,
``SGDLinearRegression``, ``SkLearnLinearModel``, ``SkLearnLasso``, ``SkLearnRidge``,
``SkLearnLinearRegression``), trained the way Captum trains them, so the same samples give the
same coefficients. scikit-learn is optional: the ``SkLearn*`` classes raise :class:`ImportError`
when it is missing, the SGD ones only need torch. llmattr's own batched torch surrogates
(:mod:`llmattr.attr.surrogates`) remain the faster choice for many outputs at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from .linear_train import _sklearn, l2_loss, sgd_train_linear_model, sklearn_train_linear_model

__all__ = [
    "LinearModel",
    "Model",
    "SGDLasso",
    "SGDLinearModel",
    "SGDLinearRegression",
    "SGDRidge",
    "SkLearnLasso",
    "SkLearnLinearModel",
    "SkLearnLinearRegression",
    "SkLearnRidge",
    "l2_loss",
    "sgd_train_linear_model",
    "sklearn_train_linear_model",
]


class Model(ABC):
    """A trainable interpretable model: what Lime needs from its surrogate.

    Subclasses implement ``fit(train_data, **kwargs)`` (``train_data`` yields ``(x, y)`` or
    ``(x, y, w)`` batches; may return training statistics), ``representation()`` (a tensor,
    for a linear model its ``(n_outputs, n_features)`` weights) and ``__call__(x)`` (predict).
    """

    @abstractmethod
    def fit(self, train_data: Iterable[Any], **kwargs: Any) -> dict[str, Any] | None:
        """Train on ``train_data``; return optional statistics."""

    @abstractmethod
    def representation(self) -> Tensor:
        """The fitted model as a tensor (a linear model's weights, without the bias)."""

    @abstractmethod
    def __call__(self, x: Any) -> Any:
        """Predict for a batch ``x``."""


class LinearModel(nn.Module, Model):
    """A linear model ``norm(x) @ W.T + b`` built lazily by its training function.

    Args:
        train_fn: ``train_fn(model, dataloader=..., construct_kwargs=..., **fit_kwargs)``, which
            must call :meth:`_construct_model_params` (see :func:`sgd_train_linear_model` and
            :func:`sklearn_train_linear_model`).
        **kwargs: passed to :meth:`_construct_model_params` when training starts (SGD) or to
            the scikit-learn constructor (``SkLearn*``).
    """

    SUPPORTED_NORMS: list[str | None] = [None, "batch_norm", "layer_norm"]  # noqa: RUF012

    def __init__(self, train_fn: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__()
        self.norm: nn.Module | None = None
        self.linear: nn.Linear | None = None
        self.train_fn = train_fn
        self.construct_kwargs = kwargs

    def _construct_model_params(
        self,
        in_features: int | None = None,
        out_features: int | None = None,
        norm_type: str | None = None,
        affine_norm: bool = False,
        bias: bool = True,
        weight_values: Tensor | None = None,
        bias_value: Tensor | None = None,
        classes: Tensor | None = None,
    ) -> None:
        """Create the layers; with ``weight_values`` (``(out, in)`` or ``(in,)``) the sizes
        come from it and it becomes the weight."""
        if norm_type not in self.SUPPORTED_NORMS:
            raise ValueError(f"norm_type {norm_type!r} is not one of {self.SUPPORTED_NORMS}.")
        if weight_values is not None:
            in_features = weight_values.shape[-1]
            out_features = 1 if weight_values.dim() == 1 else weight_values.shape[0]
        if in_features is None or out_features is None:
            raise ValueError("Give in_features and out_features, or weight_values.")
        if norm_type == "batch_norm":
            self.norm = nn.BatchNorm1d(in_features, eps=1e-8, affine=affine_norm)
        elif norm_type == "layer_norm":
            self.norm = nn.LayerNorm(in_features, eps=1e-8, elementwise_affine=affine_norm)
        else:
            self.norm = None
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        if weight_values is not None:
            self.linear.weight.data = weight_values.reshape(out_features, in_features)
        if bias_value is not None:
            if not bias:
                raise ValueError("bias_value was given but bias=False.")
            self.linear.bias.data = bias_value
        self.linear.classes = classes  # type: ignore[assignment]

    def fit(self, train_data: Iterable[Any], **kwargs: Any) -> dict[str, Any] | None:
        """Train with ``train_fn`` on ``train_data`` (a DataLoader of ``(x, y[, w])``)."""
        return self.train_fn(
            self, dataloader=train_data, construct_kwargs=self.construct_kwargs, **kwargs
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in_features)`` → ``(batch, out_features)``."""
        if self.linear is None:
            raise RuntimeError("The model is not fitted yet: call fit first.")
        if self.norm is not None:
            x = self.norm(x)
        return self.linear(x)

    def representation(self) -> Tensor:
        """The weights, ``(out_features, in_features)``, without the bias (see :meth:`bias`)."""
        if self.linear is None:
            raise RuntimeError("The model is not fitted yet: call fit first.")
        return self.linear.weight.detach()

    def bias(self) -> Tensor | None:
        """The intercept, or None (not fitted, or fitted without one)."""
        if self.linear is None or self.linear.bias is None:
            return None
        return self.linear.bias.detach()

    def classes(self) -> Tensor | None:
        """The classes of a classifier trained with scikit-learn, else None."""
        found = getattr(self.linear, "classes", None)
        return None if found is None else found.detach()


class SGDLinearModel(LinearModel):
    """A :class:`LinearModel` trained by :func:`sgd_train_linear_model`; ``kwargs`` go to
    :meth:`LinearModel._construct_model_params` (``norm_type``, ``affine_norm``, ``bias``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(train_fn=sgd_train_linear_model, **kwargs)


class SGDLasso(SGDLinearModel):
    """Half-MSE plus ``alpha * ||W||_1``, trained by SGD (weights need not reach exactly 0)."""

    def fit(self, train_data: Iterable[Any], **kwargs: Any) -> dict[str, Any] | None:
        return super().fit(train_data, loss_fn=l2_loss, reg_term=1, **kwargs)


class SGDRidge(SGDLinearModel):
    """Half-MSE plus ``alpha * ||W||_2`` (the norm, as Captum), trained by SGD."""

    def fit(self, train_data: Iterable[Any], **kwargs: Any) -> dict[str, Any] | None:
        return super().fit(train_data, loss_fn=l2_loss, reg_term=2, **kwargs)


class SGDLinearRegression(SGDLinearModel):
    """Half-MSE without a penalty, trained by SGD."""

    def fit(self, train_data: Iterable[Any], **kwargs: Any) -> dict[str, Any] | None:
        return super().fit(train_data, loss_fn=l2_loss, reg_term=None, **kwargs)


class SkLearnLinearModel(LinearModel):
    """A :class:`LinearModel` fitted by a scikit-learn estimator.

    Args:
        sklearn_module: the estimator's path under ``sklearn``, e.g. ``"linear_model.Lasso"``.
        **kwargs: the estimator's constructor arguments.

    Raises:
        ImportError: scikit-learn is not installed.
    """

    def __init__(self, sklearn_module: str, **kwargs: Any) -> None:
        _sklearn()  # fail at construction, not in the middle of an attribution
        super().__init__(train_fn=sklearn_train_linear_model, **kwargs)
        self.sklearn_module = sklearn_module

    def fit(self, train_data: Iterable[Any], **kwargs: Any) -> dict[str, Any] | None:
        """Fit; ``kwargs`` go to the estimator's ``fit``."""
        return super().fit(train_data, sklearn_trainer=self.sklearn_module, **kwargs)


class SkLearnLasso(SkLearnLinearModel):
    """``sklearn.linear_model.Lasso(**kwargs)`` (Lime's default, with ``alpha=0.01``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("linear_model.Lasso", **kwargs)


class SkLearnRidge(SkLearnLinearModel):
    """``sklearn.linear_model.Ridge(**kwargs)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("linear_model.Ridge", **kwargs)


class SkLearnLinearRegression(SkLearnLinearModel):
    """``sklearn.linear_model.LinearRegression(**kwargs)`` (Captum's KernelShap surrogate)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("linear_model.LinearRegression", **kwargs)
