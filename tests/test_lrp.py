"""Layer-wise relevance propagation: conservation, closed forms of the rules, rule selection."""

from __future__ import annotations

import pytest
import torch
from conftest import row_sums
from torch import Tensor, nn

from llmattr import (
    LRP,
    Alpha1_Beta0_Rule,
    AlphaBetaRule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
    PropagationRule,
)

F64 = torch.float64


def output(model: nn.Module, x: Tensor | tuple[Tensor, ...], target, *args) -> Tensor:
    with torch.no_grad():
        xs = x if isinstance(x, tuple) else (x,)
        out = model(*xs, *args)
    if target is None:
        return out.reshape(out.shape[0])
    if isinstance(target, int):
        return out[:, target]
    return out[torch.arange(out.shape[0]), torch.as_tensor(target)]


# The rules divide by z + 1e-9 sign(z): a unit with pre-activation z loses a fraction ~1e-9 / |z|
# of its relevance, so float64 comparisons allow a relative 1e-5 (any wrong rule is off by O(1)).
RTOL, ATOL = 1e-5, 1e-8


def assert_conserved(model, x, rel, delta, target, *args) -> None:
    y = output(model, x, target, *args)
    total = row_sums(rel)
    torch.testing.assert_close(total, y, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(delta, y - total, atol=1e-12, rtol=0)  # Captum's sign


def relu_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False), nn.ReLU(),
        nn.Linear(16, 3, bias=False),
    ).to(F64)  # fmt: skip


def pool_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=False), nn.ReLU(), nn.MaxPool2d(2),   # 10 → 8 → 4
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),  # 4 → 2
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3, bias=False),
    ).to(F64).eval()  # fmt: skip


def grad_x_input(model: nn.Module, x: Tensor, target: int) -> Tensor:
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(xg)[:, target].sum(), xg)
    return g * x


# --- conservation and the epsilon rule ----------------------------------------------------------


@pytest.mark.parametrize(
    "build,shape",
    [(relu_mlp, (5, 6)), (pool_cnn, (4, 2, 10, 10))],
    ids=["mlp", "cnn_maxpool_avgpool"],
)
def test_epsilon_conserves_and_equals_gradient_times_input(build, shape) -> None:
    model = build()
    x = torch.randn(*shape, dtype=F64)
    rel, delta = LRP(model).attribute(x, target=1, return_convergence_delta=True)
    assert rel.shape == x.shape and rel.dtype == F64 and delta.shape == (shape[0],)
    assert_conserved(model, x, rel, delta, 1)
    # bias-free ReLU network, tiny epsilon: LRP-ε is gradient × input
    torch.testing.assert_close(rel, grad_x_input(model, x, 1), atol=ATOL, rtol=RTOL)


def test_inplace_relu_same_relevance() -> None:
    def build(inplace: bool) -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Linear(6, 8, bias=False), nn.ReLU(inplace=inplace), nn.Linear(8, 3, bias=False)
        ).to(F64)

    x = torch.randn(4, 6, dtype=F64)
    x0 = x.clone()
    rel = LRP(build(True)).attribute(x, target=0)
    assert torch.equal(x, x0)
    torch.testing.assert_close(rel, LRP(build(False)).attribute(x, target=0), atol=0, rtol=0)
    torch.testing.assert_close(rel, grad_x_input(build(False), x, 0), atol=ATOL, rtol=RTOL)


def test_epsilon_closed_form_with_bias_and_large_epsilon() -> None:
    # single layer: R_i = x_i w_i y / (y + ε sign(y)); the bias and ε absorb relevance
    model = nn.Linear(5, 1).to(F64)
    x = torch.randn(6, 5, dtype=F64)
    eps = 0.5
    model.rule = EpsilonRule(epsilon=eps)
    rel, delta = LRP(model).attribute(x, return_convergence_delta=True)
    w = model.weight.detach()[0]
    y = output(model, x, None)
    expected = x * w * (y / (y + eps * torch.where(y >= 0, 1.0, -1.0)))[:, None]
    torch.testing.assert_close(rel, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(delta, y - rel.sum(1), atol=1e-12, rtol=0)
    assert float(delta.abs().min()) > 1e-3  # not conserved, and the delta says so


# --- closed forms of gamma, alpha-beta and identity ---------------------------------------------


def redistribute(x: Tensor, v: Tensor, r_out: Tensor, z: Tensor | None = None) -> Tensor:
    """R_i = x_i Σ_j v_ji R_j / z_j with z_j = Σ_i x_i v_ji (the generic z-rule)."""
    z = x @ v.T if z is None else z
    return x * ((r_out / z) @ v)


def test_gamma_rule_single_linear_closed_form() -> None:
    gamma = 0.7
    model = nn.Linear(6, 1, bias=False).to(F64)
    x = torch.randn(5, 6, dtype=F64)
    w = model.weight.detach()
    v = w + gamma * w.clamp(min=0)
    y = output(model, x, None)
    rel, delta = LRP(model, rules={model: GammaRule(gamma)}).attribute(
        x, return_convergence_delta=True
    )
    expected = x * v * (y / (x @ v[0]))[:, None]
    torch.testing.assert_close(rel, expected, atol=ATOL, rtol=RTOL)
    assert_conserved(model, x, rel, delta, None)
    assert not torch.allclose(rel, x * w, atol=1e-6)  # γ changed the distribution


def test_gamma_rule_bias_handling() -> None:
    gamma = 0.5
    model = nn.Linear(4, 1).to(F64)
    with torch.no_grad():
        model.bias.fill_(0.8)
    x = torch.randn(6, 4, dtype=F64)
    w, b = model.weight.detach(), model.bias.detach()
    v = w + gamma * w.clamp(min=0)
    y = output(model, x, None)
    # set_bias_to_zero: all of y is distributed over the inputs
    rel = LRP(model, rules={nn.Linear: GammaRule(gamma, set_bias_to_zero=True)}).attribute(x)
    torch.testing.assert_close(rel, x * v * (y / (x @ v[0]))[:, None], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(rel.sum(1), y, atol=ATOL, rtol=RTOL)
    # otherwise the bias enters the modified pre-activation unchanged, as in Captum
    rel = LRP(model, rules={nn.Linear: GammaRule(gamma)}).attribute(x)
    z = x @ v[0] + b
    torch.testing.assert_close(rel, x * v * (y / z)[:, None], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (2.0, 1.0)])
def test_alpha_beta_single_linear_closed_form(alpha: float, beta: float) -> None:
    # R_i = (α (x_i w_i)⁺ / Σ_j (x_j w_j)⁺ - β (x_i w_i)⁻ / Σ_j (x_j w_j)⁻) y
    model = nn.Linear(6, 1, bias=False).to(F64)
    x = torch.randn(7, 6, dtype=F64)
    y = output(model, x, None)
    rule = Alpha1_Beta0_Rule() if beta == 0 else AlphaBetaRule(alpha, beta)
    rel, delta = LRP(model, rules={model: rule}).attribute(x, return_convergence_delta=True)
    c = x * model.weight.detach()[0]
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    expected = alpha * cp / cp.sum(1, keepdim=True) - beta * cn / cn.sum(1, keepdim=True)
    expected = expected * y[:, None]
    torch.testing.assert_close(rel, expected, atol=ATOL, rtol=RTOL)
    assert_conserved(model, x, rel, delta, None)


class TwoLayer(nn.Module):
    """y = W2 act(W1 x), bias-free."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7, bias=False)
        self.act = act
        self.fc2 = nn.Linear(7, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def two_layer_by_hand(model: TwoLayer, x: Tensor, t: int, v1: Tensor, v2: Tensor) -> Tensor:
    """z-rule with matrices v1, v2 for the two layers and the identity rule in between."""
    with torch.no_grad():
        a = model.fc1(x)
        h = model.act(a)
        y = model.fc2(h)[:, t : t + 1]
    r_h = redistribute(h, v2[t : t + 1], y)  # relevance of the hidden units
    return redistribute(x, v1, r_h)  # identity through act: R_a = R_h


def _gamma(w: Tensor, g: float) -> Tensor:
    return w + g * w.clamp(min=0)


def test_rule_attribute_dict_by_module_and_by_type() -> None:
    model = TwoLayer(nn.ReLU()).to(F64)
    x = torch.randn(6, 5, dtype=F64)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    only_fc1 = two_layer_by_hand(model, x, 2, _gamma(w1, 0.5), w2)
    both = two_layer_by_hand(model, x, 2, _gamma(w1, 0.5), _gamma(w2, 0.5))

    by_dict = LRP(model, rules={model.fc1: GammaRule(0.5)}).attribute(x, target=2)
    torch.testing.assert_close(by_dict, only_fc1, atol=ATOL, rtol=RTOL)
    by_type = LRP(model, rules={nn.Linear: GammaRule(0.5)}).attribute(x, target=2)
    torch.testing.assert_close(by_type, both, atol=ATOL, rtol=RTOL)
    rule = GammaRule(0.5)
    model.fc1.rule = rule
    try:
        by_attr = LRP(model).attribute(x, target=2)
        torch.testing.assert_close(by_attr, only_fc1, atol=ATOL, rtol=RTOL)
        assert model.fc1.rule is rule  # the user's attribute is left alone
    finally:
        del model.fc1.rule
    assert not torch.allclose(only_fc1, both, atol=1e-6)
    assert not torch.allclose(only_fc1, grad_x_input(model, x, 2), atol=1e-6)


def test_rule_priority_attribute_then_module_then_type() -> None:
    model = TwoLayer(nn.ReLU()).to(F64)
    x = torch.randn(4, 5, dtype=F64)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    model.fc1.rule = EpsilonRule()
    rel = LRP(model, rules={model.fc1: GammaRule(1.0), nn.Linear: GammaRule(0.3)}).attribute(
        x, target=0
    )
    del model.fc1.rule
    expected = two_layer_by_hand(model, x, 0, w1, _gamma(w2, 0.3))
    torch.testing.assert_close(rel, expected, atol=ATOL, rtol=RTOL)
    rel = LRP(model, rules={nn.Linear: GammaRule(0.3), model.fc2: EpsilonRule()}).attribute(
        x, target=0
    )
    expected = two_layer_by_hand(model, x, 0, _gamma(w1, 0.3), w2)
    torch.testing.assert_close(rel, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("how", ["default", "dict", "attribute"])
def test_identity_rule_on_tanh(how: str) -> None:
    model = TwoLayer(nn.Tanh()).to(F64)
    x = torch.randn(6, 5, dtype=F64)
    rules = {nn.Tanh: IdentityRule()} if how == "dict" else None
    if how == "attribute":
        model.act.rule = IdentityRule()
    rel, delta = LRP(model, rules=rules).attribute(x, target=1, return_convergence_delta=True)
    w1, w2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    torch.testing.assert_close(rel, two_layer_by_hand(model, x, 1, w1, w2), atol=ATOL, rtol=RTOL)
    assert_conserved(model, x, rel, delta, 1)
    # not the gradient: tanh's derivative is not what the identity rule propagates
    assert not torch.allclose(rel, grad_x_input(model, x, 1), atol=1e-6)


def test_identity_rule_needs_equal_shapes() -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Flatten(0), nn.Linear(8, 1))
    model[1].rule = IdentityRule()
    with pytest.raises(ValueError, match="IdentityRule on Flatten needs equal input and output"):
        LRP(model).attribute(torch.randn(2, 4))


def assert_both_signs(model: nn.Sequential, x: Tensor, target: list[int]) -> None:
    """Premise of αβ conservation: every unit that carries relevance (an active hidden unit, the
    target output) has positive and negative contributions; otherwise z⁺ or z⁻ is 0 and the rule
    drops that part, by definition."""
    a = x
    with torch.no_grad():
        for i, layer in enumerate(model):
            if isinstance(layer, nn.Linear):
                c = a[:, None, :] * layer.weight[None]  # (n, out, in) contributions
                z = c.sum(-1)
                last = i == len(model) - 1
                carries = torch.zeros_like(z, dtype=torch.bool)
                if last:
                    carries[torch.arange(len(target)), torch.tensor(target)] = True
                else:
                    carries = z > 0
                mixed = (c > 0).any(-1) & (c < 0).any(-1)
                assert bool(mixed[carries].all()), f"layer {i}: pick other test data"
            a = layer(a)


@pytest.mark.parametrize(
    "rules",
    [
        {nn.Linear: Alpha1_Beta0_Rule()},
        {nn.Linear: AlphaBetaRule(2.0, 1.0)},
        {nn.Conv2d: AlphaBetaRule(2.0, 1.0), nn.Linear: Alpha1_Beta0_Rule()},
        {nn.Conv2d: GammaRule(0.25), nn.Linear: GammaRule(0.1)},
    ],
    ids=["a1b0", "a2b1", "cnn_a2b1_a1b0", "cnn_gamma"],
)
def test_rules_conserve_on_bias_free_nets(rules) -> None:
    cnn = nn.Conv2d in rules
    model = pool_cnn() if cnn else relu_mlp()
    x = torch.randn(4, 2, 10, 10, dtype=F64) if cnn else torch.randn(5, 6, dtype=F64)
    target = [0, 2, 1, 1] if cnn else [0, 2, 1, 1, 0]
    if not cnn:
        assert_both_signs(model, x, target)
    rel, delta = LRP(model, rules=rules).attribute(x, target=target, return_convergence_delta=True)
    assert_conserved(model, x, rel, delta, target)
    assert not torch.allclose(rel, LRP(model).attribute(x, target=target), atol=1e-6)


def test_two_inputs_with_additional_args_conserve() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 5, bias=False), nn.Linear(3, 5, bias=False)
            self.relu = nn.ReLU()
            self.out = nn.Linear(5, 2, bias=False)

        def forward(self, x1: Tensor, x2: Tensor, scale: Tensor) -> Tensor:
            return self.out(self.relu(self.a(x1) + self.b(x2))) * scale[:, None]

    model = Two().to(F64)
    x1, x2 = torch.randn(4, 4, dtype=F64), torch.randn(4, 3, dtype=F64)
    scale = torch.rand(4, dtype=F64) + 0.5
    rel, delta = LRP(model).attribute(
        (x1, x2), target=[1, 0, 1, 1], additional_forward_args=(scale,),
        return_convergence_delta=True,
    )  # fmt: skip
    assert isinstance(rel, tuple) and len(rel) == 2
    assert_conserved(model, (x1, x2), rel, delta, [1, 0, 1, 1], scale)
    # addition outside modules splits relevance in proportion: ε-LRP is gradient × input here
    xs = (x1.clone().requires_grad_(), x2.clone().requires_grad_())
    y = model(*xs, scale)[torch.arange(4), torch.tensor([1, 0, 1, 1])].sum()
    grads = torch.autograd.grad(y, xs)
    for r, x, g in zip(rel, (x1, x2), grads):
        torch.testing.assert_close(r, x * g, atol=ATOL, rtol=RTOL)


def test_bias_breaks_conservation_and_delta_measures_it(dtype: torch.dtype, device: str) -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).to(
        device=device, dtype=dtype
    )
    x = torch.randn(4, 5, device=device, dtype=dtype)
    rel, delta = LRP(model).attribute(x, target=0, return_convergence_delta=True)
    assert rel.dtype == dtype and rel.device.type == device and delta.shape == (4,)
    y = output(model, x, 0)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(delta, y - rel.sum(1), atol=atol, rtol=0)
    torch.testing.assert_close(
        LRP(model).compute_convergence_delta(rel, y), y - rel.sum(1), atol=atol, rtol=0
    )


# --- refusals -----------------------------------------------------------------------------------


class _WithNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 1)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.head(self.norm(self.fc(x)))


def test_unsupported_leaf_module_refused_before_forward() -> None:
    model = _WithNorm()
    with pytest.raises(TypeError, match=r"LRP has no rule for LayerNorm \(module 'norm'\)"):
        LRP(model).attribute(torch.randn(2, 4))
    assert model.calls == 0
    softmax = nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1))
    with pytest.raises(TypeError, match=r"no rule for Softmax \(module '1'\)"):
        LRP(softmax).attribute(torch.randn(2, 3), target=0)
    # with a rule for it, the same model runs
    rel = LRP(model, rules={nn.LayerNorm: EpsilonRule()}).attribute(torch.randn(2, 4))
    assert rel.shape == (2, 4) and model.calls == 1


def test_multihead_attention_refused() -> None:
    # a non-leaf module whose forward never calls its children (out_proj): no rule would apply
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)
            self.attn = nn.MultiheadAttention(4, 2, bias=False, batch_first=True)
            self.head = nn.Linear(4, 1, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            h = self.fc(x)
            return self.head(self.attn(h, h, h)[0].mean(1))

    with pytest.raises(TypeError, match=r"no rule for MultiheadAttention \(module 'attn'\)"):
        LRP(Attn()).attribute(torch.randn(2, 3, 4))


def test_invalid_rules_refused() -> None:
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBetaRule(alpha=2.0, beta=2.0)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBetaRule(alpha=0.5, beta=0.0)
    model = nn.Sequential(nn.Linear(3, 1))
    with pytest.raises(TypeError, match="must be a PropagationRule"):
        LRP(model, rules={nn.Linear: "epsilon"}).attribute(torch.randn(2, 3))  # type: ignore[dict-item]
    with pytest.raises(NotImplementedError):
        LRP(model, rules={nn.Linear: PropagationRule()}).attribute(torch.randn(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        LRP(model).attribute(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"needs an nn\.Module"):
        LRP(lambda x: x)  # type: ignore[arg-type]


# --- the model is not modified ------------------------------------------------------------------


def test_model_not_mutated(capsys: pytest.CaptureFixture[str]) -> None:
    model = pool_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 2, 10, 10, dtype=F64)
    x0 = x.clone()
    y0 = output(model, x, 1)
    rules = {nn.Conv2d: GammaRule(0.5), model[-1]: AlphaBetaRule(2.0, 1.0)}
    LRP(model, rules=rules).attribute(x, target=1, verbose=True)
    printed = capsys.readouterr().out
    assert "0 (Conv2d): GammaRule(gamma=0.5" in printed
    assert "8 (Linear): AlphaBetaRule(alpha=2.0, beta=1.0" in printed
    assert "1 (ReLU): IdentityRule()" in printed
    assert torch.equal(x, x0)
    for m in model.modules():
        assert not hasattr(m, "rule")
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(output(model, x, 1), y0, atol=0, rtol=0)
