"""The ``llmattr`` command line: explain which parts of a prompt made a language model answer.

    llmattr explain "the key of box seven is red . the key of box two is blue . the key of box
    seven is" --html report.html

    llmattr explain-file prompts.jsonl --out results.jsonl      (see llmattr.cli_file)
    llmattr explore results.jsonl -o explorer.html

``main(argv)`` returns the exit status instead of exiting, so it can be called in-process:
0 on success, 1 when the work fails (a model that cannot be loaded, a prompt too long for it,
a file that cannot be written), 2 for a usage error (an unknown option or method, an empty
prompt).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .cli_options import (
    COMPLETE,
    DEFAULT_SAMPLES,
    add_method_options,
    attribute,
    check_method_args,
    completeness_info,
    make_input,
    robustness_of,
)

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A failure to report as one line on stderr, with exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmattr",
        description="Explain what language models do: which parts of a prompt made the model "
        "produce its answer.",
        epilog="Run 'llmattr COMMAND --help' for the options of a command.",
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
    add_method_options(explain)
    explain.add_argument(
        "--target",
        metavar="TEXT",
        default=None,
        help="the continuation to explain, exactly as it follows the prompt (mind a leading "
        "space for BPE tokenizers); default: the model's greedy generation",
    )
    explain.add_argument("--html", metavar="FILE", type=Path, help="write an HTML report")
    explain.add_argument("--json", metavar="FILE", type=Path, help="write the result as JSON")
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
    explain.set_defaults(run=explain_command, usage_error=explain.error, check=_check_explain_args)
    from .cli_file import add_file_commands

    add_file_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check = getattr(args, "check", None)
        if check is not None:
            check(args)
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
    check_method_args(args, error)
    if args.top < 1:
        error(f"--top must be at least 1, got {args.top}")


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
    try:
        inp = make_input(args.features, args.prompt, tokenizer, args.baseline)
    except (ValueError, NotImplementedError) as error:
        raise CLIError(str(error)) from None
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
        result.info["completeness"] = completeness_info(model, tokenizer, inp, result)
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

    try:
        robust = robustness_of(model, tokenizer, inp, result, args)
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
    """``(model, tokenizer, label)`` for ``--model`` (None or ``demo``: the demo model), on
    ``device``; see :func:`llmattr._hf.load_language_model`."""
    from ._hf import ModelLoadError, load_language_model

    if name == "demo" and not Path(name).exists():  # as in explain-file: the shipped model
        name = None
    try:
        return load_language_model(name, device)
    except ModelLoadError as error:
        raise CLIError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
