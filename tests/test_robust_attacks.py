"""FGSM and PGD: parity with Captum 0.9 in float64, closed forms on linear models, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import Counting
from torch import nn

from llmattr._core.errors import InputError
from llmattr.robust import FGSM, PGD, Perturbation

captum_robust = pytest.importorskip("captum.robust")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*(requires_grad|required_grads).*:UserWarning"),
]  # Captum's requires_grad notices


def softmax_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3), nn.Softmax(-1)
    ).double()  # fmt: skip


class TwoInput(nn.Module):
    """Probabilities from two inputs and an extra per-example scale."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Linear(4, 3).double(), nn.Linear(5, 3).double()

    def forward(self, x1, x2, scale):
        return torch.softmax((self.a(x1) + self.b(x2)) * scale.reshape(-1, 1), -1)


def linear_sum(w: torch.Tensor):
    """f(x) = x @ w per example, and a loss that is f itself (gradient w)."""
    return (lambda x: x @ w), (lambda out, target: out)


def x64(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


TARGET = [0, 1, 2, 1]


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("bounds", [(float("-inf"), float("inf")), (-0.5, 0.7)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_fgsm_matches_captum(targeted, bounds, use_mask):
    model, x = softmax_mlp(), x64(4, 6)
    mask = (torch.rand(4, 6) > 0.5).double() if use_mask else None
    ours = FGSM(model, None, *bounds).perturb(x, 0.1, TARGET, targeted=targeted, mask=mask)
    theirs = captum_robust.FGSM(model, None, *bounds).perturb(
        x, 0.1, TARGET, targeted=targeted, mask=mask
    )
    assert torch.equal(ours, theirs.detach())


def test_fgsm_tuple_inputs_extra_args_and_loss_match_captum():
    model, x1, x2, scale = TwoInput(), x64(3, 4), x64(3, 5), x64(3).abs() + 0.5

    def loss(out, target):
        return nn.functional.nll_loss(torch.log(out), target, reduction="none")

    target = torch.tensor([2, 0, 1])
    mask = (torch.ones(1, 4, dtype=torch.float64), torch.rand(3, 5).round().double())
    args = dict(additional_forward_args=(scale,), mask=mask)
    ours = FGSM(model, loss).perturb((x1, x2), 0.05, target, **args)
    theirs = captum_robust.FGSM(model, loss).perturb((x1, x2), 0.05, target, **args)
    assert isinstance(ours, tuple) and len(ours) == 2
    assert all(torch.equal(o, t.detach()) for o, t in zip(ours, theirs))


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_matches_captum(norm, targeted, random_start):
    model = softmax_mlp()
    # Captum's L2 random start only works for a batch of one (see the test below)
    n = 1 if (norm == "L2" and random_start) else 4
    x, mask = x64(n, 6), torch.rand(n, 6).round().double()
    kwargs = dict(targeted=targeted, random_start=random_start, norm=norm, mask=mask)
    torch.manual_seed(3)
    ours = PGD(model, lower_bound=-1.5, upper_bound=1.5).perturb(
        x, 0.3, 0.07, 8, TARGET[:n], **kwargs
    )
    torch.manual_seed(3)
    theirs = captum_robust.PGD(model, lower_bound=-1.5, upper_bound=1.5).perturb(
        x, 0.3, 0.07, 8, TARGET[:n], **kwargs
    )
    assert torch.equal(ours, theirs)


def test_pgd_tuple_inputs_match_captum():
    model, x1, x2, scale = TwoInput(), x64(3, 4), x64(3, 5), x64(3).abs() + 0.5
    kwargs = dict(additional_forward_args=scale, norm="L2")
    ours = PGD(model).perturb((x1, x2), 0.4, 0.1, 6, [2, 0, 1], **kwargs)
    theirs = captum_robust.PGD(model).perturb((x1, x2), 0.4, 0.1, 6, [2, 0, 1], **kwargs)
    assert all(torch.equal(o, t) for o, t in zip(ours, theirs))


def test_fgsm_closed_form_on_linear_model():
    w = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=torch.float64)
    f, loss = linear_sum(w)
    x = x64(5, 4)
    up = FGSM(f, loss).perturb(x, 0.25, None)
    down = FGSM(f, loss).perturb(x, 0.25, None, targeted=True)
    assert torch.equal(up, x + 0.25 * torch.sign(w))  # a zero gradient leaves its element alone
    assert torch.equal(down, x - 0.25 * torch.sign(w))


def test_pgd_linear_model_reaches_the_ball_corner_and_l2_boundary():
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    f, loss = linear_sum(w)
    x = x64(5, 4)
    linf = PGD(f, loss).perturb(x, 0.3, 0.1, 5, None)
    assert torch.allclose(linf, x + 0.3 * torch.sign(w), atol=1e-12)
    l2 = PGD(f, loss).perturb(x, 0.3, 0.1, 5, None, norm="L2")
    norms = (l2 - x).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 0.3), atol=1e-6)
    assert bool(((l2 - x) @ w > 0).all())  # it moved up the loss


def test_l2_random_start_is_in_the_ball_for_a_batch():
    """Captum scales the random direction by a (N,) radius broadcast over the last dimension,
    which fails for a batch; ours gives each example its own radius inside the ball."""
    f, loss = linear_sum(torch.zeros(7, dtype=torch.float64))  # zero gradient: no step moves
    x = x64(3, 7)
    torch.manual_seed(0)
    start = PGD(f, loss).perturb(x, 0.5, 0.1, 1, None, norm="L2", random_start=True)
    dist = (start - x).norm(dim=1)
    assert bool((dist <= 0.5 + 1e-12).all()) and bool((dist > 0).all())
    with pytest.raises(RuntimeError):
        captum_robust.PGD(f, loss).perturb(x, 0.5, 0.1, 1, None, norm="L2", random_start=True)


def test_pgd_batch_is_the_examples_one_by_one():
    model, x = softmax_mlp(), x64(4, 6)
    batch = PGD(model).perturb(x, 0.2, 0.05, 5, TARGET)
    single = torch.cat(
        [PGD(model).perturb(x[i : i + 1], 0.2, 0.05, 5, [TARGET[i]]) for i in range(4)]
    )
    assert torch.allclose(batch, single, atol=1e-12)


def test_attacks_respect_bounds_masks_and_radius():
    model, x = softmax_mlp(), x64(4, 6).clamp(-1, 1)
    mask = torch.zeros(1, 6, dtype=torch.float64)
    mask[0, :3] = 1
    out = PGD(model, lower_bound=-1, upper_bound=1).perturb(
        x, 0.4, 0.1, 6, TARGET, mask=mask, random_start=True
    )
    assert torch.equal(out[:, 3:], x[:, 3:])
    assert bool((out - x).abs().max() <= 0.4 + 1e-12)
    assert bool(out.min() >= -1) and bool(out.max() <= 1)


def test_the_callers_tensors_and_model_are_untouched():
    model, x = softmax_mlp(), x64(4, 6)
    before = x.clone()
    out = PGD(model).perturb(x, 0.2, 0.05, 3, TARGET)
    FGSM(model).perturb(x, 0.2, TARGET)
    assert torch.equal(x, before) and not x.requires_grad and x.grad is None
    assert not out.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_perturbation_calls_perturb():
    model, x = softmax_mlp(), x64(2, 6)
    attack = FGSM(model)
    assert isinstance(attack, Perturbation)
    assert torch.equal(attack(x, 0.1, [0, 1]), attack.perturb(x, 0.1, [0, 1]))
    with pytest.raises(NotImplementedError):
        Perturbation()(x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x: FGSM(m).perturb(x, -0.1, TARGET), "epsilon"),
        (lambda m, x: PGD(m).perturb(x, -1.0, 0.1, 3, TARGET), "radius"),
        (lambda m, x: PGD(m).perturb(x, 1.0, 0.1, 0, TARGET), "step_num"),
        (lambda m, x: PGD(m).perturb(x, 1.0, 0.1, 3, TARGET, norm="L1"), "norm"),
        (lambda m, x: FGSM(m).perturb(x, 0.1, TARGET, mask=torch.ones(4, 5)), "mask"),
        (lambda m, x: PGD(m).perturb(x, 1, 0.1, 2, TARGET, mask=(x, x)), "mask"),
        (lambda m, x: FGSM(m).perturb(x.long(), 0.1, TARGET), "embedding"),
        (lambda m, x: PGD(m).perturb(x.long(), 1.0, 0.1, 2, TARGET), "embedding"),
        (lambda m, x: FGSM(m).perturb(x, 0.1, [0, 1]), "one entry per example"),
    ],
)
def test_bad_input_is_refused_before_any_forward(call, match):
    model = Counting(softmax_mlp())
    with pytest.raises(InputError, match=match):
        call(model, x64(4, 6))
    assert model.calls == 0


def test_no_warnings_from_our_attacks():
    model, x = softmax_mlp(), x64(2, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PGD(model).perturb(x, 0.2, 0.05, 2, [0, 1])


def test_a_summed_loss_gives_the_per_example_losses_step():
    """Captum needs one loss per example (a scalar loss fails); we take the gradient of the sum,
    which is the same step."""
    torch.manual_seed(0)
    logits_model, x = nn.Linear(6, 3).double(), x64(4, 6)
    target = torch.tensor(TARGET)
    per_example = nn.CrossEntropyLoss(reduction="none")
    summed = nn.CrossEntropyLoss(reduction="sum")
    a = PGD(logits_model, per_example).perturb(x, 0.3, 0.05, 4, target)
    b = PGD(logits_model, summed).perturb(x, 0.3, 0.05, 4, target)
    assert torch.equal(a, b)
    with pytest.raises(IndexError):
        captum_robust.FGSM(logits_model, summed).perturb(x, 0.1, target)


def test_per_example_epsilon_tensor_and_pgd_uses_fgsm_bound_as_captum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(3, 3, dtype=torch.float64)
    eps = torch.tensor([[0.0], [0.1], [0.3]], dtype=torch.float64)
    ours = FGSM(model).perturb(x, eps, 1)
    theirs = captum_robust.FGSM(model).perturb(x, eps, 1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-15)
    torch.testing.assert_close(ours[0], x[0], rtol=0, atol=0)  # epsilon 0: unchanged
    with pytest.raises(InputError, match="epsilon"):
        FGSM(model).perturb(x, -eps, 1)
    ours_pgd, theirs_pgd = PGD(model), captum_robust.PGD(model)
    for p in (ours_pgd, theirs_pgd):
        p.fgsm.bound = lambda t: t.clamp(-0.5, 0.5)
    kw = dict(radius=2.0, step_size=0.4, step_num=5, target=0)
    a, b = ours_pgd.perturb(x, **kw), theirs_pgd.perturb(x, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert float(a.abs().max()) <= 0.5
