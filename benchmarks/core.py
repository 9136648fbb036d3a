"""llmattr vs Captum, side by side: the core gradient algorithms on small CPU models.

Both libraries run in this one process on the same models, inputs and targets. For every case the
script reports the median wall time of ``attribute()`` over several repetitions (after warm-up
runs; the two libraries alternate so that drifts in machine load hit both alike), the speed ratio
``captum / llmattr`` (above 1: llmattr is faster) and the largest absolute difference between the
two libraries' attributions (and convergence deltas, where returned).

The models use only ReLU, Linear, Conv2d and AvgPool2d, where DeepLift's rescale rule is the same in
both libraries (with Softmax or MaxPool the libraries may differ: llmattr's rules are exact). The
NoiseTunnel cases draw different noise in each library, so only their shapes are compared.

Usage::

    python benchmarks/core.py              # full run (about 20 s on 2 cores)
    python benchmarks/core.py --quick      # fewer repetitions, for a smoke test
    python benchmarks/core.py --threads 4 --repeat 9

Captum is only needed here (``pip install llmattr[bench]``); it is imported when the benchmark runs.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import (
    CNN,
    HEADER,
    MLP,
    RULE,
    add_timing_args,
    apply_timing_args,
    import_libraries,
    max_diff,
    row,
    time_case,
    versions,
)
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One comparison: the same call made through each library."""

    name: str
    captum: Callable[[], Any]
    llmattr: Callable[[], Any]
    compare: bool = True  # False: only shapes are compared (random noise differs)
    seed: int | None = None  # torch.manual_seed before every call when set


def build_cases(captum_attr: Any, llmattr: Any) -> list[Case]:
    torch.manual_seed(0)
    mlp, cnn = MLP().eval(), CNN().eval()
    x_mlp = torch.randn(32, 256)
    y_mlp = torch.randint(0, 10, (32,))
    x_cnn = torch.randn(8, 3, 32, 32)
    y_cnn = torch.randint(0, 10, (8,))
    shap_mlp = torch.randn(10, 256)
    shap_cnn = torch.randn(10, 3, 32, 32)

    def both(cls_name: str, model: nn.Module, wrap: str | None = None) -> tuple[Any, Any]:
        c, m = getattr(captum_attr, cls_name)(model), getattr(llmattr, cls_name)(model)
        if wrap is not None:
            c, m = getattr(captum_attr, wrap)(c), getattr(llmattr, wrap)(m)
        return c, m

    cases: list[Case] = []

    def add(name: str, pair: tuple[Any, Any], compare: bool = True, seed: int | None = None,
            **kwargs: Any) -> None:  # fmt: skip
        c, m = pair
        # each library gets its own copies: Captum sets requires_grad on its inputs during a call
        own = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        cases.append(
            Case(
                name,
                lambda: c.attribute(**kwargs),
                lambda: m.attribute(**own),
                compare,
                seed,
            )
        )

    ig = dict(n_steps=50, method="gausslegendre", return_convergence_delta=True)
    add("IG MLP b32 s50", both("IntegratedGradients", mlp), inputs=x_mlp, target=y_mlp, **ig)
    add(
        "IG MLP b32 s50 ibs256",
        both("IntegratedGradients", mlp),
        inputs=x_mlp,
        target=y_mlp,
        internal_batch_size=256,
        **ig,
    )
    add("IG CNN b8 s50", both("IntegratedGradients", cnn), inputs=x_cnn, target=y_cnn, **ig)
    dl = dict(return_convergence_delta=True)
    add("DeepLift MLP b32", both("DeepLift", mlp), inputs=x_mlp, target=y_mlp, **dl)
    add("DeepLift CNN b8", both("DeepLift", cnn), inputs=x_cnn, target=y_cnn, **dl)
    add(
        "DeepLiftShap MLP b32 x10",
        both("DeepLiftShap", mlp),
        inputs=x_mlp,
        baselines=shap_mlp,
        target=y_mlp,
        **dl,
    )
    add(
        "DeepLiftShap CNN b8 x10",
        both("DeepLiftShap", cnn),
        inputs=x_cnn,
        baselines=shap_cnn,
        target=y_cnn,
        **dl,
    )
    add(
        "NT(IG) smoothgrad MLP n10",
        both("IntegratedGradients", mlp, wrap="NoiseTunnel"),
        compare=False,
        seed=1,
        inputs=x_mlp,
        target=y_mlp,
        nt_type="smoothgrad",
        nt_samples=10,
        stdevs=0.2,
        n_steps=50,
    )
    add(
        "NT(Saliency) smoothgrad MLP n50",
        both("Saliency", mlp, wrap="NoiseTunnel"),
        compare=False,
        seed=1,
        inputs=x_mlp,
        target=y_mlp,
        nt_type="smoothgrad",
        nt_samples=50,
        stdevs=0.2,
    )
    return cases


# ------------------------------------------------------------------------------------ comparing
def _split(out: Any) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """(attributions as a tuple, delta or None) from an ``attribute()`` result, detached."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Tensor):
        attrs, delta = out
        delta = delta.detach()
    else:
        attrs, delta = out, None
    attrs = attrs if isinstance(attrs, tuple) else (attrs,)
    return tuple(a.detach() for a in attrs), delta


def difference(case: Case, out_captum: Any, out_llmattr: Any) -> str:
    """Max |captum - llmattr| of the attributions (and deltas), or a shape check."""
    (a_c, d_c), (a_m, d_m) = _split(out_captum), _split(out_llmattr)
    shapes_c = [tuple(a.shape) for a in a_c] + ([tuple(d_c.shape)] if d_c is not None else [])
    shapes_m = [tuple(a.shape) for a in a_m] + ([tuple(d_m.shape)] if d_m is not None else [])
    if shapes_c != shapes_m:
        return f"SHAPE MISMATCH {shapes_c} vs {shapes_m}"
    if not case.compare:
        return "n/a (shapes match)"
    text = max_diff(a_c, a_m)
    if d_c is not None and d_m is not None:
        d_diff = float((d_c.double() - d_m.double()).abs().max())
        text += f"; Δ {d_diff:.1e}"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(parser)
    args = parser.parse_args(argv)
    repeat, warmup = apply_timing_args(parser, args)

    # Captum warns on every DeepLift call (hooks set, inputs made to require grad)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    captum_attr, llmattr = import_libraries()

    print(versions(llmattr, repeat, warmup))
    print()
    print(HEADER)
    print(RULE)
    total = time.perf_counter()
    for case in build_cases(captum_attr, llmattr):
        if args.filter and args.filter.lower() not in case.name.lower():
            continue
        t_c, t_m, out_c, out_m = time_case(case.captum, case.llmattr, warmup, repeat, case.seed)
        print(row(case.name, t_c, t_m, difference(case, out_c, out_m)), flush=True)
    print()
    print(
        f"ratio = captum / llmattr (>1: llmattr faster). rel = max|diff| / max|captum attr|; "
        f"Δ = convergence deltas. Total {time.perf_counter() - total:.0f} s."
    )


if __name__ == "__main__":
    main()
