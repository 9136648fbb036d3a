"""GradientShap: closed forms on linear and quadratic models, the joint baseline / alpha / noise
draws, reproducibility and batching, deltas, local attributions, callable baselines, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MLP, Linear, TwoLinear, rand, tol

from llmattr import GradientShap

F64 = torch.float64


def seed(n: int) -> None:
    """Seed both generators GradientShap draws from by default (as Captum does): numpy's for
    baseline rows and alphas, torch's for the noise."""
    np.random.seed(n)
    torch.manual_seed(n)


def quadratic(a: torch.Tensor):
    def f(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        out = (a * x**2).sum(1)
        return out if scale is None else out * scale

    return f


# --- closed forms ---------------------------------------------------------------------------------


def test_one_baseline_without_noise_is_exact_on_a_linear_model() -> None:
    model = Linear().to(F64)
    x, b = rand(3, 4), rand(1, 4)
    attr, delta = GradientShap(model).attribute(x, b, n_samples=7, return_convergence_delta=True)
    assert torch.allclose(attr, model.w.detach() * (x - b), rtol=0, atol=1e-12)
    assert delta.shape == (3 * 7,)
    assert delta.abs().max() < 1e-12


def test_attributions_average_the_drawn_baselines_jointly() -> None:
    """x - attr/w is the mean of n_samples rows drawn from the distribution; the rows are drawn
    jointly for every feature and every input (one baseline row per draw)."""
    model = TwoLinear(2, (2, 2)).to(F64)
    w1, w2 = model.w1.detach(), model.w2.detach()
    n_b, n_samples, batch = 4, 5, 6
    powers = 10.0 ** torch.arange(n_b, dtype=F64)  # decodable: counts < 10 per row
    b1 = torch.stack([powers, -3 * powers], 1)  # (n_b, 2)
    b2 = (7 * powers).reshape(n_b, 1, 1).expand(n_b, 2, 2).clone()  # (n_b, 2, 2)
    x1, x2 = rand(batch, 2), rand(batch, 2, 2)
    a1, a2 = GradientShap(model).attribute((x1, x2), (b1, b2), n_samples=n_samples)
    sum1 = (x1 - a1 / w1) * n_samples  # per example: sum of the drawn baseline rows
    sum2 = (x2 - a2 / w2) * n_samples
    all_counts = []
    for i in range(batch):
        total = round(float(sum1[i, 0]))
        assert abs(float(sum1[i, 0]) - total) < 1e-8
        counts = [(total // 10**j) % 10 for j in range(n_b)]
        assert sum(counts) == n_samples  # exactly n_samples draws, each one row
        all_counts.append(counts)
        # the same rows were used for the other feature and for the other input
        assert torch.allclose(sum1[i, 1], -3 * sum1[i, 0], rtol=0, atol=1e-8)
        assert torch.allclose(sum2[i], torch.full((2, 2), 7 * total, dtype=F64), atol=1e-8)
    assert len({tuple(c) for c in all_counts}) > 1  # random draws, not a fixed row
    assert all(c > 0 for c in torch.tensor(all_counts).sum(0).tolist())  # every row can be drawn


def test_expectation_over_baselines_converges_to_the_mean_baseline() -> None:
    model = Linear().to(F64)
    w = model.w.detach()
    x, dist = rand(2, 4), rand(5, 4)
    n = 4000
    attr = GradientShap(model).attribute(x, dist, n_samples=n)
    expected = w * (x - dist.mean(0))
    spread = (w.abs() * dist.std(0)).expand(2, 4) / n**0.5  # std of the sample mean
    assert ((attr - expected).abs() < 5 * spread).all()


def test_one_alpha_per_draw_shared_by_features_on_a_quadratic() -> None:
    """With b = 0, no noise and one draw: attr = ∂f/∂x(αx)·x = 2aαx², so attr/(2ax²) = α, the
    same for every feature; the delta is then sum(a x² (2α − 1))."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    x = rand(6, 3)
    attr, delta = GradientShap(quadratic(a)).attribute(
        x, torch.zeros(1, 3, dtype=F64), n_samples=1, return_convergence_delta=True
    )
    alpha = attr / (2 * a * x**2)
    assert torch.allclose(alpha, alpha[:, :1].expand(6, 3), rtol=0, atol=1e-10)
    alpha = alpha[:, 0]
    assert ((alpha > 0) & (alpha < 1)).all()
    assert alpha.std() > 0.05  # drawn, not a constant
    assert torch.allclose(delta, (a * x**2 * (2 * alpha[:, None] - 1)).sum(1), atol=1e-10)


def test_quadratic_expectation_over_alpha_is_the_integrated_gradient() -> None:
    a = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    x, b = rand(2, 3), rand(1, 3)
    n = 4000
    attr = GradientShap(quadratic(a)).attribute(x, b, n_samples=n)
    # E_α[2a(b + α(x−b))(x−b)] = a(x² − b²); the sampling error is 2a(x−b)²·(std α = 1/√12)/√n
    spread = (2 * a * (x - b) ** 2).abs() / 12**0.5 / n**0.5
    assert ((attr - a * (x**2 - b**2)).abs() < 5 * spread + 1e-12).all()


def test_noise_has_the_requested_standard_deviation() -> None:
    model = Linear(8).to(F64)
    w = model.w.detach()
    x = rand(250, 8)
    sd = 0.3
    attr = GradientShap(model).attribute(x, torch.zeros(1, 8, dtype=F64), n_samples=1, stdevs=sd)
    # one draw per example: attr = w · (x + ε), so ε = attr / w − x, 2000 draws of N(0, sd²)
    eps = attr / w - x
    assert abs(float(eps.std()) / sd - 1) < 0.05
    assert abs(float(eps.mean())) < 4 * sd / eps.numel() ** 0.5
    assert abs(float(torch.corrcoef(torch.stack([eps[:, 0], eps[:, 1]]))[0, 1])) < 0.1


def test_per_input_stdevs() -> None:
    model = TwoLinear(2, (2, 2)).to(F64)
    x1, x2 = rand(3, 2), rand(3, 2, 2)
    b1, b2 = rand(1, 2), rand(1, 2, 2)
    (a1, a2), delta = GradientShap(model).attribute(
        (x1, x2), (b1, b2), n_samples=4, stdevs=(0.0, 0.5), return_convergence_delta=True
    )
    assert torch.allclose(a1, model.w1.detach() * (x1 - b1), rtol=0, atol=1e-12)
    exact2 = model.w2.detach() * (x2 - b2)
    assert (a2 - exact2).abs().min() > 0  # every element got noise
    assert delta.abs().max() < 1e-12  # a linear model is complete whatever the noise


def test_local_attributions_with_multiply_by_inputs_false() -> None:
    model = Linear().to(F64)
    x, dist = rand(3, 4), rand(4, 4)
    local = GradientShap(model, multiply_by_inputs=False)
    assert not local.multiplies_by_inputs and GradientShap(model).multiplies_by_inputs
    out = local.attribute(x, dist, n_samples=6, stdevs=0.3)
    assert torch.allclose(out, model.w.detach().expand(3, 4), rtol=0, atol=1e-12)

    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    zero = torch.zeros(1, 4, dtype=F64)
    seed(3)
    glob = GradientShap(quadratic(a)).attribute(x, zero, n_samples=4)
    seed(3)
    loc = GradientShap(quadratic(a), multiply_by_inputs=False).attribute(x, zero, n_samples=4)
    assert torch.allclose(glob, loc * x, rtol=0, atol=1e-12)  # x − b = x for every draw
    assert not torch.allclose(loc, 2 * a * x / 2)  # not the α = ½ midpoint: α is drawn


# --- randomness, batching, deltas -----------------------------------------------------------------


def test_reproducible_under_numpy_and_torch_seeds() -> None:
    model = MLP().to(F64)
    x, dist = rand(3, 6), rand(4, 6)
    gs = GradientShap(model)
    seed(11)
    first = gs.attribute(x, dist, n_samples=5, stdevs=0.2, target=1)
    seed(11)
    second = gs.attribute(x, dist, n_samples=5, stdevs=0.2, target=1)
    assert torch.equal(first, second)
    seed(12)
    assert not torch.allclose(first, gs.attribute(x, dist, n_samples=5, stdevs=0.2, target=1))


def test_generator_draws_everything_from_torch() -> None:
    model = MLP().to(F64)
    x, dist = rand(3, 6), rand(4, 6)
    gs = GradientShap(model)
    kw = dict(n_samples=5, stdevs=0.2, target=1)
    first = gs.attribute(x, dist, generator=7, **kw)
    np.random.seed(99)  # numpy's state does not matter with a generator
    torch.manual_seed(99)  # nor does torch's global one
    assert torch.equal(gs.attribute(x, dist, generator=torch.Generator().manual_seed(7), **kw),
                       first)  # fmt: skip
    chunked = gs.attribute(x, dist, generator=7, internal_batch_size=2, **kw)
    assert torch.allclose(chunked, first, rtol=0, atol=1e-12)
    assert not torch.allclose(gs.attribute(x, dist, generator=8, **kw), first)
    state = torch.get_rng_state()
    gs.attribute(x, dist, generator=7, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    with pytest.raises(TypeError):
        gs.attribute(x, dist, generator="seven", **kw)


@pytest.mark.parametrize("ibs", [1, 3, 8, 15, None, "auto"])
def test_internal_batch_size_does_not_change_results(ibs: int | str | None) -> None:
    model = MLP().to(F64)
    x, dist = rand(3, 6), rand(4, 6)
    gs = GradientShap(model)
    kw = dict(n_samples=5, stdevs=0.2, target=[0, 2, 1], return_convergence_delta=True)
    seed(5)
    ref, ref_delta = gs.attribute(x, dist, **kw)
    seed(5)
    attr, delta = gs.attribute(x, dist, internal_batch_size=ibs, **kw)
    assert torch.allclose(attr, ref, rtol=0, atol=1e-12)
    assert torch.allclose(delta, ref_delta, rtol=0, atol=1e-12)


def test_delta_is_example_major() -> None:
    """Draw s of example i sits at i * n_samples + s: only the example whose scale is nonzero
    can have a nonzero gap."""
    a = torch.tensor([1.0, 2.0], dtype=F64)
    x = rand(3, 2)
    scale = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    attr, delta = GradientShap(quadratic(a)).attribute(
        x, torch.zeros(1, 2, dtype=F64), n_samples=4, additional_forward_args=(scale,),
        return_convergence_delta=True,
    )  # fmt: skip
    assert delta.shape == (12,)
    assert torch.equal(delta[:4], torch.zeros(4, dtype=F64))
    assert torch.equal(delta[8:], torch.zeros(4, dtype=F64))
    assert (delta[4:8].abs() > 1e-6).all()
    # and the mean of example 1's gaps is its completeness gap
    own = attr[1].sum() - (a * x[1] ** 2).sum()
    assert torch.allclose(delta[4:8].mean(), own, rtol=0, atol=1e-12)


def test_per_example_targets_and_args_on_a_linear_model() -> None:
    W = rand(3, 2)

    def forward(x: torch.Tensor, scale: torch.Tensor, shift: float) -> torch.Tensor:
        return (x @ W) * scale[:, None] + shift

    x, b = rand(4, 3), rand(1, 3)
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    attr, delta = GradientShap(forward).attribute(
        x, b, n_samples=3, target=[1, 0, 0, 1], additional_forward_args=(scale, 2.0),
        return_convergence_delta=True,
    )  # fmt: skip
    expected = scale[:, None] * W[:, [1, 0, 0, 1]].T * (x - b)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-12


def test_dtype_and_device(dtype: torch.dtype, device: str) -> None:
    model = Linear().to(device=device, dtype=dtype)
    x = torch.randn(3, 4, dtype=dtype, device=device)
    b = torch.randn(1, 4, dtype=dtype, device=device)
    attr, delta = GradientShap(model).attribute(x, b, n_samples=3, return_convergence_delta=True)
    assert attr.dtype == dtype and attr.device.type == device
    assert delta.dtype == dtype and delta.device.type == device and delta.shape == (9,)
    assert torch.allclose(attr, model.w.detach() * (x - b), rtol=0, atol=tol(dtype))
    assert delta.abs().max() < 10 * tol(dtype)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_inputs_untouched_and_no_parameter_grads(requires_grad: bool) -> None:
    model = MLP().to(F64)
    x = rand(2, 6).requires_grad_(requires_grad)
    dist = rand(3, 6)
    x0, d0 = x.detach().clone(), dist.clone()
    GradientShap(model).attribute(
        x, dist, target=0, stdevs=0.5, internal_batch_size=3, return_convergence_delta=True
    )
    assert torch.equal(x.detach(), x0) and torch.equal(dist, d0)
    assert x.requires_grad is requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_tensor_and_tuple_forms() -> None:
    model = Linear().to(F64)
    x, b = rand(2, 4), rand(1, 4)
    t = GradientShap(model).attribute(x, b)
    tup = GradientShap(model).attribute((x,), (b,))
    assert isinstance(t, torch.Tensor)
    assert isinstance(tup, tuple) and len(tup) == 1
    assert torch.allclose(tup[0], t, rtol=0, atol=1e-12)


def test_scalar_baseline_is_a_one_row_distribution() -> None:
    model = Linear().to(F64)
    x = rand(2, 4)
    attr = GradientShap(model).attribute(x, 0.5, n_samples=3)
    assert torch.allclose(attr, model.w.detach() * (x - 0.5), rtol=0, atol=1e-12)


# --- callable baselines -----------------------------------------------------------------------


def test_callable_baselines() -> None:
    model = MLP().to(F64)
    x, dist = rand(3, 6), rand(4, 6)
    gs = GradientShap(model)
    seed(2)
    ref = gs.attribute(x, dist, n_samples=4, target=0)
    seed(2)
    no_args = gs.attribute(x, lambda: dist, n_samples=4, target=0)
    assert torch.equal(no_args, ref)

    seen = []

    def from_inputs(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs)
        return dist

    seed(2)
    with_inputs = gs.attribute(x, from_inputs, n_samples=4, target=0)
    assert torch.equal(with_inputs, ref)
    assert len(seen) == 1 and seen[0] is x  # called with the inputs, as Captum does


def test_callable_baselines_for_two_inputs_get_the_tuple() -> None:
    model = TwoLinear(2, (2, 2)).to(F64)
    x1, x2 = rand(2, 2), rand(2, 2, 2)
    attr = GradientShap(model).attribute(
        (x1, x2), lambda inputs: tuple(t[:1] * 0 + 1 for t in inputs), n_samples=2
    )
    assert torch.allclose(attr[0], model.w1.detach() * (x1 - 1), rtol=0, atol=1e-12)
    assert torch.allclose(attr[1], model.w2.detach() * (x2 - 1), rtol=0, atol=1e-12)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [0, -2, 1.5, True])
def test_bad_n_samples(n_samples: object) -> None:
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        GradientShap(Linear().to(F64)).attribute(rand(2, 4), rand(1, 4), n_samples=n_samples)


@pytest.mark.parametrize("stdevs", [-0.1, (0.1, -1.0), "big"])
def test_bad_stdevs(stdevs: object) -> None:
    model = TwoLinear(2, (2, 2)).to(F64)
    x, b = (rand(2, 2), rand(2, 2, 2)), (rand(1, 2), rand(1, 2, 2))
    with pytest.raises(ValueError, match="stdevs must be non-negative numbers"):
        GradientShap(model).attribute(x, b, stdevs=stdevs)


def test_wrong_number_of_stdevs() -> None:
    with pytest.raises(ValueError, match="Got 3 stdevs for 1 inputs"):
        GradientShap(Linear().to(F64)).attribute(rand(2, 4), rand(1, 4), stdevs=(0.1, 0.2, 0.3))


def test_bad_baseline_distributions() -> None:
    gs = GradientShap(TwoLinear(2, (2, 2)).to(F64))
    x = (rand(2, 2), rand(2, 2, 2))
    with pytest.raises(ValueError, match="must have shape"):
        gs.attribute(x, (rand(3, 2), rand(3, 2)))
    with pytest.raises(ValueError, match="different sizes"):
        gs.attribute(x, (rand(3, 2), rand(2, 2, 2)))
    with pytest.raises(ValueError, match="Got 1 baseline distributions for 2 inputs"):
        gs.attribute(x, rand(3, 2))


def test_integer_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="Gradient Shap needs floating-point inputs"):
        GradientShap(lambda z: z.float().sum(1)).attribute(torch.tensor([[1, 2]]), 0.0)
