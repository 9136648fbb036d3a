"""Shared fixtures: tiny models built in the test, deterministic seeds, device parametrization."""

from __future__ import annotations

import pytest
import torch
from torch import nn

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


def tol(dtype: torch.dtype) -> float:
    """Absolute tolerance for comparisons of O(1) quantities in ``dtype``."""
    return 1e-4 if dtype == torch.float32 else 1e-10


class MLP(nn.Module):
    """Linear → ReLU → Linear → Tanh → Linear: a small piecewise-smooth classifier."""

    def __init__(self, n_in: int = 6, hidden: int = 10, n_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.tanh = nn.Tanh()
        self.fc3 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.tanh(self.fc2(self.relu(self.fc1(x)))))


class TwoInputNet(nn.Module):
    """Two inputs and extra forward args: ``scale`` (per-example tensor) and ``shift`` (float)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(3, 5)
        self.relu = nn.ReLU()
        self.out = nn.Linear(5, 2)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, shift: float = 0.0
    ) -> torch.Tensor:
        h = self.relu(self.a(x1) + self.b(x2))
        return self.out(h) * scale.reshape(-1, 1) + shift


class SmallCNN(nn.Module):
    """Conv → ReLU → MaxPool → Linear, for image-shaped inputs (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


@pytest.fixture
def mlp(dtype: torch.dtype, device: str) -> MLP:
    return MLP().to(device=device, dtype=dtype)
