"""The scorer: teacher-forced log-probabilities with key/value prefix reuse and middle padding,
checked against a token-by-token replay of generation written here."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import count_forwards, max_diff, tiny_causal_lm

transformers = pytest.importorskip("transformers")

from llmattr.text import Scorer  # noqa: E402

VOCAB = 30522  # the MiniLM WordPiece vocabulary (the LLM tests use its tokenizer)
CONTEXT = 64
TOL = 1e-4  # float32, log-probabilities of size ~10


pytestmark = pytest.mark.usefixtures("one_thread")


def _seq2seq(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "t5":
        config = transformers.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=None, initializer_factor=1.0,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(config).eval()
    config = transformers.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=CONTEXT, init_std=0.5,
    )  # fmt: skip
    return transformers.BartForConditionalGeneration(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def causal(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_causal_lm(request.param, VOCAB, context=CONTEXT)


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    return tiny_causal_lm("gpt2", VOCAB, context=CONTEXT)


@torch.no_grad()
def replay(model: torch.nn.Module, prompt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Generation replayed: for each target position k the model reads prompt + target[:k]
    alone (no cache, no padding) and the last position's log-softmax gives token k."""
    out = []
    for k in range(target.numel()):
        ids = torch.cat([prompt, target[:k]]).unsqueeze(0)
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
        out.append(torch.log_softmax(logits.double(), -1)[target[k]])
    return torch.stack(out)


@torch.no_grad()
def replay_seq2seq(model: torch.nn.Module, prompt: torch.Tensor, target: torch.Tensor):
    """Encoder–decoder replay: the decoder input grows token by token from the start token."""
    start = model.config.decoder_start_token_id
    out = []
    for k in range(target.numel()):
        decoder = torch.cat([torch.tensor([start]), target[:k]]).unsqueeze(0)
        logits = model(input_ids=prompt.unsqueeze(0), decoder_input_ids=decoder).logits[0, -1]
        out.append(torch.log_softmax(logits.double(), -1)[target[k]])
    return torch.stack(out)


def replay_all(model, rows, target, seq2seq=False) -> torch.Tensor:
    fn = replay_seq2seq if seq2seq else replay
    return torch.stack([fn(model, r, target) for r in rows])


PROMPT = torch.tensor([2023, 2003, 1037, 3231, 1997, 1996, 10938, 6254, 2006, 3793, 1012])  # 11
TARGET = torch.tensor([1045, 2293, 2009, 999])


def perturbed_rows(prompt: torch.Tensor) -> list[torch.Tensor]:
    """Rows sharing prefixes of every length with ``prompt``, and of other lengths."""
    L = prompt.numel()

    def replaced(i: int, token: int = 7) -> torch.Tensor:
        row = prompt.clone()
        row[i] = token
        return row

    return [
        prompt.clone(),  # identical: prefix L - 1 (the last token must still run)
        replaced(0),  # the first token changed: j = 0
        replaced(3),
        replaced(L - 1),
        replaced(6, 8),
        torch.cat([prompt[:4], torch.tensor([11, 12, 13]), prompt[5:]]),  # longer (+2)
        torch.cat([prompt[:2], prompt[5:]]),  # shorter (-3)
        torch.cat([prompt, torch.tensor([42, 43])]),  # extends the prompt
        prompt[:-3].clone(),  # a prefix of the prompt
        torch.cat([torch.tensor([5]), prompt[2:]]),  # shorter and changed at 0
    ]


# ---- decoder-only exactness ---------------------------------------------------------------------


def test_original_scores_match_replay(causal):
    scorer = Scorer(causal, PROMPT, TARGET)
    ref = replay(causal, PROMPT, TARGET)
    assert scorer.original.shape == (TARGET.numel(),)
    assert max_diff(scorer.original, ref) < TOL
    assert float(ref.abs().min()) > 0.1  # not a degenerate model: log-probs are informative


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_perturbed_batch_matches_replay(causal, reuse_prefix):
    rows = perturbed_rows(PROMPT)
    scorer = Scorer(causal, PROMPT, TARGET, pad_token_id=0, reuse_prefix=reuse_prefix)
    got = scorer.score(rows)
    ref = replay_all(causal, rows, TARGET)
    assert got.shape == (len(rows), TARGET.numel())
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert max_diff(got, ref) < TOL
    # the rows do change the scores (so agreement is not trivial)
    assert float((ref - ref[0]).abs().max()) > 0.1


def test_each_row_alone_matches_replay(causal):
    """One row per call: every shared prefix length j is exercised on its own."""
    scorer = Scorer(causal, PROMPT, TARGET)
    for row in perturbed_rows(PROMPT):
        assert max_diff(scorer.score([row])[0], replay(causal, row, TARGET)) < TOL


def test_pad_id_does_not_matter(causal):
    """Pads are masked: any pad id gives the same scores for rows of different lengths."""
    rows = perturbed_rows(PROMPT)
    a = Scorer(causal, PROMPT, TARGET, pad_token_id=0).score(rows)
    b = Scorer(causal, PROMPT, TARGET, pad_token_id=4242).score(rows)
    assert max_diff(a, b) < 1e-5


def test_prefix_is_reused(gpt2):
    """With reuse, a row differing only at the last prompt token runs just K new positions
    on top of an L - 1 cache; without reuse it runs all of them."""
    widths: list[tuple[int, int]] = []
    forward = gpt2.forward

    @functools.wraps(forward)
    def spy(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        widths.append((past, kwargs["input_ids"].shape[1]))
        return forward(*args, **kwargs)

    gpt2.forward = spy
    try:
        row = PROMPT.clone()
        row[-1] = 7
        L, K = PROMPT.numel(), TARGET.numel()
        Scorer(gpt2, PROMPT, TARGET).score([row])
        assert widths[-1] == (L - 1, K)
        Scorer(gpt2, PROMPT, TARGET, reuse_prefix=False).score([row])
        assert widths[-1] == (0, L + K - 1)
    finally:
        del gpt2.forward


@pytest.mark.parametrize("legacy", ["tuple", "not croppable"])
def test_a_cache_that_cannot_be_cropped_is_not_reused(gpt2, legacy):
    """A model returning legacy tuple caches (transformers before 4.57 for GPT-2) or a cache
    that refuses cropping is scored without prefix reuse: the same exact numbers, no crash."""
    forward = gpt2.forward

    class Uncroppable:
        is_croppable = False

    @functools.wraps(forward)
    def legacy_cache(*args, **kwargs):
        out = forward(*args, **kwargs)
        if kwargs.get("use_cache"):
            name = "cache" if hasattr(out, "cache") else "past_key_values"  # transformers 5 / 4
            cache = getattr(out, name)
            setattr(
                out,
                name,
                tuple((layer.keys, layer.values) for layer in cache.layers)
                if legacy == "tuple"
                else Uncroppable(),
            )
        return out

    rows = perturbed_rows(PROMPT)
    expected = Scorer(gpt2, PROMPT, TARGET).score(rows)
    gpt2.forward = legacy_cache
    try:
        scorer = Scorer(gpt2, PROMPT, TARGET)
        assert scorer.cache is None
        assert max_diff(scorer.score(rows), expected) < 1e-5
    finally:
        del gpt2.forward


def test_order_of_rows_is_kept(causal):
    """Rows are regrouped by shared prefix internally; results come back in the given order."""
    rows = perturbed_rows(PROMPT)
    scorer = Scorer(causal, PROMPT, TARGET)
    forward = scorer.score(rows)
    backward = scorer.score(rows[::-1])
    assert max_diff(forward, backward.flip(0)) < 1e-5
    assert float((forward[1] - forward[0]).abs().max()) > 0.1  # rows are distinguishable


@pytest.mark.parametrize("rows_per_forward", [1, 2, 3, None, 100])
def test_independent_of_rows_per_forward(causal, rows_per_forward):
    rows = perturbed_rows(PROMPT)
    got = Scorer(causal, PROMPT, TARGET, rows_per_forward=rows_per_forward).score(rows)
    assert max_diff(got, replay_all(causal, rows, TARGET)) < TOL


def test_out_of_memory_backs_off(gpt2):
    """A forward of more than two rows runs out of memory: the scorer halves and retries, with
    the same result."""
    rows = perturbed_rows(PROMPT)
    seen: list[int] = []
    failures = [0]
    forward = gpt2.forward

    @functools.wraps(forward)  # keeps the signature (``logits_to_keep`` is still found)
    def tight(*args, **kwargs):
        n = kwargs["input_ids"].shape[0]
        if n > 2:
            failures[0] += 1
            raise torch.OutOfMemoryError("injected: out of memory")
        seen.append(n)
        return forward(*args, **kwargs)

    gpt2.forward = tight
    try:
        got = Scorer(gpt2, PROMPT, TARGET, rows_per_forward=8).score(rows)
    finally:
        del gpt2.forward
    assert failures[0] > 0 and max(seen) <= 2
    # the original row, then every perturbed row but the unchanged first one (known already)
    assert sum(seen) == len(rows)
    assert max_diff(got, replay_all(gpt2, rows, TARGET)) < TOL


def test_other_errors_propagate(gpt2):
    scorer = Scorer(gpt2, PROMPT, TARGET)
    forward = gpt2.forward

    @functools.wraps(forward)
    def broken(*args, **kwargs):
        raise RuntimeError("something else broke")

    gpt2.forward = broken
    try:
        with pytest.raises(RuntimeError, match="something else broke"):
            scorer.score(perturbed_rows(PROMPT)[1:2])
    finally:
        del gpt2.forward


# ---- limits and errors --------------------------------------------------------------------------


def test_context_limit(causal):
    """prompt + target[:-1] must fit the context; longer raises before any forward."""
    calls = count_forwards(causal)
    try:
        target = TARGET[:3]
        fits = torch.arange(100, 100 + CONTEXT - target.numel() + 1)  # L + K - 1 == CONTEXT
        scorer = Scorer(causal, fits, target)
        assert calls[0] == 1
        assert max_diff(scorer.original, replay(causal, fits, target)) < TOL
        calls[0] = 0
        too_long = torch.arange(100, 100 + fits.numel() + 1)
        with pytest.raises(ValueError, match="context of 64"):
            Scorer(causal, too_long, target)
        assert calls[0] == 0
    finally:
        del causal.forward


def test_empty_prompt_or_target(gpt2):
    calls = count_forwards(gpt2)
    try:
        with pytest.raises(ValueError, match="prompt is empty"):
            Scorer(gpt2, torch.tensor([], dtype=torch.long), TARGET)
        with pytest.raises(ValueError, match="target is empty"):
            Scorer(gpt2, PROMPT, torch.tensor([], dtype=torch.long))
        assert calls[0] == 0
        scorer = Scorer(gpt2, PROMPT, TARGET)
        with pytest.raises(ValueError, match="empty"):
            scorer.score([PROMPT, torch.tensor([], dtype=torch.long)])
    finally:
        del gpt2.forward


def test_single_token_target(causal):
    target = TARGET[:1]
    rows = perturbed_rows(PROMPT)
    got = Scorer(causal, PROMPT, target).score(rows)
    assert got.shape == (len(rows), 1)
    assert max_diff(got, replay_all(causal, rows, target)) < TOL


# ---- encoder–decoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_matches_replay(arch):
    model = _seq2seq(arch)
    rows = perturbed_rows(PROMPT)
    scorer = Scorer(model, PROMPT, TARGET, pad_token_id=model.config.pad_token_id)
    ref = replay_all(model, rows, TARGET, seq2seq=True)
    assert max_diff(scorer.original, ref[0]) < TOL
    assert max_diff(scorer.score(rows), ref) < TOL
    assert float((ref - ref[0]).abs().max()) > 0.05  # the prompt matters
    small = Scorer(model, PROMPT, TARGET, rows_per_forward=3).score(rows)
    assert max_diff(small, ref) < TOL


def test_encoder_decoder_context():
    model = _seq2seq("bart")  # learned positions: CONTEXT in the encoder and the decoder
    with pytest.raises(ValueError, match="context"):
        Scorer(model, torch.arange(100, 100 + CONTEXT + 1), TARGET)
    long_target = torch.arange(100, 100 + CONTEXT + 1)
    with pytest.raises(ValueError, match="context"):
        Scorer(model, PROMPT, long_target)


# ---- where token ids go -------------------------------------------------------------------------


def test_model_device_follows_accelerate_hooks():
    """An offloaded model keeps its weights on ``meta``; ids go to the hook's execution device."""
    from types import SimpleNamespace

    from llmattr.text.scorer import model_device

    model = tiny_causal_lm("gpt2", VOCAB, context=CONTEXT)
    assert model_device(model) == torch.device("cpu")
    embed = model.get_input_embeddings()
    embed._hf_hook = SimpleNamespace(execution_device="cuda:1")  # only read, never run
    try:
        assert model_device(model) == torch.device("cuda", 1)
        embed._hf_hook = SimpleNamespace(
            hooks=[SimpleNamespace(), SimpleNamespace(execution_device=torch.device("cuda", 2))]
        )  # a SequentialHook
        assert model_device(model) == torch.device("cuda", 2)
    finally:
        del embed._hf_hook
    accelerate = pytest.importorskip("accelerate")
    offloaded = accelerate.cpu_offload(model, execution_device="cpu")
    assert offloaded.get_input_embeddings().weight.device.type == "meta"
    assert model_device(offloaded) == torch.device("cpu")
    scorer = Scorer(offloaded, PROMPT, TARGET)
    assert max_diff(scorer.score([PROMPT])[0], scorer.original) < 1e-5


@pytest.mark.parametrize("rows_per_forward", [0, -2, 1.5, True])
def test_bad_rows_per_forward(gpt2, rows_per_forward):
    with pytest.raises(ValueError, match="rows_per_forward"):
        Scorer(gpt2, PROMPT, TARGET, rows_per_forward=rows_per_forward)


def test_unperturbed_rows_are_not_scored_again(gpt2):
    """The original prompt's scores are known from construction: rows equal to it cost no
    forward (the perturbation engine's first call; Shapley's full coalitions)."""
    scorer = Scorer(gpt2, PROMPT, TARGET)
    calls = count_forwards(gpt2)
    try:
        got = scorer.score([PROMPT.clone(), PROMPT.clone()])
        assert calls[0] == 0
        assert max_diff(got, replay_all(gpt2, [PROMPT, PROMPT], TARGET)) < TOL
    finally:
        del gpt2.forward
