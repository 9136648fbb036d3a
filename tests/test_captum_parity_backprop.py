"""Saliency, InputXGradient, GuidedBackprop and Deconvolution against Captum 0.9 on the same models
and inputs (float64): values, shapes, dtypes, return types (tensor or tuple) and
``multiplies_by_inputs``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402

F64 = torch.float64


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(12, 8)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.relu1(self.conv(x))).flatten(1)
        return self.fc2(self.relu2(self.fc1(h)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(2, 5)
        self.relu, self.out = nn.ReLU(), nn.Linear(5, 2)

    def forward(self, x1: Tensor, x2: Tensor, scale: float) -> Tensor:
        return self.out(self.relu(self.a(x1) * scale + self.b(x2)))


def same(got, want) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w)
        return
    assert isinstance(got, Tensor) and got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-12)


METHODS = {
    "Saliency": {},
    "Saliency_signed": {"abs": False},
    "InputXGradient": {},
    "GuidedBackprop": {},
    "Deconvolution": {},
}


def build(name: str, lib, model: nn.Module):
    return getattr(lib, name.split("_")[0])(model)


@pytest.mark.parametrize("name", list(METHODS))
def test_single_input(name: str) -> None:
    torch.manual_seed(0)
    model = ConvNet().to(F64)
    x = torch.randn(3, 1, 6, 6, dtype=F64)
    target = torch.tensor([0, 3, 1])
    theirs, ours = build(name, captum_attr, copy.deepcopy(model)), build(name, llmattr, model)
    same(ours.attribute(x, target=target, **METHODS[name]),
         theirs.attribute(x, target=target, **METHODS[name]))  # fmt: skip
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs


@pytest.mark.parametrize("name", list(METHODS))
def test_tuple_inputs_and_additional_args(name: str) -> None:
    torch.manual_seed(1)
    model = TwoInputs().to(F64)
    xs = (torch.randn(4, 3, dtype=F64), torch.randn(4, 2, dtype=F64))
    kw = dict(target=1, additional_forward_args=(0.7,), **METHODS[name])
    theirs, ours = build(name, captum_attr, copy.deepcopy(model)), build(name, llmattr, model)
    same(ours.attribute(xs, **kw), theirs.attribute(xs, **kw))


TARGETS = {
    "too_many_dims": ((1, 2), AssertionError),
    "out_of_range": (7, IndexError),
    "list_wrong_length": ([0, 1, 2], AssertionError),
    "none_with_several_outputs": (None, AssertionError),
}


@pytest.mark.parametrize("case", list(TARGETS))
@pytest.mark.parametrize(
    "name", ["Saliency", "InputXGradient", "GuidedBackprop", "LRP", "DeepLift"]
)
def test_invalid_targets_raise_as_captum(name: str, case: str) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(F64)
    x = torch.randn(2, 4, dtype=F64)
    target, error = TARGETS[case]
    for lib in (captum_attr, llmattr):
        with pytest.raises(error):
            getattr(lib, name)(copy.deepcopy(model)).attribute(x, target=target)
