"""LimeBase against Captum's LimeBase: with the same seed, user functions and interpretable
model, the same samples reach the same fit (float32 data in one batch) and the same
representation comes back, in both sampling modes; errors are Captum's types."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")
captum_linear = pytest.importorskip("captum._utils.models.linear_model")
pytest.importorskip("sklearn")
from torch.utils.data import DataLoader  # noqa: E402

import llmattr.attr as ours  # noqa: E402
from llmattr._core.errors import InputError  # noqa: E402

F64 = torch.float64


def net(n_in: int = 5, n_out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out)).double()


class Recorder:
    """A custom Captum-style interpretable model: weighted least squares in closed form, which
    keeps what ``fit`` was given so both libraries' training data can be compared."""

    def fit(self, train_data: DataLoader, **kwargs: Any) -> None:
        batches = list(train_data)
        assert len(batches) == 1  # all samples in one batch, as Captum
        self.data = x, y, w = batches[0]
        design = torch.cat([x, torch.ones(len(x), 1)], 1).double() * w.double().sqrt()[:, None]
        sol = torch.linalg.lstsq(design, y.double() * w.double().sqrt()).solution
        self.coef = sol[:-1].reshape(1, -1)

    def representation(self) -> Tensor:
        return self.coef


# user functions, the same on both sides; ``scale`` arrives through attribute's **kwargs
def bern(inp: Any, **kw: Any) -> Tensor:
    return torch.bernoulli(torch.full((1, 5), 0.5))


def keep(sample: Tensor, inp: Tensor, **kw: Any) -> Tensor:
    return inp * sample.to(inp.dtype)


def noisy(inp: Tensor, **kw: Any) -> Tensor:
    return inp + kw["scale"] * torch.randn_like(inp)


def shift(perturbed: Tensor, inp: Tensor, **kw: Any) -> Tensor:
    return (perturbed - inp).sum(0, keepdim=True)


def sim(orig: Any, pert: Any, interp: Tensor, **kw: Any) -> Tensor:
    return torch.exp(-((orig - pert) ** 2).sum() / kw["scale"])


MODES = {"interpretable": (bern, True, keep, None), "input": (noisy, False, None, shift)}
MODELS = {
    "SkLearnLasso": lambda lib: lib.SkLearnLasso(alpha=0.01),
    "SGDLinearRegression": lambda lib: lib.SGDLinearRegression(),
    "custom": lambda lib: Recorder(),
}


def pair(mode: str, model: str, forward: Any, **overrides: Any) -> tuple[Any, Any]:
    """Captum's and llmattr's LimeBase built alike."""
    perturb, space, from_interp, to_interp = MODES[mode]
    args = dict(
        similarity_func=sim, perturb_func=perturb, perturb_interpretable_space=space,
        from_interp_rep_transform=from_interp, to_interp_rep_transform=to_interp,
    )  # fmt: skip
    args.update(overrides)
    theirs = captum_attr.LimeBase(forward, MODELS[model](captum_linear), **args)
    mine = ours.LimeBase(forward, MODELS[model](ours), **args)
    return theirs, mine


def run_both(theirs: Any, mine: Any, *args: Any, seed: int = 5, **kw: Any) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    a = theirs.attribute(*args, **kw)
    torch.manual_seed(seed)
    b = mine.attribute(*args, **kw)
    return a, b


@pytest.mark.parametrize("ppe", [1, 3])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("mode", list(MODES))
def test_limebase_gives_captums_representation(mode: str, model: str, ppe: int) -> None:
    forward = net()
    x = torch.randn(1, 5, dtype=F64)
    theirs, mine = pair(mode, model, forward)
    a, b = run_both(theirs, mine, x, target=1, n_samples=20, perturbations_per_eval=ppe, scale=2.0)
    assert isinstance(b, Tensor) and b.shape == a.shape == (1, 5) and b.dtype == a.dtype
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert a.abs().max() > 1e-3  # not trivially zero
    if model == "custom":  # the very same training data: float32, one batch, Captum's order
        for t, m in zip(theirs.interpretable_model.data, mine.interpretable_model.data):
            assert m.dtype == t.dtype == torch.float32
            torch.testing.assert_close(m, t, rtol=0, atol=0)


def test_default_n_samples_tuple_inputs_extra_args_and_list_target() -> None:
    """Two inputs, extra forward args (a tensor following the batch and a number) and a list
    target; n_samples defaults to Captum's 50."""
    a_net, b_net = net(4, 2), net(3, 2)

    def forward(u: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
        return scale * (a_net(u) + b_net(v)) + bias

    u, v, bias = torch.randn(1, 4, dtype=F64), torch.randn(1, 3, dtype=F64), torch.randn(1, 2)
    calls: list[int] = []

    def perturb(inp: tuple[Tensor, Tensor], **kw: Any) -> Tensor:
        calls.append(1)
        return torch.bernoulli(torch.full((1, 2), 0.5))

    def from_interp(s: Tensor, inp: tuple[Tensor, Tensor], **kw: Any) -> tuple[Tensor, Tensor]:
        return inp[0] * s[0, 0].to(F64), inp[1] * s[0, 1].to(F64)

    def similarity(orig: Any, pert: Any, interp: Tensor, **kw: Any) -> float:
        assert isinstance(pert, tuple) and len(pert) == 2
        return 1.0 + float(interp.sum())

    theirs, mine = pair(
        "interpretable", "SkLearnLasso", forward, perturb_func=perturb,
        from_interp_rep_transform=from_interp, similarity_func=similarity,
    )  # fmt: skip
    a, b = run_both(theirs, mine, (u, v), target=[1], additional_forward_args=(bias, 2.0))
    assert len(calls) == 100  # 50 each
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_batch_with_one_output_per_batch() -> None:
    """A batch of several examples works when the forward returns one value for the batch."""
    model = net()

    def loss(z: Tensor) -> Tensor:
        return model(z)[:, 0].sum()

    def perturb(inp: Tensor, **kw: Any) -> Tensor:
        return inp + 0.3 * torch.randn_like(inp)

    def to_interp(p: Tensor, inp: Tensor, **kw: Any) -> Tensor:
        return (p - inp).mean(0, keepdim=True)

    x = torch.randn(3, 5, dtype=F64)
    for mode_args in (
        {"perturb_func": perturb, "perturb_interpretable_space": False,
         "to_interp_rep_transform": to_interp},
        {"perturb_func": bern, "perturb_interpretable_space": True,
         "from_interp_rep_transform": keep},
    ):  # fmt: skip
        theirs, mine = pair("input", "custom", loss, **mode_args)
        a, b = run_both(theirs, mine, x, n_samples=15, scale=1.0)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_generator_perturb_func() -> None:
    """A generator function is called once and n_samples samples are taken from it; one that
    stops early warns, as Captum, and the fit uses the samples it gave."""

    def stream(inp: Tensor, **kw: Any) -> Any:
        for _ in range(kw["count"]):
            yield torch.bernoulli(torch.full((1, 5), 0.5))

    forward = net()
    x = torch.randn(1, 5, dtype=F64)
    theirs, mine = pair("interpretable", "custom", forward, perturb_func=stream)
    a, b = run_both(theirs, mine, x, target=0, n_samples=12, count=30, scale=1.0)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert mine.interpretable_model.data[0].shape == (12, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, b = run_both(theirs, mine, x, target=0, n_samples=12, count=9, scale=1.0)
    assert sum(issubclass(w.category, UserWarning) for w in caught) == 2  # one each
    assert mine.interpretable_model.data[0].shape == (9, 5)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_llmattr_surrogate_and_default_similarity() -> None:
    """An llmattr surrogate is fitted in float64 and its coefficients returned as (1, f); the
    exp-kernel similarity works in LimeBase (Captum's weighs in float32, hence the tolerance)."""
    forward = net()
    x = torch.randn(1, 5, dtype=F64)
    args = dict(
        perturb_func=bern, perturb_interpretable_space=True, from_interp_rep_transform=keep,
        to_interp_rep_transform=None,
    )  # fmt: skip
    theirs = captum_attr.LimeBase(
        forward, captum_linear.SkLearnLinearRegression(),
        similarity_func=captum_attr._core.lime.get_exp_kernel_similarity_function(), **args,
    )  # fmt: skip
    mine = ours.LimeBase(
        forward, ours.LinearRegression(), similarity_func=ours.exp_kernel_similarity(), **args
    )
    a, b = run_both(theirs, mine, x, target=2, n_samples=30)
    assert b.shape == (1, 5) and b.dtype == F64
    torch.testing.assert_close(b, a.to(F64), rtol=0, atol=1e-4)


def test_lime_is_a_limebase_and_runs_without_grad() -> None:
    model = net()
    assert isinstance(ours.Lime(model), ours.LimeBase)
    assert ours.Lime(model).perturb_interpretable_space
    assert issubclass(captum_attr.Lime, captum_attr.LimeBase)
    seen: list[bool] = []

    def forward(z: Tensor) -> Tensor:
        seen.append(torch.is_grad_enabled())
        return model(z)

    x = torch.randn(1, 5, dtype=F64, requires_grad=True)
    theirs, mine = pair("interpretable", "custom", forward)
    run_both(theirs, mine, x, target=0, n_samples=4, scale=1.0)
    assert seen == [False] * 8
    assert not mine.has_convergence_delta() and not mine.multiplies_by_inputs


def both_raise(theirs: Any, mine: Any, *args: Any, **kw: Any) -> InputError:
    """Captum fails with an AssertionError; llmattr with an InputError (an AssertionError)."""
    with pytest.raises(AssertionError):
        theirs.attribute(*args, **kw)
    with pytest.raises(InputError) as err:
        mine.attribute(*args, **kw)
    return err.value


def test_errors_are_captums() -> None:
    forward = net()
    for cls, err in ((captum_attr.LimeBase, AssertionError), (ours.LimeBase, InputError)):
        with pytest.raises(err):  # interpretable-space sampling without its transform
            cls(forward, Recorder(), sim, bern, True, None, shift)
        with pytest.raises(err):  # input-space sampling without its transform
            cls(forward, Recorder(), sim, noisy, False, keep, None)
    x = torch.randn(1, 5, dtype=F64)
    # three outputs per sample without a target
    theirs, mine = pair("interpretable", "custom", forward)
    assert "one output per perturbed input" in str(both_raise(theirs, mine, x, scale=1.0))
    # several examples, one output each: LimeBase needs one value per sample
    x3 = torch.randn(3, 5, dtype=F64)
    theirs, mine = pair("input", "custom", forward)
    both_raise(theirs, mine, x3, target=0, n_samples=3, scale=1.0)
    # a similarity with several values per sample
    theirs, mine = pair("interpretable", "custom", forward, similarity_func=lambda o, p, i: i[0])
    both_raise(theirs, mine, x, target=0, n_samples=3)
    # n_samples and perturbations_per_eval must be positive ints (Captum does not check)
    for bad in ({"n_samples": 0}, {"perturbations_per_eval": 0}):
        with pytest.raises(InputError):
            mine.attribute(x, target=0, **bad)


def test_user_inputs_reach_user_functions_unchanged() -> None:
    """The user's inputs object (not a copy) and attribute's kwargs reach every user function,
    as in Captum; the inputs are not modified."""
    forward = net()
    x = torch.randn(1, 5, dtype=F64)
    before = x.clone()
    seen: list[tuple[str, bool, tuple[str, ...]]] = []

    def perturb(inp: Tensor, **kw: Any) -> Tensor:
        seen.append(("perturb", inp is x, tuple(sorted(kw))))
        return torch.ones(1, 5)

    def from_interp(s: Tensor, inp: Tensor, **kw: Any) -> Tensor:
        seen.append(("from", inp is x, tuple(sorted(kw))))
        return inp * 0.5

    def similarity(orig: Tensor, pert: Tensor, interp: Tensor, **kw: Any) -> float:
        seen.append(("sim", orig is x, tuple(sorted(kw))))
        return 1.0

    mine = ours.LimeBase(forward, Recorder(), similarity, perturb, True, from_interp, None)
    mine.attribute(x, target=0, n_samples=2, alpha=1, beta="b")
    assert seen == [(name, True, ("alpha", "beta")) for name in ("perturb", "from", "sim")] * 2
    assert torch.equal(x, before)


def test_progress_bar_is_captums(capsys: pytest.CaptureFixture[str]) -> None:
    """``show_progress`` titles the bar "Lime Base attribution" and counts the forwards."""
    pytest.importorskip("tqdm")
    forward = net()
    x = torch.randn(1, 5, dtype=F64)
    theirs, mine = pair("interpretable", "custom", forward)
    capsys.readouterr()
    for explainer in (theirs, mine):
        explainer.attribute(x, target=0, n_samples=7, perturbations_per_eval=3, show_progress=True,
                            scale=1.0)  # fmt: skip
        err = capsys.readouterr().err
        assert "Lime Base attribution" in err and "3/3" in err
