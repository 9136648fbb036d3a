"""Bad input for InputOptimization (issue 13, "Bad input"): each mistake gives a clear InputError
before the first optimizer step (the input is unchanged), and no hook is left behind."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_no_hooks
from torch import nn

from llmattr._core.errors import InputError
from llmattr.optim import loss as L
from llmattr.optim.checks import checked_forward, dry_run
from llmattr.optim.images import NaturalImage
from llmattr.optim.optimization import InputOptimization, NonFiniteLossError, n_steps
from llmattr.optim.transforms import RandomSpatialJitter

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(in_channels: int = 3) -> nn.Sequential:
    """Conv(C→4) → ReLU → Conv(4→5) → ReLU → pool → flatten → Linear(5→3); index 7 never runs."""
    model = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip
    model.add_module("unused", nn.Linear(2, 2))

    def forward(x: torch.Tensor) -> torch.Tensor:
        for module in list(model.children())[:-1]:
            x = module(x)
        return x

    model.forward = forward  # type: ignore[method-assign]
    return model


def flat_mlp(h: int = 8, w: int = 8) -> nn.Sequential:
    """Flatten → Linear(3*h*w → 4) → ReLU → Linear(4 → 2): built for one image size."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, 4), nn.ReLU(), nn.Linear(4, 2))


def fails_before_a_step(opt: InputOptimization, model: nn.Module, match: str) -> str:
    """optimize() raises InputError matching ``match``; the input is unchanged, no hook left."""
    before = [p.detach().clone() for p in opt.parameters()]
    with pytest.raises(InputError, match=match) as info:
        opt.optimize(n_steps(3, show_progress=False))
    assert all(torch.equal(a, p) for a, p in zip(before, opt.parameters(), strict=True))
    assert_no_hooks(model)
    with pytest.raises(InputError, match=match):
        opt.loss()
    assert_no_hooks(model)
    return str(info.value)


def test_target_not_in_model_lists_valid_names() -> None:
    model = tiny_cnn()
    with pytest.raises(InputError, match=r"'9' is not a layer.*Valid names: '0', '1'"):
        InputOptimization(
            model, L.ChannelActivation("9", 0), torch.zeros(1, 3, 6, 6), transform=nn.Identity()
        )
    with pytest.raises(InputError, match="not a submodule"):
        InputOptimization(
            model, L.LayerActivation(nn.ReLU()), torch.zeros(1, 3, 6, 6), transform=nn.Identity()
        )
    assert_no_hooks(model)


def test_target_that_never_runs_is_named() -> None:
    model = tiny_cnn()
    loss = L.LayerActivation("2") + L.LayerActivation("unused")
    opt = InputOptimization(
        model, loss, nn.Parameter(torch.rand(1, 3, 6, 6)), transform=nn.Identity()
    )
    msg = fails_before_a_step(opt, model, "never ran")
    assert "'unused'" in msg and "'2'" not in msg
    with pytest.raises(InputError, match=r"\['unused'\] never ran"):
        dry_run(model, opt.input_param, None, opt._modules, opt._names)
    assert_no_hooks(model)


def test_channel_index_out_of_range_gives_channel_count() -> None:
    model = tiny_cnn()
    opt = InputOptimization(
        model,
        L.ChannelActivation("2", 5),
        nn.Parameter(torch.rand(1, 3, 6, 6)),
        transform=nn.Identity(),
    )
    msg = fails_before_a_step(opt, model, "channel index 5 is out of range")
    assert "has 5 channels" in msg
    ok = InputOptimization(
        model,
        L.ChannelActivation("2", -5),
        nn.Parameter(torch.rand(1, 3, 6, 6)),
        transform=nn.Identity(),
    )
    assert ok.optimize(n_steps(1, show_progress=False)).shape == (1,)


@pytest.mark.parametrize("channels", [1, 4])
def test_channel_mismatch_names_both_counts_and_the_fix(channels: int) -> None:
    model = tiny_cnn(3)
    image = NaturalImage((6, 7), channels=channels, generator=torch.Generator().manual_seed(0))
    opt = InputOptimization(model, L.ChannelActivation("0", 1), image, transform=nn.Identity())
    msg = fails_before_a_step(opt, model, f"has {channels} channels")
    assert "first layer '0' (Conv2d) takes 3" in msg
    assert "NaturalImage((6, 7), channels=3)" in msg
    fixed = NaturalImage((6, 7), channels=3, generator=torch.Generator().manual_seed(0))
    ok = InputOptimization(model, L.ChannelActivation("0", 1), fixed, transform=nn.Identity())
    assert ok.optimize(n_steps(2, show_progress=False)).shape == (2,)


def test_channel_mismatch_for_a_linear_first_layer() -> None:
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    opt = InputOptimization(
        model, L.LayerActivation("1"), nn.Parameter(torch.rand(2, 4)), transform=nn.Identity()
    )
    msg = fails_before_a_step(opt, model, "has 4 channels")
    assert "first layer '0' (Linear) takes 5" in msg


def test_image_size_the_flattening_model_cannot_take() -> None:
    model = flat_mlp(8, 8)
    opt = InputOptimization(
        model, L.LayerActivation("2"), nn.Parameter(torch.rand(1, 3, 6, 6)), transform=nn.Identity()
    )
    msg = fails_before_a_step(opt, model, "cannot take an input")
    assert "a 6x6 image" in msg and "108 features" in msg
    assert "192 input features (a 8x8 image with 3 channels)" in msg
    # not a square: the area is given
    odd = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 6, 2))
    opt = InputOptimization(
        odd, L.LayerActivation("1"), nn.Parameter(torch.rand(1, 3, 5, 5)), transform=nn.Identity()
    )
    assert "H*W = 24" in fails_before_a_step(opt, odd, "cannot take")
    # the right size works
    ok = InputOptimization(
        model, L.LayerActivation("2"), nn.Parameter(torch.rand(1, 3, 8, 8)), transform=nn.Identity()
    )
    assert ok.optimize(n_steps(2, show_progress=False)).shape == (2,)


def test_image_size_deeper_in_the_model_and_too_small_for_a_kernel() -> None:
    # conv then flatten then a Linear built for 8x8 feature maps
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 8 * 8, 2))
    opt = InputOptimization(
        model, L.LayerActivation("2"), nn.Parameter(torch.rand(1, 3, 6, 6)), transform=nn.Identity()
    )
    msg = fails_before_a_step(opt, model, "cannot take an input")
    assert "a 6x6 image" in msg and "in_features=128" in msg
    # a 5x5 kernel on a 3x3 image: torch's own error, wrapped with the image size
    conv = nn.Sequential(nn.Conv2d(3, 2, 5), nn.ReLU())
    opt = InputOptimization(
        conv, L.LayerActivation("1"), nn.Parameter(torch.rand(1, 3, 3, 3)), transform=nn.Identity()
    )
    msg = fails_before_a_step(opt, conv, "failed on an input")
    assert "a 3x3 image" in msg and "The model said" in msg
    assert isinstance(msg, str)


def test_nan_during_optimization_names_the_step_and_leaves_no_hooks() -> None:
    model = tiny_cnn()
    image = nn.Parameter(torch.full((1, 3, 6, 6), 0.5))
    loss = L.CompositeLoss(lambda m: -torch.log(m[model[6]][:, 0] + 10.0), "log", model[6])
    opt = InputOptimization(model, loss, image, transform=nn.Identity())
    with pytest.raises(NonFiniteLossError, match=r"at step [1-9]\d*"):
        opt.optimize(n_steps(500, show_progress=False), lr=5.0)
    assert_no_hooks(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checked_forward_is_the_plain_forward(dtype: torch.dtype) -> None:
    model = tiny_cnn().to(dtype)
    x = torch.rand(2, 3, 6, 6, dtype=dtype, requires_grad=True)
    out = checked_forward(model, x, [model[2]], ["2"])
    assert out.dtype == dtype and torch.equal(out, model(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert_no_hooks(model)
    with pytest.raises(InputError, match="2 targets but 1 names"):
        checked_forward(model, x, [model[0], model[2]], ["0"])


def test_dry_run_leaves_no_trace() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    model.train()
    gen = torch.Generator().manual_seed(3)
    image = NaturalImage((6, 6), generator=torch.Generator().manual_seed(0))
    jitter = RandomSpatialJitter(2, generator=gen)
    mean, var = model[1].running_mean.clone(), model[1].running_var.clone()
    gen_state, rng_state = gen.get_state(), torch.get_rng_state()
    dry_run(model, image, jitter, [model[2]], ["2"])
    assert torch.equal(model[1].running_mean, mean) and torch.equal(model[1].running_var, var)
    assert torch.equal(gen.get_state(), gen_state)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert_no_hooks(model)
    bad = NaturalImage((6, 6), channels=4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="channels=3"):
        dry_run(model, bad, jitter, [model[2]], ["2"])
    assert torch.equal(model[1].running_mean, mean) and torch.equal(gen.get_state(), gen_state)
    assert_no_hooks(model)

    class NotATensor(nn.Module):
        def forward(self) -> list[int]:
            return [1]

    with pytest.raises(InputError, match="must return a tensor"):
        dry_run(model, NotATensor(), None, [model[2]], ["2"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lazy_layers_are_not_refused() -> None:
    model = nn.Sequential(nn.LazyConv2d(2, 3), nn.Flatten(), nn.LazyLinear(3), nn.ReLU())
    out = checked_forward(model, torch.rand(1, 4, 5, 5), [model[3]], ["3"])
    assert out.shape == (1, 3)
    assert_no_hooks(model)
