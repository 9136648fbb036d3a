"""Where llmattr's layer and IG numbers deliberately differ from Captum 0.9's: each test computes
Captum's value too and shows the property (weights summing to 1, completeness, convergence)
that Captum's breaks and llmattr's keeps. The README's "Deliberate differences from Captum"
table points here.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")

from test_captum_parity_layer import MLP  # noqa: E402

import llmattr  # noqa: E402
from llmattr.attr.integrated_gradients import step_rule  # noqa: E402

F64 = torch.float64

pytestmark = pytest.mark.filterwarnings("ignore")


class Skip(nn.Module):
    """``fc2(tanh(fc1(x))) + skip(x)``: the skip route bypasses fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        self.skip = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) + self.skip(x)


def seeded(model: Any, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return model().to(F64).eval()


@pytest.fixture
def xb() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)


def gap(model: Any, x: Tensor, b: Tensor, target: int) -> Tensor:
    with torch.no_grad():
        return model(x)[:, target] - model(b)[:, target]


# --- IntegratedGradients: riemann_trapezoid ---------------------------------------------------


@pytest.mark.parametrize("n_steps", [2, 5, 20])
def test_trapezoid_weights_sum_to_one_where_captums_sum_to_n_minus_1_over_n(
    n_steps: int, xb: Any
) -> None:
    _, weights = step_rule("riemann_trapezoid", n_steps)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-15)
    # on a linear model any rule whose weights sum to 1 is exact; Captum's attributions are
    # exactly (n - 1) / n of the total
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(F64)
    x, b = xb
    want = gap(model, x, b, 1)
    ours = llmattr.IntegratedGradients(model).attribute(
        x, b, target=1, n_steps=n_steps, method="riemann_trapezoid"
    )
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, b, target=1, n_steps=n_steps, method="riemann_trapezoid"
    )
    torch.testing.assert_close(ours.sum(1), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(theirs.sum(1), want * (n_steps - 1) / n_steps, rtol=1e-6, atol=0)
    assert (theirs.sum(1) - want).abs().max() > 1e-2 / n_steps


# --- LayerDeepLift(attribute_to_layer_input=True) ---------------------------------------------


@pytest.mark.parametrize("layer_name", ["relu", "act"])
@pytest.mark.parametrize("inplace", [False, True])
def test_layer_deeplift_to_a_nonlinear_layers_input_is_complete(
    xb: Any, layer_name: str, inplace: bool
) -> None:
    """At the input of a nonlinearity Captum multiplies by the layer's plain derivative instead
    of its DeepLift multiplier, so its attributions do not sum to f(x) - f(b); llmattr's do,
    also when the layer is an in-place ReLU (whose input it captures before it is
    overwritten)."""
    model = seeded(lambda: MLP(inplace))
    layer = getattr(model, layer_name)
    x, b = xb
    want = gap(model, x, b, 1)
    ours, delta = llmattr.LayerDeepLift(model, layer).attribute(
        x, b, target=1, attribute_to_layer_input=True, return_convergence_delta=True
    )
    torch.testing.assert_close(ours.sum(1), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(delta, ours.sum(1) - want, rtol=0, atol=1e-12)
    theirs, their_delta = captum_attr.LayerDeepLift(model, layer).attribute(
        x, b, target=1, attribute_to_layer_input=True, return_convergence_delta=True
    )
    assert their_delta.abs().max() > 1e-2
    torch.testing.assert_close(their_delta, theirs.sum(1) - want, rtol=0, atol=1e-12)
    # the in-place ReLU gives the same attributions as the out-of-place one
    plain = seeded(MLP)
    same = llmattr.LayerDeepLift(plain, getattr(plain, layer_name)).attribute(
        x, b, target=1, attribute_to_layer_input=True
    )
    torch.testing.assert_close(ours, same, rtol=0, atol=1e-14)


# --- LayerConductance -------------------------------------------------------------------------


def test_layer_conductance_is_closer_to_the_converged_value() -> None:
    """llmattr's trapezoid rule on the path partition (nodes plus both ends) against Captum's
    left sum over n_steps + 1 points that does not reach the end: at equal n_steps llmattr is
    closer to the converged conductance (on which both libraries agree)."""
    model = seeded(MLP)
    g = torch.Generator().manual_seed(3)
    x, b = 2 * torch.randn(4, 4, generator=g, dtype=F64), torch.zeros(4, 4, dtype=F64)
    kw: dict[str, Any] = {"target": 2, "method": "riemann_left"}
    ours_ref = llmattr.LayerConductance(model, model.fc2).attribute(x, b, n_steps=2000, **kw)
    theirs_ref = captum_attr.LayerConductance(model, model.fc2).attribute(x, b, n_steps=2000, **kw)
    torch.testing.assert_close(ours_ref, theirs_ref, rtol=0, atol=2e-3)
    for method in ("riemann_left", "gausslegendre"):
        kw["method"] = method
        ours, ours_delta = llmattr.LayerConductance(model, model.fc2).attribute(
            x, b, n_steps=10, return_convergence_delta=True, **kw
        )
        theirs, their_delta = captum_attr.LayerConductance(model, model.fc2).attribute(
            x, b, n_steps=10, return_convergence_delta=True, **kw
        )
        ours_err = (ours - ours_ref).abs().sum()
        their_err = (theirs - ours_ref).abs().sum()
        assert ours_err < 0.5 * their_err, (method, ours_err, their_err)
        assert ours_delta.abs().max() < their_delta.abs().max()


# --- LayerIntegratedGradients -----------------------------------------------------------------


def test_lig_joint_path_gives_zeros_for_a_cut_off_layer_where_captum_raises(xb: Any) -> None:
    """A listed layer fed only into a later listed layer has no route to the output on the
    joint path. Captum's torch.autograd.grad raises unless grad_kwargs allow unused inputs;
    llmattr returns zero attributions for it (Captum's values with materialize_grads)."""
    model = seeded(MLP)
    x, b = xb
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum_attr.LayerIntegratedGradients(model, [model.fc1, model.fc2]).attribute(
            x, b, target=0, n_steps=4
        )
    first, second = llmattr.LayerIntegratedGradients(model, [model.fc1, model.fc2]).attribute(
        x, b, target=0, n_steps=4
    )
    assert torch.equal(first, torch.zeros_like(first)) and second.abs().sum() > 0


def test_lig_delta_with_a_route_around_the_layer(xb: Any) -> None:
    """Same attributions; Captum's delta compares them with f(x) - f(b), which a route
    bypassing the layer (still seeing x) makes unreachable whatever n_steps. llmattr's delta is
    the quadrature error of the integral along the layer path, g(a(x)) - g(a(b))."""
    model = seeded(Skip)
    x, b = xb
    ours, delta = llmattr.LayerIntegratedGradients(model, model.fc1).attribute(
        x, b, target=1, n_steps=40, return_convergence_delta=True
    )
    theirs, their_delta = captum_attr.LayerIntegratedGradients(model, model.fc1).attribute(
        x, b, target=1, n_steps=40, return_convergence_delta=True
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    assert delta.abs().max() < 1e-9
    torch.testing.assert_close(their_delta, theirs.sum(1) - gap(model, x, b, 1), rtol=0, atol=1e-9)
    assert their_delta.abs().max() > 1e-2


# --- deltas with multiply_by_inputs=False -------------------------------------------------------


def test_ig_delta_without_multiplying_is_still_the_completeness_gap(xb: Any) -> None:
    """IntegratedGradients(multiply_by_inputs=False) returns the integrated gradient; llmattr's
    delta is the completeness gap of the global attributions, Captum's is
    sum(integrated gradient) - (f(x) - f(b)), which does not shrink with n_steps."""
    model = seeded(MLP)
    x, b = xb
    ours, delta = llmattr.IntegratedGradients(model, multiply_by_inputs=False).attribute(
        x, b, target=2, n_steps=64, return_convergence_delta=True
    )
    theirs, their_delta = captum_attr.IntegratedGradients(
        model, multiply_by_inputs=False
    ).attribute(x, b, target=2, n_steps=64, return_convergence_delta=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    want = gap(model, x, b, 2)
    torch.testing.assert_close(delta, (ours * (x - b)).sum(1) - want, rtol=0, atol=1e-12)
    torch.testing.assert_close(their_delta, theirs.sum(1) - want, rtol=0, atol=1e-9)
    assert delta.abs().max() < 0.05 * their_delta.abs().max()


# --- LayerFeaturePermutation with a target ----------------------------------------------------


def test_layer_feature_permutation_selects_the_target_once() -> None:
    """Captum's LayerFeaturePermutation selects the target inside its layer forward and again
    outside, so any target on a multi-output model raises; llmattr's equals Captum's on the
    forward that returns the target column."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)
    x = torch.randn(6, 4, dtype=F64)
    with pytest.raises(AssertionError):
        captum_attr.LayerFeaturePermutation(model, model[1]).attribute(x, target=2)
    torch.manual_seed(7)
    ours = llmattr.LayerFeaturePermutation(model, model[1]).attribute(x, target=2)
    torch.manual_seed(7)
    theirs = captum_attr.LayerFeaturePermutation(lambda t: model(t)[:, 2], model[1]).attribute(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


class Smooth(nn.Module):
    """``fc2(tanh(fc1(x)))``: a smooth path integrand, so the trapezoid error is O(1/n²)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


METHODS = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]


@pytest.mark.parametrize("method", METHODS)
def test_layer_conductance_delta_shrinks_with_n_steps(method: str, xb: Any) -> None:
    """On a smooth model the completeness gap of llmattr's conductance falls with n_steps for
    every method and is inside Captum's own test tolerance (0.01) at n_steps=500."""
    model = seeded(Smooth)
    x, b = xb
    x = 3 * x
    deltas = []
    for n in (5, 20, 100, 500):
        _, d = llmattr.LayerConductance(model, model.fc1).attribute(
            x, b, target=0, n_steps=n, method=method, return_convergence_delta=True
        )
        deltas.append(d.abs().max().item())
    assert all(later < earlier for earlier, later in itertools.pairwise(deltas)), deltas
    assert deltas[-1] < 1e-2
    # a second-order rule: 5x the steps cut the gap by more than 10x
    assert deltas[-1] < deltas[-2] / 10


def test_layer_conductance_through_a_relu_kink_converges_at_first_order() -> None:
    """With a ReLU switching on along the path the integrand jumps, so every rule (Captum's
    too) has an O(1/n) gap whose size depends on where the jump falls inside its panel; llmattr's
    gap stays within jump-size x panel-width / 2 and tends to 0."""
    from captum.testing.helpers.basic_models import BasicModel_MultiLayer

    model = BasicModel_MultiLayer().to(F64)
    x = torch.tensor([[0.0, 100.0, 0.0]], dtype=F64)
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_left"):
        gaps = []
        for n in (50, 500, 2000):
            _, d = llmattr.LayerConductance(model, model.linear0).attribute(
                x, target=0, n_steps=n, method=method, return_convergence_delta=True
            )
            gaps.append(d.abs().item() * n)  # n * gap is bounded for a first-order error
        assert max(gaps) < 60, (method, gaps)
        assert gaps[-1] / 2000 < 0.03
