"""The optim pieces together: a parameterization, transforms, a loss and InputOptimization."""

from __future__ import annotations

import torch
from torch import nn

from llmattr.optim import (
    ChannelActivation,
    InputOptimization,
    NaturalImage,
    RandomSpatialJitter,
    n_steps,
    replace_layers,
)
from llmattr.optim.images import FFTImage


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU()
    ).eval()


def _activation(model: nn.Module, image: torch.Tensor, channel: int) -> float:
    with torch.no_grad():
        return float(model(image)[:, channel].mean())


def test_a_natural_image_learns_to_excite_a_channel() -> None:
    model = _cnn()
    image = NaturalImage((16, 16), generator=torch.Generator().manual_seed(0))
    before = _activation(model, image(), 2)
    opt = InputOptimization(
        model, ChannelActivation(model[2], 2), image,
        RandomSpatialJitter(2, generator=torch.Generator().manual_seed(1)),
    )  # fmt: skip
    history = opt.optimize(n_steps(60, show_progress=False), lr=0.05)
    assert history.shape == (60,) and torch.isfinite(history).all()
    assert _activation(model, image(), 2) > 1.5 * before > 0
    assert history[-10:].mean() < history[:10].mean()  # the summarized loss (-mean) falls
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert image().min() >= 0 and image().max() <= 1  # squashed


def test_defaults_are_optim_wips_natural_image_and_jitter() -> None:
    model = _cnn()
    opt = InputOptimization(model, ChannelActivation(model[2], 0))
    assert isinstance(opt.input_param, NaturalImage)
    assert isinstance(opt.input_param.image_param if hasattr(opt.input_param, "image_param")
                      else opt.input_param, nn.Module)  # fmt: skip
    assert tuple(opt.input_param().shape) == (1, 3, 224, 224)
    assert isinstance(opt.transform, nn.Sequential) and len(opt.transform) == 2


def test_redirected_relu_lets_a_dead_channel_render() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()).eval()
    with torch.no_grad():  # channel 0 is dead for every input in [0, 1]
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)

    def render() -> float:
        image = FFTImage((8, 8), generator=torch.Generator().manual_seed(0))
        base = image().detach().clone()
        InputOptimization(
            model, ChannelActivation(model[1], 0), image, transform=nn.Identity()
        ).optimize(n_steps(10, show_progress=False), lr=0.1)
        return float((image().detach() - base).abs().max())

    assert render() == 0.0  # plain ReLU: no gradient, the image never moves
    with replace_layers(model):
        assert render() > 0.0
    assert isinstance(model[1], nn.ReLU)  # restored
