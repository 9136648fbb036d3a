"""Neuron attribution: each method is its primary algorithm applied to "inputs → the neuron's
value", checked against that value computed by hand (autograd, completeness, closed forms,
wrapper models), for every neuron_selector form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from llmattr import (
    Deconvolution,
    DeepLift,
    GuidedBackprop,
    IntegratedGradients,
    NeuronConductance,
    NeuronDeconvolution,
    NeuronDeepLift,
    NeuronDeepLiftShap,
    NeuronFeatureAblation,
    NeuronGradient,
    NeuronGradientShap,
    NeuronGuidedBackprop,
    NeuronIntegratedGradients,
)

F64 = torch.float64


class Net(nn.Module):
    """Linear → ReLU → Linear → Tanh → Linear → ReLU → Linear (ReLUs before and after ``fc2``)."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu1 = act()
        self.fc2 = nn.Linear(6, 5)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(5, 4)
        self.relu2 = nn.ReLU()
        self.fc4 = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(self.relu1(self.fc1(x)))
        return self.fc4(self.relu2(self.fc3(self.tanh(h))))

    def fc2_out(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu1(self.fc1(x)))


class Conv(nn.Module):
    """Conv → Tanh → Conv → Flatten → Linear: a 4-D layer activation (N, 3, 4, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(2, 3, 3)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flat(self.conv2(self.act(self.conv1(x)))))


@pytest.fixture
def net() -> Net:
    return Net().to(F64)


@pytest.fixture
def smooth_net() -> Net:
    return Net(nn.Tanh).to(F64)


def grad_by_hand(value_fn, x: Tensor) -> Tensor:
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(value_fn(xg).sum(), xg)
    return g


# selectors on the conv activation (N, 3, 4, 4) and the neuron value each selects
CONV_SELECTORS = {
    "tuple": ((1, 2, 3), lambda a: a[:, 1, 2, 3]),
    "negative": ((-1, 0, -2), lambda a: a[:, 2, 0, 2]),
    "slices": ((slice(0, 2), 1, slice(None)), lambda a: a[:, 0:2, 1, :].sum((1, 2))),
    "callable": (lambda a: (a[:, 0] * a[:, 1]).mean((1, 2)), None),
}


# --- NeuronGradient -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONV_SELECTORS))
def test_neuron_gradient_equals_autograd(name: str) -> None:
    model = Conv().double()
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    selector, pick = CONV_SELECTORS[name]
    pick = pick or selector
    got = NeuronGradient(model, model.conv2).attribute(x, selector)
    want = grad_by_hand(lambda v: pick(model.conv2(model.act(model.conv1(v)))), x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_neuron_gradient_int_selector_and_layer_input(net: Net, xb) -> None:
    x, _ = xb
    got = NeuronGradient(net, net.fc2).attribute(x, 3)
    torch.testing.assert_close(
        got, grad_by_hand(lambda v: net.fc2_out(v)[:, 3], x), atol=1e-14, rtol=0
    )
    # neuron 2 of fc2's input is neuron 2 of relu1's output
    as_input = NeuronGradient(net, net.fc2).attribute(x, 2, attribute_to_neuron_input=True)
    via_relu = NeuronGradient(net, net.relu1).attribute(x, 2)
    torch.testing.assert_close(as_input, via_relu, rtol=0, atol=0)
    want = grad_by_hand(lambda v: net.relu1(net.fc1(v))[:, 2], x)
    torch.testing.assert_close(as_input, want, rtol=0, atol=1e-14)


def test_neuron_gradient_tuple_inputs_and_extra_args() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 4)
            self.mix = nn.Tanh()
            self.out = nn.Linear(4, 1)

        def forward(self, x1: Tensor, x2: Tensor, scale: Tensor) -> Tensor:
            return self.out(self.mix(self.a(x1) * scale[:, None] + self.b(x2)))

    model = Two().double()
    x1, x2 = torch.randn(4, 3, dtype=F64), torch.randn(4, 2, dtype=F64)
    scale = torch.rand(4, dtype=F64) + 0.5
    g1, g2 = NeuronGradient(model, model.mix).attribute((x1, x2), 1, scale)
    v1, v2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    value = model.mix(model.a(v1) * scale[:, None] + model.b(v2))[:, 1]
    w1, w2 = torch.autograd.grad(value.sum(), (v1, v2))
    torch.testing.assert_close(g1, w1, rtol=0, atol=1e-14)
    torch.testing.assert_close(g2, w2, rtol=0, atol=1e-14)


# --- NeuronIntegratedGradients ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONV_SELECTORS))
def test_neuron_ig_completeness(name: str) -> None:
    model = Conv().double()
    x, b = torch.randn(3, 1, 8, 8, dtype=F64), torch.randn(3, 1, 8, 8, dtype=F64)
    selector, pick = CONV_SELECTORS[name]
    pick = pick or selector

    def value(v: Tensor) -> Tensor:
        return pick(model.conv2(model.act(model.conv1(v)))).detach()

    got = NeuronIntegratedGradients(model, model.conv2).attribute(x, selector, b, n_steps=40)
    torch.testing.assert_close(got.reshape(3, -1).sum(1), value(x) - value(b), rtol=0, atol=1e-11)


def test_neuron_ig_is_ig_of_the_neuron_value(smooth_net: Net, xb) -> None:
    x, b = xb
    n = smooth_net
    for chunk in (None, 3):
        got = NeuronIntegratedGradients(n, n.fc2).attribute(
            x, (slice(1, 4),), b, n_steps=8, method="riemann_middle", internal_batch_size=chunk
        )
        want = IntegratedGradients(lambda v: n.fc2_out(v)[:, 1:4].sum(1)).attribute(
            x, b, n_steps=8, method="riemann_middle"
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    local = NeuronIntegratedGradients(n, n.fc2, multiply_by_inputs=False).attribute(
        x, (slice(1, 4),), b, n_steps=8, method="riemann_middle"
    )
    torch.testing.assert_close(local * (x - b), want, rtol=0, atol=1e-14)


# --- NeuronConductance --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre"])
def test_neuron_conductance_over_all_neurons_is_ig(net: Net, xb, method: str) -> None:
    x, b = xb
    target = torch.tensor([0, 2, 1, 1, 0])
    nc = NeuronConductance(net, net.fc2)
    ig = IntegratedGradients(net).attribute(x, b, target, n_steps=12, method=method)
    each = [nc.attribute(x, j, b, target, n_steps=12, method=method) for j in range(5)]
    torch.testing.assert_close(sum(each), ig, rtol=0, atol=1e-13)
    everything = nc.attribute(x, (slice(None),), b, target, n_steps=12, method=method)
    torch.testing.assert_close(everything, ig, rtol=0, atol=1e-13)
    # a part of the layer is a part of the total
    part = nc.attribute(x, (slice(0, 2),), b, target, n_steps=12, method=method)
    torch.testing.assert_close(part, each[0] + each[1], rtol=0, atol=1e-13)
    assert not torch.allclose(part, ig)


def test_neuron_conductance_by_hand(smooth_net: Net, xb) -> None:
    # (x - b) Σ_k w_k ∂f/∂y_j · ∂y_j/∂x at the trapezoid nodes
    x, b = xb
    n_steps = 5
    total = torch.zeros_like(x)
    for k in range(n_steps):
        alpha = k / (n_steps - 1)
        w = (0.5 if k in (0, n_steps - 1) else 1.0) / (n_steps - 1)
        v = (b + alpha * (x - b)).requires_grad_()
        y = smooth_net.fc2_out(v)
        out = smooth_net.fc4(smooth_net.relu2(smooth_net.fc3(smooth_net.tanh(y))))[:, 1]
        (d_out,) = torch.autograd.grad(out.sum(), y, retain_graph=True)
        (g,) = torch.autograd.grad((y[:, 3] * d_out[:, 3].detach()).sum(), v)
        total += w * g
    got = NeuronConductance(smooth_net, smooth_net.fc2).attribute(x, 3, b, 1, n_steps=n_steps)
    torch.testing.assert_close(got, total * (x - b), rtol=0, atol=1e-14)
    local = NeuronConductance(smooth_net, smooth_net.fc2, multiply_by_inputs=False)
    torch.testing.assert_close(
        local.attribute(x, 3, b, 1, n_steps=n_steps), total, rtol=0, atol=1e-14
    )
    chunked = NeuronConductance(smooth_net, smooth_net.fc2).attribute(
        x, 3, b, 1, n_steps=n_steps, internal_batch_size=4
    )
    torch.testing.assert_close(chunked, got, rtol=0, atol=1e-14)


def test_neuron_conductance_to_neuron_input(net: Net, xb) -> None:
    x, b = xb
    got = NeuronConductance(net, net.fc2).attribute(
        x, 2, b, 1, n_steps=6, attribute_to_neuron_input=True
    )
    want = NeuronConductance(net, net.relu1).attribute(x, 2, b, 1, n_steps=6)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    ig_got = NeuronIntegratedGradients(net, net.fc2).attribute(
        x, (slice(0, 3),), b, n_steps=6, attribute_to_neuron_input=True
    )
    ig_want = NeuronIntegratedGradients(net, net.relu1).attribute(x, (slice(0, 3),), b, n_steps=6)
    torch.testing.assert_close(ig_got, ig_want, rtol=0, atol=0)


def test_neuron_methods_on_device(device: str) -> None:
    n = Net(nn.Tanh).to(device=device, dtype=F64)
    x = torch.randn(5, 4, dtype=F64, device=device)
    b = torch.randn(5, 4, dtype=F64, device=device)
    with torch.no_grad():
        y = n.fc2_out(x)[:, 1] - n.fc2_out(b)[:, 1]
    ig = NeuronIntegratedGradients(n, n.fc2).attribute(x, 1, b, n_steps=40)
    assert ig.device == x.device
    torch.testing.assert_close(ig.sum(1), y, rtol=0, atol=1e-11)
    dl = NeuronDeepLift(n, n.fc2).attribute(x, 1, b)
    torch.testing.assert_close(dl.sum(1), y, rtol=0, atol=1e-11)
    target = torch.tensor([0, 1, 2, 0, 1], device=device)
    everything = NeuronConductance(n, n.fc2).attribute(x, (slice(None),), b, target, n_steps=8)
    ig_out = IntegratedGradients(n).attribute(x, b, target, n_steps=8, method="riemann_trapezoid")
    torch.testing.assert_close(everything, ig_out, rtol=0, atol=1e-13)


def test_neuron_conductance_accepts_callable(net: Net, xb) -> None:
    # as Captum (which warns): a callable picking one neuron is that neuron; one summing neurons
    # gives the sum of their conductances, like the slice selector
    x, b = xb
    nc = NeuronConductance(net, net.fc2)
    with pytest.warns(UserWarning, match="callable"):
        one = nc.attribute(x, lambda a: a[:, 3], b, 0, n_steps=6)
    torch.testing.assert_close(one, nc.attribute(x, 3, b, 0, n_steps=6), rtol=0, atol=1e-14)
    with pytest.warns(UserWarning, match="callable"):
        two = nc.attribute(x, lambda a: a[:, 1:3].sum(1), b, 0, n_steps=6)
    parts = nc.attribute(x, 1, b, 0, n_steps=6) + nc.attribute(x, 2, b, 0, n_steps=6)
    torch.testing.assert_close(two, parts, rtol=0, atol=1e-13)
    torch.testing.assert_close(
        nc.attribute(x, (slice(1, 3),), b, 0, n_steps=6), parts, rtol=0, atol=1e-13
    )


# --- DeepLift -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "selector", "pick"),
    [
        ("fc2", 1, lambda n, v: n.fc2_out(v)[:, 1]),
        ("fc3", (slice(0, 3),), lambda n, v: n.fc3(n.tanh(n.fc2_out(v)))[:, :3].sum(1)),
        ("relu2", lambda a: a[:, 0] - a[:, 2],
         lambda n, v: (lambda a: a[:, 0] - a[:, 2])(n.relu2(n.fc3(n.tanh(n.fc2_out(v)))))),
    ],
    ids=["int", "slice", "callable"],
)  # fmt: skip
def test_neuron_deeplift_completeness(net: Net, xb, layer: str, selector, pick) -> None:
    x, b = xb
    got = NeuronDeepLift(net, getattr(net, layer)).attribute(x, selector, b)
    with torch.no_grad():
        want = pick(net, x) - pick(net, b)
    torch.testing.assert_close(got.sum(1), want, rtol=0, atol=1e-12)


def test_neuron_deeplift_closed_form(xb) -> None:
    # y = fc2(relu(fc1 x)): the rescale multiplier of x is W1^T (W2[j] * Δrelu / Δz)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU()).double()
    x, b = xb
    z_x, z_b = model[0](x).detach(), model[0](b).detach()
    ratio = (z_x.relu() - z_b.relu()) / (z_x - z_b)
    mult = (model[2].weight[2].detach() * ratio) @ model[0].weight.detach()
    local = NeuronDeepLift(model, model[2], multiply_by_inputs=False).attribute(x, 2, b)
    torch.testing.assert_close(local, mult, rtol=0, atol=1e-13)
    glob = NeuronDeepLift(model, model[2]).attribute(x, 2, b)
    torch.testing.assert_close(glob, mult * (x - b), rtol=0, atol=1e-13)


def test_neuron_deeplift_is_deeplift_of_a_wrapper(net: Net, xb) -> None:
    class UpToFc2(nn.Module):
        def __init__(self, n: Net) -> None:
            super().__init__()
            self.fc1, self.relu1, self.fc2 = n.fc1, n.relu1, n.fc2

        def forward(self, v: Tensor) -> Tensor:
            return self.fc2(self.relu1(self.fc1(v)))[:, 4]

    x, b = xb
    got = NeuronDeepLift(net, net.fc2).attribute(x, 4, b)
    want = DeepLift(UpToFc2(net)).attribute(x, b)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_neuron_deeplift_shap_is_mean_over_baselines(net: Net, xb) -> None:
    x, _ = xb
    bases = torch.randn(3, 4, dtype=F64)
    got = NeuronDeepLiftShap(net, net.fc3).attribute(x, 0, bases)
    single = NeuronDeepLift(net, net.fc3)
    want = torch.stack(
        [single.attribute(x, 0, bases[k : k + 1].expand(5, -1)) for k in range(3)]
    ).mean(0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    # each term is complete, so the mean sums to y(x) - mean_k y(b_k)
    with torch.no_grad():
        y_x = net.fc3(net.tanh(net.fc2_out(x)))[:, 0]
        y_b = net.fc3(net.tanh(net.fc2_out(bases)))[:, 0]
    torch.testing.assert_close(got.sum(1), y_x - y_b.mean(), rtol=0, atol=1e-12)


# --- GradientShap -------------------------------------------------------------------------------


def test_neuron_gradient_shap_linear_closed_form(net: Net, xb) -> None:
    # y = fc1(x)[:, 2] is linear: every draw gives W1[2] * (x - b)
    x, _ = xb
    base = torch.randn(1, 4, dtype=F64)
    got = NeuronGradientShap(net, net.fc1).attribute(x, 2, base, n_samples=4)
    want = net.fc1.weight[2].detach() * (x - base)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    local = NeuronGradientShap(net, net.fc1, multiply_by_inputs=False)
    torch.testing.assert_close(
        local.attribute(x, 2, base, n_samples=3),
        net.fc1.weight[2].detach().expand(5, -1),
        rtol=0,
        atol=1e-14,
    )


def test_neuron_gradient_shap_seeded(net: Net, xb) -> None:
    x, _ = xb
    bases = torch.randn(4, 4, dtype=F64)
    ngs = NeuronGradientShap(net, net.fc2)

    def run(seed: int) -> Tensor:
        # GradientShap draws as Captum does: baselines and α from numpy, noise from torch
        np.random.seed(seed)
        torch.manual_seed(seed)
        return ngs.attribute(x, (slice(0, 3),), bases, n_samples=5, stdevs=0.2)

    first = run(1)
    torch.testing.assert_close(run(1), first, rtol=0, atol=0)
    assert not torch.allclose(run(2), first)


# --- guided backprop / deconvolution ------------------------------------------------------------


class Wrapper(nn.Module):
    """Returns neuron 3 of ``net.fc2`` using the very same modules (so the same ReLUs)."""

    def __init__(self, n: Net) -> None:
        super().__init__()
        self.fc1, self.relu1, self.fc2 = n.fc1, n.relu1, n.fc2

    def forward(self, v: Tensor) -> Tensor:
        return self.fc2(self.relu1(self.fc1(v)))[:, 3:4]


@pytest.mark.parametrize(
    ("neuron_cls", "plain_cls"),
    [(NeuronGuidedBackprop, GuidedBackprop), (NeuronDeconvolution, Deconvolution)],
)
def test_neuron_backprop_rules_equal_wrapper(net: Net, neuron_cls, plain_cls) -> None:
    x = torch.randn(8, 4, dtype=F64)
    got = neuron_cls(net, net.fc2).attribute(x, 3)
    want = plain_cls(Wrapper(net)).attribute(x, target=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    # the rule changed something: it is not the plain gradient
    plain = NeuronGradient(net, net.fc2).attribute(x, 3)
    assert not torch.allclose(got, plain)


def test_neuron_guided_backprop_selector_forms(net: Net) -> None:
    class SumOf12(Wrapper):
        def forward(self, v: Tensor) -> Tensor:
            return self.fc2(self.relu1(self.fc1(v)))[:, 1:3].sum(1, keepdim=True)

    x = torch.randn(6, 4, dtype=F64)
    gb = NeuronGuidedBackprop(net, net.fc2)
    want = GuidedBackprop(SumOf12(net)).attribute(x, target=0)
    torch.testing.assert_close(gb.attribute(x, (slice(1, 3),)), want, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        gb.attribute(x, lambda a: a[:, 1] + a[:, 2]), want, rtol=0, atol=1e-14
    )
    # the rule rectifies gradients, so it is not additive over neurons
    assert not torch.allclose(want, gb.attribute(x, 1) + gb.attribute(x, 2))


# --- FeatureAblation ----------------------------------------------------------------------------


def test_neuron_feature_ablation_closed_form(net: Net, xb) -> None:
    # y = W1[j] · x + b1[j]: ablating x_i to 0 drops W1[j, i] x_i
    x, _ = xb
    w = net.fc1.weight[4].detach()
    nfa = NeuronFeatureAblation(net, net.fc1)
    torch.testing.assert_close(nfa.attribute(x, 4), w * x, rtol=0, atol=1e-14)
    base = torch.randn(1, 4, dtype=F64)
    torch.testing.assert_close(nfa.attribute(x, 4, base), w * (x - base), rtol=0, atol=1e-14)
    mask = torch.tensor([[0, 1, 1, 0]])
    got = nfa.attribute(x, 4, feature_mask=mask, perturbations_per_eval=2)
    g0, g1 = (w * x)[:, [0, 3]].sum(1), (w * x)[:, [1, 2]].sum(1)
    torch.testing.assert_close(got, torch.stack([g0, g1, g1, g0], 1), rtol=0, atol=1e-14)


def test_neuron_feature_ablation_nonlinear_neuron(net: Net, xb) -> None:
    x, _ = xb

    def y(v: Tensor) -> Tensor:
        with torch.no_grad():
            return net.fc3(net.tanh(net.fc2_out(v)))[:, 1]

    got = NeuronFeatureAblation(net, net.fc3).attribute(x, 1, attribute_to_neuron_input=False)
    for i in range(4):
        ablated = x.clone()
        ablated[:, i] = 0
        torch.testing.assert_close(got[:, i], y(x) - y(ablated), rtol=0, atol=1e-14)
