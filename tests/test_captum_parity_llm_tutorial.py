"""Captum's Llama-2 LLM attribution tutorial, step by step, on a tiny random-init Llama with the
offline Llama-style tokenizer of test_captum_parity_llm: each step runs with llmattr and, where
Captum can run the same step deterministically, agrees with Captum (exact mode)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib
import pytest
import torch
from conftest import tiny_causal_lm

matplotlib.use("Agg")
transformers = pytest.importorskip("transformers")
ca = pytest.importorskip("captum.attr")

from test_captum_parity_llm import assert_same_result, llama_style_tokenizer  # noqa: E402

from llmattr import (  # noqa: E402
    FeatureAblation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMGradientAttribution,
    ProductBaselines,
    ShapleyValues,
    ShapleyValueSampling,
    TextTemplateInput,
    TextTokenInput,
)

pytestmark = pytest.mark.usefixtures("one_thread", "close_figures")

EVAL_PROMPT = "Dave lives in Palm Coast, FL and is a lawyer. His personal interests include"
TARGET = " playing golf, hiking"
TEMPLATE = "{} lives in {}, {} and is a {}. {} personal interests include"
VALUES = ["Dave", "Palm Coast", "FL", "lawyer", "His"]


@pytest.fixture(scope="module")
def setup():
    tok = llama_style_tokenizer()
    return tiny_causal_lm("llama", len(tok), dtype=torch.float64), tok


def test_tutorial_token_attribution_and_plot(setup):
    model, tok = setup
    inp = TextTokenInput(EVAL_PROMPT, tok, skip_tokens=[1])  # 1: BOS, as in the tutorial
    res = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target=TARGET)
    theirs = ca.LLMAttribution(ca.FeatureAblation(model), tok).attribute(
        ca.TextTokenInput(EVAL_PROMPT, tok, skip_tokens=[1]), target=TARGET,
        use_cached_outputs=False,
    )  # fmt: skip
    assert_same_result(res, theirs)
    _fig, ax = res.plot_token_attr(show=False)
    assert ax.images and ax.images[0].get_array().shape == tuple(res.token_attr.shape)
    assert res.plot_token_attr(show=True) is None  # Captum: None when shown


def test_tutorial_template_with_baselines_and_seq_plot(setup):
    model, tok = setup
    for baselines in (None, ["Sarah", "Seattle", "WA", "doctor", "Her"]):
        inp = TextTemplateInput(TEMPLATE, values=VALUES, baselines=baselines)
        res = LLMAttribution(FeatureAblation(model), tok).attribute(inp, target=TARGET)
        theirs = ca.LLMAttribution(ca.FeatureAblation(model), tok).attribute(
            ca.TextTemplateInput(TEMPLATE, values=VALUES, baselines=baselines), target=TARGET,
            use_cached_outputs=False,
        )  # fmt: skip
        assert_same_result(res, theirs)
        _fig, ax = res.plot_seq_attr(show=False)
        assert len(ax.patches) >= len(VALUES)  # a bar per value


def test_tutorial_product_baselines_shapley_sampling(setup):
    model, tok = setup
    baselines = ProductBaselines({
        ("name", "pronoun"): [("Sarah", "her"), ("John", "His"), ("Martin", "His")],
        ("city", "state"): [("Seattle", "WA"), ("Boston", "MA")],
        "occupation": ["doctor", "engineer", "teacher", "plumber"],
    })  # fmt: skip
    inp = TextTemplateInput(
        "{name} lives in {city}, {state} and is an {occupation}. {pronoun} personal interests"
        " include",
        values={"name": "Dave", "city": "Palm Coast", "state": "FL", "occupation": "lawyer",
                "pronoun": "His"},
        baselines=baselines,
        mask={"name": 0, "city": 1, "state": 1, "occupation": 2, "pronoun": 0},
    )  # fmt: skip
    res = LLMAttribution(ShapleyValueSampling(model), tok).attribute(
        inp, target=TARGET, num_trials=3, n_samples=2
    )
    assert res.input_tokens == ["Dave", "Palm Coast", "FL", "lawyer", "His"]
    assert res.token_attr.shape == (len(res.output_tokens), 5)
    assert res.seq_attr[0] == res.seq_attr[4] and res.seq_attr[1] == res.seq_attr[2]
    assert torch.isfinite(res.token_attr).all()
    assert res.plot_token_attr(show=False) is not None


def test_tutorial_generated_target(setup):
    model, tok = setup
    inp = TextTokenInput(EVAL_PROMPT, tok, skip_tokens=[1])
    gen_args = {"max_new_tokens": 4, "do_sample": False}
    res = LLMAttribution(FeatureAblation(model), tok).attribute(inp, gen_args=gen_args)
    theirs = ca.LLMAttribution(ca.FeatureAblation(model), tok).attribute(
        ca.TextTokenInput(EVAL_PROMPT, tok, skip_tokens=[1]), gen_args=gen_args,
        use_cached_outputs=False,
    )  # fmt: skip
    assert_same_result(res, theirs)


def test_tutorial_layer_integrated_gradients(setup):
    """The tutorial's gradient step: LayerIntegratedGradients on the embedding through
    LLMGradientAttribution, then the sequence plot."""
    model, tok = setup
    inp = TextTokenInput(EVAL_PROMPT, tok, skip_tokens=[1])
    ours = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.model.embed_tokens), tok
    ).attribute(inp, target=TARGET)
    theirs = ca.LLMGradientAttribution(
        ca.LayerIntegratedGradients(model, model.model.embed_tokens), tok
    ).attribute(ca.TextTokenInput(EVAL_PROMPT, tok, skip_tokens=[1]), target=TARGET)
    assert ours.input_tokens == theirs.input_tokens
    assert ours.seq_attr.shape == theirs.seq_attr.shape
    assert ours.token_attr.shape == theirs.token_attr.shape
    torch.testing.assert_close(
        ours.seq_attr, theirs.seq_attr.to(ours.seq_attr.dtype), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        ours.token_attr, theirs.token_attr.to(ours.token_attr.dtype), rtol=1e-5, atol=1e-6
    )
    assert float(ours.seq_attr.abs().max()) > 1e-3
    _fig, ax = ours.plot_seq_attr(show=False)
    assert len(ax.patches) == len(ours.input_tokens)


def test_tutorial_few_shot_prompt_function(setup):
    """The tutorial's few-shot step: a template *function* of the examples, each example a
    feature (absent = empty string), exact Shapley values, equal to Captum's."""
    model, tok = setup

    def prompt_fn(*examples: str) -> str:
        shown = [e for e in examples if e]
        prefix = "Here are examples:\n" if shown else ""
        return prefix + "\n".join(shown) + "\n Review: good?"

    examples = ["ok no", "yes", "bad no"]
    ours = LLMAttribution(ShapleyValues(model), tok).attribute(
        TextTemplateInput(prompt_fn, values=examples), target=" Positive"
    )
    theirs = ca.LLMAttribution(ca.ShapleyValues(model), tok).attribute(
        ca.TextTemplateInput(prompt_fn, values=examples), target=" Positive",
        use_cached_outputs=False,
    )  # fmt: skip
    assert_same_result(ours, theirs)
    assert ours.input_tokens == examples
