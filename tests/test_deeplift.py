"""DeepLift (rescale rule) and DeepLiftShap: completeness, closed forms, argument forms, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP, SmallCNN, TwoInputNet, row_sums, tol
from torch import Tensor, nn

from llmattr import DeepLift, DeepLiftShap

F64 = torch.float64

# constructors of the elementwise non-linearities the rescale rule must handle
ACTIVATIONS = {
    "ReLU": nn.ReLU,
    "ELU": nn.ELU,
    "LeakyReLU": lambda: nn.LeakyReLU(0.1),
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
}


def select(model: nn.Module, x: Tensor | tuple[Tensor, ...], target: object, *args: object):
    """The explained scalar per example, computed independently of the library."""
    with torch.no_grad():
        xs = x if isinstance(x, tuple) else (x,)
        out = model(*xs, *args)
    n = out.shape[0]
    if target is None:
        return out.reshape(n)
    if isinstance(target, int):
        return out[:, target]
    return out[torch.arange(n), torch.as_tensor(target)]


def assert_complete(model, x, baselines, attrs, delta, target, *args, atol=1e-10) -> None:
    """sum(attrs) == f(x) - f(b) and the returned delta is exactly that gap."""
    gap = select(model, x, target, *args) - select(model, baselines, target, *args)
    total = row_sums(attrs)
    torch.testing.assert_close(total, gap, atol=atol, rtol=0)
    torch.testing.assert_close(delta, total - gap, atol=atol, rtol=0)


# --- completeness -------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_completeness_mlp_each_nonlinearity(act) -> None:
    model = nn.Sequential(nn.Linear(5, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 3)).to(F64)
    x = torch.randn(6, 5, dtype=F64)
    b = 0.5 * torch.randn(6, 5, dtype=F64)
    attrs, delta = DeepLift(model).attribute(x, b, target=2, return_convergence_delta=True)
    assert attrs.shape == x.shape and attrs.dtype == F64 and delta.shape == (6,)
    assert_complete(model, x, b, attrs, delta, 2)
    # DeepLift is not gradient * (x - b): the non-linearities must have been rescaled
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(xg)[:, 2].sum(), xg)
    assert not torch.allclose(attrs, grad * (x - b), atol=1e-6)


def test_completeness_softmax_output() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4), nn.Softmax(dim=1)).to(F64)
    x, b = torch.randn(5, 5, dtype=F64), torch.randn(5, 5, dtype=F64)
    target = [0, 3, 1, 2, 3]
    attrs, delta = DeepLift(model).attribute(x, b, target=target, return_convergence_delta=True)
    assert_complete(model, x, b, attrs, delta, target)


def test_completeness_mlp_from_conftest_float64() -> None:
    model = MLP().to(F64)
    x, b = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    attrs, delta = DeepLift(model).attribute(x, b, target=1, return_convergence_delta=True)
    assert_complete(model, x, b, attrs, delta, 1)


def _cnn(conv: nn.Module, pool: nn.Module, n_flat: int, n_out: int = 3) -> nn.Module:
    return nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(n_flat, n_out)).to(F64)


CNNS = {
    # (model, input shape)
    "maxpool1d": (lambda: _cnn(nn.Conv1d(2, 3, 3), nn.MaxPool1d(2), 3 * 4), (5, 2, 10)),
    "maxpool1d_overlap": (
        lambda: _cnn(nn.Conv1d(2, 3, 3), nn.MaxPool1d(3, stride=1), 3 * 6),
        (5, 2, 10),
    ),
    "maxpool2d": (lambda: SmallCNN().to(F64), (4, 1, 8, 8)),
    "maxpool2d_overlap_stride1": (
        lambda: _cnn(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3, stride=1), 2 * 3 * 3),
        (4, 1, 7, 7),
    ),
    "maxpool2d_overlap_padded": (
        lambda: _cnn(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3, stride=1, padding=1), 2 * 5 * 5),
        (4, 1, 7, 7),
    ),
    "maxpool2d_dilated_ceil": (
        lambda: _cnn(
            nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True), 2 * 2 * 2
        ),
        (4, 1, 7, 7),
    ),
    "maxpool3d": (
        lambda: _cnn(nn.Conv3d(1, 2, 2), nn.MaxPool3d(2, stride=1), 2 * 2 * 2 * 2),
        (3, 1, 4, 4, 4),
    ),
}


@pytest.mark.parametrize("name", CNNS)
def test_completeness_cnn_maxpool(name: str) -> None:
    build, shape = CNNS[name]
    model = build()
    x, b = torch.randn(*shape, dtype=F64), torch.randn(*shape, dtype=F64)
    attrs, delta = DeepLift(model).attribute(x, b, target=1, return_convergence_delta=True)
    assert attrs.shape == x.shape
    assert_complete(model, x, b, attrs, delta, 1)


def test_completeness_maxpool_subclass() -> None:
    class MyPool(nn.MaxPool1d):  # pools like its base class, so it needs the same rule
        pass

    model = nn.Sequential(MyPool(2), nn.Flatten(), nn.Linear(3, 1)).to(F64)
    x, b = torch.randn(4, 1, 6, dtype=F64), torch.randn(4, 1, 6, dtype=F64)
    attrs, delta = DeepLift(model).attribute(x, b, return_convergence_delta=True)
    assert_complete(model, x, b, attrs, delta, None)


def test_completeness_maxpool_on_inputs_with_ties() -> None:
    # integer-valued inputs and baselines: many ties inside windows and many x == b positions
    model = nn.Sequential(nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(16, 2)).to(F64)
    x = torch.randint(0, 3, (6, 1, 6, 6)).to(F64)
    b = torch.randint(0, 3, (6, 1, 6, 6)).to(F64)
    attrs, delta = DeepLift(model).attribute(x, b, target=0, return_convergence_delta=True)
    assert_complete(model, x, b, attrs, delta, 0)


def test_completeness_inplace_relu_matches_out_of_place() -> None:
    def build(inplace: bool) -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(
            nn.ReLU(inplace=inplace),  # applied to the input itself
            nn.Linear(5, 7),
            nn.ReLU(inplace=inplace),
            nn.Linear(7, 7),
            nn.ReLU(inplace=inplace),
            nn.Linear(7, 2),
        ).to(F64)

    x, b = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    x0, b0 = x.clone(), b.clone()
    model = build(True)
    attrs, delta = DeepLift(model).attribute(x, b, target=1, return_convergence_delta=True)
    assert torch.equal(x, x0) and torch.equal(b, b0)
    assert_complete(model, x, b, attrs, delta, 1)
    expected = DeepLift(build(False)).attribute(x, b, target=1)
    torch.testing.assert_close(attrs, expected, atol=1e-12, rtol=0)


def test_completeness_batchnorm_eval_and_reused_linear() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)  # used twice: linear layers need no rule
            self.bn = nn.BatchNorm1d(4)
            self.r1, self.r2 = nn.ReLU(), nn.Sigmoid()
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.r2(self.fc(self.r1(self.bn(self.fc(x))))))

    model = Net().to(F64)
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    stats = model.bn.running_mean.clone()
    x, b = torch.randn(5, 4, dtype=F64), torch.randn(5, 4, dtype=F64)
    attrs, delta = DeepLift(model).attribute(x, b, target=0, return_convergence_delta=True)
    assert_complete(model, x, b, attrs, delta, 0)
    assert torch.equal(model.bn.running_mean, stats)


def test_completeness_residual_and_nested_modules() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act1 = nn.Linear(5, 5), nn.ReLU()
            self.inner = nn.Sequential(nn.Linear(5, 5), nn.SiLU(), nn.Sequential(nn.Linear(5, 5)))
            self.fc2, self.act2 = nn.Linear(5, 5), nn.Tanh()
            self.head = nn.Linear(5, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.act1(self.fc1(x))
            h = h + self.inner(h)  # residual additions are linear: completeness still exact
            return self.head(self.act2(self.fc2(h)) - 0.5 * x)

    model = Res().to(F64)
    x, b = torch.randn(5, 5, dtype=F64), torch.randn(5, 5, dtype=F64)
    attrs, delta = DeepLift(model).attribute(x, b, target=1, return_convergence_delta=True)
    assert_complete(model, x, b, attrs, delta, 1)


def test_unchanged_example_and_eps_fallback() -> None:
    model = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 1)
    ).to(F64)
    x, b = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    b[1] = x[1]  # nothing changes for example 1: every |Δ| is below eps
    attrs, delta = DeepLift(model).attribute(x, b, return_convergence_delta=True)
    assert bool(torch.isfinite(attrs).all()) and torch.equal(attrs[1], torch.zeros(4, dtype=F64))
    assert_complete(model, x, b, attrs, delta, None)
    # for example 1 the multipliers are the ordinary gradient at x (the eps fallback) ...
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(xg).sum(), xg)
    mult = DeepLift(model, multiply_by_inputs=False).attribute(x, b)
    torch.testing.assert_close(mult[1], grad[1], atol=1e-12, rtol=0)
    # ... and with an eps above every |Δx| DeepLift falls back to the gradient everywhere
    mult = DeepLift(model, multiply_by_inputs=False, eps=1e9).attribute(x, b)
    torch.testing.assert_close(mult, grad, atol=1e-12, rtol=0)
    assert not torch.allclose(DeepLift(model, multiply_by_inputs=False).attribute(x, b), grad)


# --- closed forms -------------------------------------------------------------------------------


def test_linear_model_closed_form() -> None:
    model = nn.Linear(5, 3).to(F64)
    x, b = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    target = [2, 0, 1, 2]
    attrs = DeepLift(model).attribute(x, b, target=target)
    expected = model.weight.detach()[target] * (x - b)
    torch.testing.assert_close(attrs, expected, atol=1e-12, rtol=0)
    mult = DeepLift(model, multiply_by_inputs=False).attribute(x, b, target=target)
    torch.testing.assert_close(mult, model.weight.detach()[target], atol=1e-12, rtol=0)


def _rescale(act: nn.Module, z: Tensor, zb: Tensor) -> Tensor:
    return (act(z) - act(zb)) / (z - zb)


@pytest.mark.parametrize("act", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_single_unit_closed_form(act) -> None:
    # f(x) = act(w . x): attr_i = w_i (x_i - b_i) (act(z) - act(z_b)) / (z - z_b)
    lin = nn.Linear(4, 1, bias=False).to(F64)
    model = nn.Sequential(lin, act())
    x, b = torch.randn(8, 4, dtype=F64), torch.randn(8, 4, dtype=F64)
    w = lin.weight.detach()[0]
    z, zb = x @ w, b @ w
    assert bool(((z > 0) != (zb > 0)).any()), "the data should cross the kink for some rows"
    expected = w * (x - b) * _rescale(act(), z, zb)[:, None]
    attrs = DeepLift(model).attribute(x, b)
    torch.testing.assert_close(attrs, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("act", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_two_layer_closed_form(act) -> None:
    # y = w2 . act(W1 x + b1) + c: multipliers m = W1^T (w2 * Δh / Δa)
    model = nn.Sequential(nn.Linear(5, 6), act(), nn.Linear(6, 2)).to(F64)
    x, b = torch.randn(7, 5, dtype=F64), torch.randn(7, 5, dtype=F64)
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    a, ab = x @ w1.T + b1, b @ w1.T + b1
    m = (w2[1] * _rescale(act(), a, ab)) @ w1
    attrs = DeepLift(model).attribute(x, b, target=1)
    torch.testing.assert_close(attrs, m * (x - b), atol=1e-12, rtol=0)


def test_softmax_closed_form() -> None:
    # p = softmax(W x + c): only the explained logit carries the change, m = W_t Δp_t / Δz_t
    model = nn.Sequential(nn.Linear(5, 4), nn.Softmax(dim=1)).to(F64)
    x, b = torch.randn(6, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
    w = model[0].weight.detach()
    t = 2
    with torch.no_grad():
        z, zb = model[0](x), model[0](b)
        p, pb = model(x), model(b)
    expected = w[t] * (x - b) * ((p[:, t] - pb[:, t]) / (z[:, t] - zb[:, t]))[:, None]
    attrs = DeepLift(model).attribute(x, b, target=t)
    torch.testing.assert_close(attrs, expected, atol=1e-12, rtol=0)


def test_max_over_inputs_credits_the_routed_argmax() -> None:
    # one window over all 5 inputs: Δy goes to the arg-max of the input's window when y >= y',
    # else to the arg-max of the baseline's window; every other position gets nothing
    model = nn.Sequential(nn.MaxPool1d(5), nn.Flatten())
    x = torch.tensor(
        [
            [[0.0, 3.0, 1.0, -1.0, 2.0]],  # y = 3 > y' = 2: credit x's arg-max (1)
            [[0.0, 1.0, 1.5, -1.0, 0.5]],  # y = 1.5 < y' = 4: credit b's arg-max (3)
            [[5.0, 1.0, 0.0, 0.0, 0.0]],  # same arg-max position as the baseline
            [[1.0, 2.0, 1.0, 2.5, 0.0]],  # y = y': no change to credit
        ],
        dtype=F64,
    )
    b = torch.tensor(
        [
            [[2.0, 0.0, 0.0, 0.0, -3.0]],
            [[0.0, 0.0, 1.0, 4.0, 0.0]],
            [[1.0, 0.0, 0.0, 0.0, 0.0]],
            [[2.5, 0.0, 0.0, 0.0, 0.0]],
        ],
        dtype=F64,
    )
    expected = torch.zeros_like(x)
    expected[0, 0, 1] = 3.0 - 2.0
    expected[1, 0, 3] = 1.5 - 4.0
    expected[2, 0, 0] = 5.0 - 1.0
    attrs, delta = DeepLift(model).attribute(x, b, return_convergence_delta=True)
    torch.testing.assert_close(attrs, expected, atol=1e-12, rtol=0)
    assert float(delta.abs().max()) < 1e-12
    # the multiplier of the routed position is Δy / Δx there
    mult = DeepLift(model, multiply_by_inputs=False).attribute(x, b)
    torch.testing.assert_close(mult[0, 0, 1], torch.tensor(1.0 / 3.0, dtype=F64))
    torch.testing.assert_close(mult[1, 0, 3], torch.tensor(-2.5 / -5.0, dtype=F64))


def test_multiply_by_inputs_false_returns_multipliers() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).to(F64)
    x, b = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    dl_m = DeepLift(model, multiply_by_inputs=False)
    assert not dl_m.multiplies_by_inputs and DeepLift(model).multiplies_by_inputs
    mult = dl_m.attribute(x, b, target=0)
    attrs = DeepLift(model).attribute(x, b, target=0)
    torch.testing.assert_close((x - b) * mult, attrs, atol=1e-12, rtol=0)
    assert not torch.allclose(mult, attrs)


# --- custom attribution functions ---------------------------------------------------------------


def test_custom_attribution_func_one_two_three_parameters() -> None:
    model = TwoInputNet().to(F64)
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(3, 3, dtype=F64)
    b1, b2 = torch.randn(1, 4, dtype=F64), 0.5
    scale = torch.rand(3, dtype=F64) + 0.5
    kw = dict(baselines=(b1, b2), target=1, additional_forward_args=(scale,))
    mult = DeepLift(model, multiply_by_inputs=False).attribute((x1, x2), **kw)
    default = DeepLift(model).attribute((x1, x2), **kw)
    seen = {}

    def one(m):
        seen[1] = m
        return tuple(2.0 * t for t in m)

    def two(m, inputs):
        seen[2] = inputs
        return tuple(t * i for t, i in zip(m, inputs))

    def three(m, inputs, baselines):
        seen[3] = baselines
        return tuple(t * (i - r) for t, i, r in zip(m, inputs, baselines))

    dl = DeepLift(model)
    out1 = dl.attribute((x1, x2), custom_attribution_func=one, **kw)
    out2 = dl.attribute((x1, x2), custom_attribution_func=two, **kw)
    out3, delta3 = dl.attribute(
        (x1, x2), custom_attribution_func=three, return_convergence_delta=True, **kw
    )
    assert isinstance(seen[1], tuple) and len(seen[1]) == 2
    for k in range(2):
        torch.testing.assert_close(out1[k], 2.0 * mult[k], atol=1e-12, rtol=0)
        torch.testing.assert_close(out2[k], mult[k] * (x1, x2)[k], atol=1e-12, rtol=0)
        torch.testing.assert_close(out3[k], default[k], atol=1e-12, rtol=0)
    torch.testing.assert_close(seen[2][0], x1)
    torch.testing.assert_close(seen[3][0], b1.expand_as(x1))
    torch.testing.assert_close(seen[3][1], torch.full_like(x2, 0.5))
    assert_complete(
        model, (x1, x2), (b1.expand_as(x1), torch.full_like(x2, 0.5)), out3, delta3, 1, scale
    )
    # the delta reflects whatever the custom function returned
    _, delta1 = dl.attribute(
        (x1, x2), custom_attribution_func=one, return_convergence_delta=True, **kw
    )
    base = (b1.expand_as(x1), torch.full_like(x2, 0.5))
    gap = select(model, (x1, x2), 1, scale) - select(model, base, 1, scale)
    torch.testing.assert_close(delta1, row_sums(out1) - gap, atol=1e-12, rtol=0)


def test_custom_attribution_func_wrong_count_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="returned 2 tensors for 1 inputs"):
        DeepLift(model).attribute(torch.randn(2, 3), custom_attribution_func=lambda m: (m[0], m[0]))


# --- argument forms -----------------------------------------------------------------------------


def test_baseline_forms_agree_with_explicit_tensors() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ELU(), nn.Linear(6, 2)).to(F64)
    x = torch.randn(4, 5, dtype=F64)
    dl = DeepLift(model)
    one = torch.randn(1, 5, dtype=F64)
    per_feature = torch.randn(5, dtype=F64)
    full = torch.randn(4, 5, dtype=F64)
    forms = {
        "none": (None, torch.zeros_like(x)),
        "int": (1, torch.ones_like(x)),
        "float": (-0.5, torch.full_like(x, -0.5)),
        "0-d tensor": (torch.tensor(0.25, dtype=F64), torch.full_like(x, 0.25)),
        "one example": (one, one.expand_as(x).clone()),
        "per feature": (per_feature, per_feature.expand_as(x).clone()),
        "full": (full, full),
        "1-tuple": ((one,), one.expand_as(x).clone()),
    }
    for name, (form, explicit) in forms.items():
        attrs, delta = dl.attribute(x, form, target=0, return_convergence_delta=True)
        expected = dl.attribute(x, explicit, target=0)
        torch.testing.assert_close(attrs, expected, atol=1e-12, rtol=0, msg=name)
        assert_complete(model, x, explicit, attrs, delta, 0)


def test_dtype_and_device(dtype: torch.dtype, device: str) -> None:
    model = nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)
    ).to(device=device, dtype=dtype)
    x = torch.randn(4, 5, device=device, dtype=dtype)
    b = torch.randn(1, 5, device=device, dtype=dtype)
    attrs, delta = DeepLift(model).attribute(x, b, target=2, return_convergence_delta=True)
    assert attrs.dtype == dtype and attrs.device.type == device
    assert delta.dtype == dtype and delta.shape == (4,)
    assert_complete(model, x, b.expand_as(x), attrs, delta, 2, atol=tol(dtype))
    if dtype == torch.float32:
        ref = DeepLift(model.to(F64)).attribute(x.to(F64), b.to(F64), target=2)
        torch.testing.assert_close(attrs.to(F64), ref, atol=1e-4, rtol=1e-4)


def test_two_inputs_with_additional_args_closed_form() -> None:
    model = TwoInputNet().to(F64)
    x1, x2 = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    b1, b2 = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    scale = torch.rand(5, dtype=F64) + 0.5
    target = [0, 1, 1, 0, 1]
    attrs, delta = DeepLift(model).attribute(
        (x1, x2), (b1, b2), target=target, additional_forward_args=(scale, 2.0),
        return_convergence_delta=True,
    )  # fmt: skip
    assert isinstance(attrs, tuple) and len(attrs) == 2
    assert_complete(model, (x1, x2), (b1, b2), attrs, delta, target, scale, 2.0)
    # closed form: h = relu(A x1 + B x2 + c), y_t = scale * (o_t . h) + shift
    A, B = model.a.weight.detach(), model.b.weight.detach()
    with torch.no_grad():
        pre = model.a(x1) + model.b(x2)
        pre_b = model.a(b1) + model.b(b2)
    g = scale[:, None] * model.out.weight.detach()[target] * _rescale(nn.ReLU(), pre, pre_b)
    torch.testing.assert_close(attrs[0], (g @ A) * (x1 - b1), atol=1e-12, rtol=0)
    torch.testing.assert_close(attrs[1], (g @ B) * (x2 - b2), atol=1e-12, rtol=0)


def test_target_forms_agree() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64)
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    dl = DeepLift(model)
    per_int = torch.stack([dl.attribute(x, b, target=t) for t in range(3)])  # (t, n, f)
    chosen = [2, 0, 1]
    expected = per_int[chosen, torch.arange(3)]
    torch.testing.assert_close(dl.attribute(x, b, target=chosen), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        dl.attribute(x, b, target=torch.tensor(chosen)), expected, atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        dl.attribute(x, b, target=torch.tensor(1)), per_int[1], atol=1e-12, rtol=0
    )
    assert not torch.allclose(per_int[0], per_int[1])


def test_inputs_not_mutated_and_model_clean() -> None:
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(5, 4), nn.ReLU(inplace=True))
    model.append(nn.Linear(4, 1))
    x = torch.randn(3, 5, requires_grad=True)
    b = torch.randn(3, 5)
    x0, b0 = x.detach().clone(), b.clone()
    DeepLift(model).attribute(x, b)
    DeepLiftShap(model).attribute(x, torch.randn(2, 5))
    assert torch.equal(x.detach(), x0) and torch.equal(b, b0)
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


# --- errors -------------------------------------------------------------------------------------


class _Counting(nn.Module):
    """Linear → inner → Linear, counting forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.inner = inner
        self.head = nn.Linear(4, 1)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        h = self.lin(x)
        if isinstance(self.inner, nn.LSTM):
            h = self.inner(h.unsqueeze(1))[0].squeeze(1)
        elif isinstance(self.inner, nn.MultiheadAttention):
            s = h.unsqueeze(1)
            h = self.inner(s, s, s)[0].squeeze(1)
        else:
            h = self.inner(h)
        return self.head(h)


@pytest.mark.parametrize(
    "inner",
    [
        lambda: nn.LayerNorm(4),
        lambda: nn.LSTM(4, 4, batch_first=True),
        lambda: nn.MultiheadAttention(4, 2, batch_first=True),
    ],
    ids=["LayerNorm", "LSTM", "MultiheadAttention"],
)
@pytest.mark.parametrize("method", [DeepLift, DeepLiftShap])
def test_unsupported_nonlinearity_refused_before_any_forward(inner, method) -> None:
    model = _Counting(inner())
    x = torch.randn(2, 4)
    assert model(x).shape == (2, 1)  # the model itself works
    model.calls = 0
    name = type(model.inner).__name__
    baselines = torch.zeros(3, 4) if method is DeepLiftShap else None
    with pytest.raises(TypeError, match=rf"no rule for {name} \(module 'inner'\)"):
        method(model).attribute(x, baselines)
    assert model.calls == 0


def test_module_used_twice_raises() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)
            self.act = nn.Sigmoid()

        def forward(self, x: Tensor) -> Tensor:
            return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    with pytest.raises(RuntimeError, match="Sigmoid runs more than once"):
        DeepLift(Twice()).attribute(torch.randn(2, 4))


def test_batchnorm_in_train_mode_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    stats = model[1].running_mean.clone()
    with pytest.raises(RuntimeError, match=r"BatchNorm1d \(module '1'\) is in training mode"):
        DeepLift(model).attribute(torch.randn(3, 4))
    assert torch.equal(model[1].running_mean, stats)  # no forward ran
    model.eval()
    DeepLift(model).attribute(torch.randn(3, 4))


def test_integer_inputs_raise() -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with pytest.raises(TypeError, match=r"needs floating-point inputs.*torch\.int64"):
        DeepLift(model).attribute(torch.randint(0, 5, (2, 4)))
    with pytest.raises(TypeError, match="needs floating-point inputs"):
        DeepLiftShap(model).attribute(torch.randint(0, 5, (2, 4)), torch.zeros(2, 4))


def test_non_module_refused() -> None:
    with pytest.raises(TypeError, match=r"needs an nn\.Module"):
        DeepLift(lambda x: x)  # type: ignore[arg-type]


# --- DeepLiftShap -------------------------------------------------------------------------------


def _shap_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7), nn.Sigmoid(), nn.Linear(7, 3)
    ).to(F64)


def test_deepliftshap_is_mean_of_deeplift_over_baselines() -> None:
    model = _shap_model()
    x, dist = torch.randn(3, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    target = [2, 0, 1]
    attrs, delta = DeepLiftShap(model).attribute(
        x, dist, target=target, return_convergence_delta=True
    )
    dl = DeepLift(model)
    expected = torch.stack([dl.attribute(x, dist[j : j + 1], target=target) for j in range(4)])
    torch.testing.assert_close(attrs, expected.mean(0), atol=1e-12, rtol=0)
    assert delta.shape == (3 * 4,)
    assert float(delta.abs().max()) < 1e-10
    # and the mean is complete with respect to the mean baseline output
    gap = select(model, x, target) - torch.stack(
        [select(model, dist[j : j + 1].expand_as(x), target) for j in range(4)]
    ).mean(0)
    torch.testing.assert_close(attrs.sum(1), gap, atol=1e-10, rtol=0)


def test_deepliftshap_delta_is_example_major() -> None:
    # with a custom function that breaks completeness, delta[i * n + j] is the gap of
    # example i against baseline j
    model = _shap_model()
    x, dist = torch.randn(2, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    attrs, delta = DeepLiftShap(model).attribute(
        x, dist, target=1, return_convergence_delta=True, custom_attribution_func=lambda m: m
    )
    mdl = DeepLift(model, multiply_by_inputs=False)
    expected = torch.empty(2, 3, dtype=F64)
    mults = []
    for j in range(3):
        bj = dist[j : j + 1].expand_as(x)
        m = mdl.attribute(x, bj, target=1)
        mults.append(m)
        expected[:, j] = m.sum(1) - (select(model, x, 1) - select(model, bj, 1))
    torch.testing.assert_close(delta, expected.reshape(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(attrs, torch.stack(mults).mean(0), atol=1e-12, rtol=0)


def test_deepliftshap_two_inputs_additional_args() -> None:
    model = TwoInputNet().to(F64)
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(3, 3, dtype=F64)
    d1, d2 = torch.randn(4, 4, dtype=F64), torch.randn(4, 3, dtype=F64)
    scale = torch.rand(3, dtype=F64) + 0.5
    target = torch.tensor([1, 0, 1])
    attrs, delta = DeepLiftShap(model).attribute(
        (x1, x2), (d1, d2), target=target, additional_forward_args=(scale, -1.0),
        return_convergence_delta=True,
    )  # fmt: skip
    dl = DeepLift(model)
    loop = [
        dl.attribute(
            (x1, x2), (d1[j : j + 1], d2[j : j + 1]), target=target,
            additional_forward_args=(scale, -1.0),
        )
        for j in range(4)
    ]  # fmt: skip
    for k in range(2):
        expected = torch.stack([a[k] for a in loop]).mean(0)
        torch.testing.assert_close(attrs[k], expected, atol=1e-12, rtol=0)
    assert delta.shape == (12,) and float(delta.abs().max()) < 1e-10


def test_deepliftshap_callable_baselines() -> None:
    model = _shap_model()
    x, dist = torch.randn(3, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    seen = []

    def from_inputs(inputs: Tensor) -> Tensor:  # Captum passes the inputs to a 1-arg callable
        seen.append(inputs)
        return dist

    expected = DeepLiftShap(model).attribute(x, dist, target=0)
    got0 = DeepLiftShap(model).attribute(x, lambda: dist, target=0)
    got1 = DeepLiftShap(model).attribute(x, from_inputs, target=0)
    torch.testing.assert_close(got0, expected, atol=0, rtol=0)
    torch.testing.assert_close(got1, expected, atol=0, rtol=0)
    assert len(seen) == 1 and seen[0] is x


def test_deepliftshap_multipliers_and_dtype(dtype: torch.dtype) -> None:
    model = _shap_model().to(dtype)
    x, dist = torch.randn(2, 5, dtype=dtype), torch.randn(3, 5, dtype=dtype)
    mult = DeepLiftShap(model, multiply_by_inputs=False).attribute(x, dist, target=2)
    loop = [
        DeepLift(model, multiply_by_inputs=False).attribute(x, dist[j : j + 1], target=2)
        for j in range(3)
    ]
    assert mult.dtype == dtype
    torch.testing.assert_close(mult, torch.stack(loop).mean(0), atol=tol(dtype), rtol=0)
