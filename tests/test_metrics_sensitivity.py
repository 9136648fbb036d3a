"""sensitivity_max and default_perturb_func: closed forms, brute force, batch-size
invariance, keyword expansion, bad input, and parity with Captum 0.9."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP, Linear, TwoInputNet

from llmattr import FeatureAblation, IntegratedGradients, Saliency
from llmattr._core.errors import InputError
from llmattr.metrics.sensitivity import default_perturb_func, sensitivity_max

captum_metrics = pytest.importorskip("captum.metrics")
captum_attr = pytest.importorskip("captum.attr")


def gaussian(inputs, perturb_radius):
    return (
        tuple(x + perturb_radius * torch.randn_like(x) for x in inputs)
        if isinstance(inputs, tuple)
        else inputs + perturb_radius * torch.randn_like(inputs)
    )


def test_default_perturb_func_range_dtype_and_form():
    x = torch.randn(50, 40, dtype=torch.float64)
    (y,) = default_perturb_func(x, 0.3)
    assert y.dtype == torch.float64 and y.shape == x.shape
    d = y - x
    assert d.abs().max() <= 0.3 and d.abs().max() > 0.25 and abs(float(d.mean())) < 0.02
    a, b = default_perturb_func((x, x[:, :3]))
    assert (a - x).abs().max() <= 0.02 and b.shape == (50, 3)


def _bare(z):
    """The one input: Captum's contract passes the inputs as a tuple and perturbed rows in the
    form ``perturb_func`` returned them (a bare tensor here)."""
    return z[0] if isinstance(z, tuple) else z


def test_constant_explanation_has_zero_sensitivity():
    model = Linear(5).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    sal = Saliency(model)  # the gradient of a linear model is its weights, everywhere
    value = sensitivity_max(sal.attribute, x, perturb_radius=0.5, abs=False)
    assert value.shape == (4,) and torch.equal(value, torch.zeros(4, dtype=torch.float64))
    zero = sensitivity_max(lambda z: torch.zeros_like(_bare(z)), x)  # a zero explanation: 0 / 1
    assert torch.equal(zero, torch.zeros(4, dtype=torch.float64))


def test_matches_brute_force_and_closed_form():
    """expl(x) = x * x with x' = x + r (one shift per sample): brute force per example."""
    x = torch.randn(3, 4, dtype=torch.float64)
    n = 4
    shifts = torch.linspace(-0.2, 0.3, n, dtype=torch.float64)

    def perturb(inputs):
        return inputs + shifts.repeat(inputs.shape[0] // n).unsqueeze(1)

    for ord_ in ("fro", 1, float("inf")):
        value = sensitivity_max(
            lambda z: _bare(z) ** 2, x, perturb, n_perturb_samples=n, norm_ord=ord_
        )
        p = 2 if ord_ == "fro" else ord_
        expected = torch.stack([
            max(
                torch.linalg.vector_norm((x[i] + s) ** 2 - x[i] ** 2, p)
                / torch.linalg.vector_norm(x[i] ** 2, p)
                for s in shifts
            )
            for i in range(3)
        ])  # fmt: skip
        assert torch.allclose(value, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("chunk", [1, 4, 11, "auto"])
def test_chunking_and_kwarg_expansion(chunk):
    model = TwoInputNet().double()
    x = (torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    base = (torch.randn(4, 4, dtype=torch.float64), 0.1)
    scale = torch.rand(4, dtype=torch.float64) + 0.5
    kwargs = dict(baselines=base, target=[0, 1, 1, 0], additional_forward_args=(scale, 0.2))
    saved = [t.clone() for t in (*x, base[0], scale)]
    ig = IntegratedGradients(model)
    torch.manual_seed(2)
    whole = sensitivity_max(ig.attribute, x, n_perturb_samples=6, n_steps=8, **kwargs)
    torch.manual_seed(2)
    part = sensitivity_max(ig.attribute, x, n_perturb_samples=6, n_steps=8,
                           max_examples_per_batch=chunk, **kwargs)  # fmt: skip
    assert torch.allclose(whole, part, rtol=1e-12, atol=1e-14)
    assert kwargs["target"] == [0, 1, 1, 0] and kwargs["baselines"][1] == 0.1
    for before, after in zip(saved, (*x, base[0], scale)):
        assert torch.equal(before, after)


def test_per_example_feature_mask_follows_its_example():
    model = MLP().double()
    x = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.stack(
        [torch.arange(6) // 2, torch.arange(6) % 3, torch.zeros(6, dtype=torch.long)]
    )
    fa = FeatureAblation(model)

    def by_sample(inputs):  # sample k of every example shifts it by 0.1 k
        k = torch.arange(inputs.shape[0], dtype=inputs.dtype) % 3
        return inputs + 0.1 * (k + 1).unsqueeze(1)

    kw = dict(n_perturb_samples=3, target=1)
    value = sensitivity_max(fa.attribute, x, by_sample, feature_mask=mask,
                            max_examples_per_batch=2, **kw)  # fmt: skip
    one = torch.cat([
        sensitivity_max(fa.attribute, x[i : i + 1], by_sample, feature_mask=mask[i : i + 1], **kw)
        for i in range(3)
    ])  # fmt: skip
    assert value.shape == (3,) and torch.allclose(value, one, rtol=1e-12, atol=0)
    shared = sensitivity_max(fa.attribute, x, by_sample, feature_mask=mask[2:], **kw)
    assert not torch.allclose(value[:2], shared[:2])  # the masks matter


class Calls:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, **kwargs):
        self.calls += 1
        return x


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(perturb_radius=-0.1),
        dict(n_perturb_samples=0),
        dict(max_examples_per_batch=-2),
        dict(perturb_func=lambda z: z[:, :2]),
        dict(perturb_func=lambda z: (z, z)),
        dict(perturb_func=lambda z, r: z[:1]),
    ],
    ids=["radius", "samples", "chunk", "shape", "arity", "rows"],
)
def test_bad_input_before_any_explanation(kwargs):
    explain = Calls()
    with pytest.raises(InputError):
        sensitivity_max(explain, torch.randn(3, 5), **kwargs)
    assert explain.calls == 0


# ---- parity with Captum 0.9 --------------------------------------------------------------------


def test_captum_parity_float64_same_explanation():
    model = MLP().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    ig = captum_attr.IntegratedGradients(model)
    for target in (1, [0, 1, 2, 1, 0]):
        torch.manual_seed(4)
        ours = sensitivity_max(ig.attribute, x, gaussian, 0.05, 7, target=target, n_steps=10)
        torch.manual_seed(4)
        theirs = captum_metrics.sensitivity_max(ig.attribute, x, gaussian, 0.05, 7,
                                                target=target, n_steps=10)  # fmt: skip
        assert ours.shape == theirs.shape == (5,)
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=0)


def test_llmattr_explanations_match_captum_ones():
    """llmattr's IG as the explanation, against Captum's sensitivity_max of Captum's IG."""
    model = TwoInputNet().double()
    x = (torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    scale = torch.rand(4, dtype=torch.float64) + 0.5
    kw = dict(target=[1, 0, 0, 1], additional_forward_args=(scale, 0.0), n_steps=20)
    torch.manual_seed(9)
    ours = sensitivity_max(IntegratedGradients(model).attribute, x, gaussian, 0.1, 5, **kw)
    torch.manual_seed(9)
    theirs = captum_metrics.sensitivity_max(
        captum_attr.IntegratedGradients(model).attribute, x, gaussian, 0.1, 5, **kw
    )
    assert torch.allclose(ours, theirs, rtol=1e-7, atol=1e-12)


def test_captum_parity_default_perturbation_float32():
    """Captum draws its default noise in float32 on the CPU: the same draws as ours there."""
    model = MLP()
    x = torch.randn(4, 6)
    sal_c, sal_m = captum_attr.Saliency(model), Saliency(model)
    torch.manual_seed(6)
    ours = sensitivity_max(sal_m.attribute, x, target=2)
    torch.manual_seed(6)
    with pytest.warns(UserWarning):  # Captum: "Input Tensor 0 did not already require gradients"
        theirs = captum_metrics.sensitivity_max(sal_c.attribute, x, target=2)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_explanation_gets_captums_forms():
    """A 1-tuple for the inputs; perturbed rows as perturb_func returned them; a bare tensor to
    perturb_func for one input — what Captum does, checked against Captum itself."""
    import captum.metrics as captum_metrics

    w = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64)  # batch == features: a wrong form would not fail
    seen = []

    def expl(inputs):
        seen.append(type(inputs).__name__)
        return tuple(torch.tanh(i @ w) for i in inputs)

    def perturb(inp, radius):
        assert isinstance(inp, torch.Tensor)
        return (inp + radius * torch.sin(torch.arange(inp.numel(), dtype=inp.dtype)).reshape(
            inp.shape),)  # fmt: skip

    ours = sensitivity_max(expl, x, perturb, n_perturb_samples=1)
    theirs = captum_metrics.sensitivity_max(expl, x, perturb, n_perturb_samples=1)
    assert seen == ["tuple", "tuple", "tuple", "tuple"]
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
    with pytest.raises(InputError, match="norm_ord"):
        sensitivity_max(expl, x, perturb, norm_ord="nuc")
