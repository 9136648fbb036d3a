"""The explorer: reading results files (and refusing others), the page's data (exact numbers,
escaped), the feature averages against brute force, image records and modality shares.

The results files are written as the contract says (header, then one record per prompt) from
real FeatureAblation results of the demo model.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from llmattr import FeatureAblation, LLMAttribution, LLMAttributionResult
from llmattr._core.errors import InputError
from llmattr.viz.explorer import explore, image_record, write_explorer
from llmattr.viz.explorer_assets import EXPLORER_SCRIPT
from llmattr.viz.explorer_data import aggregate, build_payload, read_results
from llmattr.viz.tokens import display_tokens

SETTINGS = {"model": "demo", "method": "FeatureAblation", "features": "words"}
PWN = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','1')\">"


@functools.lru_cache(maxsize=1)
def demo_records() -> tuple[dict, ...]:
    """Eight records of real FeatureAblation results of the demo model (recall and compare
    prompts, the expected answer as target), with metadata."""
    from llmattr.demo import load_demo_model, load_eval_prompts
    from llmattr.text.inputs import words

    model, tok = load_demo_model()
    every = load_eval_prompts()
    examples = every[:4] + [e for e in every if e.task == "compare"][:4]
    explain = LLMAttribution(FeatureAblation(model), tok)
    records = []
    for i, e in enumerate(examples):
        result = explain.attribute(words(e.prompt, tok), target=" " + e.answer)
        meta = {"task": e.task, "answer": e.answer, "n_words": len(e.prompt.split())}
        records.append(
            {
                "id": f"{e.task}-{i}",
                "index": i,
                "prompt": e.prompt,
                "target": " " + e.answer,
                "meta": meta,
                "result": result.to_dict(),
            }
        )
    return tuple(records)


def write_results(path: Path, records, settings=SETTINGS) -> Path:
    """A results file as the contract has it: the header, then one JSON line per record."""
    lines = [json.dumps({"llmattr_results": 1, "settings": settings})]
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def synthetic(names, seq, index=0, meta=None, probs=(0.5,), rows=None, info=None, rid=None) -> dict:
    """A record around an LLMAttributionResult built from given numbers."""
    seq = torch.tensor(seq, dtype=torch.float64)
    token_attr = None if rows is None else torch.tensor(rows, dtype=torch.float64)
    out = [f"t{k}" for k in range(len(probs))]
    result = LLMAttributionResult(
        seq, token_attr, list(names), out, torch.tensor(probs, dtype=torch.float64),
        "FeatureAblation", dict(info or {}),
    )  # fmt: skip
    return {"id": rid or f"r{index}", "index": index, "prompt": " ".join(names),
            "target": None, "meta": dict(meta or {}), "result": result.to_dict()}  # fmt: skip


def data_block(page: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="llmattr-explorer-data">(.*?)</script>', page, re.S
    )
    assert match
    return json.loads(match.group(1))


# ---- reading -----------------------------------------------------------------------------------


def test_read_sorts_by_index_and_keeps_the_last_of_a_repeated_id(tmp_path):
    recs = [synthetic(["a"], [1.0], index=i) for i in (2, 0, 1)]
    redo = synthetic(["a"], [7.0], index=0)
    _, got = read_results(write_results(tmp_path / "r.jsonl", [*recs, redo]))
    assert [r["index"] for r in got] == [0, 1, 2]
    assert got[0]["result"]["seq_attr"]["data"] == [7.0]


def test_a_file_saved_with_a_bom_and_crlf_lines_reads(tmp_path):
    path = write_results(tmp_path / "r.jsonl", [synthetic(["a"], [1.0], index=i) for i in (0, 1)])
    text = path.read_text(encoding="utf-8").replace("\n", "\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    settings, got = read_results(path)
    assert settings == SETTINGS and [r["index"] for r in got] == [0, 1]


def test_cut_last_line_is_skipped_with_a_warning(tmp_path):
    path = write_results(tmp_path / "r.jsonl", [synthetic(["a"], [1.0], index=i) for i in (0, 1)])
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) - 20], encoding="utf-8")  # the crash cut line 3
    with pytest.warns(RuntimeWarning, match="line 3 is cut short"):
        _, got = read_results(path)
    assert [r["index"] for r in got] == [0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "it is empty"),
        ("\n\n", "it is empty"),
        ("hello\n", "first line is not JSON"),
        ('{"prompt": "a"}\n', 'no "llmattr_results" header'),
        ("[1, 2]\n", 'no "llmattr_results" header'),
        ('{"llmattr_results": 1, "settings": [1]}\n', '"settings" is not an object'),
    ],
)
def test_files_that_are_not_results_are_refused(tmp_path, text, message):
    path = tmp_path / "x.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(message)):
        write_explorer(path, tmp_path / "out.html")
    assert not (tmp_path / "out.html").exists()


def test_other_bad_files_are_refused_with_where(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InputError, match="not UTF-8"):
        read_results(path)
    with pytest.raises(InputError, match="No results file"):
        read_results(tmp_path / "missing.jsonl")
    path.write_text('{"llmattr_results": 2}\n', encoding="utf-8")
    with pytest.raises(InputError, match="format 2"):
        read_results(path)
    good = json.dumps(synthetic(["a"], [1.0]))
    path.write_text(f'{{"llmattr_results": 1}}\nnot json\n{good}\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2: not JSON"):
        read_results(path)
    path.write_text(f'{{"llmattr_results": 1}}\n{good}\n{{"id": "b", "index": 1}}\n')
    with pytest.raises(InputError, match='line 3: a record needs a "result"'):
        read_results(path)
    path.write_text('{"llmattr_results": 1}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match='line 2: a record needs an "id" and an integer'):
        read_results(path)


# ---- the page's data ---------------------------------------------------------------------------


def test_payload_numbers_of_real_results(tmp_path):
    records = demo_records()
    page = write_explorer(write_results(tmp_path / "r.jsonl", records), tmp_path / "e.html")
    data = data_block(page.read_text(encoding="utf-8"))
    assert data["keys"] == ["task", "answer", "n_words"]
    assert len(data["examples"]) == len(records)
    for entry, record in zip(data["examples"], records):
        result = LLMAttributionResult.from_dict(record["result"])
        seq = result.seq_attr.double()
        assert [data["vocab"][t] for t in entry["tok"]] == display_tokens(result.input_tokens)
        np.testing.assert_allclose(entry["seq"], seq.numpy(), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(entry["rows"], result.token_attr.double().numpy(), rtol=1e-5)
        assert entry["p"] == pytest.approx(float(result.output_probs.double().prod()), rel=1e-9)
        assert entry["target"] == result.info["target_text"] == record["meta"]["answer"]
        top = seq.abs().argsort(descending=True)[:3].tolist()
        assert [t[0] for t in entry["top"]] == [result.input_tokens[j] for j in top]
        assert entry["sl"] == pytest.approx(float(seq.abs().max()))
        assert entry["meta"] == [record["meta"][k] for k in data["keys"]]
        assert "shares" not in entry and "image" not in entry  # text only: absent, not null
    assert set(data) == {"keys", "vocab", "examples"}  # what the script reads, nothing more


def test_target_probability_is_the_product_and_missing_probs_give_none():
    two = synthetic(["a", "b"], [1.0, 2.0], probs=(0.5, 0.25), rows=[[1, 0], [0, 2]])
    none = synthetic(["a"], [1.0])
    none["result"]["output_probs"] = None
    data = build_payload({}, [two, none], "t")
    assert data["examples"][0]["p"] == 0.125 and "p" not in data["examples"][1]


def test_page_has_one_script_of_known_hash_and_no_raw_markup_from_data(tmp_path):
    hostile = synthetic(
        [PWN, "</script><script>x()</script>", "a&b", "<!--", "\u2028"],
        [1.0, -1.0, 0.5, 0.0, 2.0],
        meta={"label": PWN, "<b>key</b>": "v"},
        rid="</title><b>id</b>",
    )
    hostile["prompt"] = PWN
    path = write_results(tmp_path / "r.jsonl", [hostile], {"model": PWN, "method": "<i>m</i>"})
    page = write_explorer(path, tmp_path / "e.html", title="<b>t</b>").read_text(encoding="utf-8")
    scripts = re.findall(r"<script(?: [^>]*)?>", page)
    assert scripts == ['<script type="application/json" id="llmattr-explorer-data">', "<script>"]
    digest = base64.b64encode(hashlib.sha256(EXPLORER_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page and "default-src 'none'" in page
    assert "<img" not in page and "<b>" not in page and "<i>" not in page
    block = page.split('id="llmattr-explorer-data">')[1].split("</script>")[0]
    assert not set(block) & {"<", ">", "&", "\u2028", "\u2029"}
    data = data_block(page)  # the escapes read back as the original strings
    assert data["examples"][0]["prompt"] == PWN and data["examples"][0]["id"].startswith("</t")
    assert data["vocab"][:2] == [PWN, "</script><script>x()</script>"]
    assert "&lt;b&gt;t&lt;/b&gt;" in page.split("<body>")[1][:200]


def test_token_attr_past_the_budget_is_left_out_and_said():
    recs = [synthetic(["a", "b"], [1, 2], index=i, rows=[[1, 2]]) for i in range(3)]
    data = build_payload({}, recs, "t", max_cells=4)
    assert ["rows" in e for e in data["examples"]] == [True, True, False]
    assert data["examples"][2].get("omitted") and "1 examples" in data["notes"][0]
    assert data["examples"][2]["seq"] == [1, 2]  # the prompt colouring stays


def test_failed_prompts_are_listed_with_their_error():
    failed = {"id": "x", "index": 1, "prompt": "p", "target": "t", "meta": {"k": 1},
              "error": "CUDA out of memory"}  # fmt: skip
    data = build_payload({}, [synthetic(["a"], [1.0]), failed], "t")
    assert data["examples"][1] == {
        "id": "x", "i": 1, "prompt": "p", "meta": [1.0], "error": "CUDA out of memory",
        "target": "t",
    }  # fmt: skip
    assert aggregate([failed]) == {}


# ---- feature averages --------------------------------------------------------------------------


def test_aggregate_matches_brute_force_on_real_results():
    records = demo_records()
    got = aggregate(records, by="task", min_count=2)
    assert set(got) == {"recall", "compare"}
    for group, stats in got.items():
        values: dict[str, list[float]] = {}
        per_example: dict[str, int] = {}
        for r in records:
            if r["meta"]["task"] != group:
                continue
            res = LLMAttributionResult.from_dict(r["result"])
            names = display_tokens(res.input_tokens)
            for name, v in zip(names, res.seq_attr.double().tolist()):
                values.setdefault(name, []).append(v)
            for name in set(names):
                per_example[name] = per_example.get(name, 0) + 1
        want = {n: v for n, v in values.items() if len(v) >= 2}
        assert {s.feature for s in stats} == set(want)
        for s in stats:
            assert s.count == len(want[s.feature]) and s.examples == per_example[s.feature]
            assert s.mean == pytest.approx(float(np.mean(want[s.feature])), rel=1e-12)
            assert s.mean_abs == pytest.approx(float(np.mean(np.abs(want[s.feature]))))
        assert [s.mean_abs for s in stats] == sorted((s.mean_abs for s in stats), reverse=True)


def test_aggregate_closed_form_groups_and_non_finite_values():
    recs = [
        synthetic(["x", "y", "x"], [1.0, -2.0, 3.0], 0, {"label": "pos"}),
        synthetic(["x", "z"], [-5.0, math.nan], 1, {"label": "neg"}),
        synthetic(["x", "y"], [math.inf, 4.0], 2, {"label": "pos"}),
        synthetic(["y"], [1.0], 3, {}),
    ]
    every = {s.feature: s for s in aggregate(recs)["all"]}
    assert every["x"].count == 3 and every["x"].examples == 2  # inf left out; 2 examples
    assert every["x"].mean == pytest.approx(-1 / 3) and every["x"].mean_abs == 3.0
    assert every["y"].count == 3 and every["y"].mean == 1.0 and every["y"].mean_abs == 7 / 3
    assert "z" not in every  # its only value is NaN
    groups = aggregate(recs, by="label")
    assert set(groups) == {"pos", "neg", "(none)"}
    assert {s.feature: s.mean for s in groups["pos"]} == {"x": 2.0, "y": 1.0}
    assert [s.feature for s in aggregate(recs, min_count=3)["all"]] == ["x", "y"]  # 3 > 7/3


# ---- images, shares and the Python call --------------------------------------------------------


def image_result():
    from PIL import Image

    from llmattr.vision.image_input import ImageMaskInput

    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    inp = ImageMaskInput(Image.fromarray(pixels), mask=torch.arange(12 * 16).reshape(12, 16) // 48)
    seq = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    return LLMAttributionResult(seq, None, list(inp.values), ["cat"], torch.tensor([0.3]), inp=inp)


def test_image_records_carry_png_pictures_and_shares(tmp_path):
    result = image_result()
    image = image_record(result)
    assert image["modalities"] == ["image"] * 4
    for key in ("overlay", "image"):
        png = base64.b64decode(image[key].split(",", 1)[1])
        assert png.startswith(b"\x89PNG")
    text = LLMAttributionResult(torch.ones(2), None, ["a", "b"], ["c"], torch.tensor([0.5]))
    assert image_record(text) is None
    page = explore([result, text], tmp_path / "e.html")
    first, second = data_block(page.read_text(encoding="utf-8"))["examples"]
    assert first["image"] == {"overlay": image["overlay"], "image": image["image"]}
    assert first["shares"] == {"image": 1.0, "text": 0.0}
    assert "image" not in second and "shares" not in second


def test_modality_shares_are_those_of_the_result_and_bad_pictures_are_dropped():
    rec = synthetic(
        ["p0", "p1", "w"], [1.0, -3.0, 4.0], info={"modalities": ["image"] * 2 + ["text"]}
    )
    rec["image"] = {"overlay": "javascript:alert(1)", "image": "data:image/png;base64,AAAA"}
    entry = build_payload({}, [rec], "t")["examples"][0]
    want = LLMAttributionResult.from_dict(rec["result"]).modality_shares()
    assert entry["shares"] == pytest.approx(want) and want == pytest.approx(
        {"image": 0.5, "text": 0.5}
    )
    assert "image" not in entry  # one picture is not PNG data


def test_explore_takes_records_and_results_and_refuses_other_things(tmp_path):
    records = list(demo_records())[:3]
    page = explore(reversed(records), tmp_path / "a.html", settings=SETTINGS)
    data = data_block(page.read_text(encoding="utf-8"))
    assert [e["id"] for e in data["examples"]] == [r["id"] for r in records]
    assert "model</dt><dd>demo<" in page.read_text(encoding="utf-8")  # the settings, shown
    with pytest.raises(TypeError, match="neither an LLMAttributionResult"):
        explore([{"prompt": "a"}], tmp_path / "b.html")
    with pytest.raises(InputError, match="at least one"):
        explore([], tmp_path / "b.html")
    with pytest.raises(TypeError, match="path, or a list"):
        explore({"id": 1}, tmp_path / "b.html")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explore(Path(write_results(tmp_path / "r.jsonl", records)), tmp_path / "c.html")
    assert (tmp_path / "c.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_inputs_are_not_changed(tmp_path):
    records = [synthetic(["a", "b"], [1.0, 2.0], meta={"k": [1, 2]})]
    before = json.dumps(records)
    explore(records, tmp_path / "e.html")
    assert json.dumps(records) == before


# ---- review fixes: bad values and malformed records --------------------------------------------


def test_non_finite_modality_shares_are_written_as_null(tmp_path):
    rec = synthetic(["p0", "w"], [math.nan, 1.0], info={"modalities": ["image", "text"]})
    page = write_explorer(write_results(tmp_path / "r.jsonl", [rec]), tmp_path / "e.html")
    shares = data_block(page.read_text(encoding="utf-8"))["examples"][0]["shares"]
    assert shares == {"image": None, "text": None}


def test_an_empty_error_message_still_marks_a_failure():
    failed = {"id": "x", "index": 0, "prompt": "p", "target": None, "meta": {}, "error": ""}
    entry = build_payload({}, [failed], "t")["examples"][0]
    assert entry["error"] and "tok" not in entry  # a failure, with a message to show


def test_a_lone_surrogate_is_written_and_a_failed_write_leaves_nothing(tmp_path):
    rec = synthetic(["a\ud800"], [1.0])
    rec["prompt"] = "x\ud800y"
    page = write_explorer(write_results(tmp_path / "r.jsonl", [rec]), tmp_path / "e.html")
    assert data_block(page.read_text(encoding="utf-8"))["examples"][0]["prompt"] == "x?y"
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(OSError):
        write_explorer(tmp_path / "r.jsonl", tmp_path / "dir.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.html", "e.html", "r.jsonl"]


def _broken(key: str) -> dict:
    rec = synthetic(["a", "b"], [1.0, 2.0], rows=[[1.0, 2.0]], info={"modalities": ["text"] * 2})
    result = rec["result"]
    if key == "meta":
        rec["meta"] = [1, 2]
    elif key == "info":
        result["info"] = "x"
    elif key == "null":
        result["seq_attr"]["data"] = [None, 1.0]
    elif key == "string":
        result["token_attr"]["data"] = ["1", 2.0]
    elif key == "huge":
        result["seq_attr"]["data"] = [10**400, 1.0]
    elif key == "length":
        result["seq_attr"]["data"] = [1.0]
    elif key == "modalities":
        result["info"]["modalities"] = ["image"]
    elif key == "tokens":
        result["input_tokens"] = "ab"
    return rec


@pytest.mark.parametrize(
    "key, message",
    [
        ("meta", '"meta" must be an object'),
        ("info", '"info" must be an object'),
        ("null", '"seq_attr" must be'),
        ("string", '"token_attr" must be'),
        ("huge", '"seq_attr" must be'),
        ("length", "1 values for 2 input tokens"),
        ("modalities", '"modalities" must be a list of one name per input token'),
        ("tokens", '"input_tokens" must be a list of strings'),
    ],
)
def test_malformed_records_are_refused_naming_file_and_line(tmp_path, key, message):
    path = write_results(tmp_path / "r.jsonl", [synthetic(["a"], [1.0]), _broken(key)])
    with pytest.raises(
        InputError, match=re.escape("r.jsonl, line 3: ") + ".*" + re.escape(message)
    ):
        write_explorer(path, tmp_path / "e.html")
    assert not (tmp_path / "e.html").exists()
    with pytest.raises(InputError, match="record 0: "):
        explore([_broken(key)], tmp_path / "e.html")


def test_odd_but_valid_values_still_make_a_page(tmp_path):
    rec = synthetic(["a"], [1.0], meta={"big": 10**400, "x": 1})
    settings = {**SETTINGS, "n_steps": math.nan}  # JSON's NaN (Python writes it)
    page = write_explorer(write_results(tmp_path / "r.jsonl", [rec], settings), tmp_path / "e.html")
    assert data_block(page.read_text(encoding="utf-8"))["examples"][0]["meta"] == [
        str(10**400),
        1.0,
    ]
    assert aggregate([rec], by="big").keys() == {str(10**400)}


def test_the_header_is_checked_before_the_rest_is_read(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"hello\n" + b"\xff" * 100)  # the rest would not even decode
    with pytest.raises(InputError, match="first line is not JSON"):
        read_results(path)
    path.write_text("x" * (2 << 20), encoding="utf-8")  # one long line, no header
    with pytest.raises(InputError, match="too long"):
        read_results(path)
    path.write_text('{"llmattr_results": true}\n', encoding="utf-8")
    with pytest.raises(InputError, match="format True"):
        read_results(path)


def test_the_policy_forbids_base_and_form_targets(tmp_path):
    page = explore([synthetic(["a"], [1.0])], tmp_path / "e.html").read_text(encoding="utf-8")
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert "base-uri 'none'" in policy and "form-action 'none'" in policy
