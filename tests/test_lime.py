"""Lime: exact recovery of linear models, the default similarity kernel and sampler checked against
a hand-made weighted fit, regularization, every user hook (similarity, sampler, both transforms),
reproducibility, batching, multi-output and aggregate forwards, errors."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from conftest import MLP
from torch import Tensor

from llmattr import Lasso, Lime, LinearRegression, Ridge, exp_kernel_similarity

F64 = torch.float64


def linear(w: Tensor, c: float = 0.7):
    def f(x: Tensor) -> Tensor:
        return x @ w + c

    return f


def group_coefficients(w: Tensor, x: Tensor, b: Tensor, mask: Tensor, n: int) -> Tensor:
    """Σ_{i in group g} w_i (x_i - b_i): a linear model's exact coefficient of feature g."""
    contrib = w * (x - b)
    return torch.stack([contrib[:, mask[0] == g].sum(1) for g in range(n)], 1)


def weighted_fit(Z: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """Weighted least squares with an intercept, by lstsq on the augmented, √w-scaled system."""
    A = torch.cat([Z.double(), torch.ones(Z.shape[0], 1, dtype=F64)], 1)
    r = weights.double().sqrt()[:, None]
    return torch.linalg.lstsq(r * A, r * y.double()[:, None]).solution[:-1, 0]


# --- exact recovery of linear models --------------------------------------------------------------


def test_linear_regression_recovers_a_linear_model_per_element() -> None:
    w = torch.randn(5, dtype=F64)
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    lime = Lime(linear(w), interpretable_model=LinearRegression())
    attr = lime.attribute(x, b, n_samples=40, generator=0)
    assert attr.shape == x.shape and attr.dtype == F64
    assert torch.allclose(attr, w * (x - b), rtol=0, atol=1e-10)
    flat = lime.attribute(x, b, n_samples=40, generator=0, return_input_shape=False)
    assert flat.shape == (3, 5)
    assert torch.allclose(flat, w * (x - b), rtol=0, atol=1e-10)


def test_linear_regression_recovers_grouped_features() -> None:
    w = torch.randn(6, dtype=F64)
    x, b = torch.randn(2, 6, dtype=F64), torch.randn(2, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 2, 2, 2]])
    expected = group_coefficients(w, x, b, mask, 3)
    lime = Lime(linear(w), interpretable_model=LinearRegression())
    flat = lime.attribute(x, b, feature_mask=mask, n_samples=30, generator=1,
                          return_input_shape=False)  # fmt: skip
    assert flat.shape == (2, 3)
    assert torch.allclose(flat, expected, rtol=0, atol=1e-10)
    attr = lime.attribute(x, b, feature_mask=mask, n_samples=30, generator=1)
    assert torch.allclose(attr, expected[:, mask[0]], rtol=0, atol=1e-10)


def test_linear_regression_recovers_two_inputs_with_a_shared_feature() -> None:
    w1, w2 = torch.randn(4, dtype=F64), torch.randn(2, 3, dtype=F64)

    def f(u: Tensor, v: Tensor, scale: Tensor) -> Tensor:
        return (u @ w1 + (v * w2).sum((1, 2))) * scale

    x1, x2 = torch.randn(2, 4, dtype=F64), torch.randn(2, 2, 3, dtype=F64)
    m1 = torch.tensor([[0, 1, 1, 2]])
    m2 = torch.tensor([[[2, 3, 3], [4, 4, 0]]])  # features 0 and 2 span both inputs
    scale = torch.tensor([2.0, -0.5], dtype=F64)
    lime = Lime(f, interpretable_model=LinearRegression())
    a1, a2 = lime.attribute(
        (x1, x2), additional_forward_args=(scale,), feature_mask=(m1, m2), n_samples=60, generator=2
    )
    c1, c2 = w1 * x1 * scale[:, None], w2 * x2 * scale[:, None, None]
    expected = torch.stack(
        [c1[:, m1[0] == g].sum(1) + c2[:, m2[0] == g].sum(1) for g in range(5)], 1
    )
    assert torch.allclose(a1, expected[:, m1[0]], rtol=0, atol=1e-10)
    assert torch.allclose(a2, expected[:, m2[0]], rtol=0, atol=1e-10)


def test_multi_output_forward() -> None:
    W = torch.randn(5, 3, dtype=F64)
    x, b = torch.randn(2, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    lime = Lime(lambda z: z @ W, interpretable_model=LinearRegression())
    attr = lime.attribute(x, b, n_samples=40, generator=0)
    assert attr.shape == (2, 3, 5)
    expected = W.t()[None] * (x - b)[:, None]
    assert torch.allclose(attr, expected, rtol=0, atol=1e-10)
    mask = torch.tensor([[0, 1, 1, 0, 2]])
    flat = lime.attribute(x, b, feature_mask=mask, n_samples=40, generator=0,
                          return_input_shape=False)  # fmt: skip
    assert flat.shape == (2, 3, 3)
    for t in range(3):
        exp_t = group_coefficients(W[:, t], x, b, mask, 3)
        assert torch.allclose(flat[:, t], exp_t, rtol=0, atol=1e-10)


def test_multi_output_columns_match_single_targets_on_a_nonlinear_model() -> None:
    """Each (example, output) column is its own weighted fit: the multi-output result's
    column t equals explaining target t alone."""
    model = MLP(n_in=5, n_out=3).double()
    x = torch.randn(2, 5, dtype=F64)
    lime = Lime(model)  # default Lasso and kernel
    attr = lime.attribute(x, n_samples=30, generator=3)
    for t in range(3):
        single = lime.attribute(x, target=t, n_samples=30, generator=3)
        assert torch.allclose(attr[:, t], single, rtol=0, atol=1e-9)


def test_aggregate_output() -> None:
    w = torch.randn(4, dtype=F64)
    x = torch.randn(3, 4, dtype=F64)
    lime = Lime(lambda z: (z @ w).sum(), interpretable_model=LinearRegression())
    attr = lime.attribute(x, n_samples=30, generator=0)
    assert attr.shape == (1, 4)
    assert torch.allclose(attr[0], (w * x).sum(0), rtol=0, atol=1e-10)


def test_per_example_masks() -> None:
    w = torch.randn(4, dtype=F64)
    x = torch.randn(2, 4, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]])
    lime = Lime(linear(w), interpretable_model=LinearRegression())
    flat = lime.attribute(x, feature_mask=mask, n_samples=30, generator=0,
                          return_input_shape=False)  # fmt: skip
    c = w * x
    expected = torch.stack(
        [torch.stack([c[e, mask[e] == g].sum() for g in range(2)]) for e in range(2)]
    )
    assert torch.allclose(flat, expected, rtol=0, atol=1e-10)


# --- regularization ---------------------------------------------------------------------------


def test_ridge_and_lasso_shrink_monotonically_in_alpha() -> None:
    w = torch.tensor([1.5, -2.0, 0.5, 3.0], dtype=F64)
    x = torch.tensor([[1.0, 1.0, -1.0, 0.5]], dtype=F64)
    exact = w * x

    def coefs(model: Any) -> Tensor:
        return Lime(linear(w), interpretable_model=model).attribute(
            x, n_samples=50, generator=4, return_input_shape=False
        )[0]

    ridge = [coefs(Ridge(alpha=a)).norm().item() for a in (0.01, 0.1, 1.0, 10.0, 100.0)]
    lasso = [coefs(Lasso(alpha=a)).abs().sum().item() for a in (0.001, 0.01, 0.1, 0.3, 0.6)]
    for path in (ridge, lasso):
        assert all(later < earlier for earlier, later in itertools.pairwise(path))
        assert path[0] > 0.95 * exact.norm(p=2 if path is ridge else 1).item()
        assert path[-1] < 0.5 * exact.norm(p=2 if path is ridge else 1).item()
    # no penalty: the exact coefficients
    assert torch.allclose(coefs(Ridge(alpha=0.0)), exact, rtol=0, atol=1e-9)
    assert torch.allclose(coefs(Lasso(alpha=0.0)), exact, rtol=0, atol=1e-6)
    # a large L1 penalty zeroes everything
    assert torch.equal(coefs(Lasso(alpha=100.0)), torch.zeros(4, dtype=F64))


# --- the similarity kernel --------------------------------------------------------------------


def test_exp_kernel_similarity_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype=F64)
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, -1.0]], dtype=F64)
    for width in (1.0, 0.3):
        sim = exp_kernel_similarity("cosine", width)(a, p, None)
        euc = exp_kernel_similarity("euclidean", width)(a, p, None)
        for e in range(2):
            u, v = a[e].tolist(), p[e].tolist()
            dot = sum(i * j for i, j in zip(u, v))
            cos = dot / math.sqrt(sum(i * i for i in u) * sum(j * j for j in v))
            dist = math.sqrt(sum((i - j) ** 2 for i, j in zip(u, v)))
            assert sim[e].item() == pytest.approx(math.exp(-((1 - cos) ** 2) / (2 * width**2)))
            assert euc[e].item() == pytest.approx(math.exp(-(dist**2) / (2 * width**2)))
    # tuples: the inputs of one example are compared as one concatenated vector
    two = exp_kernel_similarity("euclidean", 2.0)((a, a[:, :1] + 1), (p, a[:, :1]), None)
    d2 = ((a - p) ** 2).sum(1) + 1.0
    assert torch.allclose(two, torch.exp(-d2 / 8), rtol=0, atol=1e-14)
    assert torch.allclose(exp_kernel_similarity()(a, a), torch.ones(2, dtype=F64), atol=1e-14)
    with pytest.raises(ValueError, match="distance_mode"):
        exp_kernel_similarity("manhattan")


def per_example(seen: list[Tensor], batch: int, n: int, ppe: int) -> list[Tensor]:
    """The samples each example was evaluated on: as Captum, examples are explained one after
    the other (after the batch's own forward, each starts with its unperturbed forward)."""
    calls = seen[1:]
    per = 1 + math.ceil(n / ppe)
    assert len(calls) == batch * per
    return [torch.cat(calls[e * per + 1 : (e + 1) * per]) for e in range(batch)]


def all_at_once(seen: list[Tensor], batch: int, n: int, ppe: int) -> list[Tensor]:
    """The samples each example was evaluated on when Lime's fast path evaluates every
    example's samples together: after the batch's own forward, ``ppe`` samples of every
    example per forward (rows ``sample * batch + example``)."""
    calls = seen[1:]
    assert len(calls) == math.ceil(n / ppe)
    rows = torch.cat(calls).reshape(n, batch, *calls[0].shape[1:])
    return list(rows.unbind(1))


def recording(model: Any) -> tuple[Any, list[Tensor]]:
    seen: list[Tensor] = []

    def f(z: Tensor) -> Tensor:
        seen.append(z.detach().clone())
        return model(z)

    return f, seen


@pytest.mark.parametrize("mode", ["cosine", "euclidean"])
@pytest.mark.parametrize("ppe", [1, 4])
def test_default_sampler_and_kernel_match_a_hand_made_weighted_fit(mode: str, ppe: int) -> None:
    """Recover the samples from the inputs the model saw, weight them with the kernel computed
    by hand, fit by weighted least squares: Lime must give the same coefficients."""
    model = MLP(n_in=4, n_out=2).double()
    f, seen = recording(lambda z: model(z)[:, 0])
    x = torch.rand(2, 4, dtype=F64) + 1.0
    b = -torch.rand(1, 4, dtype=F64)  # differs from x everywhere: samples are recoverable
    # cosine: Lime's default similarity (width 1); euclidean: a chosen width
    width = 1.0 if mode == "cosine" else 0.8
    lime = Lime(
        f,
        interpretable_model=LinearRegression(),
        similarity_func=exp_kernel_similarity(mode, width) if mode == "euclidean" else None,
    )
    n = 25
    attr = lime.attribute(x, b, n_samples=n, perturbations_per_eval=ppe, generator=5,
                          return_input_shape=False)  # fmt: skip
    # the default pieces take the fast path: all examples' samples evaluated together
    perturbed = torch.stack(all_at_once(seen, 2, n, ppe), 1)  # (n, batch, 4)
    Z = perturbed == x
    # as Captum: each example its own samples, Bernoulli(1/2) drawn example after example
    drawn = torch.bernoulli(torch.full((2 * n, 4), 0.5), generator=torch.Generator().manual_seed(5))
    assert torch.equal(Z.transpose(0, 1), drawn.reshape(2, n, 4).bool())
    assert torch.equal(perturbed, torch.where(Z, x, b.expand_as(x)))
    assert 0.2 < Z.double().mean().item() < 0.8  # features present with probability 1/2
    for e in range(2):
        p = perturbed[:, e]
        if mode == "cosine":
            d = 1 - (p @ x[e]) / (p.norm(dim=1) * x[e].norm())
        else:
            d = (p - x[e]).norm(dim=1)
        weights = torch.exp(-(d**2) / (2 * width**2))
        with torch.no_grad():
            y = model(p)[:, 0]
        expected = weighted_fit(Z[:, e], y, weights)
        assert torch.allclose(attr[e], expected, rtol=0, atol=1e-9)
        # the weights matter: the unweighted fit differs
        assert not torch.allclose(attr[e], weighted_fit(Z[:, e], y, torch.ones(n)), atol=1e-6)


# --- user hooks -------------------------------------------------------------------------------


def test_custom_similarity_func_is_used_with_captum_arguments() -> None:
    model = MLP(n_in=4, n_out=1).double()
    f, seen = recording(lambda z: model(z)[:, 0])
    x = torch.rand(1, 4, dtype=F64) + 1.0
    calls: list[dict[str, Any]] = []

    def similarity(original: Tensor, perturbed: Tensor, interp: Tensor, **kwargs: Any) -> float:
        calls.append({"original": original, "perturbed": perturbed, "interp": interp, **kwargs})
        return 1.0 + interp.sum().item() + (1 - interp).sum().item() * 0.5  # arithmetic on it

    lime = Lime(f, interpretable_model=LinearRegression(), similarity_func=similarity)
    n = 20
    attr = lime.attribute(x, n_samples=n, generator=0, return_input_shape=False)
    assert len(calls) == n
    Z = torch.cat([c["interp"] for c in calls])
    assert Z.shape == (n, 4)
    for c in calls:
        assert torch.equal(c["original"], x)
        assert torch.equal(c["perturbed"], x * c["interp"])  # baseline 0 where absent
        assert c["num_interp_features"] == 4
    # it was shown exactly the inputs the model was evaluated on
    assert torch.equal(torch.cat(seen[1:]), torch.cat([c["perturbed"] for c in calls]))
    weights = 1.0 + Z.sum(1) + (1 - Z).sum(1) * 0.5
    with torch.no_grad():
        y = model(torch.cat(seen[1:]))[:, 0]
    assert torch.allclose(attr[0], weighted_fit(Z, y, weights), rtol=0, atol=1e-9)


def test_zero_similarity_removes_samples() -> None:
    """Samples weighted 0 do not count: a model that is linear only where feature 0 is present
    is recovered exactly when the other samples get weight 0."""
    w = torch.tensor([1.0, 2.0, -1.0], dtype=F64)

    def f(z: Tensor) -> Tensor:
        return torch.where(z[:, 0] != 0, z @ w, torch.full_like(z[:, 0], 100.0) * z[:, 1] ** 2)

    def keep_feature_0(original: Tensor, perturbed: Tensor, interp: Tensor, **kw: Any) -> float:
        return float(interp[0, 0] != 0)

    x = torch.ones(1, 3, dtype=F64)
    lime = Lime(f, interpretable_model=LinearRegression(), similarity_func=keep_feature_0)
    attr = lime.attribute(x, n_samples=40, generator=1, return_input_shape=False)
    # feature 0 is constant among the kept samples: its coefficient is the min-norm 0
    assert torch.allclose(attr[0], torch.tensor([0.0, 2.0, -1.0], dtype=F64), rtol=0, atol=1e-10)


def test_custom_perturb_func_gets_kwargs_and_its_samples_are_used() -> None:
    w = torch.randn(5, dtype=F64)
    x, b = torch.randn(2, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    mask = torch.tensor([[0, 1, 1, 2, 3]])
    calls: list[dict[str, Any]] = []

    def perturb(original: Tensor, **kwargs: Any) -> Tensor:
        calls.append(kwargs)
        n = kwargs["num_interp_features"]
        return (torch.rand(1, n, generator=kwargs["generator"]) < 0.8).double()

    f, seen = recording(linear(w))
    lime = Lime(f, interpretable_model=LinearRegression(), perturb_func=perturb)
    attr = lime.attribute(x, b, feature_mask=mask, n_samples=30, generator=3,
                          return_input_shape=False)  # fmt: skip
    assert len(calls) == 60  # as Captum: n_samples per example
    for kw in calls:
        assert kw["num_interp_features"] == 4
        assert isinstance(kw["generator"], torch.Generator)
        assert torch.equal(kw["feature_mask"], mask) and torch.equal(kw["baselines"], b)
    assert torch.allclose(attr, group_coefficients(w, x, b, mask, 4), rtol=0, atol=1e-10)
    # the samples the model saw are the perturb_func's (present with probability 0.8)
    perturbed = torch.stack(per_example(seen, 2, 30, 1), 1)
    assert (perturbed == x).double().mean().item() > 0.65
    # reproducible through the generator it was handed
    again = lime.attribute(x, b, feature_mask=mask, n_samples=30, generator=3,
                           return_input_shape=False)  # fmt: skip
    assert torch.equal(attr, again)
    half = len(seen) // 2
    assert torch.equal(torch.cat(seen[:half]), torch.cat(seen[half:]))


def test_from_interp_rep_transform_builds_the_model_inputs() -> None:
    w = torch.randn(4, dtype=F64)
    x = torch.randn(2, 4, dtype=F64)
    calls: list[Tensor] = []

    def from_interp(sample: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
        calls.append(sample)
        assert kwargs["num_interp_features"] == 4
        return torch.where(sample.bool(), original, torch.full_like(original, 2.0))

    lime = Lime(linear(w), interpretable_model=LinearRegression(),
                from_interp_rep_transform=from_interp)  # fmt: skip
    attr = lime.attribute(x, n_samples=30, generator=0, perturbations_per_eval=4)
    assert len(calls) == 60 and all(c.shape == (1, 4) for c in calls)  # 30 per example
    # absent features took the transform's value 2, not the (zero) baseline
    assert torch.allclose(attr, w * (x - 2.0), rtol=0, atol=1e-10)


def test_non_binary_samples_are_fitted_as_given() -> None:
    """Captum fits the surrogate on the sampler's values: with fractional samples s and a
    transform building b + s (x - b), a linear model is still recovered exactly."""
    w = torch.randn(4, dtype=F64)
    x, b = torch.randn(2, 4, dtype=F64), torch.randn(1, 4, dtype=F64)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)

    def perturb(original: Tensor, **kwargs: Any) -> Tensor:
        idx = torch.randint(0, 4, (1, kwargs["num_interp_features"]), generator=kwargs["generator"])
        return levels[idx]

    seen: list[Tensor] = []

    def from_interp(sample: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
        seen.append(sample)
        return kwargs["baselines"] + sample * (original - kwargs["baselines"])

    lime = Lime(linear(w), interpretable_model=LinearRegression(), perturb_func=perturb,
                from_interp_rep_transform=from_interp)  # fmt: skip
    attr = lime.attribute(x, b, n_samples=30, generator=0, perturbations_per_eval=8)
    assert torch.allclose(attr, w * (x - b), rtol=0, atol=1e-10)
    samples = torch.cat(seen)
    assert samples.dtype == F64 and bool(((samples > 0) & (samples < 1)).any())


def test_samples_must_have_one_entry_per_feature() -> None:
    lime = Lime(lambda z: z.sum(1), perturb_func=lambda o, **k: torch.ones(1, 5))
    with pytest.raises(ValueError, match="5 entries but there are 3 features"):
        lime.attribute(torch.ones(1, 3), n_samples=2)


def test_to_interp_rep_transform_samples_in_input_space() -> None:
    w = torch.randn(4, dtype=F64)
    x = torch.randn(1, 4, dtype=F64) + 3.0
    drawn: list[Tensor] = []
    mapped: list[Tensor] = []

    def perturb(original: Tensor, **kwargs: Any) -> Tensor:
        # input-space noise: each element either kept or replaced by a random value
        g = kwargs["generator"]
        keep = torch.rand(original.shape, generator=g) < 0.5
        noise = torch.rand(original.shape, generator=g, dtype=F64) - 5.0
        out = torch.where(keep, original, noise)
        drawn.append(out)
        return out

    def to_interp(perturbed: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
        mapped.append(perturbed)
        return (perturbed == original).double()

    f, seen = recording(linear(w))
    lime = Lime(f, interpretable_model=LinearRegression(), perturb_func=perturb,
                to_interp_rep_transform=to_interp)  # fmt: skip
    n = 40
    attr = lime.attribute(x, n_samples=n, generator=1, return_input_shape=False)
    assert len(drawn) == len(mapped) == n
    assert all(m is d for m, d in zip(mapped, drawn))
    # the model saw the drawn inputs themselves
    assert torch.equal(torch.cat(seen[1:]), torch.cat(drawn))
    # the surrogate is fitted on the interpretable samples against those outputs
    Z = torch.cat(drawn) == x
    with torch.no_grad():
        y = torch.cat(drawn) @ w + 0.7
    sims = exp_kernel_similarity()(x.expand(n, 4), torch.cat(drawn))
    assert torch.allclose(attr[0], weighted_fit(Z, y, sims), rtol=0, atol=1e-9)


def test_to_interp_rep_transform_needs_a_perturb_func() -> None:
    with pytest.raises(ValueError, match="perturb_func"):
        Lime(lambda z: z.sum(1), to_interp_rep_transform=lambda p, o, **k: p)


def test_interpretable_model_needs_fit() -> None:
    with pytest.raises(TypeError, match="fit"):
        Lime(lambda z: z.sum(1), interpretable_model=object())  # type: ignore[arg-type]


def test_custom_interpretable_model_receives_samples_outputs_and_weights() -> None:
    got: dict[str, Tensor] = {}

    class Recorder:
        def fit(self, X: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
            got.update(X=X, y=y, w=w)
            return torch.arange(y.shape[1] * X.shape[1], dtype=F64).reshape(y.shape[1], -1), y[0]

    model = MLP(n_in=3, n_out=2).double()
    x = torch.randn(2, 3, dtype=F64)
    attr = Lime(model, interpretable_model=Recorder()).attribute(  # type: ignore[arg-type]
        x, n_samples=7, generator=0, return_input_shape=False
    )
    # fitted per example (the last one recorded), every output at once
    assert got["X"].shape == (7, 3) and set(got["X"].unique().tolist()) <= {0.0, 1.0}
    assert got["y"].shape == got["w"].shape == (7, 2)  # columns: the outputs
    perturbed = torch.where(got["X"].bool(), x[1], torch.zeros(1, 3, dtype=F64))
    with torch.no_grad():
        y = model(perturbed)
    assert torch.allclose(got["y"], y, rtol=0, atol=1e-12)
    assert torch.equal(got["w"][:, 0], got["w"][:, 1])  # one weight per sample, every output
    assert attr.shape == (2, 2, 3)
    assert torch.equal(attr[1], torch.arange(6, dtype=F64).reshape(2, 3))


# --- reproducibility and batching ---------------------------------------------------------------


def test_reproducible_with_seed() -> None:
    model = MLP(n_in=5, n_out=2).double()
    x = torch.randn(2, 5, dtype=F64)
    lime = Lime(model)
    a = lime.attribute(x, target=1, n_samples=20, generator=7)
    assert torch.equal(a, lime.attribute(x, target=1, n_samples=20, generator=7))
    assert torch.equal(
        a, lime.attribute(x, target=1, n_samples=20, generator=torch.Generator().manual_seed(7))
    )
    assert not torch.equal(a, lime.attribute(x, target=1, n_samples=20, generator=8))


@pytest.mark.parametrize("ppe", [2, 7, 100])
def test_independent_of_perturbations_per_eval(ppe: int) -> None:
    model = MLP(n_in=5, n_out=2).double()
    x = torch.randn(3, 5, dtype=F64)
    lime = Lime(model, interpretable_model=Ridge(alpha=0.1))
    one = lime.attribute(x, target=0, n_samples=20, generator=2)
    many = lime.attribute(x, target=0, n_samples=20, generator=2, perturbations_per_eval=ppe)
    assert torch.allclose(one, many, rtol=0, atol=1e-12)


def test_float32_model(dtype: torch.dtype) -> None:
    w = torch.randn(4, dtype=dtype)
    x = torch.randn(2, 4, dtype=dtype)
    attr = Lime(linear(w), interpretable_model=LinearRegression()).attribute(
        x, n_samples=30, generator=0
    )
    assert attr.dtype == dtype
    assert torch.allclose(attr.double(), (w * x).double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("bad", [0, -2])
def test_rejects_bad_n_samples(bad: int) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        Lime(lambda z: z.sum(1)).attribute(torch.ones(1, 3), n_samples=bad)


def test_warns_about_very_many_features_as_captum() -> None:
    class Zeros:
        def fit(self, X: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
            return torch.zeros(y.shape[1], X.shape[1], dtype=F64), torch.zeros(y.shape[1])

    lime = Lime(lambda z: z.sum(1), interpretable_model=Zeros())
    with pytest.warns(UserWarning, match="10001 features"):
        lime.attribute(torch.ones(1, 10001), n_samples=2)


@pytest.mark.parametrize("cls", ["Lime", "KernelShap"])
def test_fast_path_with_several_outputs_equals_example_by_example(cls: str) -> None:
    """Several outputs per example (an llmattr extension): Captum-style models are fitted once
    per output, and the fast path accounts for each fit's draws."""
    import llmattr.attr as attr_mod

    model = torch.nn.Linear(4, 3).double()
    x = torch.randn(3, 4, dtype=F64)
    results = []
    for fast in (True, False):
        explainer = getattr(attr_mod, cls)(model, attr_mod.SkLearnLinearRegression())
        if not fast:
            explainer._all_at_once = lambda run: False
            explainer._per_example = lambda run: False
        torch.manual_seed(3)
        out = explainer.attribute(x, n_samples=30)
        results.append((out, torch.rand(2)))
    assert results[0][0].shape == (3, 3, 4)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-9)
    assert torch.equal(results[0][1], results[1][1])
