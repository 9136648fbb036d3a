"""Layer methods against Captum 0.9 itself: same models, inputs and targets (float64, seeded).

Compared: values, shapes, dtypes, return types (tensor, tuple, list), convergence deltas (sign and
order), ``multiplies_by_inputs``, signatures and error types. Where llmattr deliberately differs
(its numbers are right where Captum's are not) the test lives in
``test_captum_parity_layer_math.py``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

captum_attr = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402
from llmattr._core.errors import InputError  # noqa: E402

F64 = torch.float64

pytestmark = pytest.mark.filterwarnings("ignore")


class MLP(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(6, 5)
        self.act = nn.Tanh()
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.act(self.fc2(self.relu(self.fc1(x)))))


class TwoBranch(nn.Module):
    """Two parallel layers (neither feeds the other) and a tuple-output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(4, 3)
        self.split = Split()
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.split(torch.tanh(torch.cat([self.left(x), self.right(x)], 1)))
        return self.head(torch.cat([a * b.sigmoid(), b], 1))


class Split(nn.Module):
    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h[:, :3] * 1.0, h[:, 3:] * 1.0


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(3, 4, 3)
        self.r2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.r2(self.c2(self.r1(self.c1(x))))).flatten(1))


class Bag(nn.Module):
    """Token ids → embedding → mean → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.emb(ids)).mean(1))


def seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make().to(F64).eval()


@pytest.fixture
def mlp() -> nn.Module:
    return seeded(MLP)


@pytest.fixture
def xb() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, generator=g, dtype=F64), 0.1 * torch.randn(
        3, 4, generator=g, dtype=F64
    )


def assert_same(ours: Any, theirs: Any, atol: float = 1e-8) -> None:
    """Same structure (tensor / tuple / list), shapes, dtypes and values (Captum casts its
    quadrature weights to float32, hence the relative tolerance)."""
    assert type(ours) is type(theirs), (type(ours), type(theirs))
    if isinstance(theirs, Tensor):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=atol)
        return
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        assert_same(o, t, atol)


def both(name: str, make: Callable[[Any], Any]) -> tuple[Any, Any]:
    """``make(cls)`` with llmattr's and Captum's class of that name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make(getattr(llmattr, name)), make(getattr(captum_attr, name))


LAYER_CLASSES = [
    "LayerActivation", "LayerGradientXActivation", "LayerIntegratedGradients",
    "LayerConductance", "InternalInfluence", "LayerGradCam", "GuidedGradCam", "LayerDeepLift",
    "LayerDeepLiftShap", "LayerGradientShap", "LayerFeatureAblation", "LayerFeaturePermutation",
    "IntegratedGradients",
]  # fmt: skip


# --- signatures and flags -------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_CLASSES)
def test_signatures_start_with_captums(name: str) -> None:
    """Captum's parameters, in Captum's order with Captum's defaults (llmattr may add more at
    the end: ``layers_jointly``, ``internal_batch_size``, ``generator``)."""
    for method in ("__init__", "attribute"):
        ours = inspect.signature(getattr(getattr(llmattr, name), method)).parameters
        theirs = inspect.signature(getattr(getattr(captum_attr, name), method)).parameters
        got = [(p.name, p.default) for p in ours.values()][: len(theirs)]
        assert got == [(p.name, p.default) for p in theirs.values()], (name, method)


@pytest.mark.parametrize("name", LAYER_CLASSES)
@pytest.mark.parametrize("setting", [None, True, False])
def test_multiplies_by_inputs_matches_captum(mlp: nn.Module, name: str, setting: Any) -> None:
    args = (mlp,) if name == "IntegratedGradients" else (mlp, mlp.fc2)
    kwargs = {} if setting is None else {"multiply_by_inputs": setting}

    def flag(cls: Any) -> Any:
        try:
            return cls(*args, **kwargs).multiplies_by_inputs
        except TypeError:  # the class has no multiply_by_inputs argument
            return TypeError

    ours, theirs = both(name, flag)
    assert ours == theirs


# --- LayerActivation, LayerGradientXActivation ----------------------------------------------


@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("many", [False, True])
def test_layer_activation(mlp: nn.Module, xb: Any, to_input: bool, many: bool) -> None:
    layer = [mlp.fc1, mlp.act] if many else mlp.fc2
    ours, theirs = both(
        "LayerActivation",
        lambda cls: cls(mlp, layer).attribute(xb[0], attribute_to_layer_input=to_input),
    )
    assert_same(ours, theirs)


@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("multiply", [True, False])
def test_layer_gradient_x_activation(
    mlp: nn.Module, xb: Any, to_input: bool, many: bool, multiply: bool
) -> None:
    layer = [mlp.fc1, mlp.act] if many else mlp.fc2
    ours, theirs = both(
        "LayerGradientXActivation",
        lambda cls: cls(mlp, layer, multiply_by_inputs=multiply).attribute(
            xb[0], target=[0, 2, 1], attribute_to_layer_input=to_input,
            grad_kwargs={"materialize_grads": True},
        ),
    )  # fmt: skip
    assert_same(ours, theirs)


# --- LayerIntegratedGradients ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_middle"])
@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("multiply", [True, False])
def test_lig_one_layer(
    mlp: nn.Module, xb: Any, method: str, to_input: bool, multiply: bool
) -> None:
    x, b = xb

    def run(cls: Any) -> Any:
        lig = cls(mlp, mlp.fc2, multiply_by_inputs=multiply)
        return lig.attribute(
            x, b, target=1, n_steps=9, method=method, attribute_to_layer_input=to_input,
            return_convergence_delta=multiply,
        )  # fmt: skip

    assert_same(*both("LayerIntegratedGradients", run))


def test_lig_list_of_sequential_layers_is_one_joint_path(mlp: nn.Module, xb: Any) -> None:
    """Captum interpolates every listed layer together: fc2's substituted output cuts fc1 off
    (zero attributions; Captum needs materialize_grads not to raise), and one delta covers
    the sum over both layers."""
    x, b = xb
    kw = {"target": 2, "n_steps": 12, "return_convergence_delta": True}
    theirs = captum_attr.LayerIntegratedGradients(mlp, [mlp.fc1, mlp.fc2]).attribute(
        x, b, grad_kwargs={"materialize_grads": True}, **kw
    )
    ours = llmattr.LayerIntegratedGradients(mlp, [mlp.fc1, mlp.fc2]).attribute(x, b, **kw)
    assert_same(ours, theirs)
    (a1, a2), delta = ours
    assert torch.equal(a1, torch.zeros_like(a1))
    with torch.no_grad():
        gap = mlp(x)[:, 2] - mlp(b)[:, 2]
    torch.testing.assert_close(delta, a1.sum(1) + a2.sum(1) - gap, rtol=0, atol=1e-12)


def test_lig_list_of_parallel_layers_and_tuple_output() -> None:
    model = seeded(TwoBranch)
    g = torch.Generator().manual_seed(2)
    x, b = torch.randn(4, 4, generator=g, dtype=F64), torch.zeros(4, 4, dtype=F64)
    for layer in ([model.left, model.right], model.split, [model.left, model.split]):
        ours, theirs = both(
            "LayerIntegratedGradients",
            lambda cls, layer=layer: cls(model, layer).attribute(
                x, b, target=1, n_steps=10, return_convergence_delta=True,
                grad_kwargs={"materialize_grads": True},
            ),
        )  # fmt: skip
        assert_same(ours, theirs)
    # a tuple-output layer gives a tuple of attributions
    assert isinstance(ours[0][1], tuple) and len(ours[0][1]) == 2


def test_lig_layers_jointly_false_equals_captum_per_layer(mlp: nn.Module, xb: Any) -> None:
    x, b = xb
    layers = [mlp.fc1, mlp.act, mlp.fc3]
    ours, deltas = llmattr.LayerIntegratedGradients(mlp, layers).attribute(
        x, b, target=0, n_steps=10, return_convergence_delta=True, layers_jointly=False
    )
    assert isinstance(ours, list) and isinstance(deltas, list) and len(deltas) == 3
    for layer, a, d in zip(layers, ours, deltas):
        want, want_delta = captum_attr.LayerIntegratedGradients(mlp, layer).attribute(
            x, b, target=0, n_steps=10, return_convergence_delta=True
        )
        assert_same((a, d), (want, want_delta))


def test_lig_on_embedding_with_token_ids() -> None:
    model = seeded(Bag)
    ids = torch.tensor([[1, 4, 7, 2], [3, 3, 9, 10]])
    base = torch.zeros_like(ids)
    ours, theirs = both(
        "LayerIntegratedGradients",
        lambda cls: cls(model, model.emb).attribute(
            ids, base, target=[0, 1], n_steps=16, internal_batch_size=10,
            return_convergence_delta=True,
        ),
    )  # fmt: skip
    assert_same(ours, theirs)


def test_tuple_output_layer_and_extra_forward_args() -> None:
    """A layer returning a tuple gives a tuple (LayerActivation, LayerGradientXActivation,
    LayerIntegratedGradients), with tuple inputs and additional_forward_args passed through."""
    model = seeded(TwoBranch)

    def forward(a: Tensor, c: Tensor, scale: float) -> Tensor:
        return model(a * c) * scale

    g = torch.Generator().manual_seed(9)
    x = (torch.randn(3, 4, generator=g, dtype=F64), torch.rand(3, 4, generator=g, dtype=F64))
    b = (torch.zeros(3, 4, dtype=F64), 0.5)
    runs = {
        "LayerActivation": lambda cls: cls(forward, model.split).attribute(x, (2.0,)),
        "LayerGradientXActivation": lambda cls: cls(forward, model.split).attribute(
            x, target=0, additional_forward_args=(2.0,)
        ),
        "LayerIntegratedGradients": lambda cls: cls(forward, model.split).attribute(
            x, b, target=0, additional_forward_args=(2.0,), n_steps=6,
            return_convergence_delta=True,
        ),
    }  # fmt: skip
    for name, run in runs.items():
        ours, theirs = both(name, run)
        assert_same(ours, theirs)
        attrs = ours[0] if name == "LayerIntegratedGradients" else ours
        assert isinstance(attrs, tuple) and len(attrs) == 2


# --- path methods at a layer ----------------------------------------------------------------


@pytest.mark.parametrize("to_input", [False, True])
def test_internal_influence(mlp: nn.Module, xb: Any, to_input: bool) -> None:
    x, b = xb
    assert_same(
        *both(
            "InternalInfluence",
            lambda cls: cls(mlp, mlp.fc2).attribute(
                x,
                b,
                target=1,
                n_steps=11,
                attribute_to_layer_input=to_input,
                internal_batch_size=7,
                grad_kwargs={"materialize_grads": True},
            ),
        )
    )


def test_layer_conductance_shapes_and_return_types(mlp: nn.Module, xb: Any) -> None:
    """Same shapes, dtypes and return forms as Captum (values: see the _math module)."""
    x, b = xb
    ours, theirs = both(
        "LayerConductance",
        lambda cls: cls(mlp, mlp.fc2).attribute(
            x, b, target=1, n_steps=9, return_convergence_delta=True, grad_kwargs={}
        ),
    )
    for o, t in zip(ours, theirs):
        assert type(o) is type(t) and o.shape == t.shape and o.dtype == t.dtype


@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize("stdevs", [0.0, 0.2])
def test_layer_gradient_shap_same_seeds_same_draws(
    mlp: nn.Module, xb: Any, multiply: bool, stdevs: float
) -> None:
    """Drawn as Captum draws (baseline rows and α from numpy's global generator, noise from
    torch's): seeding both gives Captum's numbers, deltas (``batch * n_samples``,
    example-major) included."""
    x = xb[0]
    dist = torch.randn(4, 4, generator=torch.Generator().manual_seed(8), dtype=F64)

    def run(cls: Any) -> Any:
        np.random.seed(3)
        torch.manual_seed(3)
        return cls(mlp, mlp.fc2, multiply_by_inputs=multiply).attribute(
            x, dist, n_samples=4, stdevs=stdevs, target=[1, 0, 2], return_convergence_delta=True
        )

    ours, theirs = both("LayerGradientShap", run)
    assert ours[1].shape == theirs[1].shape == (12,)
    if multiply:
        assert_same(ours, theirs)
    else:
        # llmattr's delta stays the completeness gap of the global attributions; Captum's is
        # sum(local attributions) - gap (see the _math module)
        assert_same(ours[0], theirs[0])


# --- DeepLift -------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_name", ["fc1", "fc2", "fc3"])
@pytest.mark.parametrize("to_input", [False, True])
@pytest.mark.parametrize("multiply", [True, False])
def test_layer_deeplift(xb: Any, layer_name: str, to_input: bool, multiply: bool) -> None:
    """Linear layers (where Captum's multipliers at the layer's input are right), on a model
    with an in-place ReLU; with multiply_by_inputs=False the delta is Captum's
    ``sum(returned attributions) - (f(x) - f(b))``."""
    x, b = xb
    for inplace in (False, True):
        model = seeded(lambda inplace=inplace: MLP(inplace))
        layer = getattr(model, layer_name)
        ours, theirs = both(
            "LayerDeepLift",
            lambda cls, model=model, layer=layer: cls(
                model, layer, multiply_by_inputs=multiply
            ).attribute(
                x, b, target=1, return_convergence_delta=True,
                attribute_to_layer_input=to_input, grad_kwargs={"materialize_grads": True},
            ),
        )  # fmt: skip
        assert_same(ours, theirs)
        with torch.no_grad():
            gap = model(x)[:, 1] - model(b)[:, 1]
        torch.testing.assert_close(ours[1], ours[0].sum(1) - gap, rtol=0, atol=1e-12)


def test_layer_deeplift_custom_attribution_func(mlp: nn.Module, xb: Any) -> None:
    x, b = xb

    def custom(mult: tuple[Tensor, ...], xs: tuple[Tensor, ...], bs: tuple[Tensor, ...]) -> Any:
        return tuple(m * (a - c) ** 2 for m, a, c in zip(mult, xs, bs))

    assert_same(
        *both(
            "LayerDeepLift",
            lambda cls: cls(mlp, mlp.fc2).attribute(
                x, b, target=0, custom_attribution_func=custom, return_convergence_delta=True
            ),
        )
    )


@pytest.mark.parametrize("multiply", [True, False])
def test_layer_deeplift_shap(mlp: nn.Module, xb: Any, multiply: bool) -> None:
    x = xb[0]
    dist = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    ours, theirs = both(
        "LayerDeepLiftShap",
        lambda cls: cls(mlp, mlp.fc2, multiply_by_inputs=multiply).attribute(
            x, dist, target=[0, 1, 2], return_convergence_delta=True
        ),
    )
    assert_same(ours, theirs)
    assert ours[1].shape == (15,)


# --- Grad-CAM -------------------------------------------------------------------------------


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("summation", [True, False])
@pytest.mark.parametrize("to_input", [False, True])
def test_layer_grad_cam(relu: bool, summation: bool, to_input: bool) -> None:
    model = seeded(CNN)
    x = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert_same(
        *both(
            "LayerGradCam",
            lambda cls: cls(model, model.c2).attribute(
                x,
                target=1,
                relu_attributions=relu,
                attr_dim_summation=summation,
                attribute_to_layer_input=to_input,
                grad_kwargs={"materialize_grads": True},
            ),
        )
    )


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_grad_cam(mode: str) -> None:
    model = seeded(CNN)
    x = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(6), dtype=F64)
    assert_same(
        *both(
            "GuidedGradCam",
            lambda cls: cls(model, model.c2).attribute(x, target=2, interpolate_mode=mode),
        )
    )


class ImageAndVector(nn.Module):
    """A CNN whose forward also takes a flat vector: Grad-CAM cannot be resized to it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2 * 4 * 4 + 3, 2)

    def forward(self, image: Tensor, vector: Tensor) -> Tensor:
        return self.head(torch.cat([self.conv(image).relu().flatten(1), vector], dim=1))


@pytest.mark.parametrize("mode", ["nearest", "no-such-mode"])
def test_guided_grad_cam_warns_and_returns_empty_where_it_cannot_resize(mode: str) -> None:
    """As Captum: an input the map cannot be resized to (here a flat vector, or every input with
    an unknown interpolate_mode) gets an empty tensor and a warning; the others are explained."""
    model = seeded(ImageAndVector)
    gen = torch.Generator().manual_seed(3)
    x = (
        torch.randn(2, 1, 6, 6, generator=gen, dtype=F64),
        torch.randn(2, 3, generator=gen, dtype=F64),
    )
    results = []
    for lib in (llmattr, captum_attr):
        with pytest.warns(UserWarning):
            results.append(
                lib.GuidedGradCam(model, model.conv).attribute(x, target=1, interpolate_mode=mode)
            )
    ours, theirs = results
    assert ours[1].numel() == 0 and theirs[1].numel() == 0
    assert_same(ours, theirs)


# --- perturbation at a layer ----------------------------------------------------------------


@pytest.mark.parametrize("to_input", [False, True])
def test_layer_feature_ablation(mlp: nn.Module, xb: Any, to_input: bool) -> None:
    x = xb[0]
    width = 6 if to_input else 5
    mask = torch.tensor([[0, 0, 1, 2, 2, 1][:width]])
    for kwargs in (
        {},
        {"layer_baselines": 0.5, "layer_mask": mask, "perturbations_per_eval": 2},
    ):
        assert_same(
            *both(
                "LayerFeatureAblation",
                lambda cls, kw=kwargs: cls(mlp, mlp.fc2).attribute(
                    x, target=2, attribute_to_layer_input=to_input, **kw
                ),
            )
        )


def test_layer_feature_permutation_same_seed_same_values() -> None:
    """Captum selects the target twice (inside and outside its layer forward), so only
    ``target=None`` on a one-output model runs there; with the same seed the permutations and
    values agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1)).to(F64)
    x = torch.randn(6, 4, dtype=F64)

    def run(cls: Any, mask: Any = None) -> Any:
        torch.manual_seed(7)
        return cls(model, model[1]).attribute(x, layer_mask=mask)

    assert_same(*both("LayerFeaturePermutation", run))
    mask = torch.tensor([[0, 1, 1, 0, 2]])
    assert_same(*both("LayerFeaturePermutation", lambda cls: run(cls, mask)))


# --- IntegratedGradients --------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]
)
def test_integrated_gradients_every_method(mlp: nn.Module, xb: Any, method: str) -> None:
    x, b = xb
    assert_same(
        *both(
            "IntegratedGradients",
            lambda cls: cls(mlp).attribute(
                x,
                b,
                target=[2, 0, 1],
                n_steps=7,
                method=method,
                return_convergence_delta=True,
                internal_batch_size=5,
            ),
        )
    )


def test_integrated_gradients_tuple_inputs(mlp: nn.Module, xb: Any) -> None:
    def two(a: Tensor, c: Tensor) -> Tensor:
        return mlp(a * c)

    x, b = xb
    ours, theirs = both(
        "IntegratedGradients",
        lambda cls: cls(two).attribute((x, x + 1), (b, 0.5), target=1, n_steps=8),
    )
    assert isinstance(ours, tuple)
    assert_same(ours, theirs)


# --- grad_kwargs and errors -----------------------------------------------------------------


def test_grad_kwargs_reach_autograd(mlp: nn.Module, xb: Any) -> None:
    """``allow_unused=False`` makes autograd refuse the layer cut off by the joint path, in
    both libraries; llmattr's default gives it zero attributions (Captum raises)."""
    x, b = xb
    for cls in (llmattr.LayerIntegratedGradients, captum_attr.LayerIntegratedGradients):
        with pytest.raises(RuntimeError, match="not have been used"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(mlp, [mlp.fc1, mlp.fc2]).attribute(
                x, b, target=0, n_steps=4, grad_kwargs={"allow_unused": False}
            )


@pytest.mark.parametrize(
    "kwargs",
    [{"n_steps": 0}, {"method": "simpson"}, {"method": "riemann_trapezoid", "n_steps": 1}],
)
@pytest.mark.parametrize(
    "name", ["LayerIntegratedGradients", "LayerConductance", "InternalInfluence"]
)
def test_bad_path_arguments_raise_assertion_errors(
    mlp: nn.Module, xb: Any, name: str, kwargs: dict[str, Any]
) -> None:
    """Captum asserts (LayerIntegratedGradients; its LayerConductance runs n_steps + 1 points
    and accepts n_steps=0); llmattr raises InputError, an AssertionError and a ValueError,
    before any forward pass."""
    x, b = xb
    calls: list[int] = []
    handle = mlp.fc1.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InputError):
            getattr(llmattr, name)(mlp, mlp.fc2).attribute(x, b, target=0, **kwargs)
        assert not calls
    finally:
        handle.remove()
    if name == "LayerIntegratedGradients":
        with pytest.raises(AssertionError):
            captum_attr.LayerIntegratedGradients(mlp, mlp.fc2).attribute(x, b, target=0, **kwargs)


@pytest.mark.parametrize(
    "name",
    ["LayerIntegratedGradients", "LayerGradientXActivation", "LayerConductance",
     "LayerFeatureAblation", "LayerGradCam"],
)  # fmt: skip
def test_target_out_of_range_is_an_index_error(mlp: nn.Module, xb: Any, name: str) -> None:
    x, b = xb
    for cls in (getattr(llmattr, name), getattr(captum_attr, name)):
        method = cls(mlp, mlp.fc2).attribute
        args = (x, b) if "baselines" in inspect.signature(method).parameters else (x,)
        with pytest.raises(IndexError):
            method(*args, target=7)


@pytest.mark.parametrize("layer", [None, lambda t: t])
@pytest.mark.parametrize("name", ["LayerIntegratedGradients", "LayerGradientXActivation"])
def test_non_module_layer_is_a_type_error(mlp: nn.Module, xb: Any, name: str, layer: Any) -> None:
    for cls in (getattr(llmattr, name), getattr(captum_attr, name)):
        with pytest.raises(TypeError):
            cls(mlp, layer).attribute(xb[0], target=0)


@pytest.mark.parametrize(
    "name",
    ["LayerConductance", "InternalInfluence", "LayerGradCam", "LayerDeepLift",
     "LayerGradientShap", "LayerFeatureAblation"],
)  # fmt: skip
def test_list_of_layers_where_captum_takes_one(mlp: nn.Module, name: str) -> None:
    """Captum fails deep inside (TypeError, AttributeError, IndexError or AssertionError by
    class); llmattr refuses the list at construction with a TypeError naming the class."""
    with pytest.raises(TypeError, match=name):
        getattr(llmattr, name)(mlp, [mlp.fc1, mlp.fc2])


# --- LayerConductance: tuple activations, several inputs --------------------------------------


class TupleLayer(nn.Module):
    """A layer whose output is a tuple ``(tanh(x), sigmoid(x))``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return torch.tanh(x), torch.sigmoid(x)


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.pair = TupleLayer()
        self.fc2 = nn.Linear(5, 3)
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.pair(self.fc1(x))
        return self.fc2(a) + self.fc3(b)


class ThreeInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor, y: Tensor, z: Tensor, scale: float) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x * y + z))) * scale


@pytest.mark.parametrize("chunk", [None, 7])
def test_layer_conductance_tuple_activation_matches_captum(chunk: Any) -> None:
    torch.manual_seed(0)
    model = TupleNet().to(F64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g, dtype=F64)
    kw: dict[str, Any] = {"target": 1, "n_steps": 400, "return_convergence_delta": True}
    ours, delta = llmattr.LayerConductance(model, model.pair).attribute(
        x, internal_batch_size=chunk, **kw
    )
    theirs, their_delta = captum_attr.LayerConductance(model, model.pair).attribute(x, **kw)
    assert isinstance(ours, tuple) and isinstance(theirs, tuple) and len(ours) == len(theirs) == 2
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape and o.dtype == t.dtype
        torch.testing.assert_close(o, t, rtol=0, atol=5e-3)  # both converge to one value
    assert delta.shape == their_delta.shape == (3,)
    with torch.no_grad():
        want = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(delta, ours[0].sum(1) + ours[1].sum(1) - want, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-4


def test_layer_conductance_tuple_activation_from_captums_suite() -> None:
    from captum.testing.helpers.basic_models import BasicModel_MultiLayer

    net = BasicModel_MultiLayer(multi_input_module=True).to(F64)
    x = torch.tensor([[0.0, 100.0, 0.0]], dtype=F64)
    ours = llmattr.LayerConductance(net, net.multi_relu).attribute(x, target=0, n_steps=100)
    theirs = captum_attr.LayerConductance(net, net.multi_relu).attribute(x, target=0, n_steps=100)
    assert isinstance(ours, tuple) and len(ours) == 2
    want = torch.tensor([[90.0, 100.0, 100.0, 100.0]], dtype=F64)
    for o, t in zip(ours, theirs):
        assert o.shape == t.shape
        torch.testing.assert_close(o, want, rtol=0, atol=0.5)
        torch.testing.assert_close(t, want, rtol=0, atol=0.5)


@pytest.mark.parametrize("chunk", [None, 5])
def test_layer_conductance_delta_with_several_inputs_matches_captum(chunk: Any) -> None:
    """The delta sums the layer's conductance (one tensor) against f(x) - f(b) however many
    inputs there are (it used to count attribution tensors against inputs and raise)."""
    torch.manual_seed(1)
    model = ThreeInputs().to(F64)
    g = torch.Generator().manual_seed(4)
    xs = tuple(torch.randn(2, 4, generator=g, dtype=F64) for _ in range(3))
    bs = tuple(torch.randn(2, 4, generator=g, dtype=F64) for _ in range(3))
    kw: dict[str, Any] = {
        "target": 2, "n_steps": 300, "additional_forward_args": (2.0,),
        "return_convergence_delta": True,
    }  # fmt: skip
    ours, delta = llmattr.LayerConductance(model, model.fc2).attribute(
        xs, bs, internal_batch_size=chunk, **kw
    )
    theirs, their_delta = captum_attr.LayerConductance(model, model.fc2).attribute(xs, bs, **kw)
    assert isinstance(ours, Tensor) and ours.shape == theirs.shape == (2, 3)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-2)
    assert delta.shape == their_delta.shape == (2,) and delta.dtype == their_delta.dtype
    with torch.no_grad():
        want = model(*xs, 2.0)[:, 2] - model(*bs, 2.0)[:, 2]
    torch.testing.assert_close(delta, ours.sum(1) - want, rtol=0, atol=1e-12)
    torch.testing.assert_close(delta, their_delta, rtol=0, atol=1e-2)
