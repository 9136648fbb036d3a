"""learn_prompt_mask on the demo model: a planted copy is kept, determinism, model state, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from llmattr._core.errors import InputError, InputTypeError
from llmattr.demo import load_demo_model, load_eval_prompts
from llmattr.module import (
    BinaryConcreteStochasticGates,
    GaussianStochasticGates,
    PromptMaskResult,
    learn_prompt_mask,
)
from llmattr.text import LLMAttributionResult, TextTokenInput

FAST = {"steps": 30, "lr": 0.3, "n_samples": 4}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny forwards: one thread avoids oversubscribing a shared CPU (restored after)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def _copy_examples():
    # "copy : a b c d ; copy : a b" -> "c": the target is a copy of one prompt word
    return load_eval_prompts("copy")[:2]


@pytest.mark.parametrize("gates", ["binary_concrete", "gaussian"])
def test_planted_copy_token_is_kept(demo, gates: str) -> None:
    model, tok = demo
    for example in _copy_examples():
        result = learn_prompt_mask(model, tok, example.prompt, example.answer, gates, **FAST)
        (decisive,) = example.decisive
        probs = result.gate_probs
        assert probs.shape == (len(example.prompt.split()),)
        assert float(probs[decisive]) > 0.95, (example.prompt, probs)
        assert decisive in result.kept()
        assert len(result.kept()) <= len(probs) // 2  # sparse: most words are dropped
        # keeping only the kept words preserves the answer's probability (much better than
        # dropping the copied word alone would)
        assert result.kept_log_prob > -0.7
        assert result.losses[-1] < result.losses[0]


def test_full_log_probs_match_a_plain_forward(demo) -> None:
    model, tok = demo
    example = _copy_examples()[0]
    inp = TextTokenInput(example.prompt, tok, skip_tokens=[tok.bos_token_id])
    target = " ".join(example.continuation.split()[:2])  # two target tokens
    # gates fully open (log_alpha = 10 gives a clamped value of 1): the gated prompt is the prompt
    open_gates = BinaryConcreteStochasticGates._from_pretrained(torch.full((inp.n_features,), 10.0))
    result = learn_prompt_mask(model, tok, inp, target, open_gates, steps=1, lr=1e-9)
    ids = torch.cat([inp.prompt_ids(), result.target_ids])[None]
    with torch.no_grad():
        logits = model(ids).logits[0, inp.prompt_ids().numel() - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(1, result.target_ids[:, None])[:, 0]
    torch.testing.assert_close(result.full_log_probs, expected, rtol=1e-5, atol=1e-5)
    assert result.masked_log_prob == pytest.approx(float(expected.sum()), abs=1e-4)
    assert result.kept_log_prob == pytest.approx(float(expected.sum()), abs=1e-4)
    assert result.output_tokens == target.split()
    assert result.input_tokens == example.prompt.split()


def test_seeded_determinism_and_rng_left_alone(demo) -> None:
    model, tok = demo
    example = _copy_examples()[0]
    state = torch.get_rng_state()
    a = learn_prompt_mask(model, tok, example.prompt, example.answer, seed=3, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    b = learn_prompt_mask(model, tok, example.prompt, example.answer, seed=3, **FAST)
    c = learn_prompt_mask(model, tok, example.prompt, example.answer, seed=4, **FAST)
    assert torch.equal(a.gate_probs, b.gate_probs) and a.losses == b.losses
    assert not torch.equal(a.gate_probs, c.gate_probs)


def test_model_untouched_and_state_restored(demo) -> None:
    model, tok = demo
    example = _copy_examples()[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.lm_head.weight
    frozen.requires_grad_(False)
    model.train()
    user_gates = GaussianStochasticGates(len(example.prompt.split()))
    mu = user_gates.mu.detach().clone()
    try:
        result = learn_prompt_mask(model, tok, example.prompt, example.answer, user_gates, **FAST)
        assert model.training
        assert not frozen.requires_grad
        assert all(p.requires_grad for n, p in model.named_parameters() if p is not frozen)
        assert all(p.grad is None for p in model.parameters())
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert torch.equal(user_gates.mu.detach(), mu)  # the caller's gates were copied
        assert user_gates.mask is None
        assert result.gates is not None and not result.gates.training
    finally:
        frozen.requires_grad_(True)
        model.eval()


def test_result_converts_to_attribution_result(demo, tmp_path) -> None:
    model, tok = demo
    example = _copy_examples()[0]
    result = learn_prompt_mask(model, tok, example.prompt, example.answer, "gaussian", **FAST)
    assert isinstance(result, PromptMaskResult)
    attr = result.to_attribution_result()
    assert isinstance(attr, LLMAttributionResult)
    torch.testing.assert_close(attr.seq_attr, result.gate_probs)
    assert attr.token_attr is None and attr.input_tokens == example.prompt.split()
    torch.testing.assert_close(attr.output_probs, result.full_log_probs.exp())
    html = result.to_html(path=tmp_path / "mask.html")
    assert example.answer in html and (tmp_path / "mask.html").exists()
    attr.seq_attr[0] = -1.0  # the result's tensors are not shared
    assert float(result.gate_probs[0]) >= 0


def test_bad_input_raises_before_any_forward(demo) -> None:
    model, tok = demo
    example = _copy_examples()[0]
    prompt, answer = example.prompt, example.answer
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    cases = [
        ({"gates": "bernoulli"}, InputError, "gates must be one of"),
        ({"steps": 0}, InputError, "steps"),
        ({"n_samples": 1.5}, InputError, "n_samples"),
        ({"reg_weight": -1.0}, InputError, "reg_weight"),
        ({"lr": 0.0}, InputError, "lr"),
        ({"gates": GaussianStochasticGates(3)}, InputError, "n_gates="),
        ({"gates_kwargs": {"temperature": 2.0}}, InputError, "temperature"),
        ({"target": ""}, InputError, "empty"),
    ]
    try:
        for kwargs, error, words in cases:
            kwargs = {"target": answer, **kwargs}
            with pytest.raises(error, match=words):
                learn_prompt_mask(model, tok, prompt, **kwargs)
        with pytest.raises(InputTypeError, match="inp must be"):
            learn_prompt_mask(model, tok, ["a", "list"], answer)  # type: ignore[arg-type]
        with pytest.raises(InputTypeError, match="language model"):
            learn_prompt_mask(lambda x: x, tok, prompt, answer)  # type: ignore[arg-type]
    finally:
        handle.remove()
    assert calls == []
