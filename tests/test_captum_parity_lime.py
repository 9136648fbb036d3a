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
