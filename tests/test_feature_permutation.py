"""FeaturePermutation: the closed form on linear models with a deterministic perm_func, the
default random permutations (non-identity, per feature, reproducible, independent of stacking),
masks across inputs, targets and extra args, and its errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import MLP, Counting, TwoInputNet, close, roll
from torch import Tensor
from torch.futures import Future

from llmattr import FeaturePermutation

F64 = torch.float64


def brute_permutation(
    g: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    masks: tuple[Tensor, ...],
    perm: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, ...]:
    """``g(x) - g(x with group p replaced by perm(x, group p))`` per example, for every ``p``."""
    n = 1 + max(int(m.max()) for m in masks)
    with torch.no_grad():
        y = g(*inputs)
        out = [torch.zeros(x.shape, dtype=y.dtype) for x in inputs]
        for p in range(n):
            sel = [(m == p).expand_as(x) for x, m in zip(inputs, masks)]
            pert = tuple(perm(x, s) for x, s in zip(inputs, sel))
            drop = y - g(*pert)
            for a, s in zip(out, sel):
                a[s] = drop.reshape(-1, *([1] * (a.dim() - 1))).expand_as(a)[s]
    return tuple(out)


# --- a deterministic permutation: closed forms ----------------------------------------------------


def test_rolled_batch_on_a_linear_model(dtype: torch.dtype, device: str) -> None:
    w = torch.randn(6, dtype=dtype, device=device)
    x = torch.randn(4, 6, dtype=dtype, device=device)
    attr = FeaturePermutation(lambda z: z @ w + 1.0, perm_func=roll).attribute(x)
    assert attr.dtype == dtype and attr.device.type == device
    assert close(attr, w * (x - x.roll(1, 0)), dtype, 10)


def test_rolled_batch_with_groups_across_two_inputs() -> None:
    w1, w2 = torch.randn(4, dtype=F64), torch.randn(2, 3, dtype=F64)
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(3, 2, 3, dtype=F64)
    m1 = torch.tensor([[0, 1, 1, 2]])
    m2 = torch.tensor([[[2, 2, 0], [3, 3, 3]]])

    def f(a: Tensor, b: Tensor) -> Tensor:
        return a @ w1 + (b * w2).flatten(1).sum(1)

    a1, a2 = FeaturePermutation(f, perm_func=roll).attribute((x1, x2), feature_mask=(m1, m2))
    c1 = (w1 * (x1 - x1.roll(1, 0))).reshape(3, -1)
    c2 = (w2 * (x2 - x2.roll(1, 0))).reshape(3, -1)
    credit = torch.zeros(3, 4, dtype=F64)
    credit.index_add_(1, m1.reshape(-1), c1)
    credit.index_add_(1, m2.reshape(-1), c2)
    assert close(a1, credit[:, m1[0]])
    assert close(a2, credit[:, m2[0].reshape(-1)].reshape(3, 2, 3))


@pytest.mark.parametrize("ppe", [1, 2, 3, 7, 50])
def test_mlp_with_per_example_targets_matches_brute_force(ppe: int) -> None:
    model = MLP().double()
    x = torch.randn(5, 6, dtype=F64)
    mask = torch.tensor([[0, 1, 1, 2, 3, 4]])
    target = [0, 2, 1, 1, 2]
    counted = Counting(model)
    attr = FeaturePermutation(counted, perm_func=roll).attribute(
        x, target=target, feature_mask=mask, perturbations_per_eval=ppe
    )
    (expected,) = brute_permutation(
        lambda z: model(z)[torch.arange(5), target], (x,), (mask,), roll
    )
    assert close(attr, expected)
    assert counted.calls == 1 + -(-5 // ppe)


def test_extra_args_stay_with_their_example() -> None:
    """The permutation moves input features between examples, never ``scale``."""
    net = TwoInputNet().double()
    x1, x2 = torch.randn(4, 4, dtype=F64), torch.randn(4, 3, dtype=F64)
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    masks = (torch.tensor([[0, 0, 1, 2]]), torch.tensor([[3, 1, 3]]))
    a1, a2 = FeaturePermutation(net, perm_func=roll).attribute(
        (x1, x2),
        target=1,
        additional_forward_args=(scale, -0.5),
        feature_mask=masks,
        perturbations_per_eval=3,
    )
    e1, e2 = brute_permutation(lambda z1, z2: net(z1, z2, scale, -0.5)[:, 1], (x1, x2), masks, roll)
    assert close(a1, e1) and close(a2, e2)


def test_multi_output_forward_stacks_per_target_runs() -> None:
    model = MLP().double()
    x = torch.randn(4, 6, dtype=F64)
    fp = FeaturePermutation(model, perm_func=roll)
    attr = fp.attribute(x, perturbations_per_eval=4, per_example_outputs=True)
    assert attr.shape == (4, 3, 6)
    assert close(attr, torch.stack([fp.attribute(x, target=t) for t in range(3)], 1))
    # Captum's layout (the default): one row per output element, example-major
    assert torch.equal(fp.attribute(x, perturbations_per_eval=4), attr.reshape(12, 6))


# --- the default random permutation ---------------------------------------------------------------


def test_default_permutation_moves_each_feature_by_a_non_identity_permutation() -> None:
    """On ``f(x) = w·x``, ``x_i - attr_i / w_i`` is the column ``x_i`` permuted (not in place)."""
    w = torch.rand(7, dtype=F64) + 0.5
    x = torch.randn(3, 7, dtype=F64)
    attr = FeaturePermutation(lambda z: z @ w).attribute(x, generator=3)
    moved = x - attr / w
    for i in range(7):
        assert torch.allclose(moved[:, i].sort().values, x[:, i].sort().values, atol=1e-12)
        assert not torch.allclose(moved[:, i], x[:, i])


def test_default_permutation_is_shared_by_a_group_across_inputs() -> None:
    """A group spanning two inputs is permuted with one permutation: with ``x2 = -x1`` paired
    elementwise in one group, a sum model never changes."""
    x1 = torch.randn(4, 3, dtype=F64)

    def f(a: Tensor, b: Tensor) -> Tensor:
        return (a + b).sum(1)

    mask = torch.tensor([[0, 1, 2]])
    a1, a2 = FeaturePermutation(f).attribute((x1, -x1), feature_mask=(mask, mask), generator=0)
    assert torch.equal(a1, torch.zeros_like(a1)) and torch.equal(a2, torch.zeros_like(a2))


def test_seeded_permutations_are_reproducible_and_independent_of_stacking() -> None:
    model = MLP().double()
    x = torch.randn(6, 6, dtype=F64)
    fp = FeaturePermutation(model)
    reference = fp.attribute(x, target=1, generator=5)
    for ppe in (2, 3, 7, 50):
        assert close(fp.attribute(x, target=1, generator=5, perturbations_per_eval=ppe), reference)
    same_gen = fp.attribute(x, target=1, generator=torch.Generator().manual_seed(5))
    assert close(same_gen, reference)
    assert not torch.allclose(fp.attribute(x, target=1, generator=6), reference)
    # without a generator, torch's global seed decides
    torch.manual_seed(11)
    first = fp.attribute(x, target=1)
    torch.manual_seed(11)
    assert torch.equal(fp.attribute(x, target=1), first)


def test_bad_generator() -> None:
    with pytest.raises(TypeError, match="generator"):
        FeaturePermutation(MLP()).attribute(torch.randn(3, 6), target=0, generator="seed")


# --- errors before any forward --------------------------------------------------------------------


def test_a_batch_of_one_gives_zeros_with_a_warning_as_in_captum() -> None:
    counted = Counting(MLP())
    with pytest.warns(UserWarning, match="batch of one"):
        attr = FeaturePermutation(counted).attribute(torch.randn(1, 6), target=0)
    assert torch.equal(attr, torch.zeros(1, 6))
    assert counted.calls == 1  # the unperturbed forward only


def test_per_example_masks_match_brute_force() -> None:
    model = MLP().double()
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2], [2, 2, 2, 1, 0, 0]])
    attr = FeaturePermutation(model, perm_func=roll).attribute(x, target=1, feature_mask=mask)
    with torch.no_grad():
        y = model(x)[:, 1]
        expected = torch.zeros_like(x)
        for p in range(3):
            sel = mask == p
            drop = y - model(roll(x, sel))[:, 1]
            expected += sel * drop[:, None]
    assert close(attr, expected)


@pytest.mark.parametrize("ppe", [0, -1, 1.5, True])
def test_bad_perturbations_per_eval(ppe: object) -> None:
    counted = Counting(MLP())
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        FeaturePermutation(counted).attribute(
            torch.randn(3, 6), target=0, perturbations_per_eval=ppe
        )
    assert counted.calls == 0


def test_show_progress_and_future(capsys: pytest.CaptureFixture[str]) -> None:
    model = MLP().double()
    x = torch.randn(3, 6, dtype=F64)
    fp = FeaturePermutation(model)
    quiet = fp.attribute(x, target=2, generator=1)
    assert capsys.readouterr().err == ""
    loud = fp.attribute(x, target=2, generator=1, show_progress=True)
    err = capsys.readouterr().err
    assert "Feature Permutation attribution" in err and "7/7" in err
    assert torch.equal(loud, quiet)

    def later(z: Tensor) -> Future:
        future: Future = Future()
        future.set_result(model(z))
        return future

    future = FeaturePermutation(later).attribute_future(x, target=2, generator=1)
    assert torch.equal(future.wait(), quiet)
