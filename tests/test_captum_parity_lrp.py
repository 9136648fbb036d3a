"""LRP and LayerLRP against Captum 0.9 on the same models and inputs (float64): relevance, deltas
(Captum's sign: ``output - sum(relevance)``), return types for single layers and lists, and the
errors Captum raises. Captum deletes the ``rule`` attributes it reads after every call, so each
call gets a fresh copy of the model with its rules set."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import assert_no_hooks
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")
captum_rules = pytest.importorskip("captum.attr._utils.lrp_rules")

import llmattr  # noqa: E402
from llmattr.attr import lrp as ours_rules  # noqa: E402

F64 = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-7}  # both stabilize divisions by 1e-9 in slightly different ways


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)
    ).to(F64)  # fmt: skip


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 2)
        self.relu2 = nn.ReLU()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.relu(self.bn(self.conv(x))))
        return self.fc(self.avg(self.relu2(self.conv2(h))).flatten(1))


def conv_net() -> ConvNet:
    net = ConvNet().to(F64)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


# rule name → (Captum rule factory, our rule factory), set on every Linear/Conv2d
RULES: dict[str, tuple[Callable[[], object], Callable[[], object]] | None] = {
    "default": None,
    "epsilon": (lambda: captum_rules.EpsilonRule(0.1), lambda: ours_rules.EpsilonRule(0.1)),
    "gamma": (lambda: captum_rules.GammaRule(0.3), lambda: ours_rules.GammaRule(0.3)),
    "gamma_no_bias": (
        lambda: captum_rules.GammaRule(0.3, set_bias_to_zero=True),
        lambda: ours_rules.GammaRule(0.3, set_bias_to_zero=True),
    ),
    # Captum's α1β0 clamps the weights only: it is the α1β0 rule when the layer's inputs are
    # non-negative and the bias is dropped (elsewhere see test_alpha1_beta0_keeps_positive...)
    "alpha1_beta0": (
        lambda: captum_rules.Alpha1_Beta0_Rule(set_bias_to_zero=True),
        lambda: ours_rules.Alpha1_Beta0_Rule(set_bias_to_zero=True),
    ),
}


def with_rules(model: nn.Module, rule: str, captum: bool, where: tuple[type, ...]) -> nn.Module:
    model = copy.deepcopy(model)
    factories = RULES[rule]
    if factories is not None:
        for m in model.modules():
            if isinstance(m, where):
                m.rule = factories[0 if captum else 1]()
    return model


def positive_mlp_input(n: int) -> Tensor:
    return torch.rand(n, 4, dtype=F64)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_lrp_matches_captum(rule: str, arch: str) -> None:
    torch.manual_seed(1)
    if arch == "mlp":
        model, x, where = mlp(), positive_mlp_input(3), (nn.Linear,)
        if rule == "alpha1_beta0":  # only the first layer sees non-negative inputs for sure
            where = ()
    else:
        model, x, where = conv_net(), torch.rand(2, 1, 8, 8, dtype=F64), (nn.Conv2d,)
    want, want_d = captum_attr.LRP(with_rules(model, rule, True, where)).attribute(
        x, target=1, return_convergence_delta=True
    )
    got, got_d = llmattr.LRP(with_rules(model, rule, False, where)).attribute(
        x, target=1, return_convergence_delta=True
    )
    assert type(got) is type(want) and got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want.detach(), **TOL)
    assert got_d.shape == want_d.shape
    torch.testing.assert_close(got_d, want_d.detach(), rtol=1e-6, atol=1e-6)


def test_lrp_alpha1_beta0_on_first_layer_and_tuple_inputs() -> None:
    torch.manual_seed(2)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
            self.relu, self.out = nn.ReLU(), nn.Linear(8, 2)

        def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
            return self.out(self.relu(torch.cat([self.a(x1), self.b(x2)], 1)))

    model = Two().to(F64)
    x = (torch.rand(5, 3, dtype=F64), torch.rand(5, 2, dtype=F64))

    def run(lib, rule_mod) -> tuple[tuple[Tensor, ...], Tensor]:
        m = copy.deepcopy(model)
        m.a.rule = rule_mod.Alpha1_Beta0_Rule(set_bias_to_zero=True)
        return lib.LRP(m).attribute(x, target=0, return_convergence_delta=True)

    want, want_d = run(captum_attr, captum_rules)
    got, got_d = run(llmattr, ours_rules)
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.detach(), **TOL)
    torch.testing.assert_close(got_d, want_d.detach(), rtol=1e-6, atol=1e-6)


def test_lrp_addition_outside_modules_conserves_where_captum_double_counts() -> None:
    # ``a(x1) + b(x2)`` outside any module: Captum lets the plain gradient copy the relevance of
    # the sum to both branches, so relevance is counted twice; ours splits it in proportion to
    # the summands (the z-rule of the addition), so a bias-free net conserves it
    torch.manual_seed(6)

    class Add(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
            self.relu, self.out = nn.ReLU(), nn.Linear(4, 1, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.relu(self.a(x) + self.b(x)))

    model, x = Add().to(F64), torch.rand(4, 3, dtype=F64)
    out = model(x)[:, 0].detach()
    got = llmattr.LRP(copy.deepcopy(model)).attribute(x, target=0)
    want = captum_attr.LRP(copy.deepcopy(model)).attribute(x, target=0)
    torch.testing.assert_close(got.sum(1), out, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(want.sum(1), out, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("rule", ["default", "epsilon", "gamma", "gamma_no_bias"])
@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("as_list", [False, True])
def test_layer_lrp_matches_captum(rule: str, to_input: bool, as_list: bool) -> None:
    torch.manual_seed(3)
    model, x = mlp(), positive_mlp_input(4)

    def run(lib, captum: bool):
        m = with_rules(model, rule, captum, (nn.Linear,))
        layer = [m[0], m[2], m[4]] if as_list else m[2]
        return lib.LayerLRP(m, layer).attribute(
            x, target=2, return_convergence_delta=True, attribute_to_layer_input=to_input
        )

    want, want_d = run(captum_attr, True)
    got, got_d = run(llmattr, False)
    if as_list:
        assert isinstance(got, list) and isinstance(got_d, list)
        assert len(got) == len(want) == len(got_d) == len(want_d) == 3
    else:
        got, want, got_d, want_d = [got], [want], [got_d], [want_d]
    for g, w, gd, wd in zip(got, want, got_d, want_d):
        assert type(g) is type(w) and g.shape == w.shape
        torch.testing.assert_close(g, w.detach(), **TOL)
        torch.testing.assert_close(gd, wd.detach(), rtol=1e-6, atol=1e-6)


def test_lrp_delta_sign_is_output_minus_relevance() -> None:
    torch.manual_seed(4)
    model, x = mlp(), positive_mlp_input(3)
    rel, delta = llmattr.LRP(model).attribute(x, target=0, return_convergence_delta=True)
    out = model(x)[:, 0].detach()
    torch.testing.assert_close(delta, out - rel.sum(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        llmattr.LRP(model).compute_convergence_delta(rel, out), out - rel.sum(1)
    )


# --- errors -------------------------------------------------------------------------------------


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fc(self.fc(x)))


class NoRule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.fc(x)).sum(1, keepdim=True)


def _bad_rule_model() -> nn.Module:
    m = mlp()
    m[0].rule = "epsilon"
    return m


@pytest.mark.parametrize(
    ("build", "error"),
    [(Reused, RuntimeError), (NoRule, TypeError), (_bad_rule_model, TypeError)],
    ids=["reused_module", "unsupported_layer", "bad_rule"],
)
@pytest.mark.parametrize("layered", [False, True])
def test_errors_as_captum(build, error: type[Exception], layered: bool) -> None:
    torch.manual_seed(5)
    model = build().to(F64)
    x = torch.rand(2, model.fc.in_features if hasattr(model, "fc") else 4, dtype=F64)
    target = 0

    def run(lib, m: nn.Module):
        first = next(c for c in m.modules() if isinstance(c, nn.Linear))
        method = lib.LayerLRP(m, first) if layered else lib.LRP(m)
        return method.attribute(x, target=target)

    with pytest.raises(error):
        run(captum_attr, copy.deepcopy(model))
    ours = copy.deepcopy(model)
    with pytest.raises(error):
        run(llmattr, ours)
    assert_no_hooks(ours)


def test_alpha1_beta0_propagates_only_positive_contributions_where_captum_does_not() -> None:
    # α1β0 (Captum: "only positive relevance is propagated"): R_i = (x_i w_i)⁺ / Σ (x_j w_j)⁺ · y.
    # Captum clamps the weights only, so a negative input with a positive weight gets negative
    # relevance; ours clamps the products, which is the rule on inputs of either sign
    torch.manual_seed(7)
    model = nn.Linear(5, 1, bias=False).to(F64)
    x = torch.randn(64, 5, dtype=F64)
    keep = model(x)[:, 0] > 0
    x = x[keep]

    def run(lib, rule_mod) -> Tensor:
        m = copy.deepcopy(model)
        m.rule = rule_mod.Alpha1_Beta0_Rule(set_bias_to_zero=True)
        return lib.LRP(m).attribute(x, target=0)

    ours, theirs = run(llmattr, ours_rules), run(captum_attr, captum_rules)
    assert bool((ours >= -1e-12).all())
    assert bool((theirs < -1e-3).any())


def test_a_rule_that_is_no_propagation_rule_is_refused_at_construction() -> None:
    """Captum raises TypeError when LRP is created over a model with ``module.rule = 1``; so do
    we (and for a bad entry of ``rules=``), before any forward."""
    for lib in (llmattr, captum_attr):
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
        model[0].rule = 1
        with pytest.raises(TypeError):
            lib.LRP(model)
    with pytest.raises(TypeError, match="PropagationRule"):
        llmattr.LRP(nn.Linear(3, 2), rules={nn.Linear: "epsilon"})
