"""The shared engine: input/baseline/target normalization, chunking, hooks and base classes."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import MLP
from torch import nn

from llmattr import (
    LRP,
    Attribution,
    DeepLift,
    DeepLiftShap,
    GradientAttribution,
    IntegratedGradients,
    LayerAttribution,
    NeuronAttribution,
    NoiseTunnel,
    Saliency,
)
from llmattr._core.batching import run_in_chunks
from llmattr._core.hooks import registered, replace_outputs, route_gradient
from llmattr._core.inputs import (
    expand_args,
    expand_batch,
    format_baseline_distribution,
    format_baselines,
    format_inputs,
)
from llmattr._core.targets import normalize_target

# --- inputs and baselines ---------------------------------------------------------------------


def test_format_inputs_keeps_form_and_checks_batch() -> None:
    x = torch.zeros(3, 2)
    assert format_inputs(x) == ((x,), False)
    tensors, was_tuple = format_inputs((x, x))
    assert was_tuple and len(tensors) == 2
    with pytest.raises(ValueError, match="different batch sizes"):
        format_inputs((x, torch.zeros(4, 2)))
    with pytest.raises(ValueError, match="batch dimension"):
        format_inputs(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        format_inputs((x, [1, 2]))  # type: ignore[arg-type]


def test_baselines_broadcast_forms() -> None:
    x = torch.randn(3, 2, 4)
    (zero,) = format_baselines(None, (x,))
    assert torch.equal(zero, torch.zeros_like(x))
    (five,) = format_baselines(5, (x,))
    assert torch.equal(five, torch.full_like(x, 5.0))
    one = torch.randn(1, 2, 4)
    (b,) = format_baselines(one, (x,))
    assert b.shape == x.shape and torch.equal(b[2], one[0])
    per_feature = torch.randn(4)
    (b,) = format_baselines(per_feature, (x,))
    assert torch.equal(b[1, 1], per_feature)
    with pytest.raises(ValueError, match="cannot broadcast"):
        format_baselines(torch.zeros(2, 2, 4), (x,))
    with pytest.raises(ValueError, match="one baseline per input"):
        format_baselines((0, 0), (x,))
    with pytest.raises(ValueError, match="tuple with one"):
        format_baselines(torch.zeros(3, 2, 4), (x, x))


def test_baseline_distribution_shapes() -> None:
    x = torch.randn(3, 4)
    (d,) = format_baseline_distribution(torch.zeros(7, 4), (x,))
    assert d.shape == (7, 4)
    (d,) = format_baseline_distribution(lambda: torch.ones(2, 4), (x,))
    assert torch.equal(d, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(n_baselines"):
        format_baseline_distribution(torch.zeros(7, 5), (x,))
    with pytest.raises(ValueError, match="same number of baselines"):
        format_baseline_distribution((torch.zeros(2, 4), torch.zeros(3, 4)), (x, x))


def test_expansion_layouts() -> None:
    t = torch.arange(3)
    assert expand_batch(t, 2, "repeat").tolist() == [0, 1, 2, 0, 1, 2]
    assert expand_batch(t, 2, "interleave").tolist() == [0, 0, 1, 1, 2, 2]
    args = (t, torch.zeros(5), "text", 1.5)
    out = expand_args(args, batch=3, n=2, layout="interleave")
    assert out[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert out[1] is args[1] and out[2] == "text" and out[3] == 1.5


# --- targets ----------------------------------------------------------------------------------


def test_target_forms_select_the_documented_scalars() -> None:
    out2 = torch.arange(12.0).reshape(4, 3)
    out3 = torch.arange(24.0).reshape(4, 3, 2)
    assert normalize_target(None, 4).select(out2[:, :1], 4).tolist() == [0, 3, 6, 9]
    assert normalize_target(2, 4).select(out2, 4).tolist() == [2, 5, 8, 11]
    assert normalize_target((1, 1), 4).select(out3, 4).tolist() == [3, 9, 15, 21]
    assert normalize_target([0, 1, 2, 0], 4).select(out2, 4).tolist() == [0, 4, 8, 9]
    tuples = [(0, 1), (1, 0), (2, 1), (0, 0)]
    assert normalize_target(tuples, 4).select(out3, 4).tolist() == [1, 8, 17, 18]
    assert normalize_target(torch.tensor(1), 4).select(out2, 4).tolist() == [1, 4, 7, 10]
    per = torch.tensor([2, 1, 0, 2])
    assert normalize_target(per, 4).select(out2, 4).tolist() == [2, 4, 6, 11]
    assert normalize_target(torch.tensor(tuples), 4).select(out3, 4).tolist() == [1, 8, 17, 18]
    assert normalize_target(-1, 4).select(out2, 4).tolist() == [2, 5, 8, 11]


def test_target_errors_are_clear() -> None:
    out = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="no target was given"):
        normalize_target(None, 4).select(out, 4)
    with pytest.raises(IndexError, match="out of range"):
        normalize_target(3, 4).select(out, 4)
    with pytest.raises(IndexError, match="out of range"):
        normalize_target([0, 1, 5, 0], 4).select(out, 4)
    with pytest.raises(ValueError, match="one index per dimension"):
        normalize_target((0, 1), 4).select(out, 4)
    with pytest.raises(ValueError, match="one entry per example"):
        normalize_target([0, 1], 4)
    with pytest.raises(TypeError, match="must hold integers"):
        normalize_target(torch.tensor([0.5]), 4)
    with pytest.raises(ValueError, match="does not fit a batch"):
        normalize_target(torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="not understood"):
        normalize_target("cat", 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="single scalar for a batch"):
        normalize_target(None, 4).select(torch.tensor(1.0), 4)
    with pytest.raises(ValueError, match="dimension 0 of the output"):
        normalize_target(0, 4).select(torch.zeros(5, 3), 4)


def test_bad_target_raises_before_any_backward() -> None:
    model = MLP()
    calls = []
    model.fc3.register_full_backward_hook(lambda *a: calls.append(1))
    with pytest.raises(IndexError):
        IntegratedGradients(model).attribute(torch.randn(2, 6), target=7)
    with pytest.raises(ValueError):
        IntegratedGradients(model).attribute(torch.randn(2, 6), target=[0, 1, 2])
    assert calls == []


# --- batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 3, 10, 100])
def test_run_in_chunks_covers_every_row_once(chunk: int | None) -> None:
    spans = run_in_chunks(10, chunk, lambda s, e: (s, e))
    assert spans[0][0] == 0 and spans[-1][1] == 10
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    if chunk:
        assert all(e - s <= chunk for s, e in spans)


def test_auto_chunks_halve_on_out_of_memory() -> None:
    sizes = []

    def evaluate(start: int, end: int) -> int:
        sizes.append(end - start)
        if end - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return end - start

    assert sum(run_in_chunks(20, "auto", evaluate)) == 20
    assert sizes[:4] == [20, 10, 5, 2]
    with pytest.raises(torch.OutOfMemoryError):
        run_in_chunks(20, 8, evaluate)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "big", True])
def test_bad_chunk_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="internal_batch_size must be"):
        run_in_chunks(4, bad, lambda s, e: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="internal_batch_size must be"):
        IntegratedGradients(MLP()).attribute(torch.randn(2, 6), target=0, internal_batch_size=bad)


def test_non_oom_errors_are_not_retried() -> None:
    calls = []

    def evaluate(start: int, end: int) -> None:
        calls.append(1)
        raise ValueError("model bug")

    with pytest.raises(ValueError, match="model bug"):
        run_in_chunks(8, "auto", evaluate)
    assert len(calls) == 1


# --- hooks ------------------------------------------------------------------------------------


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_registered_removes_hooks_on_error() -> None:
    model = MLP()
    with (
        pytest.raises(RuntimeError, match="boom"),
        registered(
            lambda: model.fc1.register_forward_hook(lambda *a: None),
            lambda: model.fc2.register_forward_pre_hook(lambda *a: None),
        ),
    ):
        assert _hook_count(model) == 2
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_replace_outputs_and_route_gradient() -> None:
    relu = nn.ReLU(inplace=True)
    x = torch.tensor([[-1.0, 2.0, 3.0]], requires_grad=True)
    doubled = lambda x, y, g: 2 * g  # noqa: E731
    with replace_outputs({relu: lambda m, inp, out: route_gradient(inp, out, doubled)}):
        y = relu(x * 1.0)
    assert y.tolist() == [[0.0, 2.0, 3.0]]
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.tolist() == [[2.0, 2.0, 2.0]]
    assert relu._forward_hooks == {} and relu._forward_pre_hooks == {}


def test_replace_outputs_single_use_rejects_reuse() -> None:
    relu = nn.ReLU()
    with (
        pytest.raises(RuntimeError, match="more than once"),
        replace_outputs({relu: lambda m, x, y: y}, single_use="DeepLift"),
    ):
        relu(relu(torch.ones(1)))
    assert relu._forward_hooks == {}


# --- base classes -----------------------------------------------------------------------------


def test_get_name_and_flags() -> None:
    assert IntegratedGradients.get_name() == "Integrated Gradients"
    assert DeepLiftShap.get_name() == "Deep Lift Shap"
    assert LRP.get_name() == "L R P"  # Captum's rule: a space before every capital
    model = MLP()
    assert IntegratedGradients(model).has_convergence_delta()
    assert not Saliency(model).has_convergence_delta()
    assert IntegratedGradients(model).multiplies_by_inputs
    assert not IntegratedGradients(model, multiply_by_inputs=False).multiplies_by_inputs
    assert NoiseTunnel(DeepLift(model)).has_convergence_delta()
    with pytest.raises(NotImplementedError):
        Attribution(model).compute_convergence_delta(torch.zeros(1))
    with pytest.raises(TypeError, match="callable"):
        Attribution(3)  # type: ignore[arg-type]


def test_compute_convergence_delta_is_the_completeness_gap() -> None:
    model = nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    exact = model.weight * x  # attributions from a zero baseline, without the bias
    ig = GradientAttribution(model)
    delta = ig.compute_convergence_delta(exact, 0.0, x)
    assert torch.allclose(delta, torch.zeros(4, dtype=torch.float64), atol=1e-12)
    off = ig.compute_convergence_delta(exact + 0.25, 0.0, x)
    assert torch.allclose(off, torch.full((4,), 0.75, dtype=torch.float64))


def test_attribute_future_matches_attribute_and_carries_errors() -> None:
    model = MLP().double()
    x = torch.randn(3, 6, dtype=torch.float64)
    ig = IntegratedGradients(model)
    expected = ig.attribute(x, target=1, n_steps=20)
    got = ig.attribute_future(x, target=1, n_steps=20).wait()
    assert torch.allclose(got, expected, atol=1e-12)
    with pytest.raises(IndexError, match="out of range"):
        ig.attribute_future(x, target=9).wait()


def test_layer_attribution_interpolate() -> None:
    attr = torch.arange(4.0).reshape(1, 1, 2, 2)
    up = LayerAttribution.interpolate(attr, (4, 4))
    assert up.shape == (1, 1, 4, 4) and up[0, 0, 3, 3] == 3.0 and up[0, 0, 0, 1] == 0.0
    smooth = LayerAttribution.interpolate(attr, 4, "bilinear")
    assert smooth.shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="3-, 4- or 5-D"):
        LayerAttribution.interpolate(torch.zeros(2, 2), 4)
    model = MLP()
    layer = LayerAttribution(model, model.fc1, device_ids=[0])
    neuron = NeuronAttribution(model, model.fc2)
    assert layer.layer is model.fc1 and layer.device_ids == [0] and neuron.layer is model.fc2


def test_public_api_mirrors_captum_names() -> None:
    import llmattr
    import llmattr.attr

    for name in [
        "IntegratedGradients", "Saliency", "InputXGradient", "GradientShap", "DeepLift",
        "DeepLiftShap", "GuidedBackprop", "Deconvolution", "LRP", "NoiseTunnel",
        "EpsilonRule", "GammaRule", "Alpha1_Beta0_Rule", "IdentityRule",
    ]:  # fmt: skip
        assert getattr(llmattr, name) is getattr(llmattr.attr, name)


def test_inplace_module_keeps_the_models_aliasing() -> None:
    class Alias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.relu = nn.ReLU(inplace=True)
            self.out = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            r = self.relu(h)  # overwrites h: the model relies on it
            return self.out(r + h)

    model = Alias().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    b = torch.zeros_like(x)
    attrs, delta = DeepLift(model).attribute(x, b, return_convergence_delta=True)
    with torch.no_grad():
        true_gap = (model(x) - model(b)).reshape(-1)
    # the delta is computed against what the model really computes, so it is honest
    torch.testing.assert_close(delta, attrs.sum(1) - true_gap, atol=1e-12, rtol=0)


# --- error classes: what Captum users catch ---------------------------------------------------


def test_validation_errors_are_input_errors() -> None:
    """Captum validates with ``assert``; ours raise InputError (ValueError and AssertionError), and
    type errors stay TypeErrors too."""
    from llmattr._core.errors import InputError, InputTypeError, TargetIndexError

    x = torch.zeros(2, 3)
    bad_calls = [
        (lambda: format_inputs(()), InputError),
        (lambda: format_inputs((x, torch.zeros(3, 3))), InputError),
        (lambda: format_inputs(torch.tensor(1.0)), InputError),
        (lambda: format_inputs("x"), InputTypeError),  # type: ignore[arg-type]
        (lambda: format_baselines(torch.zeros(2, 4), (x,)), InputError),
        (lambda: format_baselines((0.0, 1.0), (x,)), InputError),
        (lambda: format_baselines("zero", (x,)), InputTypeError),  # type: ignore[arg-type]
        (lambda: format_baseline_distribution(torch.zeros(3, 4), (x,)), InputError),
        (
            lambda: format_baseline_distribution((torch.zeros(3, 3), torch.zeros(2, 3)), (x, x)),
            InputError,
        ),
        (lambda: normalize_target([0, 1, 2], 2), InputError),
        (lambda: normalize_target(torch.zeros(3, 3, 3, dtype=torch.long), 2), InputError),
        (lambda: normalize_target(1.5, 2), InputTypeError),  # type: ignore[arg-type]
        (lambda: run_in_chunks(4, 0, lambda s, e: None), InputError),
    ]
    for call, error in bad_calls:
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, AssertionError)
        if error is InputTypeError:
            assert isinstance(info.value, TypeError)
    with pytest.raises(TargetIndexError) as out_of_range:
        normalize_target(7, 2).select(torch.zeros(2, 3), 2)
    assert isinstance(out_of_range.value, IndexError)
    assert isinstance(out_of_range.value, RuntimeError)
