"""Measured optim renders on a trained CNN (issue 13): ``python benchmarks/optim.py``.

Trains :class:`llmattr.optim.digits_model.OptimDigitCNN` (upsampled scikit-learn digits, checks
held-out accuracy >= 0.9 first), then prints:

* per channel of the last conv layer (``relu3``, 8 channels): the channel's maximum over the
  1,400 training images vs the best of ``--restarts`` batched renders (``render_channels``,
  ``NaturalImage``, greyscale), plain and with ``RedirectedReLU`` (``replace_layers``);
* per class: the softmax probability of the class-logit render (target ``fc``);
* timings of training and rendering, with 1 thread and with torch's default thread count.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from llmattr.optim import render_channels, replace_layers
from llmattr.optim.digits_model import channel_train_max, train_optim_cnn

T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=256, help="optimizer steps per render")
    parser.add_argument("--restarts", type=int, default=3, help="starts per channel")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()

    torch.set_num_threads(1)
    trained, t_train = _timed(train_optim_cnn)
    model = trained.model
    print(f"training: {t_train:.1f} s (1 thread), held-out accuracy {trained.test_accuracy:.4f}")
    train_max = channel_train_max(model, model.relu3, trained.train_images)

    def channels():
        return render_channels(
            model,
            "relu3",
            list(range(8)),
            size=32,
            n_steps=args.steps,
            input_channels=1,
            restarts=args.restarts,
            return_activations=True,
        )

    def classes():
        return render_channels(
            model,
            "fc",
            list(range(10)),
            size=32,
            n_steps=args.steps,
            input_channels=1,
            restarts=args.restarts,
        )

    timings = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        (_, act), timings[("channels", threads)] = _timed(channels)
        images, timings[("classes", threads)] = _timed(classes)
    torch.set_num_threads(default_threads)
    with replace_layers(model):
        (_, act_redirected), _ = _timed(channels)

    print(f"\nchannels of relu3 ({args.steps} steps, best of {args.restarts} restarts)")
    print(f"{'channel':>7} {'train max':>10} {'render':>10} {'redirected':>11} {'beats':>6}")
    for c in range(8):
        beats = "yes" if act[c] > train_max[c] else "no"
        print(f"{c:>7} {train_max[c]:>10.3f} {act[c]:>10.3f} {act_redirected[c]:>11.3f} {beats:>6}")
    n_beat = int((act > train_max).sum())
    n_beat_r = int((act_redirected > train_max).sum())
    print(f"beat the training max: {n_beat}/8 plain, {n_beat_r}/8 with RedirectedReLU")

    with torch.no_grad():
        prob = torch.softmax(model(images), dim=1).diag()
    print("\nclass-logit renders: softmax probability of the target class")
    print(" ".join(f"{k}:{p:.4f}" for k, p in enumerate(prob.tolist())))
    print(f">= 0.99: {int((prob >= 0.99).sum())}/10")

    print("\ntimings (s)")
    print(f"{'render':>10} {'threads':>7} {'seconds':>8}")
    for (what, threads), seconds in timings.items():
        print(f"{what:>10} {threads:>7} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
