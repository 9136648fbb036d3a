"""html_report: self-contained, escaped, complete, readable at 1,000 tokens, several results."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from html.parser import HTMLParser

import pytest
import torch

from llmattr import LLMAttributionResult, html_report
from llmattr.viz import palette
from llmattr.viz.report import COMPACT_FROM, script_json

HOSTILE = [
    "The",
    "<script>alert(1)</script>",
    "</div>",
    "a&b",
    '"q"',
    "'s",
    "<!--",
    "</script><script>alert(2)</script>",
    "<img src=x onerror=alert(3)>",
    "\u2028",
    "cat",
]
TARGETS = ["<b>", "sat", "</table>"]


def _result(
    inputs=HOSTILE, outputs=TARGETS, token_attr=True, method="FeatureAblation", info=None, seed=7
) -> LLMAttributionResult:
    g = torch.Generator().manual_seed(seed)
    n_in, n_out = len(inputs), len(outputs)
    return LLMAttributionResult(
        seq_attr=torch.randn(n_in, generator=g),
        token_attr=torch.randn(n_out, n_in, generator=g) if token_attr else None,
        input_tokens=list(inputs),
        output_tokens=list(outputs),
        output_probs=torch.rand(n_out, generator=g),
        method=method,
        info={"foil": "<i>dog</i>"} if info is None else info,
    )


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text = ""  # all text inside, entities decoded

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        out = []
        for child in self.children:
            if (tag is None or child.tag == tag) and (cls is None or cls in child.classes):
                out.append(child)
            out += child.find_all(tag, cls)
        return out


class _Tree(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "input", "link", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.at = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.at)
        self.at.children.append(node)
        if tag not in self.VOID:
            self.at = node

    def handle_endtag(self, tag):
        node = self.at
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"stray </{tag}>"
        self.at = node.parent

    def handle_data(self, data):
        node = self.at
        while node is not None:
            node.text += data
            node = node.parent


def parse(page: str) -> Node:
    tree = _Tree()
    tree.feed(page)
    tree.close()
    assert tree.at is tree.root, "unclosed elements"
    return tree.root


def _data(section: Node) -> dict:
    (block,) = section.find_all("script", "llmattr-data")
    return json.loads(block.text)


# ---- self-contained and safe ----------------------------------------------------------------


def test_report_is_one_self_contained_document():
    page = html_report(_result())
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    low = page.lower()
    for needle in ("http://", "https://", "//cdn", "<link", "@import", "url(", "<iframe"):
        assert needle not in low, needle
    tree = parse(page)
    for node in tree.find_all():
        assert node.tag not in {"img", "iframe", "object", "embed", "link", "a"} or (
            node.tag == "a" and node.attrs["href"].startswith("#")
        ), node.tag
        assert not {"src", "href", "srcdoc"} & set(node.attrs) or node.tag == "a"
        assert not any(name.startswith("on") for name in node.attrs), node.attrs
    scripts = tree.find_all("script")
    # Exactly our data block and our code: nothing a token smuggled in.
    assert [s.attrs.get("type") for s in scripts] == ["application/json", None]


def test_policy_forbids_network_and_allows_only_our_script():
    page = html_report(_result())
    tree = parse(page)
    (meta,) = [m for m in tree.find_all("meta") if m.attrs.get("http-equiv")]
    policy = meta.attrs["content"]
    assert "default-src 'none'" in policy
    code = tree.find_all("script")[-1].text
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1]


def test_every_token_title_and_label_is_escaped():
    r = _result()
    page = html_report(r, titles=["<h1>x</h1> & </section>"])
    for token in HOSTILE + TARGETS:
        if token.strip():
            assert html.escape(token) in page, token
    assert "<h1>x</h1>" not in page and "&lt;h1&gt;x&lt;/h1&gt; &amp; &lt;/section&gt;" in page
    assert "<i>dog</i>" not in page and "&lt;i&gt;dog&lt;/i&gt;" in page  # info values
    # The markup is the report's own: same tags as for harmless tokens.
    benign = _result(inputs=["x"] * len(HOSTILE), outputs=["y"] * len(TARGETS), info={"foil": "d"})
    tags = lambda p: sorted(re.findall(r"</?[a-zA-Z][a-zA-Z0-9]*", p))  # noqa: E731
    assert tags(html_report(r, titles=["t"])) == tags(html_report(benign, titles=["t"]))
    assert "onerror=" not in page.replace("onerror=alert(3)", "")
    assert "<!--" not in page


def test_script_json_cannot_close_its_block():
    text = script_json({"a": "</script><!-- & > \u2028", "b": [1.5, None]})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & > \u2028", "b": [1.5, None]}


def test_embedded_data_round_trips_tokens_exactly():
    r = _result()
    (section,) = parse(html_report(r)).find_all("section")
    d = _data(section)
    assert d["input_tokens"] == HOSTILE and d["output_tokens"] == TARGETS
    assert d["seq_attr"] == pytest.approx(r.seq_attr.tolist(), rel=1e-5)
    assert d["token_attr"] == [pytest.approx(row, rel=1e-5) for row in r.token_attr.tolist()]
    assert d["output_probs"] == pytest.approx(r.output_probs.tolist(), rel=1e-5)
    assert d["seq_limit"] == pytest.approx(r.seq_attr.abs().max().item())
    assert d["levels"] == palette.LEVELS


# ---- content --------------------------------------------------------------------------------


def _level_class(v: float, limit: float) -> str:
    return f"q{palette.level(v, limit) + palette.LEVELS}"


def test_prompt_tokens_coloured_by_seq_attr_with_hover_values():
    r = _result()
    r.seq_attr[0] = 10.0  # the largest: saturates
    r.seq_attr[1] = -10.0
    r.seq_attr[2] = 0.0
    (section,) = parse(html_report(r)).find_all("section")
    chips = section.find_all("span", "tok")
    assert [c.text for c in chips] == HOSTILE
    assert [c.attrs["title"] for c in chips] == [
        f"{n}: {v:+.4f}" for n, v in zip(HOSTILE, r.seq_attr.tolist())
    ]
    limit = 10.0
    assert [c.classes[1] for c in chips] == [_level_class(v, limit) for v in r.seq_attr.tolist()]
    assert chips[0].classes[1] == f"q{2 * palette.LEVELS}"  # darkest red
    assert chips[1].classes[1] == "q0"  # darkest blue
    assert chips[2].classes[1] == f"q{palette.LEVELS}"  # neutral


def test_legend_shows_scale_and_meaning():
    r = _result()
    (section,) = parse(html_report(r)).find_all("section")
    legends = section.find_all("div", "legend")
    assert len(legends) == 2  # the prompt's and the heatmap's
    seq_limit = r.seq_attr.abs().max().item()
    assert f"{-seq_limit:.3g} lowers the target" in legends[0].text
    assert f"raises the target +{seq_limit:.3g}" in legends[0].text
    swatches = legends[0].find_all("i")
    assert [s.classes for s in swatches] == [[f"q{i}"] for i in range(2 * palette.LEVELS + 1)]
    tok_limit = r.token_attr.abs().max().item()
    assert f"raises the target +{tok_limit:.3g}" in legends[1].text


def test_heatmap_has_a_row_per_target_and_a_column_per_feature():
    r = _result()
    (section,) = parse(html_report(r)).find_all("section")
    (table,) = section.find_all("table", "hm")
    assert "compact" not in table.classes
    assert [th.text for th in table.find_all("th", "col")] == HOSTILE
    body = table.find_all("tbody")[0]
    rows = body.find_all("tr")
    assert [row.find_all("th", "row")[0].text for row in rows] == TARGETS
    probs = r.output_probs.tolist()
    assert [row.find_all("th", "row")[0].attrs["title"] for row in rows] == [
        f"p={p:.4f}" for p in probs
    ]
    assert [row.find_all("th", "prob")[0].text for row in rows] == [f"{p:.4f}"[:5] for p in probs]
    limit = r.token_attr.abs().max().item()
    for row, values in zip(rows, r.token_attr.tolist()):
        cells = row.find_all("td")
        assert [c.text for c in cells] == [f"{v:+.2f}" for v in values]
        assert [c.classes for c in cells] == [[_level_class(v, limit)] for v in values]


def test_default_heading_and_page_title():
    r = _result(inputs=["a"], outputs=[" the", " end"], info={})
    page = html_report(r)
    assert "<title>FeatureAblation: the end</title>" in page
    assert "<h2>FeatureAblation: the end</h2>" in page
    long = _result(inputs=["a"], outputs=["x"] * 200, info={})
    assert "<h2>FeatureAblation: " + ("x " * 40)[:79] + "…</h2>" in html_report(long)
    byte_level = _result(inputs=["a"], outputs=["Ġthe", "Ġend", "Ċ"], info={})
    assert "<h2>FeatureAblation: the end</h2>" in html_report(byte_level)


def test_result_without_token_attr_has_no_heatmap():
    r = _result(token_attr=False)
    page = html_report(r)
    tree = parse(page)
    assert not tree.find_all("table") and not tree.find_all("td")
    assert [c.text for c in tree.find_all("span", "tok")] == HOSTILE
    assert _data(tree.find_all("section")[0])["token_attr"] == []


def test_non_finite_values_are_shown_and_stay_valid_json():
    r = _result(inputs=["a", "b", "c", "d"], outputs=["x"], info={})
    r.seq_attr[:] = torch.tensor([math.nan, 2.0, -math.inf, math.inf])
    r.token_attr[0, :] = torch.tensor([math.nan, 1.0, math.inf, -math.inf])
    tree = parse(html_report(r))
    chips = tree.find_all("span", "tok")
    assert chips[0].attrs["title"] == "a: nan" and chips[0].classes[1] == f"q{palette.LEVELS}"
    assert chips[1].classes[1] == f"q{2 * palette.LEVELS}"  # the limit ignores non-finite
    # Infinities take the strongest colour of their sign; only NaN stays neutral.
    assert chips[2].attrs["title"] == "c: -inf" and chips[2].classes[1] == "q0"
    assert chips[3].attrs["title"] == "d: +inf" and chips[3].classes[1] == f"q{2 * palette.LEVELS}"
    cells = tree.find_all("td")
    assert [c.text for c in cells] == ["nan", "+1.00", "+inf", "-inf"]
    assert [c.classes[0] for c in cells] == ["q10", "q20", "q20", "q0"]
    d = _data(tree.find_all("section")[0])
    assert d["seq_attr"] == [None, 2.0, "-inf", "inf"] and d["seq_limit"] == 2.0
    assert d["token_attr"] == [[None, 1.0, "inf", "-inf"]] and d["token_limit"] == 1.0


def _meta(result) -> str:
    (meta,) = parse(html_report(result)).find_all("p", "meta")
    return meta.text


def test_summary_line_counts_with_plurals():
    assert "· 1 prompt feature · 1 target token ·" in _meta(
        _result(inputs=["a"], outputs=["x"], info={})
    )
    assert "· 2 prompt features · 3 target tokens ·" in _meta(
        _result(inputs=["a", "b"], outputs=["x", "y", "z"], info={})
    )


def test_summary_sum_is_not_silent_about_non_finite_values():
    r = _result(inputs=["a", "b", "c"], outputs=["x"], info={})
    r.seq_attr[:] = torch.tensor([0.5, 1.25, -0.25])
    assert _meta(r).endswith("sum of attributions +1.5")
    r.seq_attr[:] = torch.tensor([0.5, math.nan, 1.0])
    assert _meta(r).endswith("sum of attributions nan (1 non-finite value)")
    r.seq_attr[:] = torch.tensor([math.inf, math.nan, 1.0])
    assert _meta(r).endswith("sum of attributions nan (2 non-finite values)")
    r.seq_attr[:] = torch.tensor([math.inf, 2.0, math.inf])
    assert _meta(r).endswith("sum of attributions +inf (2 non-finite values)")
    r.seq_attr[:] = torch.tensor([-math.inf, 2.0, 1.0])
    assert _meta(r).endswith("sum of attributions -inf (1 non-finite value)")
    r.seq_attr[:] = torch.tensor([-math.inf, 2.0, math.inf])
    assert _meta(r).endswith("sum of attributions nan (2 non-finite values)")


def test_several_results_in_one_report():
    results = [_result(seed=1), _result(inputs=["x", "y"], outputs=["z"], seed=2, info={})]
    page = html_report(results, titles=["first <one>", "second"])
    tree = parse(page)
    sections = tree.find_all("section", "llmattr-result")
    assert len(sections) == 2
    assert [s.find_all("h2")[0].text for s in sections] == ["first <one>", "second"]
    assert len({s.attrs["id"] for s in sections}) == 2
    links = tree.find_all("nav")[0].find_all("a")
    assert [a.attrs["href"] for a in links] == [f"#{s.attrs['id']}" for s in sections]
    assert [a.text for a in links] == ["first <one>", "second"]
    assert [c.text for c in sections[1].find_all("span", "tok")] == ["x", "y"]
    assert _data(sections[1])["output_tokens"] == ["z"]
    assert "<title>Attribution report (2 results)</title>" in page


def test_report_is_written_to_path(tmp_path):
    path = tmp_path / "report.html"
    page = html_report([_result()], path=path)
    assert path.read_text(encoding="utf-8") == page


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="2 titles for 1 results"):
        html_report([_result()], titles=["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        html_report([])
    bad = _result()
    bad.token_attr = bad.token_attr[:, :3]
    with pytest.raises(ValueError, match="token_attr has shape"):
        html_report(bad)


def test_thousand_token_prompt_stays_compact_and_complete():
    n_in, n_out = 1000, 40
    names = [f" w{i}" for i in range(n_in)]
    r = _result(inputs=names, outputs=[f" o{i}" for i in range(n_out)], info={})
    page = html_report(r)
    assert len(page) < 1_500_000  # ~ 36 bytes per cell, everything included
    tree = parse(page)
    assert [c.text for c in tree.find_all("span", "tok")] == names
    (table,) = tree.find_all("table", "hm")
    assert "compact" in table.classes
    cells = table.find_all("td")
    assert len(cells) == n_in * n_out and all(c.text == "" for c in cells[:50])
    # The heatmap scrolls inside its box, with sticky headers; the prompt wraps.
    assert re.search(r"\.heat\{[^}]*overflow:auto", page)
    assert re.search(r"\.hm thead th\{top:0", page) and "position:sticky" in page
    assert re.search(r"\.tok\{[^}]*white-space:pre-wrap", page)
    assert COMPACT_FROM <= n_in


def test_to_html_delegates_to_html_report(tmp_path):
    r = _result()
    assert r.to_html() == html_report(r)
    assert r.to_html(title="T") == html_report([r], titles=["T"])
    r.to_html(path=tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == html_report(r)
