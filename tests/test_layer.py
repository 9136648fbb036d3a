"""Layer attribution: completeness at the layer, closed forms on linear pieces, agreement with the
primary method on the cut model, argument forms (lists of layers, tuple activations, layer
inputs, chunking)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, SmallCNN, TwoInputNet, tol
from torch import Tensor, nn

from llmattr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    InternalInfluence,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerDeepLiftShap,
    LayerFeatureAblation,
    LayerFeaturePermutation,
    LayerGradCam,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LayerLRP,
    configure_interpretable_embedding_layer,
    remove_interpretable_embedding_layer,
)

F64 = torch.float64


# --- helpers ------------------------------------------------------------------------------------


def out_at(model: nn.Module, x: Tensor, target: int | Tensor) -> Tensor:
    """The explained output per example, computed without the library."""
    with torch.no_grad():
        out = model(x)
    if isinstance(target, int):
        return out[:, target]
    return out[torch.arange(out.shape[0]), target]


def gap(model: nn.Module, x: Tensor, b: Tensor, target: int | Tensor) -> Tensor:
    return out_at(model, x, target) - out_at(model, b, target)


def row_sum(a: Tensor | tuple[Tensor, ...]) -> Tensor:
    parts = a if isinstance(a, tuple) else (a,)
    return sum(p.reshape(p.shape[0], -1).sum(1) for p in parts)


def hooked(model: nn.Module, x: Tensor, layer: nn.Module) -> Tensor:
    """The layer's output, captured with a plain forward hook."""
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


class Linear2(nn.Module):
    """f = W2 (W1 x + b1) + b2, with layer a = fc1(x)."""

    def __init__(self, n_in: int = 4, hidden: int = 5, n_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x))


class Smooth(nn.Module):
    """Identity → Linear → Tanh → Linear → Tanh → Linear: analytic, so Gauss-Legendre IG is
    exact to rounding with enough steps."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Identity()
        self.fc1 = nn.Linear(4, 6)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(6, 5)
        self.act2 = nn.Tanh()
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(self.inp(x))))))


class Split(nn.Module):
    """Returns a pair: (tanh of the first 3 features, sigmoid of the rest)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.tanh(x[:, :3]), torch.sigmoid(x[:, 3:])


class PairNet(nn.Module):
    """Linear → Split (a tuple) → products and sums → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.split = Split()
        self.out = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.split(self.fc(x))
        return self.out(a * b.sum(1, keepdim=True) + a.pow(2))


@pytest.fixture
def smooth() -> Smooth:
    return Smooth().to(F64)


# --- LayerIntegratedGradients -------------------------------------------------------------------


@pytest.mark.parametrize("layer_name", ["fc1", "act1", "fc2"])
def test_lig_completeness_and_delta(smooth: Smooth, xb, layer_name: str) -> None:
    x, b = xb
    target = torch.tensor([0, 1, 2, 2, 1])
    lig = LayerIntegratedGradients(smooth, getattr(smooth, layer_name))
    attrs, delta = lig.attribute(x, b, target, n_steps=40, return_convergence_delta=True)
    want_gap = gap(smooth, x, b, target)
    torch.testing.assert_close(row_sum(attrs), want_gap, rtol=0, atol=1e-11)
    torch.testing.assert_close(delta, row_sum(attrs) - want_gap, rtol=0, atol=1e-13)


class Skip(nn.Module):
    """f(x) = fc2(tanh(fc1(x))) + skip(x): the skip route bypasses fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        self.skip = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) + self.skip(x)


def test_lig_applies_the_baseline_at_the_layer_when_a_route_bypasses_it(xb) -> None:
    # documented: the attributions sum to f(x) - g(a(b)), g = the model on x with the layer's
    # activation replaced; the skip route still sees x, so that is not f(x) - f(b)
    model = Skip().double()
    x, b = xb
    attrs, delta = LayerIntegratedGradients(model, model.fc1).attribute(
        x, b, 1, n_steps=40, return_convergence_delta=True
    )
    with torch.no_grad():
        at_layer = model.fc2(torch.tanh(model.fc1(x))) - model.fc2(torch.tanh(model.fc1(b)))
    torch.testing.assert_close(row_sum(attrs), at_layer[:, 1], rtol=0, atol=1e-11)
    torch.testing.assert_close(delta, row_sum(attrs) - at_layer[:, 1], rtol=0, atol=1e-13)
    assert (row_sum(attrs) - gap(model, x, b, 1)).abs().min() > 1e-3


def test_lig_delta_is_the_gap_when_not_converged(xb) -> None:
    # ReLU kinks and 3 left-Riemann steps: far from complete; the delta must say by how much
    model = MLP(4, 8, 2).double()
    x, b = xb
    attrs, delta = LayerIntegratedGradients(model, model.fc1).attribute(
        x, b, 1, n_steps=3, method="riemann_left", return_convergence_delta=True
    )
    want = row_sum(attrs) - gap(model, x, b, 1)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(delta, want, rtol=0, atol=1e-13)


def test_lig_at_identity_after_input_equals_ig(smooth: Smooth, xb) -> None:
    x, b = xb
    for method, n in [("gausslegendre", 7), ("riemann_trapezoid", 9), ("riemann_left", 5)]:
        got = LayerIntegratedGradients(smooth, smooth.inp).attribute(
            x, b, 2, n_steps=n, method=method
        )
        want = IntegratedGradients(smooth).attribute(x, b, 2, n_steps=n, method=method)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_lig_list_of_layers_each_complete(smooth: Smooth, xb) -> None:
    # layers_jointly=False: every layer on its own path (the default is Captum's joint path)
    x, b = xb
    layers = [smooth.fc2, smooth.fc1, smooth.inp]
    attrs, deltas = LayerIntegratedGradients(smooth, layers).attribute(
        x, b, 0, n_steps=40, return_convergence_delta=True, layers_jointly=False
    )
    assert isinstance(attrs, list) and isinstance(deltas, list)
    assert [a.shape for a in attrs] == [(5, 5), (5, 6), (5, 4)]
    want_gap = gap(smooth, x, b, 0)
    for layer, a, d in zip(layers, attrs, deltas):
        torch.testing.assert_close(row_sum(a), want_gap, rtol=0, atol=1e-11)
        torch.testing.assert_close(d, row_sum(a) - want_gap, rtol=0, atol=1e-13)
        alone = LayerIntegratedGradients(smooth, layer).attribute(x, b, 0, n_steps=40)
        torch.testing.assert_close(a, alone, rtol=0, atol=0)


def test_lig_to_layer_input_equals_previous_output(smooth: Smooth, xb) -> None:
    x, b = xb
    got = LayerIntegratedGradients(smooth, smooth.fc2).attribute(
        x, b, 1, n_steps=10, attribute_to_layer_input=True
    )
    want = LayerIntegratedGradients(smooth, smooth.act1).attribute(x, b, 1, n_steps=10)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    # and the layer's input differs from its output
    out = LayerIntegratedGradients(smooth, smooth.fc2).attribute(x, b, 1, n_steps=10)
    assert got.shape == (5, 6) and out.shape == (5, 5)


def test_lig_tuple_activation_gives_tuple(xb) -> None:
    model = PairNet().double()
    x, b = xb
    attrs, delta = LayerIntegratedGradients(model, model.split).attribute(
        x, b, 1, n_steps=40, return_convergence_delta=True
    )
    assert isinstance(attrs, tuple) and [a.shape for a in attrs] == [(5, 3), (5, 2)]
    want_gap = gap(model, x, b, 1)
    torch.testing.assert_close(row_sum(attrs), want_gap, rtol=0, atol=1e-11)
    torch.testing.assert_close(delta, row_sum(attrs) - want_gap, rtol=0, atol=1e-13)

    # the same as IG of the function of the pair, computed by hand
    def rest(a: Tensor, s: Tensor) -> Tensor:
        return model.out(a * s.sum(1, keepdim=True) + a.pow(2))

    with torch.no_grad():
        at_x, at_b = model.split(model.fc(x)), model.split(model.fc(b))
    want = IntegratedGradients(rest).attribute(at_x, at_b, 1, n_steps=40)
    for g, w in zip(attrs, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 3, 7, 200])
def test_lig_internal_batch_size_does_not_change_results(smooth: Smooth, xb, chunk: int) -> None:
    x, b = xb
    lig = LayerIntegratedGradients(smooth, [smooth.fc1, smooth.act2])
    want, want_d = lig.attribute(x, b, 2, n_steps=9, return_convergence_delta=True)
    got, got_d = lig.attribute(
        x, b, 2, n_steps=9, internal_batch_size=chunk, return_convergence_delta=True
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-14)
    for g, w in zip(got_d, want_d):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-14)


def test_lig_multiply_by_inputs_false(smooth: Smooth, xb) -> None:
    x, b = xb
    local = LayerIntegratedGradients(smooth, smooth.fc2, multiply_by_inputs=False)
    glob = LayerIntegratedGradients(smooth, smooth.fc2)
    assert not local.multiplies_by_inputs and glob.multiplies_by_inputs
    g_local, d_local = local.attribute(x, b, 0, n_steps=30, return_convergence_delta=True)
    g_glob, d_glob = glob.attribute(x, b, 0, n_steps=30, return_convergence_delta=True)
    diff = hooked(smooth, x, smooth.fc2) - hooked(smooth, b, smooth.fc2)
    torch.testing.assert_close(g_local * diff, g_glob, rtol=0, atol=1e-14)
    # the delta still measures completeness of the global attributions
    torch.testing.assert_close(d_local, d_glob, rtol=0, atol=1e-13)
    assert not torch.allclose(g_local, g_glob)


def test_lig_with_tuple_inputs_and_extra_args(dtype: torch.dtype) -> None:
    model = TwoInputNet().to(dtype)
    x1, x2 = torch.randn(4, 4, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    b1, b2 = torch.randn(1, 4, dtype=dtype), torch.zeros(4, 3, dtype=dtype)
    scale = torch.rand(4, dtype=dtype) + 0.5
    args = (scale, 0.25)
    attrs, delta = LayerIntegratedGradients(model, model.relu).attribute(
        (x1, x2), (b1, b2), 1, args, n_steps=5, return_convergence_delta=True
    )
    # after the ReLU the model is linear in h: h's attribution is out.W[1] * scale * Δh exactly
    with torch.no_grad():
        h_x = model.relu(model.a(x1) + model.b(x2))
        h_b = model.relu(model.a(b1) + model.b(b2))
        want = model.out.weight[1] * scale[:, None] * (h_x - h_b)
        gap_ = (model(x1, x2, *args) - model(b1.expand(4, -1), b2, *args))[:, 1]
    torch.testing.assert_close(attrs, want, rtol=0, atol=tol(dtype))
    torch.testing.assert_close(attrs.sum(1), gap_, rtol=0, atol=tol(dtype))
    torch.testing.assert_close(delta, attrs.sum(1) - gap_, rtol=0, atol=tol(dtype))


def test_lig_to_input_of_layer_with_two_positional_inputs(xb) -> None:
    class Bilinear(nn.Module):
        def forward(self, u: Tensor, v: Tensor) -> Tensor:
            return (u * v).sum(1, keepdim=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Linear(4, 3)
            self.q = nn.Linear(4, 3)
            self.bil = Bilinear()

        def forward(self, x: Tensor) -> Tensor:
            return self.bil(self.p(x), torch.tanh(self.q(x)))

    model = Net().double()
    x, b = xb
    attrs, delta = LayerIntegratedGradients(model, model.bil).attribute(
        x, b, n_steps=20, attribute_to_layer_input=True, return_convergence_delta=True
    )
    assert isinstance(attrs, tuple) and [a.shape for a in attrs] == [(5, 3), (5, 3)]
    torch.testing.assert_close(row_sum(attrs), gap(model, x, b, 0), rtol=0, atol=1e-11)
    # u·v along the straight path in (u, v): u's share is ∫ v du = Δu (v_b + Δv / 2)
    with torch.no_grad():
        du = model.p(x) - model.p(b)
        v_b, dv = torch.tanh(model.q(b)), torch.tanh(model.q(x)) - torch.tanh(model.q(b))
    torch.testing.assert_close(attrs[0], du * (v_b + dv / 2), rtol=0, atol=1e-13)
    torch.testing.assert_close(delta, torch.zeros(5, dtype=F64), rtol=0, atol=1e-11)


def test_lig_on_linear_model_closed_form(xb) -> None:
    # f = W2 a + b2: the integrated gradient at a is W2[t]; attribution W2[t] * (a(x) - a(b))
    model = Linear2().double()
    x, b = xb
    got = LayerIntegratedGradients(model, model.fc1).attribute(x, b, 2, n_steps=3)
    want = model.fc2.weight[2].detach() * (model.fc1.weight.detach() @ (x - b).T).T
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


class Bag(nn.Module):
    """An embedding-bag classifier: mean of tanh(embedding) over tokens → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.embedding(ids)).mean(1))


def test_lig_on_embedding_equals_ig_through_interpretable_embedding() -> None:
    model = Bag().double()
    ids = torch.randint(1, 12, (3, 6))
    base_ids = torch.zeros_like(ids)
    target = torch.tensor([2, 0, 1])
    attrs, delta = LayerIntegratedGradients(model, model.embedding).attribute(
        ids, base_ids, target, n_steps=30, return_convergence_delta=True
    )
    assert attrs.shape == (3, 6, 4)

    original = model.embedding
    with torch.no_grad():
        before = model(ids)
    with pytest.warns(UserWarning, match="remove_interpretable_embedding_layer"):
        ie = configure_interpretable_embedding_layer(model, "embedding")
    assert model.embedding is ie
    try:
        emb = ie.indices_to_embeddings(ids).detach()
        ref = ie.indices_to_embeddings(base_ids).detach()
        want = IntegratedGradients(model).attribute(emb, ref, target, n_steps=30)
    finally:
        remove_interpretable_embedding_layer(model, ie)
    assert model.embedding is original
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, rtol=0, atol=0)
    torch.testing.assert_close(attrs, want, rtol=0, atol=1e-14)

    # one score per token; the tokens' scores sum to f(x) - f(baseline)
    per_token = attrs.sum(-1)
    want_gap = gap(model, ids, base_ids, target)
    torch.testing.assert_close(per_token.sum(1), want_gap, rtol=0, atol=1e-11)
    torch.testing.assert_close(delta, per_token.sum(1) - want_gap, rtol=0, atol=1e-13)
    # a token equal to the baseline token gets nothing
    ids2 = ids.clone()
    ids2[:, 2] = 0
    a2 = LayerIntegratedGradients(model, model.embedding).attribute(ids2, base_ids, target)
    assert torch.equal(a2[:, 2], torch.zeros(3, 4, dtype=F64))


# --- LayerConductance and InternalInfluence -----------------------------------------------------


def test_conductance_sums_to_ig_total_and_gap(smooth: Smooth, xb) -> None:
    x, b = xb
    target = torch.tensor([1, 0, 2, 1, 0])
    cond, delta = LayerConductance(smooth, smooth.fc2).attribute(
        x, b, target, n_steps=200, return_convergence_delta=True
    )
    assert cond.shape == (5, 5)
    want_gap = gap(smooth, x, b, target)
    ig_total = row_sum(IntegratedGradients(smooth).attribute(x, b, target, n_steps=50))
    torch.testing.assert_close(ig_total, want_gap, rtol=0, atol=1e-11)
    torch.testing.assert_close(row_sum(cond), want_gap, rtol=0, atol=1e-5)
    torch.testing.assert_close(delta, row_sum(cond) - want_gap, rtol=0, atol=1e-13)


def test_conductance_is_trapezoid_rule_on_the_partition(smooth: Smooth, xb) -> None:
    # documented rule: the partition is the method's nodes plus both ends, and neuron j gets
    # Σ_s ∂f/∂a_j(p_s) · (a_j(p_{s+1}) - a_j(p_{s-1})) / 2, with the ends clamped
    import numpy as np

    x, b = xb
    nodes, _ = np.polynomial.legendre.leggauss(4)
    partition = [0.0, *sorted(float(v) for v in (nodes + 1) / 2), 1.0]
    acts, grads = [], []
    for p in partition:
        a = smooth.act1(smooth.fc1(b + p * (x - b))).detach().requires_grad_()
        out = smooth.fc3(smooth.act2(smooth.fc2(a)))[:, 2]
        (g,) = torch.autograd.grad(out.sum(), a)
        acts.append(a.detach())
        grads.append(g)
    k = len(partition) - 1
    want = sum(grads[s] * (acts[min(s + 1, k)] - acts[max(s - 1, 0)]) / 2 for s in range(k + 1))
    got = LayerConductance(smooth, smooth.act1).attribute(x, b, 2, n_steps=4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_conductance_converges_with_n_steps(smooth: Smooth, xb) -> None:
    x, b = xb
    lc = LayerConductance(smooth, smooth.act1)
    errors = [
        lc.attribute(x, b, 0, n_steps=n, return_convergence_delta=True)[1].abs().max().item()
        for n in (5, 20, 80)
    ]
    assert errors[0] > 1e-6
    assert errors[1] < errors[0] / 4 and errors[2] < errors[1] / 4


def test_conductance_of_a_linear_model_is_exact(xb) -> None:
    # a(α) is linear in α and the gradient at the layer is constant: conductance is
    # W2[t] * (a(x) - a(b)) for any number of steps
    model = Linear2().double()
    x, b = xb
    cond = LayerConductance(model, model.fc1).attribute(x, b, 1, n_steps=3)
    want = model.fc2.weight[1].detach() * (model.fc1.weight.detach() @ (x - b).T).T
    torch.testing.assert_close(cond, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 4, 11])
def test_conductance_internal_batch_size(smooth: Smooth, xb, chunk: int) -> None:
    x, b = xb
    lc = LayerConductance(smooth, smooth.fc2)
    want = lc.attribute(x, b, 1, n_steps=6)
    got = lc.attribute(x, b, 1, n_steps=6, internal_batch_size=chunk)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_internal_influence_closed_form(xb) -> None:
    # f = W2 (W1 x + b1) + b2, layer a = W1 x + b1: the gradient at the layer is W2[t] on the
    # whole path, so the internal influence is W2[t] for every example
    model = Linear2().double()
    x, b = xb
    target = torch.tensor([0, 2, 1, 1, 0])
    got = InternalInfluence(model, model.fc1).attribute(x, b, target, n_steps=7)
    torch.testing.assert_close(got, model.fc2.weight[target].detach(), rtol=0, atol=1e-14)


def test_internal_influence_is_integrated_layer_gradient(smooth: Smooth, xb) -> None:
    # by hand: Σ_k w_k ∂f/∂a at a(b + α_k (x - b)), Gauss-Legendre nodes
    import numpy as np

    x, b = xb
    n = 6
    nodes, weights = np.polynomial.legendre.leggauss(n)
    total = torch.zeros(5, 6, dtype=F64)
    for node, w in zip((nodes + 1) / 2, weights / 2):
        a = smooth.fc1(b + float(node) * (x - b)).detach().requires_grad_()
        out = smooth.fc3(smooth.act2(smooth.fc2(smooth.act1(a))))[:, 1]
        (g,) = torch.autograd.grad(out.sum(), a)
        total += float(w) * g
    got = InternalInfluence(smooth, smooth.fc1).attribute(x, b, 1, n_steps=n)
    torch.testing.assert_close(got, total, rtol=0, atol=1e-14)


# --- LayerGradientXActivation and LayerActivation ------------------------------------------------


def test_gradient_x_activation_closed_form(xb) -> None:
    model = Linear2().double()
    x, _ = xb
    a = hooked(model, x, model.fc1)
    w = model.fc2.weight[2].detach()
    got = LayerGradientXActivation(model, model.fc1).attribute(x, 2)
    torch.testing.assert_close(got, w * a, rtol=0, atol=1e-14)
    grad_only = LayerGradientXActivation(model, model.fc1, multiply_by_inputs=False)
    torch.testing.assert_close(grad_only.attribute(x, 2), w.expand(5, -1), rtol=0, atol=1e-14)


def test_gradient_x_activation_list_of_layers_one_pass() -> None:
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)
    ).double()
    x = torch.randn(3, 4, dtype=F64)
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        up, down = LayerGradientXActivation(model, [model[0], model[2]]).attribute(x, 1)
    finally:
        handle.remove()
    assert len(forwards) == 1
    # by hand: the upstream layer's gradient flows through the downstream one
    a0 = model[0](x)
    a2 = model[2](model[1](a0))
    out = model[4](model[3](a2))[:, 1]
    g0, g2 = torch.autograd.grad(out.sum(), (a0, a2))
    torch.testing.assert_close(up, g0 * a0.detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(down, g2 * a2.detach(), rtol=0, atol=1e-14)


def test_layer_activation_equals_hooked_output(xb) -> None:
    model = MLP(4, 6, 2).double()
    x, _ = xb
    la = LayerActivation(model, model.fc2)
    torch.testing.assert_close(la.attribute(x), hooked(model, x, model.fc2), rtol=0, atol=0)
    many = LayerActivation(model, [model.relu, model.fc3]).attribute(x)
    assert isinstance(many, list)
    torch.testing.assert_close(many[0], hooked(model, x, model.relu), rtol=0, atol=0)
    torch.testing.assert_close(many[1], model(x).detach(), rtol=0, atol=0)
    as_input = LayerActivation(model, model.fc2).attribute(x, attribute_to_layer_input=True)
    torch.testing.assert_close(as_input, hooked(model, x, model.relu), rtol=0, atol=0)
    pair = PairNet().double()
    got = LayerActivation(pair, pair.split).attribute(x)
    assert isinstance(got, tuple)
    for g, w in zip(got, pair.split(pair.fc(x))):
        torch.testing.assert_close(g, w.detach(), rtol=0, atol=0)


# --- Grad-CAM -----------------------------------------------------------------------------------


def test_grad_cam_closed_form() -> None:
    model = SmallCNN().double()
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    target = torch.tensor([0, 3, 1])
    a = model.conv(x)
    out = model.fc(model.flatten(model.pool(model.relu(a))))
    (g,) = torch.autograd.grad(out[torch.arange(3), target].sum(), a)
    a = a.detach()
    per_channel = g.mean((2, 3), keepdim=True) * a
    cam = per_channel.sum(1, keepdim=True)
    gc = LayerGradCam(model, model.conv)
    torch.testing.assert_close(gc.attribute(x, target), cam, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        gc.attribute(x, target, relu_attributions=True), cam.clamp(min=0), rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        gc.attribute(x, target, attr_dim_summation=False), per_channel, rtol=0, atol=1e-14
    )
    assert (cam < 0).any() and (cam > 0).any()


def test_guided_grad_cam_is_guided_backprop_times_upsampled_cam() -> None:
    model = SmallCNN().double()
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    got = GuidedGradCam(model, model.conv).attribute(x, 2)
    assert got.shape == x.shape
    a = model.conv(x)
    out = model.fc(model.flatten(model.pool(model.relu(a))))
    (g,) = torch.autograd.grad(out[:, 2].sum(), a)
    cam = (g.mean((2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True).clamp(min=0)
    up = F.interpolate(cam, size=(8, 8), mode="nearest")
    want = GuidedBackprop(model).attribute(x, 2) * up
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    bilinear = GuidedGradCam(model, model.conv).attribute(x, 2, interpolate_mode="bilinear")
    up_b = F.interpolate(cam, size=(8, 8), mode="bilinear")
    torch.testing.assert_close(bilinear, GuidedBackprop(model).attribute(x, 2) * up_b)


# --- DeepLift -----------------------------------------------------------------------------------


@pytest.mark.parametrize("to_input", [False, True], ids=["output", "input"])
@pytest.mark.parametrize("layer_name", ["fc1", "relu", "fc2", "tanh"])
def test_layer_deeplift_completeness(xb, layer_name: str, to_input: bool) -> None:
    model = MLP(4, 7, 3).double()
    x, b = xb
    target = torch.tensor([0, 1, 2, 0, 1])
    attrs, delta = LayerDeepLift(model, getattr(model, layer_name)).attribute(
        x, b, target, return_convergence_delta=True, attribute_to_layer_input=to_input
    )
    want_gap = gap(model, x, b, target)
    torch.testing.assert_close(row_sum(attrs), want_gap, rtol=0, atol=1e-12)
    torch.testing.assert_close(delta, row_sum(attrs) - want_gap, rtol=0, atol=1e-13)


def test_layer_deeplift_equals_activation_difference_times_multiplier(xb) -> None:
    # f = W2 relu(a) + b2 with a = fc1(x): the rescale multiplier at a_j is
    # W2[t, j] (relu(a_j) - relu(a'_j)) / (a_j - a'_j)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, b = xb
    a_x, a_b = hooked(model, x, model[0]), hooked(model, b, model[0])
    w = model[2].weight[1].detach()
    mult = w * (a_x.relu() - a_b.relu()) / (a_x - a_b)
    local = LayerDeepLift(model, model[0], multiply_by_inputs=False).attribute(x, b, 1)
    torch.testing.assert_close(local, mult, rtol=0, atol=1e-13)
    glob = LayerDeepLift(model, model[0]).attribute(x, b, 1)
    torch.testing.assert_close(glob, (a_x - a_b) * mult, rtol=0, atol=1e-13)
    # the multiplier differs from the gradient somewhere (the rescale rule is at work)
    grad = w * (a_x > 0)
    assert not torch.allclose(local, grad)


def test_layer_deeplift_shap_is_mean_over_baselines(xb) -> None:
    model = MLP(4, 7, 3).double()
    x, _ = xb
    bases = torch.randn(3, 4, dtype=F64)
    got, delta = LayerDeepLiftShap(model, model.fc2).attribute(
        x, bases, 2, return_convergence_delta=True
    )
    single = LayerDeepLift(model, model.fc2)
    per_base = [single.attribute(x, bases[k : k + 1].expand(5, -1), 2) for k in range(3)]
    torch.testing.assert_close(got, torch.stack(per_base).mean(0), rtol=0, atol=1e-13)
    assert delta.shape == (15,)
    torch.testing.assert_close(delta, torch.zeros(15, dtype=F64), rtol=0, atol=1e-12)


# --- GradientShap -------------------------------------------------------------------------------


def test_layer_gradient_shap_linear_closed_form(xb) -> None:
    # stdevs=0 and one baseline: every draw gives W2[t] (a(x) - a(b)) whatever α
    model = Linear2().double()
    x, _ = xb
    base = torch.randn(1, 4, dtype=F64)
    got, delta = LayerGradientShap(model, model.fc1).attribute(
        x, base, n_samples=4, target=0, return_convergence_delta=True
    )
    want = model.fc2.weight[0].detach() * (model.fc1.weight.detach() @ (x - base).T).T
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    assert delta.shape == (20,)
    torch.testing.assert_close(delta, torch.zeros(20, dtype=F64), rtol=0, atol=1e-13)


def test_layer_gradient_shap_reproducible_with_seed(xb) -> None:
    model = MLP(4, 6, 2).double()
    x, _ = xb
    bases = torch.randn(4, 4, dtype=F64)
    lgs = LayerGradientShap(model, model.fc2)

    def run(seed: int) -> Tensor:
        # drawn as Captum draws: numpy's global generator and torch's
        np.random.seed(seed)
        torch.manual_seed(seed)
        return lgs.attribute(x, bases, n_samples=6, stdevs=0.3, target=1)

    first, again, other = run(3), run(3), run(4)
    assert first.shape == (5, 6)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    # or every random number from one generator
    mine = [lgs.attribute(x, bases, n_samples=6, stdevs=0.3, target=1, generator=s) for s in (5, 5)]
    torch.testing.assert_close(mine[0], mine[1], rtol=0, atol=0)
    assert not torch.allclose(mine[0], first)


def test_layer_gradient_shap_delta_is_per_draw_gap(xb) -> None:
    # f = W2 tanh(W1 x): at the linear layer the delta of a draw is the exact gap of that draw
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x, _ = xb
    base = torch.randn(1, 4, dtype=F64)
    _, delta = LayerGradientShap(model, model[1]).attribute(
        x, base, n_samples=2, target=1, return_convergence_delta=True
    )
    # tanh output space: f is linear after the layer, so each draw is complete
    torch.testing.assert_close(delta, torch.zeros(10, dtype=F64), rtol=0, atol=1e-13)
    _, delta_in = LayerGradientShap(model, model[0]).attribute(
        x, base, n_samples=2, target=1, return_convergence_delta=True
    )
    assert delta_in.abs().max() > 1e-6  # a single random point: not complete before the tanh


# --- perturbation at the layer ------------------------------------------------------------------


class Readout(nn.Module):
    """a = tanh(fc(x)) (the layer), f = W a + c."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.fc(x)))


def test_layer_feature_ablation_closed_form(xb) -> None:
    model = Readout().double()
    x, _ = xb
    a = hooked(model, x, model.act)
    w = model.head.weight[2].detach()
    lfa = LayerFeatureAblation(model, model.act)
    torch.testing.assert_close(lfa.attribute(x, target=2), w * a, rtol=0, atol=1e-14)
    # baseline 0.5: the drop is w_j (a_j - 0.5)
    torch.testing.assert_close(
        lfa.attribute(x, layer_baselines=0.5, target=2), w * (a - 0.5), rtol=0, atol=1e-14
    )
    # groups {0, 1}, {2}, {3, 4, 5}: every neuron of a group carries the group's drop
    mask = torch.tensor([[0, 0, 1, 2, 2, 2]])
    got = lfa.attribute(x, target=2, layer_mask=mask, perturbations_per_eval=2)
    contrib = w * a
    groups = [contrib[:, :2].sum(1), contrib[:, 2], contrib[:, 3:].sum(1)]
    want = torch.stack([groups[i] for i in mask[0].tolist()], 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_layer_feature_permutation(xb) -> None:
    model = Readout().double()
    x, _ = xb
    lfp = LayerFeaturePermutation(model, model.act)
    first = lfp.attribute(x, target=0, generator=11)
    assert first.shape == (5, 6)
    torch.testing.assert_close(lfp.attribute(x, target=0, generator=11), first, rtol=0, atol=0)
    assert not torch.equal(lfp.attribute(x, target=0, generator=12), first)
    # linear readout: neuron j's attribution of example i is w_j (a_ij - a_π(i)j), which sums
    # to zero over the batch for any permutation; and it is w_j times a difference of two
    # activations of the batch
    w = model.head.weight[0].detach()
    a = hooked(model, x, model.act)
    torch.testing.assert_close(first.sum(0), torch.zeros(6, dtype=F64), rtol=0, atol=1e-14)
    diffs = a[:, None, :] - a[None, :, :]  # (i, k, j): a_ij - a_kj
    assert (((first[:, None, :] / w) - diffs).abs().amin(1) < 1e-12).all()
    grouped = lfp.attribute(x, target=0, layer_mask=torch.tensor([[0, 0, 0, 1, 1, 1]]))
    assert torch.equal(grouped[:, 0], grouped[:, 1]) and torch.equal(grouped[:, 3], grouped[:, 5])


# --- LRP ----------------------------------------------------------------------------------------


def test_layer_lrp_conservation_on_bias_free_relu_net() -> None:
    model = nn.Sequential(
        nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 6, bias=False), nn.ReLU(),
        nn.Linear(6, 3, bias=False),
    ).double()  # fmt: skip
    x = torch.randn(4, 5, dtype=F64)
    out = out_at(model, x, 1)
    layers = [model[0], model[1], model[2], model[3], model[4]]
    rel, deltas = LayerLRP(model, layers).attribute(x, 1, return_convergence_delta=True)
    assert isinstance(rel, list) and len(rel) == 5
    for layer, r, d in zip(layers, rel, deltas):
        torch.testing.assert_close(row_sum(r), out, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(d, out - row_sum(r), rtol=0, atol=1e-12)
        alone = LayerLRP(model, layer).attribute(x, 1)
        torch.testing.assert_close(alone, r, rtol=0, atol=1e-13)
    # at the last layer the relevance is the output itself, split by class
    torch.testing.assert_close(rel[4][:, 1], out, rtol=0, atol=1e-12)
    assert torch.equal(rel[4][:, 0], torch.zeros(4, dtype=F64))
    # the relevance arriving at the first layer's input is LRP's input relevance
    inp = LayerLRP(model, model[0]).attribute(x, 1, attribute_to_layer_input=True)
    torch.testing.assert_close(row_sum(inp), out, rtol=1e-7, atol=1e-10)
    # epsilon rule, bias-free, on the first linear layer: R_i = x_i Σ_j w_ji R_j / z_j
    z = model[0](x).detach()
    by_hand = x * ((rel[0] / z) @ model[0].weight.detach())
    torch.testing.assert_close(inp, by_hand, rtol=1e-7, atol=1e-10)


# --- devices ------------------------------------------------------------------------------------


def test_layer_methods_on_device(device: str) -> None:
    model = Smooth().to(device=device, dtype=F64)
    x = torch.randn(5, 4, dtype=F64, device=device)
    b = torch.randn(5, 4, dtype=F64, device=device)
    target = torch.tensor([0, 1, 2, 2, 1], device=device)
    want_gap = gap(model, x, b, target)
    attrs, delta = LayerIntegratedGradients(model, [model.fc1, model.act2]).attribute(
        x, b, target, n_steps=40, internal_batch_size=64, return_convergence_delta=True,
        layers_jointly=False,
    )  # fmt: skip
    for a, d in zip(attrs, delta):
        assert a.device == x.device and d.device == x.device
        torch.testing.assert_close(row_sum(a), want_gap, rtol=0, atol=1e-10)
    cond, d = LayerConductance(model, model.fc2).attribute(
        x, b, target, n_steps=200, internal_batch_size=300, return_convergence_delta=True
    )
    assert cond.device == x.device
    torch.testing.assert_close(row_sum(cond), want_gap, rtol=0, atol=1e-5)
    dl = LayerDeepLift(model, model.fc2).attribute(x, b, target)
    torch.testing.assert_close(row_sum(dl), want_gap, rtol=0, atol=1e-10)
    ixg = LayerGradientXActivation(model, model.fc2).attribute(x, target)
    assert ixg.device == x.device
