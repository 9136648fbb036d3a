"""llm_infidelity and llm_sensitivity_max on LLM attributions of the shipped demo model (and a
tiny random GPT-2 for the embedding forward): brute force, Shapley efficiency, the scale
convention, chunking, the embedding route against the exact scorer, and bad input."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import assert_no_hooks, count_forwards, tiny_causal_lm

pytest.importorskip("transformers")

from llmattr import (
    FeatureAblation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMGradientAttribution,
    ShapleyValueSampling,
    TextTemplateInput,
    TextTokenInput,
    words,
)
from llmattr._core.errors import InputError
from llmattr.demo import load_demo_model
from llmattr.metrics.text_perturb import (
    _EmbeddingForward,
    _score_forward,
    llm_infidelity,
    llm_sensitivity_max,
    random_mask_perturb_func,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "the key of box two is red . the key of box two is"


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


@pytest.fixture(scope="module")
def fa(demo):
    model, tok = demo
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    attr = LLMAttribution(FeatureAblation(model), tok)
    return attr, inp, attr.attribute(inp, target="red")


@pytest.fixture(scope="module")
def ig(demo):
    model, tok = demo
    inp = TextTokenInput(PROMPT, tok, skip_tokens=[tok.bos_token_id])
    attr = LLMGradientAttribution(
        LayerIntegratedGradients(model, model.get_input_embeddings()), tok
    )
    return attr, inp, attr.attribute(inp, target="red", n_steps=12)


def log_p(model, ids, target) -> float:
    """log p(target | ids) by one plain forward."""
    full = torch.cat([ids, target[:-1]]).unsqueeze(0)
    with torch.no_grad():
        logp = model(full).logits[0, ids.numel() - 1 :].double().log_softmax(-1)
    return float(logp.gather(1, target.view(-1, 1)).sum())


def test_mask_mode_matches_brute_force(demo, fa):
    model, tok = demo
    attr, inp, result = fa
    n = 6
    torch.manual_seed(3)
    value = llm_infidelity(attr, inp, "red", result, n_perturb_samples=n)
    torch.manual_seed(3)
    masks, _ = random_mask_perturb_func(0.5)(torch.ones(n, inp.n_features, dtype=torch.float64))
    target = torch.tensor(tok.encode("red", add_special_tokens=False))
    full = log_p(model, inp.prompt_ids(), target)
    errors = []
    for row, ids in zip(masks, inp.perturbed_ids(1 - masks)):
        predicted = float((row * result.seq_attr.double()).sum())
        errors.append((predicted - (full - log_p(model, ids, target))) ** 2)
    assert value == pytest.approx(sum(errors) / n, rel=1e-5, abs=1e-9)
    assert value > 1e-4


def test_shapley_values_have_zero_infidelity_when_everything_is_removed(demo):
    """Efficiency: Shapley estimates sum to f(prompt) - f(baseline prompt)."""
    model, tok = demo
    inp = words("the key of box two is", tok)
    attr = LLMAttribution(ShapleyValueSampling(model), tok)
    result = attr.attribute(inp, target="red", n_samples=3)
    value = llm_infidelity(attr, inp, "red", result, 4, mask_prob=1.0)
    assert value < 1e-9
    assert llm_infidelity(attr, inp, "red", result, 4, mask_prob=0.5) > 1e-6
    # attr_target="prob": the explained value is the probability, in the same units
    prob = LLMAttribution(ShapleyValueSampling(model), tok, attr_target="prob")
    in_prob = prob.attribute(inp, target="red", n_samples=3)
    assert llm_infidelity(prob, inp, "red", in_prob, 4, mask_prob=1.0) < 1e-12
    assert llm_infidelity(attr, inp, "red", in_prob, 4, mask_prob=1.0) > 1e-3


def test_scale_convention(fa):
    attr, inp, result = fa

    def at(scale: float, normalize: bool) -> float:
        scaled = dataclasses.replace(result, seq_attr=result.seq_attr * scale)
        torch.manual_seed(5)
        return llm_infidelity(attr, inp, "red", scaled, 8, normalize=normalize)

    raw = [at(s, False) for s in (1.0, 2.0, 3.0, 10.0)]
    assert 28 * raw[0] - 63 * raw[1] + 36 * raw[2] == pytest.approx(raw[3], rel=1e-6)
    assert raw[3] > raw[0]
    norm = [at(s, True) for s in (1.0, 3.0, 0.2)]
    assert norm[1] == pytest.approx(norm[0], rel=1e-9) and norm[2] == pytest.approx(norm[0])
    assert norm[0] <= raw[0] + 1e-12


@pytest.mark.parametrize("mode", ["mask", "embedding_noise"])
def test_chunking_does_not_change_the_value(ig, mode):
    attr, inp, result = ig
    torch.manual_seed(1)
    whole = llm_infidelity(attr, inp, "red", result, 5, mode)
    torch.manual_seed(1)
    part = llm_infidelity(attr, inp, "red", result, 5, mode, max_examples_per_batch=2)
    assert part == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize("arch", ["demo", "gpt2"])
def test_embedding_route_equals_the_exact_scorer_on_binary_presence(demo, arch):
    model, tok = demo
    if arch == "gpt2":
        model = tiny_causal_lm("gpt2", len(tok))
    inp = words(PROMPT, tok)
    target = torch.tensor(tok.encode("red two", add_special_tokens=False))
    presence = (torch.rand(6, inp.n_features) < 0.6).double()
    presence[0] = 1
    exact = _score_forward(model, tok, inp, target, False)(presence)
    for prob in (False, True):
        via = _EmbeddingForward(model, inp, target, prob)(presence)
        expected = exact.exp() if prob else exact
        assert torch.allclose(via, expected, rtol=1e-4, atol=1e-5)
    assert_no_hooks(model)


def test_gradient_result_embedding_noise(ig):
    attr, inp, result = ig
    ids = inp.prompt_ids().clone()
    seq = result.seq_attr.clone()
    torch.manual_seed(0)
    small = llm_infidelity(attr, inp, "red", result, 8, "embedding_noise", noise_std=0.01)
    torch.manual_seed(0)
    large = llm_infidelity(attr, inp, "red", result, 8, "embedding_noise", noise_std=0.3)
    torch.manual_seed(0)
    best = llm_infidelity(attr, inp, "red", result, 8, "embedding_noise", noise_std=0.3,
                          normalize=True)  # fmt: skip
    assert 0 < small < large and best <= large
    assert torch.equal(ids, inp.prompt_ids()) and torch.equal(seq, result.seq_attr)
    assert_no_hooks(attr.model)


def test_template_input_mask_mode(demo):
    model, tok = demo
    inp = TextTemplateInput("the key of box {} is {} . the key of box {} is", ["two", "red", "two"],
                            baselines="one", mask=[0, 1, 0])  # fmt: skip
    attr = LLMAttribution(ShapleyValueSampling(model), tok)
    fresh = TextTemplateInput(inp.template, inp.values, baselines="one", mask=[0, 1, 0])
    result = attr.attribute(inp, target="red", n_samples=4)
    assert llm_infidelity(attr, fresh, "red", result, 3, mask_prob=1.0) < 1e-9
    assert fresh.tokenizer is None  # our copy got the tokenizer, not the caller's input
    with pytest.raises(InputError):
        llm_infidelity(attr, fresh, "red", result, 3, "embedding_noise")


def test_sensitivity(fa, ig):
    for attr, inp, _ in (fa, ig):
        kw = {"n_steps": 12} if attr is ig[0] else {}
        assert llm_sensitivity_max(attr, inp, "red", 2, perturb_radius=0.0, **kw) == 0.0
        torch.manual_seed(0)
        value = llm_sensitivity_max(attr, inp, "red", 3, **kw)
        torch.manual_seed(0)
        chunked = llm_sensitivity_max(attr, inp, "red", 3, max_examples_per_batch=1, **kw)
        assert value > 0 and chunked == pytest.approx(value, rel=1e-9)
        torch.manual_seed(0)
        larger = llm_sensitivity_max(attr, inp, "red", 3, perturb_radius=0.3, **kw)
        assert larger > value
        assert_no_hooks(attr.model)


def test_hooks_removed_when_the_attribution_fails(fa):
    attr, inp, _ = fa
    with pytest.raises(TypeError):
        llm_sensitivity_max(attr, inp, "red", 2, no_such_argument=1)
    assert_no_hooks(attr.model)


def test_sensitivity_seed_removes_sampling_noise(demo):
    model, tok = demo
    attr = LLMAttribution(ShapleyValueSampling(model), tok)
    inp = words("the key of box two is", tok)
    kw = dict(perturb_radius=0.0, n_samples=2)
    assert llm_sensitivity_max(attr, inp, "red", 2, **kw) == 0.0
    assert llm_sensitivity_max(attr, inp, "red", 2, seed=None, **kw) > 0


def test_bad_input_before_any_forward(demo, fa):
    model = demo[0]
    attr, inp, result = fa
    short = dataclasses.replace(
        result, seq_attr=result.seq_attr[:3], token_attr=None, input_tokens=result.input_tokens[:3]
    )
    calls = count_forwards(model)
    try:
        cases = [
            lambda: llm_infidelity(attr, inp, "red", short),
            lambda: llm_infidelity(attr, inp, "red two", result),
            lambda: llm_infidelity(attr, inp, "red", result, mode="noise"),
            lambda: llm_infidelity(attr, inp, "red", result, mask_prob=1.5),
            lambda: llm_infidelity(attr, inp, "red", result, n_perturb_samples=0),
            lambda: llm_infidelity(model, inp, "red", result),
            lambda: llm_infidelity(attr, PROMPT, "red", result),
            lambda: llm_sensitivity_max(attr, inp, "red", perturb_radius=-1.0),
        ]
        for case in cases:
            with pytest.raises(InputError):
                case()
        assert calls[0] == 0
    finally:
        del model.forward
