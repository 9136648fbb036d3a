"""The torch surrogate models behind Lime: closed forms, optimality conditions, weighting
identities, batched targets, the under-determined case, errors, and scikit-learn (when installed)
as an independent reference with sample weights."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from llmattr import Lasso, LinearRegression, Ridge
from llmattr.attr.surrogates import InterpretableModel

F64 = torch.float64


def data(n: int = 40, f: int = 4, targets: int = 1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, f, generator=g, dtype=F64)
    y = torch.randn(n, targets, generator=g, dtype=F64) + X @ torch.randn(f, targets, generator=g,
                                                                          dtype=F64)  # fmt: skip
    w = torch.rand(n, targets, generator=g, dtype=F64) + 0.1
    return X, y, w


def weighted_means(X: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    return (w[:, None] * X).sum(0) / w.sum(), (w * y).sum() / w.sum()


def ridge_closed_form(X: Tensor, y: Tensor, w: Tensor, alpha: float, intercept: bool = True):
    """(Xc^T W Xc + αI)^{-1} Xc^T W yc on weighted-centred data, one target."""
    if intercept:
        xm, ym = weighted_means(X, y, w)
        Xc, yc = X - xm, y - ym
    else:
        Xc, yc = X, y
    A = Xc.t() @ (w[:, None] * Xc) + alpha * torch.eye(X.shape[1], dtype=F64)
    beta = torch.linalg.solve(A, Xc.t() @ (w * yc))
    b = (ym - xm @ beta) if intercept else torch.zeros((), dtype=F64)
    return beta, b


# --- LinearRegression -----------------------------------------------------------------------------


def test_noise_free_linear_data_is_recovered_exactly() -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(25, 5, generator=g, dtype=F64)
    beta = torch.randn(5, generator=g, dtype=F64)
    y = X @ beta - 3.5
    w = torch.rand(25, generator=g, dtype=F64) + 0.01
    for weights in (None, w):
        coef, intercept = LinearRegression().fit(X, y, weights)
        assert coef.shape == (1, 5) and intercept.shape == (1,)
        assert coef.dtype == intercept.dtype == F64
        assert torch.allclose(coef[0], beta, rtol=0, atol=1e-12)
        assert intercept.item() == pytest.approx(-3.5, abs=1e-12)


def test_weighted_least_squares_solves_the_normal_equations() -> None:
    X, y, w = data(targets=1)
    y, w = y[:, 0], w[:, 0]
    coef, intercept = LinearRegression().fit(X, y, w)
    A = torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1)
    sol = torch.linalg.solve(A.t() @ (w[:, None] * A), A.t() @ (w * y))
    assert torch.allclose(coef[0], sol[:-1], rtol=0, atol=1e-12)
    assert intercept.item() == pytest.approx(sol[-1].item(), abs=1e-12)
    # the weighted residual is orthogonal to every column (and to the constant)
    r = y - X @ coef[0] - intercept
    assert torch.allclose(A.t() @ (w * r), torch.zeros(5, dtype=F64), atol=1e-10)


def test_linear_regression_without_intercept() -> None:
    X, y, w = data(targets=1)
    y, w = y[:, 0] + 10.0, w[:, 0]
    coef, intercept = LinearRegression(fit_intercept=False).fit(X, y, w)
    sol = torch.linalg.solve(X.t() @ (w[:, None] * X), X.t() @ (w * y))
    assert torch.allclose(coef[0], sol, rtol=0, atol=1e-12)
    assert torch.equal(intercept, torch.zeros(1, dtype=F64))
    with_intercept, _ = LinearRegression().fit(X, y, w)
    assert not torch.allclose(coef, with_intercept, atol=1e-3)


def test_under_determined_gives_the_minimum_norm_solution() -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(5, 12, generator=g, dtype=F64)
    y = torch.randn(5, generator=g, dtype=F64)
    w = torch.rand(5, generator=g, dtype=F64) + 0.5
    for fit_intercept in (True, False):
        coef, intercept = LinearRegression(fit_intercept=fit_intercept).fit(X, y, w)
        beta = coef[0]
        # interpolates the data ...
        assert torch.allclose(X @ beta + intercept, y, rtol=0, atol=1e-10)
        # ... with no component in the null space of the (centred) design: the minimum norm
        Xc = X - weighted_means(X, y, w)[0] if fit_intercept else X
        _, sv, Vh = torch.linalg.svd(Xc, full_matrices=True)
        rank = int((sv > 1e-9 * sv[0]).sum())
        assert rank == (4 if fit_intercept else 5)  # centring removes one direction
        null = Vh[rank:]
        assert torch.allclose(Xc @ null.t(), torch.zeros(5, len(null), dtype=F64), atol=1e-10)
        assert torch.allclose(null @ beta, torch.zeros(len(null), dtype=F64), atol=1e-10)


def test_zero_weights_drop_samples_and_integer_weights_duplicate_them() -> None:
    X, y, _ = data(n=12, targets=1)
    y = y[:, 0]
    w = torch.tensor([0, 1, 2, 1, 0, 3, 1, 1, 2, 1, 1, 1], dtype=F64)
    keep = torch.repeat_interleave(torch.arange(12), w.long())
    for model in (LinearRegression(), Ridge(alpha=0.7), Lasso(alpha=0.05)):
        weighted = model.fit(X, y, w)
        repeated = model.fit(X[keep], y[keep])
        for a, b in zip(weighted, repeated):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), type(model).__name__


def test_weight_scale() -> None:
    """Scaling every weight by c: no change for least squares or the (normalized) lasso; for
    ridge the same as dividing alpha by c."""
    X, y, w = data(targets=1)
    y, w = y[:, 0], w[:, 0]
    for model in (LinearRegression(), Lasso(alpha=0.1)):
        a, b = model.fit(X, y, w), model.fit(X, y, 7.0 * w)
        assert torch.allclose(a[0], b[0], atol=1e-9) and torch.allclose(a[1], b[1], atol=1e-9)
    a, b = Ridge(alpha=3.5).fit(X, y, 7.0 * w), Ridge(alpha=0.5).fit(X, y, w)
    assert torch.allclose(a[0], b[0], atol=1e-12) and torch.allclose(a[1], b[1], atol=1e-12)


# --- Ridge -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 5.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_closed_form(alpha: float, fit_intercept: bool) -> None:
    X, y, w = data(targets=1, seed=3)
    y, w = y[:, 0] + 2.0, w[:, 0]
    coef, intercept = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(X, y, w)
    beta, b = ridge_closed_form(X, y, w, alpha, fit_intercept)
    assert torch.allclose(coef[0], beta, rtol=0, atol=1e-12)
    assert intercept.item() == pytest.approx(b.item(), abs=1e-12)


def test_ridge_without_penalty_is_least_squares_and_shrinks_with_alpha() -> None:
    X, y, w = data(targets=1, seed=4)
    y, w = y[:, 0], w[:, 0]
    ls, _ = LinearRegression().fit(X, y, w)
    r0, _ = Ridge(alpha=0.0).fit(X, y, w)
    assert torch.allclose(ls, r0, rtol=0, atol=1e-12)
    norms = [Ridge(alpha=a).fit(X, y, w)[0].norm().item() for a in (0.1, 1.0, 10.0, 100.0)]
    assert all(b < a for a, b in itertools.pairwise(norms))


def test_ridge_under_determined() -> None:
    g = torch.Generator().manual_seed(5)
    X, y = torch.randn(4, 9, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    w = torch.rand(4, generator=g, dtype=F64) + 0.5
    coef, intercept = Ridge(alpha=0.2).fit(X, y, w)
    beta, b = ridge_closed_form(X, y, w, 0.2)
    assert torch.allclose(coef[0], beta, rtol=0, atol=1e-10)
    assert intercept.item() == pytest.approx(b.item(), abs=1e-10)


# --- Lasso -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.01, 0.2, 0.6])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lasso_satisfies_the_optimality_conditions(alpha: float, fit_intercept: bool) -> None:
    """min (1 / (2 Σw)) Σ w r² + α |β|₁: the subgradient of the loss is -α sign(β_j) where
    β_j ≠ 0 and at most α in size where β_j = 0."""
    X, y, w = data(n=50, f=6, targets=1, seed=6)
    y, w = y[:, 0] + 1.0, w[:, 0]
    coef, intercept = Lasso(alpha=alpha, fit_intercept=fit_intercept).fit(X, y, w)
    beta = coef[0]
    r = y - X @ beta - intercept
    if fit_intercept:
        assert (w * r).sum().item() == pytest.approx(0.0, abs=1e-9)  # intercept optimal
    grad = -(X.t() @ (w * r)) / w.sum()
    active = beta != 0
    assert torch.allclose(grad[active], -alpha * beta[active].sign(), rtol=0, atol=1e-7)
    assert bool((grad[~active].abs() <= alpha + 1e-7).all())
    if alpha == 0.6:
        assert bool((~active).any()) and bool(active.any())  # a genuinely sparse solution


def test_lasso_without_penalty_is_least_squares_and_a_large_penalty_is_zero() -> None:
    X, y, w = data(targets=1, seed=7)
    y, w = y[:, 0], w[:, 0]
    ls = LinearRegression().fit(X, y, w)
    l0 = Lasso(alpha=0.0).fit(X, y, w)
    assert torch.allclose(ls[0], l0[0], rtol=0, atol=1e-8)
    big, b = Lasso(alpha=1e3).fit(X, y, w)
    assert torch.equal(big, torch.zeros_like(big))
    assert b.item() == pytest.approx(weighted_means(X, y, w)[1].item(), abs=1e-12)


def test_lasso_converges_quietly_on_lime_designs_and_warns_when_it_cannot() -> None:
    g = torch.Generator().manual_seed(11)
    X = (torch.rand(50, 20, generator=g) < 0.5).double()
    y = X @ torch.randn(20, 3, generator=g, dtype=F64)
    w = torch.rand(50, 3, generator=g, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Lasso(alpha=1e-4).fit(X, y, w)
    with pytest.warns(UserWarning, match="did not converge"):
        Lasso(alpha=1e-4, max_iter=20).fit(X, y, w)


# --- batching, shapes, errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [LinearRegression(), LinearRegression(False), Ridge(0.4), Lasso(0.05)], ids=repr
)
def test_batched_targets_equal_column_by_column_fits(model: InterpretableModel) -> None:
    X, y, w = data(n=30, f=5, targets=4, seed=8)
    coef, intercept = model.fit(X, y, w)
    assert coef.shape == (4, 5) and intercept.shape == (4,)
    # an iterative solver stops for all targets together: equal to within its tolerance
    atol = 1e-8 if isinstance(model, Lasso) else 1e-12
    for t in range(4):
        c, b = model.fit(X, y[:, t], w[:, t])
        assert torch.allclose(coef[t], c[0], rtol=0, atol=atol)
        assert torch.allclose(intercept[t], b[0], rtol=0, atol=atol)
    # one weight vector shared by every target
    shared, _ = model.fit(X, y, w[:, 0])
    assert torch.allclose(shared[2], model.fit(X, y[:, 2], w[:, 0])[0][0], rtol=0, atol=atol)


def test_float32_inputs_give_float64_results() -> None:
    X, y, w = data()
    coef, intercept = LinearRegression().fit(X.float(), y.float(), w.float())
    assert coef.dtype == intercept.dtype == F64
    ref, _ = LinearRegression().fit(X.float().double(), y.float().double(), w.float().double())
    assert torch.allclose(coef, ref, atol=1e-12)


@pytest.mark.parametrize("model", [LinearRegression(), Ridge(), Lasso()], ids=repr)
def test_negative_weights_are_rejected(model: InterpretableModel) -> None:
    X, y, w = data()
    w[3] = -0.1
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(X, y, w)


def test_other_errors() -> None:
    X, y, _ = data()
    with pytest.raises(ValueError, match="samples"):
        LinearRegression().fit(X, y[:-1])
    for cls in (Ridge, Lasso):
        with pytest.raises(ValueError, match="alpha"):
            cls(alpha=-1.0)
    with pytest.raises(NotImplementedError):
        InterpretableModel().fit(X, y)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 12),
    f=st.integers(1, 8),
    alpha=st.floats(0.01, 10.0),
    seed=st.integers(0, 10_000),
)
def test_ridge_matches_closed_form_for_any_shape(n: int, f: int, alpha: float, seed: int) -> None:
    X, y, w = data(n=n, f=f, targets=1, seed=seed)
    coef, intercept = Ridge(alpha=alpha).fit(X, y, w)
    beta, b = ridge_closed_form(X, y[:, 0], w[:, 0], alpha)
    assert torch.allclose(coef[0], beta, rtol=1e-9, atol=1e-9)
    assert torch.allclose(intercept[0], b, rtol=1e-9, atol=1e-9)


# --- scikit-learn as an independent reference ---------------------------------------------------


def sk_models(name: str, alpha: float, fit_intercept: bool):
    linear_model = pytest.importorskip("sklearn.linear_model")
    if name == "linear":
        return LinearRegression(fit_intercept), linear_model.LinearRegression(
            fit_intercept=fit_intercept
        )
    if name == "ridge":
        return Ridge(alpha, fit_intercept), linear_model.Ridge(
            alpha=alpha, fit_intercept=fit_intercept, solver="cholesky"
        )
    return Lasso(alpha, fit_intercept), linear_model.Lasso(
        alpha=alpha, fit_intercept=fit_intercept, tol=1e-14, max_iter=200_000
    )


@pytest.mark.parametrize(
    ("name", "alpha"),
    [("linear", 0.0), ("ridge", 0.5), ("ridge", 20.0), ("lasso", 0.01), ("lasso", 0.3)],
)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn_with_sample_weight(name: str, alpha: float, fit_intercept: bool) -> None:
    ours, theirs = sk_models(name, alpha, fit_intercept)
    X, y, w = data(n=40, f=5, targets=3, seed=9)
    y = y + 1.5
    coef, intercept = ours.fit(X, y, w)
    for t in range(3):
        theirs.fit(X.numpy(), y[:, t].numpy(), sample_weight=w[:, t].numpy())
        ref_coef = torch.as_tensor(theirs.coef_, dtype=F64).reshape(-1)
        assert torch.allclose(coef[t], ref_coef, rtol=0, atol=1e-6)
        assert intercept[t].item() == pytest.approx(float(theirs.intercept_), abs=1e-6)


def test_under_determined_matches_sklearn() -> None:
    ours, theirs = sk_models("linear", 0.0, True)
    g = torch.Generator().manual_seed(10)
    X, y = torch.randn(6, 15, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    w = torch.rand(6, generator=g, dtype=F64) + 0.2
    coef, intercept = ours.fit(X, y, w)
    theirs.fit(X.numpy(), y.numpy(), sample_weight=w.numpy())
    assert torch.allclose(coef[0], torch.as_tensor(theirs.coef_, dtype=F64), rtol=0, atol=1e-6)
    assert intercept.item() == pytest.approx(float(theirs.intercept_), abs=1e-6)


# --- Captum-style trainable models (llmattr.attr.linear_models) -----------------------------------


def batches(n: int = 30, f: int = 3, seed: int = 0):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, f, generator=g)
    y = x @ torch.tensor([2.0, -1.0, 0.5])[:f] + 1.0
    return DataLoader(TensorDataset(x, y, torch.ones(n)), batch_size=10), x, y


def test_linear_model_construction_errors_and_unfitted_use() -> None:
    from llmattr.attr import SGDLinearRegression

    m = SGDLinearRegression()
    with pytest.raises(RuntimeError, match="not fitted"):
        m.representation()
    assert m.bias() is None and m.classes() is None
    with pytest.raises(ValueError, match="norm_type"):
        m._construct_model_params(in_features=2, out_features=1, norm_type="group_norm")
    with pytest.raises(ValueError, match="in_features"):
        m._construct_model_params(in_features=2)
    with pytest.raises(ValueError, match="bias"):
        m._construct_model_params(weight_values=torch.ones(3), bias=False, bias_value=torch.ones(1))
    m._construct_model_params(weight_values=torch.ones(3))
    assert m.representation().shape == (1, 3)


def test_sgd_linear_regression_learns_a_line_over_several_batches() -> None:
    from llmattr.attr import SGDLinearRegression

    data, x, y = batches()
    m = SGDLinearRegression(norm_type="layer_norm")
    stats = m.fit(data, max_epoch=3, initial_lr=0.1)
    assert set(stats) == {"train_time", "train_loss", "train_iter", "train_epoch"}
    assert stats["train_iter"] <= 3 * len(data)
    assert isinstance(m.norm, torch.nn.LayerNorm)
    m = SGDLinearRegression()
    m.fit(data, max_epoch=400, initial_lr=0.5, patience=50, threshold=1e-7)
    with torch.no_grad():
        assert (m(x).reshape(-1) - y).abs().max() < 0.05


@pytest.mark.parametrize("norm_input", [False, True])
def test_sklearn_models_copy_the_estimator(norm_input: bool) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    from llmattr.attr import SkLearnLinearModel, SkLearnRidge

    data, x, y = batches()
    m = SkLearnRidge(alpha=0.1)
    m.fit(data, norm_input=norm_input)
    xs = ((x - x.mean(0)) / torch.from_numpy(x.numpy().std(0))) if norm_input else x
    ref = linear_model.Ridge(alpha=0.1).fit(
        xs.numpy(), y.numpy(), sample_weight=torch.ones(30).numpy()
    )
    assert torch.allclose(m.representation()[0], torch.as_tensor(ref.coef_), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(m(x).reshape(-1), torch.as_tensor(ref.predict(xs.numpy())), atol=1e-4)
    clf = SkLearnLinearModel("linear_model.LogisticRegression")
    clf.fit([(x, (y > y.median()).long())])
    assert clf.classes().tolist() == [0, 1] and clf.representation().shape == (1, 3)
