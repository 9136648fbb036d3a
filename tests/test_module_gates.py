"""Stochastic gates: parity with Captum 0.9, closed-form sampling statistics, masks, errors."""

from __future__ import annotations

import math

import pytest
import torch

from llmattr._core.errors import InputError, InputTypeError
from llmattr.module import (
    BinaryConcreteStochasticGates,
    GaussianStochasticGates,
    StochasticGatesBase,
)

captum_module = pytest.importorskip("captum.module")

KINDS = {
    "binary_concrete": (BinaryConcreteStochasticGates, captum_module.BinaryConcreteStochasticGates),
    "gaussian": (GaussianStochasticGates, captum_module.GaussianStochasticGates),
}
PARAM = {"binary_concrete": "log_alpha_param", "gaussian": "mu"}


def _pair(kind: str, n: int, **kwargs):
    """(ours, Captum's) in float64 with the same parameters, spread so some gates clamp."""
    ours_cls, captum_cls = KINDS[kind]
    theirs = captum_cls(n, **kwargs).double()
    with torch.no_grad():
        low, high = (-3.0, 3.0) if kind == "binary_concrete" else (-0.6, 1.4)
        getattr(theirs, PARAM[kind]).copy_(torch.linspace(low, high, n, dtype=torch.float64))
    ours = ours_cls(n, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())  # strict: the state dicts have the same keys
    return ours, theirs


def _p_above(kind: str, gates: StochasticGatesBase, t: torch.Tensor) -> torch.Tensor:
    """Closed form of ``P(z > t)`` ``(len(t), n_gates)`` for a rectified gate, ``0 <= t < 1``."""
    if kind == "gaussian":
        x = (gates.mu.detach()[None] - t[:, None]) / gates.std
        return 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    lo, hi, temp = gates.lower_bound, gates.upper_bound, gates.temperature
    c = (t[:, None] - lo) / (hi - lo)  # z > t  <=>  s > c  <=>  logit(u) > T logit(c) - a
    return torch.sigmoid(gates.log_alpha_param.detach()[None] - temp * torch.logit(c))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_eval_forward_matches_captum_float64(kind: str, reduction: str) -> None:
    ours, theirs = _pair(kind, 6, reg_weight=0.3, reg_reduction=reduction)
    ours.eval(), theirs.eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    (g1, r1), (g2, r2) = ours(x), theirs(x)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r1, r2, rtol=1e-12, atol=1e-12)
    assert r1.shape == ((6,) if reduction == "none" else ())
    for clamp in (True, False):
        torch.testing.assert_close(ours.get_gate_values(clamp), theirs.get_gate_values(clamp))
    torch.testing.assert_close(ours.get_gate_active_probs(), theirs.get_gate_active_probs())
    # some gates are clamped at 0 and some at 1 (the parameters were spread for this)
    values = ours.get_gate_values()
    assert bool((values == 0).any()) and bool((values == 1).any())
    assert not ours.get_gate_values().requires_grad
    # eval mode is deterministic
    torch.testing.assert_close(ours(x)[0], g1, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_reg_gradient_matches_captum(kind: str) -> None:
    ours, theirs = _pair(kind, 5, reg_weight=0.7)
    x = torch.randn(3, 5, dtype=torch.float64)
    ours.eval(), theirs.eval()
    for module in (ours, theirs):
        gated, reg = module(x)
        (gated.sum() + reg).backward()
    name = PARAM[kind]
    torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad)


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_mode_same_noise_as_captum_in_float32(kind: str) -> None:
    """Same seed, same draws: the noise is drawn the same way (in float32 the dtypes agree)."""
    ours_cls, captum_cls = KINDS[kind]
    theirs = captum_cls(4, mask=torch.tensor([0, 1, 1, 2, 3, 3]))
    ours = ours_cls(4, mask=torch.tensor([0, 1, 1, 2, 3, 3]))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 6)
    torch.manual_seed(3)
    g1, r1 = ours(x)
    torch.manual_seed(3)
    g2, r2 = theirs(x)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(r1, r2)


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_mode_statistics_match_closed_form(kind: str) -> None:
    """Over many draws, P(z > t) and E[z] of the rectified gates match their closed forms."""
    ours, _ = _pair(kind, 5)
    ours.train()
    torch.manual_seed(0)
    n = 200_000
    z = ours(torch.ones(n, 5, dtype=torch.float64))[0].detach()  # gated ones: the gates
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # rectified, with exact 0s and 1s
    t = torch.tensor([0.0, 0.25, 0.5, 0.9], dtype=torch.float64)
    empirical = (z[None] > t[:, None, None]).double().mean(1)
    closed = _p_above(kind, ours, t)
    assert float((empirical - closed).abs().max()) < 0.005  # ~5 standard errors
    torch.testing.assert_close(closed[0], ours.get_gate_active_probs())
    # E[z] = integral over t in [0, 1) of P(z > t) (midpoint rule, fine grid)
    grid = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    mean = _p_above(kind, ours, grid).mean(0)
    assert float((z.mean(0) - mean).abs().max()) < 0.004
    # each example draws its own gates
    assert not torch.equal(z[0], z[1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_mask_shares_gates_and_broadcasts(kind: str) -> None:
    mask = torch.tensor([[0, 0, 1, 2], [1, 1, 2, 2]])  # (2, 4): broadcast over batch
    ours, theirs = _pair(kind, 3, mask=mask)
    x = torch.rand(6, 2, 4, dtype=torch.float64) + 0.5
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-12, atol=1e-12)
    ours.train()
    gated, _ = ours(x)
    ratio = gated / x  # the gate of each element
    for gate in range(3):
        cols = ratio[:, mask == gate]  # (batch, elements of this gate)
        torch.testing.assert_close(cols, cols[:, :1].expand_as(cols))
    # a mask with a batch dimension of 1 and a size-1 dimension broadcasts too
    wide = torch.tensor([[[0], [1]]])  # (1, 2, 1) over (batch, 2, 4)
    ours2, theirs2 = _pair(kind, 2, mask=wide)
    ours2.eval(), theirs2.eval()
    torch.testing.assert_close(ours2(x)[0], theirs2(x)[0], rtol=1e-12, atol=1e-12)
    assert ours2.state_dict()["mask"].dtype == torch.long


@pytest.mark.parametrize("kind", list(KINDS))
def test_from_pretrained_matches_captum(kind: str) -> None:
    ours_cls, captum_cls = KINDS[kind]
    param = torch.tensor([-2.0, 0.1, 0.4, 3.0])
    ours = ours_cls._from_pretrained(param, reg_weight=0.5)
    theirs = captum_cls._from_pretrained(param, reg_weight=0.5)
    torch.testing.assert_close(getattr(ours, PARAM[kind]).detach(), param)
    assert getattr(ours, PARAM[kind]).data_ptr() != param.data_ptr()  # a copy
    ours.eval(), theirs.eval()
    x = torch.randn(2, 4)
    for a, b in zip(ours(x), theirs(x)):
        torch.testing.assert_close(a, b)


def test_defaults_match_captum() -> None:
    import inspect

    for ours_cls, captum_cls in KINDS.values():
        ours_sig = inspect.signature(ours_cls.__init__).parameters
        captum_sig = inspect.signature(captum_cls.__init__).parameters
        assert list(ours_sig) == list(captum_sig)
        for name, p in captum_sig.items():
            assert ours_sig[name].default == p.default, name


def test_bad_input_raises_clear_errors() -> None:
    cases = [
        (lambda: BinaryConcreteStochasticGates(3, mask=torch.tensor([0, 1, 3])), "largest mask"),
        (lambda: BinaryConcreteStochasticGates(4, mask=torch.tensor([0, 1, 2])), "largest mask"),
        (lambda: GaussianStochasticGates(3, mask=torch.tensor([-1, 1, 2])), "negative"),
        (lambda: GaussianStochasticGates(3, reg_reduction="max"), "reg_reduction"),
        (lambda: BinaryConcreteStochasticGates(3, temperature=1.5), "temperature"),
        (lambda: BinaryConcreteStochasticGates(3, lower_bound=0.1), "lower_bound"),
        (lambda: BinaryConcreteStochasticGates(3, upper_bound=0.9), "upper_bound"),
        (lambda: GaussianStochasticGates(3, std=0.0), "std"),
        (lambda: GaussianStochasticGates(0), "n_gates"),
        (lambda: GaussianStochasticGates(4)(torch.randn(2, 5)), "n_gates=4"),
        (lambda: GaussianStochasticGates(4)(torch.randn(4)), "batch dimension"),
        (
            lambda: GaussianStochasticGates(2, mask=torch.tensor([0, 1, 1]))(torch.randn(2, 4)),
            "does not broadcast",
        ),
    ]
    for make, words in cases:
        with pytest.raises(InputError, match=words):
            make()
        with pytest.raises(AssertionError):  # what Captum users catch
            make()
    with pytest.raises(InputTypeError, match="integer"):
        GaussianStochasticGates(2, mask=torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match="1-D"):
        GaussianStochasticGates._from_pretrained(torch.zeros(2, 2))


def test_mask_is_copied_not_aliased() -> None:
    mask = torch.tensor([0, 1, 1])
    gates = GaussianStochasticGates(2, mask=mask)
    mask[0] = 1
    assert gates.mask.tolist() == [0, 1, 1]


@pytest.mark.parametrize("kind", list(KINDS))
def test_float64_gates_draw_float64_noise(kind: str) -> None:
    """Deliberate difference: Captum draws the noise in float32 whatever the gates' dtype, so a
    float64 gate carries float32 noise; ours draws it in the parameters' dtype."""
    ours, theirs = _pair(kind, 4)
    ours.train(), theirs.train()

    def expected(module: StochasticGatesBase, dtype: torch.dtype) -> torch.Tensor:
        """The raw samples of ``module`` with noise drawn in ``dtype`` (same seed)."""
        torch.manual_seed(5)
        draw = torch.empty(300, 4, dtype=dtype)
        if kind == "gaussian":
            return module.mu.detach() + draw.normal_(0.0, module.std)
        u = draw.uniform_(module.eps, 1 - module.eps)
        s = torch.sigmoid((torch.logit(u) + module.log_alpha_param.detach()) / module.temperature)
        return s * (module.upper_bound - module.lower_bound) + module.lower_bound

    for module, dtype in ((ours, torch.float64), (theirs, torch.float32)):
        torch.manual_seed(5)
        raw = module._sample_gate_values(300).detach()
        assert raw.dtype == torch.float64
        torch.testing.assert_close(raw, expected(module, dtype), rtol=1e-14, atol=1e-14)
        other = torch.float32 if dtype == torch.float64 else torch.float64
        assert not torch.allclose(raw, expected(module, other), rtol=1e-12, atol=1e-12)
