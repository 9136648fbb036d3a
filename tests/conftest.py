"""Shared fixtures: tiny models built in the test, deterministic seeds, device parametrization."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

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


# ---- helpers shared by several test files (import them: ``from conftest import rand``) ---------


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def close(
    a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float64, scale: float = 1.0
) -> bool:
    """Same shape and equal within ``tol(dtype) * scale`` (compared in float64 on the CPU)."""
    return a.shape == b.shape and torch.allclose(
        a.double().cpu(), b.double().cpu(), rtol=0, atol=tol(dtype) * scale
    )


def row_sums(attrs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-example sum of the attributions over every input."""
    attrs = attrs if isinstance(attrs, tuple) else (attrs,)
    n = attrs[0].shape[0]
    return sum(a.reshape(n, -1).sum(1) for a in attrs)


def roll(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A deterministic ``perm_func``: example ``e`` takes the masked elements of example
    ``e - 1``."""
    return torch.where(mask, x.roll(1, 0), x)


class Counting:
    """Wraps a forward and counts its calls."""

    def __init__(self, f: Callable[..., torch.Tensor]) -> None:
        self.f, self.calls = f, 0

    def __call__(self, *args: object) -> torch.Tensor:
        self.calls += 1
        return self.f(*args)


class Linear(nn.Module):
    """f(x) = x @ w + c, one output per example."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))
        self.c = nn.Parameter(torch.randn(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.c


class TwoLinear(nn.Module):
    """f(x1, x2) = x1 @ w1 + sum(x2 * w2) for x1 (N, d1) and x2 (N, *shape2), shape2 2-D."""

    def __init__(self, d1: int, shape2: tuple[int, int]) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(d1))
        self.w2 = nn.Parameter(torch.randn(*shape2))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return x1 @ self.w1 + (x2 * self.w2).sum((1, 2))


@pytest.fixture
def xb() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and baselines, (5, 4) float64 each."""
    return torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)


# ---- hooks left behind ------------------------------------------------------------------------

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


class Boom(Exception):
    """Raised on purpose in the middle of an attribution."""


def hook_state(model: nn.Module) -> dict[str, list[int]]:
    """Every hook handle id on every submodule of ``model`` and in torch's global hook dicts."""
    state = {
        f"{name}.{d}": list(getattr(m, d, {}).keys())
        for name, m in model.named_modules()
        for d in HOOK_DICTS
    }
    for d in GLOBAL_HOOK_DICTS:
        state[d] = list(getattr(module_globals, d).keys())
    return state


def assert_no_hooks(model: nn.Module) -> None:
    """No hook anywhere: on ``model``'s modules (every kind) or global."""
    leftover = {k: v for k, v in hook_state(model).items() if v}
    assert not leftover, leftover


# ---- tiny language models (``transformers`` imported lazily: the files that use these skip
# without it) ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is fastest and immune to a busy second core. Use it per module:
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_causal_lm(
    arch: str,
    vocab: int,
    *,
    init: float = 0.5,
    dtype: torch.dtype = torch.float32,
    context: int = 64,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
) -> nn.Module:
    """Random-init GPT-2 (``arch="gpt2"``) or Llama (grouped-query attention, ``kv_heads``; MLP
    width 2 x ``hidden``) causal LM, seeded with 0, pad id 0, no bos/eos, in eval mode."""
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, initializer_range=init, pad_token_id=0,
                  bos_token_id=None, eos_token_id=None)  # fmt: skip
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads,
                                         n_positions=context, **common)  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
    elif arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=context, **common,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    return model.to(dtype).eval()


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())


def count_forwards(model: nn.Module) -> list[int]:
    """Counts calls of ``model.forward`` in the returned one-element list; undo with
    ``del model.forward``."""
    calls = [0]
    forward = model.forward

    @functools.wraps(forward)
    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted
    return calls


@pytest.fixture
def close_figures() -> Iterator[None]:
    """Closes every matplotlib figure after the test (files that draw:
    ``pytestmark = pytest.mark.usefixtures("close_figures")``)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
