"""Whole datasets of prompts: explained into a resumable results file, in one process or
split across the processes of ``torchrun`` / ``accelerate launch``; and one very large
attribution split across those processes (:func:`split_attribute`).

    from llmattr.dataset import explain_file, read_results
    summary = explain_file("prompts.jsonl", "results.jsonl", method="shapley", n_samples=10)
    settings, records = read_results("results.jsonl")
"""

from .prompts import PromptRecord, read_prompts
from .results_io import read_results
from .runner import RunSummary, explain_file
from .split import SplitAttribution, SplitError, split_attribute

__all__ = [
    "PromptRecord",
    "RunSummary",
    "SplitAttribution",
    "SplitError",
    "explain_file",
    "read_prompts",
    "read_results",
    "split_attribute",
]
