"""infidelity and infidelity_perturb_func_decorator: closed forms on linear models, brute
force, the scale convention, batch-size invariance, bad input, and parity with Captum 0.9."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP, Counting, Linear, TwoInputNet, TwoLinear

from llmattr import IntegratedGradients, Saliency
from llmattr._core.errors import InputError
from llmattr.metrics.infidelity import infidelity, infidelity_perturb_func_decorator

captum_metrics = pytest.importorskip("captum.metrics")
captum_attr = pytest.importorskip("captum.attr")


def noise_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = 0.1 * torch.randn_like(x)
    return noise, x - noise


def noise_pairs(inputs: tuple[torch.Tensor, torch.Tensor]):
    x1, x2 = inputs
    n1, n2 = 0.1 * torch.randn_like(x1), 0.2 * torch.randn_like(x2)
    return (n1, n2), (x1 - n1, x2 - n2)


@infidelity_perturb_func_decorator(True)
def scaled(x: torch.Tensor) -> torch.Tensor:
    return x * (1 + 0.3 * torch.randn_like(x))


@infidelity_perturb_func_decorator(True)
def dropped(x: torch.Tensor) -> torch.Tensor:
    return x * (torch.rand_like(x) < 0.5)


def brute(f, x, attr, perturbations, perturbed, normalize=False) -> torch.Tensor:
    """Per example, a plain loop over its perturbations."""
    n = perturbations.shape[0] // x.shape[0]
    f = torch.no_grad()(f)
    out = []
    for i in range(x.shape[0]):
        pred, eff = [], []
        for k in range(n):
            r = i * n + k
            pred.append(float((attr[i] * perturbations[r]).sum()))
            eff.append(float(f(x[i : i + 1])[0] - f(perturbed[r : r + 1])[0]))
        p, e = torch.tensor(pred, dtype=torch.float64), torch.tensor(eff, dtype=torch.float64)
        beta = (p * e).sum() / (p * p).sum() if normalize else 1.0
        out.append(((beta * p - e) ** 2).mean())
    return torch.stack(out)


@pytest.mark.parametrize("perturb", [scaled, dropped], ids=["scaled", "binary"])
def test_linear_exact_attribution_has_zero_infidelity(perturb):
    model = Linear(5).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    attr = x * model.w.detach()  # the exact attribution with a zero baseline
    value = infidelity(model, perturb, x, attr, n_perturb_samples=6)
    assert value.shape == (4,)
    assert value.abs().max() < 1e-20
    # a wrong attribution is not exact
    assert infidelity(model, perturb, x, attr.flip(1), n_perturb_samples=6).min() > 1e-6


def test_linear_local_attribution_has_zero_infidelity():
    """Saliency (the weights) against x - x' (multiply_by_inputs=False), two inputs."""
    model = TwoLinear(3, (2, 4)).double()
    x = (torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64))
    attr = Saliency(model).attribute(x, abs=False)

    @infidelity_perturb_func_decorator(False)
    def shifted(inputs):
        a, b = inputs
        return a + torch.randn_like(a), b - torch.randn_like(b)

    assert infidelity(model, shifted, x, attr, n_perturb_samples=5).abs().max() < 1e-20


def test_linear_with_baselines_exact():
    """IG of a linear model from a baseline, perturbations relative to (x - baseline)."""
    model = Linear(4).double()
    x, base = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    attr = (x - base) * model.w.detach()

    @infidelity_perturb_func_decorator(True)
    def toward(inputs, baselines):
        keep = torch.rand_like(inputs) < 0.5
        return torch.where(keep, inputs, baselines)

    value = infidelity(model, toward, x, attr, baselines=base, n_perturb_samples=8)
    assert value.abs().max() < 1e-20


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_brute_force(normalize):
    model = MLP().double()
    x = torch.randn(3, 6, dtype=torch.float64)
    attr = IntegratedGradients(model).attribute(x, target=2)
    n = 5
    torch.manual_seed(3)
    pert, perturbed = noise_pair(x.repeat_interleave(n, 0))

    def fixed(inputs):
        return pert, perturbed

    value = infidelity(model, fixed, x, attr, target=2, n_perturb_samples=n, normalize=normalize)
    expected = brute(lambda z: model(z)[:, 2], x, attr, pert, perturbed, normalize)
    assert torch.allclose(value, expected, rtol=0, atol=1e-12)


def test_scale_convention():
    """Without normalize, infidelity is quadratic in the attributions' scale; with it, invariant."""
    model = MLP().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    attr = IntegratedGradients(model).attribute(x, target=0)

    def at(scale: float, normalize: bool) -> torch.Tensor:
        torch.manual_seed(7)
        return infidelity(model, noise_pair, x, attr * scale, target=0, normalize=normalize)

    raw = [at(s, False) for s in (1.0, 2.0, 3.0, 10.0)]
    # q(s) = s^2 E[p^2] - 2 s E[p d] + E[d^2]: the quadratic through s = 1, 2, 3 gives s = 10
    assert torch.allclose(28 * raw[0] - 63 * raw[1] + 36 * raw[2], raw[3], rtol=1e-9, atol=0)
    assert (raw[3] > raw[0]).all()  # far from the right scale, the error grows
    norm = [at(s, True) for s in (1.0, 2.0, 0.1, 10.0)]
    for v in norm[1:]:
        assert torch.allclose(v, norm[0], rtol=1e-9, atol=0)
    assert (norm[0] <= raw[0] + 1e-15).all()  # the best scale is at least as good


@pytest.mark.parametrize("chunk", [1, 3, 7, 40, "auto"])
def test_chunking_does_not_change_the_value(chunk):
    model = TwoInputNet().double()
    x = (torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    scale = torch.rand(4, dtype=torch.float64) + 0.5
    attr = IntegratedGradients(model).attribute(
        x, target=[0, 1, 1, 0], additional_forward_args=(scale, 0.3)
    )
    kwargs = dict(additional_forward_args=(scale, 0.3), target=[0, 1, 1, 0], n_perturb_samples=5)
    torch.manual_seed(1)
    whole = infidelity(model, noise_pairs, x, attr, **kwargs)
    torch.manual_seed(1)
    calls = Counting(model)
    part = infidelity(calls, noise_pairs, x, attr, max_examples_per_batch=chunk, **kwargs)
    assert torch.allclose(whole, part, rtol=0, atol=1e-14)
    if isinstance(chunk, int):
        assert calls.calls == -(-24 // chunk)  # the 4 inputs and 20 perturbations, chunked
    else:
        torch.manual_seed(1)
        calls = Counting(model)
        infidelity(calls, noise_pairs, x, attr, **kwargs)
        assert calls.calls == 2  # the 4 inputs, then all 20 perturbations (rows never copied)


def test_nothing_mutated():
    model = TwoInputNet().double()
    x = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64))
    attr = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64))
    scale = torch.rand(3, dtype=torch.float64)
    base = (torch.randn(3, 4, dtype=torch.float64), 0.5)
    target = [1, 0, 1]
    saved = [t.clone() for t in (*x, *attr, scale, base[0])]

    def in_place(inputs, baselines):
        a, b = inputs
        a.add_(1.0)  # changes only the expanded copy
        return (torch.ones_like(a), torch.ones_like(b)), (a, b)

    infidelity(model, in_place, x, attr, base, (scale, 0.0), target, n_perturb_samples=1)
    for before, after in zip(saved, (*x, *attr, scale, base[0])):
        assert torch.equal(before, after)
    assert target == [1, 0, 1]


def bad_calls():
    x = torch.randn(3, 6)
    attr = torch.randn(3, 6)
    return {
        "shape": dict(inputs=x, attributions=torch.randn(3, 5)),
        "count": dict(inputs=x, attributions=(attr, attr)),
        "samples": dict(inputs=x, attributions=attr, n_perturb_samples=0),
        "chunk": dict(inputs=x, attributions=attr, max_examples_per_batch=0),
        "only perturbed": dict(inputs=x, attributions=attr, perturb_func=lambda z: z + 1),
        "triple": dict(inputs=x, attributions=attr, perturb_func=lambda z: (z, z, z)),
        "arity": dict(inputs=x, attributions=attr, perturb_func=lambda z: ((z, z), z)),
        "pert shape": dict(inputs=x, attributions=attr, perturb_func=lambda z: (z[:, :2], z)),
        "input shape": dict(inputs=x, attributions=attr, perturb_func=lambda z: (z, z[:1])),
        "decorated": dict(
            inputs=x,
            attributions=attr,
            perturb_func=infidelity_perturb_func_decorator(False)(lambda z: (z, z)),
        ),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
def test_bad_input_before_any_forward(case):
    kwargs = {"perturb_func": noise_pair, "target": 0, **bad_calls()[case]}
    model = Counting(MLP())
    with pytest.raises(InputError):
        infidelity(model, **kwargs)
    assert model.calls == 0


# ---- parity with Captum 0.9 (float64, same seeded perturbations) ------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_captum_parity_single_input(normalize):
    model = MLP().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    attr = captum_attr.IntegratedGradients(model).attribute(x, target=1)
    torch.manual_seed(11)
    ours = infidelity(model, noise_pair, x, attr, target=1, n_perturb_samples=7,
                      normalize=normalize)  # fmt: skip
    torch.manual_seed(11)
    theirs = captum_metrics.infidelity(model, noise_pair, x, attr, target=1, n_perturb_samples=7,
                                       normalize=normalize)  # fmt: skip
    assert ours.shape == theirs.shape == (5,)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("multiply", [True, False])
def test_captum_parity_tuple_inputs_baselines_decorator(multiply):
    model = TwoInputNet().double()
    x = (torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))
    base = (torch.randn(4, 4, dtype=torch.float64), 0.25)
    scale = torch.rand(4, dtype=torch.float64) + 0.5
    attr = captum_attr.IntegratedGradients(model).attribute(
        x, base, target=[0, 1, 1, 0], additional_forward_args=(scale, 0.1)
    )

    def perturb(inputs, baselines):
        a, b = inputs
        keep = torch.rand_like(a) < 0.6
        return torch.where(keep, a, baselines[0]), b + 0.1 * torch.randn_like(b)

    def run(fn, **extra):
        torch.manual_seed(5)
        return fn(model, perturb_ours if fn is infidelity else perturb_captum, x, attr, base,
                  (scale, 0.1), [0, 1, 1, 0], 6, **extra)  # fmt: skip

    perturb_ours = infidelity_perturb_func_decorator(multiply)(perturb)
    perturb_captum = captum_metrics.infidelity_perturb_func_decorator(multiply)(perturb)
    ours, theirs = run(infidelity), run(captum_metrics.infidelity)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-15)


def test_captum_parity_chunked_deterministic_perturbation():
    """Captum calls perturb_func once per chunk; with a deterministic one the chunked values
    must agree too."""
    model = MLP().double()
    x = torch.randn(3, 6, dtype=torch.float64)
    attr = torch.randn(3, 6, dtype=torch.float64)

    def fixed(inputs):
        pert = 0.05 * torch.sin(inputs * 3.0)
        return pert, inputs - pert

    for chunk in (3, 6, 9):
        kw = dict(target=2, n_perturb_samples=4, max_examples_per_batch=chunk, normalize=True)
        ours = infidelity(model, fixed, x, attr, **kw)
        theirs = captum_metrics.infidelity(model, fixed, x, attr, **kw)
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-15)


def test_one_input_in_a_tuple_reaches_perturb_func_bare_as_in_captum():
    model = Linear(3).double()
    x = (torch.randn(4, 3, dtype=torch.float64),)
    attr = (torch.randn(4, 3, dtype=torch.float64),)

    def perturb(inp):
        assert isinstance(inp, torch.Tensor)
        noise = 0.1 * torch.cos(torch.arange(inp.numel(), dtype=inp.dtype)).reshape(inp.shape)
        return noise, inp - noise

    ours = infidelity(model, perturb, x, attr, n_perturb_samples=3)
    theirs = captum_metrics.infidelity(model, perturb, x, attr, n_perturb_samples=3)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
