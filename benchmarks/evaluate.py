"""llmattr vs Captum, side by side: evaluating explanations and models (issue 14).

One table over three parts, each in its own module (``_evaluate_*.py``, runnable alone):

* ``_evaluate_metrics``: ``infidelity`` and ``sensitivity_max`` on the same models and
  attributions (llmattr draws every perturbation at once and batches them);
* ``_evaluate_robust``: ``FGSM`` and ``PGD`` (20 steps) on a CNN;
* ``_evaluate_tcav``: ``TCAV`` on a 6-layer model over 3 concepts.

Each row: the median wall time of each library over ``--repeat`` runs (after ``--warmup``), the
ratio Captum / llmattr (above 1: llmattr is faster) and the largest difference of their outputs.

Usage::

    python benchmarks/evaluate.py                          # 2 threads, 9 runs per case
    python benchmarks/evaluate.py --threads 1 --clock cpu  # steadier on a busy machine
    python benchmarks/evaluate.py --quick --filter tcav
"""

from __future__ import annotations

import argparse
import importlib
import time
import warnings

from _common import (
    HEADER,
    RULE,
    add_clock_arg,
    add_timing_args,
    apply_timing_args,
    import_libraries,
    versions,
)

PARTS = ("_evaluate_metrics", "_evaluate_robust", "_evaluate_tcav")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    repeat, warmup = apply_timing_args(parser, args)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    _, llmattr = import_libraries()
    print(f"{versions(llmattr, repeat, warmup)}; {args.clock} clock")
    print()
    print(HEADER)
    print(RULE)
    start = time.perf_counter()
    for part in PARTS:
        if args.filter and args.filter.lower() not in part.lower():
            continue
        for line in importlib.import_module(part).run(repeat, warmup):
            print(line, flush=True)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
