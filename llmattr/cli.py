"""The ``llmattr`` command line: explain which parts of a prompt made a language model answer.

    llmattr explain "the key of box seven is red . the key of box two is blue . the key of box
    seven is" --html report.html

``main(argv)`` returns the exit status instead of exiting, so it can be called in-process:
0 on success, 1 when the work fails (a model that cannot be loaded, a prompt too long for it,
a file that cannot be written), 2 for a usage error (an unknown option or method, an empty
prompt).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["build_parser", "main"]

METHODS = ("ablation", "shapley", "lime", "kernel-shap", "integrated-gradients")
FEATURES = ("tokens", "words", "sentences")
# samples drawn when --n-samples is not given (Shapley: permutations; Lime, KernelShap:
# coalitions, which need more than the feature count to give stable weights)
# methods whose attributions sum to log p(target | prompt) - log p(target | baseline prompt)
COMPLETE = ("shapley", "kernel-shap", "integrated-gradients")
DEFAULT_SAMPLES = {"shapley": 25, "lime": 200, "kernel-shap": 200}


class CLIError(Exception):
    """A failure to report as one line on stderr, with exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmattr",
        description="Explain what language models do: which parts of a prompt made the model "
        "produce its answer.",
        epilog="Run 'llmattr explain --help' for the options of explain.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"llmattr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    explain = commands.add_parser(
        "explain",
        help="attribute a model's answer to the parts of a prompt",
        description="Attribute the model's answer (generated greedily, or given with --target) "
        "to the features of PROMPT, print a summary, and optionally write an HTML report and a "
        "JSON file of the result. Attributions are changes of the target's log-probability: "
        "positive when a feature raises it.",
        epilog="Exit status: 0 on success, 1 when the work fails (a model that cannot be "
        "loaded, a prompt longer than the model's context, an unwritable file), 2 for a usage "
        "error. Colours follow https://no-color.org: NO_COLOR turns them off under "
        "--color auto.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    explain.add_argument("prompt", metavar="PROMPT", help="the prompt to explain (quote it)")
    explain.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="a Hugging Face model directory (or hub name) with its tokenizer; default: the demo "
        "model that ships with llmattr (key-value recall, copying, comparisons)",
    )
    explain.add_argument(
        "--target",
        metavar="TEXT",
        default=None,
        help="the continuation to explain, exactly as it follows the prompt (mind a leading "
        "space for BPE tokenizers); default: the model's greedy generation",
    )
    explain.add_argument(
        "--method",
        choices=METHODS,
        default="ablation",
        help="ablation: replace each feature by the baseline token, one at a time; shapley: "
        "Shapley value sampling; lime: Lime; kernel-shap: KernelShap; integrated-gradients: "
        "integrated gradients in the embedding space",
    )
    explain.add_argument(
        "--features",
        choices=FEATURES,
        default="tokens",
        help="what a feature is: each token, each word (its tokens perturbed together), or "
        "each sentence",
    )
    explain.add_argument(
        "--baseline",
        metavar="TOKEN",
        default=None,
        help="the one-token string that replaces an absent feature (default: the tokenizer's "
        "pad token, else its unknown token)",
    )
    explain.add_argument(
        "--max-new-tokens",
        type=int,
        default=10,
        metavar="N",
        help="tokens to generate when --target is not given (special tokens such as the end "
        "of sequence are left out of the target)",
    )
    explain.add_argument(
        "--n-samples",
        type=int,
        default=None,
        metavar="N",
        help="samples of the sampling methods (default: shapley 25 permutations, lime and "
        "kernel-shap 200 coalitions)",
    )
    explain.add_argument(
        "--n-steps", type=int, default=50, metavar="N", help="steps of integrated-gradients"
    )
    explain.add_argument("--seed", type=int, default=0, help="seed of the sampling methods")
    explain.add_argument(
        "--robustness",
        action="store_true",
        help="also report how robust the answer is: the fewest features, most important "
        "first, whose removal (replacement by the baseline) changes the greedy answer (with "
        "--target: makes the model stop preferring the target); shown in the summary, the HTML "
        "report and the JSON file",
    )
    explain.add_argument("--html", metavar="FILE", type=Path, help="write an HTML report")
    explain.add_argument("--json", metavar="FILE", type=Path, help="write the result as JSON")
    explain.add_argument(
        "--device",
        default=None,
        help="where the model runs: cpu, cuda, cuda:1, mps, ... (default: cuda when available, "
        "else cpu)",
    )
    explain.add_argument(
        "--top", type=int, default=10, metavar="K", help="features listed in the summary"
    )
    explain.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the prompt by attribution; auto: when stdout is a terminal and NO_COLOR "
        "is unset",
    )
    explain.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (shown on stderr when it is a terminal)",
    )
    explain.set_defaults(run=explain_command, usage_error=explain.error)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "explain":
            _check_explain_args(args)
    except SystemExit as stop:  # argparse exits on --help, --version and usage errors
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    stdout = sys.stdout
    try:
        return int(args.run(args, _Output(stdout), sys.stderr))
    except CLIError as error:
        print(f"llmattr: error: {error}", file=sys.stderr)
        return 1
    except _ReaderGone:  # ``llmattr explain ... | head``: the reader left early; stop quietly
        # the interpreter flushes stdout at exit: point it at /dev/null so that cannot fail
        if stdout is sys.__stdout__ and stdout is not None:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
            except (OSError, ValueError):
                pass
        return 1


class _ReaderGone(Exception):
    """Standard output's reader closed the pipe."""


class _Output:
    """Standard output for the command: a closed pipe there (and only there) becomes
    :class:`_ReaderGone`, so that other broken pipes still surface as errors."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise _ReaderGone() from None

    def isatty(self) -> bool:
        return self.stream.isatty()


def _check_explain_args(args: argparse.Namespace) -> None:
    error = args.usage_error  # the explain parser's: prints its usage, exits with status 2
    if not args.prompt.strip():
        error("the prompt is empty: give the text to explain")
    if args.target is not None and not args.target:
        error("--target is empty: give the continuation to explain, or leave it out")
    for name in ("max_new_tokens", "n_samples", "n_steps", "top"):
        value = getattr(args, name)
        if value is not None and value < 1:
            error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


# ---- explain ------------------------------------------------------------------------------------


def explain_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import torch

    from ._hf import quiet_transformers
    from .text.inputs import unknown_text
    from .viz.console import display_names, feature_spans, summary

    device = _device(args.device)
    if args.method in DEFAULT_SAMPLES and args.n_samples is None:
        args.n_samples = DEFAULT_SAMPLES[args.method]
    for name in ("html", "json"):  # fail before the work, not after it
        path = getattr(args, name)
        if path is None:
            continue
        path = path.expanduser()
        setattr(args, name, path)
        if path.is_dir():
            raise CLIError(f"cannot write {path}: it is a folder; give a file name")
        if not path.parent.is_dir():
            raise CLIError(f"cannot write {path}: the folder {path.parent} does not exist")
    with quiet_transformers():
        model, tokenizer, label = load_model(args.model, device)
    inp = make_input(args.features, args.prompt, tokenizer, args.baseline)
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0)
    if limit and inp.ids.numel() > limit:
        raise CLIError(
            f"the prompt is {inp.ids.numel()} tokens, more than the model's context of {limit}"
        )
    if args.target is not None:
        ids = tokenizer.encode(args.target, add_special_tokens=False)
        if unknown_text(tokenizer, args.target, ids):
            pieces = " ".join(tokenizer.convert_ids_to_tokens(ids))
            raise CLIError(
                f"the target {args.target!r} has words the model's vocabulary lacks (it "
                f"tokenizes to {pieces!r}); explaining the unknown token would mean nothing"
            )
    progress = not args.no_progress and err.isatty()
    try:
        result = attribute(model, tokenizer, inp, args, progress)
    except (ValueError, torch.cuda.OutOfMemoryError) as error:
        raise CLIError(str(error)) from None
    result.info.update(_settings(args, label))
    if args.method in COMPLETE:  # attributions that should add up: say how well they do
        from .metrics import completeness

        check = completeness(model, tokenizer, inp, result)
        result.info["completeness"] = {
            "sum": check.total,
            "expected": check.expected,
            "gap": check.gap,
        }
    color = args.color == "always" or (
        args.color == "auto" and out.isatty() and not os.environ.get("NO_COLOR")
    )
    spans = feature_spans(inp, tokenizer, args.prompt)
    names = display_names(result.input_tokens, tokenizer, args.features)
    robust_line = _robustness(model, tokenizer, inp, result, args, names) if args.robustness else ""
    out.write(f"model: {label}\n")
    out.write(summary(result, args.prompt, names, spans, tokenizer, color, args.top))
    out.write(robust_line)
    for path, write in ((args.html, _write_html), (args.json, _write_json)):
        if path is not None:
            try:
                write(result, path)
            except OSError as error:
                raise CLIError(f"cannot write {path}: {error.strerror or error}") from None
            out.write(f"wrote {path}\n")
    return 0


def _robustness(
    model: Any, tokenizer: Any, inp: Any, result: Any, args: argparse.Namespace, names: list[str]
) -> str:
    """The answer-robustness line of ``--robustness``; the figure is kept in the result's
    ``info["robustness"]`` (the JSON file, the HTML report's block)."""
    import torch

    from .robust.text import answer_robustness

    try:
        # 8 prompts per forward: a few evaluated past the answer's change, far fewer forwards
        robust = answer_robustness(
            model, tokenizer, inp, result, target=args.target,
            max_new_tokens=args.max_new_tokens, perturbations_per_eval=8,
        )  # fmt: skip
    except (ValueError, torch.cuda.OutOfMemoryError) as error:
        raise CLIError(str(error)) from None
    result.info["robustness"] = robust.to_dict()
    line = f"robustness: {robust.describe(args.features.removesuffix('s'), names)}"
    if robust.new_answer is not None:
        then = "instead" if robust.n_removed == 0 else "then"
        line += f" (the model {then} says {robust.new_answer!r})"
    return line + "\n"


def _settings(args: argparse.Namespace, label: str) -> dict[str, Any]:
    """What reproduces the result, kept in its ``info`` (the JSON file, the report)."""
    settings: dict[str, Any] = {
        "prompt": args.prompt,
        "model": label,
        "features": args.features,
        "baseline": args.baseline,
        "target": args.target if args.target is not None else "generated (greedy)",
    }
    if args.method == "integrated-gradients":
        settings["n_steps"] = args.n_steps
    elif args.method in DEFAULT_SAMPLES:
        settings["n_samples"] = args.n_samples
        settings["seed"] = args.seed
    return settings


def _write_html(result: Any, path: Path) -> None:
    path.write_text(result.to_html(), encoding="utf-8")


def _write_json(result: Any, path: Path) -> None:
    result.save(path)


def _device(name: str | None) -> Any:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown device {name!r} (use cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {name!r} was asked for, but CUDA is not available")
    return device


def load_model(name: str | None, device: Any) -> tuple[Any, Any, str]:
    """``(model, tokenizer, label)`` for ``--model`` (None: the demo model), on ``device``; see
    :func:`llmattr._hf.load_language_model`."""
    from ._hf import ModelLoadError, load_language_model

    try:
        return load_language_model(name, device)
    except ModelLoadError as error:
        raise CLIError(str(error)) from None


def make_input(kind: str, prompt: str, tokenizer: Any, baseline: str | None) -> Any:
    from .text.inputs import TextTokenInput, sentences, words

    def tokens(text: str, tok: Any, baselines: str | None) -> Any:
        # the prompt's own tokens: the tokenizer's BOS/[CLS] are not shown as features
        return TextTokenInput(text, tok, baselines, include_special_tokens=False)

    builders: dict[str, Callable[..., Any]] = {
        "tokens": tokens,
        "words": words,
        "sentences": sentences,
    }
    build = builders[kind]
    try:
        return build(prompt, tokenizer, baselines=baseline)
    except (ValueError, NotImplementedError) as error:
        raise CLIError(str(error)) from None


def attribute(
    model: Any, tokenizer: Any, inp: Any, args: argparse.Namespace, progress: bool
) -> Any:
    """Run the method of ``args.method`` on ``inp``; returns the LLMAttributionResult."""
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


if __name__ == "__main__":
    sys.exit(main())
