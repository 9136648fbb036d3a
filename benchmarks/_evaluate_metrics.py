"""llmattr.metrics vs captum.metrics: infidelity and sensitivity_max on the same models and
attributions (called by ``benchmarks/evaluate.py``).

* infidelity of integrated-gradients attributions of the MLP (256 → 512 → 512 → 10) on a batch
  of 16, 50 Gaussian perturbations per example, all at once and in chunks of 64 rows (a
  deterministic perturbation there: Captum calls ``perturb_func`` once per chunk, llmattr once
  for all rows, so random draws would differ);
* sensitivity_max of integrated gradients (20 steps, each library's own IG) on the CNN
  (3x32x32) on a batch of 4, 8 perturbations per example (Captum's default noise, drawn from the
  same seed: float32 on the CPU in both).

Both libraries are seeded identically before every call, so the last column compares values.
"""

from __future__ import annotations

from typing import Any

import torch
from _common import CNN, MLP, import_libraries, max_diff, row, time_case


def _noise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    noise = 0.01 * torch.randn_like(x)
    return noise, x - noise


def _wave(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pert = 0.01 * torch.sin(3.0 * x)
    return pert, x - pert


def run(repeat: int, warmup: int) -> list[str]:
    """Table rows: case, Captum ms, llmattr ms, ratio, max |difference|."""
    captum_attr, llmattr = import_libraries()
    import captum.metrics as cm

    from llmattr.metrics.infidelity import infidelity
    from llmattr.metrics.sensitivity import sensitivity_max

    torch.manual_seed(0)
    rows: list[str] = []
    mlp = MLP().eval()
    x = torch.randn(16, 256)
    attr = captum_attr.IntegratedGradients(mlp).attribute(x, target=3)
    cases: list[tuple[str, Any, Any]] = []
    for name, perturb, chunk in (
        ("infidelity MLP 16x50", _noise, None),
        ("infidelity MLP 16x50, 64 rows per forward", _wave, 64),
    ):
        kw: dict[str, Any] = dict(target=3, n_perturb_samples=50, max_examples_per_batch=chunk)
        cases.append((
            name,
            lambda p=perturb, k=kw: cm.infidelity(mlp, p, x, attr, **k),
            lambda p=perturb, k=kw: infidelity(mlp, p, x, attr, **k),
        ))  # fmt: skip
    cnn = CNN().eval()
    images = torch.randn(4, 3, 32, 32)
    ig_c = captum_attr.IntegratedGradients(cnn)
    ig_m = llmattr.IntegratedGradients(cnn)
    skw: dict[str, Any] = dict(target=1, n_perturb_samples=8, n_steps=20)
    cases.append((
        "sensitivity_max IG CNN 4x8",
        lambda: cm.sensitivity_max(ig_c.attribute, images, **skw),
        lambda: sensitivity_max(ig_m.attribute, images, **skw),
    ))  # fmt: skip
    for name, run_c, run_m in cases:
        t_c, t_m, out_c, out_m = time_case(run_c, run_m, warmup, repeat, seed=0)
        rows.append(row(name, t_c, t_m, max_diff([out_c], [out_m])))
    return rows


if __name__ == "__main__":
    import _common

    print(_common.HEADER)
    print(_common.RULE)
    print("\n".join(run(1, 0)))
