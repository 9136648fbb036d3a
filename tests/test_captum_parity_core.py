"""The core path against Captum itself (float64, seeded): Saliency, InputXGradient and GradientShap
values for every target form, and the error classes of invalid targets, inputs and baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import llmattr
from llmattr._core.errors import InputError

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's requires_grad notices

F64 = torch.float64
BATCH = 3


class Net(nn.Module):
    """x (batch, 4) [, z (batch, 2)] → (batch, 3) or, with ``grid``, (batch, 3, 2)."""

    def __init__(self, grid: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5).double()
        self.fc2 = nn.Linear(5, 6 if grid else 3).double()
        self.grid = grid

    def forward(self, x: Tensor, z: Tensor | None = None, scale: float = 1.0) -> Tensor:
        h = torch.tanh(self.fc1(x))
        if z is not None:
            h = h + z.sum(1, keepdim=True) ** 2
        out = self.fc2(h) * scale
        return out.reshape(len(x), 3, 2) if self.grid else out


def one_output(x: Tensor) -> Tensor:
    return (x**2).sum(1, keepdim=True)


TARGETS = [
    ("int", False, 1),
    ("negative-int", False, -1),
    ("one-element-tuple", False, (2,)),
    ("tuple-on-3d", True, (1, 0)),
    ("list-of-ints", False, [0, 2, 1]),
    ("list-of-tuples", True, [(0, 1), (2, 0), (1, 1)]),
    ("0d-tensor", False, torch.tensor(2)),
    ("1-element-tensor", False, torch.tensor([1])),
    ("per-example-tensor", False, torch.tensor([2, 0, 1])),
]


def run(name: str, lib, model, inputs, **kw):
    return getattr(lib, name)(model).attribute(inputs, **kw)


def assert_same(ours, theirs) -> None:
    assert type(ours) is type(theirs)
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,),
                    theirs if isinstance(theirs, tuple) else (theirs,)):  # fmt: skip
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["Saliency", "InputXGradient"])
@pytest.mark.parametrize("grid,target", [t[1:] for t in TARGETS], ids=[t[0] for t in TARGETS])
def test_gradient_methods_match_captum_for_every_target_form(method, grid, target) -> None:
    model = Net(grid)
    x = torch.randn(BATCH, 4, dtype=F64)
    ours = run(method, llmattr, model, x, target=target)
    assert_same(ours, run(method, captum_attr, model, x, target=target))


def test_target_none_on_a_one_value_output() -> None:
    x = torch.randn(BATCH, 4, dtype=F64)
    for method in ("Saliency", "InputXGradient"):
        assert_same(run(method, llmattr, one_output, x), run(method, captum_attr, one_output, x))


@pytest.mark.parametrize("abs_", [True, False])
def test_saliency_abs_tuple_inputs_and_extra_args(abs_: bool) -> None:
    model = Net()
    x, z = torch.randn(BATCH, 4, dtype=F64), torch.randn(BATCH, 2, dtype=F64)
    kw = dict(target=[2, 1, 0], additional_forward_args=(2.5,), abs=abs_)
    assert_same(run("Saliency", llmattr, model, (x, z), **kw),
                run("Saliency", captum_attr, model, (x, z), **kw))  # fmt: skip
    kw.pop("abs")
    assert_same(run("InputXGradient", llmattr, model, (x, z), **kw),
                run("InputXGradient", captum_attr, model, (x, z), **kw))  # fmt: skip


def seeded(lib, model, *args, seed: int = 0, **kw):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return lib.GradientShap(model, **kw.pop("init", {})).attribute(*args, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"target": 1},
        {"target": [0, 2, 1], "stdevs": 0.3},
        {"target": 2, "stdevs": 0.2, "return_convergence_delta": True},
        {"target": torch.tensor([1, 1, 0]), "init": {"multiply_by_inputs": False}},
    ],
    ids=["plain", "noise", "delta", "local"],
)
def test_gradient_shap_with_the_same_seeds_matches_captum(kw) -> None:
    model = Net()
    x, dist = torch.randn(BATCH, 4, dtype=F64), torch.randn(5, 4, dtype=F64)
    ours = seeded(llmattr, model, x, dist, n_samples=6, internal_batch_size=4, **dict(kw))
    theirs = seeded(captum_attr, model, x, dist, n_samples=6, **dict(kw))
    if isinstance(theirs, tuple):  # (attributions, delta)
        assert_same(ours[0], theirs[0])
        assert ours[1].shape == theirs[1].shape == (BATCH * 6,)
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-10, atol=1e-12)
    else:
        assert_same(ours, theirs)
    # the global generators are left where Captum leaves them
    seeded(llmattr, model, x, dist, n_samples=6, **dict(kw))
    after_ours = (torch.rand(2), np.random.rand(2))
    seeded(captum_attr, model, x, dist, n_samples=6, **dict(kw))
    assert torch.equal(after_ours[0], torch.rand(2))
    assert np.array_equal(after_ours[1], np.random.rand(2))


def test_gradient_shap_draws_one_baseline_row_for_all_inputs() -> None:
    """With f(x, z) linear, x - attr/w recovers the drawn baseline rows. Rows of a tuple
    distribution are joint samples: ours uses row r for x and z together; Captum draws a row per
    input, so x's and z's baselines come from different samples (the product of marginals)."""

    def lin(x: Tensor, z: Tensor) -> Tensor:
        return x.sum(1) + z.sum(1)

    n_b, n_samples = 4, 1
    powers = 10.0 ** torch.arange(n_b, dtype=F64)
    bx, bz = powers[:, None].clone(), powers[:, None].clone()  # row r is 10**r in both inputs
    x, z = torch.zeros(8, 1, dtype=F64), torch.zeros(8, 1, dtype=F64)
    ours = seeded(llmattr, lin, (x, z), (bx, bz), n_samples=n_samples, seed=1)
    theirs = seeded(captum_attr, lin, (x, z), (bx, bz), n_samples=n_samples, seed=1)
    assert torch.equal(ours[0], ours[1])  # the same row for both inputs, every draw
    assert not torch.equal(theirs[0], theirs[1])  # Captum mixes rows across inputs


# --- error classes --------------------------------------------------------------------------


def both_raise(captum_error, ours_error, method: str, model, inputs, **kw) -> None:
    with pytest.raises(captum_error):
        run(method, captum_attr, model, inputs, **kw)
    with pytest.raises(ours_error):
        run(method, llmattr, model, inputs, **kw)


X = torch.randn(2, 4, dtype=F64)
ASSERTED = [  # Captum raises AssertionError; ours InputError (also a ValueError)
    ("list-length", {"target": [0, 1, 2]}),
    ("tensor-length", {"target": torch.tensor([0, 1, 2])}),
    ("tensor-2d", {"target": torch.tensor([[0, 1, 2]])}),
    ("tuple-too-long", {"target": (0, 1)}),
    ("none-on-multi-output", {"target": None}),
    ("float-target", {"target": 1.5}),
    ("str-target", {"target": "a"}),
    ("list-of-floats", {"target": [0.0, 1.0]}),
    ("0d-float-tensor", {"target": torch.tensor(1.0)}),
]


@pytest.mark.parametrize("kw", [a[1] for a in ASSERTED], ids=[a[0] for a in ASSERTED])
@pytest.mark.parametrize("method", ["Saliency", "InputXGradient"])
def test_invalid_targets_raise_what_captum_users_catch(method: str, kw) -> None:
    both_raise(AssertionError, InputError, method, Net(), X, **kw)


@pytest.mark.parametrize(
    "target,captum_error",
    [
        (5, IndexError),
        (-4, IndexError),
        ([0, 5], RuntimeError),
        (torch.tensor([0, 5]), RuntimeError),
    ],
    ids=["int", "negative-int", "list", "tensor"],
)
def test_out_of_range_targets_raise_captum_s_classes(target, captum_error) -> None:
    both_raise(captum_error, captum_error, "Saliency", Net(), X, target=target)
    with pytest.raises(IndexError):
        run("Saliency", llmattr, Net(), X, target=target)


def test_invalid_inputs() -> None:
    both_raise(AssertionError, InputError, "Saliency", Net(), "not a tensor", target=0)
    with pytest.raises(TypeError):  # and still the TypeError it always was
        run("Saliency", llmattr, Net(), "not a tensor", target=0)
    # different batch sizes: Captum fails inside the forward; ours before it, clearly
    with pytest.raises(InputError, match="different batch sizes"):
        run("Saliency", llmattr, Net(), (X, torch.randn(3, 2, dtype=F64)), target=0)


BAD_BASELINES = [
    ("shape", torch.zeros(3, 5, dtype=F64)),
    ("count", (0.0, 1.0)),
    ("type", "zero"),
]


@pytest.mark.parametrize(
    "baselines", [b[1] for b in BAD_BASELINES], ids=[b[0] for b in BAD_BASELINES]
)
def test_invalid_baselines_raise_input_error(baselines) -> None:
    both_raise(AssertionError, InputError, "IntegratedGradients", Net(), X, baselines=baselines,
               target=0)  # fmt: skip


def test_invalid_gradient_shap_arguments() -> None:
    dist = torch.zeros(3, 4, dtype=F64)
    both_raise(AssertionError, InputError, "GradientShap", Net(), X,
               baselines=torch.zeros(3, 5, dtype=F64), target=0)  # fmt: skip
    both_raise(AssertionError, InputError, "GradientShap", lambda a, b: a.sum(1) + b.sum(1),
               (X, X), baselines=(dist, dist), stdevs=(0.1, 0.2, 0.3))  # fmt: skip
    both_raise(AssertionError, InputError, "GradientShap", lambda a, b: a.sum(1) + b.sum(1),
               (X, X), baselines=dist)  # fmt: skip


def test_every_get_name_equals_captums() -> None:
    """``get_name()`` (which titles progress bars) is Captum's for every class both export."""
    import inspect

    import captum.attr

    import llmattr

    compared = 0
    for name in captum.attr.__all__:
        theirs, ours = getattr(captum.attr, name), getattr(llmattr, name, None)
        if inspect.isclass(theirs) and hasattr(theirs, "get_name") and hasattr(ours, "get_name"):
            assert ours.get_name() == theirs.get_name(), name
            compared += 1
    assert compared >= 48


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_draws_captums_noise_copy_by_copy(nt_type: str) -> None:
    """The same seed gives Captum's NoiseTunnel result when Captum draws copy by copy
    (``nt_samples_batch_size=1``); ours draws that way whatever the partition."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.manual_seed(1)
    theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, nt_type=nt_type, nt_samples=5, target=0, nt_samples_batch_size=1
    )
    for partition in (None, 1, 2):
        torch.manual_seed(1)
        ours = llmattr.NoiseTunnel(llmattr.Saliency(model)).attribute(
            x, nt_type=nt_type, nt_samples=5, target=0, nt_samples_batch_size=partition
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8)


def test_output_without_the_batch_dimension_is_refused_where_captum_runs() -> None:
    """A forward that returns ``(1, k)`` for a batch of 2 (it dropped the batch): Captum's
    gradient methods run on what the target picks; ours name the shapes (a deliberate
    difference, in the README's table)."""
    lin = nn.Linear(2, 2).double()

    def forward(x: Tensor) -> Tensor:
        return lin(x)[0].unsqueeze(0)

    x = torch.randn(2, 2, dtype=torch.float64)
    assert captum_attr.Saliency(forward).attribute(x, target=0).shape == x.shape
    with pytest.raises(ValueError, match=r"shape \(1, 2\) for a batch of 2"):
        llmattr.Saliency(forward).attribute(x, target=0)
