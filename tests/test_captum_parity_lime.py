"""Lime, KernelShap and the interpretable models against Captum itself: the same seed gives the
same samples, hence (with the same interpretable model) the same attributions; shapes, dtypes,
feature-mask rules, progress bars and errors as Captum. Where llmattr differs on purpose
(KernelShap's exactly constrained fit, float64 results for a float64 model) the test shows the
property Captum's version lacks."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")
captum_linear = pytest.importorskip("captum._utils.models.linear_model")
pytest.importorskip("sklearn")
from captum._utils.models.model import Model as CaptumModel  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import llmattr.attr as ours  # noqa: E402
from llmattr._core.inputs import as_tuple  # noqa: E402
from llmattr.attr.lime import default_lime_model  # noqa: E402

F64 = torch.float64


def net(n_in: int = 5, n_out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out)).double()


def both(make_captum: Any, make_ours: Any, *args: Any, seed: int = 11, **kw: Any):
    """Run Captum's and llmattr's attribute from the same global seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about batches of several examples
        torch.manual_seed(seed)
        theirs = make_captum().attribute(*args, **kw)
        torch.manual_seed(seed)
        mine = make_ours().attribute(*args, **kw)
    return theirs, mine


def close(theirs: Any, mine: Any, atol: float) -> None:
    assert isinstance(theirs, tuple) == isinstance(mine, tuple)
    for t, m in zip(as_tuple(theirs), as_tuple(mine)):
        assert t.shape == m.shape
        torch.testing.assert_close(m, t.to(m.dtype), rtol=0, atol=atol)


# the same interpretable model on both sides, by name
MODELS = [
    ("SkLearnLasso", {"alpha": 0.01}),
    ("SkLearnLinearRegression", {}),
    ("SkLearnRidge", {"alpha": 0.5}),
    ("SGDLasso", {}),
    ("SGDLinearRegression", {}),
    ("SGDRidge", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), MODELS, ids=[m[0] for m in MODELS])
def test_lime_with_each_interpretable_model_gives_captums_numbers(name: str, kwargs: dict) -> None:
    model = net()
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    theirs, mine = both(
        lambda: captum_attr.Lime(model, interpretable_model=getattr(captum_linear, name)(**kwargs)),
        lambda: ours.Lime(model, interpretable_model=getattr(ours, name)(**kwargs)),
        x, baselines=b, target=1, n_samples=30,
    )  # fmt: skip
    assert mine.shape == theirs.shape == x.shape
    # Captum returns float32 whatever the model; llmattr the model's dtype
    assert theirs.dtype == torch.float32 and mine.dtype == F64
    close(theirs, mine, atol=2e-6)
    assert mine.abs().max() > 1e-3  # not trivially zero


def test_lime_defaults_are_captums() -> None:
    """Default model (SkLearnLasso(alpha=0.01)), similarity, sampler and n_samples=25, on two
    inputs with a feature mask, extra forward args and per-feature output."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = net(4, 2), net(3, 2)

        def forward(self, u: Tensor, v: Tensor, scale: float) -> Tensor:
            return scale * (self.a(u) + self.b(v))

    model = Two()
    u, v = torch.randn(2, 4, dtype=F64), torch.randn(2, 3, dtype=F64)
    mask = (torch.tensor([[0, 0, 1, 2]]), torch.tensor([[3, 2, 4]]))
    for shape in (True, False):
        theirs, mine = both(
            lambda: captum_attr.Lime(model), lambda: ours.Lime(model),
            (u, v), target=0, additional_forward_args=(2.0,), feature_mask=mask,
            return_input_shape=shape,
        )  # fmt: skip
        close(theirs, mine, atol=2e-6)
    assert mine.shape == (2, 5)
    assert isinstance(ours.Lime(model).interpretable_model, ours.SkLearnLasso)


def test_captums_own_models_and_a_custom_captum_model_work_in_our_lime() -> None:
    class WeightedLeastSquares(CaptumModel):
        """A user's Captum model: closed-form weighted least squares with an intercept."""

        def fit(self, train_data: DataLoader, **kwargs: Any) -> None:
            x, y, w = next(iter(train_data))
            design = torch.cat([x, torch.ones(len(x), 1)], 1).double() * w.double().sqrt()[:, None]
            sol = torch.linalg.lstsq(design, y.double() * w.double().sqrt()).solution
            self.coef = sol[:-1].reshape(1, -1)

        def representation(self) -> Tensor:
            return self.coef

        def __call__(self, x: Tensor) -> Tensor:
            return x @ self.coef.t()

    model = net()
    x = torch.randn(2, 5, dtype=F64)
    for surrogate in (WeightedLeastSquares, lambda: captum_linear.SkLearnLasso(alpha=0.01)):
        theirs, mine = both(
            lambda s=surrogate: captum_attr.Lime(model, interpretable_model=s()),
            lambda s=surrogate: ours.Lime(model, interpretable_model=s()),
            x, target=2, n_samples=40, return_input_shape=False,
        )  # fmt: skip
        close(theirs, mine, atol=2e-6)


def test_lime_aggregate_output_and_feature_mask_rules() -> None:
    """One output for the batch: one set of samples, batch 1 in the result. Ids starting above 0
    are shifted (with a warning) and may skip values, as Captum."""
    model = net()

    def total(z: Tensor) -> Tensor:
        return model(z)[:, 0].sum()

    x = torch.randn(3, 5, dtype=F64)
    mask = torch.tensor([[2, 2, 4, 7, 4]])  # shifted to 0, 0, 2, 5, 2: six features
    for shape in (True, False):
        with pytest.warns(UserWarning, match="shift"):
            ours.Lime(total).attribute(x, feature_mask=mask, n_samples=5)
        theirs, mine = both(
            lambda: captum_attr.Lime(total), lambda: ours.Lime(total),
            x, feature_mask=mask, n_samples=30, return_input_shape=shape,
        )  # fmt: skip
        close(theirs, mine, atol=2e-6)
    assert mine.shape == (1, 6)


def test_kernel_shap_draws_captums_coalitions_and_fits_them_exactly() -> None:
    """Same seed, same coalitions: Captum's float32 regression with 10⁶-weighted full and empty
    coalitions and llmattr's constrained solve agree to float32 precision, but only llmattr's
    attributions sum exactly to f(x) - f(baselines)."""
    model = net()
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(1, 5, dtype=F64)
    theirs, mine = both(
        lambda: captum_attr.KernelShap(model), lambda: ours.KernelShap(model),
        x, baselines=b, target=0, n_samples=200, perturbations_per_eval=50,
    )  # fmt: skip
    assert theirs.dtype == torch.float32 and mine.dtype == F64
    close(theirs, mine, atol=2e-5)
    with torch.no_grad():
        gap = model(x)[:, 0] - model(b)[:, 0]
    assert (mine.sum(1) - gap).abs().max() < 1e-12
    assert (theirs.double().sum(1) - gap).abs().max() > 1e-9  # Captum's is only approximate


def test_kernel_shap_with_captums_surrogate_is_captums_kernel_shap() -> None:
    model = net()
    x = torch.randn(2, 5, dtype=F64)
    mask = torch.tensor([[0, 1, 1, 2, 3]])
    for shape in (True, False):
        theirs, mine = both(
            lambda: captum_attr.KernelShap(model),
            lambda: ours.KernelShap(model, ours.SkLearnLinearRegression()),
            x, target=1, feature_mask=mask, n_samples=40, return_input_shape=shape,
        )  # fmt: skip
        close(theirs, mine, atol=1e-6)


def test_progress_bar_title_and_names(capsys: pytest.CaptureFixture[str]) -> None:
    model = net()
    x = torch.randn(1, 5, dtype=F64)
    for cls in ("Lime", "KernelShap"):
        assert getattr(ours, cls).get_name() == getattr(captum_attr, cls).get_name()
        getattr(ours, cls)(model).attribute(x, target=0, n_samples=4, show_progress=True)
        err = capsys.readouterr().err
        assert f"{getattr(captum_attr, cls).get_name()} attribution" in err


def test_aggregate_output_refuses_stacked_perturbations_like_captum() -> None:
    def total(z: Tensor) -> Tensor:
        return z.sum()

    x = torch.randn(2, 3, dtype=F64)
    for cls in ("Lime", "KernelShap"):
        with pytest.raises(AssertionError):
            getattr(captum_attr, cls)(total).attribute(x, perturbations_per_eval=2)
        with pytest.raises(AssertionError, match="perturbations_per_eval"):
            getattr(ours, cls)(total).attribute(x, perturbations_per_eval=2)


# --- the interpretable models on their own ------------------------------------------------------


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((40, 4), 0.5), generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.3 + 0.05 * torch.randn(40, generator=g)
    return DataLoader(TensorDataset(x, y, torch.rand(40, generator=g) + 0.5), batch_size=40)


@pytest.mark.parametrize(("name", "kwargs"), MODELS, ids=[m[0] for m in MODELS])
def test_linear_models_fit_as_captums(name: str, kwargs: dict) -> None:
    theirs, mine = getattr(captum_linear, name)(**kwargs), getattr(ours, name)(**kwargs)
    stats_theirs, stats_mine = theirs.fit(loader()), mine.fit(loader())
    assert set(stats_theirs) == set(stats_mine)
    torch.testing.assert_close(mine.representation(), theirs.representation(), rtol=0, atol=1e-6)
    torch.testing.assert_close(mine.bias(), theirs.bias().reshape(-1), rtol=0, atol=1e-6)
    assert mine.representation().shape == (1, 4)
    x = torch.rand(3, 4)
    torch.testing.assert_close(mine(x), theirs(x), rtol=0, atol=1e-5)


def test_sklearn_models_need_sklearn_and_the_rest_does_not(monkeypatch: Any) -> None:
    for name in [m for m in list(sys.modules) if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="scikit-learn"):
        ours.SkLearnLasso(alpha=0.01)
    assert isinstance(default_lime_model(), ours.Lasso)  # Lime falls back to the torch Lasso
    sgd = ours.SGDLinearRegression()
    sgd.fit(loader())
    assert sgd.representation().shape == (1, 4)


def test_custom_similarity_and_generator_perturb_func_as_captum() -> None:
    """A user's similarity is called per example with Captum's arguments; a generator
    perturb_func is started once per example and may stop early (a warning, as Captum)."""
    model = net()
    x = torch.randn(2, 5, dtype=F64)

    def similarity(original: Tensor, perturbed: Tensor, sample: Tensor, **kw: Any) -> float:
        assert original.shape == perturbed.shape == (1, 5)
        assert kw["num_interp_features"] == 5
        return 1.0 / (1.0 + float((original - perturbed).abs().sum()))

    def perturb(original: Tensor, **kw: Any):
        for _ in range(12):  # fewer than n_samples
            yield torch.bernoulli(torch.full((1, kw["num_interp_features"]), 0.7)).long()

    def make(module: Any, linear: Any) -> Any:
        return lambda: module.Lime(
            model, interpretable_model=linear.SkLearnLinearRegression(),
            similarity_func=similarity, perturb_func=perturb,
        )  # fmt: skip

    with pytest.warns(UserWarning, match="stopped after 12"):
        ours.Lime(model, perturb_func=perturb).attribute(x, target=0, n_samples=20)
    theirs, mine = both(make(captum_attr, captum_linear), make(ours, ours), x, target=0,
                        n_samples=20)  # fmt: skip
    close(theirs, mine, atol=2e-6)


def test_futures_and_input_scaling_as_captum() -> None:
    for cls in ("Lime", "KernelShap"):
        theirs, mine = getattr(captum_attr, cls)(net()), getattr(ours, cls)(net())
        assert mine.multiplies_by_inputs == theirs.multiplies_by_inputs is False
        with pytest.raises(NotImplementedError):
            theirs.attribute_future()
        with pytest.raises(NotImplementedError):
            mine.attribute_future()


@pytest.mark.parametrize("cls", ["Lime", "KernelShap"])
def test_per_example_masks_baselines_and_targets_as_captum(cls: str) -> None:
    model = net()
    x, b = torch.randn(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 2, 2, 2], [2, 1, 0, 1, 0]])
    for shape in (True, False):
        theirs, mine = both(
            lambda: getattr(captum_attr, cls)(model), lambda: getattr(ours, cls)(model),
            x, baselines=b, target=torch.tensor([0, 1, 2]), feature_mask=mask, n_samples=30,
            return_input_shape=shape,
        )  # fmt: skip
        close(theirs, mine, atol=2e-6)
    # a float32 model: float32 attributions on both sides, batch of one, tuple input
    model32, x32 = model.float(), (x[:1].float(),)
    theirs, mine = both(
        lambda: getattr(captum_attr, cls)(model32), lambda: getattr(ours, cls)(model32),
        x32, target=0,
    )  # fmt: skip
    assert isinstance(mine, tuple) and mine[0].dtype == theirs[0].dtype == torch.float32
    close(theirs, mine, atol=2e-6)


# --- class hierarchy, empty inputs, the fast path ---------------------------------------------


def test_kernel_shap_is_a_lime_as_in_captum() -> None:
    """Captum's KernelShap subclasses Lime (its tests re-seed per example otherwise)."""
    from llmattr.attr import kernel_shap, lime

    assert issubclass(captum_attr.KernelShap, captum_attr.Lime)
    assert issubclass(ours.KernelShap, ours.Lime) and issubclass(ours.Lime, ours.LimeBase)
    ks = ours.KernelShap(net())
    assert isinstance(ks, ours.Lime) and isinstance(ks, ours.LimeBase)
    assert ks.interpretable_model is None and ks.perturb_func is None
    # re-exported from lime without an import cycle
    assert lime.KernelShap is kernel_shap.KernelShap is ours.KernelShap
    assert lime.shapley_kernel_samples is kernel_shap.shapley_kernel_samples
    with pytest.raises(AttributeError):
        lime.NoSuchThing  # noqa: B018


def test_lime_with_an_empty_input_as_captum() -> None:
    """A ``(1, 0)`` input (and its empty mask) takes part as in Captum: no features, no
    attributions, the other input's as without it."""
    lin = nn.Linear(7, 1).double()

    def f(a: Tensor, b: Tensor) -> Tensor:
        return lin(a) + b.sum(1, keepdim=True)

    a = torch.tensor([[23.0, 0.0, 0.0, 23.0, 0.0, 0.0, 23.0]], dtype=F64)
    empty = torch.zeros(1, 0, dtype=F64)
    masks = (torch.arange(7).reshape(1, 7), torch.zeros(1, 0, dtype=torch.long))
    for kw in ({}, {"feature_mask": masks}):
        for shape in (True, False):
            theirs, mine = both(
                lambda: captum_attr.Lime(f), lambda: ours.Lime(f),
                (a, empty), n_samples=60, return_input_shape=shape, **kw,
            )  # fmt: skip
            close(theirs, mine, atol=2e-5)
    assert mine.shape == (1, 7)
    ks_theirs, ks_mine = both(
        lambda: captum_attr.KernelShap(f), lambda: ours.KernelShap(f), (a, empty), n_samples=40
    )
    assert ks_mine[1].shape == ks_theirs[1].shape == (1, 0)
    # llmattr's exact fit: complete
    total = ks_mine[0].sum()
    torch.testing.assert_close(total, (f(a, empty) - f(torch.zeros_like(a), empty)).sum())


def _stream_after(run: Any, seed: int = 5) -> tuple[Any, Tensor]:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run()
    return out, torch.rand(4)  # the global stream where the call left it


@pytest.mark.parametrize("which", ["lime", "lime_lr", "ks", "ks_sklearn"])
def test_batched_fast_path_keeps_captums_samples_and_stream(which: str) -> None:
    """All examples' samples evaluated together: the same attributions as Captum, the global
    random stream left where Captum leaves it, and the same numbers as example by example."""
    model = net(6, 2)
    x, b = torch.randn(4, 6, dtype=F64), torch.randn(1, 6, dtype=F64)
    mask = torch.tensor([[0, 0, 1, 2, 3, 3]])
    kw = dict(baselines=b, target=1, feature_mask=mask, n_samples=40, perturbations_per_eval=3)
    if which.startswith("lime"):
        extra = (
            {"interpretable_model": ours.SkLearnLinearRegression()} if which == "lime_lr" else {}
        )
        theirs_extra = (
            {"interpretable_model": captum_linear.SkLearnLinearRegression()} if extra else {}
        )
        mk_c = lambda: captum_attr.Lime(model, **theirs_extra)  # noqa: E731
        mk_m = lambda: ours.Lime(model, **extra)  # noqa: E731
    else:
        extra = {"interpretable_model": ours.SkLearnLinearRegression()} if which != "ks" else {}
        mk_c = lambda: captum_attr.KernelShap(model)  # noqa: E731
        mk_m = lambda: ours.KernelShap(model, **extra)  # noqa: E731
    theirs, after_c = _stream_after(lambda: mk_c().attribute(x, **kw))
    fast = mk_m()
    calls: list[int] = []
    original = fast.forward_func
    fast.forward_func = lambda z: (calls.append(z.shape[0]), original(z))[1]
    mine, after_m = _stream_after(lambda: fast.attribute(x, **kw))
    # the batch, then 3 samples of all 4 examples per forward (the default KernelShap fit
    # needs no forward of the full coalition: 39 samples)
    n = 39 if which == "ks" else 40
    assert calls == [4] + [12] * (n // 3) + ([4 * (n % 3)] if n % 3 else [])
    assert torch.equal(after_c, after_m)
    if which != "ks":  # (llmattr's default KernelShap fit is exact, Captum's is not)
        close(theirs, mine, atol=2e-6)
    slow = mk_m()
    slow._all_at_once = lambda run: False  # type: ignore[method-assign]
    if which.startswith("ks"):  # the example-by-example path of KernelShap
        slow._per_example = lambda run: False  # type: ignore[method-assign]
    one_by_one, after_s = _stream_after(lambda: slow.attribute(x, **kw))
    assert torch.equal(after_s, after_m)
    torch.testing.assert_close(one_by_one, mine, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [2, 3, 7, 16, 17, 40])
def test_kernel_coalitions_are_the_multinomial_draws_bit_for_bit(n: int) -> None:
    """llmattr draws the coalition sizes as argmax(p / Exp(1)) instead of calling
    ``torch.multinomial(p, 1)`` once per draw: the same sizes, normals and random stream."""
    from llmattr.attr.kernel_shap import shapley_kernel_samples

    sizes = torch.arange(n, dtype=torch.float32)
    probs = torch.tensor(n - 1) / (sizes * (n - sizes))
    probs[0] = 0.0
    probs = (probs / probs.sum()).reshape(1, -1)
    for seed in range(5):
        torch.manual_seed(seed)
        expected = []
        for _ in range(60):  # Captum's loop
            s = int(torch.multinomial(probs, 1, True).item())
            rand = torch.randn(1, n)
            expected.append(rand > torch.kthvalue(rand, n - s).values)
        after_reference = torch.rand(3)
        torch.manual_seed(seed)
        drawn = shapley_kernel_samples(n, 60, None)
        assert torch.equal(drawn, torch.cat(expected))
        assert torch.equal(torch.rand(3), after_reference)


def test_kernel_coalitions_with_a_generator_are_vectorized_and_reproducible() -> None:
    from llmattr.attr.kernel_shap import shapley_kernel_samples

    state = torch.get_rng_state()
    a = shapley_kernel_samples(9, 500, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    assert torch.equal(a, shapley_kernel_samples(9, 500, torch.Generator().manual_seed(3)))
    size = a.sum(1)
    assert bool(((size >= 1) & (size <= 8)).all())
    # sizes follow the Shapley kernel: extreme sizes are the most frequent
    counts = torch.bincount(size, minlength=9).double()
    assert counts[1] > counts[4] and counts[8] > counts[4]
