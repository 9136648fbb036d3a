"""Faithfulness metrics (llmattr.metrics): comprehensiveness and sufficiency against a
brute-force computation in the test, on the shipped demo model (word-level tokenizer, BOS
prepended) and with word features on it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("transformers")

from llmattr import FeatureAblation, LLMAttribution, LLMAttributionResult, TextTokenInput, words
from llmattr.demo import load_demo_model
from llmattr.metrics import Faithfulness, completeness, faithfulness, top_features

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "the key of box seven is red . the key of box two is blue . the key of box seven is"


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def _result(seq_attr, target=("red",)) -> LLMAttributionResult:
    seq = torch.as_tensor(seq_attr, dtype=torch.float32)
    return LLMAttributionResult(
        seq_attr=seq,
        token_attr=None,
        input_tokens=[f"f{i}" for i in range(len(seq))],
        output_tokens=list(target),
        output_probs=None,
        method="test",
    )


def brute_prob(model, tok, words_in_prompt, removed, target) -> float:
    """p(target | the prompt with the words at ``removed`` replaced by <pad>), by one plain
    forward over prompt + target and the softmax at each target position."""
    shown = [("<pad>" if i in removed else w) for i, w in enumerate(words_in_prompt)]
    prompt = [tok.bos_token_id, *tok.convert_tokens_to_ids(shown)]
    tgt = tok.convert_tokens_to_ids(list(target))
    ids = torch.tensor([prompt + tgt])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    total = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(tgt))
    return float(torch.tensor(total).exp())


def test_top_features_orders_by_value_then_position():
    r = _result([0.5, 2.0, -1.0, 2.0, 0.0])
    assert top_features(r, 1) == [1]
    assert top_features(r, 3) == [1, 3, 0]  # the tie at 2.0 goes to the earlier feature
    assert top_features(r, 5) == [1, 3, 0, 4, 2]
    for k in (0, 6):
        with pytest.raises(ValueError, match="k must be between 1 and the number of features"):
            top_features(r, k)


@pytest.mark.parametrize("target", [("red",), ("red", "<eos>")])
def test_equals_brute_force_removal(demo, target):
    model, tok = demo
    prompt_words = PROMPT.split()
    n = len(prompt_words)
    gen = torch.Generator().manual_seed(0)
    result = _result(torch.randn(n, generator=gen), target)
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    scores = faithfulness(model, tok, inp, result, ks=(1, 3, n))
    assert isinstance(scores, Faithfulness)
    full = brute_prob(model, tok, prompt_words, set(), target)
    assert scores.prob == pytest.approx(full, rel=1e-4, abs=1e-7)
    for k in (1, 3, n):
        top = set(top_features(result, k))
        rest = set(range(n)) - top
        without = brute_prob(model, tok, prompt_words, top, target)
        only = brute_prob(model, tok, prompt_words, rest, target)
        assert scores.comprehensiveness[k] == pytest.approx(full - without, rel=1e-4, abs=1e-6)
        assert scores.sufficiency[k] == pytest.approx(full - only, rel=1e-4, abs=1e-6)
    # keeping every feature is the prompt itself; removing every one leaves only baselines
    assert scores.sufficiency[n] == pytest.approx(0.0, abs=1e-6)


def test_a_good_ranking_beats_a_bad_one(demo):
    """FeatureAblation's ranking removes more of the answer than its reverse: the metric tells
    faithful explanations from unfaithful ones."""
    model, tok = demo
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    good = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target="red")
    bad = _result(-good.seq_attr)
    g, b = (faithfulness(model, tok, inp, r, ks=(1, 3)) for r in (good, bad))
    assert g.comprehensiveness[1] > 0.5 > b.comprehensiveness[1]
    assert g.comprehensiveness[3] > b.comprehensiveness[3]
    assert g.sufficiency[3] < b.sufficiency[3]


def test_word_features_remove_every_token_of_a_word(demo):
    model, tok = demo
    inp = words(PROMPT, tok)
    n = len(PROMPT.split())
    result = _result(torch.arange(n, dtype=torch.float32))  # the last word ranks first
    scores = faithfulness(model, tok, inp, result, ks=(2,))
    without = brute_prob(model, tok, PROMPT.split(), {n - 1, n - 2}, ("red",))
    assert scores.comprehensiveness[2] == pytest.approx(scores.prob - without, rel=1e-4)


def test_result_of_another_input_is_refused(demo):
    model, tok = demo
    with pytest.raises(ValueError, match="has 3 features but the input has"):
        inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
        faithfulness(model, tok, inp, _result([1.0, 2.0, 3.0]))


# ---- completeness --------------------------------------------------------------------------------


def test_completeness_holds_for_shapley_estimates(demo):
    """Every ShapleyValueSampling and KernelShap estimate sums exactly to the change of
    log p(target) from the baseline prompt, which completeness() computes independently."""
    from llmattr import KernelShap, ShapleyValueSampling

    model, tok = demo
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    expected = brute_prob(model, tok, PROMPT.split(), set(), ("red",))
    absent = brute_prob(model, tok, PROMPT.split(), set(range(len(PROMPT.split()))), ("red",))
    for method, kw in ((ShapleyValueSampling, {"n_samples": 3}), (KernelShap, {"n_samples": 60})):
        result = LLMAttribution(method(model), tok).attribute(inp, target="red", generator=0, **kw)
        check = completeness(model, tok, inp, result)
        assert check.expected == pytest.approx(
            float(torch.tensor(expected).log() - torch.tensor(absent).log()), rel=1e-4
        )
        assert abs(check.gap) < 1e-4 * max(1.0, abs(check.expected))


def test_completeness_gap_of_integrated_gradients_shrinks_with_steps(demo):
    from llmattr import LayerIntegratedGradients, LLMGradientAttribution

    model, tok = demo
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    lig = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tok)
    gaps = [
        abs(completeness(model, tok, inp, lig.attribute(inp, target="red", n_steps=s)).gap)
        for s in (2, 64)
    ]
    assert gaps[1] < gaps[0] and gaps[1] < 0.05


def test_feature_ablation_is_not_complete_in_general(demo):
    """Ablation measures each feature alone: on an answer that needs several words together
    its effects do not add up, and completeness() says so."""

    model, tok = demo
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    result = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target="red")
    assert abs(completeness(model, tok, inp, result).gap) > 0.1


def test_faithfulness_rescores_the_attributed_ids_with_a_byte_level_tokenizer():
    """Readable output tokens ("world", not "Ġworld") must not be mapped back through the vocab:
    the metric re-scores the ids the result records, equal to brute-force removal."""
    import tokenizers
    import transformers

    from tests.conftest import tiny_causal_lm

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=120,
        special_tokens=["<pad>", "<unk>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(
        ["the cat sat on the mat", "hello world, the world is wide"] * 5, trainer
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>"
    )
    model = tiny_causal_lm("gpt2", tok.vocab_size, dtype=torch.float64)
    inp = TextTokenInput("the cat sat on the", tok)
    result = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target=" mat world")
    assert result.info["target_ids"] == tok(" mat world")["input_ids"]
    assert any(t != p for t, p in zip(result.output_tokens, tok.convert_ids_to_tokens(
        result.info["target_ids"]), strict=True))  # fmt: skip
    got = faithfulness(model, tok, inp, result, ks=(1,))
    # brute force: p(target) with the top feature replaced by the baseline (pad id 0)
    ids = inp.prompt_ids() if hasattr(inp, "prompt_ids") else None
    assert ids is not None
    target = torch.tensor(result.info["target_ids"])

    def logp(prompt):
        full = torch.cat([prompt, target]).unsqueeze(0)
        with torch.no_grad():
            out = model(input_ids=full).logits[0].log_softmax(-1)
        n = prompt.numel()
        return float(out[n - 1 : n - 1 + target.numel()].gather(1, target[:, None]).sum())

    top = top_features(result, 1)[0]
    removed = inp.perturbed_ids(
        torch.tensor([[float(j != top) for j in range(len(result.seq_attr))]])
    )
    expected = torch.exp(torch.tensor(logp(ids))) - torch.exp(torch.tensor(logp(removed[0])))
    assert abs(got.comprehensiveness[1] - float(expected)) < 1e-9
