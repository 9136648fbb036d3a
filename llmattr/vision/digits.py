"""Two vision models trained on scikit-learn's handwritten digits, shipped with llmattr.

scikit-learn's ``load_digits`` holds 1,797 greyscale images of 8x8 pixels (values 0-16) with
labels 0-9. The split is fixed: a ``torch.randperm`` of the 1,797 indices seeded with 0; the
first 1,400 train, the other 397 are held out (the split notebook 03 uses). Two models were
trained on the 1,400 by ``scripts/train_digits_models.py`` (deterministic, under a minute each on
one CPU thread) and ship in ``llmattr/vision/weights/``; they load offline, in eval mode::

    from llmattr.vision.digits import load_digits_cnn, load_digits_data, load_digits_vit
    data = load_digits_data()                   # images (1797, 1, 8, 8) in [0, 1], labels, split
    cnn = load_digits_cnn()                     # DigitCNN: (N, 1, 8, 8) -> (N, 10) logits
    vit = load_digits_vit()                     # transformers ViTForImageClassification
    logits = vit(digits_to_vit_pixels(data.images[data.test])).logits

* :class:`DigitCNN` takes the images as they are. Its layers are named modules (``conv1``,
  ``relu1``, ``conv2``, ``relu2``, ``pool``, ``fc``), so ``LayerGradCam(cnn, cnn.conv2)`` is the
  obvious Grad-CAM.
* The ViT is a ``transformers`` ``ViTForImageClassification`` (2 layers, hidden size 64, 4 heads,
  one channel, image 16x16, patch 4: a 4x4 grid of patches after one class token), so the ViT
  tooling (``PatchLayout.from_config(vit)``, Grad-CAM on ``vit.vit.encoder.layer[i]``, attention
  rollout) applies to a trained model. Its input is :func:`digits_to_vit_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._core.errors import InputError

__all__ = [
    "CNN_WEIGHTS",
    "N_TRAIN",
    "SPLIT_SEED",
    "VIT_DIR",
    "DigitCNN",
    "DigitsData",
    "digits_to_vit_pixels",
    "load_digits_cnn",
    "load_digits_data",
    "load_digits_vit",
    "vit_config",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CNN_WEIGHTS = WEIGHTS_DIR / "digit_cnn.safetensors"
VIT_DIR = WEIGHTS_DIR / "digit_vit"
SPLIT_SEED, N_TRAIN = 0, 1400
VIT_IMAGE_SIZE, VIT_PATCH = 16, 4


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn's digits as tensors, with the fixed train/held-out split.

    Attributes:
        images: ``(1797, 1, 8, 8)`` float32 in ``[0, 1]`` (scikit-learn's 0-16 divided by 16).
        labels: ``(1797,)`` long, the digit 0-9.
        train: ``(1400,)`` long indices of the training images.
        test: ``(397,)`` long indices of the held-out images.
    """

    images: Tensor
    labels: Tensor
    train: Tensor
    test: Tensor


def load_digits_data() -> DigitsData:
    """scikit-learn's 1,797 digits and the split the shipped models were trained on.

    The split: ``torch.randperm(1797, generator=torch.Generator().manual_seed(0))``; the first
    1,400 indices train, the remaining 397 are held out. Needs scikit-learn (the data ship with
    it; nothing is downloaded).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a test dependency
        raise ImportError("load_digits_data needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    return DigitsData(images, labels, order[:N_TRAIN], order[N_TRAIN:])


class DigitCNN(nn.Module):
    """``(N, 1, 8, 8)`` in ``[0, 1]`` -> ``(N, 10)`` logits.

    conv1 (16 channels, 3x3, padding 1) -> relu1 -> conv2 (32, 3x3, padding 1) -> relu2 ->
    pool (2x2 average, to 4x4) -> fc (512 -> 10). One module per activation, so every
    attribution method (DeepLift, LRP, Grad-CAM on ``conv2``) finds the layer it needs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(h.flatten(1))


def vit_config() -> Any:
    """The ``transformers`` ``ViTConfig`` of the digits ViT (also used to train it)."""
    from transformers import ViTConfig

    return ViTConfig(
        image_size=VIT_IMAGE_SIZE,
        patch_size=VIT_PATCH,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )


def digits_to_vit_pixels(images: Tensor) -> Tensor:
    """The ViT's preprocessing: ``(N, 1, 8, 8)`` in ``[0, 1]`` -> ``(N, 1, 16, 16)`` in ``[-1, 1]``.

    Each digit pixel becomes a 2x2 block (nearest-neighbour upsampling), then ``(x - 0.5) / 0.5``
    (``ViTImageProcessor``'s default normalisation). A patch of the ViT (4x4 pixels) is thus a
    2x2 block of the original digit, and patch ``k`` (row-major over the 4x4 grid) is token
    ``k + 1`` of the ViT's hidden states. Differentiable; the input is not modified.
    """
    if not isinstance(images, Tensor):
        raise InputError(f"digits_to_vit_pixels expects a tensor, got {type(images).__name__}.")
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise InputError(
            f"digits_to_vit_pixels expects digits of shape (N, 1, 8, 8), got "
            f"{tuple(images.shape)}; use load_digits_data().images (add the channel dim "
            "with .unsqueeze(1) for scikit-learn's (N, 8, 8) arrays)."
        )
    up = images.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return (up - 0.5) / 0.5


def load_digits_cnn(device: Any = None) -> DigitCNN:
    """The trained :class:`DigitCNN`, in eval mode, from the shipped safetensors file."""
    from safetensors.torch import load_file

    model = DigitCNN()
    model.load_state_dict(load_file(str(CNN_WEIGHTS)))
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_digits_vit(device: Any = None) -> Any:
    """The trained ``ViTForImageClassification``, in eval mode, from the shipped folder (offline).

    Input: :func:`digits_to_vit_pixels` of ``(N, 1, 8, 8)`` digits; output ``.logits`` ``(N, 10)``.
    """
    from transformers import ViTForImageClassification

    from .._hf import quiet_transformers

    with quiet_transformers():
        model = ViTForImageClassification.from_pretrained(VIT_DIR, local_files_only=True)
    if device is not None:
        model = model.to(device)
    return model.eval()
