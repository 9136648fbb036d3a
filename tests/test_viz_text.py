"""visualize_text / VisualizationDataRecord: Captum's fields and table, escaped, saved, shown."""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
import torch
from test_viz_report import parse

from llmattr import VisualizationDataRecord, visualize_text
from llmattr.viz import palette
from llmattr.viz.text import HTMLString

FIELDS = [
    "word_attributions",
    "pred_prob",
    "pred_class",
    "true_class",
    "attr_class",
    "attr_score",
    "raw_input_ids",
    "convergence_score",
]


def _record(words=("The", "<script>alert(1)</script>", "</td>", "good"), delta=None):
    return VisualizationDataRecord(
        torch.tensor([0.5, -1.0, 0.0, 2.0]),
        0.93,
        "<pos>",
        "neg & co",
        "pos",
        1.234,
        list(words),
        delta,
    )


def test_record_has_captums_fields_in_captums_order():
    assert [f.name for f in dataclasses.fields(VisualizationDataRecord)] == FIELDS
    r = VisualizationDataRecord(*range(8))
    assert [getattr(r, name) for name in FIELDS] == list(range(8))
    with pytest.raises(AttributeError):
        r.extra = 1  # slotted, like Captum's


def test_table_shows_labels_scores_and_coloured_words():
    out = visualize_text([_record()])
    assert isinstance(out, str) and out.data == str(out) and out._repr_html_() == str(out)
    tree = parse(out)
    heads = [th.text for th in tree.find_all("th")]
    assert heads == [
        "True Label",
        "Predicted Label",
        "Attribution Label",
        "Attribution Score",
        "Word Importance",
    ]
    row = tree.find_all("tr")[1]
    cells = row.find_all("td")
    assert [c.text for c in cells[:4]] == ["neg & co", "<pos> (0.93)", "pos", "1.23"]
    words = cells[4].find_all("span")
    assert [w.text for w in words] == ["The", "<script>alert(1)</script>", "</td>", "good"]
    assert [w.attrs["title"] for w in words] == ["+0.5000", "-1.0000", "+0.0000", "+2.0000"]
    # Colours: Captum's convention of attributions in [-1, 1]; 2.0 is clipped to the end.
    expected = [palette.colour(palette.level(v, 1.0)) for v in (0.5, -1.0, 0.0, 1.0)]
    assert [w.attrs["style"].split("background:")[1].split(";")[0] for w in words] == expected
    assert expected[1] == palette.colour(-palette.LEVELS) and expected[2] == "#ffffff"
    assert not tree.find_all("script") and "<pos>" not in out and "&lt;pos&gt;" in out


def test_legend_is_optional():
    with_legend = visualize_text([_record()], legend=True)
    assert all(label in with_legend for label in ("Legend", "Negative", "Neutral", "Positive"))
    without = visualize_text([_record()], legend=False)
    assert "Legend" not in without and "Neutral" not in without


def test_convergence_column_only_when_a_record_has_one():
    out = visualize_text([_record(delta=torch.tensor(0.00123)), _record()])
    tree = parse(out)
    assert "Convergence Delta" in [th.text for th in tree.find_all("th")]
    rows = tree.find_all("tr")[1:]
    assert rows[0].find_all("td")[4].text == "1.23e-03" and rows[1].find_all("td")[4].text == ""


def test_accepts_lists_arrays_and_longer_attributions():
    rec = _record(words=("a", "b"))
    rec.word_attributions = np.array([0.1, 0.2, 0.3])  # Captum allows more values than words
    spans = parse(visualize_text([rec])).find_all("span")
    assert [s.text for s in spans[:2]] == ["a", "b"]
    rec.word_attributions = [0.1]
    with pytest.raises(ValueError, match="2 words but only 1"):
        visualize_text([rec])
    rec.word_attributions = None
    assert (
        parse(visualize_text([rec], legend=False)).find_all("tr")[1].find_all("td")[-1].text == ""
    )


def test_saves_a_complete_page(tmp_path):
    path = tmp_path / "text.html"
    out = visualize_text([_record()], path=path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and str(out) in page
    assert "<script" not in page.lower().replace("&lt;script", "")


def _fake_ipython(monkeypatch, kernel: bool) -> list:
    shown: list = []
    shell = types.SimpleNamespace(kernel=object() if kernel else None)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    display_mod = types.ModuleType("IPython.display")
    display_mod.display = shown.append
    ipython.display = display_mod
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    return shown


def test_in_a_notebook_it_displays_and_returns_only_on_request(monkeypatch):
    shown = _fake_ipython(monkeypatch, kernel=True)
    assert visualize_text([_record()]) is None
    out = visualize_text([_record()], return_html=True)
    assert isinstance(out, HTMLString) and len(shown) == 2 and shown[1] == out


def test_outside_a_notebook_it_returns_the_html(monkeypatch):
    shown = _fake_ipython(monkeypatch, kernel=False)  # a terminal IPython: no kernel
    assert "Word Importance" in visualize_text([_record()])
    monkeypatch.delitem(sys.modules, "IPython")
    assert "Word Importance" in visualize_text([_record()], return_html=False)
    assert shown == []
