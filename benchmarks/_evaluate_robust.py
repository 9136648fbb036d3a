"""llmattr.robust vs captum.robust: FGSM and PGD on the same model and inputs (called by
``benchmarks/evaluate.py``).

* FGSM (one step) and PGD (20 steps: Linf from a random start, L2 from the images) on the CNN
  (3x32x32) for a batch of 32 images in [0, 1], cross-entropy loss per example (the CNN returns
  logits, so Captum's default ``-log(output)`` does not apply), bounds [0, 1]; both libraries
  are seeded identically before every call (Captum's L2 random start fails for a batch, so the
  L2 case starts from the images).

The last column compares the perturbed images (float32; the two libraries take the same steps).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from _common import CNN, import_libraries, max_diff, row, time_case


def run(repeat: int, warmup: int) -> list[str]:
    """Table rows: case, Captum ms, llmattr ms, ratio, max |difference|."""
    import_libraries()
    import captum.robust as cr

    import llmattr.robust as lr

    torch.manual_seed(0)
    cnn = CNN().eval()
    images = torch.rand(32, 3, 32, 32)
    labels = torch.randint(0, 10, (32,))
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    bounds = dict(lower_bound=0.0, upper_bound=1.0)
    fgsm_c, fgsm_m = cr.FGSM(cnn, loss, **bounds), lr.FGSM(cnn, loss, **bounds)
    pgd_c, pgd_m = cr.PGD(cnn, loss, **bounds), lr.PGD(cnn, loss, **bounds)
    pgd_args = (8 / 255, 2 / 255, 20, labels)
    cases: list[tuple[str, Any, Any]] = [
        (
            "FGSM CNN batch 32",
            lambda: fgsm_c.perturb(images, 8 / 255, labels),
            lambda: fgsm_m.perturb(images, 8 / 255, labels),
        ),
        (
            "PGD Linf 20 steps CNN batch 32, random start",
            lambda: pgd_c.perturb(images, *pgd_args, random_start=True),
            lambda: pgd_m.perturb(images, *pgd_args, random_start=True),
        ),
        (
            "PGD L2 20 steps CNN batch 32",
            lambda: pgd_c.perturb(images, 0.5, 0.01, 20, labels, norm="L2"),
            lambda: pgd_m.perturb(images, 0.5, 0.01, 20, labels, norm="L2"),
        ),
    ]
    rows: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's "did not already require gradients" notices
        for name, captum_fn, llmattr_fn in cases:
            t_c, t_m, out_c, out_m = time_case(captum_fn, llmattr_fn, warmup, repeat, seed=0)
            rows.append(row(name, t_c, t_m, max_diff([out_c.detach()], [out_m])))
    return rows


if __name__ == "__main__":
    from _common import HEADER, RULE

    print(HEADER, RULE, *run(3, 1), sep="\n")
