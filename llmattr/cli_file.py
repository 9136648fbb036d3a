"""``llmattr explain-file`` (every prompt of a file into a resumable results file, in one
process or under ``torchrun`` / ``accelerate launch``) and ``llmattr explore`` (an offline HTML
explorer over a results file)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from .cli_options import add_method_options, check_method_args

__all__ = ["add_file_commands"]


def add_file_commands(commands: Any) -> None:
    """Add ``explain-file`` and ``explore`` to the subcommands ``commands``."""
    run = commands.add_parser(
        "explain-file",
        help="explain every prompt of a file into a resumable JSONL results file",
        description="Explain every prompt of PROMPTS and append one JSON line per prompt to "
        '--out as each finishes. PROMPTS is JSONL ({"prompt": ..., optional "target", '
        '"id" (default: the line number), other fields kept as "meta"}) when it ends in '
        ".jsonl or .ndjson, or when its first line starts with '{'; else plain text, one prompt "
        "a line. Rerunning the command resumes: prompts with a result are skipped, failed ones "
        "retried. Under torchrun or accelerate launch the processes share the prompts.",
        epilog="Example: torchrun --nproc_per_node 2 -m llmattr explain-file prompts.jsonl "
        "--out results.jsonl. Exit status: 0 when every prompt has a result, 1 when some "
        "failed (their lines hold the error) or the run could not start, 2 for a usage error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("prompts", metavar="PROMPTS", type=Path, help="the prompts file")
    run.add_argument(
        "--out", "-o", metavar="FILE", type=Path, required=True, help="the results file (JSONL)"
    )
    add_method_options(run)
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out instead of resuming it",
    )
    run.set_defaults(run=explain_file_command, usage_error=run.error, check=_check_args)
    explore = commands.add_parser(
        "explore",
        help="write an offline HTML explorer over a results file",
        description="Write one self-contained HTML page over a results file of explain-file: "
        "a sortable, filterable table of the examples, each example's attributions, and "
        "aggregates over the dataset.",
    )
    explore.add_argument("results", metavar="RESULTS", type=Path, help="a results file (JSONL)")
    explore.add_argument(
        "--out", "-o", metavar="FILE", type=Path, required=True, help="the HTML file to write"
    )
    explore.add_argument("--title", default=None, help="the page's title")
    explore.set_defaults(run=explore_command)


def _check_args(args: argparse.Namespace) -> None:
    check_method_args(args, args.usage_error)


def explain_file_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ._hf import ModelLoadError
    from .cli import CLIError
    from .dataset import explain_file

    try:
        summary = explain_file(
            args.prompts, args.out, args.model, method=args.method, features=args.features,
            baseline=args.baseline, max_new_tokens=args.max_new_tokens,
            n_samples=args.n_samples, n_steps=args.n_steps, seed=args.seed,
            robustness=args.robustness, device=args.device, overwrite=args.overwrite,
            progress=not args.no_progress and err.isatty(),
        )  # fmt: skip
    except (ValueError, ModelLoadError) as error:  # InputError is a ValueError
        raise CLIError(str(error)) from None
    except OSError as error:
        raise CLIError(f"cannot write {args.out}: {error.strerror or error}") from None
    if summary.rank == 0:
        out.write(
            f"{summary.total} prompts: {summary.done} explained, {summary.skipped} already in "
            f"{summary.path}, {summary.failed} failed ({summary.processes} process"
            f"{'es' if summary.processes > 1 else ''})\nwrote {summary.path}\n"
        )
    return 1 if summary.failed else 0


def explore_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .cli import CLIError

    try:
        from .viz.explorer import write_explorer
    except ImportError:
        raise CLIError("the explorer is not available in this installation") from None
    try:
        path = write_explorer(args.results, args.out, title=args.title)
    except (ValueError, OSError) as error:
        raise CLIError(str(error)) from None
    out.write(f"wrote {path}\n")
    return 0
