"""LLMAttributionResult: the name → score dict, exact save/load, plots and the HTML view."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from llmattr.text import LLMAttributionResult

INPUT_TOKENS = ["The", "cat", "<script>alert(1)</script>", "</div>", "a&b", '"q"', "cat"]
OUTPUT_TOKENS = ["<b>", "sat", "'s"]


def _result(dtype=torch.float32, token_attr=True, inputs=INPUT_TOKENS, outputs=OUTPUT_TOKENS):
    g = torch.Generator().manual_seed(7)
    n_in, n_out = len(inputs), len(outputs)
    return LLMAttributionResult(
        seq_attr=torch.randn(n_in, generator=g, dtype=dtype),
        token_attr=torch.randn(n_out, n_in, generator=g, dtype=dtype) if token_attr else None,
        input_tokens=list(inputs),
        output_tokens=list(outputs),
        output_probs=torch.rand(n_out, generator=g, dtype=dtype),
        method="FeatureAblation",
        info={"foil_tokens": ["dog"], "num_trials": 2, "note": "ünïcode ←"},
    )


# ---- seq_attr_dict -----------------------------------------------------------------------------


def test_seq_attr_dict_suffixes_repeated_names():
    r = _result(inputs=["the", "cat", "the", "the"], outputs=["x"])
    d = r.seq_attr_dict
    assert list(d) == ["the", "cat", "the#2", "the#3"]
    assert list(d.values()) == r.seq_attr.tolist()


def test_seq_attr_dict_suffix_never_overwrites_a_given_name():
    r = _result(inputs=["a#2", "a", "a"], outputs=["x"])
    d = r.seq_attr_dict
    assert len(d) == 3
    assert d["a#2"] == r.seq_attr[0].item() and d["a"] == r.seq_attr[1].item()
    assert list(d.values()) == r.seq_attr.tolist()


# ---- save / load -------------------------------------------------------------------------------


def _assert_same(a: LLMAttributionResult, b: LLMAttributionResult) -> None:
    for name in ("seq_attr", "token_attr", "output_probs"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
            continue
        assert y.dtype == x.dtype and y.shape == x.shape, name
        assert torch.equal(x, y), name
    assert b.input_tokens == a.input_tokens
    assert b.output_tokens == a.output_tokens
    assert b.method == a.method
    assert b.info == a.info


def test_save_load_round_trips_exactly(tmp_path, dtype):
    r = _result(dtype)
    # Values that a decimal text format would round: thirds, a subnormal, huge and tiny.
    r.seq_attr[0] = torch.tensor(1.0, dtype=dtype) / 3
    r.seq_attr[1] = torch.finfo(dtype).tiny / 8
    r.seq_attr[2] = torch.finfo(dtype).max
    r.seq_attr[3] = -torch.finfo(dtype).eps
    path = tmp_path / "result.json"
    r.save(path)
    json.loads(path.read_text(encoding="utf-8"))  # plain JSON
    back = LLMAttributionResult.load(str(path))
    _assert_same(r, back)
    assert torch.equal(back.seq_attr[:4], r.seq_attr[:4])


def test_save_load_without_token_attr_and_mixed_dtypes(tmp_path):
    r = _result(torch.float64, token_attr=False)
    r.output_probs = r.output_probs.float()
    path = tmp_path / "r.json"
    r.save(path)
    back = LLMAttributionResult.load(path)
    assert back.token_attr is None
    assert back.output_probs.dtype == torch.float32 and back.seq_attr.dtype == torch.float64
    _assert_same(r, back)


def test_to_dict_from_dict_round_trip(dtype):
    r = _result(dtype)
    _assert_same(r, LLMAttributionResult.from_dict(json.loads(json.dumps(r.to_dict()))))


# ---- plots -------------------------------------------------------------------------------------


def test_plot_token_attr_shows_the_data(dtype, close_figures):
    r = _result(dtype)
    fig, ax = r.plot_token_attr()
    assert fig is ax.figure
    images = ax.get_images()
    assert len(images) == 1
    data = np.asarray(images[0].get_array())
    assert data.shape == tuple(r.token_attr.shape)
    assert np.array_equal(data, r.token_attr.double().numpy())  # no rounding on the way
    limit = r.token_attr.float().abs().max().item()
    assert images[0].get_clim() == pytest.approx((-limit, limit))  # symmetric around 0
    assert [t.get_text() for t in ax.get_xticklabels()] == r.input_tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == r.output_tokens
    assert list(ax.get_xticks()) == list(range(len(r.input_tokens)))


def test_plot_seq_attr_shows_the_data(dtype, close_figures):
    r = _result(dtype)
    r.seq_attr[0] = 0.5
    r.seq_attr[1] = -0.5
    fig, ax = r.plot_seq_attr()
    assert fig is ax.figure
    bars = ax.patches
    assert len(bars) == len(r.input_tokens)
    assert [b.get_height() for b in bars] == pytest.approx(r.seq_attr.tolist(), rel=1e-6)
    assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx(list(range(len(bars))))
    assert [t.get_text() for t in ax.get_xticklabels()] == r.input_tokens
    # Positive and negative bars are told apart by colour.
    assert bars[0].get_facecolor() != bars[1].get_facecolor()


def test_plot_token_attr_without_token_attr_raises(close_figures):
    r = _result(token_attr=False)
    with pytest.raises(ValueError, match="per-token"):
        r.plot_token_attr()
    _fig, ax = r.plot_seq_attr()  # the sequence view still works
    assert len(ax.patches) == len(r.input_tokens)


# ---- HTML --------------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Collects start tags, the text and title of every ``span.tok``, and table cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.chips: list[tuple[str, str]] = []
        self.cells: list[str] = []
        self.row_heads: list[str] = []
        self.scripts: list[tuple[str, str]] = []  # (type, text)
        self._in: str | None = None
        self._title = ""
        self._text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self._in, self._title, self._text = "chip", a.get("title", ""), ""
        elif tag == "script":
            self._in, self._text = "script", a.get("type", "")
        elif tag == "td":
            self._in, self._text = "td", ""
        elif tag == "th" and a.get("title", "").startswith("p="):
            self._in, self._text = "row", ""

    def handle_data(self, data):
        if self._in == "script" and "\0" not in self._text:
            self._text += "\0"
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if self._in == "chip" and tag == "span":
            self.chips.append((self._text, self._title))
        elif self._in == "td" and tag == "td":
            self.cells.append(self._text)
        elif self._in == "row" and tag == "th":
            self.row_heads.append(self._text)
        elif self._in == "script" and tag == "script":
            kind, _, text = self._text.partition("\0")
            self.scripts.append((kind, text))
        else:
            return
        self._in = None


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def test_to_html_is_self_contained_and_escapes_every_token():
    r = _result()
    page = r.to_html()
    assert page.startswith("<!DOCTYPE html>")
    low = page.lower()
    assert "http://" not in low and "https://" not in low and "<link" not in low
    assert "src=" not in low and "<iframe" not in low and "@import" not in low
    for tok in r.input_tokens + r.output_tokens:
        assert html.escape(tok) in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;/div&gt;" in page and "&lt;b&gt;" in page
    # A raw "</div>", "<b>" or "<script" only where the page's own markup has one.
    benign = _result(inputs=["x"] * len(INPUT_TOKENS), outputs=["y"] * len(OUTPUT_TOKENS))
    plain = benign.to_html()
    assert page.count("</div>") == plain.count("</div>")
    assert page.count("<b>") == plain.count("<b>") == 0
    assert low.count("<script") == plain.lower().count("<script") == 2  # data + our code
    assert "a&b" not in page and '"q"' not in page.split("<script type=")[0]
    # The tokens reach the page's data block intact, with no "<" that could end it.
    kinds = [kind for kind, _ in _parse(page).scripts]
    assert kinds == ["application/json", ""]
    data = json.loads(_parse(page).scripts[0][1])
    assert data["input_tokens"] == r.input_tokens and data["output_tokens"] == r.output_tokens


def test_to_html_shows_tokens_scores_and_legend():
    r = _result()
    page = r.to_html()
    assert "raises the target" in page and "lowers the target" in page
    parsed = _parse(page)
    assert [text for text, _ in parsed.chips] == r.input_tokens
    assert [title for _, title in parsed.chips] == [
        f"{n}: {v:+.4f}" for n, v in zip(r.input_tokens, r.seq_attr.tolist())
    ]
    assert parsed.row_heads == r.output_tokens
    assert parsed.cells == [f"{v:+.2f}" for v in r.token_attr.reshape(-1).tolist()]
    heading = html.escape("FeatureAblation: " + " ".join(r.output_tokens))  # no space markers
    assert f"<h2>{heading}</h2>" in page and f"<title>{heading}</title>" in page


def test_to_html_title_is_escaped():
    page = _result().to_html(title="<i>mine</i> & yours")
    assert "<h2>&lt;i&gt;mine&lt;/i&gt; &amp; yours</h2>" in page
    assert "<title>&lt;i&gt;mine&lt;/i&gt; &amp; yours</title>" in page
    assert "<i>" not in page


def test_to_html_without_token_attr():
    r = _result(token_attr=False)
    page = r.to_html()
    assert "<table" not in page and "<td" not in page
    parsed = _parse(page)
    assert [text for text, _ in parsed.chips] == r.input_tokens
    assert "raises the target" in page
    assert "&lt;script&gt;" in page and "<script>alert" not in page


def test_plots_draw_on_given_axes(close_figures):
    r = _result(torch.float32)
    fig, (top, bottom) = plt.subplots(2, 1)
    assert r.plot_seq_attr(ax=top) == (fig, top)
    assert r.plot_token_attr(ax=bottom) == (fig, bottom)
    assert len(top.patches) == len(r.input_tokens)
    assert bottom.images[0].get_array().shape == tuple(r.token_attr.shape)
