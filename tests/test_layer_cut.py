"""The cut of a model at a layer (LayerCut, neuron selection) and what every layer/neuron method
inherits from it: refusing bad layers and selectors before any backward, leaving no hook behind
after an exception, cutting a reused module at its first call, DataParallel models."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import MLP
from torch import Tensor, nn

from llmattr import (
    IdentityRule,
    IntegratedGradients,
    InternalInfluence,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerFeatureAblation,
    LayerGradCam,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LayerLRP,
    NeuronConductance,
    NeuronDeepLift,
    NeuronFeatureAblation,
    NeuronGradient,
    NeuronGradientShap,
    NeuronGuidedBackprop,
    NeuronIntegratedGradients,
)
from llmattr._core.layers import LayerCut, neuron_function, select_neuron
from llmattr._core.targets import normalize_target

F64 = torch.float64


# --- helpers ------------------------------------------------------------------------------------


def hooked_outputs(model: nn.Module, x: Tensor, *layers: nn.Module) -> list[Tensor]:
    """Each layer's output at its first call, captured with plain forward hooks."""
    seen: dict[int, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, i=i: seen.setdefault(i, out.detach()))
        for i, m in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(layers))]


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        assert not m._forward_hooks, name
        assert not m._forward_pre_hooks, name
        assert not m._backward_hooks, name
        assert not m._backward_pre_hooks, name


@pytest.fixture
def grad_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls to torch.autograd.grad / backward (every backward the library takes)."""
    calls: list[int] = []
    real_grad, real_backward = torch.autograd.grad, torch.autograd.backward

    def grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    def backward(*args, **kwargs):
        calls.append(1)
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    monkeypatch.setattr(torch.autograd, "backward", backward)
    return calls


class Counter(nn.Module):
    """Identity that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x


class Chain(nn.Module):
    """Linear → Tanh → Linear → counter → Linear; f is smooth."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(6, 5)
        self.counter = Counter()
        self.fc3 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.counter(self.fc2(self.act(self.fc1(x)))))


class Reuse(nn.Module):
    """``shared`` runs twice: h = shared(tanh(shared(x))); out = head(h)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.shared(self.act(self.shared(x))))


class Boom(nn.Module):
    """Identity that raises on its ``fail_at``-th call (counting from 1), when armed."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_at = 0
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.fail_at and self.calls >= self.fail_at:
            raise RuntimeError("boom")
        return x


class Exploding(nn.Module):
    """Linear → ReLU → boom → Linear → ReLU → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu1 = nn.ReLU()
        self.boom = Boom()
        self.boom.rule = IdentityRule()  # for LRP
        self.fc2 = nn.Linear(6, 5)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.boom(self.relu1(self.fc1(x))))))


# --- LayerCut -----------------------------------------------------------------------------------


def test_activations_equal_hooked_outputs_and_stop_early() -> None:
    model = Chain().to(F64)
    x = torch.randn(3, 4, dtype=F64)
    cut = LayerCut(model, [model.fc2, model.fc1])
    want_fc2, want_fc1 = hooked_outputs(model, x, model.fc2, model.fc1)
    model.counter.calls = 0
    acts, out = cut.activations((x,))
    # the forward stopped once both layers ran: nothing downstream of fc2 was called
    assert out is None and model.counter.calls == 0
    assert len(acts) == 2 and all(len(a) == 1 for a in acts)
    torch.testing.assert_close(acts[0][0], want_fc2, rtol=0, atol=0)
    torch.testing.assert_close(acts[1][0], want_fc1, rtol=0, atol=0)
    acts_full, out_full = cut.activations((x,), stop_early=False)
    assert model.counter.calls == 1
    torch.testing.assert_close(out_full, model(x), rtol=0, atol=0)
    torch.testing.assert_close(acts_full[0][0], want_fc2, rtol=0, atol=0)


def test_activations_of_layer_inputs() -> None:
    model = Chain().to(F64)
    x = torch.randn(3, 4, dtype=F64)
    (act,), _ = LayerCut(model, [model.fc2], to_input=True).activations((x,))
    (tanh_out,) = hooked_outputs(model, x, model.act)
    torch.testing.assert_close(act[0], tanh_out, rtol=0, atol=0)


def test_gradients_of_two_layers_equal_autograd_by_hand() -> None:
    model = Chain().to(F64)
    x = torch.randn(5, 4, dtype=F64)
    target = torch.tensor([0, 2, 1, 1, 0])
    grads, acts, selected = LayerCut(model, [model.fc2, model.fc1]).gradients(
        (x,), normalize_target(target, 5)
    )
    a1 = model.fc1(x)
    a2 = model.fc2(model.act(a1))
    out = model.fc3(a2)
    pick = out[torch.arange(5), target]
    g2, g1 = torch.autograd.grad(pick.sum(), (a2, a1))
    # fc1 is upstream of fc2: its gradient is the true one, through fc2's graph
    torch.testing.assert_close(grads[0][0], g2, rtol=0, atol=1e-14)
    torch.testing.assert_close(grads[1][0], g1, rtol=0, atol=1e-14)
    torch.testing.assert_close(acts[1][0], a1.detach(), rtol=0, atol=0)
    torch.testing.assert_close(selected, pick.detach(), rtol=0, atol=0)
    assert not selected.requires_grad


def test_gradient_of_unused_activation_is_zero() -> None:
    class Discards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.side = nn.Linear(3, 2)
            self.fc = nn.Linear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            self.side(x)  # runs, but the output does not use it
            return self.fc(x)

    model = Discards().to(F64)
    x = torch.randn(4, 3, dtype=F64)
    target = normalize_target(None, 4)
    (grads,), (acts,), _ = LayerCut(model, [model.side]).gradients((x,), target)
    assert torch.equal(grads[0], torch.zeros(4, 2, dtype=F64))
    torch.testing.assert_close(acts[0], model.side(x).detach())


def test_grad_kwargs_reach_autograd() -> None:
    """Captum's grad_kwargs: allow_unused=False refuses an unused activation; create_graph keeps
    the gradient differentiable."""

    class Discards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.side = nn.Linear(3, 2)
            self.fc = nn.Linear(3, 1)

        def forward(self, x: Tensor) -> Tensor:
            self.side(x)
            return torch.tanh(self.fc(x))

    torch.manual_seed(0)
    model = Discards().to(F64)
    x = torch.randn(2, 3, dtype=F64)
    target = normalize_target(None, 2)
    with pytest.raises(RuntimeError, match="not have been used"):
        LayerCut(model, [model.side]).gradients((x,), target, grad_kwargs={"allow_unused": False})
    cut = LayerCut(model, [model.fc], to_input=True)
    ((g,),), _, _ = cut.gradients((x,), target, grad_kwargs={"create_graph": True})
    assert g.requires_grad
    ((plain,),), _, _ = cut.gradients((x,), target)
    assert not plain.requires_grad
    torch.testing.assert_close(g.detach(), plain, rtol=0, atol=0)


def test_input_of_an_in_place_layer_is_read_before_it_is_overwritten() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(inplace=True), nn.Linear(5, 2)).to(F64)
    x = torch.randn(4, 3, dtype=F64)
    pre = model[0](x).detach()
    assert (pre < 0).any()
    cut = LayerCut(model, [model[1], model[2]], to_input=True)
    (at_relu, at_fc), _ = cut.activations((x,), stop_early=False)
    torch.testing.assert_close(at_relu[0], pre, rtol=0, atol=0)
    torch.testing.assert_close(at_fc[0], pre.clamp(min=0), rtol=0, atol=0)
    # a later layer's input in gradients(), and the first layer's
    _, (_, acts_relu), _ = LayerCut(model, [model[0], model[1]], to_input=True).gradients(
        (x,), normalize_target(0, 4)
    )
    torch.testing.assert_close(acts_relu[0], pre, rtol=0, atol=0)
    _, (acts_first,), _ = LayerCut(model, [model[1]], to_input=True).gradients(
        (x,), normalize_target(0, 4)
    )
    torch.testing.assert_close(acts_first[0], pre, rtol=0, atol=0)


def test_replaced_substitutes_first_call_and_checks_shape() -> None:
    model = Chain().to(F64)
    x = torch.randn(2, 4, dtype=F64)
    cut = LayerCut(model, [model.fc2])
    new = torch.randn(2, 5, dtype=F64)
    with cut.replaced([(new,)]):
        out = model(x)
    torch.testing.assert_close(out, model.fc3(new), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"shape \(2, 5\).*\(2, 4\)"):
        with cut.replaced([(torch.zeros(2, 4, dtype=F64),)]):
            model(x)
    assert_no_hooks(model)
    # g(activation, inputs): the model run with the activation given
    g = cut.function([1])
    torch.testing.assert_close(g(new, x), model.fc3(new), rtol=0, atol=0)


def test_tuple_activation_keeps_non_float_members() -> None:
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
            return x.tanh(), x.sigmoid(), torch.ones(x.shape[0], dtype=torch.long), None

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: Tensor) -> Tensor:
            a, b, n, _ = self.pair(x)
            return (a * b).sum(1, keepdim=True) + n.unsqueeze(1)

    model = Net().to(F64)
    x = torch.randn(3, 2, dtype=F64)
    cut = LayerCut(model, [model.pair])
    (acts,), _ = cut.activations((x,))
    assert len(acts) == 2
    torch.testing.assert_close(acts[1], x.sigmoid())
    u, v = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    out = cut.function([2])(u, v, x)
    torch.testing.assert_close(out, (u * v).sum(1, keepdim=True) + 1)


def test_layer_without_float_tensor_is_refused() -> None:
    class Ids(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return x.argmax(1), x.argmin(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ids = Ids()
            self.emb = nn.Embedding(5, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.emb(self.ids(x)[0]).sum(1)

    model = Net()
    with pytest.raises(TypeError, match="Ids"):
        LayerCut(model, [model.ids]).activations((torch.randn(2, 5),))


# --- neuron selection ---------------------------------------------------------------------------


def test_select_neuron_forms() -> None:
    act = torch.randn(3, 4, 5, dtype=F64)
    torch.testing.assert_close(select_neuron((act,), (1, 2)), act[:, 1, 2])
    torch.testing.assert_close(select_neuron((act,), (-1, 0)), act[:, 3, 0])
    torch.testing.assert_close(
        select_neuron((act,), (slice(1, 3), slice(None))), act[:, 1:3].sum((1, 2))
    )
    torch.testing.assert_close(select_neuron((act,), (2, slice(0, 5, 2))), act[:, 2, ::2].sum(1))
    torch.testing.assert_close(select_neuron((act,), lambda a: a[:, 0].prod(1)), act[:, 0].prod(1))
    other = torch.randn(3, 2, dtype=F64)
    # a tuple activation goes to the callable whole
    torch.testing.assert_close(
        select_neuron((act, other), lambda t: t[0][:, 0, 0] * t[1][:, 1]),
        act[:, 0, 0] * other[:, 1],
    )
    flat = torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(select_neuron((flat,), 2), flat[:, 2])


@pytest.mark.parametrize(
    ("selector", "error", "pattern"),
    [
        (4, IndexError, "out of range"),
        (-5, IndexError, "out of range"),
        ((0, 0), ValueError, "2 index"),
        (True, TypeError, "neuron_selector"),
        ((0.5,), TypeError, "ints or slices"),
        ("0", TypeError, "neuron_selector"),
        (lambda a: a[:2, 0], ValueError, "one value per example"),
        (lambda a: a[:, 0].tolist(), ValueError, "one value per example"),
    ],
)
def test_select_neuron_refuses(selector, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        select_neuron((torch.randn(3, 4),), selector)


def test_neuron_function_stops_after_layer() -> None:
    model = Chain().to(F64)
    x = torch.randn(3, 4, dtype=F64)
    h = neuron_function(model, model.fc2, (slice(1, 3),))
    model.counter.calls = 0
    y = h(x)
    assert model.counter.calls == 0
    torch.testing.assert_close(y, model.fc2(model.act(model.fc1(x)))[:, 1:3].sum(1))


# --- bad layers and selectors: refused before any backward --------------------------------------

LAYER_METHODS = [
    LayerActivation, LayerGradientXActivation, LayerIntegratedGradients, LayerFeatureAblation,
    LayerGradCam, LayerLRP, LayerConductance, InternalInfluence, LayerGradientShap, LayerDeepLift,
]  # fmt: skip
NEURON_METHODS = [
    NeuronGradient, NeuronIntegratedGradients, NeuronConductance, NeuronDeepLift,
    NeuronGradientShap, NeuronFeatureAblation, NeuronGuidedBackprop,
]  # fmt: skip


@pytest.mark.parametrize("cls", LAYER_METHODS + NEURON_METHODS, ids=lambda c: c.__name__)
def test_layer_not_in_model_is_refused_at_construction(cls) -> None:
    model = MLP().double()
    stranger = nn.Linear(6, 10).double()
    with pytest.raises(ValueError, match="not a submodule"):
        cls(model, stranger)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        cls(model, "fc1")


def test_layer_list_with_one_stranger_is_refused() -> None:
    model = MLP().double()
    with pytest.raises(ValueError, match="not a submodule"):
        LayerIntegratedGradients(model, [model.fc1, nn.Linear(2, 2)])


class Branchy(nn.Module):
    """``unused`` is part of the model but never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 2)
        self.unused = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.relu(self.fc(x)))


def _run_method(cls, model: nn.Module, layer: nn.Module, x: Tensor):
    """One attribute() call of a layer or neuron method with small settings."""
    name = cls.__name__
    kw: dict = {}
    if name.startswith("Neuron"):
        kw["neuron_selector"] = 0
    if name not in {"LayerActivation", "NeuronGradient", "NeuronIntegratedGradients",
                    "NeuronGradientShap", "NeuronFeatureAblation", "NeuronDeepLift",
                    "NeuronGuidedBackprop"}:  # fmt: skip
        kw["target"] = 0
    if name in {"LayerIntegratedGradients", "LayerConductance", "InternalInfluence",
                "NeuronIntegratedGradients", "NeuronConductance"}:  # fmt: skip
        kw["n_steps"] = 4
    if name in {"LayerGradientShap", "NeuronGradientShap"}:
        kw["baselines"] = torch.zeros_like(x)
    return cls(model, layer).attribute(x, **kw)


@pytest.mark.parametrize("cls", LAYER_METHODS + NEURON_METHODS, ids=lambda c: c.__name__)
def test_layer_that_never_runs_raises_before_backward(cls, grad_calls) -> None:
    model = Branchy().double()
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(RuntimeError, match=r"Linear \('unused'\) never ran"):
        _run_method(cls, model, model.unused, x)
    assert grad_calls == []
    assert_no_hooks(model)


def test_never_ran_names_modules_sharing_weights() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Embedding(6, 3)
            self.embed_tokens = nn.Embedding(6, 3)
            self.embed_tokens.weight = self.shared.weight
            self.fc = nn.Linear(3, 1)

        def forward(self, ids: Tensor) -> Tensor:
            return self.fc(self.embed_tokens(ids)).sum(1)

    model = Tied()
    with pytest.raises(RuntimeError, match=r"shared.*sharing its weights.*embed_tokens"):
        LayerIntegratedGradients(model, model.shared).attribute(torch.tensor([[1, 2]]))


NEURON_SELECTOR_METHODS = [
    NeuronGradient, NeuronIntegratedGradients, NeuronConductance, NeuronDeepLift,
    NeuronGradientShap, NeuronFeatureAblation, NeuronGuidedBackprop,
]  # fmt: skip


def _neuron_call(cls, model: nn.Module, layer: nn.Module, x: Tensor, selector):
    kw: dict = {}
    if cls is NeuronConductance:
        kw["target"] = 0
    if cls in (NeuronIntegratedGradients, NeuronConductance):
        kw["n_steps"] = 4
    if cls is NeuronGradientShap:
        kw["baselines"] = torch.zeros_like(x)
    return cls(model, layer).attribute(x, selector, **kw)


@pytest.mark.parametrize("cls", NEURON_SELECTOR_METHODS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("selector", "error"),
    [(5, IndexError), ((0, slice(None), 99), IndexError), ((1, 2), ValueError)],
    ids=["int-out-of-range", "tuple-out-of-range", "too-many"],
)
def test_bad_selector_raises_before_backward(cls, selector, error, grad_calls) -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(3, 4, dtype=F64)
    if selector == (0, slice(None), 99):  # three indices: needs a 4-D activation
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).double()
        x = torch.randn(3, 1, 4, 4, dtype=F64)
    with pytest.raises(error, match="neuron_selector"):
        _neuron_call(cls, model, model[0], x, selector)
    assert grad_calls == []
    assert_no_hooks(model)


@pytest.mark.parametrize(
    "cls", [c for c in NEURON_SELECTOR_METHODS if c is not NeuronConductance],
    ids=lambda c: c.__name__,
)  # fmt: skip
def test_callable_selector_of_wrong_shape_raises_before_backward(cls, grad_calls) -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ValueError, match="one value per example"):
        _neuron_call(cls, model, model[0], x, lambda a: a[:2, 0])  # two rows for three examples
    assert grad_calls == []


def test_neuron_conductance_callable_selector_equals_the_index_it_picks() -> None:
    """Captum allows callables in NeuronConductance (with a warning); one picked neuron gives the
    same conductance as its index."""
    model = Chain().double()
    x = torch.randn(2, 4, dtype=F64)
    nc = NeuronConductance(model, model.fc1)
    with pytest.warns(UserWarning):
        by_callable = nc.attribute(x, lambda a: a[:, 1], target=0, n_steps=8)
    torch.testing.assert_close(by_callable, nc.attribute(x, 1, target=0, n_steps=8))


# --- exceptions mid-attribution leave no hooks --------------------------------------------------


def _calls(model: Exploding) -> dict[str, Callable[[Tensor], object]]:
    """Attribution calls that run the model several times and reach ``boom`` each time."""
    b = torch.zeros(1, 4, dtype=F64)
    return {
        "LayerIntegratedGradients": lambda x: LayerIntegratedGradients(model, model.fc2).attribute(
            x, b, target=0, n_steps=3, internal_batch_size=2
        ),
        "LayerIntegratedGradients-input": lambda x: LayerIntegratedGradients(
            model, [model.fc2, model.relu1]
        ).attribute(x, b, target=0, n_steps=3, attribute_to_layer_input=True),
        "LayerConductance": lambda x: LayerConductance(model, model.fc2).attribute(
            x, b, target=0, n_steps=3, internal_batch_size=2
        ),
        "LayerGradientXActivation": lambda x: LayerGradientXActivation(
            model, [model.fc1, model.fc2]
        ).attribute(x, target=0),
        "LayerDeepLift": lambda x: LayerDeepLift(model, model.fc2).attribute(x, b, target=0),
        "LayerLRP": lambda x: LayerLRP(model, model.fc2).attribute(x, target=0),  # boom: .rule
        "LayerFeatureAblation": lambda x: LayerFeatureAblation(model, model.fc2).attribute(
            x, target=0
        ),
        "LayerGradientShap": lambda x: LayerGradientShap(model, model.fc2).attribute(
            x, b, n_samples=3, target=0
        ),
        "NeuronIntegratedGradients": lambda x: NeuronIntegratedGradients(
            model, model.fc2
        ).attribute(x, 1, b, n_steps=3, internal_batch_size=2),
        "NeuronConductance": lambda x: NeuronConductance(model, model.fc2).attribute(
            x, 1, b, target=0, n_steps=3, internal_batch_size=2
        ),
        "NeuronDeepLift": lambda x: NeuronDeepLift(model, model.fc2).attribute(x, 1, b),
        "NeuronGuidedBackprop": lambda x: NeuronGuidedBackprop(model, model.fc2).attribute(x, 1),
        "NeuronFeatureAblation": lambda x: NeuronFeatureAblation(model, model.fc2).attribute(x, 1),
    }


@pytest.mark.parametrize("name", list(_calls(Exploding()).keys()))
def test_exception_from_module_mid_attribution_leaves_no_hooks(name: str) -> None:
    model = Exploding().double()
    x = torch.randn(2, 4, dtype=F64)
    with torch.no_grad():
        before = model(x)
    call = _calls(model)[name]
    model.boom.calls = 0
    call(x)  # runs clean
    clean_calls = model.boom.calls
    assert clean_calls >= 1
    # fail on the last call the method makes: every earlier forward ran and set up its hooks
    model.boom.calls, model.boom.fail_at = 0, clean_calls
    with pytest.raises(RuntimeError, match="boom"):
        call(x)
    assert_no_hooks(model)
    model.boom.fail_at = 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    x2 = x.clone().requires_grad_()
    model(x2).sum().backward()  # the ordinary backward is back too
    assert x2.grad is not None


@pytest.mark.parametrize(
    "cls", [NeuronGradient, NeuronIntegratedGradients, NeuronDeepLift, NeuronGuidedBackprop,
            NeuronFeatureAblation, NeuronGradientShap],
    ids=lambda c: c.__name__,
)  # fmt: skip
def test_exception_from_selector_leaves_no_hooks(cls) -> None:
    model = Exploding().double()
    x = torch.randn(2, 4, dtype=F64)
    with torch.no_grad():
        before = model(x)
    calls: list[int] = []
    fail_at = [0]

    def selector(a: Tensor) -> Tensor:
        calls.append(1)
        if fail_at[0] and len(calls) >= fail_at[0]:
            raise KeyError("selector failed")
        return a[:, 0]

    _neuron_call(cls, model, model.fc2, x, selector)  # runs clean
    # fail on the last call the method makes
    fail_at[0], n_clean = len(calls), len(calls)
    calls.clear()
    with pytest.raises(KeyError, match="selector failed"):
        _neuron_call(cls, model, model.fc2, x, selector)
    assert len(calls) == n_clean
    assert_no_hooks(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


# --- a module called twice: cut at its first call ----------------------------------------------


def test_layer_activation_of_reused_module_is_first_call() -> None:
    model = Reuse().double()
    x = torch.randn(3, 4, dtype=F64)
    act = LayerActivation(model, model.shared).attribute(x)
    first = model.shared(x)
    torch.testing.assert_close(act, first, rtol=0, atol=0)
    second = model.shared(model.act(first))
    assert not torch.allclose(act, second)
    act_in = LayerActivation(model, model.shared).attribute(x, attribute_to_layer_input=True)
    torch.testing.assert_close(act_in, x, rtol=0, atol=0)


def test_layer_ig_of_reused_module_cuts_first_call() -> None:
    model = Reuse().double()
    x, b = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    attrs, delta = LayerIntegratedGradients(model, model.shared).attribute(
        x, b, target=1, n_steps=40, return_convergence_delta=True
    )
    with torch.no_grad():
        gap = model(x)[:, 1] - model(b)[:, 1]
    torch.testing.assert_close(attrs.sum(1), gap, rtol=0, atol=1e-10)
    torch.testing.assert_close(delta, attrs.sum(1) - gap, rtol=0, atol=1e-12)

    # the first call's output a is cut; the second call runs unchanged on tanh(a)
    def rest(a: Tensor) -> Tensor:
        return model.head(model.shared(model.act(a)))

    want = IntegratedGradients(rest).attribute(
        model.shared(x).detach(), model.shared(b).detach(), target=1, n_steps=40
    )
    torch.testing.assert_close(attrs, want, rtol=0, atol=1e-12)


# --- DataParallel -------------------------------------------------------------------------------


def test_data_parallel_model_on_cpu() -> None:
    model = MLP().double()
    dp = nn.DataParallel(model)
    x, b = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    lig = LayerIntegratedGradients(dp, dp.module.fc2, device_ids=None)
    attrs, delta = lig.attribute(x, b, target=2, n_steps=30, return_convergence_delta=True)
    want = LayerIntegratedGradients(model, model.fc2).attribute(x, b, target=2, n_steps=30)
    torch.testing.assert_close(attrs, want, rtol=0, atol=1e-13)
    with torch.no_grad():
        gap = model(x)[:, 2] - model(b)[:, 2]
    torch.testing.assert_close(attrs.sum(1), gap, rtol=0, atol=1e-9)
    torch.testing.assert_close(delta, attrs.sum(1) - gap, rtol=0, atol=1e-12)
    assert_no_hooks(dp)


def test_data_parallel_model_on_cpu_with_path_and_neuron_methods() -> None:
    # without GPUs DataParallel just calls its module: every method works unchanged
    model = MLP().double()
    dp = nn.DataParallel(model)
    assert dp.device_ids == [] or len(dp.device_ids) == 1
    x, b = torch.randn(4, 6, dtype=F64), torch.randn(4, 6, dtype=F64)
    pairs = [
        (
            LayerConductance(dp, dp.module.fc2).attribute(x, b, target=1, n_steps=8),
            LayerConductance(model, model.fc2).attribute(x, b, target=1, n_steps=8),
        ),
        (
            LayerGradientXActivation(dp, dp.module.fc1, device_ids=None).attribute(x, target=0),
            LayerGradientXActivation(model, model.fc1).attribute(x, target=0),
        ),
        (
            NeuronIntegratedGradients(dp, dp.module.fc2).attribute(x, 3, b, n_steps=8),
            NeuronIntegratedGradients(model, model.fc2).attribute(x, 3, b, n_steps=8),
        ),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_no_hooks(dp)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: LayerIntegratedGradients(m, m.fc2, device_ids=[0, 1]),
        lambda m: LayerConductance(m, m.fc2, device_ids=[0, 1]),
        lambda m: NeuronGradient(m, m.fc2, device_ids=[0, 1]),
    ],
    ids=["LayerIntegratedGradients", "LayerConductance", "NeuronGradient"],
)
def test_several_device_ids_are_refused_at_construction(make) -> None:
    with pytest.raises(NotImplementedError, match=r"DataParallel.*model\.module"):
        make(MLP())


def test_data_parallel_on_several_devices_is_refused_at_construction() -> None:
    model = MLP()
    dp = nn.DataParallel(model)
    dp.device_ids = [0, 1]  # what DataParallel holds on a machine with two GPUs
    with pytest.raises(NotImplementedError, match=r"Linear.*device_ids=\[0, 1\].*model\.module"):
        LayerIntegratedGradients(dp, dp.module.fc2)
    with pytest.raises(NotImplementedError, match=r"model\.module"):
        NeuronIntegratedGradients(lambda x: dp(x), dp.module.fc2, device_ids=[0, 1])
    # through the wrapped model, as the message says
    LayerIntegratedGradients(dp.module, dp.module.fc2)


class Replicated(nn.Module):
    """Runs ``fc2`` through a replica, as DataParallel does on several GPUs: the replica is a
    copy of the module that carries the original's hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        replica = self.fc2._replicate_for_data_parallel()
        replica.weight, replica.bias = self.fc2.weight, self.fc2.bias
        return replica(torch.tanh(self.fc1(x)))


@pytest.mark.parametrize(
    "run",
    [
        lambda m, x: LayerIntegratedGradients(m, m.fc2).attribute(x, target=0, n_steps=3),
        lambda m, x: LayerConductance(m, m.fc2).attribute(x, target=0, n_steps=3),
        lambda m, x: LayerActivation(m, m.fc2).attribute(x),
        lambda m, x: NeuronGradient(m, m.fc2).attribute(x, 1),
    ],
    ids=["LayerIntegratedGradients", "LayerConductance", "LayerActivation", "NeuronGradient"],
)
def test_hook_firing_in_a_replica_is_refused(run, grad_calls) -> None:
    model = Replicated().double()
    with pytest.raises(NotImplementedError, match=r"replicas.*model\.module"):
        run(model, torch.randn(2, 4, dtype=F64))
    assert grad_calls == []
    assert_no_hooks(model)


# --- layers with integer outputs ----------------------------------------------------------------


class Tokens(nn.Module):
    """Maps features to token ids (an integer output), like a tokenizer inside the model."""

    def forward(self, x: Tensor) -> Tensor:
        return (x > 0).long().cumsum(1)


class TokenNet(nn.Module):
    """x → ids = tokens(x) → embedding → sum, plus a direct linear route from x."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = Tokens()
        self.emb = nn.Embedding(8, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.emb(self.tokens(x)).sum(1) + self.fc(x)


@pytest.mark.parametrize(
    "run",
    [
        lambda m, x: LayerIntegratedGradients(m, m.tokens).attribute(x, target=0, n_steps=3),
        lambda m, x: LayerConductance(m, m.tokens).attribute(x, target=0, n_steps=3),
        lambda m, x: InternalInfluence(m, m.tokens).attribute(x, target=0, n_steps=3),
        lambda m, x: LayerGradientXActivation(m, m.tokens).attribute(x, target=0),
        lambda m, x: LayerGradCam(m, m.tokens).attribute(x, target=0),
        lambda m, x: LayerGradientShap(m, m.tokens).attribute(x, torch.zeros_like(x), target=0),
        lambda m, x: LayerDeepLift(m, m.tokens).attribute(x, target=0),
        lambda m, x: NeuronGradient(m, m.tokens).attribute(x, 1),
        lambda m, x: NeuronIntegratedGradients(m, m.tokens).attribute(x, 1, n_steps=3),
        lambda m, x: NeuronConductance(m, m.tokens).attribute(x, 1, target=0, n_steps=3),
    ],
    ids=[
        "LayerIntegratedGradients", "LayerConductance", "InternalInfluence",
        "LayerGradientXActivation", "LayerGradCam", "LayerGradientShap", "LayerDeepLift",
        "NeuronGradient", "NeuronIntegratedGradients", "NeuronConductance",
    ],
)  # fmt: skip
def test_integer_layer_output_is_refused_for_gradients(run, grad_calls) -> None:
    model = TokenNet().double()
    x = torch.randn(2, 4, dtype=F64)
    with pytest.raises(TypeError, match=r"tokens.*torch\.int64.*floating.*embedding"):
        run(model, x)
    assert grad_calls == []
    assert_no_hooks(model)


def test_integer_layer_output_is_fine_without_gradients() -> None:
    model = TokenNet().double()
    x = torch.randn(2, 4, dtype=F64)
    ids = LayerActivation(model, model.tokens).attribute(x)
    assert ids.dtype == torch.long
    torch.testing.assert_close(ids, model.tokens(x))
    # the embedding layer that consumes the ids is the one to attribute to
    attrs, delta = LayerIntegratedGradients(model, model.emb).attribute(
        x, target=0, n_steps=3, return_convergence_delta=True
    )
    assert attrs.shape == (2, 4, 3)
    assert delta.abs().max() < 1e-12  # the embedding is linear in its output: exact


# --- in-place operations after the cut ----------------------------------------------------------


@pytest.mark.parametrize(
    "run",
    [
        lambda m, x, b: LayerIntegratedGradients(m, m[0]).attribute(x, b, 1, n_steps=5),
        lambda m, x, b: LayerIntegratedGradients(m, m[1]).attribute(
            x, b, 1, n_steps=5, attribute_to_layer_input=True
        ),
        lambda m, x, b: LayerConductance(m, m[0]).attribute(x, b, 1, n_steps=5),
        lambda m, x, b: InternalInfluence(m, m[0]).attribute(x, b, 1, n_steps=5),
        lambda m, x, b: LayerGradientXActivation(m, m[0]).attribute(x, 1),
        lambda m, x, b: LayerDeepLift(m, m[0]).attribute(x, b, 1),
    ],
    ids=["LayerIntegratedGradients", "LayerIntegratedGradients-input", "LayerConductance",
         "InternalInfluence", "LayerGradientXActivation", "LayerDeepLift"],
)  # fmt: skip
def test_in_place_operation_after_the_layer(run) -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    in_place = nn.Sequential(plain[0], nn.ReLU(inplace=True), plain[2])
    x, b = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(run(in_place, x, b), run(plain, x, b), rtol=0, atol=0)
