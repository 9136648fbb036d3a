"""The options that ``llmattr explain`` and ``llmattr explain-file`` share, and how they map
onto the attribution classes (:class:`~llmattr.LLMAttribution` over a perturbation method, or
:class:`~llmattr.LLMGradientAttribution` over layer integrated gradients)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMPLETE",
    "DEFAULT_SAMPLES",
    "FEATURES",
    "METHODS",
    "add_method_options",
    "attribute",
    "check_method_args",
    "make_input",
]

METHODS = ("ablation", "shapley", "lime", "kernel-shap", "integrated-gradients")
FEATURES = ("tokens", "words", "sentences")
# methods whose attributions sum to log p(target | prompt) - log p(target | baseline prompt)
COMPLETE = ("shapley", "kernel-shap", "integrated-gradients")
# samples drawn when --n-samples is not given (Shapley: permutations; Lime, KernelShap:
# coalitions, which need more than the feature count to give stable weights)
DEFAULT_SAMPLES = {"shapley": 25, "lime": 200, "kernel-shap": 200}


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The model, method, feature and sampling options, and ``--device``, ``--robustness`` and
    ``--no-progress``: what ``explain`` and ``explain-file`` share."""
    parser.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="a Hugging Face model directory (or hub name) with its tokenizer; default (or "
        "'demo'): the demo model that ships with llmattr (key-value recall, copying, "
        "comparisons)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="ablation",
        help="ablation: replace each feature by the baseline token, one at a time; shapley: "
        "Shapley value sampling; lime: Lime; kernel-shap: KernelShap; integrated-gradients: "
        "integrated gradients in the embedding space",
    )
    parser.add_argument(
        "--features",
        choices=FEATURES,
        default="tokens",
        help="what a feature is: each token, each word (its tokens perturbed together), or "
        "each sentence",
    )
    parser.add_argument(
        "--baseline",
        metavar="TOKEN",
        default=None,
        help="the one-token string that replaces an absent feature (default: the tokenizer's "
        "pad token, else its unknown token)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=10,
        metavar="N",
        help="tokens to generate when --target is not given (special tokens such as the end "
        "of sequence are left out of the target)",
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=None,
        metavar="N",
        help="samples of the sampling methods (default: shapley 25 permutations, lime and "
        "kernel-shap 200 coalitions)",
    )
    parser.add_argument(
        "--n-steps", type=int, default=50, metavar="N", help="steps of integrated-gradients"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling methods")
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="also report how robust the answer is: the fewest features, most important "
        "first, whose removal (replacement by the baseline) changes the greedy answer (with "
        "--target: makes the model stop preferring the target); shown in the summary, the HTML "
        "report and the JSON file",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when available, "
        "else cpu)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (shown on stderr when it is a terminal)",
    )


def check_method_args(args: argparse.Namespace, error: Callable[[str], Any]) -> None:
    """Usage errors of the shared options, reported through ``error`` (a parser's ``error``)."""
    for name in ("max_new_tokens", "n_samples", "n_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def make_input(kind: str, prompt: str, tokenizer: Any, baseline: str | None) -> Any:
    """The text input of feature kind ``kind`` (``tokens``, ``words``, ``sentences``) over
    ``prompt``; raises ValueError (or NotImplementedError) for what the tokenizer cannot do."""
    from .text.inputs import TextTokenInput, sentences, words

    def tokens(text: str, tok: Any, baselines: str | None) -> Any:
        # the prompt's own tokens: the tokenizer's BOS/[CLS] are not shown as features
        return TextTokenInput(text, tok, baselines, include_special_tokens=False)

    builders: dict[str, Callable[..., Any]] = {
        "tokens": tokens,
        "words": words,
        "sentences": sentences,
    }
    return builders[kind](prompt, tokenizer, baselines=baseline)


def attribute(model: Any, tokenizer: Any, inp: Any, args: Any, progress: bool) -> Any:
    """Run the method of ``args.method`` on ``inp`` (``args`` has ``method``, ``target``,
    ``max_new_tokens``, ``n_samples``, ``n_steps``, ``seed``); returns the
    LLMAttributionResult."""
    from . import (
        FeatureAblation,
        KernelShap,
        LayerIntegratedGradients,
        Lime,
        LLMAttribution,
        LLMGradientAttribution,
        ShapleyValueSampling,
    )

    special = [
        getattr(tokenizer, name, None) for name in ("eos_token_id", "pad_token_id", "bos_token_id")
    ]
    target_args: dict[str, Any] = {"target": args.target}
    if args.target is None:
        target_args["gen_args"] = {"max_new_tokens": args.max_new_tokens}
        target_args["skip_tokens"] = sorted({int(i) for i in special if i is not None})
    if args.method == "integrated-gradients":
        lig = LayerIntegratedGradients(model, model.get_input_embeddings())
        return LLMGradientAttribution(lig, tokenizer).attribute(
            inp, n_steps=args.n_steps, show_progress=progress, **target_args
        )
    cls = {
        "ablation": FeatureAblation,
        "shapley": ShapleyValueSampling,
        "lime": Lime,
        "kernel-shap": KernelShap,
    }[args.method]
    kwargs: dict[str, Any] = {"show_progress": progress}
    if args.method in DEFAULT_SAMPLES:
        kwargs["n_samples"] = args.n_samples
        kwargs["generator"] = args.seed
    return LLMAttribution(cls(model), tokenizer).attribute(inp, **target_args, **kwargs)


def completeness_info(model: Any, tokenizer: Any, inp: Any, result: Any) -> dict[str, float]:
    """How far the attributions of a complete method are from adding up: ``{"sum",
    "expected", "gap"}``, kept in the result's ``info["completeness"]``."""
    from .metrics import completeness

    check = completeness(model, tokenizer, inp, result)
    return {"sum": check.total, "expected": check.expected, "gap": check.gap}


def robustness_of(model: Any, tokenizer: Any, inp: Any, result: Any, args: Any) -> Any:
    """The answer robustness of ``--robustness`` (:func:`llmattr.robust.text.answer_robustness`);
    its ``to_dict()`` is kept in the result's ``info["robustness"]``."""
    from .robust.text import answer_robustness

    # 8 prompts per forward: a few evaluated past the answer's change, far fewer forwards
    return answer_robustness(
        model, tokenizer, inp, result, target=args.target,
        max_new_tokens=args.max_new_tokens, perturbations_per_eval=8,
    )  # fmt: skip
