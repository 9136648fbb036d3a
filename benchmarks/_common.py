"""Pieces the llmattr-vs-Captum benchmark scripts share: options, timing, models, the table.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder on ``sys.path``, so
they import this module as ``_common``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------- options
def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--repeat``, ``--warmup``, ``--quick`` and ``--filter``."""
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per library")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per library")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--filter", default=None, help="only cases whose name contains this")


def add_clock_arg(parser: argparse.ArgumentParser) -> None:
    """``--clock wall|cpu`` (read by ``apply_timing_args``)."""
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default) or this process's CPU time, steadier on a loaded machine "
        "(meaningful with --threads 1)",
    )


def apply_timing_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, int]:
    """Set the clock (when the parser has ``--clock``) and torch's threads; ``(repeat, warmup)``.

    Without ``--repeat`` / ``--warmup``: 9 runs after 2 warm-up runs, or 3 after 1 with ``--quick``.
    """
    global CLOCK
    if hasattr(args, "clock"):
        CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 9)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeat < 1 or warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    return repeat, warmup


def import_libraries() -> tuple[Any, Any]:
    """``(captum.attr, llmattr)``; exits with a hint when Captum is missing."""
    try:
        import captum.attr as captum_attr
    except ImportError:
        sys.exit("This benchmark needs Captum: pip install 'llmattr[bench]' (or captum>=0.7).")
    try:
        import llmattr
    except ImportError:  # run from a checkout without installing
        sys.path.insert(0, str(ROOT))
        import llmattr
    return captum_attr, llmattr


# ---------------------------------------------------------------------------------------- timing
CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: time.process_time


def _run(fn: Callable[[], Any], seed: int | None) -> tuple[Any, float]:
    if seed is not None:
        torch.manual_seed(seed)
    start = CLOCK()
    out = fn()
    return out, CLOCK() - start


def time_case(
    captum: Callable[[], Any],
    llmattr: Callable[[], Any],
    warmup: int,
    repeat: int,
    seed: int | None = None,
) -> tuple[float, float, Any, Any]:
    """Median seconds of (captum, llmattr) and one output of each.

    The libraries alternate (which goes first flips every repetition), so that drifts in machine
    load hit both alike; ``seed`` (when set) seeds torch before every call.
    """
    fns = {"captum": captum, "llmattr": llmattr}
    for _ in range(warmup):
        _run(captum, seed)
        _run(llmattr, seed)
    times: dict[str, list[float]] = {"captum": [], "llmattr": []}
    outs: dict[str, Any] = {}
    gc.collect()
    for r in range(repeat):
        order = ("captum", "llmattr") if r % 2 == 0 else ("llmattr", "captum")
        for lib in order:
            outs[lib], dt = _run(fns[lib], seed)
            times[lib].append(dt)
    return (
        statistics.median(times["captum"]),
        statistics.median(times["llmattr"]),
        outs["captum"],
        outs["llmattr"],
    )


def median_time(fn: Callable[[], Any], repeat: int, warmup: int) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``repeat`` runs after ``warmup`` runs, and its last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        start = CLOCK()
        out = fn()
        times.append(CLOCK() - start)
    return statistics.median(times), out


# ---------------------------------------------------------------------------------------- models
class MLP(nn.Module):
    """``n_in`` → ``hidden`` → ``hidden`` → 10 with ReLU (one module instance per activation, as
    DeepLift needs)."""

    def __init__(self, n_in: int = 256, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class CNN(nn.Module):
    """3x32x32 → conv(16) → ReLU → conv(32) → ReLU [→ conv(32) → ReLU] → avgpool(2) → linear(10).

    ``conv3=True`` adds the bracketed layer (so that ``conv2`` is a middle layer, with work on
    both sides of it). Average pooling is linear, so DeepLift has one answer for it in both
    libraries.
    """

    def __init__(self, conv3: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.has_conv3 = conv3
        if conv3:
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
            self.relu3 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(32 * 16 * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        if self.has_conv3:
            h = self.relu3(self.conv3(h))
        return self.fc(self.pool(h).flatten(1))


# ----------------------------------------------------------------------------------------- table
HEADER = "| case | captum (ms) | llmattr (ms) | ratio | max\\|diff\\| |"
RULE = "|---|---:|---:|---:|---|"


def versions(llmattr: Any, repeat: int, warmup: int) -> str:
    """The first line of a report: library versions, threads and repetitions."""
    import captum

    return (
        f"torch {torch.__version__}, captum {captum.__version__}, llmattr {llmattr.__version__}; "
        f"{torch.get_num_threads()} threads; median of {repeat} runs after {warmup} warm-up"
    )


def ms(seconds: float) -> str:
    """Milliseconds, one decimal."""
    return f"{seconds * 1e3:.1f}"


def row(name: str, t_c: float, t_m: float, diff: str, fmt: Callable[[float], str] = ms) -> str:
    """A table row: case, both times (through ``fmt``), the ratio and the comparison."""
    return f"| {name} | {fmt(t_c)} | {fmt(t_m)} | {t_c / t_m:.2f}x | {diff} |"


def max_diff(a_c: list[Tensor] | tuple[Tensor, ...], a_m: list[Tensor] | tuple[Tensor, ...]) -> str:
    """Max |captum - llmattr| over paired tensors (and relative to max |captum|), or a mismatch."""
    shapes_c, shapes_m = [tuple(a.shape) for a in a_c], [tuple(a.shape) for a in a_m]
    if shapes_c != shapes_m:
        return f"SHAPE MISMATCH {shapes_c} vs {shapes_m}"
    diff = max(float((c.double() - m.double()).abs().max()) for c, m in zip(a_c, a_m))
    scale = max(float(c.abs().max()) for c in a_c)
    return f"{diff:.1e} (rel {diff / scale:.0e})" if scale > 0 else f"{diff:.1e}"
