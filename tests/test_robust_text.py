"""Answer robustness (``llmattr.robust.text``): the fewest top-ranked prompt features whose
removal changes a language model's answer, against a brute-force loop of greedy generations on
the shipped demo model, tiny random models and a counting model with a known answer."""

from __future__ import annotations

import itertools
import json
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from conftest import count_forwards, tiny_causal_lm

from llmattr import FeatureAblation, LLMAttribution, LLMAttributionResult
from llmattr._core.errors import InputError, InputTypeError
from llmattr.demo import load_demo_model
from llmattr.robust.text import (
    AnswerRobustness,
    answer_robustness,
    feature_ranking,
    preference_margins,
)
from llmattr.text.inputs import TextTokenInput, words
from llmattr.text.templates import TextTemplateInput
from llmattr.viz.report import html_report

pytestmark = pytest.mark.usefixtures("one_thread")

RECALL = "the key of box seven is red . the key of box two is blue . the key of box seven is"
COPY = "copy : cat dog sun fish ; copy : cat dog"


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def generate(model, tok, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy continuation of ``ids`` (model.generate, not the margins' teacher forcing)."""
    with torch.no_grad():
        out = model.generate(ids[None], attention_mask=torch.ones_like(ids[None]),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)  # fmt: skip
    return out[0, ids.numel() :]


def without_top(inp, order, k: int) -> torch.Tensor:
    presence = torch.ones(1, inp.n_itp_features)
    presence[0, order[:k]] = 0
    return inp.perturbed_ids(presence)[0]


def brute_force(model, tok, inp, order, answer: torch.Tensor, n_new: int) -> list[bool]:
    """``changed[k - 1]``: whether greedy generation after removing the top k differs."""
    return [
        not torch.equal(generate(model, tok, without_top(inp, order, k), n_new), answer)
        for k in range(1, len(order) + 1)
    ]


def first(flags: list[bool]) -> int | None:
    return next((k for k, f in enumerate(flags, 1) if f), None)


def monotone(flags: list[bool]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(flags))


# ---- exact against brute force ------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [RECALL, COPY])
def test_linear_equals_brute_force_and_binary_when_monotone(demo, prompt):
    model, tok = demo
    inp = words(prompt, tok)
    attr = LLMAttribution(FeatureAblation(model), tok)
    result = attr.attribute(inp, gen_args={"max_new_tokens": 6})
    by_attr = feature_ranking(inp, result)
    answer = generate(model, tok, inp.prompt_ids(), 6)
    seen_monotone_above_1 = False
    for order in (by_attr, by_attr[::-1]):  # the least important first: flips later
        changed = brute_force(model, tok, inp, order, answer, 6)
        linear = answer_robustness(model, tok, inp, ranking=order, max_new_tokens=6)
        assert linear.n_removed == first(changed)
        assert linear.removed_indices == order[: linear.n_removed]
        assert linear.removed_words == [prompt.split()[i] for i in order[: linear.n_removed]]
        new = generate(model, tok, without_top(inp, order, linear.n_removed), 6)
        assert linear.new_answer == tok.decode(new, skip_special_tokens=True)
        assert linear.new_answer != linear.answer
        if monotone(changed):
            binary = answer_robustness(model, tok, inp, ranking=order, mode="binary",
                                       max_new_tokens=6)  # fmt: skip
            assert binary.n_removed == linear.n_removed
            seen_monotone_above_1 |= linear.n_removed > 1
    assert seen_monotone_above_1  # the binary comparison was not only the trivial k = 1
    ranked = answer_robustness(model, tok, inp, result, max_new_tokens=6)
    assert ranked.ranking == by_attr
    assert ranked.n_removed == first(brute_force(model, tok, inp, by_attr, answer, 6))


def test_recall_answer_falls_with_its_value_word(demo):
    """The demo's recall answer is the queried box's value: the attribution ranks it first,
    and removing it alone changes the answer."""
    model, tok = demo
    inp = words(RECALL, tok)
    robust = answer_robustness(model, tok, inp)  # ranked by FeatureAblation itself
    assert robust.answer == "red" and robust.n_removed == 1
    assert robust.removed_words == ["red"] and robust.new_answer != "red"
    assert robust.fraction == pytest.approx(1 / len(RECALL.split()))
    assert robust.describe("word") == (
        f"answer changes after removing 1 of {len(RECALL.split())} words: 'red'"
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_random_models_and_batching(demo, arch):
    _, tok = demo
    model = tiny_causal_lm(arch, len(tok), init=0.05)
    inp = TextTokenInput(COPY, tok, skip_tokens=[tok.bos_token_id])
    answer = generate(model, tok, inp.prompt_ids(), 1)
    found = []
    for seed in range(4):
        order = torch.randperm(inp.n_features, generator=torch.Generator().manual_seed(seed))
        order = order.tolist()
        changed = brute_force(model, tok, inp, order, answer, 1)
        calls = count_forwards(model)
        one = answer_robustness(model, tok, inp, ranking=order, max_new_tokens=1)
        singly = calls[0]
        many = answer_robustness(model, tok, inp, ranking=order, max_new_tokens=1,
                                 perturbations_per_eval=4)  # fmt: skip
        del model.forward
        assert one.n_removed == first(changed)
        assert many == one
        if one.n_removed is not None and one.n_removed > 4:
            assert calls[0] - singly < singly  # 4 prompts per forward: fewer forwards
        found.append(one.n_removed)
    assert max(k or 0 for k in found) > 2  # the search went past the first few k


def test_encoder_decoder_model(demo):
    """T5: the answer is the decoder's; the margins teacher-force it after the start token."""
    import transformers

    _, tok = demo
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64,
                                   num_layers=1, num_heads=4, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=3)  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    inp = TextTokenInput(COPY, tok, skip_tokens=[tok.bos_token_id])
    prompt = inp.prompt_ids()[None]
    answer = model.generate(prompt, max_new_tokens=3, do_sample=False)[0]
    for seed in range(2):
        order = torch.randperm(inp.n_features, generator=torch.Generator().manual_seed(seed))
        order = order.tolist()
        changed = []
        for k in range(1, inp.n_features + 1):
            ids = without_top(inp, order, k)[None]
            new = model.generate(ids, max_new_tokens=3, do_sample=False)[0]
            changed.append(not torch.equal(new, answer))
        robust = answer_robustness(model, tok, inp, ranking=order, max_new_tokens=3)
        assert robust.n_removed == first(changed) is not None


def test_template_groups_are_removed_together(demo):
    model, tok = demo
    inp = TextTemplateInput(
        "the key of box {} is {} . the key of box two is blue . the key of box {} is",
        ["seven", "red", "seven"], baselines=["one", "green", "one"], mask=[0, 1, 0],
    )  # fmt: skip
    result = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target="red")
    order = feature_ranking(inp, result)
    assert sorted(order) == [0, 1]  # two interpretable features, the "seven"s one
    target = torch.tensor(tok.encode("red", add_special_tokens=False))
    changed = brute_force(model, tok, inp, order, target, 1)
    robust = answer_robustness(model, tok, inp, result, target="red")
    assert robust.n_removed == first(changed) and robust.n_features == 2
    assert robust.removed_words == [inp.names[i] for i in order[: robust.n_removed]]


# ---- the target variant ------------------------------------------------------------------------


def test_given_target_until_no_longer_preferred(demo):
    model, tok = demo
    inp = words(COPY, tok)
    target = torch.tensor(tok.encode("sun fish", add_special_tokens=False))
    order = list(range(inp.n_features))[::-1]
    changed = brute_force(model, tok, inp, order, target, target.numel())
    robust = answer_robustness(model, tok, inp, target="sun fish", ranking=order)
    assert robust.target_given and robust.n_removed == first(changed) is not None
    assert robust.describe("word").startswith("target is no longer preferred after removing")
    # the generated answer as a fixed target (with its end of sequence): the same question
    answer = generate(model, tok, inp.prompt_ids(), 5)
    generated = answer_robustness(model, tok, inp, ranking=order, max_new_tokens=5)
    fixed = answer_robustness(model, tok, inp, target=answer, ranking=order)
    assert fixed.n_removed == generated.n_removed


def test_a_target_the_model_does_not_prefer_is_changed_at_zero(demo):
    model, tok = demo
    inp = words(RECALL, tok)
    robust = answer_robustness(model, tok, inp, target="blue", ranking=[0, 1])
    assert robust.n_removed == 0 and robust.removed_indices == []
    assert robust.new_answer == "red"  # what the model prefers instead
    assert "does not prefer the target" in robust.describe()


# ---- a counting model: known answers, monotone or not ------------------------------------------


class CountingLM(nn.Module):
    """Predicts token 5 after a prefix with ``c`` baseline tokens (id 0), or token 6 where
    ``changed(c)``; logits ``5 * one_hot``, so every preference margin is exactly ±5."""

    def __init__(self, changed) -> None:
        super().__init__()
        self.changed = changed
        self.bias = nn.Parameter(torch.zeros(48))
        self.config = SimpleNamespace(is_encoder_decoder=False, max_position_embeddings=128)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        count = (input_ids == 0).cumsum(1)
        flip = torch.tensor([[self.changed(int(c)) for c in row] for row in count])
        token = torch.where(flip, 6, 5)
        return SimpleNamespace(logits=5.0 * nn.functional.one_hot(token, 48) + self.bias)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, **kwargs):
        ids = input_ids
        for _ in range(max_new_tokens):
            ids = torch.cat([ids, self(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
        return ids


def test_counting_model_monotone_and_not(demo):
    _, tok = demo
    inp = TextTokenInput(COPY, tok, skip_tokens=[tok.bos_token_id])  # baseline id 0
    n = inp.n_features
    monotone_lm = CountingLM(lambda c: c >= 4)
    for mode in ("linear", "binary"):
        assert answer_robustness(monotone_lm, tok, inp, mode=mode, max_new_tokens=1,
                                 ranking=list(range(n))).n_removed == 4  # fmt: skip
    bump = CountingLM(lambda c: c == 3)  # removing a 4th word brings the answer back
    order = list(range(n))
    changed = brute_force(bump, tok, inp, order, torch.tensor([5]), 1)
    assert first(changed) == 3 and not monotone(changed)
    linear = answer_robustness(bump, tok, inp, ranking=order, max_new_tokens=1)
    assert linear.n_removed == 3
    binary = answer_robustness(bump, tok, inp, ranking=order, mode="binary", max_new_tokens=1)
    assert binary.n_removed is None  # bisection never lands on 3: not minimal without monotony
    ids = torch.stack([without_top(inp, order, k) for k in (2, 3)])
    margins = preference_margins(bump, ids, torch.tensor([5, 5]))
    assert margins.tolist() == [[5.0, 5.0], [-5.0, -5.0]]  # 3 baselines stay in the prefix


def test_an_answer_that_never_changes_is_none(demo):
    _, tok = demo
    inp = words(COPY, tok)
    steady = CountingLM(lambda c: False)
    for mode in ("linear", "binary"):
        robust = answer_robustness(steady, tok, inp, ranking=[3, 1, 2], mode=mode)
        assert robust.n_removed is None and robust.fraction is None and not robust.changed
        assert robust.removed_indices == [] and robust.new_answer is None
        assert robust.describe("word") == (
            f"answer never changes, even after removing the top 3 of {inp.n_features} words"
        )
    full = answer_robustness(steady, tok, inp, ranking=list(range(inp.n_features)), k_min=2)
    assert full.describe("word").endswith(f"even after removing all {inp.n_features} words")


def test_k_range_limits_the_search(demo):
    _, tok = demo
    inp = words(COPY, tok)
    lm = CountingLM(lambda c: c >= 2)
    order = list(range(inp.n_features))
    assert answer_robustness(lm, tok, inp, ranking=order, k_min=5).n_removed == 5
    assert answer_robustness(lm, tok, inp, ranking=order, k_max=1).n_removed is None
    assert answer_robustness(lm, tok, inp, ranking=order, k_min=3, k_max=3).n_removed == 3


# ---- bad input: clear errors, before any forward; nothing mutated ------------------------------


def test_errors_before_any_forward(demo):
    model, tok = demo
    inp = words(RECALL, tok)
    n = inp.n_features
    short = LLMAttributionResult(torch.zeros(3), None, list("abc"), ["red"])
    bad = [
        ((RECALL,), {}, InputTypeError, "Wrap the prompt"),
        (("",), {}, InputTypeError, "Wrap the prompt"),
        ((object(),), {}, InputTypeError, "text input"),
        ((inp,), {"mode": "fast"}, InputError, "mode"),
        ((inp,), {"k_min": 0}, InputError, "k_min"),
        ((inp,), {"k_max": n + 1}, InputError, "k_max"),
        ((inp,), {"k_min": 5, "k_max": 4}, InputError, "k_min"),
        ((inp,), {"k_min": 1.5}, InputTypeError, "k_min"),
        ((inp,), {"ranking": [n]}, InputError, "outside"),
        ((inp,), {"ranking": [1, 1]}, InputError, "repeats"),
        ((inp,), {"ranking": []}, InputError, "empty"),
        ((inp,), {"ranking": "abc"}, InputTypeError, "ranking"),
        ((inp,), {"ranking": torch.tensor([0.5, 2.0])}, InputTypeError, "indices"),
        ((inp,), {"ranking": [0, 1.0]}, InputTypeError, "indices"),
        ((inp, short), {}, InputError, "has 3 features"),
        ((inp, "attr"), {}, InputTypeError, "LLMAttributionResult"),
        ((inp,), {"max_new_tokens": 0}, InputError, "max_new_tokens"),
        ((inp,), {"perturbations_per_eval": 0}, InputError, "perturbations_per_eval"),
    ]
    calls = count_forwards(model)
    try:
        for args, kwargs, error, message in bad:
            with pytest.raises(error, match=message):
                answer_robustness(model, tok, *args, **kwargs)
    finally:
        del model.forward
    assert calls[0] == 0


def test_nothing_passed_is_mutated(demo):
    model, tok = demo
    inp = words(RECALL, tok)
    result = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target="red")
    ids, seq, info = inp.ids.clone(), result.seq_attr.clone(), dict(result.info)
    ranking = [6, 4, 2]
    answer_robustness(model, tok, inp, result, ranking=ranking)
    answer_robustness(model, tok, inp, result)
    assert torch.equal(inp.ids, ids) and torch.equal(result.seq_attr, seq)
    assert result.info == info and ranking == [6, 4, 2] and not model.training


# ---- saving and the HTML block ------------------------------------------------------------------


def test_round_trip_and_html_escaping():
    robust = AnswerRobustness(
        n_removed=2, removed_indices=[1, 0], removed_words=["<b>bold</b>", "a&b"],
        answer="</script><script>alert(1)</script>", new_answer='"quoted"', n_features=3,
        ranking=[1, 0, 2], mode="binary",
    )  # fmt: skip
    data = json.loads(json.dumps(robust.to_dict()))
    assert AnswerRobustness.from_dict(data) == robust and data["fraction"] == pytest.approx(2 / 3)
    result = LLMAttributionResult(torch.tensor([0.5, 1.0, -1.0]), None, ["x", "<b>bold</b>", "a&b"],
                                  ["y"], info={"robustness": data})  # fmt: skip
    for page in (result.to_html(), html_report(LLMAttributionResult(
            result.seq_attr, None, result.input_tokens, ["y"]), robustness=robust)):  # fmt: skip
        assert "Answer robustness" in page and "after removing <b>2</b> of 3 features" in page
        assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
        assert "a&amp;b" in page and "alert(1)</script>" not in page
        assert "&quot;quoted&quot;" in page
    assert page.count("robustness") == page.count("Answer robustness")  # no raw info row
    plain = LLMAttributionResult(torch.tensor([1.0]), None, ["x"], ["y"])
    assert "Answer robustness" not in plain.to_html()
    with pytest.raises(ValueError, match="robustness"):
        html_report([plain, plain], robustness=robust)
    with pytest.raises(ValueError, match="robustness"):
        html_report([plain, plain], robustness=[robust])
    pages = html_report([plain, plain], robustness=[None, robust.to_dict()])
    assert pages.count("Answer robustness") == 1
