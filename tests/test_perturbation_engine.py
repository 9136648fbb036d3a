"""The perturbation engine under FeatureAblation, Occlusion and FeaturePermutation: dtypes and
devices, inputs left untouched, integer token-id inputs, stacking of perturbations, the output
modes, feature masks and the small validators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import MLP, TwoInputNet, close, roll
from torch import Tensor, nn
from torch.futures import Future

from llmattr import FeatureAblation, FeaturePermutation, Occlusion
from llmattr._core.call import Call
from llmattr._core.features import FeatureMasks
from llmattr._core.perturbation import PerturbationRun, check_positive_int, make_generator

F64 = torch.float64


class Recording:
    """Wraps a forward, recording the inputs of every call."""

    def __init__(self, f: Callable[..., Tensor]) -> None:
        self.f = f
        self.seen: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Tensor:
        self.seen.append(tuple(a.clone() if isinstance(a, Tensor) else a for a in args))
        return self.f(*args)


METHODS: dict[str, Callable[[Callable[..., Tensor]], Any]] = {
    "ablation": lambda f: (FeatureAblation(f), {"baselines": 0.5}),
    "occlusion": lambda f: (Occlusion(f), {"sliding_window_shapes": (2,), "baselines": 0.5}),
    "permutation": lambda f: (FeaturePermutation(f, perm_func=roll), {}),
}


# --- dtypes, devices, inputs untouched ------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_dtype_and_device_follow_the_inputs(
    method: str, mlp: MLP, dtype: torch.dtype, device: str
) -> None:
    x = torch.randn(3, 6, dtype=dtype, device=device)
    algo, kw = METHODS[method](mlp)
    attr = algo.attribute(x, target=1, **kw)
    assert attr.shape == x.shape and attr.dtype == dtype and attr.device == x.device
    assert bool(torch.isfinite(attr).all()) and attr.abs().sum() > 0


@pytest.mark.parametrize("method", list(METHODS))
def test_nothing_the_user_passed_is_modified(method: str) -> None:
    net = TwoInputNet().double()
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(3, 3, dtype=F64)
    scale = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    x1.requires_grad_()
    keep = [t.detach().clone() for t in (x1, x2, scale)]
    algo = {
        "ablation": FeatureAblation(net),
        "occlusion": Occlusion(net),
        "permutation": FeaturePermutation(net),
    }[method]
    kw: dict[str, Any] = {"target": 0, "additional_forward_args": (scale, 0.1)}
    if method == "occlusion":
        kw["sliding_window_shapes"] = ((2,), (2,))
    if method != "permutation":
        b2 = torch.randn(3, dtype=F64)
        kw["baselines"] = (0.5, b2)
        keep.append(b2.clone())
    if method != "occlusion":
        m = (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[2, 0, 3]]))
        kw["feature_mask"] = m
        keep += [t.clone() for t in m]
    a1, a2 = algo.attribute((x1, x2), perturbations_per_eval=2, **kw)
    after = [x1.detach(), x2, scale]
    if method != "permutation":
        after.append(kw["baselines"][1])
    if method != "occlusion":
        after += list(kw["feature_mask"])
    assert all(torch.equal(a, b) for a, b in zip(after, keep))
    assert x1.requires_grad and x1.grad is None
    assert not a1.requires_grad and not a2.requires_grad
    assert all(p.grad is None for p in net.parameters())


# --- integer token ids ----------------------------------------------------------------------------


class BagOfWords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(12, 4, mode="mean")
        self.out = nn.Linear(4, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return torch.tanh(self.out(self.bag(ids)))


def test_ablating_token_ids_replaces_them_by_the_baseline_id() -> None:
    model = BagOfWords().double()
    ids = torch.tensor([[3, 7, 1, 9, 4], [2, 2, 11, 5, 8]])
    keep = ids.clone()
    attr = FeatureAblation(model).attribute(ids, baselines=0, target=1, perturbations_per_eval=3)
    assert attr.shape == ids.shape and attr.dtype == F64  # the model's output dtype
    assert torch.equal(ids, keep)
    with torch.no_grad():
        full = model(ids)[:, 1]
        for t in range(5):
            replaced = ids.clone()
            replaced[:, t] = 0
            assert close(attr[:, t], full - model(replaced)[:, 1])


def test_token_ids_with_word_masks_occlusion_and_permutation() -> None:
    model = BagOfWords().double()
    ids = torch.tensor([[3, 7, 1, 9, 4], [2, 2, 11, 5, 8], [6, 10, 1, 1, 0]])
    words = torch.tensor([[0, 0, 1, 1, 2]])
    attr = FeatureAblation(model).attribute(ids, baselines=0, target=0, feature_mask=words)
    occ = Occlusion(model).attribute(ids, sliding_window_shapes=(2,), strides=2, target=0)
    perm = FeaturePermutation(model, perm_func=roll).attribute(ids, target=0, feature_mask=words)
    with torch.no_grad():
        full = model(ids)[:, 0]
        for lo, hi in [(0, 2), (2, 4), (4, 5)]:  # the words, which are also the occlusion windows
            replaced, rolled = ids.clone(), ids.clone()
            replaced[:, lo:hi] = 0
            rolled[:, lo:hi] = ids.roll(1, 0)[:, lo:hi]
            drop = (full - model(replaced)[:, 0]).unsqueeze(1)
            assert close(attr[:, lo:hi], drop.expand(3, hi - lo))
            assert close(occ[:, lo:hi], drop.expand(3, hi - lo))
            assert close(
                perm[:, lo:hi], (full - model(rolled)[:, 0]).unsqueeze(1).expand(3, hi - lo)
            )


# --- stacking -------------------------------------------------------------------------------------


def test_stacked_forwards_are_copy_major_with_targets_and_args_expanded() -> None:
    """``k`` perturbations of the batch go in one forward, rows ``copy * batch + example``, each
    with its example's scale; the copies differ from the input in exactly their feature."""
    net = TwoInputNet().double()
    x1, x2 = torch.randn(2, 4, dtype=F64), torch.randn(2, 3, dtype=F64)
    scale = torch.tensor([2.0, -3.0], dtype=F64)
    rec = Recording(net)
    FeatureAblation(rec).attribute(
        (x1, x2),
        baselines=(9.0, 9.0),
        target=[0, 1],
        additional_forward_args=(scale, 0.0),
        perturbations_per_eval=3,
    )
    assert [s[0].shape[0] for s in rec.seen] == [2, 6, 6, 2]  # 7 features: 3 + 3 + 1
    p = 0
    for z1, z2, sc, shift in rec.seen[1:]:
        k = z1.shape[0] // 2
        assert torch.equal(sc, scale.repeat(k)) and shift == 0.0
        for c in range(k):
            both = torch.cat([z1[2 * c : 2 * c + 2], z2[2 * c : 2 * c + 2]], 1)
            orig = torch.cat([x1, x2], 1)
            changed = (both != orig).any(0).nonzero().flatten().tolist()
            assert changed == [p] and bool((both[:, p] == 9.0).all())
            p += 1
    assert p == 7


def test_forward_that_drops_rows_under_stacking_is_an_error() -> None:
    model = MLP()

    def first_three(z: Tensor) -> Tensor:
        return model(z[:3])

    with pytest.raises(ValueError, match="one row per example"):
        FeatureAblation(first_three).attribute(torch.randn(3, 6), perturbations_per_eval=2)


def test_aggregate_that_changes_shape_is_an_error() -> None:
    def odd(z: Tensor) -> Tensor:
        return z.sum() if bool((z != 0).all()) else z.sum().reshape(1, 1)

    with pytest.raises(ValueError, match="changed shape"):
        FeatureAblation(odd).attribute(torch.rand(3, 2) + 1)


# --- the run's output modes -----------------------------------------------------------------------


def make_run(f: Callable[..., Tensor], x: Tensor, target: Any = None, ppe: int = 1):
    call = Call.of(x, target)
    return PerturbationRun(f, call, (torch.zeros_like(x),), ppe)


def test_output_modes() -> None:
    x = torch.randn(4, 3, dtype=F64)
    per_example = make_run(lambda z: z.sum(1), x)
    assert (per_example.rows, per_example.out_shape, per_example.aggregate) == (4, (), False)
    assert torch.equal(per_example.initial, x.sum(1, keepdim=True))
    multi = make_run(lambda z: torch.stack([z, 2 * z], 1), x)
    assert (multi.rows, multi.out_shape, multi.n_outputs) == (4, (2, 3), 6)
    agg = make_run(lambda z: z.sum(), x)
    assert (agg.rows, agg.out_shape, agg.aggregate) == (1, (), True)
    assert close(agg.initial, x.sum().reshape(1, 1))
    agg_vec = make_run(lambda z: z.sum(0), x)
    assert (agg_vec.rows, agg_vec.out_shape, agg_vec.aggregate) == (1, (3,), True)
    targeted = make_run(lambda z: z, x, target=[0, 2, 1, 1])
    assert torch.equal(targeted.initial[:, 0], x[torch.arange(4), [0, 2, 1, 1]])
    assert targeted.forward_count == 1


# --- feature masks --------------------------------------------------------------------------------


def test_default_masks_number_every_element_across_inputs() -> None:
    inputs = (torch.zeros(2, 2, 3), torch.zeros(2, 4))
    fm = FeatureMasks.of(None, inputs)
    assert fm.n_features == 10 and not fm.per_example
    assert torch.equal(fm.masks[0], torch.arange(6).reshape(1, 2, 3))
    assert torch.equal(fm.masks[1], torch.arange(6, 10).reshape(1, 4))


def test_absent_and_spread_are_inverse_views_of_a_mask() -> None:
    inputs = (torch.zeros(2, 4), torch.zeros(2, 3))
    masks = (torch.tensor([[0, 1, 1, 2], [2, 2, 1, 0]]), torch.tensor([[3, 0, 3]]))
    fm = FeatureMasks.of(masks, inputs)
    assert fm.n_features == 4 and fm.per_example
    present = torch.tensor([[True, False, True, True], [False, True, True, False]])
    a1, a2 = fm.absent(present)
    assert a1.shape == (2, 2, 4) and a2.shape == (2, 1, 3)
    for k in range(2):
        assert torch.equal(a1[k], ~present[k][masks[0]])
        assert torch.equal(a2[k], ~present[k][masks[1]])
    # per-example draws: (k, batch, n_features)
    draws = torch.rand(3, 2, 4) > 0.5
    d1, d2 = fm.absent(draws)
    for k in range(3):
        for e in range(2):
            assert torch.equal(d1[k, e], ~draws[k, e][masks[0][e]])
            assert torch.equal(d2[k, e], ~draws[k, e][masks[1][0]])
    credits = torch.randn(2, 3, 4, dtype=F64)  # rows, outputs, features
    s1, s2 = fm.spread(credits)
    assert s1.shape == (2, 3, 4) and s2.shape == (2, 3, 3)
    for e in range(2):
        assert torch.equal(s1[e], credits[e][:, masks[0][e]])
        assert torch.equal(s2[e], credits[e][:, masks[1][0]])


def test_small_validators() -> None:
    assert check_positive_int(3, "n") == 3
    for bad in (0, -2, 2.0, True, None):
        with pytest.raises(ValueError, match="n must be a positive int"):
            check_positive_int(bad, "n")
    assert make_generator(None) is None
    g = torch.Generator()
    assert make_generator(g) is g
    assert torch.equal(
        torch.rand(3, generator=make_generator(7)),
        torch.rand(3, generator=torch.Generator().manual_seed(7)),
    )
    for bad in (True, 1.5, "7"):
        with pytest.raises(TypeError, match="generator"):
            make_generator(bad)  # type: ignore[arg-type]


# --- layouts, outputs that are not tensors, futures -----------------------------------------------


def test_layouts_of_a_multi_output_forward() -> None:
    """``rows``: one map per output of each example (Lime, the text layer); ``flat``: Captum's
    FeatureAblation ``(output.numel(), ...)``; ``output``: Captum's Shapley ``(*output.shape,
    ...)``. All hold the same numbers in the same (example-major) order."""
    x = torch.randn(4, 3, dtype=F64)
    credits = torch.randn(4, 2, 3, dtype=F64)
    fm = FeatureMasks.of(None, (x,))
    shapes = {"rows": (4, 2, 3), "flat": (8, 3), "output": (4, 2, 3)}
    for layout, shape in shapes.items():
        call = Call.of(x)
        run = PerturbationRun(lambda z: torch.stack([z.sum(1), z.prod(1)], 1), call, (x,), 1,
                              layout=layout)  # fmt: skip
        (attr,) = run.feature_attributions(credits, fm)
        assert attr.shape == shape and torch.equal(attr.reshape(4, 2, 3), credits)
    call = Call.of(x)
    agg = PerturbationRun(lambda z: z.sum(0), call, (x,), 1, layout="output")
    assert agg.feature_attributions(torch.zeros(1, 3, 3, dtype=F64), fm)[0].shape == (3, 3)


def test_non_tensor_outputs() -> None:
    x = torch.randn(2, 3, dtype=F64)
    attr = FeatureAblation(lambda z: float(z.sum())).attribute(x)
    assert attr.dtype == F64 and attr.shape == (1, 3)  # a Python float is float64, as Captum
    assert close(attr, x.sum(0, keepdim=True))
    attr = FeatureAblation(lambda z: int(z.sum() * 1000)).attribute(x)
    assert attr.dtype == torch.int64
    with pytest.raises(AssertionError, match="must return a tensor, an int or a float"):
        FeatureAblation(lambda z: "high").attribute(x)


def test_futures_completing_out_of_order_are_folded_in_order() -> None:
    model = MLP().double()
    x = torch.randn(3, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 2, 2, 3]])
    waiting: list[tuple[Future, Tensor]] = []

    def later(z: Tensor) -> Future:
        future: Future = Future()
        waiting.append((future, model(z)))
        return future

    result = FeatureAblation(later).attribute_future(
        x, target=[0, 1, 2], feature_mask=mask, perturbations_per_eval=2
    )
    assert len(waiting) == 3 and not result.done()  # every forward issued, nothing folded yet
    for future, value in reversed(waiting):
        future.set_result(value)
    expected = FeatureAblation(model).attribute(
        x, target=[0, 1, 2], feature_mask=mask, perturbations_per_eval=2
    )
    assert torch.equal(result.wait(), expected)
