"""Every hook-using method leaves the model exactly as it found it, even when the forward or the
backward pass raises part-way through."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import Boom, assert_no_hooks, hook_state
from torch import Tensor, nn

from llmattr import LRP, Deconvolution, DeepLift, DeepLiftShap, GuidedBackprop


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        raise Boom("raised inside the backward pass")


class Trap(nn.Identity):
    """Identity (so every method accepts it) that raises in the forward or backward on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.mode: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "forward":
            raise Boom("raised in the middle of the forward pass")
        if self.mode == "backward":
            return _RaiseInBackward.apply(x)
        return x


class Net(nn.Module):
    """Every kind of hooked layer (ReLU, in-place ReLU, Tanh, MaxPool, Linear, Conv) runs before
    the trap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool1d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(6, 5)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(5, 5)
        self.relu2 = nn.ReLU()
        self.trap = Trap()
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.flat(self.pool(self.relu(self.conv(x))))
        h = self.relu2(self.fc2(self.act(self.fc1(h))))
        return self.head(self.trap(h))


METHODS: dict[str, Callable[[nn.Module, Tensor], Any]] = {
    "DeepLift": lambda m, x: DeepLift(m).attribute(x, torch.randn_like(x), target=1),
    "DeepLiftShap": lambda m, x: DeepLiftShap(m).attribute(
        x, torch.randn(3, *x.shape[1:]), target=1
    ),
    "GuidedBackprop": lambda m, x: GuidedBackprop(m).attribute(x, target=1),
    "Deconvolution": lambda m, x: Deconvolution(m).attribute(x, target=1),
    "LRP": lambda m, x: LRP(m).attribute(x, target=1),
}


@pytest.fixture
def net() -> tuple[Net, Tensor, Tensor]:
    model = Net().double()
    x = torch.randn(4, 1, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    return model, x, y


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_exception_leaves_no_hooks(net, method: str, mode: str) -> None:
    model, x, y = net
    x0 = x.clone()
    reference = METHODS[method](model, x)  # a clean run
    assert_no_hooks(model)
    model.trap.mode = mode
    with pytest.raises(Boom):
        METHODS[method](model, x)
    assert_no_hooks(model)
    model.trap.mode = None
    assert torch.equal(x, x0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, atol=0, rtol=0)
    assert all(p.grad is None for p in model.parameters())
    # the method still works and gives the same answer as before the failure
    if method not in ("DeepLift", "DeepLiftShap"):  # their baselines are random
        torch.testing.assert_close(METHODS[method](model, x), reference, atol=0, rtol=0)
    else:
        METHODS[method](model, x)
    assert_no_hooks(model)


@pytest.mark.parametrize("method", METHODS)
def test_users_own_hooks_survive(net, method: str) -> None:
    model, x, _ = net
    seen: list[str] = []
    handle = model.fc1.register_forward_hook(lambda m, i, o: seen.append("fwd"))
    pre = model.relu2.register_forward_pre_hook(lambda m, i: seen.append("pre"))
    before = hook_state(model)
    model.trap.mode = "forward"
    with pytest.raises(Boom):
        METHODS[method](model, x)
    model.trap.mode = None
    assert hook_state(model) == before
    seen.clear()
    model(x)
    assert seen == ["fwd", "pre"]
    handle.remove()
    pre.remove()
    assert_no_hooks(model)


def test_errors_raised_by_the_methods_leave_no_hooks() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.act(self.fc(self.act(x))))  # the in-place ReLU runs twice

    model = Twice().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    x0 = x.clone()
    clean = copy.deepcopy(model)
    clean.act = nn.ReLU()
    expected = GuidedBackprop(clean).attribute(x, target=1)
    with pytest.raises(RuntimeError, match="more than once"):  # raised inside the forward
        DeepLift(model).attribute(x)
    assert_no_hooks(model)
    for method in (DeepLift, LRP, GuidedBackprop, Deconvolution):
        shallow = nn.Sequential(nn.Linear(3, 2), nn.ReLU()).double()
        with pytest.raises(IndexError, match="out of range"):  # checked at the first forward
            method(shallow).attribute(x, target=5)
        assert_no_hooks(shallow)
    with pytest.raises(IndexError, match="out of range"):
        GuidedBackprop(model).attribute(x, target=2)
    assert_no_hooks(model)
    assert torch.equal(x, x0)
    # no half-filled state (e.g. the in-place ReLU's stashed inputs) leaks into the next call
    got = GuidedBackprop(model).attribute(x, target=1)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
