"""llmattr.concept.TCAV vs captum.concept.TCAV (called by ``benchmarks/evaluate.py``).

A 6-layer MLP (64 -> 6 x [Linear(128) + ReLU] -> 10), 3 concepts of 64 examples (DataLoaders in
batches of 16), the 3 pairs of concepts as experimental sets, all 6 ReLU layers, 32 inputs. The
same deterministic classifier (llmattr's DefaultClassifier) is plugged into both, so the CAVs and
the ``sign_count`` scores must agree (the last column); ``magnitude`` differs by definition (see
the README). Each timed run starts from an empty cache folder (activations, CAVs, scores); the
second row times a repeated ``interpret`` on a warm cache.

Where the time goes: Captum runs one forward per concept batch per layer set and writes one file
per batch, then one forward and backward per layer for the scores; llmattr stops each concept
forward at the deepest layer, writes one file per (layer, concept), and takes the gradients of
all layers from one forward and backward.
"""

from __future__ import annotations

import itertools
import tempfile

import torch
from _common import import_libraries, median_time, row
from torch import nn
from torch.utils.data import DataLoader


class _Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        dims = [64] + [128] * 6
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in itertools.pairwise(dims)
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def run(repeat: int, warmup: int) -> list[str]:
    """Table rows: case, Captum ms, llmattr ms, ratio, max |sign_count difference|."""
    import_libraries()
    import captum.concept as cc

    from llmattr.concept import TCAV, Concept, DefaultClassifier

    model = _Deep().eval()
    layers = [f"blocks.{i}.1" for i in range(6)]
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(64, 64, generator=g) + 0.5 * i for i in range(3)]
    x = torch.randn(32, 64, generator=g)

    def sets(concept_cls: type) -> list[list]:
        c = [concept_cls(i, f"c{i}", DataLoader(d, batch_size=16)) for i, d in enumerate(data)]
        return [[c[0], c[1]], [c[0], c[2]], [c[1], c[2]]]

    def captum_run(path: str | None = None) -> dict:
        tcav = cc.TCAV(model, layers, classifier=DefaultClassifier(),
                       save_path=path or tempfile.mkdtemp())  # fmt: skip
        return tcav.interpret(x, sets(cc.Concept), target=3)

    def ours_run(path: str | None = None) -> dict:
        tcav = TCAV(model, layers, classifier=DefaultClassifier(),
                    save_path=path or tempfile.mkdtemp())  # fmt: skip
        return tcav.interpret(x, sets(Concept), target=3)

    def diff(a: dict, b: dict) -> str:
        d = max(float((a[k][n]["sign_count"].double() - b[k][n]["sign_count"].double())
                      .abs().max()) for k in a for n in layers)  # fmt: skip
        return f"sign_count {d:.1e}"

    rows = []
    t_c, out_c = median_time(captum_run, repeat, warmup)
    t_m, out_m = median_time(ours_run, repeat, warmup)
    rows.append(row("TCAV 6 layers x 3 concepts, cold cache", t_c, t_m, diff(out_c, out_m)))
    warm_c, warm_m = tempfile.mkdtemp(), tempfile.mkdtemp()
    captum_run(warm_c), ours_run(warm_m)
    t_c, out_c = median_time(lambda: captum_run(warm_c), repeat, warmup)
    t_m, out_m = median_time(lambda: ours_run(warm_m), repeat, warmup)
    rows.append(row("TCAV 6 layers x 3 concepts, warm cache", t_c, t_m, diff(out_c, out_m)))
    return rows


if __name__ == "__main__":
    print("\n".join(run(3, 1)))
