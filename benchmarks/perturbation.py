"""llmattr vs Captum, side by side: the perturbation methods on small CPU models.

Both libraries run in this one process on the same models, inputs, targets, baselines (zeros) and
feature masks, at equal settings (``perturbations_per_eval``, ``n_samples``). For every case the
script reports the median wall time of ``attribute()`` over several repetitions (after warm-up
runs; the two libraries alternate so that drifts in machine load hit both alike), the speed ratio
``captum / llmattr`` (above 1: llmattr is faster) and how the two libraries' attributions compare.

Models and cases:

* an MLP (64 → 256 → 256 → 10, ReLU) on a batch of 16: FeatureAblation per element (64
  features) and with a feature mask of 16 groups of 4; ShapleyValueSampling, Lime and KernelShap
  on the 16 groups; exact ShapleyValues on 6 groups (Captum averages over all 6! = 720 orderings,
  llmattr evaluates the 2^6 - 1 = 63 coalitions once each, so this row measures the algorithm);
* a small CNN (3x32x32 → conv(16) → ReLU → avgpool → conv(32) → ReLU → avgpool → linear(10)) on a
  batch of 4: Occlusion with window (3, 4, 4) and strides (3, 2, 2), 15 x 15 = 225 windows;
* the same FeatureAblation, Occlusion and ShapleyValueSampling cases again on models whose forward
  costs about as much for 256 rows as for 16 — a linear model (64 → 10) and a tiny CNN
  (conv(4, kernel 4, stride 4) → ReLU → linear(10)) — where batching perturbations pays off and
  the ratio measures the attribution code itself. On the MLP and the CNN the forwards alone
  take a large share of Captum's time at ``perturbations_per_eval`` >= 16 (``--floor`` shows
  how much), which caps the ratio any implementation could reach there.

What the last column compares:

* FeatureAblation, Occlusion and ShapleyValues are deterministic: max |captum - llmattr|.
* ShapleyValueSampling draws random feature orderings, and the libraries draw them differently,
  so values are not compared. Both estimates satisfy the efficiency property exactly — per
  example, the feature attributions sum to ``f(x) - f(baselines)`` — so the column reports each
  library's largest efficiency error (``eff c / m``) and checks the shapes.
* Lime and KernelShap draw Captum's samples in Captum's order from the same ``torch.manual_seed``
  (set before every call of either library), so values are compared where the fits agree too:
  Lime (both fit scikit-learn's Lasso, alpha 0.01) and KernelShap with llmattr given Captum's
  surrogate (``interpretable_model=SkLearnLinearRegression()``, the "Captum's fit" row). Both
  fit in float32, so expect differences of float32 rounding, not zero. llmattr's default
  KernelShap fit solves the Shapley constraints exactly rather than weighting them 10⁶ times, so
  that row reports efficiency errors (``eff c / m``) instead of a difference.

Usage::

    python benchmarks/perturbation.py              # full run (about 35 s on 2 idle cores)
    python benchmarks/perturbation.py --quick      # fewer repetitions, for a smoke test
    python benchmarks/perturbation.py --filter occlusion --threads 4 --repeat 9
    python benchmarks/perturbation.py --floor      # also time the models' forwards alone

``--floor`` replays the exact forwards one llmattr call makes (same inputs, same chunking) without
any attribution code around them: the time no implementation can beat at these settings, and so
the best ``captum / llmattr`` ratio any library could reach on this model.

Captum (``pip install llmattr[bench]``) is only needed here, and Captum's default Lime surrogate
needs scikit-learn (the Lime row is skipped, with a note, without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import (
    HEADER,
    MLP,
    RULE,
    add_clock_arg,
    add_timing_args,
    apply_timing_args,
    import_libraries,
    max_diff,
    median_time,
    row,
    time_case,
    versions,
)
from torch import Tensor, nn


# --------------------------------------------------------------------------------------- models
class CNN(nn.Module):
    """3x32x32 → conv(16) → ReLU → avgpool(2) → conv(32) → ReLU → avgpool(2) → linear(10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool1(self.relu1(self.conv1(x)))
        h = self.pool2(self.relu2(self.conv2(h)))
        return self.fc(h.flatten(1))


class TinyCNN(nn.Module):
    """3x32x32 → conv(4, kernel 4, stride 4) → ReLU → linear(10): a forward that costs about the
    same for 4 images as for 256, so batching perturbations pays off and the attribution code's
    own overhead decides the ratio."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One comparison: the same call made through each library.

    ``compare`` is ``"values"`` (max |captum - llmattr|), ``"efficiency"`` (each library's
    max |sum of feature attributions - (f(x) - f(baselines))|, via ``efficiency``) or
    ``"shapes"`` (shapes only).
    """

    name: str
    captum: Callable[[], Any]
    llmattr: Callable[[], Any]
    compare: str = "values"
    seed: int | None = None  # torch.manual_seed before every call when set
    efficiency: Callable[[Tensor], float] | None = None
    replay: Callable[[], Callable[[], Any]] | None = None  # see ``forward_floor``


def _groups(n_elements: int, n_groups: int) -> Tensor:
    """A ``(1, n_elements)`` mask of ``n_groups`` contiguous, near-equal groups."""
    return (torch.arange(n_elements) * n_groups // n_elements).unsqueeze(0)


def _efficiency_check(model: nn.Module, x: Tensor, target: Tensor, mask: Tensor) -> Callable:
    """``err(attr)``: max over examples of |sum of per-group attributions - (f(x) - f(0))|.

    Every element of a group carries the group's attribution, so one element per group is read.
    """
    with torch.no_grad():
        out_x, out_0 = model(x), model(torch.zeros_like(x))
    rows = torch.arange(x.shape[0])
    gain = (out_x[rows, target] - out_0[rows, target]).double()
    flat = mask.reshape(-1)
    first = torch.stack([(flat == g).nonzero()[0, 0] for g in range(int(flat.max()) + 1)])

    def err(attr: Tensor) -> float:
        per_group = attr.detach().reshape(attr.shape[0], -1)[:, first].double()
        return float((per_group.sum(1) - gain).abs().max())

    return err


def build_cases(captum_attr: Any, llmattr: Any) -> list[Case]:
    torch.manual_seed(0)
    mlp, cnn = MLP(64, 256).eval(), CNN().eval()
    linear, tiny_cnn = nn.Linear(64, 10).eval(), TinyCNN().eval()
    x_mlp = torch.randn(16, 64)
    y_mlp = torch.randint(0, 10, (16,))
    x_cnn = torch.randn(4, 3, 32, 32)
    y_cnn = torch.randint(0, 10, (4,))
    mask16, mask6 = _groups(64, 16), _groups(64, 6)

    cases: list[Case] = []

    def add(
        name: str,
        cls_name: str,
        model: nn.Module,
        compare: str = "values",
        seed: int | None = None,
        efficiency: Callable[[Tensor], float] | None = None,
        llmattr_init: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        c = getattr(captum_attr, cls_name)(model)
        init = llmattr_init or {}  # constructor arguments of llmattr's side only
        m = getattr(llmattr, cls_name)(model, **init)
        own = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}

        def replay() -> Callable[[], Any]:
            """Record the forwards of one llmattr call; return a function that redoes only them."""
            calls: list[tuple[Tensor, ...]] = []

            def recording(*args: Tensor) -> Tensor:
                calls.append(tuple(a.clone() for a in args))
                return model(*args)

            if seed is not None:
                torch.manual_seed(seed)
            getattr(llmattr, cls_name)(recording, **init).attribute(**own)

            def forwards() -> None:
                with torch.no_grad():
                    for args in calls:
                        model(*args)

            return forwards

        cases.append(
            Case(
                name,
                lambda: c.attribute(**kwargs),
                lambda: m.attribute(**own),
                compare,
                seed,
                efficiency,
                replay,
            )
        )

    mlp_args = dict(inputs=x_mlp, target=y_mlp)
    occlusion = dict(inputs=x_cnn, target=y_cnn, sliding_window_shapes=(3, 4, 4),
                     strides=(3, 2, 2))  # fmt: skip
    for tag, dense, conv in (("MLP", mlp, cnn), ("Linear", linear, tiny_cnn)):
        conv_tag = "CNN" if conv is cnn else "TinyCNN"
        # 1. FeatureAblation: every element a feature (64), then 16 groups
        for ppe in (1, 16, 64):
            add(f"FA {tag} b16 64 feats ppe{ppe}", "FeatureAblation", dense,
                perturbations_per_eval=ppe, **mlp_args)  # fmt: skip
        for ppe in (1, 16):
            add(f"FA {tag} b16 16 groups ppe{ppe}", "FeatureAblation", dense,
                feature_mask=mask16, perturbations_per_eval=ppe, **mlp_args)  # fmt: skip
        # 2. Occlusion: 225 windows
        for ppe in (1, 16, 64):
            add(f"Occlusion {conv_tag} b4 w3x4x4 s3x2x2 ppe{ppe}", "Occlusion", conv,
                perturbations_per_eval=ppe, **occlusion)  # fmt: skip
        # 3. ShapleyValueSampling on 16 groups: 25 orderings, 1 + 25 * 15 = 376 evaluations
        eff16 = _efficiency_check(dense, x_mlp, y_mlp, mask16)
        for ppe in (1, 16, 64):
            add(f"SVS {tag} b16 16 groups n25 ppe{ppe}", "ShapleyValueSampling", dense,
                compare="efficiency", seed=1, efficiency=eff16, feature_mask=mask16,
                n_samples=25, perturbations_per_eval=ppe, **mlp_args)  # fmt: skip
    # 4. exact ShapleyValues on 6 groups
    add("ShapleyValues MLP b16 6 groups ppe16", "ShapleyValues", mlp, feature_mask=mask6,
        perturbations_per_eval=16, **mlp_args)  # fmt: skip
    # 5. Lime and KernelShap: 200 samples on 16 groups, the same seed for both libraries
    sampled = dict(feature_mask=mask16, n_samples=200, perturbations_per_eval=16, **mlp_args)
    if importlib.util.find_spec("sklearn") is not None:
        add("Lime MLP b16 16 groups n200 ppe16", "Lime", mlp, seed=1, **sampled)
        add("KernelShap MLP b16 16 groups n200 ppe16 (Captum's fit)", "KernelShap", mlp,
            seed=1, llmattr_init={"interpretable_model": llmattr.SkLearnLinearRegression()},
            **sampled)  # fmt: skip
    else:
        print("(Lime skipped: Captum's default Lime surrogate needs scikit-learn.)")
    add("KernelShap MLP b16 16 groups n200 ppe16", "KernelShap", mlp, compare="efficiency",
        seed=1, efficiency=_efficiency_check(mlp, x_mlp, y_mlp, mask16), **sampled)  # fmt: skip
    return cases


# ------------------------------------------------------------------------------------- measuring
def forward_floor(case: Case, warmup: int, repeat: int) -> float:
    """Median seconds of the model's forwards alone, replayed with the inputs one llmattr call
    fed it: a lower bound for either library at these settings (Captum evaluates as many
    perturbations, in chunks of the same size, for FeatureAblation, Occlusion and the Shapley
    methods)."""
    assert case.replay is not None
    forwards = case.replay()
    return median_time(forwards, repeat, warmup)[0]


def difference(case: Case, out_captum: Any, out_llmattr: Any) -> str:
    """Max |captum - llmattr| of the attributions, efficiency errors, or a shape check."""
    a_c = out_captum if isinstance(out_captum, tuple) else (out_captum,)
    a_m = out_llmattr if isinstance(out_llmattr, tuple) else (out_llmattr,)
    a_c, a_m = tuple(a.detach() for a in a_c), tuple(a.detach() for a in a_m)
    shapes_c, shapes_m = [tuple(a.shape) for a in a_c], [tuple(a.shape) for a in a_m]
    if shapes_c != shapes_m:
        return f"SHAPE MISMATCH {shapes_c} vs {shapes_m}"
    if case.compare == "shapes":
        return "n/a (shapes match)"
    if case.compare == "efficiency":
        assert case.efficiency is not None
        err_c, err_m = case.efficiency(a_c[0]), case.efficiency(a_m[0])
        return f"n/a (shapes match); eff c {err_c:.1e} / m {err_m:.1e}"
    return max_diff(a_c, a_m)


def _ms(seconds: float) -> str:
    """Milliseconds, with two decimals below 10 ms."""
    return f"{seconds * 1e3:.2f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(parser)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="add a column: the model's forwards alone (llmattr's inputs replayed), a lower bound",
    )
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    repeat, warmup = apply_timing_args(parser, args)

    # Captum's Lime / KernelShap warn (e.g. about the batch being processed example by example)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    captum_attr, llmattr = import_libraries()

    print(f"{versions(llmattr, repeat, warmup)}; {args.clock} clock")
    print()
    header, rule = HEADER, RULE
    if args.floor:
        header += " forwards only (ms) | captum / forwards |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    total = time.perf_counter()
    for case in build_cases(captum_attr, llmattr):
        if args.filter and args.filter.lower() not in case.name.lower():
            continue
        t_c, t_m, out_c, out_m = time_case(case.captum, case.llmattr, warmup, repeat, case.seed)
        line = row(case.name, t_c, t_m, difference(case, out_c, out_m), _ms)
        if args.floor:
            t_f = forward_floor(case, warmup, repeat)
            line += f" {_ms(t_f)} | {t_c / t_f:.2f}x |"
        print(line, flush=True)
    print()
    print(
        "ratio = captum / llmattr (>1: llmattr faster). rel = max|diff| / max|captum attr|; "
        "eff c / m = each library's max |sum of attributions - (f(x) - f(baselines))| (where "
        "samples or fits differ, so values are not compared)."
        + (
            " forwards only = the model's forwards of one llmattr call, replayed alone (no "
            "attribution overhead): captum / forwards bounds the ratio any library could reach."
            if args.floor
            else ""
        )
        + f" Total {time.perf_counter() - total:.0f} s."
    )


if __name__ == "__main__":
    main()
