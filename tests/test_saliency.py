"""Saliency and InputXGradient: closed forms on linear and polynomial models, targets, several
inputs with extra forward arguments, dtypes and devices, input hygiene and errors."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP, SmallCNN, TwoInputNet, rand, tol
from torch import nn

from llmattr import InputXGradient, Saliency

F64 = torch.float64


class Linear(nn.Module):
    """f(x) = x @ W + c with k outputs."""

    def __init__(self, d: int = 5, k: int = 3) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(d, k))
        self.c = nn.Parameter(torch.randn(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W + self.c


class Cubic(nn.Module):
    """f(x) = sum_j c_j x_j³ + sum_j s_j sin(x_j), one output per example."""

    def __init__(self, c: torch.Tensor, s: torch.Tensor) -> None:
        super().__init__()
        self.c = nn.Parameter(c)
        self.s = nn.Parameter(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.c * x**3 + self.s * torch.sin(x)).sum(1)


class Out3D(nn.Module):
    """(batch, 2, 3) output: out[:, i, j] = tanh(x @ W[:, 3i + j])."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(d, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.W).reshape(-1, 2, 3)


# --- closed forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0, 2, -1])
def test_linear_model_closed_forms(target: int) -> None:
    model = Linear().to(F64)
    x = rand(4, 5)
    w = model.W.detach()[:, target]
    signed = Saliency(model).attribute(x, target=target, abs=False)
    assert torch.allclose(signed, w.expand(4, 5), rtol=0, atol=1e-14)
    absolute = Saliency(model).attribute(x, target=target)
    assert torch.allclose(absolute, w.abs().expand(4, 5), rtol=0, atol=1e-14)
    ixg = InputXGradient(model).attribute(x, target=target)
    assert torch.allclose(ixg, x * w, rtol=0, atol=1e-14)


def test_cubic_model_closed_forms() -> None:
    c = torch.tensor([1.0, -2.0, 0.5, -0.25], dtype=F64)
    s = torch.tensor([0.3, 0.0, -1.0, 2.0], dtype=F64)
    model = Cubic(c.clone(), s.clone()).to(F64)
    x = rand(3, 4)
    grad = 3 * c * x**2 + s * torch.cos(x)
    assert (grad < 0).any() and (grad > 0).any()  # the sign matters for `abs`
    assert torch.allclose(Saliency(model).attribute(x, abs=False), grad, rtol=0, atol=1e-13)
    assert torch.allclose(Saliency(model).attribute(x), grad.abs(), rtol=0, atol=1e-13)
    assert torch.allclose(InputXGradient(model).attribute(x), x * grad, rtol=0, atol=1e-13)


def test_pure_cubic_input_x_gradient_is_three_times_the_term() -> None:
    # f = sum(x³): x·f'(x) = 3x³, each term's "degree times value"
    x = rand(2, 6)
    ixg = InputXGradient(lambda z: (z**3).sum(1)).attribute(x)
    assert torch.allclose(ixg, 3 * x**3, rtol=0, atol=1e-13)
    sal = Saliency(lambda z: (z**3).sum(1)).attribute(x, abs=False)
    assert torch.allclose(sal, 3 * x**2, rtol=0, atol=1e-13)


def test_examples_do_not_mix_in_a_batch() -> None:
    model = MLP().to(F64)
    x = rand(5, 6)
    batch = Saliency(model).attribute(x, target=1, abs=False)
    single = torch.cat(
        [Saliency(model).attribute(x[i : i + 1], target=1, abs=False) for i in range(5)]
    )
    assert torch.allclose(batch, single, rtol=0, atol=1e-14)


def test_image_inputs() -> None:
    cnn = SmallCNN().to(F64)
    x = rand(2, 1, 8, 8)
    sal = Saliency(cnn).attribute(x, target=3, abs=False)
    assert sal.shape == x.shape
    # finite differences at a few pixels (the CNN is piecewise linear: a small step stays linear)
    eps = 1e-6
    for pix in [(0, 0, 2, 3), (1, 0, 5, 5), (0, 0, 7, 0)]:
        xp, xm = x.clone(), x.clone()
        xp[pix] += eps
        xm[pix] -= eps
        with torch.no_grad():
            fd = (cnn(xp)[pix[0], 3] - cnn(xm)[pix[0], 3]) / (2 * eps)
        assert abs(float(fd) - float(sal[pix])) < 1e-6
    assert torch.allclose(InputXGradient(cnn).attribute(x, target=3), x * sal, atol=1e-14)


# --- targets ------------------------------------------------------------------------------------


def test_target_forms_match_per_example_wrappers() -> None:
    model = Out3D().to(F64)
    x = rand(3, 4)
    idx = [(0, 1), (1, 2), (1, 0)]

    def per_example(method: type, pairs: list[tuple[int, int]]) -> torch.Tensor:
        rows = []
        for i, (a, b) in enumerate(pairs):
            pick = lambda z, a=a, b=b: model(z)[:, a, b]  # noqa: E731
            rows.append(method(pick).attribute(x[i : i + 1]))
        return torch.cat(rows)

    for method in (Saliency, InputXGradient):
        expected = per_example(method, idx)
        for target in (idx, torch.tensor(idx)):
            assert torch.allclose(method(model).attribute(x, target=target), expected, atol=1e-14)
        shared = per_example(method, [(1, 2)] * 3)
        assert torch.allclose(method(model).attribute(x, target=(1, 2)), shared, atol=1e-14)


def test_int_target_forms() -> None:
    model = Linear().to(F64)
    W = model.W.detach()
    x = rand(3, 5)
    sal = Saliency(model)
    assert torch.allclose(sal.attribute(x, target=torch.tensor(1)), W[:, 1].abs().expand(3, 5))
    per_ex = sal.attribute(x, target=[2, 0, 1], abs=False)
    assert torch.allclose(per_ex, W[:, [2, 0, 1]].T, rtol=0, atol=1e-14)
    per_ex_t = sal.attribute(x, target=torch.tensor([2, 0, 1]), abs=False)
    assert torch.equal(per_ex_t, per_ex)
    single_output = Saliency(lambda z: model(z)[:, :1]).attribute(x, abs=False)  # target None
    assert torch.allclose(single_output, W[:, 0].expand(3, 5), rtol=0, atol=1e-14)


# --- several inputs, extra arguments ----------------------------------------------------------


def test_two_inputs_with_extra_args_follow_their_example() -> None:
    net = TwoInputNet().to(F64)
    x1, x2 = rand(4, 4), rand(4, 3)
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    for method in (Saliency(net), InputXGradient(net)):
        out = method.attribute((x1, x2), target=0, additional_forward_args=(scale, 1.5))
        assert isinstance(out, tuple) and len(out) == 2
        for i in range(4):
            single = method.attribute(
                (x1[i : i + 1], x2[i : i + 1]), target=0,
                additional_forward_args=(scale[i : i + 1], 1.5),
            )  # fmt: skip
            assert torch.allclose(out[0][i : i + 1], single[0], rtol=0, atol=1e-14)
            assert torch.allclose(out[1][i : i + 1], single[1], rtol=0, atol=1e-14)
    # the per-example scale multiplies that example's gradient
    g = Saliency(net).attribute((x1, x2), target=0, abs=False, additional_forward_args=(scale,))
    g1 = Saliency(net).attribute(
        (x1, x2), target=0, abs=False, additional_forward_args=(torch.ones(4, dtype=F64),)
    )
    assert torch.allclose(g[0], scale[:, None] * g1[0], rtol=0, atol=1e-14)


def test_unused_input_gets_zero_gradient() -> None:
    x, y = rand(2, 3), rand(2, 4)
    gx, gy = Saliency(lambda a, b: (a**2).sum(1)).attribute((x, y), abs=False)
    assert torch.allclose(gx, 2 * x) and torch.equal(gy, torch.zeros_like(y))


# --- dtype, device, hygiene, form ---------------------------------------------------------------


def test_dtype_and_device(dtype: torch.dtype, device: str) -> None:
    model = Linear().to(device=device, dtype=dtype)
    x = torch.randn(3, 5, dtype=dtype, device=device)
    w = model.W.detach()[:, 1]
    for out, expected in (
        (Saliency(model).attribute(x, target=1), w.abs().expand(3, 5)),
        (InputXGradient(model).attribute(x, target=1), x * w),
    ):
        assert out.dtype == dtype and out.device.type == device
        assert torch.allclose(out, expected, rtol=0, atol=tol(dtype))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_inputs_untouched_and_no_parameter_grads(requires_grad: bool) -> None:
    model = MLP().to(F64)
    x = rand(3, 6).requires_grad_(requires_grad)
    before = x.detach().clone()
    Saliency(model).attribute(x, target=0)
    InputXGradient(model).attribute(x, target=0)
    assert torch.equal(x.detach(), before)
    assert x.requires_grad is requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_tensor_and_tuple_input_forms() -> None:
    model = MLP().to(F64)
    x = rand(2, 6)
    for method in (Saliency(model), InputXGradient(model)):
        t = method.attribute(x, target=2)
        tup = method.attribute((x,), target=2)
        assert isinstance(t, torch.Tensor)
        assert isinstance(tup, tuple) and len(tup) == 1 and torch.equal(tup[0], t)


def test_flags() -> None:
    model = MLP()
    assert InputXGradient(model).multiplies_by_inputs
    assert not Saliency(model).multiplies_by_inputs
    assert Saliency.get_name() == "Saliency"
    assert InputXGradient.get_name() == "Input X Gradient"


# --- errors -------------------------------------------------------------------------------------


def test_integer_inputs_are_refused() -> None:
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match="Saliency needs floating-point inputs"):
        Saliency(lambda z: z.float().sum(1)).attribute(ids)
    with pytest.raises(TypeError, match="InputXGradient needs floating-point inputs"):
        InputXGradient(lambda z: z.float().sum(1)).attribute(ids)


def test_output_without_gradient() -> None:
    def detached(x: torch.Tensor) -> torch.Tensor:
        return x.detach().sum(1)

    with pytest.raises(RuntimeError, match="does not depend on the inputs"):
        Saliency(detached).attribute(rand(2, 3))


def test_target_errors() -> None:
    model = Linear().to(F64)
    x = rand(2, 5)
    with pytest.raises(IndexError, match="out of range"):
        Saliency(model).attribute(x, target=3)
    with pytest.raises(ValueError, match="no target was given"):
        InputXGradient(model).attribute(x)
    with pytest.raises(ValueError, match="list of 3 entries"):
        Saliency(model).attribute(x, target=[0, 1, 2])
