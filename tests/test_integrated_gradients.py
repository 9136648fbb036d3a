"""IntegratedGradients: completeness, closed forms of every quadrature rule, batching, targets,
extra forward arguments, baselines, input hygiene, out-of-memory back-off and errors."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP, Linear, SmallCNN, TwoInputNet, TwoLinear, rand, tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from llmattr import IntegratedGradients

F64 = torch.float64
METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


# --- tiny models --------------------------------------------------------------------------------


class Poly(nn.Module):
    """f(x) = sum_j a_j x_j ** p (one output per example)."""

    def __init__(self, a: torch.Tensor, p: int) -> None:
        super().__init__()
        self.a = nn.Parameter(a)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a * x**self.p).sum(1)


class SmoothMLP(nn.Module):
    """Linear → Tanh → Linear → Sigmoid → Linear: analytic, so Gauss–Legendre converges fast."""

    def __init__(self, d: int = 5, hidden: int = 8, n_out: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Sigmoid(),
            nn.Linear(hidden, n_out),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Out3D(nn.Module):
    """A smooth model with a (batch, 2, 3) output, for tuple targets."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(d, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x)).reshape(-1, 2, 3) * x.sum(1).reshape(-1, 1, 1)


def f64(model: nn.Module) -> nn.Module:
    return model.to(F64)


# --- completeness and the convergence delta -----------------------------------------------------


def test_completeness_is_tight_with_gausslegendre_on_a_smooth_model() -> None:
    model = f64(SmoothMLP())
    x, b = rand(4, 5), rand(4, 5)
    ig = IntegratedGradients(model)
    attr, delta = ig.attribute(x, baselines=b, target=1, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(b)[:, 1]
    # the test's own completeness gap, computed from the forward alone
    own_delta = attr.sum(1) - gap
    assert own_delta.abs().max() < 1e-8
    assert delta.shape == (4,)
    assert torch.allclose(delta, own_delta, rtol=0, atol=1e-12)
    reported = ig.compute_convergence_delta(attr, b, x, target=1)
    assert torch.allclose(reported, own_delta, rtol=0, atol=1e-12)


def test_gausslegendre_error_shrinks_with_more_steps() -> None:
    model = f64(SmoothMLP())
    x, b = 2 * rand(3, 5), rand(3, 5)
    ig = IntegratedGradients(model)
    errs = [
        ig.attribute(x, b, target=0, n_steps=n, return_convergence_delta=True)[1].abs().max()
        for n in (1, 3, 24)
    ]
    assert errs[2] < 1e-9
    assert errs[2] < errs[1] < errs[0]


def test_delta_is_the_completeness_gap_on_a_piecewise_linear_model() -> None:
    model = f64(MLP())
    x = rand(3, 6)
    for method in ("riemann_left", "riemann_trapezoid"):
        attr, delta = IntegratedGradients(model).attribute(
            x, target=2, n_steps=7, method=method, return_convergence_delta=True
        )
        with torch.no_grad():
            gap = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]
        assert torch.allclose(delta, attr.sum(1) - gap, rtol=0, atol=1e-12)


def test_delta_with_multiply_by_inputs_false_is_the_global_gap() -> None:
    model = f64(SmoothMLP())
    x, b = rand(2, 5), rand(2, 5)
    local, delta = IntegratedGradients(model, multiply_by_inputs=False).attribute(
        x, b, target=0, n_steps=40, return_convergence_delta=True
    )
    with torch.no_grad():
        gap = model(x)[:, 0] - model(b)[:, 0]
    assert torch.allclose(delta, (local * (x - b)).sum(1) - gap, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-8


# --- closed forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [2, 5])
def test_linear_model_closed_form_for_every_method(method: str, n_steps: int) -> None:
    model = f64(Linear())
    x, b = rand(3, 4), rand(3, 4)
    attr, delta = IntegratedGradients(model).attribute(
        x, b, n_steps=n_steps, method=method, return_convergence_delta=True
    )
    expected = model.w.detach() * (x - b)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-12


def _alpha_moments(method: str, n: int) -> tuple[float, float]:
    """Exact sum(w_i α_i) and sum(w_i α_i²) of each quadrature rule on [0, 1] with n points."""
    exact = (0.5, 1.0 / 3.0)
    if method == "riemann_left":  # α_i = i/n
        return (n - 1) / (2 * n), (n - 1) * (2 * n - 1) / (6 * n**2)
    if method == "riemann_right":  # α_i = (i+1)/n
        return (n + 1) / (2 * n), (n + 1) * (2 * n + 1) / (6 * n**2)
    if method == "riemann_middle":  # midpoint rule: error -h²/12 · (f'(1) - f'(0))
        return 0.5, 1.0 / 3.0 - 1.0 / (12 * n**2)
    if method == "riemann_trapezoid":  # h = 1/(n-1), error +h²/12 · (f'(1) - f'(0))
        return 0.5, 1.0 / 3.0 + 1.0 / (6 * (n - 1) ** 2)
    if n == 1:  # one Gauss node, the midpoint
        return 0.5, 0.25
    return exact  # Gauss–Legendre with n >= 2 integrates quadratics exactly


def _rules(steps: list[int]) -> list[tuple[str, int]]:
    """Every (method, n_steps) pair, but trapezoid with one step (an error, tested below)."""
    return [(m, n) for m in METHODS for n in steps if not (m == "riemann_trapezoid" and n == 1)]


@pytest.mark.parametrize(("method", "n_steps"), _rules([1, 2, 3, 10]))
def test_quadratic_model_closed_form(method: str, n_steps: int) -> None:
    a = rand(4)
    model = f64(Poly(a.clone(), 2))
    x, b = rand(3, 4), rand(3, 4)
    attr = IntegratedGradients(model).attribute(x, b, n_steps=n_steps, method=method)
    d = x - b
    m1, _ = _alpha_moments(method, n_steps)
    # ∂f/∂x = 2a(b + α d), linear in α: IG = 2a·d·(b + d·Σwα)
    expected = 2 * a * d * (b + d * m1)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-12)
    if method in ("riemann_middle", "riemann_trapezoid", "gausslegendre"):
        # symmetric rules are exact for a gradient linear along the path: a·(x² − b²)
        assert torch.allclose(attr, a * (x**2 - b**2), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "n_steps"), _rules([1, 2, 4, 16]))
def test_cubic_model_quadrature_error_matches_theory(method: str, n_steps: int) -> None:
    c = rand(3)
    model = f64(Poly(c.clone(), 3))
    x, b = rand(2, 3), rand(2, 3)
    attr = IntegratedGradients(model).attribute(x, b, n_steps=n_steps, method=method)
    d = x - b
    m1, m2 = _alpha_moments(method, n_steps)
    # ∂f/∂x = 3c(b + α d)², so IG = 3c·d·(b² + 2bd·Σwα + d²·Σwα²)
    expected = 3 * c * d * (b**2 + 2 * b * d * m1 + d**2 * m2)
    assert torch.allclose(attr, expected, rtol=0, atol=1e-11)
    exact = c * (x**3 - b**3)
    err = (attr - exact).abs().max()
    if method == "gausslegendre" and n_steps >= 2:
        assert err < 1e-12
    else:
        assert err > 1e-6  # the rule's error is real, and the formula above predicts it


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(METHODS),
    n_steps=st.integers(2, 40),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5)),
    seed=st.integers(0, 2**16),
)
def test_cubic_closed_form_property(
    method: str, n_steps: int, shape: tuple[int, int], seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(shape[1], dtype=F64, generator=gen)
    x = torch.randn(shape, dtype=F64, generator=gen)
    b = torch.randn(shape, dtype=F64, generator=gen)
    attr = IntegratedGradients(f64(Poly(c.clone(), 3))).attribute(
        x, b, n_steps=n_steps, method=method
    )
    d = x - b
    m1, m2 = _alpha_moments(method, n_steps)
    expected = 3 * c * d * (b**2 + 2 * b * d * m1 + d**2 * m2)
    assert torch.allclose(attr, expected, rtol=1e-12, atol=1e-11)


def test_symmetric_rules_converge_at_second_order_on_a_cubic() -> None:
    c = rand(3)
    model = f64(Poly(c.clone(), 3))
    x, b = rand(2, 3), rand(2, 3)
    exact = c * (x**3 - b**3)
    ig = IntegratedGradients(model)
    for method in ("riemann_middle", "riemann_trapezoid"):
        e10 = (ig.attribute(x, b, n_steps=11, method=method) - exact).abs().max()
        e100 = (ig.attribute(x, b, n_steps=101, method=method) - exact).abs().max()
        assert 80 < e10 / e100 < 120  # ten times the steps, a hundred times less error


def test_multiply_by_inputs_false_returns_the_integrated_gradient() -> None:
    a = rand(4)
    model = f64(Poly(a.clone(), 2))
    x, b = rand(3, 4), rand(3, 4)
    local_ig = IntegratedGradients(model, multiply_by_inputs=False)
    assert not local_ig.multiplies_by_inputs
    assert IntegratedGradients(model).multiplies_by_inputs
    local = local_ig.attribute(x, b, n_steps=3)
    # mean gradient along the straight path: 2a·(b + (x − b)/2) = a·(x + b)
    assert torch.allclose(local, a * (x + b), rtol=0, atol=1e-12)
    glob = IntegratedGradients(model).attribute(x, b, n_steps=3)
    assert torch.allclose(glob, local * (x - b), rtol=0, atol=1e-12)


# --- batching, dtype, device ----------------------------------------------------------------------


@pytest.mark.parametrize("ibs", [1, 3, 7, 4 * 10, None, "auto"])
def test_internal_batch_size_does_not_change_results(ibs: int | str | None) -> None:
    model = f64(MLP())
    x, b = rand(4, 6), rand(1, 6)
    ig = IntegratedGradients(model)
    ref, ref_delta = ig.attribute(x, b, target=1, n_steps=10, return_convergence_delta=True)
    attr, delta = ig.attribute(
        x, b, target=1, n_steps=10, internal_batch_size=ibs, return_convergence_delta=True
    )
    assert torch.allclose(attr, ref, rtol=0, atol=1e-12)
    assert torch.allclose(delta, ref_delta, rtol=0, atol=1e-12)


def test_internal_batch_size_with_per_example_targets_and_args() -> None:
    net = f64(TwoInputNet())
    x1, x2, scale = rand(5, 4), rand(5, 3), rand(5)
    ig = IntegratedGradients(net)
    kw = dict(target=[0, 1, 1, 0, 1], additional_forward_args=(scale, 0.5), n_steps=6)
    ref = ig.attribute((x1, x2), **kw)
    for ibs in (1, 4, 7, "auto"):
        out = ig.attribute((x1, x2), internal_batch_size=ibs, **kw)
        for o, r in zip(out, ref):
            assert torch.allclose(o, r, rtol=0, atol=1e-12)


def test_dtype_and_device(mlp: MLP, dtype: torch.dtype, device: str) -> None:
    x = torch.randn(3, 6, dtype=dtype, device=device)
    b = torch.randn(1, 6, dtype=dtype, device=device)
    attr, delta = IntegratedGradients(mlp).attribute(
        x, b, target=0, n_steps=20, return_convergence_delta=True
    )
    assert attr.dtype == dtype and attr.device.type == device and attr.shape == x.shape
    assert delta.dtype == dtype and delta.device.type == device and delta.shape == (3,)
    with torch.no_grad():
        gap = mlp(x)[:, 0] - mlp(b.expand_as(x))[:, 0]
    assert torch.allclose(delta, attr.sum(1) - gap, rtol=0, atol=10 * tol(dtype))


def test_linear_closed_form_in_each_dtype_and_device(dtype: torch.dtype, device: str) -> None:
    model = Linear(6).to(device=device, dtype=dtype)
    x = torch.randn(4, 6, dtype=dtype, device=device)
    attr = IntegratedGradients(model).attribute(x, baselines=0.25, n_steps=5)
    assert attr.dtype == dtype and attr.device.type == device
    expected = model.w.detach() * (x - 0.25)
    assert torch.allclose(attr, expected, rtol=0, atol=tol(dtype))


def test_image_inputs_batch_equals_concatenated_examples() -> None:
    cnn = f64(SmallCNN())
    x = rand(3, 1, 8, 8)
    ig = IntegratedGradients(cnn)
    batch = ig.attribute(x, target=2, n_steps=8)
    assert batch.shape == x.shape
    single = torch.cat([ig.attribute(x[i : i + 1], target=2, n_steps=8) for i in range(3)])
    assert torch.allclose(batch, single, rtol=0, atol=1e-12)


# --- targets ------------------------------------------------------------------------------------


def _ig(model: object, x: torch.Tensor, b: torch.Tensor, **kw: object) -> torch.Tensor:
    return IntegratedGradients(model).attribute(x, b, n_steps=12, **kw)


def _per_example(model: nn.Module, x: torch.Tensor, b: torch.Tensor, idx: list) -> torch.Tensor:
    """Attribution of each example on its own, through a wrapper that selects its output."""
    rows = []
    for i, j in enumerate(idx):
        j = j if isinstance(j, tuple) else (j,)

        def pick(z: torch.Tensor, j: tuple = j) -> torch.Tensor:
            return model(z)[(slice(None), *j)]

        rows.append(_ig(pick, x[i : i + 1], b[i : i + 1]))
    return torch.cat(rows)


def test_target_none_for_a_single_output_model() -> None:
    model = f64(SmoothMLP(n_out=1))
    x, b = rand(3, 5), rand(3, 5)
    attr = _ig(model, x, b)
    assert torch.allclose(attr, _ig(lambda z: model(z)[:, 0], x, b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [2, -1])
def test_int_target(t: int) -> None:
    model = f64(SmoothMLP())
    x, b = rand(3, 5), rand(3, 5)
    expected = _ig(lambda z: model(z)[:, t], x, b)
    assert torch.allclose(_ig(model, x, b, target=t), expected, rtol=0, atol=1e-12)
    # a 0-d integer tensor acts like the int
    assert torch.allclose(_ig(model, x, b, target=torch.tensor(t)), expected, rtol=0, atol=1e-12)


def test_tuple_target_on_a_3d_output() -> None:
    model = f64(Out3D())
    x, b = rand(3, 4), rand(3, 4)
    expected = _ig(lambda z: model(z)[:, 1, 2], x, b)
    assert torch.allclose(_ig(model, x, b, target=(1, 2)), expected, rtol=0, atol=1e-12)
    other = _ig(model, x, b, target=(0, 2))
    assert not torch.allclose(other, expected)


def test_per_example_int_targets_list_and_tensor() -> None:
    model = f64(SmoothMLP())
    x, b = rand(4, 5), rand(4, 5)
    idx = [2, 0, 1, 2]
    expected = _per_example(model, x, b, idx)
    assert torch.allclose(_ig(model, x, b, target=idx), expected, rtol=0, atol=1e-12)
    as_tensor = _ig(model, x, b, target=torch.tensor(idx))
    assert torch.allclose(as_tensor, expected, rtol=0, atol=1e-12)


def test_per_example_tuple_targets_list_and_tensor() -> None:
    model = f64(Out3D())
    x, b = rand(4, 4), rand(4, 4)
    idx = [(0, 1), (1, 2), (1, 0), (0, 0)]
    expected = _per_example(model, x, b, idx)
    assert torch.allclose(_ig(model, x, b, target=idx), expected, rtol=0, atol=1e-12)
    as_tensor = _ig(model, x, b, target=torch.tensor(idx))
    assert torch.allclose(as_tensor, expected, rtol=0, atol=1e-12)


def test_per_example_target_delta_uses_each_examples_target() -> None:
    model = f64(SmoothMLP())
    x = rand(3, 5)
    idx = [1, 2, 0]
    attr, delta = IntegratedGradients(model).attribute(
        x, target=idx, n_steps=48, return_convergence_delta=True
    )
    with torch.no_grad():
        rows = torch.arange(3)
        gap = model(x)[rows, idx] - model(torch.zeros_like(x))[rows, idx]
    assert torch.allclose(delta, attr.sum(1) - gap, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-8


# --- several inputs and additional forward args ---------------------------------------------------


def test_two_inputs_with_per_example_scale_and_float_shift() -> None:
    net = f64(TwoInputNet())
    x1, x2 = rand(4, 4), rand(4, 3)
    b1, b2 = rand(1, 4), rand(4, 3)
    scale = torch.tensor([0.5, -2.0, 3.0, 1.5], dtype=F64)
    shifts_seen: list[float] = []

    def forward(x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, shift: float):
        shifts_seen.append(shift)
        return net(x1, x2, scale, shift)

    ig = IntegratedGradients(forward)
    attr, delta = ig.attribute(
        (x1, x2), (b1, b2), target=1, additional_forward_args=(scale, 7.0), n_steps=16,
        return_convergence_delta=True,
    )  # fmt: skip
    assert isinstance(attr, tuple) and attr[0].shape == x1.shape and attr[1].shape == x2.shape
    assert shifts_seen and all(s == 7.0 for s in shifts_seen)
    # the scale of example i follows example i through the n_steps expansion
    for i in range(4):
        single = ig.attribute(
            (x1[i : i + 1], x2[i : i + 1]), (b1, b2[i : i + 1]), target=1,
            additional_forward_args=(scale[i : i + 1], 7.0), n_steps=16,
        )  # fmt: skip
        assert torch.allclose(attr[0][i : i + 1], single[0], rtol=0, atol=1e-12)
        assert torch.allclose(attr[1][i : i + 1], single[1], rtol=0, atol=1e-12)
    # the delta is the completeness gap of the forward with those args
    with torch.no_grad():
        gap = net(x1, x2, scale, 7.0)[:, 1] - net(b1.expand(4, 4), b2, scale, 7.0)[:, 1]
    assert torch.allclose(delta, attr[0].sum(1) + attr[1].sum(1) - gap, rtol=0, atol=1e-12)


def test_single_additional_arg_not_in_a_tuple() -> None:
    model = f64(Linear(3))
    x = rand(2, 3)

    def forward(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return model(z) * k

    k = torch.tensor([2.0, -3.0], dtype=F64)
    attr = IntegratedGradients(forward).attribute(x, additional_forward_args=k, n_steps=3)
    assert torch.allclose(attr, k[:, None] * model.w.detach() * x, rtol=0, atol=1e-12)


# --- baselines ------------------------------------------------------------------------------------


def test_baseline_forms_on_a_linear_model() -> None:
    model = f64(Linear(4))
    w = model.w.detach()
    x = rand(3, 4)
    ig = IntegratedGradients(model)
    per_example = rand(3, 4)
    shared = rand(1, 4)
    per_feature = rand(4)
    cases = [
        (None, torch.zeros(3, 4, dtype=F64)),
        (0.5, torch.full((3, 4), 0.5, dtype=F64)),
        (2, torch.full((3, 4), 2.0, dtype=F64)),
        (torch.tensor(-1.5, dtype=F64), torch.full((3, 4), -1.5, dtype=F64)),
        (per_example, per_example),
        (shared, shared.expand(3, 4)),
        (per_feature, per_feature.expand(3, 4)),
        ((shared,), shared.expand(3, 4)),
    ]
    for baseline, explicit in cases:
        attr = ig.attribute(x, baselines=baseline, n_steps=3)
        assert torch.allclose(attr, w * (x - explicit), rtol=0, atol=1e-12), baseline


def test_tuple_baselines_for_two_inputs() -> None:
    model = f64(TwoLinear(4, (2, 3)))
    w1, w2 = model.w1.detach(), model.w2.detach()
    x1, x2 = rand(3, 4), rand(3, 2, 3)
    ig = IntegratedGradients(model)
    b2 = rand(1, 2, 3)
    a1, a2 = ig.attribute((x1, x2), baselines=(None, b2), n_steps=2)
    assert torch.allclose(a1, w1 * x1, rtol=0, atol=1e-12)
    assert torch.allclose(a2, w2 * (x2 - b2), rtol=0, atol=1e-12)
    a1, a2 = ig.attribute((x1, x2), baselines=(1.0, 0), n_steps=2)
    assert torch.allclose(a1, w1 * (x1 - 1.0), rtol=0, atol=1e-12)
    assert torch.allclose(a2, w2 * x2, rtol=0, atol=1e-12)


# --- input hygiene and result form ----------------------------------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_inputs_untouched_and_no_parameter_grads(requires_grad: bool) -> None:
    model = f64(MLP())
    x = rand(3, 6).requires_grad_(requires_grad)
    b = rand(3, 6)
    x_before, b_before = x.detach().clone(), b.clone()
    IntegratedGradients(model).attribute(
        x, b, target=0, n_steps=5, internal_batch_size=4, return_convergence_delta=True
    )
    assert torch.equal(x.detach(), x_before) and torch.equal(b, b_before)
    assert x.requires_grad is requires_grad and x.grad is None
    assert not b.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_tensor_and_tuple_input_forms() -> None:
    model = f64(MLP())
    x = rand(3, 6)
    ig = IntegratedGradients(model)
    as_tensor = ig.attribute(x, target=1, n_steps=5)
    as_tuple = ig.attribute((x,), target=1, n_steps=5)
    assert isinstance(as_tensor, torch.Tensor)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], as_tensor)
    out, delta = ig.attribute((x,), target=1, n_steps=5, return_convergence_delta=True)
    assert isinstance(out, tuple) and delta.shape == (3,)


# --- out-of-memory back-off -----------------------------------------------------------------------


class OOMAbove(nn.Module):
    """Wraps a model; raises torch.OutOfMemoryError for batches larger than ``limit``."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model = model
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB (simulated)")
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_auto_batch_size_backs_off_on_out_of_memory() -> None:
    model = f64(MLP())
    x = rand(4, 6)
    ref, ref_delta = IntegratedGradients(model).attribute(
        x, target=2, n_steps=10, return_convergence_delta=True
    )
    limited = OOMAbove(model, limit=3)  # not even the 4 examples fit at once
    attr, delta = IntegratedGradients(limited).attribute(
        x, target=2, n_steps=10, internal_batch_size="auto", return_convergence_delta=True
    )
    assert torch.allclose(attr, ref, rtol=0, atol=1e-12)
    assert torch.allclose(delta, ref_delta, rtol=0, atol=1e-12)
    assert limited.sizes and max(limited.sizes) <= 3
    # every integration row, and each example at both ends for the delta, was evaluated
    assert sum(limited.sizes) == 4 * 10 + 2 * 4


def test_int_batch_size_within_the_limit_works_and_above_it_raises() -> None:
    model = f64(MLP())
    x = rand(4, 6)
    ref, ref_delta = IntegratedGradients(model).attribute(
        x, target=0, n_steps=10, return_convergence_delta=True
    )
    limited = OOMAbove(model, limit=3)
    ig = IntegratedGradients(limited)
    # the delta's forwards on the 4-example batch are chunked like the gradients, so they fit
    attr, delta = ig.attribute(
        x, target=0, n_steps=10, internal_batch_size=3, return_convergence_delta=True
    )
    assert torch.allclose(attr, ref, rtol=0, atol=1e-12)
    assert torch.allclose(delta, ref_delta, rtol=0, atol=1e-12)
    assert max(limited.sizes) == 3
    with pytest.raises(torch.OutOfMemoryError):
        ig.attribute(x, target=0, n_steps=10, internal_batch_size=4)
    with pytest.raises(torch.OutOfMemoryError):
        ig.attribute(x, target=0, n_steps=10)  # None: everything at once


def test_auto_batch_size_does_not_swallow_other_errors() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        IntegratedGradients(broken).attribute(rand(2, 3), internal_batch_size="auto")


# --- errors -------------------------------------------------------------------------------------


def test_integer_inputs_point_to_layer_integrated_gradients() -> None:
    ig = IntegratedGradients(lambda ids: ids.float().sum(1))
    with pytest.raises(TypeError, match="LayerIntegratedGradients"):
        ig.attribute(torch.tensor([[1, 2, 3]]))


def test_mismatched_batch_sizes() -> None:
    ig = IntegratedGradients(f64(TwoLinear(4, (2, 3))))
    with pytest.raises(ValueError, match="different batch sizes"):
        ig.attribute((rand(3, 4), rand(2, 2, 3)))


@pytest.mark.parametrize("baseline", [torch.zeros(2, 4), torch.zeros(3, 5), torch.zeros(3, 4, 1)])
def test_baselines_that_cannot_broadcast(baseline: torch.Tensor) -> None:
    ig = IntegratedGradients(f64(Linear(4)))
    with pytest.raises(ValueError, match="cannot broadcast"):
        ig.attribute(rand(3, 4), baselines=baseline.to(F64))


def test_wrong_number_of_baselines() -> None:
    ig = IntegratedGradients(f64(TwoLinear(4, (2, 3))))
    with pytest.raises(ValueError, match="one baseline per"):
        ig.attribute((rand(3, 4), rand(3, 2, 3)), baselines=(None,))


def test_target_errors() -> None:
    model = f64(SmoothMLP())
    ig = IntegratedGradients(model)
    x = rand(3, 5)
    with pytest.raises(IndexError, match="out of range"):
        ig.attribute(x, target=3)
    with pytest.raises(IndexError, match="out of range"):
        ig.attribute(x, target=[0, 1, 5])
    with pytest.raises(ValueError, match="list of 2 entries"):
        ig.attribute(x, target=[0, 1])
    with pytest.raises(TypeError, match="not understood"):
        ig.attribute(x, target="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not understood"):
        ig.attribute(x, target=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"target\[1\] is 1.0; a target index must be an int"):
        ig.attribute(x, target=[0, 1.0, 2])
    with pytest.raises(TypeError, match="must hold integers"):
        ig.attribute(x, target=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="output dimension"):
        ig.attribute(x, target=(0, 1))  # a 2-index target on a 2-D output
    with pytest.raises(ValueError, match="no target was given"):
        ig.attribute(x)


@pytest.mark.parametrize("n_steps", [0, -3, 2.5, True])
def test_bad_n_steps(n_steps: object) -> None:
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        IntegratedGradients(f64(Linear())).attribute(rand(2, 4), n_steps=n_steps)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="Unknown integration method 'simpson'"):
        IntegratedGradients(f64(Linear())).attribute(rand(2, 4), method="simpson")


def test_trapezoid_with_one_step() -> None:
    with pytest.raises(ValueError, match="riemann_trapezoid needs n_steps >= 2"):
        IntegratedGradients(f64(Linear())).attribute(
            rand(2, 4), method="riemann_trapezoid", n_steps=1
        )


@pytest.mark.parametrize("bad", [0, -1, 2.0, "big"])
def test_bad_internal_batch_size(bad: object) -> None:
    with pytest.raises(ValueError, match="internal_batch_size must be a positive int"):
        IntegratedGradients(f64(Linear())).attribute(rand(2, 4), internal_batch_size=bad)
