"""Parity with Captum 0.9 for the perturbation family: FeatureAblation, Occlusion,
FeaturePermutation, ShapleyValueSampling, ShapleyValues and NoiseTunnel over them.

Both libraries run on the same float64 models and inputs; values, shapes, dtypes, error types,
futures, names and progress-bar titles are compared. Where llmattr knowingly differs (float64
kept where Captum returns float32, a group spanning inputs permuted as one, NoiseTunnel's delta
order and its rows over a multi-output FeatureAblation) a test shows the difference and the
property it buys.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.futures import Future

import llmattr

captum_attr = pytest.importorskip("captum.attr")

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore")


class Net(nn.Module):
    """6 features -> 3 outputs, nonlinear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class TwoInputs(nn.Module):
    """Two inputs and two extra forward args (a per-example tensor and a number)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(6, 3)

    def forward(self, x1: Tensor, x2: Tensor, scale: Tensor, shift: float) -> Tensor:
        return torch.tanh(self.a(x1) * scale[:, None] + self.b(x2.flatten(1))) + shift


@pytest.fixture(scope="module")
def net() -> Net:
    return Net().double()


@pytest.fixture(scope="module")
def two() -> TwoInputs:
    return TwoInputs().double()


def pair(name: str, *init: Any) -> tuple[Any, Any]:
    return getattr(llmattr, name)(*init), getattr(captum_attr, name)(*init)


def run_both(
    name: str, init: tuple[Any, ...], *args: Any, seed: int | None = None, **kw: Any
) -> tuple[Any, Any]:
    ours, theirs = pair(name, *init)
    if seed is not None:
        torch.manual_seed(seed)
    a = ours.attribute(*args, **kw)
    if seed is not None:
        torch.manual_seed(seed)
    b = theirs.attribute(*args, **kw)
    return a, b


def same(a: Any, b: Any, *, dtype: bool = True, tol: float = 1e-10) -> None:
    """Same form, shapes, (dtypes) and values."""
    assert isinstance(a, tuple) == isinstance(b, tuple)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert u.shape == v.shape
        if dtype:
            assert u.dtype == v.dtype
        torch.testing.assert_close(u.double(), v.double(), rtol=tol, atol=tol)


X = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
MASK = torch.tensor([[0, 0, 1, 2, 2, 3]])
X1 = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
X2 = torch.randn(3, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
EXTRA = (torch.tensor([1.0, -2.0, 0.5], dtype=F64), 0.25)
MASKS2 = (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 3, 4], [5, 5, 5]]]))

TARGETS = {
    "int": 1,
    "list": [0, 2, 1, 1],
    "tensor": torch.tensor([2, 0, 1, 0]),
    "0-d tensor": torch.tensor(2),
    "none (multi-output)": None,
}


# --- FeatureAblation ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("ppe", [1, 3])
def test_ablation_targets(net: Net, target: str, ppe: int) -> None:
    kw = {"target": TARGETS[target], "perturbations_per_eval": ppe}
    same(*run_both("FeatureAblation", (net,), X, feature_mask=MASK, baselines=0.3, **kw))
    same(*run_both("FeatureAblation", (net,), X, **kw))


@pytest.mark.parametrize("ppe", [1, 2, 5])
def test_ablation_two_inputs_extra_args_masks_and_baselines(two: TwoInputs, ppe: int) -> None:
    baselines = (0.5, torch.randn(1, 2, 3, dtype=F64))
    for masks in (MASKS2, None, (MASKS2[0], torch.tensor([[[0, 0, 1], [1, 3, 3]]]))):
        same(
            *run_both(
                "FeatureAblation", (two,), (X1, X2), baselines=baselines, target=[0, 2, 1],
                additional_forward_args=EXTRA, feature_mask=masks, perturbations_per_eval=ppe,
            )
        )  # fmt: skip


def test_ablation_per_example_and_float_masks(net: Net) -> None:
    per_example = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]] * 2)
    same(*run_both("FeatureAblation", (net,), X, target=0, feature_mask=per_example))
    same(*run_both("FeatureAblation", (net,), X, target=0, feature_mask=MASK.double()))


def test_ablation_three_dimensional_output_with_tuple_targets(net: Net) -> None:
    def f(z: Tensor) -> Tensor:
        return torch.cat([net(z), net(-z)], 1).reshape(-1, 2, 3)

    same(*run_both("FeatureAblation", (f,), X, target=(1, 2), feature_mask=MASK))
    same(*run_both("FeatureAblation", (f,), X, target=[(0, 1), (1, 2), (0, 0), (1, 1)]))
    a, b = run_both("FeatureAblation", (f,), X, feature_mask=MASK, perturbations_per_eval=2)
    same(a, b)
    assert a.shape == (4 * 2 * 3, 6)  # (output.numel(), *input.shape[1:])
    per_output = llmattr.FeatureAblation(f).attribute(
        X, feature_mask=MASK, per_example_outputs=True
    )
    assert torch.equal(per_output.reshape(24, 6), a)


AGGREGATES: dict[str, Callable[[Net], Callable[[Tensor], Any]]] = {
    "python float": lambda m: lambda z: m(z).sum().item(),
    "python int": lambda m: lambda z: int(m(z).sum().item() * 100),
    "0-d tensor": lambda m: lambda z: m(z).sum(),
    "(1,) tensor": lambda m: lambda z: m(z).sum().reshape(1),
    "(3,) tensor": lambda m: lambda z: m(z).sum(0),
}


@pytest.mark.parametrize("kind", list(AGGREGATES))
def test_ablation_aggregate_outputs_shapes_and_dtypes(net: Net, kind: str) -> None:
    f = AGGREGATES[kind](net)
    a, b = run_both("FeatureAblation", (f,), X, feature_mask=MASK, baselines=0.1)
    same(a, b)
    assert a.dtype == (torch.int64 if kind == "python int" else F64)


def test_ablation_integer_forward_gives_int64(net: Net) -> None:
    xi = torch.tensor([[-3, 1, 2], [4, 5, -6]])

    def f(z: Tensor) -> Tensor:
        return (z * torch.tensor([1, 2, 3])).sum(1)

    a, b = run_both("FeatureAblation", (f,), xi, perturbations_per_eval=2)
    same(a, b)
    assert a.dtype == torch.int64


class SparseBag(nn.Module):
    """EmbeddingBag-style: a dense batch and a flat list of indices of another length."""

    def forward(self, dense: Tensor, indices: Tensor) -> Tensor:
        extra = indices.double().sum() if indices.numel() else 0.0
        return (dense * torch.tensor([1.0, -1.0, 2.0], dtype=F64)).sum() + extra


@pytest.mark.parametrize("indices", [torch.tensor([1, 7, 2, 4, 5, 3, 6]), torch.tensor([])])
def test_ablation_inputs_whose_first_dimension_is_not_the_batch(indices: Tensor) -> None:
    dense = torch.tensor([[1.0, -2.0, 3.0], [2.0, -1.0, 3.0]], dtype=F64)
    a, b = run_both("FeatureAblation", (SparseBag(),), (dense, indices))
    same(a, b)


# --- Occlusion ------------------------------------------------------------------------------------


OCCLUSIONS: dict[str, dict[str, Any]] = {
    "window 3 stride 2": {"sliding_window_shapes": (3,), "strides": 2},
    "window 2 default stride": {"sliding_window_shapes": (2,)},
    "1-tuple stride": {"sliding_window_shapes": (4,), "strides": (3,)},
    "whole width": {"sliding_window_shapes": (6,), "strides": 9},
}


@pytest.mark.parametrize("case", list(OCCLUSIONS))
@pytest.mark.parametrize("target", ["int", "list", "none (multi-output)"])
def test_occlusion_values_and_shapes(net: Net, case: str, target: str) -> None:
    kw = {"target": TARGETS[target], "baselines": 0.2, **OCCLUSIONS[case]}
    a, b = run_both("Occlusion", (net,), X, perturbations_per_eval=3, **kw)
    # Captum divides in float32 whatever the forward's dtype; llmattr keeps float64
    same(a, b, dtype=False, tol=1e-5)
    assert a.dtype == F64 and b.dtype == torch.float32


def test_occlusion_two_inputs_3d_and_integer_forward(two: TwoInputs) -> None:
    kw = {"sliding_window_shapes": ((2,), (1, 2)), "strides": (1, (1, 1)), "target": 2}
    a, b = run_both("Occlusion", (two,), (X1, X2), additional_forward_args=EXTRA, **kw)
    same(a, b, dtype=False, tol=1e-5)
    xi = torch.tensor([[-3, 1, 2, 5], [4, 5, -6, 1]])

    def f(z: Tensor) -> Tensor:
        return (z * torch.tensor([1, 2, 3, 4])).sum(1)

    a, b = run_both("Occlusion", (f,), xi, sliding_window_shapes=(3,))
    same(a, b)
    assert a.dtype == torch.float32  # an integer forward's means are float32 in both


OCCLUSION_ERRORS: dict[str, dict[str, Any]] = {
    "window larger than input": {"sliding_window_shapes": (7,)},
    "stride longer than window": {"sliding_window_shapes": (2,), "strides": 3},
    "window with too many dims": {"sliding_window_shapes": (2, 2)},
    "stride with too many dims": {"sliding_window_shapes": (2,), "strides": ((1, 1),)},
}


@pytest.mark.parametrize("case", list(OCCLUSION_ERRORS))
def test_occlusion_errors_are_assertion_errors(net: Net, case: str) -> None:
    for algo in pair("Occlusion", net):
        with pytest.raises(AssertionError):
            algo.attribute(X, target=0, **OCCLUSION_ERRORS[case])


# --- FeaturePermutation ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("ppe", [1, 2, 3])
def test_permutation_draws_as_captum(net: Net, target: str, ppe: int) -> None:
    kw = {"target": TARGETS[target], "perturbations_per_eval": ppe}
    same(*run_both("FeaturePermutation", (net,), X, seed=7, feature_mask=MASK, **kw))


@pytest.mark.parametrize("ppe", [1, 2, 4])
def test_permutation_two_inputs_draws_as_captum(two: TwoInputs, ppe: int) -> None:
    kw = {"additional_forward_args": EXTRA, "perturbations_per_eval": ppe, "target": 1}
    same(*run_both("FeaturePermutation", (two,), (X1, X2), seed=8, feature_mask=MASKS2, **kw))
    same(*run_both("FeaturePermutation", (two,), (X1, X2), seed=9, **kw))


def test_permutation_batch_of_one_gives_zeros(net: Net) -> None:
    a, b = run_both("FeaturePermutation", (net,), X[:1], target=0)
    same(a, b)
    assert not a.any()


def test_permutation_group_across_inputs_moves_whole_examples() -> None:
    """Deliberate difference: a feature in two inputs (``x2 = -x1`` paired elementwise, summed)
    is permuted with one permutation, so the sum never changes; Captum draws one per input."""

    def f(a: Tensor, b: Tensor) -> Tensor:
        return (a + b).sum(1)

    x = torch.randn(5, 3, dtype=F64)
    mask = torch.tensor([[0, 1, 2]])
    a, b = run_both("FeaturePermutation", (f,), (x, -x), seed=3, feature_mask=(mask, mask))
    assert not a[0].any() and not a[1].any()
    assert b[0].abs().sum() > 0  # Captum permutes the two halves of a feature independently


def test_gapped_and_reordered_ids_visit_features_as_captum(two: TwoInputs) -> None:
    """Ids may skip numbers, and input 0 may hold the larger ids: Captum visits ids input by
    input, so the permutations drawn (with perturbations_per_eval > 1) follow that order."""
    masks = (torch.tensor([[7, 2, 2, 8]]), torch.tensor([[[0, 0, 4], [9, 4, 4]]]))
    kw = {"additional_forward_args": EXTRA, "feature_mask": masks, "target": 2}
    for ppe in (1, 3):
        same(*run_both("FeatureAblation", (two,), (X1, X2), perturbations_per_eval=ppe, **kw))
        same(
            *run_both(
                "FeaturePermutation", (two,), (X1, X2), seed=2, perturbations_per_eval=ppe, **kw
            )
        )
        a, b = run_both(
            "ShapleyValueSampling", (two,), (X1, X2), seed=2, n_samples=3,
            perturbations_per_eval=ppe, **kw,
        )  # fmt: skip
        same(a, b, dtype=False, tol=1e-5)


# --- Shapley values -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["int", "list", "none (multi-output)"])
@pytest.mark.parametrize("ppe", [1, 2])
def test_shapley_sampling_draws_as_captum(net: Net, target: str, ppe: int) -> None:
    kw = {"target": TARGETS[target], "perturbations_per_eval": ppe, "n_samples": 6}
    a, b = run_both("ShapleyValueSampling", (net,), X, seed=5, feature_mask=MASK, **kw)
    # Captum accumulates in float32 whatever the forward's dtype; llmattr keeps float64
    same(a, b, dtype=False, tol=1e-5)
    assert a.dtype == F64 and b.dtype == torch.float32


def test_shapley_sampling_two_inputs_and_aggregate(net: Net, two: TwoInputs) -> None:
    kw = {"additional_forward_args": EXTRA, "n_samples": 4, "baselines": (0.1, -0.2)}
    a, b = run_both(
        "ShapleyValueSampling", (two,), (X1, X2), seed=6, feature_mask=MASKS2, target=0, **kw
    )
    same(a, b, dtype=False, tol=1e-5)
    for kind in ("0-d tensor", "(3,) tensor", "python int"):
        f = AGGREGATES[kind](net)
        a, b = run_both("ShapleyValueSampling", (f,), X, seed=4, feature_mask=MASK, n_samples=3)
        same(a, b, dtype=kind == "python int", tol=1e-4)


@pytest.mark.parametrize("target", ["int", "tensor", "none (multi-output)"])
def test_exact_shapley_values(net: Net, two: TwoInputs, target: str) -> None:
    kw = {"target": TARGETS[target], "feature_mask": MASK, "baselines": 0.4}
    a, b = run_both("ShapleyValues", (net,), X, perturbations_per_eval=3, **kw)
    same(a, b, dtype=False, tol=1e-5)
    masks = (torch.tensor([[0, 1, 1, 0]]), torch.tensor([[[2, 2, 0], [1, 3, 3]]]))
    a, b = run_both(
        "ShapleyValues", (two,), (X1, X2), feature_mask=masks, additional_forward_args=EXTRA,
        target=[0, 1, 2],
    )  # fmt: skip
    same(a, b, dtype=False, tol=1e-5)
    agg = AGGREGATES["(3,) tensor"](net)
    same(*run_both("ShapleyValues", (agg,), X, feature_mask=MASK), dtype=False, tol=1e-5)


def test_shapley_errors_are_assertion_errors(net: Net) -> None:
    total = AGGREGATES["0-d tensor"](net)
    for name in ("ShapleyValueSampling", "ShapleyValues", "FeatureAblation"):
        for algo in pair(name, total):
            with pytest.raises(AssertionError):
                algo.attribute(X, perturbations_per_eval=2)
            with pytest.raises(AssertionError):
                algo.attribute(X, perturbations_per_eval=0)


# --- futures --------------------------------------------------------------------------------------


def _future_of(f: Callable[..., Tensor]) -> Callable[..., Future]:
    def forward(*args: Any) -> Future:
        future: Future = Future()
        future.set_result(f(*args))
        return future

    return forward


FUTURES: dict[str, dict[str, Any]] = {
    "FeatureAblation": {"baselines": 0.2},
    "FeaturePermutation": {},
    "ShapleyValueSampling": {"n_samples": 3},
    "ShapleyValues": {},
}


@pytest.mark.parametrize("name", list(FUTURES))
@pytest.mark.parametrize("ppe", [1, 2])
def test_attribute_future_chains_futures_as_captum(net: Net, name: str, ppe: int) -> None:
    ours, theirs = pair(name, _future_of(net))
    kw = {"target": 1, "feature_mask": MASK, "perturbations_per_eval": ppe, **FUTURES[name]}
    torch.manual_seed(3)
    a = ours.attribute_future(X, **kw)
    torch.manual_seed(3)
    b = theirs.attribute_future(X, **kw)
    # Captum's is the torch._C.Future its .then() made (``torch.Future``); ours is the same type
    assert type(a) is type(b) is torch.Future
    same(a.wait(), b.wait(), dtype=name.startswith("Feature"), tol=1e-5)
    # a Future forward through attribute, and a plain forward through attribute_future, are
    # refused in both, with an AssertionError
    for algo in (ours, theirs):
        with pytest.raises(AssertionError):
            algo.attribute(X, target=1)
    for algo in pair(name, net):
        with pytest.raises(AssertionError):
            algo.attribute_future(X, target=1)


def test_attribute_future_two_inputs_and_error_in_a_future(two: TwoInputs) -> None:
    kw = {"additional_forward_args": EXTRA, "feature_mask": MASKS2, "target": [0, 1, 2]}
    a = llmattr.FeatureAblation(_future_of(two)).attribute_future((X1, X2), **kw)
    b = captum_attr.FeatureAblation(_future_of(two)).attribute_future((X1, X2), **kw)
    same(a.wait(), b.wait())

    def failing(x: Tensor) -> Future:
        future: Future = Future()
        future.set_exception(KeyError("the service is down"))
        return future

    with pytest.raises(KeyError, match="the service is down"):
        llmattr.FeatureAblation(failing).attribute_future(X, target=0).wait()


# --- names, progress bars -------------------------------------------------------------------------


NAMES = ["FeatureAblation", "FeaturePermutation", "Occlusion", "ShapleyValueSampling",
         "ShapleyValues", "NoiseTunnel"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_get_name(name: str) -> None:
    assert getattr(llmattr, name).get_name() == getattr(captum_attr, name).get_name()


@pytest.mark.parametrize("name", NAMES[:-1])
def test_progress_bar_titles(net: Net, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    kw: dict[str, Any] = {"target": 0, "show_progress": True}
    if name == "Occlusion":
        kw["sliding_window_shapes"] = (3,)
    else:
        kw["feature_mask"] = MASK
    for algo in pair(name, net):
        algo.attribute(X, **kw)
        err = capsys.readouterr().err
        assert f"{algo.get_name()} attribution" in err, (type(algo).__module__, err)


# --- NoiseTunnel ----------------------------------------------------------------------------------


def test_noise_tunnel_per_example_feature_mask(net: Net) -> None:
    per_example = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]] * 2)
    kw = {"target": 1, "feature_mask": per_example, "stdevs": 0.0, "nt_samples": 3}
    ours = llmattr.NoiseTunnel(llmattr.FeatureAblation(net))
    theirs = captum_attr.NoiseTunnel(captum_attr.FeatureAblation(net))
    for batch_size in (None, 2):
        a = ours.attribute(X, nt_samples_batch_size=batch_size, **kw)
        b = theirs.attribute(X, nt_samples_batch_size=batch_size, **kw)
        same(a, b, tol=1e-9)
    plain = llmattr.FeatureAblation(net).attribute(X, target=1, feature_mask=per_example)
    torch.testing.assert_close(a, plain)


def test_noise_tunnel_delta_order_is_example_major_whatever_the_partition() -> None:
    """Deliberate difference: ``delta.reshape(batch, nt_samples)[i]`` are example ``i``'s.

    ``f(x) = sum(x**3)`` with one-step integrated gradients has delta ``-x**3 / 4``: each
    example's deltas are recognisable. Captum concatenates partitions, so with
    ``nt_samples_batch_size=2`` its rows mix examples."""

    def cube(z: Tensor) -> Tensor:
        return (z**3).sum(1)

    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    expected = (-(x**3) / 4).expand(3, 4)
    kw = {"nt_samples": 4, "stdevs": 1e-4, "n_steps": 1, "return_convergence_delta": True}
    for batch_size in (None, 1, 2, 3):
        _, delta = llmattr.NoiseTunnel(llmattr.IntegratedGradients(cube)).attribute(
            x, nt_samples_batch_size=batch_size, **kw
        )
        torch.testing.assert_close(delta.reshape(3, 4), expected, atol=1e-2, rtol=0)
    _, delta = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(cube)).attribute(
        x, nt_samples_batch_size=2, **kw
    )
    assert not torch.allclose(delta.reshape(3, 4), expected, atol=1e-2, rtol=0)


def test_noise_tunnel_errors() -> None:
    for nt in (llmattr.NoiseTunnel(llmattr.Saliency(Net())), captum_attr.NoiseTunnel(
        captum_attr.Saliency(Net())
    )):  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(AssertionError):
                nt.attribute(X.float(), nt_type="smooth", target=0)


def test_noise_tunnel_over_a_multi_output_ablation_keeps_outputs_apart(net: Net) -> None:
    """Deliberate difference: FeatureAblation gives ``batch * C`` rows for a ``(batch, C)``
    output; NoiseTunnel averages each row over its own copies. Captum groups ``nt_samples``
    consecutive rows, mixing different outputs: without noise it does not give back
    FeatureAblation's attributions."""
    kw = {"nt_samples": 3, "stdevs": 0.0}
    ours = llmattr.NoiseTunnel(llmattr.FeatureAblation(net)).attribute(X, **kw)
    plain = llmattr.FeatureAblation(net).attribute(X)
    assert ours.shape == (12, 6)
    torch.testing.assert_close(ours, plain)
    theirs = captum_attr.NoiseTunnel(captum_attr.FeatureAblation(net)).attribute(X, **kw)
    assert theirs.shape == (12, 6) and not torch.allclose(theirs, plain)


# --- futures: Captum's type, forwards returning either Future class ---------------------------


@pytest.mark.parametrize("name", list(FUTURES))
def test_attribute_future_accepts_a_plain_torch_future_forward(net: Net, name: str) -> None:
    # a forward whose Future comes from .then() is a torch._C.Future, not a torch.futures.Future:
    # Captum fails on it (AttributeError), llmattr takes it as it takes a torch.futures.Future
    def chained(x: Tensor) -> Any:
        return _future_of(net)(x).then(lambda f: f.wait())

    kw = {"target": 2, "feature_mask": MASK, **FUTURES[name]}
    with pytest.raises(AttributeError):
        getattr(captum_attr, name)(chained).attribute_future(X, **kw).wait()
    torch.manual_seed(5)
    a = getattr(llmattr, name)(chained).attribute_future(X, **kw)
    torch.manual_seed(5)
    b = getattr(llmattr, name)(_future_of(net)).attribute_future(X, **kw)
    assert type(a) is type(b) is torch.Future
    same(a.wait(), b.wait())


def test_occlusion_future_is_a_plain_torch_future(net: Net) -> None:
    a = llmattr.Occlusion(_future_of(net)).attribute_future(X, (2,), target=0)
    assert type(a) is torch.Future
    same(a.wait(), llmattr.Occlusion(net).attribute(X, (2,), target=0))


# --- inputs with different first dimensions; _min_examples_per_batch_grouped ----------------------


def _first_only(x1: Tensor, x2: Tensor) -> Tensor:
    return (x1 * torch.arange(1.0, 3.0, dtype=x1.dtype)).sum(-1) ** 2 + x2.sum() * 0


def _both(x1: Tensor, x2: Tensor) -> Tensor:
    return torch.tanh(x1).sum(-1) * x2.sum()


ONE = torch.tensor([[1.0, 2.0]], dtype=F64)
TWO = torch.tensor([[3.0, 4.0], [5.0, 6.0]], dtype=F64)
THREE = torch.tensor([[1.0, 2.0], [7.0, 8.0], [9.0, 1.0]], dtype=F64)


@pytest.mark.parametrize(
    ("inputs", "mask"),
    [
        ((ONE, TWO), (torch.tensor([0, 0]), torch.tensor([[0, 0], [0, 0]]))),  # all skipped
        ((ONE, TWO), (torch.tensor([0, 1]), torch.tensor([[2, 2]]))),  # input 1 permuted
        ((THREE, TWO), (torch.tensor([0, 1]), torch.tensor([[1, 2]]))),  # feature 1 spans both
        ((THREE, TWO), None),
        ((THREE, ONE), None),  # input 1's features skipped
    ],
)
@pytest.mark.parametrize("forward", [_first_only, _both])
def test_permutation_inputs_with_different_first_dims_as_captum(
    inputs: tuple[Tensor, ...], mask: Any, forward: Callable[..., Tensor]
) -> None:
    a, b = run_both("FeaturePermutation", (forward,), inputs, feature_mask=mask, seed=4)
    same(a, b)


def test_min_examples_per_batch_grouped_as_captum() -> None:
    ours, theirs = pair("FeaturePermutation", _first_only)
    assert ours._min_examples_per_batch_grouped == theirs._min_examples_per_batch_grouped == 2
    calls: list[int] = []

    def counted(x: Tensor) -> Tensor:
        calls.append(1)
        return x.sum(-1)

    # 1: a batch of one is no longer skipped, and cannot be permuted; we refuse before a forward
    for algo in pair("FeaturePermutation", counted):
        algo._min_examples_per_batch_grouped = 1
        with pytest.raises(AssertionError):
            algo.attribute(ONE)
    assert len(calls) == 1  # Captum's initial forward only
    ours = llmattr.FeaturePermutation(counted)
    ours._min_examples_per_batch_grouped = 1
    with pytest.raises(llmattr._core.errors.InputError, match="at least 2"):
        ours.attribute(ONE)
    # 3: every feature held by an input of fewer than 3 entries is skipped, in both
    ours, theirs = pair("FeaturePermutation", _both)
    ours._min_examples_per_batch_grouped = theirs._min_examples_per_batch_grouped = 3
    torch.manual_seed(2)
    a = ours.attribute((THREE, TWO))
    torch.manual_seed(2)
    b = theirs.attribute((THREE, TWO))
    same(a, b)
    assert bool(a[0].ne(0).any()) and bool(a[1].eq(0).all())


def test_ablation_min_examples_per_batch_grouped_as_captum() -> None:
    mask = (torch.tensor([[0, 1]]), torch.tensor([[1, 2]]))
    for minimum in (None, 2, 3):
        ours, theirs = pair("FeatureAblation", _both)
        assert ours._min_examples_per_batch_grouped is theirs._min_examples_per_batch_grouped
        ours._min_examples_per_batch_grouped = minimum
        theirs._min_examples_per_batch_grouped = minimum
        kw = {"feature_mask": mask, "baselines": (0.5, -1.0)}
        same(ours.attribute((THREE, TWO), **kw), theirs.attribute((THREE, TWO), **kw))


def test_per_entry_mask_of_a_non_batch_input_where_captum_crashes() -> None:
    # Captum: a mask with one grouping per entry of an input whose first dimension is not the
    # batch breaks its accumulation (RuntimeError). llmattr gives each position the credit its
    # features share (here 0: the features are skipped, or the forward ignores them) ...
    per_entry = (torch.tensor([0, 1]), torch.tensor([[2, 2], [3, 3]]))
    for inputs in [(ONE, TWO), (THREE, TWO)]:
        with pytest.raises(RuntimeError):
            torch.manual_seed(0)
            captum_attr.FeaturePermutation(_first_only).attribute(inputs, feature_mask=per_entry)
        torch.manual_seed(0)
        a = llmattr.FeaturePermutation(_first_only).attribute(inputs, feature_mask=per_entry)
        assert a[0].shape == (inputs[0].shape[0], 2) and a[1].shape == (inputs[0].shape[0], 2)
        assert bool(a[1].eq(0).all())
        # ... the first input's attributions are those of a shared mask for the second
        torch.manual_seed(0)
        shared = (per_entry[0], torch.tensor([[2, 2]]))
        same(a, llmattr.FeaturePermutation(_first_only).attribute(inputs, feature_mask=shared))
    # ... and refuses (InputError) when the entries' features got different credit
    with pytest.raises(llmattr._core.errors.InputError, match="first dimension 1"):
        llmattr.FeatureAblation(_both).attribute((THREE, TWO), feature_mask=per_entry)


def test_permutation_skips_per_feature_not_per_forward() -> None:
    # Captum skips a whole forward's perturbations_per_eval features when one of them is held by
    # a too-small input, so its numbers depend on perturbations_per_eval; llmattr skips only that
    # feature, and perturbations_per_eval changes nothing
    mask = (torch.tensor([0, 1]), torch.tensor([[1, 1]]))  # feature 1 is held by ONE too

    def roll(x: Tensor, m: Tensor) -> Tensor:  # deterministic, so only the skipping differs
        return torch.where(m, x.roll(1, 0), x)

    def both(lib: Any, ppe: int) -> Any:
        algo = lib.FeaturePermutation(_both, perm_func=roll)
        return algo.attribute((THREE, ONE), feature_mask=mask, perturbations_per_eval=ppe)

    ours, theirs = [both(llmattr, p) for p in (1, 2)], [both(captum_attr, p) for p in (1, 2)]
    same(ours[0], theirs[0])
    same(ours[0], ours[1])
    assert bool(ours[1][0][:, 0].ne(0).all())  # feature 0 is attributed
    assert bool(theirs[1][0].eq(0).all()) and bool(theirs[0][0][:, 0].ne(0).all())
