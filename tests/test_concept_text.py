"""TCAV on a tiny Llama: concepts as texts of different lengths, pooled activations, the
sensitivities' pooling, the cache key, and Captum's crash on the same task."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from llmattr._core.errors import InputError, InputTypeError
from llmattr.concept import TCAV, Concept, LastTokenLogits

pytest.importorskip("transformers")
from conftest import assert_no_hooks, tiny_causal_lm

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "good great happy fine bad awful sad poor the a it was is very movie".split()
LAYERS = ["model.layers.0", "model.layers.1"]


class WordTokenizer:
    """A word-level tokenizer with a BOS id 1 and pad id 0 (what TCAV uses: encode, pad id)."""

    pad_token_id = 0

    def __init__(self) -> None:
        self.vocab = {w: i + 2 for i, w in enumerate(WORDS)}

    def encode(self, text: str) -> list[int]:
        return [1] + [self.vocab[w] for w in text.split()]

    def __len__(self) -> int:
        return len(self.vocab) + 2


POSITIVE = ["good", "it was great", "very happy movie", "the movie is fine", "great", "happy"]
NEGATIVE = ["bad", "it was awful", "very sad", "the movie is poor", "a bad movie", "awful sad"]
PROMPTS = ["it was", "the movie was very", "a", "is the movie good"]


@pytest.fixture(scope="module")
def lm() -> nn.Module:
    return tiny_causal_lm("llama", len(WordTokenizer()), dtype=torch.float64)


@pytest.fixture
def concepts() -> list[Concept]:
    return [Concept(0, "positive", POSITIVE), Concept(1, "negative", NEGATIVE)]


def _single(lm: nn.Module, layer: str, text: str) -> torch.Tensor:
    """The layer's output ``(T, H)`` for one unpadded text."""
    out = {}
    handle = lm.get_submodule(layer).register_forward_hook(lambda m, i, o: out.setdefault("h", o))
    try:
        lm(input_ids=torch.tensor([WordTokenizer().encode(text)]))
    finally:
        handle.remove()
    return out["h"][0]


@pytest.mark.parametrize("pooling", ["last", "mean", 1, -2])
def test_pooled_activations_match_each_text_run_alone(lm, concepts, tmp_path, pooling):
    # batches of 4 and 2 texts, each padded to its own width
    tc = TCAV(lm, LAYERS, tokenizer=WordTokenizer(), pooling=pooling, save_path=str(tmp_path),
              text_batch_size=4)  # fmt: skip
    tc.compute_cavs([concepts])
    for layer in LAYERS:
        stored = tc._store().load(layer, concepts[0])
        assert stored.shape == (len(POSITIVE), 32)
        for row, text in zip(stored, POSITIVE):
            h = _single(lm, layer, text)
            want = h.mean(0) if pooling == "mean" else h[-1 if pooling == "last" else pooling]
            torch.testing.assert_close(row, want)
    assert_no_hooks(lm)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_sensitivity_is_the_derivative_along_the_cav(lm, concepts, tmp_path, pooling):
    tok, target = WordTokenizer(), 5
    tc = TCAV(lm, LAYERS, tokenizer=tok, pooling=pooling, save_path=str(tmp_path))
    scores = tc.interpret(PROMPTS, [concepts], target=target)
    for layer in LAYERS:
        v = tc.cavs["0-1"][layer].stats["weights"][0]
        per_prompt = []
        for text in PROMPTS:  # one unpadded prompt at a time: d logit / d eps, shift eps * v
            eps = torch.zeros((), dtype=torch.float64, requires_grad=True)

            def shift(m, i, o, eps=eps, v=v):
                if pooling == "last":
                    return o + eps * v * (torch.arange(o.shape[1]) == o.shape[1] - 1)[:, None]
                return o + eps * v

            handle = lm.get_submodule(layer).register_forward_hook(shift)
            try:
                logit = lm(input_ids=torch.tensor([tok.encode(text)])).logits[0, -1, target]
            finally:
                handle.remove()
            per_prompt.append(torch.autograd.grad(logit, eps)[0])
        d = torch.stack(per_prompt)
        assert d.abs().min() > 1e-8  # a real derivative for every prompt
        want_sign = (d > 0).double().mean()
        assert float(scores["0-1"][layer]["sign_count"][0]) == float(want_sign)
        want_mag = d.clamp(min=0).sum() / d.abs().sum()
        torch.testing.assert_close(scores["0-1"][layer]["magnitude"][0], want_mag)
    assert_no_hooks(lm)


def test_scores_do_not_depend_on_padding_or_batching(lm, concepts, tmp_path):
    tok = WordTokenizer()
    tc = TCAV(lm, LAYERS, tokenizer=tok, save_path=str(tmp_path))
    together = tc.interpret(PROMPTS, [concepts], target=4)
    for layer in LAYERS:
        # one prompt at a time: the mean of the 0/1 signs gives the batched sign_count
        alone = [tc.interpret(p, [concepts], target=4)["0-1"][layer]["sign_count"][0]
                 for p in PROMPTS]  # fmt: skip
        assert float(torch.stack(alone).mean()) == float(together["0-1"][layer]["sign_count"][0])


def test_data_loader_of_texts_and_last_token_logits(lm, tmp_path):
    tok = WordTokenizer()
    a = Concept(0, "pos", DataLoader(POSITIVE, batch_size=4))
    b = Concept(1, "neg", DataLoader(NEGATIVE, batch_size=4))
    tc = TCAV(lm, LAYERS[0], tokenizer=tok, save_path=str(tmp_path))
    out = tc.interpret(PROMPTS[:2], [[a, b]], target=3)
    assert out["0-1"][LAYERS[0]]["sign_count"].shape == (2,)
    ids = torch.tensor([[1, 12, 13, 0], [1, 10, 11, 12]])  # right-padded
    got = LastTokenLogits(lm)(ids, (ids != 0).long())
    torch.testing.assert_close(got[0], lm(input_ids=ids[:1, :3]).logits[0, -1])
    torch.testing.assert_close(got[1], lm(input_ids=ids[1:]).logits[0, -1])


def test_cache_key_follows_pooling_and_model(lm, concepts, tmp_path):
    roots = set()
    for pooling in ("last", "mean"):
        tc = TCAV(lm, LAYERS[0], model_id="lm", tokenizer=WordTokenizer(), pooling=pooling,
                  save_path=str(tmp_path))  # fmt: skip
        tc.compute_cavs([concepts])
        roots.add(tc._store().root)
    assert len(roots) == 2 == len(os.listdir(tmp_path / "lm"))


def test_bad_text_input_is_refused_before_any_forward(lm, concepts, tmp_path):
    calls = []
    handle = lm.register_forward_hook(lambda *a: calls.append(1))
    tok = WordTokenizer()
    tc = TCAV(lm, LAYERS, tokenizer=tok, pooling=3, save_path=str(tmp_path))
    try:
        with pytest.raises(InputError, match="outside the"):
            tc.interpret(PROMPTS, [concepts], target=0)  # "a" has 2 tokens
        tc = TCAV(lm, LAYERS, tokenizer=tok, save_path=str(tmp_path))
        with pytest.raises(InputError, match="no examples"):
            tc.interpret(PROMPTS, [[concepts[0], Concept(2, "empty", [])]], target=0)
        with pytest.raises(InputError, match="attention mask"):
            tc.interpret(PROMPTS, [concepts], target=0, additional_forward_args=(1,))
        with pytest.raises(InputTypeError, match="prompt"):
            tc.interpret(torch.ones(2, 3), [concepts], target=0)
        assert calls == []
    finally:
        handle.remove()
    with pytest.raises(InputError, match="pooling"):
        TCAV(lm, LAYERS, tokenizer=tok, pooling="max", save_path=str(tmp_path))


def test_captum_tcav_crashes_on_texts_of_different_lengths(lm):
    """Captum flattens each batch's (N, T, H) activation to (N, T*H): concepts whose texts have
    other lengths than each other (or than the prompts) cannot be stacked for its classifier."""
    ca = pytest.importorskip("captum.concept")
    pytest.importorskip("sklearn")
    tok = WordTokenizer()

    class LastLogits(nn.Module):  # Captum's TCAV passes the examples as the only input
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm(input_ids=ids).logits[:, -1]

    a = ca.Concept(0, "pos", DataLoader(torch.tensor([tok.encode(t) for t in ["good", "happy"]])))
    b = ca.Concept(1, "neg", DataLoader(torch.tensor([tok.encode(t) for t in ["it was bad"]])))
    with tempfile.TemporaryDirectory() as d, pytest.warns(UserWarning, match="default classifier"):
        tcav = ca.TCAV(LastLogits(), ["lm.model.layers.0"], save_path=d)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        tcav.interpret(torch.tensor([tok.encode("it was")]), [[a, b]], target=3)
    # ours: the same concepts as texts
    ours = TCAV(lm, "model.layers.0", tokenizer=tok, save_path=tempfile.mkdtemp())
    texts = [Concept(0, "pos", ["good", "happy"]), Concept(1, "neg", ["it was bad", "sad"])]
    out = ours.interpret(["it was"], [texts], target=3)
    assert out["0-1"]["model.layers.0"]["sign_count"].sum() == 1
