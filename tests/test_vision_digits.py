"""The trained digits models (llmattr.vision.digits): accuracy, determinism, file sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

from llmattr._core.errors import InputError
from llmattr.vision.digits import (
    CNN_WEIGHTS,
    VIT_DIR,
    DigitCNN,
    digits_to_vit_pixels,
    load_digits_cnn,
    load_digits_data,
    load_digits_vit,
)
from llmattr.vision.layout import PatchLayout

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_digits_models.py"


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("train_digits_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_is_fixed_disjoint_and_complete(data):
    assert data.images.shape == (1797, 1, 8, 8) and data.labels.shape == (1797,)
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    assert len(data.train) == 1400 and len(data.test) == 397
    assert sorted(torch.cat([data.train, data.test]).tolist()) == list(range(1797))
    again = load_digits_data()
    assert torch.equal(again.train, data.train) and torch.equal(again.test, data.test)


@torch.no_grad()
def test_cnn_held_out_accuracy(data):
    cnn = load_digits_cnn()
    assert isinstance(cnn, DigitCNN) and not cnn.training
    accuracy = (cnn(data.images[data.test]).argmax(1) == data.labels[data.test]).float().mean()
    assert accuracy >= 0.97
    # the CNN is not the label prior: every digit is predicted somewhere in the held-out set
    assert cnn(data.images[data.test]).argmax(1).unique().numel() == 10


@torch.no_grad()
def test_vit_held_out_accuracy_and_layout(data):
    vit = load_digits_vit()
    assert not vit.training
    pixels = digits_to_vit_pixels(data.images[data.test])
    accuracy = (vit(pixel_values=pixels).logits.argmax(1) == data.labels[data.test]).float().mean()
    assert accuracy >= 0.93
    layout = PatchLayout.from_config(vit)
    assert layout.grid == (4, 4) and layout.n_prefix == 1 and layout.image_size == (16, 16)
    hidden = vit(pixel_values=pixels[:2], output_hidden_states=True).hidden_states[-1]
    assert hidden.shape[1] == layout.n_tokens


def test_vit_pixels_are_nearest_upsampled_and_normalised(data):
    images = data.images[:3].clone()
    before = images.clone()
    pixels = digits_to_vit_pixels(images)
    assert torch.equal(images, before)  # input not modified
    assert pixels.shape == (3, 1, 16, 16)
    # every 2x2 block of the output is one input pixel, mapped [0, 1] -> [-1, 1]
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        block = pixels[:, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        expected = (2 * images[:, 0, i, j] - 1)[:, None, None].expand(3, 2, 2)
        assert torch.equal(block, expected)
    # a ViT patch (4x4 pixels) is a 2x2 block of the digit
    mask = PatchLayout((4, 4), (4, 4), 1).pixel_mask()
    assert mask[::2, ::2].reshape(8, 8)[2:4, 6:8].unique().tolist() == [7]


def test_vit_pixels_reject_bad_shapes():
    with pytest.raises(InputError, match=r"\(N, 1, 8, 8\)"):
        digits_to_vit_pixels(torch.zeros(2, 8, 8))
    with pytest.raises(InputError, match="tensor"):
        digits_to_vit_pixels([[0.0]])


def test_shipped_files_are_small():
    assert CNN_WEIGHTS.stat().st_size < 300_000
    assert (VIT_DIR / "model.safetensors").stat().st_size < 300_000
    assert (VIT_DIR / "config.json").exists()


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("which", ["cnn", "vit"])
def test_training_is_deterministic(which, data, train_script):
    train = train_script.train_cnn if which == "cnn" else train_script.train_vit
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        train_script.setup()
        first, second = _weights(train(data, max_steps=4)), _weights(train(data, max_steps=4))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the steps did change the weights (from their seeded initial values)
    torch.manual_seed(train_script.CNN_SEED if which == "cnn" else train_script.VIT_SEED)
    if which == "cnn":
        untrained = _weights(DigitCNN())
    else:
        from transformers import ViTForImageClassification

        from llmattr.vision.digits import vit_config

        untrained = _weights(ViTForImageClassification(vit_config()))
    assert any(not torch.equal(first[k], untrained[k]) for k in first)
