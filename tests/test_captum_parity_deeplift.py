"""DeepLift and DeepLiftShap against Captum 0.9 on the same models and inputs (float64): values,
deltas, shapes and return types where Captum's rules are exact (element-wise non-linearities),
``multiply_by_inputs`` in both settings and ``custom_attribution_func``; and where Captum's rules
leave a completeness gap (MaxPool, Softmax) that ours closes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402

F64 = torch.float64


def mlp(act: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 7), act(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)
    ).to(F64)  # fmt: skip


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
        self.relu, self.sig, self.out = nn.ReLU(), nn.Sigmoid(), nn.Linear(8, 2)

    def forward(self, x1: Tensor, x2: Tensor, scale: Tensor) -> Tensor:
        h = torch.cat([self.relu(self.a(x1)), self.sig(self.b(x2))], 1)
        return self.out(h * scale)


def same(got, want, atol: float = 1e-10) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w, atol)
        return
    assert isinstance(got, Tensor) and got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want.detach(), rtol=1e-7, atol=atol)


ACTS = [nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Softplus]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("mult", [True, False])
def test_deeplift_matches_captum(act: type[nn.Module], mult: bool) -> None:
    model = mlp(act)
    x, b = torch.randn(4, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    want, want_d = captum_attr.DeepLift(copy.deepcopy(model), multiply_by_inputs=mult).attribute(
        x, b, target=1, return_convergence_delta=True
    )
    ours = llmattr.DeepLift(model, multiply_by_inputs=mult)
    got, got_d = ours.attribute(x, b, target=1, return_convergence_delta=True)
    same(got, want)
    same(got_d, want_d)
    assert ours.multiplies_by_inputs == mult


@pytest.mark.parametrize("mult", [True, False])
def test_deeplift_shap_matches_captum(mult: bool) -> None:
    model = mlp(nn.ReLU)
    x, dist = torch.randn(3, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    want, want_d = captum_attr.DeepLiftShap(
        copy.deepcopy(model), multiply_by_inputs=mult
    ).attribute(x, dist, target=[0, 2, 1], return_convergence_delta=True)
    got, got_d = llmattr.DeepLiftShap(model, multiply_by_inputs=mult).attribute(
        x, dist, target=[0, 2, 1], return_convergence_delta=True
    )
    same(got, want)
    same(got_d, want_d)  # (batch * n_baselines,), example-major


def test_tuple_inputs_additional_args_and_custom_function() -> None:
    torch.manual_seed(1)
    model = TwoInputs().to(F64)
    xs = (torch.randn(3, 3, dtype=F64), torch.randn(3, 2, dtype=F64))
    bs = (torch.zeros(1, 3, dtype=F64), torch.full((1, 2), 0.5, dtype=F64))
    scale = torch.rand(3, 1, dtype=F64) + 0.5

    def custom(mults, inputs, baselines):
        return tuple(m * (x - b) ** 2 for m, x, b in zip(mults, inputs, baselines))

    for kw in ({}, {"custom_attribution_func": custom}):
        want, want_d = captum_attr.DeepLift(copy.deepcopy(model)).attribute(
            xs, bs, target=0, additional_forward_args=(scale,), return_convergence_delta=True,
            **kw,
        )  # fmt: skip
        got, got_d = llmattr.DeepLift(model).attribute(
            xs, bs, target=0, additional_forward_args=(scale,), return_convergence_delta=True,
            **kw,
        )  # fmt: skip
        same(got, want)
        same(got_d, want_d)


class PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2, stride=1)
        self.fc = nn.Linear(2 * 4 * 4, 4)
        self.soft = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.soft(self.fc(self.pool(self.conv(x)).flatten(1)))


def test_maxpool_and_softmax_exact_where_captum_leaves_a_gap() -> None:
    # overlapping max-pool windows and a softmax: Captum's rules do not sum to f(x) - f(x');
    # ours do to machine precision (README: "DeepLift is exact")
    torch.manual_seed(2)
    model = PoolNet().to(F64)
    x, b = torch.randn(3, 1, 7, 7, dtype=F64), torch.randn(1, 1, 7, 7, dtype=F64)
    _, want_d = captum_attr.DeepLift(copy.deepcopy(model)).attribute(
        x, b, target=2, return_convergence_delta=True
    )
    got, got_d = llmattr.DeepLift(model).attribute(x, b, target=2, return_convergence_delta=True)
    assert got.shape == x.shape
    torch.testing.assert_close(got_d, torch.zeros_like(got_d), rtol=0, atol=1e-12)
    assert float(want_d.abs().max()) > 1e-6


@pytest.mark.parametrize(
    "baselines",
    [
        lambda: (0.0, 0.0001),
        lambda: (torch.zeros(1, 3), torch.zeros(1, 3)),
        lambda: ([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ],
    ids=["numbers", "one-example", "lists"],
)
@pytest.mark.parametrize("layered", [False, True])
def test_shap_needs_a_distribution_of_baselines_as_captum(baselines, layered: bool) -> None:
    """DeepLiftShap and LayerDeepLiftShap need at least two baseline examples per input (a
    tensor): numbers, one example or lists are refused with an AssertionError in both."""

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.relu = nn.ReLU()

        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return self.relu(self.lin(a) + self.lin(b))

    x = (torch.tensor([[-10.0, 1.0, -5.0]]), torch.tensor([[3.0, 3.0, 1.0]]))
    for lib in (llmattr, captum_attr):
        model = TwoInputs()
        method = lib.LayerDeepLiftShap(model, model.lin) if layered else lib.DeepLiftShap(model)
        with pytest.raises(AssertionError):
            method.attribute(x, baselines, target=0)
