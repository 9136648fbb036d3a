"""max_activating_examples on the shipped demo LM: equal to a brute-force loop (one text at a time,
every position), streamed in batches, padding never scored, hooks removed on errors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("transformers")

from llmattr._core.errors import InputError, InputTypeError
from llmattr.demo import load_demo_model, load_eval_prompts
from llmattr.optim.text_examples import (
    ActivatingExample,
    MaxActivatingExamples,
    max_activating_examples,
)

LAYER = "model.layers.1.mlp.act_fn"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    model, tok = load_demo_model()
    return model.double(), tok


@pytest.fixture(scope="module")
def corpus():
    texts = [e.prompt for e in load_eval_prompts()]
    # Different lengths in every batch (so padding is exercised), one empty-ish text (BOS only).
    return [*texts[:9], "", "copy : cat", *texts[-12:]]


def brute_force(model, tok, layer_module, target, corpus, skip=()):
    """Every (score, text, position, ids) by running one text at a time, no padding."""
    out = []
    acts = {}
    handle = layer_module.register_forward_hook(lambda m, a, o: acts.__setitem__("a", o))
    try:
        for i, text in enumerate(corpus):
            ids = tok(text)["input_ids"]
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]))
            a = acts["a"][0]
            s = a[:, target] if isinstance(target, int) else a @ target.to(a.dtype)
            for p, v in enumerate(s.tolist()):
                if ids[p] not in skip:
                    out.append((v, i, p, ids))
    finally:
        handle.remove()
    out.sort(key=lambda r: (-r[0], r[1], r[2]))
    return out


def check_against(res, brute, k, context, tok):
    assert len(res) == min(k, len(brute))
    by_key = {(i, p): (v, ids) for v, i, p, ids in brute}
    torch.testing.assert_close(
        res.values, torch.tensor([r[0] for r in brute[:k]], dtype=torch.float64), rtol=0, atol=1e-10
    )
    seen = set()
    for e in res:
        assert isinstance(e, ActivatingExample)
        v, ids = by_key[(e.text_index, e.position)]
        assert e.value == pytest.approx(v, abs=1e-10)
        lo = max(0, e.position - context)
        assert e.context_start == lo
        assert e.context == tuple(tok.convert_ids_to_tokens(ids[lo : e.position + context + 1]))
        assert e.token_id == ids[e.position]
        assert e.token == e.context[e.highlight] == tok.convert_ids_to_tokens(ids[e.position])
        seen.add((e.text_index, e.position))
    assert len(seen) == len(res)  # no token counted twice
    assert list(res.values) == sorted(res.values.tolist(), reverse=True)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_neuron_equals_brute_force(demo, corpus, batch_size):
    model, tok = demo
    module = dict(model.named_modules())[LAYER]
    brute = brute_force(model, tok, module, 7, corpus)
    res = max_activating_examples(
        model, LAYER, 7, corpus, k=25, tokenizer=tok, batch_size=batch_size, context=3
    )
    check_against(res, brute, 25, 3, tok)
    assert res.num_texts == len(corpus)
    assert res.num_tokens == len(brute)  # every real token, no padding
    assert res.num_tokens == sum(len(tok(t)["input_ids"]) for t in corpus)


@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_direction_equals_brute_force(demo, corpus, batch_size):
    model, tok = demo
    module = model.model.layers[2]  # a decoder layer (module, not name): residual stream (D=64)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    brute = brute_force(model, tok, module, direction, corpus)
    res = max_activating_examples(
        model, module, direction, iter(corpus), k=10, tokenizer=tok, batch_size=batch_size
    )
    check_against(res, brute, 10, 5, tok)
    assert res.layer == "model.layers.2"


def test_batch_size_does_not_change_the_result_and_ties_go_to_earlier_text(demo, corpus):
    model, tok = demo
    runs = [
        max_activating_examples(model, LAYER, 3, corpus, k=40, tokenizer=tok, batch_size=b)
        for b in (1, 4, 100)
    ]
    for other in runs[1:]:
        torch.testing.assert_close(runs[0].values, other.values, rtol=0, atol=1e-12)
        assert [(e.text_index, e.position) for e in other] == [
            (e.text_index, e.position) for e in runs[0]
        ]
    # A duplicated text ties exactly, position by position: the earlier copy ranks first.
    twice = max_activating_examples(
        model, LAYER, 3, ["a b c d", "a b c d"], k=2, tokenizer=tok, batch_size=1
    )
    assert twice[0].value == twice[1].value
    assert [(e.text_index, e.position) for e in twice] == [
        (0, twice[0].position),
        (1, twice[0].position),
    ]


def test_skip_tokens_and_token_id_corpus_without_tokenizer(demo, corpus):
    model, tok = demo
    bos = tok.bos_token_id
    module = dict(model.named_modules())[LAYER]
    brute = brute_force(model, tok, module, 11, corpus, skip={bos})
    ids_corpus = [tok(t)["input_ids"] for t in corpus]
    ids_corpus[1] = torch.tensor(ids_corpus[1])  # a 1-D tensor of ids is a text too
    ids_corpus[4:4] = [[], [], [], []]  # texts without tokens: a whole batch of them, no positions
    res = max_activating_examples(
        model, LAYER, 11, ids_corpus, k=8, batch_size=4, skip_token_ids=[bos]
    )
    assert res.num_tokens == len(brute)
    assert res.num_texts == len(corpus) + 4
    assert all(e.token_id != bos for e in res)
    torch.testing.assert_close(
        res.values, torch.tensor([r[0] for r in brute[:8]], dtype=torch.float64), rtol=0, atol=1e-10
    )
    assert all(e.token == str(e.token_id) for e in res)  # no tokenizer: ids spelled as numbers
    by_key = {(i, p): v for v, i, p, _ in brute}
    for e in res:  # text indices count the empty texts too
        assert e.text_index not in range(4, 8)
        original = e.text_index - 4 if e.text_index >= 8 else e.text_index
        assert e.value == pytest.approx(by_key[(original, e.position)], abs=1e-10)


def test_k_larger_than_corpus_returns_every_token(demo):
    model, tok = demo
    texts = ["a b", "", "c"]
    res = max_activating_examples(model, LAYER, 0, texts, k=1000, tokenizer=tok, batch_size=2)
    n = sum(len(tok(t)["input_ids"]) for t in texts)
    assert len(res) == res.num_tokens == n
    empty = max_activating_examples(model, LAYER, 0, [], k=5, tokenizer=tok)
    assert len(empty) == 0 and empty.num_texts == 0
    assert "top 0 of 0 tokens" in repr(empty)


def test_float32_model_matches_float64_ranking_values(corpus):
    model, tok = load_demo_model()
    res = max_activating_examples(model, LAYER, 7, corpus, k=5, tokenizer=tok, batch_size=4)
    ref = max_activating_examples(
        model.double(), LAYER, 7, corpus, k=5, tokenizer=tok, batch_size=4
    )
    torch.testing.assert_close(res.values, ref.values, rtol=1e-4, atol=1e-5)


def test_stops_after_the_layer_unless_asked(demo, corpus):
    model, tok = demo
    calls = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        fast = max_activating_examples(model, LAYER, 7, corpus, k=9, tokenizer=tok, batch_size=5)
        assert calls == []  # the logits were never computed
        full = max_activating_examples(
            model, LAYER, 7, corpus, 9, tok, batch_size=5, stop_after_layer=False
        )
        assert len(calls) == 5  # ceil(23 / 5) batches ran to the end
    finally:
        handle.remove()
    assert fast.values.tolist() == full.values.tolist()
    assert [(e.text_index, e.position) for e in fast] == [(e.text_index, e.position) for e in full]


def test_corpus_is_streamed_batch_by_batch(demo, corpus):
    model, tok = demo
    pulled = []
    seen_at_forward = []

    def texts():
        for text in corpus:
            pulled.append(text)
            yield text

    handle = model.model.register_forward_pre_hook(
        lambda m, a, kw: seen_at_forward.append((len(pulled), kw["input_ids"].shape[0])),
        with_kwargs=True,
    )
    try:
        max_activating_examples(model, LAYER, 7, texts(), k=4, tokenizer=tok, batch_size=3)
    finally:
        handle.remove()
    # Each forward sees only the texts read so far, 3 at a time: the corpus is never held whole.
    assert seen_at_forward[:3] == [(3, 3), (6, 3), (9, 3)]
    assert len(seen_at_forward) == 8 and seen_at_forward[-1] == (23, 2)


def test_on_device_equals_cpu(demo, corpus, device):
    model, tok = demo
    ref = max_activating_examples(model, LAYER, 7, corpus, k=12, tokenizer=tok, batch_size=6)
    on_device, _ = load_demo_model(device)
    res = max_activating_examples(
        on_device.double(), LAYER, 7, corpus, k=12, tokenizer=tok, batch_size=6
    )
    torch.testing.assert_close(res.values, ref.values, rtol=0, atol=1e-9)


def test_repr_and_markdown(demo, corpus):
    model, tok = demo
    res = max_activating_examples(model, LAYER, 7, corpus, k=3, tokenizer=tok, context=2)
    assert isinstance(res, MaxActivatingExamples)
    text = repr(res)
    assert text.splitlines()[0].startswith("MaxActivatingExamples(neuron 7 of 'model.layers.1")
    assert len(text.splitlines()) == 1 + 1 + 3
    assert f"[[{res[0].token}]]" in text
    md = res.to_markdown().splitlines()
    assert md[0] == "| rank | value | text | pos | token | context |"
    assert len(md) == 2 + 3 and f"**{res[0].token}**" in md[2]
    e = ActivatingExample(1.0, 0, 1, "a|b", 5, ("x", "a|b"), 0)
    assert "a\\|b" in MaxActivatingExamples([e]).to_markdown()


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_hooks_removed_after_exception(demo, corpus):
    model, tok = demo
    assert _no_hooks(model)
    with pytest.raises(InputError, match="width is 128"):  # raised inside the hooked forward loop
        max_activating_examples(model, LAYER, torch.ones(3, dtype=torch.float64), corpus, 3, tok)
    assert _no_hooks(model)
    with pytest.raises(InputError, match="out of range"):
        max_activating_examples(model, LAYER, 128, corpus, 3, tok)
    assert _no_hooks(model)

    def boom(module, args):
        raise RuntimeError("boom")

    handle = model.model.layers[0].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            max_activating_examples(model, LAYER, 1, corpus, 3, tok)
    finally:
        handle.remove()
    assert _no_hooks(model)
    res = max_activating_examples(model, LAYER, 1, corpus, 3, tok)  # still works afterwards
    assert len(res) == 3


def test_errors(demo, corpus):
    model, tok = demo
    with pytest.raises(InputError, match=r"Valid names:.*'model\.layers\.0\.mlp'"):
        max_activating_examples(model, "model.layers.9.mlp", 0, corpus, 3, tok)
    with pytest.raises(InputTypeError, match="single string"):
        max_activating_examples(model, LAYER, 0, "a b c", 3, tok)
    with pytest.raises(InputError, match="k must be >= 1"):
        max_activating_examples(model, LAYER, 0, corpus, 0, tok)
    with pytest.raises(InputError, match="batch_size"):
        max_activating_examples(model, LAYER, 0, corpus, 3, tok, batch_size=0)
    with pytest.raises(InputError, match="context"):
        max_activating_examples(model, LAYER, 0, corpus, 3, tok, context=-1)
    with pytest.raises(InputTypeError, match="no tokenizer"):
        max_activating_examples(model, LAYER, 0, corpus, 3)
    with pytest.raises(InputTypeError, match="int or a tensor"):
        max_activating_examples(model, LAYER, 1.5, corpus, 3, tok)
    with pytest.raises(InputError, match="1-D floating"):
        max_activating_examples(model, LAYER, torch.ones(2, 128), corpus, 3, tok)
    with pytest.raises(InputError, match=r"\(batch, tokens, D\)"):  # (cos, sin) (1, T, d)
        max_activating_examples(model, "model.rotary_emb", 0, corpus, 3, tok)
    assert _no_hooks(model)
