"""Ground truth: do the attribution methods find the word that decides the demo model's answer?

The shipped demo model (:mod:`llmattr.demo`) answers synthetic tasks whose decisive prompt word
is known by construction — key–value recall (the value of the queried box), copying (the list
word being copied) and comparisons (the number chosen). On held-out prompts the model answers,
every method attributes the answer's log-probability to the prompt's words, and the script
reports per method and task:

* **top-1**: the share of prompts where the method ranks a decisive word first; **top-1 rel**:
  where it ranks first a decisive *or relevant* word (the answer also depends on, e.g., the
  queried box's number, which appears twice in a recall prompt);
* **comp@k** (comprehensiveness): ``p(answer) - p(answer | top-k words replaced)``, higher is
  better; **suff@k** (sufficiency): ``p(answer) - p(answer | only the top-k words kept)``, lower
  is better (see :mod:`llmattr.metrics.faithfulness`; words are replaced by the pad token, the
  same absence the perturbation methods use);
* seconds per prompt.

A "random" row ranks words at random (seeded), the floor every method must clear.

Usage::

    python benchmarks/ground_truth.py               # 30 prompts per task (a few minutes on CPU)
    python benchmarks/ground_truth.py --per-task 5  # a smoke test
    python benchmarks/ground_truth.py --markdown    # the table as Markdown (for the README)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from llmattr import (
    FeatureAblation,
    KernelShap,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Lime,
    LLMAttribution,
    LLMGradientAttribution,
    ShapleyValueSampling,
    TextTokenInput,
)
from llmattr.demo import TASKS, load_demo_model, load_eval_prompts
from llmattr.metrics import faithfulness
from llmattr.text.result import LLMAttributionResult

KS = (1, 3)


def methods(model: Any, tokenizer: Any) -> dict[str, Callable[[Any, str], LLMAttributionResult]]:
    """Each method as ``explain(inp, answer) -> result``, at its usual settings."""
    emb = model.get_input_embeddings()

    def perturbation(method: Any, **kw: Any) -> Callable[[Any, str], LLMAttributionResult]:
        llm = LLMAttribution(method, tokenizer)
        return lambda inp, answer: llm.attribute(inp, target=answer, **kw)

    def gradient(method: Any, **kw: Any) -> Callable[[Any, str], LLMAttributionResult]:
        llm = LLMGradientAttribution(method, tokenizer)
        return lambda inp, answer: llm.attribute(inp, target=answer, **kw)

    return {
        "FeatureAblation": perturbation(FeatureAblation(model)),
        "ShapleyValueSampling": perturbation(
            ShapleyValueSampling(model), n_samples=10, generator=0
        ),
        "Lime": perturbation(Lime(model), n_samples=200, generator=0),
        "KernelShap": perturbation(KernelShap(model), n_samples=200, generator=0),
        "LayerIntegratedGradients": gradient(LayerIntegratedGradients(model, emb), n_steps=32),
        "LayerGradientXActivation": gradient(LayerGradientXActivation(model, emb)),
        "LayerGradientShap": gradient(LayerGradientShap(model, emb), n_samples=16),
    }


def random_result(inp: Any, answer: str, tokenizer: Any, gen: torch.Generator) -> Any:
    n = inp.n_features
    return LLMAttributionResult(
        seq_attr=torch.rand(n, generator=gen),
        token_attr=None,
        input_tokens=inp.format_tokens(),
        output_tokens=tokenizer.tokenize(answer),
        output_probs=None,
        method="random",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=30, help="prompts per task (default 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_demo_model()
    explainers = methods(model, tokenizer)
    gen = torch.Generator().manual_seed(0)

    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for task in TASKS:
        examples = []
        for ex in load_eval_prompts(task):  # only prompts the model answers
            ids = tokenizer(ex.prompt, return_tensors="pt")
            with torch.no_grad():
                guess = model(**ids).logits[0, -1].argmax().item()
            if tokenizer.convert_ids_to_tokens(guess) == ex.answer:
                examples.append(ex)
            if len(examples) == args.per_task:
                break
        for name in [*explainers, "random"]:
            stats = rows.setdefault(
                (name, task),
                {
                    c: []
                    for c in ["top1", "top1 rel", "seconds"]
                    + [f"{m}@{k}" for m in ("comp", "suff") for k in KS]
                },
            )
            for ex in examples:
                inp = TextTokenInput(ex.prompt, tokenizer, skip_tokens=[tokenizer.bos_token_id])
                start = time.perf_counter()
                if name == "random":
                    result = random_result(inp, ex.answer, tokenizer, gen)
                else:
                    result = explainers[name](inp, ex.answer)
                stats["seconds"].append(time.perf_counter() - start)
                scores = torch.as_tensor(result.seq_attr)
                best = int(scores.argmax())
                stats["top1"].append(float(best in ex.decisive))
                stats["top1 rel"].append(float(best in ex.decisive or best in ex.relevant))
                f = faithfulness(model, tokenizer, inp, result, ks=KS)
                for k in KS:
                    stats[f"comp@{k}"].append(f.comprehensiveness[k])
                    stats[f"suff@{k}"].append(f.sufficiency[k])

    metrics = [f"{m}@{k}" for m in ("comp", "suff") for k in KS]
    columns = ["top1", "top1 rel", *metrics, "seconds"]
    header = ["method", "task", "prompts", *columns]
    lines = []
    for (name, task), stats in rows.items():
        cells = [name, task, str(len(stats["top1"]))]
        for c in columns:
            mean = statistics.fmean(stats[c]) if stats[c] else float("nan")
            cells.append(f"{100 * mean:.0f}%" if c.startswith("top1") else f"{mean:.3f}")
        lines.append(cells)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|")
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for cells in lines:
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))


if __name__ == "__main__":
    main()
