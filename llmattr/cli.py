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
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

__all__ = ["build_parser", "main"]

METHODS = ("ablation", "shapley", "lime", "kernel-shap", "integrated-gradients")
FEATURES = ("tokens", "words", "sentences")
# samples drawn when --n-samples is not given (Shapley: permutations; Lime, KernelShap:
# coalitions, which need more than the feature count to give stable weights)
DEFAULT_SAMPLES = {"shapley": 25, "lime": 200, "kernel-shap": 200}
# 256-colour backgrounds from faint to strong (xterm palette): reds raise the target, blues lower it
_REDS = (224, 217, 210, 203, 196)
_BLUES = (195, 153, 117, 75, 33)


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
    try:
        return int(args.run(args, sys.stdout, sys.stderr))
    except CLIError as error:
        print(f"llmattr: error: {error}", file=sys.stderr)
        return 1


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

    device = _device(args.device)
    with _quiet_transformers():
        model, tokenizer, label = load_model(args.model, device)
    inp = make_input(args.features, args.prompt, tokenizer, args.baseline)
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0)
    if limit and inp.ids.numel() > limit:
        raise CLIError(
            f"the prompt is {inp.ids.numel()} tokens, more than the model's context of {limit}"
        )
    progress = not args.no_progress and err.isatty()
    try:
        result = attribute(model, tokenizer, inp, args, progress)
    except (ValueError, torch.cuda.OutOfMemoryError) as error:
        raise CLIError(str(error)) from None
    color = args.color == "always" or (
        args.color == "auto" and out.isatty() and not os.environ.get("NO_COLOR")
    )
    spans = feature_spans(inp, tokenizer, args.prompt)
    names = display_names(result.input_tokens, tokenizer, args.features)
    out.write(f"model: {label}\n")
    out.write(summary(result, args.prompt, names, spans, tokenizer, color, args.top))
    for path, write in ((args.html, _write_html), (args.json, _write_json)):
        if path is not None:
            try:
                write(result, path)
            except OSError as error:
                raise CLIError(f"cannot write {path}: {error.strerror or error}") from None
            out.write(f"wrote {path}\n")
    return 0


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No loading bars from transformers: the only bar on stderr is the attribution's."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


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


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub name (``gpt2``, ``org/model``)."""
    return (
        name.startswith(("/", ".", "~"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def load_model(name: str | None, device: Any) -> tuple[Any, Any, str]:
    """``(model, tokenizer, label)`` for ``--model`` (None: the demo model), on ``device``."""
    if name is None:
        from .demo import MODEL_DIR, load_demo_model

        model, tokenizer = load_demo_model(device)
        return model, tokenizer, f"llmattr demo model ({MODEL_DIR})"
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = Path(name).expanduser()
    if not path.exists() and _looks_like_path(name):
        raise CLIError(f"model path {name!r} does not exist")
    if path.exists() and not path.is_dir():
        raise CLIError(f"model path {name!r} is a file; give the model's directory")
    source = str(path) if path.exists() else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        try:
            model = AutoModelForCausalLM.from_pretrained(source)
        except ValueError:  # not a causal LM: an encoder-decoder (T5, BART) then
            model = AutoModelForSeq2SeqLM.from_pretrained(source)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CLIError(f"cannot load a model and tokenizer from {name!r}: {first}") from None
    return model.to(device).eval(), tokenizer, source


def make_input(kind: str, prompt: str, tokenizer: Any, baseline: str | None) -> Any:
    from .text.inputs import TextTokenInput, sentences, words

    builders: dict[str, Callable[..., Any]] = {
        "tokens": TextTokenInput,
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
            inp, n_steps=args.n_steps, **target_args
        )
    cls = {
        "ablation": FeatureAblation,
        "shapley": ShapleyValueSampling,
        "lime": Lime,
        "kernel-shap": KernelShap,
    }[args.method]
    kwargs: dict[str, Any] = {"show_progress": progress}
    if args.method in DEFAULT_SAMPLES:
        kwargs["n_samples"] = args.n_samples or DEFAULT_SAMPLES[args.method]
        kwargs["generator"] = args.seed
    return LLMAttribution(cls(model), tokenizer).attribute(inp, **target_args, **kwargs)


# ---- the console summary ------------------------------------------------------------------------


def feature_spans(inp: Any, tokenizer: Any, prompt: str) -> list[tuple[int, int] | None] | None:
    """Each feature's character span in ``prompt`` (from the tokenizer's offsets), or None
    when the tokenizer gives no offsets."""
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    offsets = enc.get("offset_mapping")
    if offsets is None or len(offsets) != inp.ids.numel():
        return None
    spans: list[tuple[int, int] | None] = [None] * inp.n_features
    for (start, end), f in zip(offsets, inp.feature_of_token.tolist()):
        if f < 0 or end <= start:
            continue
        old = spans[f]
        spans[f] = (start, end) if old is None else (min(old[0], start), max(old[1], end))
    return spans


def display_names(names: list[str], tokenizer: Any, features: str) -> list[str]:
    """Feature names for the console: tokens as text (``Ġred`` → ``red``), one line each."""
    shown = []
    for name in names:
        if features == "tokens":
            try:
                name = tokenizer.convert_tokens_to_string([name]).strip() or name
            except (TypeError, ValueError, KeyError, AttributeError):
                pass
        name = " ".join(name.split())
        shown.append(name if len(name) <= 40 else name[:37] + "...")
    return shown


def _paint(text: str, value: float, limit: float) -> str:
    level = min(int(abs(value) / limit * len(_REDS) + 0.5), len(_REDS)) if limit > 0 else 0
    if level == 0:
        return text
    code = (_REDS if value > 0 else _BLUES)[level - 1]
    return f"\x1b[38;5;16;48;5;{code}m{text}\x1b[0m"


def colored_prompt(
    prompt: str, names: list[str], spans: list[tuple[int, int] | None] | None, values: list[float]
) -> str:
    """The prompt with each feature's text on a background coloured by its attribution."""
    limit = max((abs(v) for v in values), default=0.0)
    placed = [] if spans is None else sorted((s, f) for f, s in enumerate(spans) if s is not None)
    if (
        spans is None
        or len(placed) != len(values)
        or any(a[0][1] > b[0][0] for a, b in itertools.pairwise(placed))
    ):
        return " ".join(_paint(n, v, limit) for n, v in zip(names, values))
    parts, cursor = [], 0
    for (start, end), f in placed:
        parts += [prompt[cursor:start], _paint(prompt[start:end], values[f], limit)]
        cursor = end
    parts.append(prompt[cursor:])
    return "".join(parts)


def summary(
    result: Any,
    prompt: str,
    names: list[str],
    spans: list[tuple[int, int] | None] | None,
    tokenizer: Any,
    color: bool,
    top: int = 10,
) -> str:
    """The readable console summary of an LLMAttributionResult."""
    values = [float(v) for v in result.seq_attr.detach().float().cpu()]
    probs = [float(p) for p in result.output_probs.detach().float().cpu()]
    try:
        target = tokenizer.convert_tokens_to_string(list(result.output_tokens))
    except (TypeError, ValueError, KeyError, AttributeError):
        target = " ".join(result.output_tokens)
    joint = 1.0
    for p in probs:
        joint *= p
    n, k = len(values), len(result.output_tokens)
    lines = [
        f"method: {result.method} over {n} feature{'s' * (n != 1)}",
        f"target: {target!r} ({k} token{'s' * (k != 1)}, probability {joint:.3g})",
        "attribution: change of log p(target) the feature causes (positive: raises it)",
    ]
    if color:
        legend = f"{_paint(' raises ', 1, 1)} {_paint(' lowers ', -1, 1)}"
        lines += ["", f"prompt  {legend}", colored_prompt(prompt, names, spans, values)]
    order = sorted(range(n), key=lambda i: -abs(values[i]))[:top]
    width = max((len(names[i]) for i in order), default=0)
    lines += ["", f"top {len(order)} of {n} features by |attribution|:"]
    strongest = max((abs(v) for v in values), default=0.0)
    for rank, i in enumerate(order, 1):
        shown = _paint(names[i], values[i], strongest) if color else names[i]
        pad = " " * (width - len(names[i]))
        lines.append(f"  {rank:>3}. {values[i]:+10.4f}  {shown}{pad}  (feature {i})")
    if result.token_attr is not None and k > 1:
        lines += ["", "per target token (top 3 features):"]
        rows = result.token_attr.detach().float().cpu()
        for t, (token, p) in enumerate(zip(result.output_tokens, probs)):
            row = [float(v) for v in rows[t]]
            best = sorted(range(n), key=lambda i: -abs(row[i]))[:3]
            tops = ", ".join(f"{names[i]} {row[i]:+.3f}" for i in best)
            lines.append(f"  {token!r} p={p:.3f}: {tops}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
