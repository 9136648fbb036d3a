"""LLMAttribution, TextTokenInput, TextTemplateInput, ProductBaselines and the result against
Captum 0.9 itself, on tiny random-init Llama and GPT-2 models (float64) with an offline
Llama-style tokenizer (BOS added, ``▁`` word marks) built in this file.

Captum runs in its exact mode (``use_cached_outputs=False``: token by token, no cache)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import tiny_causal_lm

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
ca = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402
from llmattr.text import ProductBaselines, TextTemplateInput, TextTokenInput  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = [
    "Dave lives in Palm Coast, FL and is a lawyer. His personal interests include",
    " playing golf, hiking, and cooking.",
    "Sarah John Martin Rachel Her His her Seattle WA Boston MA doctor engineer teacher plumber",
    "Decide if the following movie review enclosed in quotes is Positive or Negative:",
    "'I really liked the Avengers, it had a captivating plot!' Reply only Positive or Negative.",
    "'The movie was ok, the actors weren't great' 'I hated the movie, boring and slow'",
]
PROMPT = "Dave lives in Palm Coast, FL and is a lawyer. His personal interests include"
TARGET = " playing golf, hiking"


def llama_style_tokenizer() -> object:
    """A small BPE tokenizer trained here, shaped like Llama-2's: ``<unk>`` 0, ``<s>`` 1 (added
    in front of every prompt), ``</s>`` 2, spaces written ``▁``; a fast tokenizer (offsets)."""
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tk = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=160, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tk.train_from_iterator(CORPUS * 3, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tok():
    return llama_style_tokenizer()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request: pytest.FixtureRequest, tok) -> torch.nn.Module:
    return tiny_causal_lm(request.param, len(tok), dtype=torch.float64)


def run_captum(method: object, tok, inp: object, **kwargs: object) -> object:
    return ca.LLMAttribution(method, tok).attribute(inp, use_cached_outputs=False, **kwargs)


def assert_same_result(ours, theirs, atol: float = 1e-5) -> None:
    """Same tokens, shapes and dtypes; values equal to float32 rounding (Captum accumulates
    its attributions in float32)."""
    assert ours.input_tokens == theirs.input_tokens
    assert ours.output_tokens == theirs.output_tokens
    assert ours.seq_attr.shape == theirs.seq_attr.shape
    assert ours.seq_attr.dtype == theirs.seq_attr.dtype
    torch.testing.assert_close(ours.seq_attr, theirs.seq_attr, atol=atol, rtol=1e-5)
    if theirs.token_attr is None:
        assert ours.token_attr is None
    else:
        assert ours.token_attr.shape == theirs.token_attr.shape
        assert ours.token_attr.dtype == theirs.token_attr.dtype
        torch.testing.assert_close(ours.token_attr, theirs.token_attr, atol=atol, rtol=1e-5)
    assert abs(float(ours.seq_attr.abs().max())) > 1e-3  # the comparison is not vacuous


# ---- TextTokenInput ------------------------------------------------------------------------------


class DummyTokenizer:
    """Only what Captum's TextTokenInput uses: a word-level vocabulary with a BOS token."""

    def __init__(self) -> None:
        words = "<unk> <s> the cat sat on mat a dog".split()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.inv = dict(enumerate(words))

    def encode(self, text, add_special_tokens=True, return_tensors=None):
        ids = [1] if add_special_tokens else []
        ids += [self.vocab.get(w, 0) for w in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def convert_ids_to_tokens(self, ids):
        return self.inv[int(ids)] if isinstance(ids, int) else [self.inv[int(i)] for i in ids]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.vocab.get(tokens, 0)
        return [self.vocab.get(t, 0) for t in tokens]

    def decode(self, ids, skip_special_tokens=False):
        ids = [int(i) for i in torch.as_tensor(ids).reshape(-1)]
        return " ".join(self.convert_ids_to_tokens(ids))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"skip_tokens": [1]}, {"skip_tokens": ["<s>", "the"]}, {"baselines": "dog"},
     {"baselines": 7, "skip_tokens": ["mat"]}],
    ids=["default", "skip-id", "skip-str", "baseline-str", "baseline-id"],
)  # fmt: skip
def test_text_token_input_matches_captum_with_a_minimal_tokenizer(kwargs):
    tok = DummyTokenizer()
    text = "the cat sat on the mat"
    ours, theirs = TextTokenInput(text, tok, **kwargs), ca.TextTokenInput(text, tok, **kwargs)
    assert ours.values == theirs.values
    assert ours.n_itp_features == theirs.n_itp_features
    assert ours.baselines == theirs.baselines
    assert torch.equal(ours.inp_tensor, theirs.inp_tensor)
    assert torch.equal(ours.itp_tensor, theirs.itp_tensor)
    assert (ours.itp_mask is None) == (theirs.itp_mask is None)
    if theirs.itp_mask is not None:
        assert torch.equal(ours.itp_mask, theirs.itp_mask.bool())
    assert torch.equal(ours.to_tensor(), theirs.to_tensor())
    assert ours.to_tensor().dtype == theirs.to_tensor().dtype
    g = torch.Generator().manual_seed(0)
    presence = (torch.rand(5, ours.n_itp_features, generator=g) > 0.5).long()
    assert torch.equal(ours.to_model_input(presence), theirs.to_model_input(presence))
    assert torch.equal(ours.to_model_input(), theirs.to_model_input())
    attr = torch.randn(3, ours.n_itp_features, generator=g)
    assert torch.equal(ours.format_attr(attr), theirs.format_attr(attr))


def test_llm_attribution_runs_with_a_minimal_tokenizer():
    tok = DummyTokenizer()
    model = tiny_causal_lm("llama", len(tok.vocab), dtype=torch.float64)
    inp = TextTokenInput("the cat sat on the mat", tok, skip_tokens=[1])
    res = llmattr.LLMAttribution(llmattr.FeatureAblation(model), tok).attribute(
        inp, target=torch.tensor([8, 5])
    )
    assert res.input_tokens == ["the", "cat", "sat", "on", "the", "mat"]
    assert res.output_tokens == ["dog", "on"]
    assert res.token_attr.shape == (2, 6) and res.seq_attr.shape == (6,)
    # by hand: ablating token i replaces it by id 0 (Captum's default baseline)
    ids = inp.ids

    def logp(prompt: torch.Tensor) -> torch.Tensor:
        full = torch.cat([prompt, torch.tensor([8, 5])]).unsqueeze(0)
        with torch.no_grad():
            lp = torch.log_softmax(model(full).logits[0], -1)
        n = prompt.numel()
        return torch.stack([lp[n - 1, 8], lp[n, 5]])

    base = logp(ids)
    for f in range(6):
        ablated = ids.clone()
        ablated[f + 1] = 0
        torch.testing.assert_close(res.token_attr[:, f].double(), (base - logp(ablated)).float()
                                   .double(), atol=1e-5, rtol=1e-5)  # fmt: skip


def test_text_token_input_keeps_special_tokens_like_captum(tok):
    ours, theirs = TextTokenInput(PROMPT, tok), ca.TextTokenInput(PROMPT, tok)
    assert ours.values == theirs.values and ours.values[0] == "<s>"
    skipped = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    assert skipped.values == ca.TextTokenInput(PROMPT, tok, skip_tokens=[1]).values


# ---- TextTemplateInput / ProductBaselines -------------------------------------------------------

NAMED = (
    "{name} lives in {city}, {state} and is a {occupation}. {pronoun} personal interests include"
)
VALUES = {"name": "Dave", "city": "Palm Coast", "state": "FL", "occupation": "lawyer",
          "pronoun": "His"}  # fmt: skip
MASK = {"name": 0, "city": 1, "state": 1, "occupation": 2, "pronoun": 0}
BASE = {"name": "Sarah", "city": "Seattle", "state": "WA", "occupation": "doctor",
        "pronoun": "Her"}  # fmt: skip


@pytest.mark.parametrize("mask", [None, MASK, {k: 10 * v + 5 for k, v in MASK.items()}],
                         ids=["no-mask", "mask", "mask-ids-5-15-25"])  # fmt: skip
def test_text_template_input_surface_matches_captum(mask):
    ours = TextTemplateInput(NAMED, VALUES, baselines=BASE, mask=mask)
    theirs = ca.TextTemplateInput(NAMED, VALUES, baselines=BASE, mask=mask)
    for name in ("values", "dict_keys", "baselines", "n_features", "n_itp_features", "mask"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert torch.equal(ours.to_tensor(), theirs.to_tensor())
    assert ours.to_model_input() == theirs.to_model_input()
    # Our interpretable features are ordered by sorted id; Captum's by Python's set order of
    # the ids (the same for ids 0..k-1). ``ours_col[j]`` is our column of Captum's column j.
    n = ours.n_itp_features
    ours_col = [0] * n
    theirs_mask = theirs.formatted_mask if mask is not None else list(range(n))
    for a, b in zip(ours.formatted_mask, theirs_mask):
        ours_col[b] = a
    assert sorted(ours_col) == list(range(n))  # the same groups
    inv = torch.argsort(torch.tensor(ours_col))  # Captum's column of each of ours
    if mask != {k: 10 * v + 5 for k, v in MASK.items()}:
        assert ours_col == list(range(n))
    for row in torch.eye(n).tolist() + (1 - torch.eye(n)).tolist():
        t = torch.tensor([row])
        assert ours.to_model_input(t[:, inv]) == theirs.to_model_input(t)
    attr = torch.randn(4, n, dtype=torch.float64)
    assert torch.equal(ours.format_attr(attr[:, inv]), theirs.format_attr(attr))


def test_product_baselines_sample_like_captum():
    choices = {("name", "pronoun"): [("Sarah", "Her"), ("John", "His")], "city": ["Seattle"]}
    ours, theirs = ProductBaselines(choices)(), ca.ProductBaselines(choices)()
    assert set(ours) == set(theirs) == {"name", "pronoun", "city"}
    assert ours["city"] == theirs["city"] == "Seattle"
    listed = ProductBaselines([["a"], ["b", "b"]])
    assert listed() == ca.ProductBaselines([["a"], ["b", "b"]])() == ["a", "b"]


# ---- LLMAttribution ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValues"])
def test_token_attribution_matches_captum(lm, tok, method):
    ours = llmattr.LLMAttribution(getattr(llmattr, method)(lm), tok).attribute(
        TextTokenInput("Dave in", tok), target=TARGET
    )  # 4 features (<s> ▁D ave ▁in): exact Shapley values stay cheap
    theirs = run_captum(getattr(ca, method)(lm), tok, ca.TextTokenInput(
        "Dave in", tok), target=TARGET)  # fmt: skip
    assert_same_result(ours, theirs)
    assert ours.inp is not None and theirs.output_probs is None  # we fill output_probs
    assert ours.output_probs.shape == (len(ours.output_tokens),)


def test_shapley_value_sampling_seeded_matches_captum(lm, tok):
    kwargs = {"target": TARGET, "n_samples": 3}
    torch.manual_seed(5)
    theirs = run_captum(ca.ShapleyValueSampling(lm), tok,
                        ca.TextTokenInput(PROMPT, tok, skip_tokens=[1]), **kwargs)  # fmt: skip
    torch.manual_seed(5)
    ours = llmattr.LLMAttribution(llmattr.ShapleyValueSampling(lm), tok).attribute(
        TextTokenInput(PROMPT, tok, skip_tokens=[1]), **kwargs
    )
    assert_same_result(ours, theirs)


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_surrogate_methods_have_no_token_attr_like_captum(lm, tok, method):
    kwargs = {"target": TARGET, "n_samples": 30}
    torch.manual_seed(3)
    theirs = run_captum(getattr(ca, method)(lm), tok, ca.TextTokenInput(PROMPT, tok), **kwargs)
    torch.manual_seed(3)
    ours = llmattr.LLMAttribution(getattr(llmattr, method)(lm), tok).attribute(
        TextTokenInput(PROMPT, tok), **kwargs
    )
    assert ours.token_attr is None and theirs.token_attr is None
    assert ours.seq_attr.shape == theirs.seq_attr.shape
    assert ours.input_tokens == theirs.input_tokens
    assert ours.output_tokens == theirs.output_tokens
    with pytest.raises(ValueError, match="token_attr"):
        ours.plot_token_attr()


@pytest.mark.parametrize("mask", [None, MASK], ids=["no-mask", "mask"])
def test_template_attribution_matches_captum(lm, tok, mask):
    ours = llmattr.LLMAttribution(llmattr.FeatureAblation(lm), tok).attribute(
        TextTemplateInput(NAMED, VALUES, baselines=BASE, mask=mask), target=TARGET
    )
    theirs = run_captum(ca.FeatureAblation(lm), tok,
                        ca.TextTemplateInput(NAMED, VALUES, baselines=BASE, mask=mask),
                        target=TARGET)  # fmt: skip
    assert_same_result(ours, theirs)
    assert ours.input_tokens == list(VALUES.values())  # one attribution per value
    if mask is not None:  # values sharing a mask id share the attribution
        assert ours.seq_attr[0] == ours.seq_attr[4] and ours.seq_attr[1] == ours.seq_attr[2]


def test_generated_target_matches_captum(lm, tok):
    gen_args = {"max_new_tokens": 3, "do_sample": False}
    ours = llmattr.LLMAttribution(llmattr.FeatureAblation(lm), tok).attribute(
        TextTokenInput("Dave lives in", tok), gen_args=gen_args
    )
    theirs = run_captum(ca.FeatureAblation(lm), tok, ca.TextTokenInput("Dave lives in", tok),
                        gen_args=gen_args)  # fmt: skip
    assert len(ours.output_tokens) == 3
    assert_same_result(ours, theirs)


def test_gen_args_with_a_target_is_an_error_like_captum(lm, tok):
    attr = llmattr.LLMAttribution(llmattr.FeatureAblation(lm), tok)
    with pytest.raises(AssertionError, match="gen_args"):
        attr.attribute(TextTokenInput("Dave", tok), target=TARGET, gen_args={"max_new_tokens": 2})
    with pytest.raises(AssertionError):
        ca.LLMAttribution(ca.FeatureAblation(lm), tok).attribute(
            ca.TextTokenInput("Dave", tok), target=TARGET, gen_args={"max_new_tokens": 2}
        )


def test_unsupported_method_error_type_like_captum(lm, tok):
    with pytest.raises(AssertionError):
        ca.LLMAttribution(ca.IntegratedGradients(lm), tok)
    with pytest.raises(AssertionError):
        llmattr.LLMAttribution(llmattr.IntegratedGradients(lm), tok)
    with pytest.raises(TypeError):  # and the TypeError llmattr raised before
        llmattr.LLMAttribution(llmattr.IntegratedGradients(lm), tok)
