"""visualize_text / VisualizationDataRecord: Captum's fields and table, escaped, saved, shown."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_viz_report import parse

from llmattr import VisualizationDataRecord, visualize_text
from llmattr.viz import palette
from llmattr.viz.text import HTMLString, ShownHTML

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


def _fake_ipython(monkeypatch, kernel: bool) -> tuple[list, types.SimpleNamespace]:
    shown: list = []
    shell = types.SimpleNamespace(kernel=object() if kernel else None, execution_count=5)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    display_mod = types.ModuleType("IPython.display")
    display_mod.display = lambda obj, **kwargs: shown.append(obj)
    ipython.display = display_mod
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    return shown, shell


def test_in_a_notebook_it_displays_once_and_always_returns(monkeypatch):
    shown, shell = _fake_ipython(monkeypatch, kernel=True)
    out = visualize_text([_record()])
    assert isinstance(out, ShownHTML) and isinstance(out, HTMLString)
    assert len(shown) == 1 and shown[0] == out and out.data == str(out)
    assert out.shown_in == 5
    # return_html has no effect any more: the table is shown and returned either way.
    for flag in (True, False):
        assert visualize_text([_record()], return_html=flag) == out
    assert len(shown) == 3
    del shown[:]
    out._ipython_display_()  # the same cell's echo: nothing more
    assert shown == []
    shell.execution_count = 6  # a later cell shows it again
    out._ipython_display_()
    assert shown == [{"text/html": str(out), "text/plain": repr(str(out))}]


def test_outside_a_notebook_it_returns_the_html(monkeypatch):
    shown, _shell = _fake_ipython(monkeypatch, kernel=False)  # a terminal IPython: no kernel
    out = visualize_text([_record()])
    assert "Word Importance" in out and out.shown_in is None
    out._ipython_display_()  # never shown: a terminal IPython prints it
    assert len(shown) == 1
    monkeypatch.delitem(sys.modules, "IPython")
    assert "Word Importance" in visualize_text([_record()], return_html=False)


def test_words_keep_their_text_and_infinities_take_the_strongest_colour():
    rec = _record(words=("<s>", "up", "down", "gap"))
    rec.word_attributions = [0.5, math.inf, -math.inf, math.nan]
    spans = parse(visualize_text([rec], legend=False)).find_all("span")
    assert [s.text for s in spans] == ["<s>", "up", "down", "gap"]  # as given, escaped
    assert [s.attrs["title"] for s in spans] == ["+0.5000", "+inf", "-inf", "nan"]
    backgrounds = [s.attrs["style"].split("background:")[1].split(";")[0] for s in spans]
    assert backgrounds[1:] == [
        palette.colour(palette.LEVELS),
        palette.colour(-palette.LEVELS),
        palette.colour(0),
    ]


# ---- in a real kernel ------------------------------------------------------------------------

RECORDS = """from llmattr import VisualizationDataRecord, visualize_text
recs = [VisualizationDataRecord([0.5, -0.5], 0.9, "pos", "pos", "pos", 0.0, ["good", "<b>"], None)]
"""


def _run_cells(sources: list[str]) -> list:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    root = str(Path(__file__).resolve().parents[1])
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": root}}
    )
    client.execute()
    return [cell.outputs for cell in nb.cells]


def _html(outputs: list) -> list[str]:
    return [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]


def test_in_a_kernel_the_table_shows_once_and_the_result_stays_usable():
    outputs = _run_cells(
        [
            RECORDS,
            "visualize_text(recs)",  # the last expression: shown once, not echoed again
            "h = visualize_text(recs, return_html=True)\nh",
            "print(type(h.data).__name__, 'Word Importance' in h.data, h.data == _)",
            "h",  # a later cell shows it again
            "visualize_text(recs, legend=False);",
        ]
    )
    first, assigned, data, later, quiet = outputs[1:]
    assert len(first) == 1 and len(_html(first)) == 1
    table = _html(first)[0]
    assert "Word Importance" in table and "&lt;b&gt;" in table
    assert len(assigned) == 1 and _html(assigned) == [table]
    assert [out.get("text") for out in data] == ["str True True\n"]
    assert len(later) == 1 and _html(later) == [table]
    assert len(quiet) == 1 and "Legend" not in _html(quiet)[0]
