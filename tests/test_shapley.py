"""ShapleyValues, ShapleyValueSampling and KernelShap: cooperative games with known values, the
Shapley axioms, a brute-force permutation average, sampling convergence and efficiency,
reproducibility, batching, multi-output forwards, per-example masks and edge cases."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from conftest import MLP, TwoInputNet, tol
from torch import Tensor

from llmattr import KernelShap, ShapleyValues, ShapleyValueSampling
from llmattr.attr.lime import shapley_kernel_samples
from llmattr.attr.shapley import shapley_coefficients

F64 = torch.float64


# --- an independent reference: the permutation definition -----------------------------------------


def coalition_outputs(
    f: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    masks: tuple[Tensor, ...],
    n: int,
    args: tuple = (),
) -> dict[int, Tensor]:
    """v(S) for every coalition S (a bitmask): features outside S set to the baseline."""
    values = {}
    for s in range(1 << n):
        present = torch.tensor([(s >> k) & 1 == 1 for k in range(n)])
        pert = tuple(
            torch.where(present[m.to(x.device)], x, b) for x, b, m in zip(inputs, baselines, masks)
        )
        with torch.no_grad():
            values[s] = f(*pert, *args).double()
    return values


def brute_force_shapley(
    f: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    masks: tuple[Tensor, ...],
    n: int,
    args: tuple = (),
) -> Tensor:
    """(n, *output.shape): the marginal contribution of each feature averaged over all n! orders."""
    v = coalition_outputs(f, inputs, baselines, masks, n, args)
    phi = torch.zeros(n, *v[0].shape, dtype=F64, device=v[0].device)
    for order in itertools.permutations(range(n)):
        s = 0
        for k in order:
            phi[k] += v[s | (1 << k)] - v[s]
            s |= 1 << k
    return phi / math.factorial(n)


def spread(phi: Tensor, mask: Tensor, batch: int) -> Tensor:
    """Per-feature values ``(n, batch, *out)`` to per-element ``(batch, *out, *mask.shape[1:])``."""
    rows = []
    for e in range(batch):
        m = mask[e if mask.shape[0] > 1 else 0].cpu()
        vals = phi[:, e].cpu()[m]  # (*feat, *out)
        k = vals.dim() - m.dim()
        rows.append(vals.movedim(tuple(range(m.dim(), m.dim() + k)), tuple(range(k))))
    return torch.stack(rows)


def exact(f: Callable[..., Tensor], x: Tensor, mask: Tensor | None = None, **kw) -> Tensor:
    return ShapleyValues(f).attribute(x, feature_mask=mask, **kw)


ONE = torch.ones(1, 3, dtype=F64)


# --- games with known Shapley values (baseline 0) ------------------------------------------------


def test_additive_game_gives_each_player_its_own_value() -> None:
    v = torch.randn(5, dtype=F64)
    x = torch.rand(2, 5, dtype=F64) + 0.5
    attr = exact(lambda z: z @ v, x)
    assert torch.allclose(attr, v * x, rtol=0, atol=1e-12)


def test_pairwise_interaction_is_split_equally_and_a_dummy_gets_nothing() -> None:
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, -3.0, 5.0]], dtype=F64)
    attr = exact(lambda z: z[:, 0] * z[:, 1], x)
    half = x[:, 0] * x[:, 1] / 2
    expected = torch.stack([half, half, torch.zeros(2, dtype=F64)], 1)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-12)


def majority(z: Tensor) -> Tensor:
    return (z.sum(1) >= 2).double()


def test_majority_vote_of_three() -> None:
    attr = exact(majority, ONE)
    assert torch.allclose(attr, torch.full((1, 3), 1 / 3, dtype=F64), rtol=0, atol=1e-12)
    # with only players 0 and 1 present, the absent player equals its baseline: a dummy
    attr = exact(majority, torch.tensor([[1.0, 1.0, 0.0]], dtype=F64))
    assert torch.allclose(attr, torch.tensor([[0.5, 0.5, 0.0]], dtype=F64), rtol=0, atol=1e-12)


def test_majority_vote_over_feature_groups() -> None:
    """Three players of two elements each; every element carries its group's 1/3."""
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    x = torch.ones(1, 6, dtype=F64)

    def f(z: Tensor) -> Tensor:
        return majority(z.reshape(-1, 3, 2).mean(2))

    attr = exact(f, x, mask)
    assert torch.allclose(attr, torch.full((1, 6), 1 / 3, dtype=F64), rtol=0, atol=1e-12)


def test_glove_game() -> None:
    """One left glove (player 0), two right gloves: v(S) = min(#left, #right)."""
    attr = exact(lambda z: torch.minimum(z[:, 0], z[:, 1] + z[:, 2]), ONE)
    expected = torch.tensor([[2 / 3, 1 / 6, 1 / 6]], dtype=F64)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("carrier", [(0,), (1, 3), (0, 2, 4), (0, 1, 2, 3, 4)])
def test_unanimity_game(carrier: tuple[int, ...]) -> None:
    """u_T(S) = 1 iff T ⊆ S: 1/|T| to each member of T, 0 to the others."""
    idx = list(carrier)
    attr = exact(lambda z: z[:, idx].prod(1), torch.ones(1, 5, dtype=F64))
    expected = torch.zeros(1, 5, dtype=F64)
    expected[0, idx] = 1 / len(idx)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-12)


# --- axioms -----------------------------------------------------------------------------------


def nonlinear(z: Tensor) -> Tensor:
    s = z[:, 0] + z[:, 1]
    return torch.tanh(s) * z[:, 2] + s**2 - torch.sin(z[:, 2] * z[:, 4])


def test_efficiency_symmetry_and_dummy() -> None:
    x = torch.tensor([[0.7, 0.7, -1.3, 2.0, 0.4], [0.2, 0.2, 1.1, -5.0, 3.0]], dtype=F64)
    b = torch.tensor([[0.1, 0.1, 0.3, 0.0, -0.5]], dtype=F64)
    attr = exact(nonlinear, x, baselines=b)
    # efficiency, tight in float64
    gap = nonlinear(x) - nonlinear(b.expand_as(x))
    assert torch.allclose(attr.sum(1), gap, rtol=0, atol=1e-12)
    # symmetry: players 0 and 1 are interchangeable (same input and baseline, f uses x0 + x1)
    assert torch.allclose(attr[:, 0], attr[:, 1], rtol=0, atol=1e-12)
    # dummy: f ignores player 3
    assert torch.allclose(attr[:, 3], torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)
    # the game is genuinely non-additive, so none of this is trivially true
    assert not torch.allclose(attr[:, 2], torch.zeros(2, dtype=F64))


def test_linearity_in_the_game() -> None:
    x = torch.randn(3, 4, dtype=F64)

    def g(z: Tensor) -> Tensor:
        return z[:, 0] * z[:, 1] * z[:, 3] + z[:, 2].exp()

    def h(z: Tensor) -> Tensor:
        return torch.relu(z.sum(1)) - z[:, 1] ** 3

    both = exact(lambda z: 2 * g(z) - h(z), x)
    assert torch.allclose(both, 2 * exact(g, x) - exact(h, x), rtol=0, atol=1e-12)


def test_efficiency_on_an_mlp(mlp: MLP, dtype: torch.dtype, device: str) -> None:
    x = torch.randn(4, 6, dtype=dtype, device=device)
    b = torch.randn(1, 6, dtype=dtype, device=device)
    mask = torch.tensor([[0, 1, 1, 2, 3, 3]], device=device)
    attr = ShapleyValues(mlp).attribute(x, b, target=2, feature_mask=mask)
    assert attr.shape == x.shape and attr.dtype == dtype and attr.device.type == device
    with torch.no_grad():
        gap = mlp(x)[:, 2] - mlp(b.expand_as(x))[:, 2]
    # elements of one feature share its value: count each feature once
    per_feature = attr[:, [0, 1, 3, 4]]
    assert torch.allclose(per_feature.sum(1), gap, rtol=0, atol=10 * tol(dtype))
    assert torch.equal(attr[:, 1], attr[:, 2]) and torch.equal(attr[:, 4], attr[:, 5])


# --- against the permutation average ----------------------------------------------------------


def test_matches_brute_force_permutations_on_an_mlp(mlp: MLP, dtype: torch.dtype) -> None:
    device = next(mlp.parameters()).device
    x = torch.randn(3, 6, dtype=dtype, device=device)
    b = torch.randn(3, 6, dtype=dtype, device=device)
    mask = torch.tensor([[0, 1, 2, 3, 4, 4]], device=device)
    attr = ShapleyValues(mlp).attribute(x, b, target=1, feature_mask=mask)
    phi = brute_force_shapley(lambda z: mlp(z)[:, 1], (x,), (b,), (mask,), 5)
    assert torch.allclose(attr.double().cpu(), spread(phi, mask, 3), rtol=0, atol=tol(dtype))


def test_two_inputs_with_a_feature_spanning_both_and_extra_args() -> None:
    model = TwoInputNet().double()
    x1, x2 = torch.randn(2, 4, dtype=F64), torch.randn(2, 3, dtype=F64)
    b1, b2 = torch.randn(1, 4, dtype=F64), torch.zeros(1, 3, dtype=F64)
    m1, m2 = torch.tensor([[0, 0, 1, 2]]), torch.tensor([[2, 3, 3]])  # feature 2 in both
    scale = torch.tensor([1.5, -2.0], dtype=F64)
    args = (scale, 0.25)
    a1, a2 = ShapleyValues(model).attribute(
        (x1, x2), (b1, b2), target=0, additional_forward_args=args, feature_mask=(m1, m2)
    )
    phi = brute_force_shapley(
        lambda u, v, s, c: model(u, v, s, c)[:, 0],
        (x1, x2),
        (b1.expand_as(x1), b2.expand_as(x2)),
        (m1, m2),
        4,
        args,
    )
    assert torch.allclose(a1, spread(phi, m1, 2), rtol=0, atol=1e-12)
    assert torch.allclose(a2, spread(phi, m2, 2), rtol=0, atol=1e-12)
    assert torch.equal(a1[:, 3], a2[:, 0])  # one feature, one value


def test_multi_output_forward_gives_output_dimensions_after_the_batch() -> None:
    model = MLP(n_in=5, n_out=4).double()
    x = torch.randn(3, 5, dtype=F64)
    attr = ShapleyValues(model).attribute(x)
    assert attr.shape == (3, 4, 5)
    phi = brute_force_shapley(model, (x,), (torch.zeros_like(x),), (torch.arange(5)[None],), 5)
    assert torch.allclose(attr, spread(phi, torch.arange(5)[None], 3), rtol=0, atol=1e-12)
    for t in range(4):
        single = ShapleyValues(model).attribute(x, target=t)
        assert torch.allclose(attr[:, t], single, rtol=0, atol=1e-12)
    with torch.no_grad():
        gap = model(x) - model(torch.zeros_like(x))
    assert torch.allclose(attr.sum(2), gap, rtol=0, atol=1e-12)


def test_three_dimensional_outputs() -> None:
    w = torch.randn(4, 2, 3, dtype=F64)

    def f(z: Tensor) -> Tensor:
        return torch.tanh(torch.einsum("bi,ijk->bjk", z, w)) * z[:, :1, None]

    x = torch.randn(2, 4, dtype=F64)
    attr = ShapleyValues(f).attribute(x)
    assert attr.shape == (2, 2, 3, 4)
    phi = brute_force_shapley(f, (x,), (torch.zeros_like(x),), (torch.arange(4)[None],), 4)
    assert torch.allclose(attr, spread(phi, torch.arange(4)[None], 2), rtol=0, atol=1e-12)


def test_per_example_masks() -> None:
    model = MLP(n_in=6, n_out=2).double()
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.tensor(
        [[0, 0, 1, 1, 2, 3], [3, 2, 1, 0, 3, 2], [0, 1, 2, 3, 3, 3]]
    )  # a different grouping per example
    attr = ShapleyValues(model).attribute(x, target=1, feature_mask=mask)
    phi = brute_force_shapley(lambda z: model(z)[:, 1], (x,), (torch.zeros_like(x),), (mask,), 4)
    assert torch.allclose(attr, spread(phi, mask, 3), rtol=0, atol=1e-12)
    for e in range(3):
        alone = ShapleyValues(model).attribute(x[e : e + 1], target=1, feature_mask=mask[e : e + 1])
        assert torch.allclose(attr[e : e + 1], alone, rtol=0, atol=1e-12)


def test_aggregate_output_has_batch_dimension_one() -> None:
    model = MLP(n_in=4, n_out=2).double()
    x = torch.randn(3, 4, dtype=F64)

    def loss(z: Tensor) -> Tensor:
        return model(z)[:, 0].square().mean()

    attr = ShapleyValues(loss).attribute(x)
    assert attr.shape == (1, 4)
    phi = brute_force_shapley(
        lambda z: loss(z).reshape(1), (x,), (torch.zeros_like(x),), (torch.arange(4)[None],), 4
    )
    assert torch.allclose(attr, phi.t(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("ppe", [2, 5, 64])
def test_exact_values_do_not_depend_on_perturbations_per_eval(ppe: int) -> None:
    model = MLP(n_in=5, n_out=3).double()
    x = torch.randn(2, 5, dtype=F64)
    sv = ShapleyValues(model)
    one = sv.attribute(x, target=0, perturbations_per_eval=1)
    assert torch.allclose(sv.attribute(x, target=0, perturbations_per_eval=ppe), one, atol=1e-13)


def test_forward_count_is_two_to_the_n() -> None:
    calls = []

    def f(z: Tensor) -> Tensor:
        calls.append(z.shape[0])
        return z.sum(1)

    ShapleyValues(f).attribute(torch.randn(2, 4), perturbations_per_eval=3)
    # the unperturbed batch, then 2^4 - 1 coalitions three at a time
    assert calls == [2] + [6] * 5


def test_coefficients_reproduce_the_shapley_weights() -> None:
    n = 4
    subsets = torch.tensor([[(s >> k) & 1 == 1 for k in range(n)] for s in range(1 << n)])
    c = shapley_coefficients(subsets)
    for s in range(1 << n):
        size = bin(s).count("1")
        for k in range(n):
            if (s >> k) & 1:
                w = math.factorial(size - 1) * math.factorial(n - size) / math.factorial(n)
                assert c[s, k].item() == pytest.approx(w, abs=1e-15)
            else:
                w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                assert c[s, k].item() == pytest.approx(-w, abs=1e-15)
    # every coalition's weights for a feature sum to zero (a constant game has zero value)
    assert torch.allclose(c.sum(0), torch.zeros(n, dtype=F64), atol=1e-15)


def test_single_feature_gets_the_whole_gap() -> None:
    model = MLP(n_in=3, n_out=2).double()
    x = torch.randn(2, 3, dtype=F64)
    attr = ShapleyValues(model).attribute(x, target=1, feature_mask=torch.zeros(1, 3, dtype=int))
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert torch.allclose(attr, gap[:, None].expand(2, 3), rtol=0, atol=1e-12)


def test_many_features_warn() -> None:
    with pytest.warns(UserWarning, match="ShapleyValueSampling"):
        attr = ShapleyValues(lambda z: z.sum(1)).attribute(
            torch.ones(1, 17), perturbations_per_eval=1 << 17
        )
    assert torch.allclose(attr, torch.ones(1, 17), atol=1e-5)


# --- ShapleyValueSampling -----------------------------------------------------------------------


def mlp5() -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor, Tensor]:
    """A nonlinear game on 5 features (6 inputs, the last two grouped), batch 2, float64."""
    torch.manual_seed(3)
    model = MLP(n_in=6, hidden=8, n_out=2).double()
    x = torch.randn(2, 6, dtype=F64) * 2
    mask = torch.tensor([[0, 1, 2, 3, 4, 4]])
    return model, x, mask, ShapleyValues(model).attribute(x, target=0, feature_mask=mask)


@pytest.mark.parametrize("n_samples", [1, 2, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_every_estimate_is_efficient(n_samples: int, seed: int) -> None:
    model = MLP(n_in=5, n_out=3).double()
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    attr = ShapleyValueSampling(model).attribute(x, b, n_samples=n_samples, generator=seed)
    assert attr.shape == (3, 3, 5)
    with torch.no_grad():
        gap = model(x) - model(b)
    assert torch.allclose(attr.sum(2), gap, rtol=0, atol=1e-12)


def test_sampling_efficient_with_per_example_masks() -> None:
    model = MLP(n_in=6, n_out=2).double()
    x = torch.randn(2, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 1, 2, 0]])
    attr = ShapleyValueSampling(model).attribute(
        x, target=1, feature_mask=mask, n_samples=3, generator=5
    )
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    per_feature = torch.stack([attr[0, [0, 2, 4]], attr[1, [2, 1, 0]]])
    assert torch.allclose(per_feature.sum(1), gap, rtol=0, atol=1e-12)


def test_sampling_is_exact_on_an_additive_game() -> None:
    v = torch.randn(6, dtype=F64)
    x = torch.randn(3, 6, dtype=F64)
    attr = ShapleyValueSampling(lambda z: z @ v).attribute(x, n_samples=1, generator=0)
    assert torch.allclose(attr, v * x, rtol=0, atol=1e-12)


def test_sampling_with_one_ordering_is_that_orderings_marginals() -> None:
    """Two players: the one ordering drawn credits one of two known splits."""
    attr = ShapleyValueSampling(lambda z: z[:, 0] * z[:, 1]).attribute(
        torch.ones(1, 2, dtype=F64), n_samples=1, generator=0
    )
    assert attr.tolist() in ([[0.0, 1.0]], [[1.0, 0.0]])


def test_sampling_converges_to_the_exact_values() -> None:
    model, x, mask, exact_values = mlp5()
    svs = ShapleyValueSampling(model)

    def err(n: int) -> float:
        est = svs.attribute(
            x, target=0, feature_mask=mask, n_samples=n, perturbations_per_eval=512, generator=0
        )
        return (est - exact_values).abs().max().item()

    scale = exact_values.abs().max().item()
    coarse, fine = err(10), err(2000)
    assert fine < 0.2 * coarse
    assert fine < 0.05 * scale


def test_sampling_reproducible_with_seed_and_generator() -> None:
    model, x, mask, _ = mlp5()
    svs = ShapleyValueSampling(model)

    def run(generator: object) -> Tensor:
        return svs.attribute(x, target=0, feature_mask=mask, n_samples=4, generator=generator)

    a = run(11)
    assert torch.equal(a, run(11))
    assert torch.equal(a, run(torch.Generator().manual_seed(11)))
    assert not torch.equal(a, run(12))
    # without a generator, torch's global RNG is used
    torch.manual_seed(7)
    c = run(None)
    torch.manual_seed(7)
    assert torch.equal(c, run(None))


@pytest.mark.parametrize("ppe", [2, 3, 1000])
def test_sampling_does_not_depend_on_perturbations_per_eval(ppe: int) -> None:
    model, x, mask, _ = mlp5()
    svs = ShapleyValueSampling(model)
    kw = {"target": 0, "feature_mask": mask, "n_samples": 6, "generator": 3}
    one = svs.attribute(x, perturbations_per_eval=1, **kw)
    assert torch.allclose(svs.attribute(x, perturbations_per_eval=ppe, **kw), one, atol=1e-13)


def test_sampling_forward_count() -> None:
    calls = []

    def f(z: Tensor) -> Tensor:
        calls.append(z.shape[0])
        return z.sum(1)

    ShapleyValueSampling(f).attribute(torch.randn(2, 4), n_samples=5)
    assert len(calls) == 1 + 1 + 5 * 3  # unperturbed, all absent, n - 1 steps per ordering


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_sampling_rejects_bad_n_samples(bad: object) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        ShapleyValueSampling(lambda z: z.sum(1)).attribute(torch.ones(1, 3), n_samples=bad)


def test_sampling_single_feature() -> None:
    model = MLP(n_in=3, n_out=2).double()
    x = torch.randn(2, 3, dtype=F64)
    b = torch.randn(2, 3, dtype=F64)
    attr = ShapleyValueSampling(model).attribute(
        x, b, target=0, feature_mask=torch.zeros(1, 3, dtype=int), n_samples=3
    )
    with torch.no_grad():
        gap = model(x)[:, 0] - model(b)[:, 0]
    assert torch.allclose(attr, gap[:, None].expand(2, 3), rtol=0, atol=1e-12)


def test_sampling_multi_output_matches_single_targets() -> None:
    model = MLP(n_in=4, n_out=3).double()
    x = torch.randn(2, 4, dtype=F64)
    svs = ShapleyValueSampling(model)
    attr = svs.attribute(x, n_samples=5, generator=1)
    assert attr.shape == (2, 3, 4)
    for t in range(3):
        single = svs.attribute(x, target=t, n_samples=5, generator=1)
        assert torch.allclose(attr[:, t], single, rtol=0, atol=1e-12)


# --- KernelShap ---------------------------------------------------------------------------------


def test_kernel_shap_is_exact_on_an_additive_game() -> None:
    v = torch.randn(5, dtype=F64)
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    attr = KernelShap(lambda z: z @ v + 1.0).attribute(x, b, n_samples=40, generator=0)
    assert torch.allclose(attr, v * (x - b), rtol=0, atol=1e-10)


def test_kernel_shap_converges_to_the_exact_values() -> None:
    model, x, mask, exact_values = mlp5()
    ks = KernelShap(model)

    def err(n: int) -> float:
        est = ks.attribute(
            x, target=0, feature_mask=mask, n_samples=n, perturbations_per_eval=512, generator=0
        )
        return (est - exact_values).abs().max().item()

    scale = exact_values.abs().max().item()
    coarse, fine = err(12), err(4000)
    assert fine < 0.2 * coarse
    assert fine < 0.05 * scale


@pytest.mark.parametrize("n_samples", [1, 3, 10])
def test_kernel_shap_every_estimate_is_efficient(n_samples: int) -> None:
    model = MLP(n_in=5, n_out=3).double()
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    attr = KernelShap(model).attribute(x, b, n_samples=n_samples, generator=2)
    assert attr.shape == (3, 3, 5)
    with torch.no_grad():
        gap = model(x) - model(b.expand_as(x))
    assert torch.allclose(attr.sum(2), gap, rtol=0, atol=1e-12)


def test_kernel_shap_per_feature_output_shape() -> None:
    model, x, mask, _ = mlp5()
    ks = KernelShap(model)
    kw = {"feature_mask": mask, "n_samples": 30, "generator": 4}
    flat = ks.attribute(x, target=0, return_input_shape=False, **kw)
    assert flat.shape == (2, 5)
    spread_out = ks.attribute(x, target=0, **kw)
    assert torch.equal(spread_out, flat[:, mask[0]])
    multi = ks.attribute(x, return_input_shape=False, **kw)
    assert multi.shape == (2, 2, 5)
    assert torch.allclose(multi[:, 0], flat, rtol=0, atol=1e-12)


def test_kernel_shap_reproducible_and_batching_invariant() -> None:
    model, x, mask, _ = mlp5()
    ks = KernelShap(model)
    kw = {"target": 0, "feature_mask": mask, "n_samples": 20}
    a = ks.attribute(x, generator=9, **kw)
    assert torch.equal(a, ks.attribute(x, generator=9, **kw))
    assert torch.equal(a, ks.attribute(x, generator=torch.Generator().manual_seed(9), **kw))
    assert not torch.equal(a, ks.attribute(x, generator=10, **kw))
    b = ks.attribute(x, generator=9, perturbations_per_eval=7, **kw)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_kernel_shap_single_feature() -> None:
    model = MLP(n_in=3, n_out=2).double()
    x = torch.randn(2, 3, dtype=F64)
    mask = torch.zeros(1, 3, dtype=int)
    ks = KernelShap(model)
    attr = ks.attribute(x, target=1, feature_mask=mask, n_samples=5)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert torch.allclose(attr, gap[:, None].expand(2, 3), rtol=0, atol=1e-12)
    flat = ks.attribute(x, target=1, feature_mask=mask, return_input_shape=False)
    assert flat.shape == (2, 1) and torch.allclose(flat[:, 0], gap, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [0, -1])
def test_kernel_shap_rejects_bad_n_samples(bad: int) -> None:
    with pytest.raises(ValueError, match="n_samples"):
        KernelShap(lambda z: z.sum(1)).attribute(torch.ones(1, 3), n_samples=bad)


def test_shapley_kernel_sampler_distribution() -> None:
    n, m = 5, 40000
    z = shapley_kernel_samples(n, m, torch.Generator().manual_seed(0))
    assert z.shape == (m, n) and z.dtype == torch.bool
    sizes = z.sum(1)
    assert int(sizes.min()) >= 1 and int(sizes.max()) <= n - 1
    s = torch.arange(1, n, dtype=F64)
    p = 1 / (s * (n - s))
    p = p / p.sum()
    freq = torch.stack([(sizes == k).double().mean() for k in range(1, n)])
    se = (p * (1 - p) / m).sqrt()
    assert ((freq - p).abs() < 5 * se).all()
    # members are uniform given the size: every feature equally often in each size class
    for k in range(1, n):
        rows = z[sizes == k].double()
        se_k = math.sqrt((k / n) * (1 - k / n) / rows.shape[0])
        assert ((rows.mean(0) - k / n).abs() < 5 * se_k).all()
    assert shapley_kernel_samples(1, 3, None).shape == (0, 1)
