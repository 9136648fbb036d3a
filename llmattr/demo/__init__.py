"""The demo model that ships with llmattr: a small causal LM whose decisive prompt words are known.

It was trained by ``scripts/train_demo_model.py`` on three synthetic tasks (see
:mod:`llmattr.demo.tasks`): key–value recall, copying and comparisons. It loads offline, from
the package, in well under a second::

    from llmattr.demo import load_demo_model, load_eval_prompts
    model, tokenizer = load_demo_model()
    example = load_eval_prompts("recall")[0]   # .prompt, .answer, .decisive (word indices)

The tokenizer is word-level (one token per word, BOS prepended), so word ``i`` of
``example.prompt.split()`` is feature ``i`` of
``TextTokenInput(example.prompt, tokenizer, skip_tokens=[tokenizer.bos_token_id])`` (as in Captum,
``TextTokenInput`` makes the BOS token a feature unless it is skipped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tasks import TASKS, Example

__all__ = ["EVAL_PROMPTS", "MODEL_DIR", "TASKS", "Example", "load_demo_model", "load_eval_prompts"]

MODEL_DIR = Path(__file__).resolve().parent / "model"
EVAL_PROMPTS = Path(__file__).resolve().parent / "eval_prompts.json"


def load_demo_model(device: Any = None) -> tuple[Any, Any]:
    """The demo model (in eval mode, on ``device``; default the CPU) and its tokenizer.

    Args:
        device: where to put the model: a ``torch.device``, a string (``"cuda"``) or None.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``LlamaForCausalLM`` and a fast tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .._hf import quiet_transformers

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def load_eval_prompts(task: str | None = None) -> list[Example]:
    """The held-out evaluation prompts (never seen in training), with their decisive words.

    Args:
        task: ``"recall"``, ``"copy"`` or ``"compare"``; None for all of them.

    Returns:
        :class:`~llmattr.demo.tasks.Example` objects: ``prompt``, ``answer``, ``decisive`` and
        ``relevant`` (indices into ``prompt.split()``).
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; the tasks are {list(TASKS)}.")
    data = json.loads(EVAL_PROMPTS.read_text(encoding="utf-8"))
    examples = [Example.from_dict(d) for d in data]
    return [e for e in examples if task is None or e.task == task]
