"""A small CNN on upsampled scikit-learn digits, trained on the fly, for measured optim renders.

Feature visualization needs a trained model, and no pretrained vision weights can be downloaded
offline, so this module trains one in seconds on CPU (deterministic: fixed seeds, one fixed
split). The digits (``(N, 1, 8, 8)`` in ``[0, 1]``, the split of :mod:`llmattr.vision.digits`)
are upsampled bilinearly to ``32x32`` so that renders have room for structure::

    from llmattr.optim.digits_model import train_optim_cnn
    trained = train_optim_cnn()            # checks held-out accuracy >= 0.9 before returning
    trained.model                          # OptimDigitCNN in eval mode, (N, 1, 32, 32) -> (N, 10)
    trained.test_accuracy

:class:`OptimDigitCNN` names its modules (``conv1`` ... ``conv3``, ``relu3``, ``fc``), so the
optim losses can target ``"relu3"`` (the last conv layer's 8 channels after its ReLU) or ``"fc"``
(the class logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.errors import InputError
from .._core.hooks import registered

__all__ = [
    "IMAGE_SIZE",
    "OptimDigitCNN",
    "TrainedDigitCNN",
    "channel_train_max",
    "train_optim_cnn",
    "upsampled_digits",
]

IMAGE_SIZE = 32


def upsampled_digits(images: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """Bilinear upsampling of digits: ``(N, 1, 8, 8)`` -> ``(N, 1, size, size)``, range kept.

    ``align_corners=False`` bilinear interpolation is a convex combination of input pixels, so
    values stay in ``[0, 1]``.
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise InputError(f"images must be (N, 1, H, W), got shape {tuple(images.shape)}")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class OptimDigitCNN(nn.Module):
    """``(N, 1, 32, 32)`` in ``[0, 1]`` -> ``(N, 10)`` logits.

    conv1 (16, 3x3, pad 1) -> relu1 -> pool1 (max 2, to 16x16) -> conv2 (32, 3x3, pad 1) -> relu2
    -> pool2 (max 2, to 8x8) -> conv3 (8, 3x3, pad 1) -> relu3 -> pool3 (avg 2, to 4x4) -> fc
    (128 -> 10). The last conv layer has 8 channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 8, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 1, 32, 32)`` -> ``(N, 10)``."""
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise InputError(
                f"OptimDigitCNN takes (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}"
            )
        h = self.pool1(self.relu1(self.conv1(x)))
        h = self.pool2(self.relu2(self.conv2(h)))
        h = self.pool3(self.relu3(self.conv3(h)))
        return self.fc(h.flatten(1))


@dataclass(frozen=True)
class TrainedDigitCNN:
    """A trained :class:`OptimDigitCNN` and its data.

    Attributes:
        model: the model, in eval mode.
        train_images: ``(1400, 1, 32, 32)`` upsampled training digits.
        train_labels: ``(1400,)``.
        test_images: ``(397, 1, 32, 32)`` upsampled held-out digits.
        test_labels: ``(397,)``.
        test_accuracy: held-out accuracy in ``[0, 1]``.
    """

    model: OptimDigitCNN
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    test_accuracy: float


def train_optim_cnn(
    epochs: int = 12,
    seed: int = 0,
    batch_size: int = 50,
    lr: float = 3e-3,
    min_accuracy: float = 0.9,
) -> TrainedDigitCNN:
    """Train :class:`OptimDigitCNN` deterministically (Adam, fixed seed, fixed batch order).

    Uses :func:`llmattr.vision.digits.load_digits_data`'s split (1,400 train, 397 held out).
    Takes a few seconds on one CPU thread.

    Raises:
        RuntimeError: when the held-out accuracy is below ``min_accuracy`` (a collapsed run
            would make every render check meaningless).
    """
    from ..vision.digits import load_digits_data

    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    data = load_digits_data()
    images = upsampled_digits(data.images)
    x_train, y_train = images[data.train], data.labels[data.train]
    x_test, y_test = images[data.test], data.labels[data.test]
    gen = torch.Generator().manual_seed(seed)
    model = OptimDigitCNN()
    with torch.no_grad():  # seeded init, independent of the global RNG
        for p in model.parameters():
            if p.dim() > 1:
                bound = (6.0 / (p[0].numel() + p.shape[0])) ** 0.5 * 1.2
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
            else:
                p.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    if accuracy < min_accuracy:
        raise RuntimeError(
            f"OptimDigitCNN reached held-out accuracy {accuracy:.3f} < {min_accuracy}: "
            "training collapsed, renders on it would be meaningless"
        )
    return TrainedDigitCNN(model, x_train, y_train, x_test, y_test, accuracy)


def channel_train_max(model: nn.Module, layer: nn.Module, images: Tensor) -> Tensor:
    """Per channel, the maximum over ``images`` of the channel's spatial mean at ``layer``.

    This is the quantity :class:`~llmattr.optim.ChannelActivation` maximizes (its default
    summary is the mean), so a render "beats the data" when its value exceeds this one.

    Returns:
        ``(C,)`` for a layer whose output is ``(N, C, H, W)`` (or ``(N, C)``).
    """
    out: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, o: Tensor) -> None:
        out.append(o.detach())

    with registered(lambda: layer.register_forward_hook(hook)), torch.no_grad():
        model(images)
    act = out[0]
    if act.dim() == 4:
        act = act.mean(dim=(2, 3))
    return act.max(dim=0).values
