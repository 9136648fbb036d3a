"""NoiseTunnel: SmoothGrad, SmoothGrad² and VarGrad around IntegratedGradients, Saliency,
InputXGradient, GradientShap and DeepLift; noise layout and statistics, partitions, deltas,
baselines drawn from a distribution, and errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import MLP, Linear, TwoInputNet, rand, tol

from llmattr import (
    Attribution,
    DeepLift,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)

F64 = torch.float64


class Recorder(Attribution):
    """An "attribution" equal to its inputs, recording what NoiseTunnel hands the method."""

    def __init__(self) -> None:
        super().__init__(lambda *a: a[0].sum(1))
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def attribute(self, inputs: Any, **kwargs: Any) -> Any:
        self.calls.append((inputs, kwargs))
        return tuple(t.clone() for t in inputs) if isinstance(inputs, tuple) else inputs.clone()


def close(a: Any, b: Any, atol: float = 1e-12) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(close(x, y, atol) for x, y in zip(a, b))
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=atol)


# --- without noise: the wrapped method, squared, zero variance ----------------------------------


def _method(name: str) -> tuple[Any, dict[str, Any]]:
    mlp = MLP().to(F64)
    b = rand(1, 6)
    if name == "saliency":
        return Saliency(mlp), dict(target=1, abs=False)
    if name == "ixg":
        return InputXGradient(mlp), dict(target=0)
    if name == "ig":
        return IntegratedGradients(mlp), dict(target=2, baselines=b, n_steps=8)
    if name == "deeplift":
        return DeepLift(mlp), dict(target=1, baselines=b)
    return GradientShap(Linear(6).to(F64)), dict(baselines=b, n_samples=3)


@pytest.mark.parametrize("name", ["saliency", "ixg", "ig", "deeplift", "gradshap"])
def test_zero_noise_gives_the_method_its_square_and_no_variance(name: str) -> None:
    method, kw = _method(name)
    x = rand(3, 6)
    plain = method.attribute(x, **kw)
    nt = NoiseTunnel(method)
    sg = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, **kw)
    sq = nt.attribute(x, nt_type="smoothgrad_sq", nt_samples=4, stdevs=0.0, **kw)
    vg = nt.attribute(x, nt_type="vargrad", nt_samples=4, stdevs=0.0, **kw)
    assert close(sg, plain) and close(sq, plain**2)
    assert close(vg, torch.zeros_like(plain))
    assert (plain.abs() > 1e-6).any()  # a non-trivial comparison


def test_zero_noise_with_two_inputs_per_example_targets_and_args() -> None:
    net = TwoInputNet().to(F64)
    x1, x2 = rand(4, 4), rand(4, 3)
    b = (rand(4, 4), 0.5)  # a per-example baseline for input 0, a number for input 1
    kw = dict(baselines=b, target=[1, 0, 0, 1], additional_forward_args=(rand(4), 2.0), n_steps=6)
    ig = IntegratedGradients(net)
    plain = ig.attribute((x1, x2), **kw)
    out = NoiseTunnel(ig).attribute((x1, x2), nt_samples=3, stdevs=0.0, **kw)
    assert isinstance(out, tuple) and close(out, plain)


def test_baseline_broadcast_over_the_batch_is_not_taken_per_example() -> None:
    # a (features,) baseline broadcasts over the examples, even when features == batch size
    model = Linear(3).to(F64)
    x, b = rand(3, 3), rand(3)
    ig = IntegratedGradients(model)
    out = NoiseTunnel(ig).attribute(x, nt_samples=2, stdevs=0.0, baselines=b, n_steps=2)
    assert close(out, model.w.detach() * (x - b))
    per_example = rand(3, 3)
    out = NoiseTunnel(ig).attribute(x, nt_samples=2, stdevs=0.0, baselines=per_example)
    assert close(out, model.w.detach() * (x - per_example))


# --- with noise -----------------------------------------------------------------------------------


def test_linear_model_saliency_is_noise_free() -> None:
    model = Linear(5).to(F64)
    w = model.w.detach()
    x = rand(3, 5)
    nt = NoiseTunnel(Saliency(model))
    sg = nt.attribute(x, nt_type="smoothgrad", nt_samples=6, stdevs=2.0)
    sq = nt.attribute(x, nt_type="smoothgrad_sq", nt_samples=6, stdevs=2.0)
    vg = nt.attribute(x, nt_type="vargrad", nt_samples=6, stdevs=2.0)
    assert close(sg, w.abs().expand(3, 5)) and close(sq, (w**2).expand(3, 5))
    assert close(vg, torch.zeros(3, 5, dtype=F64))


def test_combinations_of_the_noisy_attributions() -> None:
    """With an identity "attribution", the three nt_types are the mean, the mean square and the
    variance of the noisy copies NoiseTunnel hands the method (copy s of example i at i·k + s)."""
    x = 10 * torch.arange(3, dtype=F64)[:, None] + rand(3, 4) * 0.01
    k, sd = 5, 0.5
    rec = Recorder()
    out = {}
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        torch.manual_seed(7)
        out[nt_type] = NoiseTunnel(rec).attribute(x, nt_type=nt_type, nt_samples=k, stdevs=sd)
    rows = [c[0] for c in rec.calls]
    assert all(torch.equal(r, rows[0]) for r in rows)  # same seed, same noise
    noisy = rows[0].reshape(3, k, 4)
    # every copy sits with its example (the examples are 10 apart, the noise is ~0.5)
    assert ((noisy - x[:, None]).abs() < 4).all()
    assert close(out["smoothgrad"], noisy.mean(1))
    assert close(out["smoothgrad_sq"], (noisy**2).mean(1), atol=1e-10)
    assert close(out["vargrad"], noisy.var(1, unbiased=False), atol=1e-10)


def test_smoothgrad_sq_is_vargrad_plus_squared_smoothgrad() -> None:
    mlp = MLP().to(F64)
    x = rand(3, 6)
    nt = NoiseTunnel(Saliency(mlp))
    res = {}
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        torch.manual_seed(4)
        res[nt_type] = nt.attribute(x, nt_type=nt_type, nt_samples=6, stdevs=0.4, target=0)
    assert close(res["smoothgrad_sq"], res["vargrad"] + res["smoothgrad"] ** 2, atol=1e-12)
    assert (res["vargrad"] > 1e-8).any()  # the ReLU gradients really vary with the noise
    assert (res["vargrad"] >= -1e-12).all()


def test_noise_is_gaussian_with_the_requested_stdevs_per_input() -> None:
    x1, x2 = rand(4, 6), rand(4, 2, 3)
    rec = Recorder()
    n = 300
    NoiseTunnel(rec).attribute((x1, x2), nt_samples=n, stdevs=(0.2, 3.0))
    (n1, n2), _ = rec.calls[0]
    e1 = n1.reshape(4, n, 6) - x1[:, None]
    e2 = n2.reshape(4, n, 2, 3) - x2[:, None]
    for e, sd in ((e1, 0.2), (e2, 3.0)):
        assert abs(float(e.std()) / sd - 1) < 0.05
        assert abs(float(e.mean())) < 4 * sd / e.numel() ** 0.5
    # independent draws: the noise of two inputs (and of two copies) is uncorrelated
    corr = torch.corrcoef(torch.stack([e1[..., 0].flatten(), e2[..., 0, 0].flatten()]))[0, 1]
    assert abs(float(corr)) < 0.1


def test_vargrad_of_input_x_gradient_on_a_linear_model_estimates_the_noise_variance() -> None:
    model = Linear(8).to(F64)
    w = model.w.detach()
    x = rand(3, 8)
    n, sd = 400, 0.5
    vg = NoiseTunnel(InputXGradient(model)).attribute(x, nt_type="vargrad", nt_samples=n, stdevs=sd)
    # InputXGradient = w (x + ε): its variance over copies is w² var(ε) ≈ w² sd²
    ratio = vg / (w**2 * sd**2)
    assert abs(float(ratio.mean()) - 1) < 0.05


@pytest.mark.parametrize("per_batch", [1, 2, 3, 5, None])
def test_partitions_do_not_change_results(per_batch: int | None) -> None:
    mlp = MLP().to(F64)
    x, b = rand(3, 6), rand(3, 6)
    kw = dict(
        nt_type="vargrad", nt_samples=5, stdevs=0.3, target=[0, 2, 1], baselines=b, n_steps=6,
        return_convergence_delta=True,
    )  # fmt: skip
    nt = NoiseTunnel(IntegratedGradients(mlp))
    torch.manual_seed(9)
    ref, ref_delta = nt.attribute(x, **kw)
    torch.manual_seed(9)
    out, delta = nt.attribute(x, nt_samples_batch_size=per_batch, **kw)
    assert close(out, ref) and close(delta, ref_delta)
    torch.manual_seed(9)
    sal = NoiseTunnel(Saliency(mlp)).attribute(
        x, nt_samples=5, nt_samples_batch_size=per_batch, stdevs=0.3, target=1
    )
    torch.manual_seed(9)
    sal_ref = NoiseTunnel(Saliency(mlp)).attribute(x, nt_samples=5, stdevs=0.3, target=1)
    assert close(sal, sal_ref)


def test_reproducible_under_manual_seed() -> None:
    mlp = MLP().to(F64)
    x = rand(2, 6)
    nt = NoiseTunnel(Saliency(mlp))
    torch.manual_seed(1)
    a = nt.attribute(x, nt_samples=4, stdevs=0.5, target=0)
    torch.manual_seed(1)
    b = nt.attribute(x, nt_samples=4, stdevs=0.5, target=0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, nt.attribute(x, nt_samples=4, stdevs=0.5, target=0))


# --- deltas ---------------------------------------------------------------------------------------


def test_integrated_gradients_delta_per_noisy_copy() -> None:
    mlp = MLP().to(F64)
    x, b = rand(3, 6), rand(1, 6)
    ig = IntegratedGradients(mlp)
    _, plain_delta = ig.attribute(x, b, target=1, n_steps=5, return_convergence_delta=True)
    nt = NoiseTunnel(ig)
    assert nt.has_convergence_delta()
    _, delta = nt.attribute(
        x, nt_samples=4, stdevs=0.0, baselines=b, target=1, n_steps=5,
        return_convergence_delta=True,
    )  # fmt: skip
    assert delta.shape == (3 * 4,)
    # example-major: copies 0..3 of example i at 4i..4i+3, each with example i's gap
    assert close(delta, plain_delta.repeat_interleave(4))
    assert (plain_delta.abs() > 1e-6).any()


def test_delta_with_noise_is_each_copys_completeness_gap() -> None:
    model = Linear(4).to(F64)
    x = rand(2, 4)
    _, delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_samples=3, stdevs=1.0, n_steps=4, return_convergence_delta=True
    )
    assert delta.shape == (6,) and delta.abs().max() < 1e-12


def test_gradient_shap_delta_has_one_entry_per_draw() -> None:
    model = Linear(4).to(F64)
    x, dist = rand(2, 4), rand(3, 4)
    out, delta = NoiseTunnel(GradientShap(model)).attribute(
        x, nt_samples=3, stdevs=0.1, baselines=dist, n_samples=5, return_convergence_delta=True
    )
    assert delta.shape == (2 * 3 * 5,) and delta.abs().max() < 1e-12
    assert out.shape == x.shape


def test_deeplift_with_noise_is_complete_for_every_copy() -> None:
    mlp = MLP().to(F64)
    x = rand(3, 6)
    nt = NoiseTunnel(DeepLift(mlp))
    out, delta = nt.attribute(
        x, nt_samples=4, stdevs=0.5, target=2, baselines=0.1, return_convergence_delta=True
    )
    assert out.shape == x.shape and delta.shape == (12,)
    assert delta.abs().max() < 1e-10


def test_delta_refused_for_a_method_without_one() -> None:
    nt = NoiseTunnel(Saliency(MLP()))
    assert not nt.has_convergence_delta()
    with pytest.raises(ValueError, match="Saliency has no convergence delta"):
        nt.attribute(torch.randn(2, 6), target=0, return_convergence_delta=True)


# --- baselines drawn from a distribution ---------------------------------------------------------


def test_draw_baseline_from_distribution() -> None:
    """Each noisy copy gets one row of the distribution (decodable here: row j is 10^j, and
    each feature/input uses the same row); smoothgrad of IG on a linear model is then
    w · (x − mean of the drawn rows)."""
    model = Linear(2).to(F64)
    w = model.w.detach()
    k, n_b, batch = 6, 4, 5
    powers = 10.0 ** torch.arange(n_b, dtype=F64)
    dist = torch.stack([powers, -2 * powers], 1)
    x = rand(batch, 2)
    ig = IntegratedGradients(model)
    for baselines in (dist, lambda: dist):
        torch.manual_seed(3)
        out = NoiseTunnel(ig).attribute(
            x, nt_samples=k, stdevs=0.0, baselines=baselines, draw_baseline_from_distrib=True,
            n_steps=2,
        )  # fmt: skip
        sums = (x - out / w) * k
        counts = []
        for i in range(batch):
            total = round(float(sums[i, 0]))
            assert abs(float(sums[i, 0]) - total) < 1e-8
            c = [(total // 10**j) % 10 for j in range(n_b)]
            assert sum(c) == k
            counts.append(tuple(c))
            assert abs(float(sums[i, 1]) + 2 * total) < 1e-8
        assert len(set(counts)) > 1


def test_draw_baseline_partitions_do_not_change_draws() -> None:
    mlp = MLP().to(F64)
    x, dist = rand(3, 6), rand(4, 6)
    nt = NoiseTunnel(IntegratedGradients(mlp))
    kw = dict(nt_samples=5, stdevs=0.2, baselines=dist, draw_baseline_from_distrib=True, target=0)
    torch.manual_seed(8)
    ref = nt.attribute(x, n_steps=4, **kw)
    torch.manual_seed(8)
    out = nt.attribute(x, n_steps=4, nt_samples_batch_size=2, **kw)
    assert close(out, ref)


def test_draw_baseline_needs_baselines() -> None:
    with pytest.raises(ValueError, match="draw_baseline_from_distrib=True needs baselines"):
        NoiseTunnel(IntegratedGradients(MLP())).attribute(
            torch.randn(2, 6), target=0, draw_baseline_from_distrib=True
        )


# --- form, hygiene, dtype, device ---------------------------------------------------------------


def test_tensor_and_tuple_forms_and_flags() -> None:
    mlp = MLP().to(F64)
    x = rand(2, 6)
    nt = NoiseTunnel(IntegratedGradients(mlp, multiply_by_inputs=False))
    assert not nt.multiplies_by_inputs
    assert NoiseTunnel(InputXGradient(mlp)).multiplies_by_inputs
    t = nt.attribute(x, stdevs=0.0, target=0, n_steps=4)
    tup = nt.attribute((x,), stdevs=0.0, target=0, n_steps=4)
    assert isinstance(t, torch.Tensor) and isinstance(tup, tuple) and len(tup) == 1
    assert close(tup[0], t)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_inputs_untouched_and_no_parameter_grads(requires_grad: bool) -> None:
    mlp = MLP().to(F64)
    x = rand(2, 6).requires_grad_(requires_grad)
    before = x.detach().clone()
    NoiseTunnel(IntegratedGradients(mlp)).attribute(
        x, nt_samples=3, stdevs=0.5, target=1, n_steps=4, return_convergence_delta=True
    )
    assert torch.equal(x.detach(), before)
    assert x.requires_grad is requires_grad and x.grad is None
    assert all(p.grad is None for p in mlp.parameters())


def test_dtype_and_device(dtype: torch.dtype, device: str) -> None:
    model = Linear(5).to(device=device, dtype=dtype)
    x = torch.randn(3, 5, dtype=dtype, device=device)
    out = NoiseTunnel(Saliency(model)).attribute(x, nt_samples=3, stdevs=1.0)
    assert out.dtype == dtype and out.device.type == device
    assert torch.allclose(out, model.w.detach().abs().expand(3, 5), rtol=0, atol=tol(dtype))
    ig_out, delta = NoiseTunnel(IntegratedGradients(model)).attribute(
        x, nt_samples=2, stdevs=0.0, n_steps=3, return_convergence_delta=True
    )
    assert torch.allclose(ig_out, model.w.detach() * x, rtol=0, atol=tol(dtype))
    assert delta.device.type == device and delta.shape == (6,)


# --- errors -------------------------------------------------------------------------------------


def test_bad_nt_type() -> None:
    nt = NoiseTunnel(Saliency(MLP()))
    with pytest.raises(ValueError, match=r"nt_type must be one of.*'smoothgrad_squared'"):
        nt.attribute(torch.randn(2, 6), nt_type="smoothgrad_squared", target=0)


def test_integer_inputs() -> None:
    nt = NoiseTunnel(Saliency(lambda z: z.float().sum(1)))
    with pytest.raises(TypeError, match=r"input 0 has dtype torch\.int64; pass float inputs"):
        nt.attribute(torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        (dict(nt_samples=0), "nt_samples must be a positive int"),
        (dict(nt_samples=2.0), "nt_samples must be a positive int"),
        (dict(nt_samples_batch_size=0), "nt_samples_batch_size must be a positive int"),
        (dict(stdevs=-1.0), "stdevs must be non-negative"),
        (dict(stdevs=(0.1, 0.2)), "Got 2 stdevs for 1 inputs"),
    ],
)
def test_bad_arguments(kw: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        NoiseTunnel(Saliency(MLP())).attribute(torch.randn(2, 6), target=0, **kw)


def test_wraps_only_attribution_methods() -> None:
    with pytest.raises(TypeError, match=r"NoiseTunnel wraps an attribution method instance"):
        NoiseTunnel(MLP())  # type: ignore[arg-type]
