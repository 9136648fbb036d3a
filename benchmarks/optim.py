"""Measured optim renders on a trained CNN (issue 13): ``python benchmarks/optim.py``.

Trains :class:`llmattr.optim.digits_model.OptimDigitCNN` (upsampled scikit-learn digits, checks
held-out accuracy >= 0.9 first), then prints:

* per channel of the last conv layer (``relu3``, 8 channels): the channel's maximum over the
  1,400 training images vs the best of ``--restarts`` batched renders (``render_channels``,
  ``NaturalImage``, greyscale), plain and with ``RedirectedReLU`` (``replace_layers``);
* per class: the softmax probability of the class-logit render (target ``fc``);
* timings of training and rendering, with 1 thread and with torch's default thread count;
* language model (``--lm``, the shipped demo model, vocabulary 48): for 10 random MLP neurons of
  ``model.layers.1.mlp.act_fn``, the exhaustive maximum over all 48³ three-token prompts, the
  best of 1,000 three-token windows of the demo corpus, :func:`search_prompt` (seed 0) and
  :func:`optimize_soft_prompt` (its soft value, an upper bound, and its projection to tokens),
  with their times.
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
    parser.add_argument("--lm", action="store_true", help="only the language-model part")
    args = parser.parse_args()
    if args.lm:
        language_model()
        return
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


def language_model() -> None:
    """Prompt search and soft prompts on the demo model, graded by brute force (one thread)."""
    import itertools
    import random

    from llmattr.demo import load_demo_model
    from llmattr.demo.tasks import TASKS, make_example
    from llmattr.optim import ModuleOutputsHook, optimize_soft_prompt, search_prompt
    from llmattr.optim.layers import resolve_target

    torch.set_num_threads(1)
    model, tok = load_demo_model()
    layer = "model.layers.1.mlp.act_fn"
    module = resolve_target(model, layer)

    def last_token_acts(ids: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad(), ModuleOutputsHook([module]) as hook:
            for chunk in ids.split(16384):
                model(input_ids=chunk)
                out.append(hook.consume_outputs()[module][:, -1, :])
        return torch.cat(out)

    v = torch.arange(model.config.vocab_size)
    table, t_exhaustive = _timed(lambda: last_token_acts(torch.cartesian_prod(v, v, v)))
    rng, seen = random.Random(0), {}  # 1,000 distinct windows, as the tests draw them
    for i in itertools.count():
        if len(seen) == 1000:
            break
        ids = tok(make_example(TASKS[i % len(TASKS)], rng).prompt, add_special_tokens=False)
        start = rng.randrange(len(ids["input_ids"]) - 2)
        seen.setdefault(tuple(ids["input_ids"][start : start + 3]), None)
    corpus = last_token_acts(torch.tensor(list(seen)))
    neurons = torch.randperm(128, generator=torch.Generator().manual_seed(0))[:10].tolist()
    print(f"demo model, {layer}: 48^3 prompts scored by brute force in {t_exhaustive:.1f} s")
    print(f"{'neuron':>6} {'exhaustive':>10} {'corpus':>7} {'search':>7} {'ratio':>6} "
          f"{'s':>5} {'soft':>6} {'projected':>9} {'s':>5}")  # fmt: skip
    n95 = n_corpus = n_soft = 0
    for n in neurons:
        best = float(table[:, n].max())
        found, t_search = _timed(lambda n=n: search_prompt(model, layer, n, seed=0))
        soft, t_soft = _timed(lambda n=n: optimize_soft_prompt(model, layer, n, length=3))
        ratio = found.value / best
        n95 += ratio >= 0.95
        n_corpus += found.value >= float(corpus[:, n].max())
        n_soft += soft.soft_value >= best
        print(f"{n:>6} {best:>10.3f} {float(corpus[:, n].max()):>7.3f} {found.value:>7.3f} "
              f"{ratio:>6.1%} {t_search:>5.1f} {soft.soft_value:>6.2f} {soft.value:>9.3f} "
              f"{t_soft:>5.1f}")  # fmt: skip
    print(
        f"search >= 95% of the exhaustive max: {n95}/10; beats the best of 1,000 corpus "
        f"windows: {n_corpus}/10; soft value >= exhaustive max: {n_soft}/10"
    )


if __name__ == "__main__":
    main()
