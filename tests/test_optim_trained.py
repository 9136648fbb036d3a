"""Measured renders on a trained CNN (issue 13): channels beat the data, classes reach p >= 0.99."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("sklearn")

from llmattr._core.errors import InputError
from llmattr.optim import collect_activations, render_channels, replace_layers
from llmattr.optim.digits_model import (
    OptimDigitCNN,
    channel_train_max,
    train_optim_cnn,
    upsampled_digits,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These small convolutions run faster on one thread (see benchmarks/optim.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(_one_thread):
    return train_optim_cnn()


def test_held_out_accuracy_before_any_render(trained) -> None:
    assert trained.test_accuracy >= 0.9
    assert trained.train_images.shape == (1400, 1, 32, 32)
    assert trained.test_images.shape == (397, 1, 32, 32)
    assert not trained.model.training


def test_training_is_deterministic() -> None:
    a = train_optim_cnn(epochs=1, min_accuracy=0.0).model
    b = train_optim_cnn(epochs=1, min_accuracy=0.0).model
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_collapsed_training_is_refused() -> None:
    with pytest.raises(RuntimeError, match="collapsed"):
        train_optim_cnn(epochs=1, lr=0.0, min_accuracy=0.9)


def test_upsampling_keeps_range_and_shape() -> None:
    x = torch.rand(3, 1, 8, 8)
    up = upsampled_digits(x)
    assert up.shape == (3, 1, 32, 32)
    assert up.min() >= x.min() - 1e-6 and up.max() <= x.max() + 1e-6
    const = upsampled_digits(torch.full((1, 1, 8, 8), 0.25))
    assert torch.allclose(const, torch.full_like(const, 0.25))
    with pytest.raises(InputError):
        upsampled_digits(torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="32"):
        OptimDigitCNN()(torch.rand(1, 1, 8, 8))


def test_channel_train_max_matches_brute_force(trained) -> None:
    m = trained.model
    x = trained.train_images[:50]
    mx = channel_train_max(m, m.relu3, x)
    brute = torch.stack(
        [
            torch.stack(
                [
                    m.relu3(
                        m.conv3(m.pool2(m.relu2(m.conv2(m.pool1(m.relu1(m.conv1(xi[None])))))))
                    )[0, c].mean()
                    for xi in x
                ]
            ).max()
            for c in range(8)
        ]
    )
    assert torch.allclose(mx, brute, atol=1e-5)
    assert not m.relu3._forward_hooks


def test_channel_renders_beat_training_set(trained) -> None:
    m = trained.model
    train_max = channel_train_max(m, m.relu3, trained.train_images)
    images, act = render_channels(
        m,
        "relu3",
        list(range(8)),
        size=32,
        n_steps=128,
        input_channels=1,
        restarts=3,
        return_activations=True,
    )
    assert images.shape == (8, 1, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    # the reported activation is channel c's spatial mean on render c (recomputed here)
    feats = [collect_activations(m, "relu3", images)["relu3"]]
    assert not m.relu3._forward_hooks
    own = feats[0].mean(dim=(2, 3)).diag()
    assert torch.allclose(own, act, rtol=1e-4, atol=1e-4)
    assert int((act > train_max).sum()) >= 7, (act, train_max)


def test_class_logit_renders_are_confident(trained) -> None:
    m = trained.model
    images = render_channels(
        m, "fc", list(range(10)), size=32, n_steps=128, input_channels=1, restarts=2
    )
    with torch.no_grad():
        prob = torch.softmax(m(images), dim=1).diag()
    assert int((prob >= 0.99).sum()) >= 9, prob


def test_redirected_relu_revives_the_dead_channel(trained) -> None:
    """Channel 6 starts dead (ReLU output 0 everywhere on a random image): plain Adam gets no
    gradient; RedirectedReLU (the FAQ's fix for blank renders) lets every channel beat the data."""
    m = copy.deepcopy(trained.model)
    train_max = channel_train_max(m, m.relu3, trained.train_images)
    with replace_layers(m):
        _, act = render_channels(
            m,
            "relu3",
            list(range(8)),
            size=32,
            n_steps=128,
            input_channels=1,
            restarts=3,
            return_activations=True,
        )
    assert type(m.relu3) is torch.nn.ReLU  # restored
    assert int((act > train_max).sum()) == 8, (act, train_max)


def test_float64_render_on_trained_model(trained) -> None:
    m = copy.deepcopy(trained.model).double()
    images = render_channels(m, "fc", [3], size=32, n_steps=64, input_channels=1)
    assert images.dtype == torch.float64
    with torch.no_grad():
        prob = torch.softmax(m(images), dim=1)[0, 3]
    assert prob >= 0.99
