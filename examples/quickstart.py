"""Quickstart: which input features does a small trained classifier rely on?

A two-layer network learns ``y = [3 x0 - 2 x1 + noise > 0]`` from eight features, of which only
x0 and x1 matter. Every gradient method then attributes its prediction; the attributions should
concentrate on x0 and x1, and IntegratedGradients / DeepLift sum to f(x) - f(baseline) (the
convergence delta printed is that gap). Runs offline in a few seconds on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from llmattr import (
    LRP,
    DeepLift,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)


def train_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(2048, 8)
    y = (3 * x[:, 0] - 2 * x[:, 1] + 0.1 * torch.randn(2048) > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"trained: accuracy {accuracy:.3f} on the training set")
    return model.eval(), x[:16]


def main() -> None:
    model, x = train_model()
    target = model(x).argmax(1)
    baseline = torch.zeros(1, 8)
    methods = {
        "Saliency": lambda: Saliency(model).attribute(x, target=target),
        "InputXGradient": lambda: InputXGradient(model).attribute(x, target=target),
        "IntegratedGradients": lambda: IntegratedGradients(model).attribute(
            x, baseline, target=target, return_convergence_delta=True
        ),
        "DeepLift": lambda: DeepLift(model).attribute(
            x, baseline, target=target, return_convergence_delta=True
        ),
        "GradientShap": lambda: GradientShap(model).attribute(
            x, torch.randn(20, 8), target=target, n_samples=20
        ),
        "LRP": lambda: LRP(model).attribute(x, target=target),
        "SmoothGrad": lambda: NoiseTunnel(Saliency(model)).attribute(
            x, nt_samples=20, stdevs=0.3, target=target
        ),
    }
    print(f"\n{'method':<20} {'mean |attr| per feature (x0 … x7)':<58} {'max |delta|':>11}")
    for name, run in methods.items():
        out = run()
        attr, delta = out if isinstance(out, tuple) else (out, None)
        share = attr.abs().mean(0)
        cells = " ".join(f"{v:6.3f}" for v in share.tolist())
        gap = f"{delta.abs().max().item():.1e}" if delta is not None else "-"
        top = set(share.argsort(descending=True)[:2].tolist())
        flag = "" if top == {0, 1} else "  (top-2 is not {x0, x1})"
        print(f"{name:<20} {cells:<58} {gap:>11}{flag}")


if __name__ == "__main__":
    main()
