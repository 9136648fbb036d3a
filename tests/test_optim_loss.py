"""llmattr.optim losses, hooks and InputOptimization: closed forms on hand-set activations,
composition arithmetic, target resolution, error messages, hook cleanup and a real optimization."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Boom, assert_no_hooks
from torch import nn

from llmattr._core.errors import InputError, InputTypeError
from llmattr.optim import directions as D
from llmattr.optim import loss as L
from llmattr.optim.layers import (
    ModuleOutputsHook,
    collect_activations,
    get_model_layers,
    resolve_target,
)
from llmattr.optim.optimization import (
    InputOptimization,
    NonFiniteLossError,
    early_stopping,
    n_steps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyCNN(nn.Module):
    """features: Conv(3→4) → ReLU → Conv(4→5) → ReLU; head: pool → Linear(5→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


M = nn.Identity()  # a stand-in target: the losses only look activations up by key


def acts(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=dtype).reshape(shape).sin() * 3


def run(loss: L.Loss, a: torch.Tensor) -> torch.Tensor:
    return loss({M: a})


# ---- each loss on a hand-set activation -------------------------------------------------------


def test_layer_channel_neuron(dtype: torch.dtype) -> None:
    a = acts((2, 3, 4, 5), dtype)
    assert torch.equal(run(L.LayerActivation(M), a), a)
    assert torch.equal(run(L.LayerActivation(M, batch_index=1), a), a[1:2])
    assert torch.equal(run(L.ChannelActivation(M, 2), a), a[:, 2])
    assert torch.equal(run(L.ChannelActivation(M, 1, batch_index=0), a), a[0:1, 1])
    # centre: row H // 2 = 2, column W // 2 = 2; x is the column, y the row
    assert torch.equal(run(L.NeuronActivation(M, 1), a), a[:, 1, 2:3, 2:3])
    assert torch.equal(run(L.NeuronActivation(M, 0, x=4, y=1), a), a[:, 0, 1:2, 4:5])
    assert run(L.NeuronActivation(M, 0), a).dtype == dtype


def test_deepdream_tv_l1_l2(dtype: torch.dtype) -> None:
    a = acts((2, 3, 4, 5), dtype)
    assert torch.equal(run(L.DeepDream(M), a), a * a)
    tv = sum(
        abs(float(a[n, c, i + 1, j] - a[n, c, i, j]))
        for n in range(2) for c in range(3) for i in range(3) for j in range(5)
    ) + sum(
        abs(float(a[n, c, i, j + 1] - a[n, c, i, j]))
        for n in range(2) for c in range(3) for i in range(4) for j in range(4)
    )  # fmt: skip
    assert float(run(L.TotalVariation(M), a)) == pytest.approx(tv, rel=1e-6)
    flat = a.flatten().tolist()
    assert float(run(L.L1(M, constant=0.5), a)) == pytest.approx(
        sum(abs(v - 0.5) for v in flat), rel=1e-6
    )
    l2 = math.sqrt(1e-6 + sum((v + 1.0) ** 2 for v in flat))
    assert float(run(L.L2(M, constant=-1.0), a)) == pytest.approx(l2, rel=1e-6)
    assert float(run(L.L1(M, batch_index=1), a)) == pytest.approx(float(a[1].abs().sum()), 1e-6)


def test_diversity_closed_form() -> None:
    # two examples whose Gram matrices are orthogonal → 0; identical → -(N-1) per example pair
    a = torch.zeros(2, 2, 1, 1, dtype=torch.float64)
    a[0, 0], a[1, 1] = 1.0, 2.0
    assert float(run(L.Diversity(M), a)) == 0.0
    b = acts((3, 4, 2, 2))
    same = b[:1].expand(3, -1, -1, -1)
    assert float(run(L.Diversity(M), same)) == pytest.approx(-(3 * 2) / 3)
    # general case against a loop
    grams = [(x.reshape(4, -1) @ x.reshape(4, -1).T) for x in b]
    grams = [g / g.norm() for g in grams]
    ref = -sum(float((grams[i] * grams[j]).sum()) for i in range(3) for j in range(3) if i != j) / 3
    assert float(run(L.Diversity(M), b)) == pytest.approx(ref, rel=1e-9)


def test_interpolation_and_alignment() -> None:
    a1, a2 = acts((3, 2, 2, 2)), acts((3, 2, 2, 2)).cos()
    m1, m2 = nn.Identity(), nn.Identity()
    got = L.ActivationInterpolation(m1, 1, m2, -1)({m1: a1, m2: a2})
    w = [0.0, 0.5, 1.0]
    ref = sum((1 - w[n]) * float(a1[n, 1].mean()) + w[n] * float(a2[n].mean()) for n in range(3))
    assert float(got) == pytest.approx(ref, rel=1e-9)
    assert L.ActivationInterpolation(m1, 0, m2, 0).target == [m1, m2]
    with pytest.raises(InputError, match="at least 2"):
        L.ActivationInterpolation(m1, 0, m2, 0)({m1: a1[:1], m2: a2[:1]})
    b = acts((6, 2, 3, 3))
    ref = -sum(
        float(((b[i] - b[i + d]) ** 2).mean()) / 3.0**d for d in range(1, 5) for i in range(6 - d)
    )
    assert float(run(L.Alignment(M, decay_ratio=3.0), b)) == pytest.approx(ref, rel=1e-9)


def test_directions() -> None:
    a = acts((2, 3, 4, 4))
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    dot = (a * v.reshape(1, 3, 1, 1)).sum(1)
    assert torch.allclose(run(D.Direction(M, v), a), dot)
    cos = torch.cosine_similarity(a, v.reshape(1, 3, 1, 1), dim=1)
    got = run(D.Direction(M, v, cossim_pow=2.0), a)
    assert torch.allclose(got, dot * cos.clamp(min=0.1) ** 2)
    # on a linear layer's (N, C) activation
    lin = acts((4, 3))
    assert torch.allclose(run(D.Direction(M, v), lin), lin @ v)
    assert torch.allclose(run(D.NeuronDirection(M, v, x=1, y=3), a), dot[:, 3:4, 1:2])
    assert torch.allclose(run(D.NeuronDirection(M, v), a), dot[:, 2:3, 2:3])
    # AngledNeuronDirection: cossim_pow 0 is the elementwise product at the centre
    centre = a[:, :, 2, 2]
    assert torch.allclose(run(D.AngledNeuronDirection(M, v, cossim_pow=0), a), centre * v)
    d = float((centre * v).mean())
    c = d / (1e-4 + float(centre.pow(2).sum().sqrt()))
    ref = d * max(c, 0.1) ** 4
    assert float(run(D.AngledNeuronDirection(M, v), a)) == pytest.approx(ref, rel=1e-9)
    white = torch.eye(3, dtype=torch.float64) * 2
    got = run(D.AngledNeuronDirection(M, v, vec_whitened=white, cossim_pow=0), a)
    assert torch.allclose(got, centre * 2 * v)
    # TensorDirection on the centre 2x2 crop
    t = acts((1, 3, 2, 2)).cos()
    ref = (a[:, :, 1:3, 1:3] * t).sum(1)
    assert torch.allclose(run(D.TensorDirection(M, t), a), ref)


def test_activation_weights() -> None:
    a = acts((2, 3, 4, 4))
    w = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    wv = w.reshape(1, 3, 1, 1)
    assert torch.allclose(run(D.ActivationWeights(M, w), a), a * wv)
    assert torch.allclose(run(D.ActivationWeights(M, w, neuron=True), a), a[:, :, 2, 2] * w)
    got = run(D.ActivationWeights(M, w, x=1, y=0, wx=2, wy=3), a)
    assert torch.allclose(got, a[:, :, 0:3, 1:3] * wv)
    with pytest.raises(InputError, match="wx and wy"):
        D.ActivationWeights(M, w, wx=2)


def test_default_summarize_and_sum_list() -> None:
    a = acts((2, 3, 4, 4))
    assert float(L.default_loss_summarize(a)) == pytest.approx(-float(a.mean()))
    losses = [L.ChannelActivation(M, c) for c in range(3)] + [L.DeepDream(M)]
    total = L.sum_loss_list(losses)
    ref = sum(float(a[:, c].mean()) for c in range(3)) + float((a * a).mean())
    assert float(run(total, a)) == pytest.approx(ref, rel=1e-9)
    assert total.target == [M]  # merged without duplicates
    assert "Sum(ChannelActivation [Identity, 0]" in repr(total)
    # hundreds of losses: no recursion error
    many = L.sum_loss_list([L.ChannelActivation(M, c % 3) for c in range(500)])
    assert math.isfinite(float(run(many, a)))


# ---- composition -------------------------------------------------------------------------------


def test_composition_with_numbers() -> None:
    a = acts((2, 3, 2, 2))
    ch = L.ChannelActivation(M, 1)
    x = a[:, 1]
    assert torch.allclose(run(ch + 2, a), x + 2)
    assert torch.allclose(run(ch - 2, a), x - 2)
    assert torch.allclose(run(ch * 3, a), x * 3)
    assert torch.allclose(run(ch / 4, a), x / 4)
    assert torch.allclose(run(ch**2, a), x**2)
    assert torch.allclose(run(-ch, a), -x)
    # reflected: elementwise for + - *, on the mean for / and ** (optim-wip)
    assert torch.allclose(run(2 + ch, a), 2 + x)
    assert torch.allclose(run(2 - ch, a), 2 - x)
    assert torch.allclose(run(3 * ch, a), 3 * x)
    assert torch.allclose(run(4 / ch, a), 4 / x.mean())
    assert torch.allclose(run(2**ch, a), 2 ** x.mean())
    assert (ch + 2).target is M


def test_composition_of_losses_reduces_to_means() -> None:
    a1, a2 = acts((2, 3, 2, 2)), acts((2, 5)).cos()
    m1, m2 = nn.Identity(), nn.Identity()
    l1, l2 = L.ChannelActivation(m1, 0), L.LayerActivation(m2)  # shapes (2,2,2) and (2,5)
    values = {m1: a1, m2: a2}
    u, v = a1[:, 0].mean(), a2.mean()
    assert torch.allclose((l1 + l2)(values), u + v)
    assert torch.allclose((l1 - l2)(values), u - v)
    assert torch.allclose((l1 * l2)(values), u * v)
    assert torch.allclose((l1 / l2)(values), u / v)
    assert torch.allclose((l1 ** L.DeepDream(m2))(values), u ** (a2**2).mean())
    combo = 2 * l1 - 0.5 * l2 + 1
    assert torch.allclose(combo(values), 2 * u - 0.5 * v + 1)
    assert combo.target == [m1, m2]
    assert "Compose(" in repr(l1 + l2)
    with pytest.raises(TypeError, match="int, float or Loss"):
        l1 + "x"  # type: ignore[operator]
    with pytest.raises(TypeError):
        l1 * torch.ones(2)  # type: ignore[operator]


def test_gradients_flow(dtype: torch.dtype) -> None:
    a = acts((3, 3, 4, 4), dtype).requires_grad_(True)
    v = torch.tensor([1.0, 2.0, -1.0], dtype=dtype)
    for loss in [
        L.LayerActivation(M), L.ChannelActivation(M, 0), L.NeuronActivation(M, 1),
        L.DeepDream(M), L.TotalVariation(M), L.L1(M), L.L2(M), L.Diversity(M),
        L.ActivationInterpolation(M, 0, M, 1), L.Alignment(M), D.Direction(M, v, cossim_pow=1.0),
        D.NeuronDirection(M, v), D.AngledNeuronDirection(M, v),
        D.TensorDirection(M, a[:1, :, :2, :2].detach()),
        D.ActivationWeights(M, v), L.ChannelActivation(M, 0) * L.DeepDream(M) - 3,
    ]:  # fmt: skip
        out = run(loss, a)
        assert out.dtype == dtype, loss
        (g,) = torch.autograd.grad(L.default_loss_summarize(out), a)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, loss


# ---- targets, errors, hooks -------------------------------------------------------------------


def test_targets_by_name_and_errors() -> None:
    model = TinyCNN()
    assert get_model_layers(model)[:3] == ["features", "features.0", "features.1"]
    assert resolve_target(model, "features.2") is model.features[2]
    assert resolve_target(model, "features[2]") is model.features[2]
    assert resolve_target(model, model.fc) is model.fc
    with pytest.raises(InputError, match=r"'features\.9'.*Valid names: 'features', 'features\.0'"):
        resolve_target(model, "features.9")
    with pytest.raises(InputError, match="not a submodule"):
        resolve_target(model, nn.ReLU())
    with pytest.raises(InputError, match="Valid names"):
        InputOptimization(
            model, L.ChannelActivation("nope", 0), torch.zeros(1, 3, 6, 6), transform=nn.Identity()
        )
    with pytest.raises(TypeError):
        L.ChannelActivation(3, 0)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match="input_param"):
        InputOptimization(model, L.ChannelActivation("fc", 0), input_param="image")


def test_channel_out_of_range_gives_channel_count() -> None:
    model = TinyCNN()
    opt = InputOptimization(
        model,
        L.ChannelActivation("features.2", 7),
        torch.zeros(1, 3, 6, 6),
        transform=nn.Identity(),
    )
    with pytest.raises(InputError, match="has 5 channels"):
        opt.optimize(n_steps(3, show_progress=False))
    assert_no_hooks(model)
    with pytest.raises(InputError, match="has 4 channels"):
        run(L.NeuronActivation(M, -5), acts((1, 4, 3, 3)))
    with pytest.raises(InputError, match="3 entries but layer"):
        run(D.Direction(M, torch.ones(3)), acts((1, 4, 3, 3)))


def test_layer_that_never_runs() -> None:
    model = TinyCNN()
    opt = InputOptimization(
        model, L.LayerActivation("unused"), torch.zeros(1, 3, 6, 6), transform=nn.Identity()
    )
    with pytest.raises(InputError, match="never ran"):
        opt.optimize(n_steps(2, show_progress=False))
    assert_no_hooks(model)


def test_collect_activations_and_hook() -> None:
    model = TinyCNN().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = collect_activations(model, ["features.1", model.fc], x)
    assert torch.allclose(got["features.1"], torch.relu(model.features[0](x)))
    assert torch.allclose(got[model.fc], model(x))
    assert torch.equal(collect_activations(model, "fc", x)["fc"], got[model.fc])
    assert_no_hooks(model)
    with pytest.raises(Boom), ModuleOutputsHook([model.fc]) as hook:
        assert hook.targets == [model.fc]
        raise Boom
    assert_no_hooks(model)


def test_hooks_removed_when_the_loss_raises() -> None:
    model = TinyCNN()

    class Raising(L.BaseLoss):
        def __call__(self, values: dict) -> torch.Tensor:
            if values[self.target].abs().sum() >= 0:
                raise Boom
            return values[self.target]

    opt = InputOptimization(model, Raising(model.fc) + L.LayerActivation("features.0"),
                            torch.zeros(1, 3, 6, 6), transform=nn.Identity())  # fmt: skip
    with pytest.raises(Boom):
        opt.optimize(n_steps(3, show_progress=False))
    assert_no_hooks(model)
    with pytest.raises(Boom):
        opt.loss()
    assert_no_hooks(model)


def test_nan_error_names_the_step() -> None:
    model = TinyCNN()
    # log of a channel that turns negative after a few steps of large lr: NaN
    image = nn.Parameter(torch.full((1, 3, 6, 6), 0.5))
    loss = L.CompositeLoss(lambda m: -torch.log(m[model.fc][:, 0] + 10.0), "log", model.fc)
    opt = InputOptimization(model, loss, image, transform=nn.Identity())
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        opt.optimize(n_steps(500, show_progress=False), lr=5.0)
    assert_no_hooks(model)
    # a loss that is NaN from the start: step 0
    bad = InputOptimization(
        model,
        L.LayerActivation("fc") * float("nan"),
        torch.zeros(1, 3, 6, 6),
        transform=nn.Identity(),
    )
    with pytest.raises(NonFiniteLossError, match="nan at step 0"):
        bad.optimize(n_steps(3, show_progress=False))


# ---- the optimization itself ------------------------------------------------------------------


def test_optimize_increases_channel_activation(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    model = TinyCNN().to(dtype)
    image = nn.Parameter(0.1 * torch.randn(1, 3, 8, 8, dtype=dtype))
    target = model.features[2]
    before = float(collect_activations(model, target, image.detach())[target][:, 3].mean())
    opt = InputOptimization(
        model, L.ChannelActivation("features.2", 3), image, transform=nn.Identity()
    )
    history = opt.optimize(n_steps(60, show_progress=False), lr=0.2, snapshot_steps=[0, 20, 60])
    after = float(collect_activations(model, target, image.detach())[target][:, 3].mean())
    assert history.shape == (60,)
    assert after > before + 0.4
    # history is -mean(channel) before each step; it decreases overall
    assert float(history[-1]) < float(history[0]) - 0.4
    assert float(history[0]) == pytest.approx(-before, abs=1e-5)
    assert sorted(opt.snapshots) == [0, 20, 60]
    assert torch.equal(opt.snapshots[60], image.detach())
    assert not torch.equal(opt.snapshots[0], opt.snapshots[20])
    assert all(p.grad is None for p in model.parameters())  # the model's grads are untouched
    assert_no_hooks(model)


def test_custom_optimizer_transform_and_module_param() -> None:
    model = TinyCNN()

    class Param(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.raw = nn.Parameter(torch.zeros(1, 3, 6, 6))

        def forward(self) -> torch.Tensor:
            return torch.sigmoid(self.raw)

    param = Param()
    seen = []
    opt = InputOptimization(
        model, L.ChannelActivation(model.fc, 1), param, transform=lambda x: seen.append(1) or x
    )
    sgd = torch.optim.SGD(param.parameters(), lr=1.0)
    history = opt.optimize(n_steps(5, show_progress=False), optimizer=sgd)
    assert history.shape == (5,) and len(seen) == 5
    assert float(history[-1]) < float(history[0])
    summed = opt.optimize(n_steps(2, show_progress=False), loss_summarize_fn=lambda t: -t.sum() * 0)
    assert torch.equal(summed, torch.zeros(2))


def test_mixed_name_and_module_targets() -> None:
    model = TinyCNN().double()
    image = nn.Parameter(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    loss = (
        L.ChannelActivation("features.2", 1)
        - 0.1 * L.L2(model.features[2])
        + L.Diversity("features.3")
    )
    assert loss.target == ["features.2", model.features[2], "features.3"]
    opt = InputOptimization(model, loss, image, transform=nn.Identity())
    a = model.features(image)
    pre, post = model.features[2](model.features[1](model.features[0](image))), a
    ref = pre[:, 1].mean() - 0.1 * (1e-6 + (pre**2).sum()).sqrt() + run(L.Diversity(M), post)
    assert float(opt.loss().detach()) == pytest.approx(float(ref.detach()), rel=1e-9)
    assert_no_hooks(model)


def test_early_stopping_and_progress_bar() -> None:
    model = TinyCNN()
    # a loss that cannot change (depends on nothing trainable): stops after patience + 1 steps
    flat = InputOptimization(
        model, L.LayerActivation(model.fc) * 0, torch.zeros(1, 3, 6, 6), transform=nn.Identity()
    )
    history = flat.optimize(early_stopping(100, patience=3))
    assert history.shape == (4,)
    # a conv channel is linear in the image: it improves at every step, so runs all 7
    improving = InputOptimization(
        model,
        L.ChannelActivation("features.0", 0),
        nn.Parameter(torch.zeros(1, 3, 6, 6)),
        transform=nn.Identity(),
    )
    assert improving.optimize(early_stopping(7, patience=3), lr=0.1).shape == (7,)
    assert improving.optimize(n_steps(3, show_progress=True)).shape == (3,)
    assert_no_hooks(model)
