"""FeatureAblation: closed forms on linear models, feature masks (shared, per example, spanning
inputs), baseline forms, a brute-force loop on nonlinear models, stacking invariance,
multi-output and aggregate forwards, targets and extra forward args, progress, futures and input
validation before any forward."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import MLP, SmallCNN, TwoInputNet, close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.futures import Future

from llmattr import FeatureAblation

F64 = torch.float64


# --- an independent reference: ablate each group by hand ------------------------------------------


def brute_ablation(
    g: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    masks: tuple[Tensor, ...],
) -> tuple[Tensor, ...]:
    """Per example ``e`` and feature ``p``: ``g(e, x_e) - g(e, x_e with group p at the baseline)``.

    ``g(e, *example)`` returns the explained value(s) of example ``e`` (inputs of batch 1);
    ``baselines`` have the inputs' shapes and ``masks`` shape ``(1 or batch, *input.shape[1:])``.
    Returns per input ``(batch, *value.shape, *input.shape[1:])``.
    """
    batch = inputs[0].shape[0]
    n = 1 + max(int(m.max()) for m in masks)
    attrs: list[Tensor] = []
    for e in range(batch):
        xe = tuple(x[e : e + 1] for x in inputs)
        be = tuple(b[e : e + 1] for b in baselines)
        me = tuple(m[e if m.shape[0] > 1 else 0] for m in masks)
        with torch.no_grad():
            y = g(e, *xe)
            if not attrs:
                attrs = [torch.zeros(batch, *y.shape, *x.shape[1:], dtype=y.dtype) for x in inputs]
            for p in range(n):
                pert = tuple(torch.where(m == p, b, x) for x, b, m in zip(xe, be, me))
                drop = (y - g(e, *pert)).cpu()
                for a, m in zip(attrs, me):
                    a[e][..., m.cpu() == p] = drop.unsqueeze(-1)
    return tuple(attrs)


def linear(w: Tensor, c: float = 0.0) -> Callable[[Tensor], Tensor]:
    """``f(x) = sum_i w_i x_i + c`` per example, for inputs of any shape ``(batch, *w.shape)``."""
    return lambda x: (x * w).flatten(1).sum(1) + c


def group_sums(contrib: Tensor, mask: Tensor) -> Tensor:
    """Every element gets the sum of ``contrib`` over its group (per example, masks broadcast)."""
    mask = mask.expand_as(contrib)
    out = torch.empty_like(contrib)
    for e in range(contrib.shape[0]):
        for p in mask[e].unique():
            sel = mask[e] == p
            out[e][sel] = contrib[e][sel].sum()
    return out


class Counting:
    """Wraps a forward and counts calls (and the batch sizes it was given)."""

    def __init__(self, f: Callable[..., Tensor]) -> None:
        self.f, self.calls, self.batches = f, 0, []

    def __call__(self, *args: object) -> Tensor:
        self.calls += 1
        self.batches.append(args[0].shape[0])  # type: ignore[union-attr]
        return self.f(*args)


# --- closed forms on linear models ----------------------------------------------------------------


def test_linear_model_each_element_gets_w_times_x_minus_b(dtype: torch.dtype, device: str) -> None:
    w = torch.randn(6, dtype=dtype, device=device)
    x = torch.randn(4, 6, dtype=dtype, device=device)
    b = torch.randn(6, dtype=dtype, device=device)
    attr = FeatureAblation(linear(w, 0.7)).attribute(x, baselines=b)
    assert attr.dtype == dtype and attr.device.type == device
    assert close(attr, w * (x - b), dtype, 10)


def test_linear_model_on_images_elementwise() -> None:
    w = torch.randn(2, 3, 4, dtype=F64)
    x = torch.randn(3, 2, 3, 4, dtype=F64)
    attr = FeatureAblation(linear(w, -1.0)).attribute(x, baselines=0.5)
    assert close(attr, w * (x - 0.5))


def test_shared_mask_gives_every_element_its_group_sum(dtype: torch.dtype) -> None:
    w = torch.randn(6, dtype=dtype)
    x = torch.randn(4, 6, dtype=dtype)
    b = torch.randn(1, 6, dtype=dtype)
    mask = torch.tensor([[2, 0, 0, 1, 2, 2]])
    attr = FeatureAblation(linear(w, 0.3)).attribute(x, baselines=b, feature_mask=mask)
    expected = group_sums(w * (x - b), mask)
    assert close(attr, expected, dtype, 10)
    # the group's elements really are credited with the group's sum, not their own share
    assert torch.equal(attr[:, 1], attr[:, 2]) and torch.equal(attr[:, 0], attr[:, 5])
    # a mask without the batch dimension is the same shared mask
    again = FeatureAblation(linear(w, 0.3)).attribute(x, baselines=b, feature_mask=mask[0])
    assert torch.equal(again, attr)


def test_mask_broadcast_over_channels() -> None:
    """A ``(1, 1, W)`` mask on ``(batch, C, W)`` inputs groups each column across channels."""
    w = torch.randn(3, 5, dtype=F64)
    x = torch.randn(2, 3, 5, dtype=F64)
    mask = torch.tensor([[[0, 0, 1, 2, 2]]])
    attr = FeatureAblation(linear(w)).attribute(x, feature_mask=mask)
    assert close(attr, group_sums(w * x, mask.expand(1, 3, 5)))


def test_per_example_masks() -> None:
    w = torch.randn(6, dtype=F64)
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5], [3, 3, 3, 3, 3, 3]])
    fa = FeatureAblation(linear(w, 2.0))
    attr = fa.attribute(x, baselines=-1.0, feature_mask=mask)
    assert close(attr, group_sums(w * (x + 1), mask))
    # each row equals that example explained alone with its row (renumbered) as a shared mask
    for e in range(3):
        row = torch.unique(mask[e : e + 1], return_inverse=True)[1]
        alone = fa.attribute(x[e : e + 1], baselines=-1.0, feature_mask=row)
        assert close(attr[e : e + 1], alone, F64)


def test_per_example_masks_with_equal_rows_equal_the_shared_mask() -> None:
    model = MLP().double()
    x = torch.randn(4, 6, dtype=F64)
    shared = torch.tensor([[0, 1, 1, 2, 3, 3]])
    fa = FeatureAblation(model)
    a = fa.attribute(x, target=1, feature_mask=shared)
    b = fa.attribute(x, target=1, feature_mask=shared.expand(4, 6).clone())
    assert close(a, b)


def test_mask_spanning_two_inputs_is_one_feature() -> None:
    w1, w2 = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    x1, x2 = torch.randn(2, 4, dtype=F64), torch.randn(2, 3, dtype=F64)
    b1, b2 = torch.randn(4, dtype=F64), 0.25
    m1, m2 = torch.tensor([[0, 1, 1, 2]]), torch.tensor([[2, 0, 3]])

    def f(a: Tensor, b: Tensor) -> Tensor:
        return a @ w1 + b @ w2 + 1.0

    a1, a2 = FeatureAblation(f).attribute((x1, x2), baselines=(b1, b2), feature_mask=(m1, m2))
    c1, c2 = w1 * (x1 - b1), w2 * (x2 - b2)
    credit = torch.zeros(2, 4, dtype=F64)  # per example and feature id
    for contrib, m in ((c1, m1[0]), (c2, m2[0])):
        credit.index_add_(1, m, contrib)
    assert close(a1, credit[:, m1[0]]) and close(a2, credit[:, m2[0]])
    # feature 0 (x1[1], x2[1]) and 2 (x1[3], x2[0]) really collect both inputs' terms
    assert close(a2[:, 1], c1[:, 0] + c2[:, 1]) and close(a1[:, 3], c1[:, 3] + c2[:, 0])


# --- baseline forms -------------------------------------------------------------------------------


BASELINE_FORMS = {
    "none": lambda x: (None, torch.zeros_like(x)),
    "int": lambda x: (2, torch.full_like(x, 2.0)),
    "float": lambda x: (-0.5, torch.full_like(x, -0.5)),
    "0-d tensor": lambda x: (torch.tensor(1.5), torch.full_like(x, 1.5)),
    "per-feature": lambda x: (b := torch.randn(x.shape[1:], dtype=x.dtype), b.expand_as(x)),
    "one example": lambda x: (b := torch.randn(1, *x.shape[1:], dtype=x.dtype), b.expand_as(x)),
    "per-example": lambda x: (b := torch.randn_like(x), b),
}


@pytest.mark.parametrize("form", list(BASELINE_FORMS))
def test_baseline_forms(form: str) -> None:
    w = torch.randn(2, 3, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    passed, full = BASELINE_FORMS[form](x)
    attr = FeatureAblation(linear(w)).attribute(x, baselines=passed)
    assert close(attr, w * (x - full))


def test_tuple_baselines_for_two_inputs() -> None:
    w1, w2 = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(3, 3, dtype=F64)
    b2 = torch.randn(3, 3, dtype=F64)

    def f(a: Tensor, b: Tensor) -> Tensor:
        return a @ w1 + b @ w2

    a1, a2 = FeatureAblation(f).attribute((x1, x2), baselines=(3.0, b2))
    assert close(a1, w1 * (x1 - 3.0)) and close(a2, w2 * (x2 - b2))
    with pytest.raises(ValueError, match="baselines"):
        FeatureAblation(f).attribute((x1, x2), baselines=(3.0,))


# --- nonlinear models against the brute-force loop ------------------------------------------------


def test_mlp_with_mask_and_per_example_targets_matches_brute_force(dtype: torch.dtype) -> None:
    model = MLP().to(dtype)
    x = torch.randn(5, 6, dtype=dtype)
    b = torch.randn(5, 6, dtype=dtype)
    mask = torch.tensor([[0, 1, 1, 2, 3, 0]])
    target = [0, 2, 1, 1, 0]
    attr = FeatureAblation(model).attribute(x, baselines=b, target=target, feature_mask=mask)
    (expected,) = brute_ablation(lambda e, z: model(z)[0, target[e]], (x,), (b,), (mask,))
    assert close(attr, expected, dtype)


def test_cnn_with_patch_mask_matches_brute_force() -> None:
    model = SmallCNN().double()
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    rows = torch.arange(8) // 3  # 3 x 3 patches, clipped: 9 features
    mask = (rows[:, None] * 3 + rows[None, :]).reshape(1, 1, 8, 8)
    attr = FeatureAblation(model).attribute(x, target=3, feature_mask=mask, baselines=0.1)
    (expected,) = brute_ablation(
        lambda e, z: model(z)[0, 3], (x,), (torch.full_like(x, 0.1),), (mask,)
    )
    assert close(attr, expected)
    assert attr.abs().sum() > 0


@pytest.mark.parametrize("ppe", [1, 2, 3, 7, 50])
def test_results_do_not_depend_on_perturbations_per_eval(ppe: int) -> None:
    model = MLP().double()
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.tensor([[0, 1, 2, 2, 3, 4], [4, 3, 2, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    counted = Counting(model)
    attr = FeatureAblation(counted).attribute(
        x, baselines=0.3, target=[2, 0, 1], feature_mask=mask, perturbations_per_eval=ppe
    )
    (expected,) = brute_ablation(
        lambda e, z: model(z)[0, [2, 0, 1][e]], (x,), (torch.full_like(x, 0.3),), (mask,)
    )
    assert close(attr, expected)
    # five features: one unperturbed forward, then ceil(5 / ppe) stacked ones
    k = min(ppe, 5)
    assert counted.calls == 1 + -(-5 // ppe)
    assert counted.batches[1] == 3 * k


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 3),
    n=st.integers(1, 6),
    ppe=st.integers(1, 8),
    data=st.data(),
)
def test_linear_closed_form_for_random_groupings(batch: int, n: int, ppe: int, data) -> None:
    size = data.draw(st.integers(n, 7))
    extra = data.draw(st.lists(st.integers(0, n - 1), min_size=size - n, max_size=size - n))
    ids = data.draw(st.permutations(list(range(n)) + extra))  # every id 0 .. n - 1 present
    mask = torch.tensor(ids).reshape(1, size)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    w = torch.randn(size, dtype=F64, generator=gen)
    x = torch.randn(batch, size, dtype=F64, generator=gen)
    b = torch.randn(size, dtype=F64, generator=gen)
    attr = FeatureAblation(linear(w, 1.0)).attribute(
        x, baselines=b, feature_mask=mask, perturbations_per_eval=ppe
    )
    assert close(attr, group_sums(w * (x - b), mask), F64, 10)


# --- multi-output and aggregate forwards ----------------------------------------------------------


def test_multi_output_forward_stacks_per_output_runs() -> None:
    model = MLP(n_out=4).double()
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 2, 2, 3]])
    fa = FeatureAblation(model)
    kw = {"feature_mask": mask, "baselines": 0.2, "perturbations_per_eval": 3}
    attr = fa.attribute(x, per_example_outputs=True, **kw)
    assert attr.shape == (3, 4, 6)
    per_output = [fa.attribute(x, target=t, feature_mask=mask, baselines=0.2) for t in range(4)]
    assert close(attr, torch.stack(per_output, 1))
    # Captum's layout (the default): one row per output element, example-major
    assert torch.equal(fa.attribute(x, **kw), attr.reshape(12, 6))


def test_multi_output_linear_closed_form() -> None:
    W = torch.randn(5, 3, dtype=F64)
    x = torch.randn(2, 5, dtype=F64)
    attr = FeatureAblation(lambda z: z @ W).attribute(x, baselines=1.0)
    assert close(attr, (W.T.unsqueeze(0) * (x - 1.0).unsqueeze(1)).reshape(6, 5))


def test_two_output_dimensions_stack_per_index_runs() -> None:
    model = MLP(n_out=6).double()

    def f(z: Tensor) -> Tensor:
        return model(z).reshape(-1, 2, 3)

    x = torch.randn(2, 6, dtype=F64)
    fa = FeatureAblation(f)
    attr = fa.attribute(x, perturbations_per_eval=4, per_example_outputs=True)
    assert attr.shape == (2, 2, 3, 6)
    assert torch.equal(fa.attribute(x, perturbations_per_eval=4), attr.reshape(12, 6))
    for t in range(2):
        for u in range(3):
            assert close(attr[:, t, u], fa.attribute(x, target=(t, u)))


def aggregate_brute(g: Callable[[Tensor], Tensor], x: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """``g(x) - g(x with group p ablated in every example)``: ``(1, *g.shape, *x.shape[1:])``."""
    with torch.no_grad():
        y = g(x)
        out = torch.zeros(1, *y.shape, *x.shape[1:], dtype=y.dtype)
        for p in range(int(mask.max()) + 1):
            sel = mask[0] == p
            out[0][..., sel] = (y - g(torch.where(sel, b, x))).unsqueeze(-1)
    return out


def test_aggregate_forward_gives_one_map_for_the_batch(dtype: torch.dtype) -> None:
    model = MLP().to(dtype)
    x = torch.randn(4, 6, dtype=dtype)
    b = torch.randn(6, dtype=dtype)

    def loss(z: Tensor) -> Tensor:
        return model(z).logsumexp(1).sum()

    attr = FeatureAblation(loss).attribute(x, baselines=b)
    assert attr.shape == (1, 6)
    assert close(attr, aggregate_brute(loss, x, b, torch.arange(6).reshape(1, 6)), dtype, 10)
    mask = torch.tensor([[0, 1, 0, 1, 2, 2]])
    grouped = FeatureAblation(loss).attribute(x, baselines=b, feature_mask=mask)
    assert close(grouped, aggregate_brute(loss, x, b, mask), dtype, 10)


def test_aggregate_with_several_outputs() -> None:
    """A forward returning ``(3,)`` for a batch of 4 (the column sums) is an aggregate."""
    model = MLP().double()
    x = torch.randn(4, 6, dtype=F64)

    def col_sums(z: Tensor) -> Tensor:
        return model(z).sum(0)

    attr = FeatureAblation(col_sums).attribute(x)
    assert attr.shape == (3, 6)  # Captum: (output.numel(), *x.shape[1:])
    expected = aggregate_brute(col_sums, x, torch.zeros_like(x), torch.arange(6).reshape(1, 6))
    assert close(attr, expected[0])
    assert torch.equal(FeatureAblation(col_sums).attribute(x, per_example_outputs=True), expected)


def test_aggregate_rejects_stacking_and_per_example_masks() -> None:
    model = MLP()
    x = torch.randn(4, 6)

    def total(z: Tensor) -> Tensor:
        return model(z).sum()

    with pytest.raises(ValueError, match=r"aggregate.*perturbations_per_eval=2"):
        FeatureAblation(total).attribute(x, perturbations_per_eval=2)
    per_example = torch.arange(24).reshape(4, 6) % 5
    with pytest.raises(ValueError, match="aggregate"):
        FeatureAblation(total).attribute(x, feature_mask=per_example)


# --- targets and extra forward args ---------------------------------------------------------------


def test_target_forms_agree(mlp: MLP, dtype: torch.dtype, device: str) -> None:
    x = torch.randn(3, 6, dtype=dtype, device=device)
    fa = FeatureAblation(mlp)
    as_list = fa.attribute(x, target=[2, 0, 1], perturbations_per_eval=4)
    as_tensor = fa.attribute(x, target=torch.tensor([2, 0, 1]), perturbations_per_eval=2)
    assert close(as_list, as_tensor, dtype)
    for e, t in enumerate([2, 0, 1]):
        assert close(as_list[e], fa.attribute(x, target=t)[e], dtype)
    (expected,) = brute_ablation(
        lambda e, z: mlp(z)[0, [2, 0, 1][e]], (x,), (torch.zeros_like(x),), (torch.arange(6)[None],)
    )
    assert close(as_list, expected, dtype)
    # a one-element tensor acts like an int
    assert close(fa.attribute(x, target=torch.tensor(1)), fa.attribute(x, target=1), dtype)


@pytest.mark.parametrize("ppe", [1, 3, 20])
def test_per_example_args_follow_their_example(ppe: int) -> None:
    net = TwoInputNet().double()
    x1, x2 = torch.randn(4, 4, dtype=F64), torch.randn(4, 3, dtype=F64)
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    target = [1, 0, 0, 1]
    m1, m2 = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[4, 4, 0]])
    fa = FeatureAblation(net)
    a1, a2 = fa.attribute(
        (x1, x2),
        baselines=(0.5, None),
        target=target,
        additional_forward_args=(scale, 0.75),
        feature_mask=(m1, m2),
        perturbations_per_eval=ppe,
    )
    for e in range(4):
        s1, s2 = fa.attribute(
            (x1[e : e + 1], x2[e : e + 1]),
            baselines=(0.5, None),
            target=target[e],
            additional_forward_args=(scale[e : e + 1], 0.75),
            feature_mask=(m1, m2),
        )
        assert close(a1[e : e + 1], s1) and close(a2[e : e + 1], s2)
    e1, e2 = brute_ablation(
        lambda e, z1, z2: net(z1, z2, scale[e : e + 1], 0.75)[0, target[e]],
        (x1, x2),
        (torch.full_like(x1, 0.5), torch.zeros_like(x2)),
        (m1, m2),
    )
    assert close(a1, e1) and close(a2, e2)


# --- progress bar and futures ---------------------------------------------------------------------


def test_show_progress_prints_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    model = MLP().double()
    x = torch.randn(2, 6, dtype=F64)
    quiet = FeatureAblation(model).attribute(x, target=0)
    assert capsys.readouterr().err == ""
    loud = FeatureAblation(model).attribute(x, target=0, show_progress=True)
    err = capsys.readouterr().err
    # Captum's title and count: the unperturbed forward and one per feature
    assert "Feature Ablation attribution" in err and "7/7" in err and "100%" in err
    assert torch.equal(loud, quiet)


def test_attribute_future_equals_attribute() -> None:
    model = MLP().double()
    x = torch.randn(3, 6, dtype=F64)
    kwargs = {"target": 1, "feature_mask": torch.tensor([[0, 0, 1, 1, 2, 2]]), "baselines": 0.1}
    fa = FeatureAblation(model)
    future = FeatureAblation(lambda z: _done(model(z))).attribute_future(x, **kwargs)
    assert type(future) is torch.Future  # Captum's type, not the torch.futures subclass
    assert torch.equal(future.wait(), fa.attribute(x, **kwargs))
    with pytest.raises(ValueError, match="negative"):
        fa.attribute_future(x, feature_mask=torch.tensor([[0, -2, 2, 2, 2, 2]])).wait()
    # Captum: attribute_future needs a forward returning a Future, attribute one that does not
    with pytest.raises(AssertionError, match=r"returns a torch\.futures\.Future"):
        fa.attribute_future(x, **kwargs)
    with pytest.raises(AssertionError, match="call attribute_future"):
        FeatureAblation(lambda z: _done(model(z))).attribute(x, **kwargs)


def _done(value: Tensor) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


# --- bad input fails before any forward -----------------------------------------------------------


BAD_MASKS = {
    "wrong width": (torch.zeros(1, 5, dtype=torch.long), ValueError, "does not fit"),
    "wrong batch": (torch.zeros(3, 6, dtype=torch.long), ValueError, "does not fit"),
    "too many dims": (torch.zeros(1, 1, 6, dtype=torch.long), ValueError, "does not fit"),
    "negative": (torch.tensor([[0, 1, -1, 2, 2, 2]]), ValueError, "negative"),
    "float": (torch.full((1, 6), 0.5), ValueError, "whole numbers"),
    "bool": (torch.zeros(1, 6, dtype=torch.bool), TypeError, "integer"),
    "list": ([[0, 1, 2, 3, 4, 5]], TypeError, "integer tensor"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_bad_masks_fail_before_any_forward(case: str) -> None:
    mask, err, msg = BAD_MASKS[case]
    counted = Counting(MLP())
    with pytest.raises(err, match=msg):
        FeatureAblation(counted).attribute(torch.randn(4, 6), target=0, feature_mask=mask)
    assert counted.calls == 0


def test_ids_may_skip_numbers_as_in_captum() -> None:
    """Captum visits the ids a mask holds; a gap is no error (and costs no forward)."""
    model = MLP().double()
    counted = Counting(model)
    x = torch.randn(3, 6, dtype=F64)
    gapped = torch.tensor([[0, 0, 4, 4, 9, 9]])
    attr = FeatureAblation(counted).attribute(x, target=1, feature_mask=gapped)
    assert counted.calls == 1 + 3
    dense = FeatureAblation(model).attribute(x, target=1, feature_mask=gapped // 4)
    assert torch.equal(attr, dense)


@pytest.mark.parametrize("n_masks", [1, 3])
def test_wrong_number_of_masks_for_tuple_inputs(n_masks: int) -> None:
    counted = Counting(TwoInputNet())
    masks = (torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1, 2]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match=f"Got {n_masks} feature_mask tensors for 2 inputs"):
        FeatureAblation(counted).attribute(
            (torch.randn(2, 4), torch.randn(2, 3)),
            target=0,
            additional_forward_args=(torch.ones(2),),
            feature_mask=masks[:n_masks],
        )
    assert counted.calls == 0


@pytest.mark.parametrize("ppe", [0, -1, 1.5, True, "2", None])
def test_bad_perturbations_per_eval_fail_before_any_forward(ppe: object) -> None:
    counted = Counting(MLP())
    with pytest.raises(ValueError, match="perturbations_per_eval must be a positive int"):
        FeatureAblation(counted).attribute(torch.randn(2, 6), target=0, perturbations_per_eval=ppe)
    assert counted.calls == 0
