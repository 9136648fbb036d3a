"""Guided backpropagation and deconvolution: the modified ReLU backward, checked by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, TwoInputNet
from torch import Tensor, nn

from llmattr import Deconvolution, GuidedBackprop

F64 = torch.float64


def guided_rule(g: Tensor, pre: Tensor) -> Tensor:
    """Guided backprop at a ReLU: the ordinary ReLU gradient, then only its positive part."""
    return (g * (pre > 0)).clamp(min=0)


def deconv_rule(g: Tensor, pre: Tensor) -> Tensor:
    """Deconvolution at a ReLU: the incoming gradient rectified, whatever the forward sign."""
    return g.clamp(min=0)


def plain_rule(g: Tensor, pre: Tensor) -> Tensor:
    return g * (pre > 0)


RULES = {GuidedBackprop: guided_rule, Deconvolution: deconv_rule}
METHODS = pytest.mark.parametrize("method", [GuidedBackprop, Deconvolution])


class ThreeLayer(nn.Module):
    """y = W3 relu(W2 relu(W1 x + b1) + b2) + b3, optionally with a shared or in-place ReLU, or
    a functional ReLU in the first position."""

    def __init__(self, mode: str = "modules") -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)
        self.mode = mode
        self.relu1 = nn.ReLU(inplace=mode == "inplace")
        self.relu2 = self.relu1 if mode == "shared" else nn.ReLU(inplace=mode == "inplace")

    def forward(self, x: Tensor) -> Tensor:
        a1 = self.fc1(x)
        h1 = F.relu(a1) if self.mode == "functional" else self.relu1(a1)
        return self.fc3(self.relu2(self.fc2(h1)))


def by_hand(model: ThreeLayer, x: Tensor, target: list[int], first, second) -> Tensor:
    """The modified backward of ThreeLayer, written with tensor ops."""
    w1, w2, w3 = (m.weight.detach() for m in (model.fc1, model.fc2, model.fc3))
    with torch.no_grad():
        a1 = model.fc1(x)
        a2 = model.fc2(torch.relu(a1))
    g = w3[target]  # (n, 6): d y_t / d relu(a2)
    g = second(g, a2) @ w2  # back through relu2 and fc2
    return first(g, a1) @ w1  # back through relu1 and fc1


@METHODS
@pytest.mark.parametrize("mode", ["modules", "shared", "inplace"])
def test_modified_backward_by_hand(method, mode: str) -> None:
    model = ThreeLayer(mode).to(F64)
    x = torch.randn(6, 5, dtype=F64)
    x0 = x.clone()
    target = [0, 1, 2, 2, 1, 0]
    got = method(model).attribute(x, target=target)
    rule = RULES[method]
    expected = by_hand(model, x, target, rule, rule)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert torch.equal(x, x0)
    # the data exercise the rule: the result is not the ordinary gradient
    plain = by_hand(model, x, target, plain_rule, plain_rule)
    assert not torch.allclose(got, plain, atol=1e-6)


@METHODS
def test_functional_relu_keeps_ordinary_gradient(method) -> None:
    model = ThreeLayer("functional").to(F64)
    x = torch.randn(6, 5, dtype=F64)
    got = method(model).attribute(x, target=1)
    expected = by_hand(model, x, [1] * 6, plain_rule, RULES[method])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_two_layer_guided_formula() -> None:
    # y = w2 . relu(W1 x): guided = W1^T relu(w2 * (W1 x > 0)), deconv = W1^T relu(w2)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 1, bias=False))
    model = model.to(F64)
    x = torch.randn(8, 4, dtype=F64)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()[0]
    guided = GuidedBackprop(model).attribute(x)
    expected = torch.relu(w2 * (x @ w1.T > 0)) @ w1
    torch.testing.assert_close(guided, expected, atol=1e-12, rtol=0)
    deconv = Deconvolution(model).attribute(x)
    torch.testing.assert_close(deconv, (torch.relu(w2) @ w1).expand_as(x), atol=1e-12, rtol=0)


@METHODS
def test_without_relu_it_is_the_gradient(method) -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
    torch.testing.assert_close(method(model).attribute(x.detach(), target=1), grad)


@METHODS
def test_two_inputs_additional_args(method) -> None:
    model = TwoInputNet().to(F64)
    x1, x2 = torch.randn(4, 4, dtype=F64), torch.randn(4, 3, dtype=F64)
    scale = torch.rand(4, dtype=F64) + 0.5
    got = method(model).attribute((x1, x2), target=[1, 0, 0, 1], additional_forward_args=(scale,))
    assert isinstance(got, tuple) and len(got) == 2
    with torch.no_grad():
        pre = model.a(x1) + model.b(x2)
    g = scale[:, None] * model.out.weight.detach()[[1, 0, 0, 1]]
    g = RULES[method](g, pre)
    torch.testing.assert_close(got[0], g @ model.a.weight.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(got[1], g @ model.b.weight.detach(), atol=1e-12, rtol=0)


@METHODS
def test_cnn_matches_manual_hooks_free_computation(method) -> None:
    # SmallCNN: conv → relu → maxpool → linear; by hand with autograd on the pieces
    model = SmallCNN().to(F64)
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    got = method(model).attribute(x, target=2)
    xa = x.clone().requires_grad_()
    a = model.conv(xa)
    h = a.detach().clamp(min=0).requires_grad_()
    out = model.fc(model.flatten(model.pool(h)))[:, 2].sum()
    (g_h,) = torch.autograd.grad(out, h)
    (expected,) = torch.autograd.grad(a, xa, RULES[method](g_h, a.detach()))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@METHODS
def test_dtype_device_and_clean_model(method, dtype: torch.dtype, device: str) -> None:
    model = ThreeLayer("modules").to(device=device, dtype=dtype)
    x = torch.randn(4, 5, device=device, dtype=dtype, requires_grad=True)
    got = method(model).attribute(x, target=0)
    assert got.dtype == dtype and got.device.type == device and got.shape == x.shape
    assert x.grad is None and all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    rule = RULES[method]
    expected = by_hand(model, x.detach(), [0] * 4, rule, rule)
    torch.testing.assert_close(
        got, expected, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0
    )


@METHODS
def test_errors(method) -> None:
    with pytest.raises(TypeError, match=r"needs an nn\.Module"):
        method(lambda x: x)
    model = ThreeLayer()
    with pytest.raises(TypeError, match="floating-point"):
        method(model).attribute(torch.randint(0, 3, (2, 5)), target=0)
