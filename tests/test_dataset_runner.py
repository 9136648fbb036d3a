"""Dataset attribution in one process: prompts files (JSONL and plain text) checked before any
model loads, one results line per prompt equal to explaining that prompt alone, and resuming
after a crash (a line cut short, a kill between lines) without redoing or losing results."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("transformers")

import llmattr.dataset.runner as runner
from llmattr import FeatureAblation, LLMAttribution, LLMAttributionResult
from llmattr._core.errors import InputError
from llmattr.cli import main
from llmattr.cli_options import make_input
from llmattr.dataset import explain_file, read_prompts, read_results
from llmattr.demo import load_demo_model

pytestmark = pytest.mark.usefixtures("one_thread")

RECALL = "the key of box {} is red . the key of box two is blue . the key of box {} is"
PROMPTS = [
    {"prompt": RECALL.format("seven", "seven"), "label": "recall", "id": "a"},
    {"prompt": RECALL.format("two", "two"), "target": "blue"},
    {"prompt": RECALL.format("six", "six"), "label": "recall"},
    {"prompt": RECALL.format("one", "two"), "id": 7},
]
FAST = {"max_new_tokens": 1}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


@pytest.fixture
def calls(monkeypatch):
    """The ids explained, in order (the real work still runs)."""
    seen: list[str] = []
    real = runner._explain_one

    def counting(model, tokenizer, record, opts):
        seen.append(record.id)
        return real(model, tokenizer, record, opts)

    monkeypatch.setattr(runner, "_explain_one", counting)
    return seen


@pytest.fixture
def no_model(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded although the input is bad")

    monkeypatch.setattr("llmattr._hf.load_language_model", never)


# ---- prompts files ------------------------------------------------------------------------------


def test_jsonl_fields_ids_and_meta(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    path.write_text(path.read_text() + "\n  \n", encoding="utf-8")  # blank lines are skipped
    records = read_prompts(path)
    assert [r.id for r in records] == ["a", "2", "3", "7"]  # default: the line number
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert records[1].target == "blue" and records[0].target is None
    assert records[0].meta == {"label": "recall"} and records[1].meta == {}


def test_plain_text_by_extension_or_content(tmp_path):
    text = "first prompt\n\n{not json} but text\nthird\n"
    for name in ("p.txt", "p.prompts"):
        (tmp_path / name).write_text(text if name.endswith("txt") else text[14:], "utf-8")
    records = read_prompts(tmp_path / "p.txt")
    assert [(r.id, r.prompt) for r in records] == [
        ("1", "first prompt"), ("3", "{not json} but text"), ("4", "third"),
    ]  # fmt: skip
    # no known extension, first line starting with "{" -> read as JSONL, which it is not
    with pytest.raises(InputError, match="line 1: not valid JSON"):
        read_prompts(tmp_path / "p.prompts")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n{"prompt": "b",\n', "line 2: not valid JSON"),
        ('{"prompt": "a"}\n{"text": "b"}\n', 'line 2: no "prompt" field'),
        ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": "1"}\n', "also the id of line 1"),
        ('{"prompt": "a"}\n{"prompt": "b", "id": "1"}\n', "ids must be unique"),
        ("\n \n", "is empty"),
        ('["a"]\n', "expected an object"),
        ('{"prompt": "  "}\n', "non-empty string"),
        ('{"prompt": "a", "target": ""}\n', '"target" must be'),
    ],
)
def test_bad_prompts_files_fail_before_the_model_loads(tmp_path, no_model, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        explain_file(path, tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()


def test_bad_options_and_missing_file(tmp_path, no_model, demo):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    with pytest.raises(InputError, match="unknown method"):
        explain_file(path, tmp_path / "r.jsonl", method="magic")
    with pytest.raises(InputError, match="n_samples must be at least 1"):
        explain_file(path, tmp_path / "r.jsonl", method="shapley", n_samples=0)
    with pytest.raises(InputError, match="needs its tokenizer"):
        explain_file(path, tmp_path / "r.jsonl", demo[0])
    with pytest.raises(InputError, match="does not exist"):
        explain_file(tmp_path / "missing.jsonl", tmp_path / "r.jsonl")
    with pytest.raises(InputError, match=r"the folder .* does not exist"):
        explain_file(path, tmp_path / "no" / "r.jsonl")


# ---- one process --------------------------------------------------------------------------------


def test_each_line_is_that_prompt_explained_alone(tmp_path, demo):
    model, tok = demo
    out = tmp_path / "r.jsonl"
    summary = explain_file(write_jsonl(tmp_path / "p.jsonl", PROMPTS), out, **FAST)
    assert (summary.done, summary.skipped, summary.failed, summary.total) == (4, 0, 0, 4)
    settings, records = read_results(out)
    assert settings["model"] == "demo" and settings["method"] == "ablation"
    assert len(settings["model_fingerprint"]) == 16
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["index"] for line in lines[1:]] == [0, 1, 2, 3]  # input order
    assert [r["id"] for r in records] == ["a", "2", "3", "7"]
    assert records[0]["meta"] == {"label": "recall"} and records[1]["target"] == "blue"
    for row, record in zip(PROMPTS, records):
        got = LLMAttributionResult.from_dict(record["result"])
        inp = make_input("tokens", row["prompt"], tok, None)
        gen = {} if "target" in row else {"gen_args": {"max_new_tokens": 1}}
        skip = [tok.eos_token_id, tok.pad_token_id, tok.bos_token_id]
        alone = LLMAttribution(FeatureAblation(model), tok).attribute(
            inp, target=row.get("target"), skip_tokens=sorted({i for i in skip if i is not None}),
            **gen,
        )  # fmt: skip
        assert torch.equal(got.seq_attr, alone.seq_attr)
        assert torch.equal(got.token_attr, alone.token_attr)
        assert got.output_tokens == alone.output_tokens
        assert got.info["prompt"] == row["prompt"] and got.info["model"] == "demo"
    assert LLMAttributionResult.from_dict(records[1]["result"]).output_tokens == ["blue"]


def test_cli_equals_python_and_sampling_method(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    opts = {"method": "shapley", "n_samples": 2, "seed": 3, "max_new_tokens": 1}
    explain_file(prompts, tmp_path / "api.jsonl", model="demo", **opts)
    code = main(["explain-file", str(prompts), "--out", str(tmp_path / "cli.jsonl"),
                 "--method", "shapley", "--n-samples", "2", "--seed", "3",
                 "--max-new-tokens", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "2 prompts: 2 explained, 0 already in" in out
    assert (tmp_path / "api.jsonl").read_bytes() == (tmp_path / "cli.jsonl").read_bytes()
    settings, records = read_results(tmp_path / "cli.jsonl")
    assert settings["n_samples"] == 2 and settings["seed"] == 3
    for r in records:  # Shapley sampling adds up exactly: the completeness check is kept
        assert abs(r["result"]["info"]["completeness"]["gap"]) < 1e-4


def test_failed_prompt_is_a_line_and_retried(tmp_path, capsys, calls):
    long = " ".join([PROMPTS[0]["prompt"]] * 8)  # longer than the demo model's context
    prompts = write_jsonl(tmp_path / "p.jsonl", [PROMPTS[0], {"prompt": long, "id": "long"}])
    out = tmp_path / "r.jsonl"
    assert main(["explain-file", str(prompts), "-o", str(out), "--max-new-tokens", "1"]) == 1
    printed = capsys.readouterr().out
    assert "1 explained" in printed and "1 failed" in printed
    _, records = read_results(out)
    assert "result" in records[0] and "context" in records[1]["error"]
    calls.clear()
    summary = explain_file(prompts, out, **FAST)  # the failure is retried, the result is not
    assert calls == ["long"] and summary.failed == 1 and summary.skipped == 1
    assert len(out.read_text().splitlines()) == 3  # header + one line per id


# ---- resuming -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    prompts = write_jsonl(folder / "p.jsonl", PROMPTS)
    explain_file(prompts, folder / "r.jsonl", **FAST)
    return prompts, (folder / "r.jsonl").read_bytes()


def test_resume_after_a_line_cut_short(tmp_path, full_run, calls):
    prompts, full = full_run
    out = tmp_path / "r.jsonl"
    cut = full.rindex(b"\n", 0, len(full) - 1) + 40  # the last line, 40 bytes of it
    out.write_bytes(full[:cut])
    summary = explain_file(prompts, out, **FAST)
    assert calls == ["7"] and summary.skipped == 3 and summary.done == 1
    assert out.read_bytes() == full


def test_resume_after_a_kill_between_lines(tmp_path, full_run, calls):
    prompts, full = full_run
    out = tmp_path / "r.jsonl"
    lines = full.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]))  # the header and the first result
    explain_file(prompts, out, **FAST)
    assert calls == ["2", "3", "7"] and out.read_bytes() == full
    calls.clear()
    out.write_bytes(b"".join([lines[0], lines[3], lines[1]]))  # completion order, not input order
    explain_file(prompts, out, **FAST)
    assert calls == ["2", "7"] and out.read_bytes() == full  # merged back into input order
    calls.clear()
    assert explain_file(prompts, out, **FAST).skipped == 4 and calls == []


def test_resume_refuses_other_settings_and_keeps_the_file(tmp_path, full_run, demo, calls):
    prompts, full = full_run
    out = tmp_path / "r.jsonl"
    out.write_bytes(full)
    with pytest.raises(InputError, match="method is 'ablation' there, 'shapley' in this run"):
        explain_file(prompts, out, method="shapley", **FAST)
    with pytest.raises(InputError, match=r"--overwrite"):
        explain_file(prompts, out, features="words", **FAST)
    model, tok = demo
    one = write_jsonl(tmp_path / "one.jsonl", PROMPTS[:1])
    explain_file(one, tmp_path / "loaded.jsonl", model, tok, **FAST)  # a loaded model
    kept = (tmp_path / "loaded.jsonl").read_bytes()
    other = type(model)(model.config)  # the same architecture and name, other weights
    with pytest.raises(InputError, match="other weights or config"):
        explain_file(one, tmp_path / "loaded.jsonl", other, tok, **FAST)
    assert (tmp_path / "loaded.jsonl").read_bytes() == kept
    calls.clear()
    changed = write_jsonl(tmp_path / "p.jsonl", [{**PROMPTS[0], "prompt": "the key of box"}])
    with pytest.raises(InputError, match="prompts file changed"):
        explain_file(changed, out, **FAST)
    assert out.read_bytes() == full and calls == []
    explain_file(prompts, out, overwrite=True, method="shapley", n_samples=1, **FAST)
    assert read_results(out)[0]["method"] == "shapley" and len(calls) == 4


def test_a_file_that_is_not_ours_is_left_alone(tmp_path, full_run):
    prompts, _ = full_run
    out = tmp_path / "r.jsonl"
    out.write_text('{"something": "else"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="not an llmattr results file"):
        explain_file(prompts, out, **FAST)
    assert out.read_text() == '{"something": "else"}\n'


def test_cli_wiring_of_explain_file_and_explore(capsys):
    assert main(["explain-file", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--out", "--model", "--method", "--features", "--n-samples", "--overwrite",
                   "--robustness", "--device", "torchrun"):  # fmt: skip
        assert option in text
    assert main(["explain-file", "p.jsonl"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err
    assert main(["explain-file", "p.jsonl", "-o", "r", "--n-steps", "0"]) == 2
    assert main(["explore", "--help"]) == 0 and "RESULTS" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options",
    [
        {"method": "integrated-gradients", "n_steps": 4, "features": "words"},
        {"method": "kernel-shap", "n_samples": 6, "features": "sentences"},
        {"method": "lime", "n_samples": 6, "robustness": True},
    ],
)
def test_every_method_feature_kind_and_robustness(tmp_path, options):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    explain_file(prompts, tmp_path / "r.jsonl", **options, **FAST)
    settings, (record,) = read_results(tmp_path / "r.jsonl")
    assert settings["method"] == options["method"] and settings["features"] == options.get(
        "features", "tokens"
    )
    result = LLMAttributionResult.from_dict(record["result"])
    n = {"words": len(PROMPTS[0]["prompt"].split()), "sentences": 3}.get(options.get("features"))
    assert n is None or len(result.input_tokens) == n
    assert torch.isfinite(result.seq_attr).all()
    assert ("robustness" in result.info) == options.get("robustness", False)
    if options["method"] in ("integrated-gradients", "kernel-shap"):
        assert "completeness" in result.info


def test_progress_bar_and_output_equal_to_prompts(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    explain_file(prompts, tmp_path / "r.jsonl", progress=True, **FAST)
    err = capsys.readouterr().err
    assert "explain-file" in err and "2/2" in err
    with pytest.raises(InputError, match="is the prompts file"):
        explain_file(prompts, prompts, overwrite=True, **FAST)
    assert len(read_prompts(prompts)) == 2


def test_explore_command_writes_the_explorer(tmp_path, full_run, capsys):
    pytest.importorskip("llmattr.viz.explorer")
    _, full = full_run
    (tmp_path / "r.jsonl").write_bytes(full)
    page = tmp_path / "e.html"
    assert main(["explore", str(tmp_path / "r.jsonl"), "-o", str(page)]) == 0
    assert f"wrote {page}" in capsys.readouterr().out and page.is_file()
    (tmp_path / "bad.jsonl").write_text("not results\n", encoding="utf-8")
    assert main(["explore", str(tmp_path / "bad.jsonl"), "-o", str(page)]) == 1
    assert capsys.readouterr().err.startswith("llmattr: error:")


def test_a_shard_the_main_process_cannot_see_is_not_lost(tmp_path, monkeypatch, demo):
    """Processes on machines that do not share the output's folder: the main process finds
    fewer lines in a shard than its process wrote, and says so instead of merging without
    them; the shards stay."""
    from contextlib import contextmanager

    from llmattr.dataset.distributed import Group

    class TwoProcessesSeenFromTheMain(Group):
        def broadcast(self, obj):
            return obj

        def gather(self, obj):
            return [obj, obj]

        def wait_for_all(self, counts, poll):
            return [counts, [1, 0]]  # process 1 says it wrote one result

    @contextmanager
    def group():
        yield TwoProcessesSeenFromTheMain(rank=0, world=2)

    monkeypatch.setattr(runner, "process_group", group)
    out = tmp_path / "r.jsonl"
    with pytest.raises(InputError, match=r"process 1 wrote 1 lines .* finds 0 there"):
        explain_file(write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2]), out, **FAST)
    assert len(read_results(tmp_path / "r.jsonl.rank0")[1]) == 1  # its own share, kept
    assert read_results(out)[1] == []  # the output: its header, nothing lost or invented


@pytest.mark.parametrize(
    "content", ['{"important": "config"}', "my only note\n", "{not json\n", "a\nb"]
)
def test_a_one_line_file_that_is_not_ours_is_never_truncated(tmp_path, no_model, content):
    """Only a last line without its newline after our header (or the start of our header) can
    be a crash cut; anything else is refused and kept byte for byte."""
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "cfg.json"
    out.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=r"not an llmattr results file|not valid JSON"):
        explain_file(prompts, out, **FAST)
    assert out.read_text(encoding="utf-8") == content


def test_the_prompts_file_through_a_link_is_refused(tmp_path, no_model):
    prompts = tmp_path / "one.txt"
    prompts.write_text("just one prompt\n", encoding="utf-8")
    os.link(prompts, tmp_path / "o.jsonl")
    with pytest.raises(InputError, match="is the prompts file"):
        explain_file(prompts, tmp_path / "o.jsonl", **FAST)
    shard = tmp_path / "r.jsonl.rank1"
    shard.write_text("just one prompt\n", encoding="utf-8")
    with pytest.raises(InputError, match="is the prompts file"):
        explain_file(shard, tmp_path / "r.jsonl", overwrite=True, **FAST)
    assert prompts.read_text() == shard.read_text() == "just one prompt\n"


def test_a_second_run_on_the_same_output_is_refused(tmp_path, no_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "r.jsonl"
    holder = runner._lock(out)
    try:
        with pytest.raises(InputError, match="another run is writing"):
            explain_file(prompts, out, **FAST)
    finally:
        if holder is not None:
            holder.close()


def test_only_newlines_end_prompts_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\r\n"
        + json.dumps({"prompt": "c\x0cd"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    assert [r.prompt for r in read_prompts(path)] == ["a\u2028b", "c\x0cd"]
    text = tmp_path / "p.txt"
    text.write_text("first\x0cstill first\nsecond\n", encoding="utf-8")
    assert [(r.id, r.prompt) for r in read_prompts(text)] == [
        ("1", "first\x0cstill first"),
        ("2", "second"),
    ]


def test_a_lone_surrogate_is_refused_with_its_line(tmp_path, no_model):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2: an unpaired surrogate"):
        explain_file(path, tmp_path / "r.jsonl", **FAST)


def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path, no_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "r.jsonl"
    out.write_text("", encoding="utf-8")
    out.chmod(0o444)
    try:
        if os.access(out, os.W_OK):  # root ignores file modes
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(InputError, match="permission denied"):
            explain_file(prompts, out, **FAST)
    finally:
        out.chmod(0o644)
