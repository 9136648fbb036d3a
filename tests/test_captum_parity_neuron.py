"""Neuron methods against Captum 0.9 on the same model and inputs (float64): values, shapes,
dtypes and return types for every selector form Captum accepts, ``multiply_by_inputs`` in both
settings, and the errors Captum raises for invalid selectors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402
from llmattr._core.errors import InputError  # noqa: E402

F64 = torch.float64


class Pair(nn.Module):
    """A layer returning a tuple of two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(9, 5)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        y = self.lin(v)
        return y, 2 * y


class Net(nn.Module):
    """fc1 (B, 8) → ReLU → conv (B, 3, 3) → Tanh → pair (tuple) → ReLU → fc2 (B, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.relu1 = nn.ReLU()
        self.conv = nn.Conv1d(2, 3, 2)
        self.tanh = nn.Tanh()
        self.pair = Pair()
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.fc1(x))
        c = self.tanh(self.conv(h.view(-1, 2, 4)))
        p, q = self.pair(c.flatten(1))
        return self.fc2(self.relu2(p - q / 4))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().to(F64)


@pytest.fixture
def x() -> Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 4, dtype=F64)


def assert_same(got, want, atol: float = 1e-10) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w, atol)
        return
    assert isinstance(got, Tensor) and got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want.detach(), rtol=1e-7, atol=atol)


# selectors Captum accepts for gradient methods, as (layer, selector)
SELECTORS = {
    "int_2d": ("fc1", 3),
    "tuple": ("conv", (1, 2)),
    "negative": ("conv", (-1, 0)),
    "slices": ("conv", (slice(0, 2), slice(1, 3))),
    "short_with_slice": ("conv", (slice(0, 2),)),  # padded with a full slice, as Captum pads
    "callable": ("conv", lambda a: a[:, 2, 1]),
    "callable_scalar": ("conv", lambda a: a[:, 2, 1].sum()),
    "callable_tuple_layer": ("pair", lambda t: t[1][:, 2] - t[0][:, 4]),
}


def layer_of(net: Net, name: str) -> nn.Module:
    return getattr(net, name)


def both(name: str, net: Net, *args, **kwargs):
    """(Captum's method, ours), each on its own copy of the model."""
    a, b = copy.deepcopy(net), copy.deepcopy(net)
    layer = args[0]
    return (
        getattr(captum_attr, name)(a, layer_of(a, layer), *args[1:], **kwargs),
        getattr(llmattr, name)(b, layer_of(b, layer), *args[1:], **kwargs),
    )


@pytest.mark.parametrize("sel", list(SELECTORS))
@pytest.mark.parametrize(
    "name", ["NeuronGradient", "NeuronGuidedBackprop", "NeuronDeconvolution"]
)
def test_gradient_family(name: str, sel: str, net: Net, x: Tensor) -> None:
    layer, selector = SELECTORS[sel]
    theirs, ours = both(name, net, layer)
    assert_same(ours.attribute(x, selector), theirs.attribute(x, selector))
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs


@pytest.mark.parametrize("sel", ["int_2d", "tuple", "slices", "callable", "callable_tuple_layer"])
@pytest.mark.parametrize("mult", [True, False])
def test_integrated_gradients(sel: str, mult: bool, net: Net, x: Tensor) -> None:
    layer, selector = SELECTORS[sel]
    theirs, ours = both("NeuronIntegratedGradients", net, layer, multiply_by_inputs=mult)
    b = torch.randn(1, 4, dtype=F64)
    kw = dict(baselines=b, n_steps=20, method="gausslegendre")
    assert_same(ours.attribute(x, selector, **kw), theirs.attribute(x, selector, **kw))
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs == mult


def test_integrated_gradients_to_neuron_input_and_tuple_inputs(net: Net) -> None:
    class Two(nn.Module):
        def __init__(self, inner: Net) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, a: Tensor, b: Tensor, scale: float) -> Tensor:
            return self.inner(a * scale + b)

    model = Two(net)
    xs = (torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64))
    want = captum_attr.NeuronIntegratedGradients(model, model.inner.conv).attribute(
        xs, (0, 1), additional_forward_args=(0.5,), n_steps=10, attribute_to_neuron_input=True
    )
    got = llmattr.NeuronIntegratedGradients(model, model.inner.conv).attribute(
        xs, (0, 1), additional_forward_args=(0.5,), n_steps=10, attribute_to_neuron_input=True
    )
    assert_same(got, want)


@pytest.mark.parametrize("sel", ["int_2d", "tuple", "callable"])
@pytest.mark.parametrize("mult", [True, False])
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left"])
def test_conductance(sel: str, mult: bool, method: str, net: Net, x: Tensor) -> None:
    layer, selector = SELECTORS[sel]
    theirs, ours = both("NeuronConductance", net, layer, multiply_by_inputs=mult)
    kw = dict(baselines=0.1, target=2, n_steps=12, method=method)
    with pytest.warns(UserWarning) if callable(selector) else _nothing():
        want = theirs.attribute(x, selector, **kw)
    with pytest.warns(UserWarning) if callable(selector) else _nothing():
        got = ours.attribute(x, selector, **kw)
    assert_same(got, want)
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs == mult


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_conductance_trapezoid_weights_sum_to_one_where_captum_loses_a_step() -> None:
    # On a linear model the integrand is constant, so any rule whose weights sum to 1 gives the
    # exact f(x) - f(x') when summed over every neuron of a layer that all paths cross. Captum's
    # riemann_trapezoid weights sum to (n - 1) / n; ours (the trapezoid rule on n points) to 1.
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)).to(F64)
    x, n = torch.randn(3, 4, dtype=F64), 10
    gap = (model(x) - model(torch.zeros_like(x)))[:, 1].detach()
    ours = llmattr.NeuronConductance(model, model[0])
    total_ours = sum(
        ours.attribute(x, j, target=1, n_steps=n, method="riemann_trapezoid").sum(1)
        for j in range(5)
    )
    m2 = copy.deepcopy(model)
    theirs = captum_attr.NeuronConductance(m2, m2[0])
    total_theirs = sum(
        theirs.attribute(x, j, target=1, n_steps=n, method="riemann_trapezoid").sum(1)
        for j in range(5)
    )
    torch.testing.assert_close(total_ours, gap, rtol=0, atol=1e-12)
    # (Captum's step sizes are float32)
    torch.testing.assert_close(total_theirs, gap * (n - 1) / n, rtol=1e-6, atol=1e-12)


def test_conductance_slices_sum_per_neuron_conductances(net: Net, x: Tensor) -> None:
    # with slices, ours is the sum of the selected neurons' conductances; Captum multiplies the
    # summed output gradient by the summed neuron gradient, which is not
    ours = llmattr.NeuronConductance(net, net.fc1)
    kw = dict(baselines=0.0, target=0, n_steps=8, method="gausslegendre")
    parts = sum(ours.attribute(x, j, **kw) for j in range(2, 5))
    torch.testing.assert_close(ours.attribute(x, (slice(2, 5),), **kw), parts, rtol=0, atol=1e-12)
    m = copy.deepcopy(net)
    theirs = captum_attr.NeuronConductance(m, m.fc1).attribute(x, (slice(2, 5),), **kw)
    assert not torch.allclose(theirs, parts, atol=1e-6)


@pytest.mark.parametrize("sel", ["int_2d", "tuple", "slices", "callable", "callable_tuple_layer"])
@pytest.mark.parametrize("mult", [True, False])
@pytest.mark.parametrize("name", ["NeuronDeepLift", "NeuronDeepLiftShap"])
def test_deeplift(name: str, sel: str, mult: bool, net: Net, x: Tensor) -> None:
    layer, selector = SELECTORS[sel]
    theirs, ours = both(name, net, layer, multiply_by_inputs=mult)
    b = torch.randn(1 if name == "NeuronDeepLift" else 4, 4, dtype=F64)
    assert_same(ours.attribute(x, selector, b), theirs.attribute(x, selector, b), atol=1e-9)
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs == mult


@pytest.mark.parametrize("mult", [True, False])
def test_gradient_shap_deterministic_case(mult: bool, net: Net, x: Tensor) -> None:
    # the neuron of fc1 is linear in the input and there is one baseline without noise, so the
    # random path points do not matter and both libraries are deterministic
    theirs, ours = both("NeuronGradientShap", net, "fc1", multiply_by_inputs=mult)
    b = torch.randn(1, 4, dtype=F64)
    assert_same(ours.attribute(x, 5, b, n_samples=3), theirs.attribute(x, 5, b, n_samples=3))
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs == mult


@pytest.mark.parametrize(
    "sel", ["int_2d", "tuple", "slices", "callable", "callable_scalar", "callable_tuple_layer"]
)
def test_feature_ablation(sel: str, net: Net, x: Tensor) -> None:
    layer, selector = SELECTORS[sel]
    theirs, ours = both("NeuronFeatureAblation", net, layer)
    mask = torch.tensor([[0, 1, 1, 2]])
    # (one scalar for the whole batch: one perturbation per forward, see FeatureAblation)
    kw = dict(baselines=0.3, feature_mask=mask, perturbations_per_eval=1 if "scalar" in sel else 2)
    assert_same(ours.attribute(x, selector, **kw), theirs.attribute(x, selector, **kw))
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs


# --- selector errors ----------------------------------------------------------------------------


ERRORS = {
    "too_long": ("conv", (1, 1, 1), AssertionError),
    "int_on_tuple_layer": ("pair", 1, AssertionError),
    "out_of_range": ("conv", (5, 1), IndexError),
}


@pytest.mark.parametrize("case", list(ERRORS))
@pytest.mark.parametrize(
    "name",
    ["NeuronGradient", "NeuronIntegratedGradients", "NeuronGuidedBackprop", "NeuronDeepLift",
     "NeuronFeatureAblation", "NeuronConductance"],
)  # fmt: skip
def test_selector_errors_as_captum(name: str, case: str, net: Net, x: Tensor) -> None:
    layer, selector, error = ERRORS[case]
    theirs, ours = both(name, net, layer)
    kw = {"target": 0} if name == "NeuronConductance" else {}
    with pytest.raises(error):
        theirs.attribute(x, selector, **kw)
    with pytest.raises(error) as caught:
        ours.attribute(x, selector, **kw)
    if error is AssertionError:
        assert isinstance(caught.value, InputError)  # also a ValueError


@pytest.mark.parametrize("mult", [True, False])
def test_gradient_shap_seeded_as_captum(mult: bool, net: Net, x: Tensor) -> None:
    # random baselines, noise and path points: seeding numpy and torch alike, both draw the same
    theirs, ours = both("NeuronGradientShap", net, "conv", multiply_by_inputs=mult)
    bases = torch.randn(4, 4, dtype=F64)
    kw = dict(n_samples=6, stdevs=0.1)
    np.random.seed(3)
    torch.manual_seed(3)
    want = theirs.attribute(x, (1, slice(0, 2)), bases, **kw)
    np.random.seed(3)
    torch.manual_seed(3)
    got = ours.attribute(x, (1, slice(0, 2)), bases, **kw)
    assert_same(got, want)


# --- where Captum refuses a selector and we extend it ---------------------------------------------


def test_short_tuple_without_slice_is_padded_and_summed(net: Net, x: Tensor) -> None:
    # Captum pads (1,) to (1, :) on the (B, 3, 3) activation, keeps (B, 3) values and then cannot
    # differentiate them (RuntimeError); we sum the kept values per example, as for slices
    m = copy.deepcopy(net)
    with pytest.raises(RuntimeError):
        captum_attr.NeuronGradient(m, m.conv).attribute(x, (1,))
    ours = llmattr.NeuronGradient(net, net.conv)
    assert_same(ours.attribute(x, (1,)), ours.attribute(x, (1, slice(None))))
    assert_same(ours.attribute(x, 1), ours.attribute(x, lambda a: a[:, 1].sum(1)))


def test_callable_returning_several_values_per_example_is_summed(net: Net, x: Tensor) -> None:
    m = copy.deepcopy(net)
    with pytest.raises(RuntimeError):
        captum_attr.NeuronGradient(m, m.conv).attribute(x, lambda a: a[:, 0])
    ours = llmattr.NeuronGradient(net, net.conv)
    assert_same(ours.attribute(x, lambda a: a[:, 0]), ours.attribute(x, (0, slice(None))))
    nfa = llmattr.NeuronFeatureAblation(net, net.conv)
    assert_same(nfa.attribute(x, lambda a: a[:, 0]), nfa.attribute(x, (0,)))


@pytest.mark.parametrize(
    "selector",
    [lambda a: a[:2, 0, 0], lambda a: 1.0],
    ids=["wrong_batch", "not_a_tensor"],
)
def test_invalid_callable_result_is_an_input_error(selector, net: Net, x: Tensor) -> None:
    with pytest.raises(InputError, match="neuron_selector"):
        llmattr.NeuronGradient(net, net.conv).attribute(x, selector)
