"""One process of a split attribution, launched by ``tests/test_dataset_split.py`` with
``python -m torch.distributed.run --nproc_per_node N tests/dist_split_worker.py OUT SCENARIO``.

Every rank explains the same prompt of the demo model (float64 weights) and writes
``OUT/rank<r>.json``: per case, the result's JSON, the perturbed prompts this rank scored
(counted at the input, independently of the splitter's own counters) and, for the error cases,
the error each rank raised. The test builds the same cases in one process (:func:`cases`).

Scenarios: ``"cases"`` (results, then the error cases), ``"crash"`` (rank 1 dies mid-way),
``"bench"`` (timing of one large attribution, for the README; not run by the tests).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's llmattr

import torch.distributed as dist

from llmattr import (
    FeatureAblation,
    KernelShap,
    LLMAttribution,
    ProductBaselines,
    ShapleyValueSampling,
    TextTemplateInput,
    TextTokenInput,
)
from llmattr.dataset.split import SplitAttribution
from llmattr.demo import load_demo_model, load_eval_prompts

# name -> (method, arguments): every split case is compared with the one-process call
CASES: dict[str, tuple[type, dict[str, Any]]] = {
    "ablation": (FeatureAblation, {}),
    "shapley": (ShapleyValueSampling, {"n_samples": 3, "generator": 0}),
    "kernel_shap": (KernelShap, {"n_samples": 64, "generator": 1, "perturbations_per_eval": 16}),
}


def demo() -> tuple[Any, Any, str, str]:
    """The demo model in float64, its tokenizer, a prompt and its answer."""
    model, tokenizer = load_demo_model()
    example = load_eval_prompts("recall")[0]
    return model.double(), tokenizer, example.prompt, example.answer


TEMPLATE_ARGS: dict[str, Any] = {"n_samples": 2, "generator": 0, "num_trials": 2}


def template(seed: int | None = 4) -> TextTemplateInput:
    """The recall prompt as a template: its box numbers and colours are the values, each
    replaced by another number or colour drawn per trial."""
    box = "the key of box {} is {} . "
    values = ["two", "red", "one", "white", "eight", "pink"]
    candidates = [["six", "nine"], ["blue", "green"]] * 3
    return TextTemplateInput(
        box * 3 + "the key of box two is",
        values,
        baselines=ProductBaselines(candidates, seed=seed),
    )


def counted_input(tokenizer: Any, prompt: str) -> tuple[TextTokenInput, list[int]]:
    """The prompt's input, and a counter of the perturbed prompts scored from it."""
    inp = TextTokenInput(prompt, tokenizer, skip_tokens=[tokenizer.bos_token_id])
    rows = [0]
    perturbed_ids = inp.perturbed_ids

    def counting(presence: torch.Tensor) -> Any:
        rows[0] += presence.shape[0]
        return perturbed_ids(presence)

    inp.perturbed_ids = counting  # type: ignore[method-assign]
    return inp, rows


def linear_case() -> tuple[Callable[..., Any], torch.Tensor]:
    """A linear model on a batch of 2 (the generic, non-LLM path)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 2, generator=g, dtype=torch.float64)
    return (lambda x: x @ weight), torch.randn(2, 6, generator=g, dtype=torch.float64)


def _error_case(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        fn()
    except Exception as err:
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None, "message": ""}


def run_cases(rank: int) -> dict[str, Any]:
    model, tokenizer, prompt, answer = demo()
    out: dict[str, Any] = {}
    for name, (method, kwargs) in CASES.items():
        inp, rows = counted_input(tokenizer, prompt)
        llm = LLMAttribution(method(model), tokenizer)
        split = SplitAttribution(llm)
        result = split.attribute(inp, answer, **kwargs)
        out[name] = {
            "result": result.to_dict(),
            "rows": rows[0],
            "rows_evaluated": split.rows_evaluated,
            "rows_total": split.rows_total,
            # the user's method keeps its class and forward
            "untouched": type(llm.attr_method) is method and llm.attr_method.forward_func is model,
        }
    # a template whose values' baselines are drawn per trial (seeded ProductBaselines)
    split = SplitAttribution(LLMAttribution(ShapleyValueSampling(model), tokenizer))
    result = split.attribute(template(), answer, **TEMPLATE_ARGS)
    out["template"] = {"result": result.to_dict()}
    forward, x = linear_case()
    linear = SplitAttribution(KernelShap(forward)).attribute(x, 1, n_samples=30, generator=3)
    out["linear"] = {"result": linear.tolist()}

    # a forward that fails on rank 1 only, in its share of the perturbed prompts
    inp, rows = counted_input(tokenizer, prompt)
    if rank == 1:
        inp.perturbed_ids = _failing(inp.perturbed_ids, after=0)  # type: ignore[method-assign]
    llm = LLMAttribution(ShapleyValueSampling(model), tokenizer)
    out["fails_in_forward"] = _error_case(
        lambda: SplitAttribution(llm).attribute(inp, answer, n_samples=2, generator=0)
    )
    # a failure before any perturbed forward, on rank 1 only (its unperturbed score)
    inp, rows = counted_input(tokenizer, prompt)
    broken = model if rank == 0 else _Broken(model)
    llm = LLMAttribution(FeatureAblation(broken), tokenizer)
    out["fails_before"] = _error_case(lambda: SplitAttribution(llm).attribute(inp, answer))
    # the processes disagree on the target: refused before any forward
    inp, rows = counted_input(tokenizer, prompt)
    llm = LLMAttribution(KernelShap(model), tokenizer)
    target = answer if rank == 0 else "white"
    out["disagree"] = _error_case(
        lambda: SplitAttribution(llm).attribute(inp, target, n_samples=8, generator=0)
    )
    out["disagree"]["rows"] = rows[0]
    # the template's baselines draw from Python's global random, seeded differently
    random.seed(rank)
    unseeded = template(seed=None)
    out["template_unseeded"] = _error_case(
        lambda: SplitAttribution(llm).attribute(unseeded, answer, n_samples=8, generator=0)
    )
    # torch's global generators differ and no generator is passed
    torch.manual_seed(rank)
    out["unseeded"] = _error_case(lambda: SplitAttribution(llm).attribute(inp, answer, n_samples=8))
    # still in step after the errors: one more split call succeeds
    inp, rows = counted_input(tokenizer, prompt)
    again = SplitAttribution(LLMAttribution(FeatureAblation(model), tokenizer))
    out["after_errors"] = {"result": again.attribute(inp, answer).to_dict()}
    return out


def _failing(fn: Callable[..., Any], after: int) -> Callable[..., Any]:
    calls = [0]

    def failing(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError("injected failure on rank 1")
        return fn(*args)

    return failing


class _Broken(torch.nn.Module):
    """The model, failing on every forward (generation config and all else delegated)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this rank's model is broken")


def crash(rank: int) -> dict[str, Any]:
    """Rank 1 dies in its share of the forwards; rank 0 must not wait forever."""
    forward, x = linear_case()

    def dying(inputs: torch.Tensor) -> torch.Tensor:
        if rank == 1:
            os._exit(3)
        return forward(inputs)

    result = SplitAttribution(KernelShap(dying)).attribute(x, 1, n_samples=30, generator=3)
    return {"result": result.tolist()}


def bench(rank: int) -> dict[str, Any]:
    """Timing of one large attribution: 200 word features (the demo model's context raised
    to 256 positions), KernelShap at 2000 samples and Shapley sampling at 10 orderings (1991
    prompts); each rank reports its seconds and the prompts it scored. Run with
    ``--nproc_per_node 1`` for the one-process time (the plain call)."""
    import time

    model, tokenizer, prompt, answer = demo()
    model.config.max_position_embeddings = 256
    words = (prompt.split() * 8)[:200]
    out: dict[str, Any] = {}
    for name, method, kwargs in [
        ("kernel_shap", KernelShap, {"n_samples": 2000, "generator": 0}),
        ("shapley", ShapleyValueSampling, {"n_samples": 10, "generator": 0}),
    ]:
        inp, rows = counted_input(tokenizer, " ".join(words))
        split = SplitAttribution(LLMAttribution(method(model), tokenizer))
        dist.barrier()
        start = time.perf_counter()
        result = split.attribute(inp, answer, **kwargs)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "rows": rows[0], "seq_attr": result.seq_attr.tolist()}
    return out


def main(out_dir: str, scenario: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    try:
        out = {"cases": run_cases, "crash": crash, "bench": bench}[scenario](rank)
        out["world"] = dist.get_world_size()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out), encoding="utf-8")
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
