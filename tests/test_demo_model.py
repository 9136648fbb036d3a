"""The shipped demo model: loads offline from the package, answers its tasks, its held-out
prompts point at the right words, and the script that trained it is deterministic."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmattr import FeatureAblation, LLMAttribution, TextTokenInput, words  # noqa: E402


def no_bos(text: str, tok, **kwargs) -> TextTokenInput:
    """The prompt's words as features: the BOS token (a feature of Captum's TextTokenInput
    by default) is skipped."""
    return TextTokenInput(text, tok, skip_tokens=[tok.bos_token_id], **kwargs)
from llmattr.demo import (  # noqa: E402
    EVAL_PROMPTS,
    MODEL_DIR,
    TASKS,
    Example,
    load_demo_model,
    load_eval_prompts,
)
from llmattr.demo.tasks import make_example  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PER_TASK = 12  # held-out prompts generated per task in the tests


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def test_loads_offline_with_auto_classes():
    """``from_pretrained`` on the package path, no network: what users and the CLI do."""
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    assert model.config.vocab_size == len(tok)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert tok.is_fast  # offsets, for words() and the CLI's coloured prompt
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    size = sum(f.stat().st_size for f in MODEL_DIR.iterdir())
    assert size < 8 * 2**20  # a few MB in the package


def test_load_demo_model_puts_it_on_the_device(demo):
    model, _ = demo
    assert not model.training
    moved, _ = load_demo_model(device="cpu")
    assert next(moved.parameters()).device.type == "cpu"


def test_package_data_globs_cover_the_model_files():
    """pyproject's package data ship every file of the model directory (and the prompts)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["llmattr.demo"]
    demo_dir = MODEL_DIR.parent
    shipped = {p for g in globs for p in demo_dir.glob(g)}
    assert {p for p in MODEL_DIR.iterdir() if p.is_file()} <= shipped
    assert EVAL_PROMPTS in shipped


@pytest.mark.parametrize("task", TASKS)
def test_answers_held_out_prompts(demo, task):
    """Greedy generation answers the held-out prompts of every task, then stops (a copy first
    completes the list)."""
    model, tok = demo
    examples = load_eval_prompts(task)[:PER_TASK]
    hits = complete = 0
    for ex in examples:
        ids = tok(ex.prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        new = tok.convert_ids_to_tokens(out[0, ids["input_ids"].shape[1] :].tolist())
        expected = [*ex.continuation.split(), tok.eos_token]
        hits += new[0] == ex.answer
        complete += new[: len(expected)] == expected
    assert hits / len(examples) >= 0.9
    assert complete / len(examples) >= 0.9


@pytest.mark.parametrize("task", TASKS)
def test_answers_fresh_prompts(demo, task):
    """Prompts drawn here with another seed (most never seen in training) are answered too."""
    import random

    model, tok = demo
    rng = random.Random(2024)
    examples = [make_example(task, rng) for _ in range(PER_TASK)]
    batch = [tok(ex.prompt)["input_ids"] for ex in examples]
    hits = 0
    with torch.no_grad():
        for ids, ex in zip(batch, examples):
            best = model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()
            hits += tok.convert_ids_to_tokens(int(best)) == ex.answer
    assert hits / len(examples) >= 0.9


def test_eval_prompts_point_at_their_words(demo):
    """Decisive words are where the prompt says; one token per word, so word i is feature i."""
    _, tok = demo
    examples = load_eval_prompts()
    assert {ex.task for ex in examples} == set(TASKS)
    assert len({ex.prompt for ex in examples}) == len(examples)
    for ex in examples:
        w = ex.prompt.split()
        assert [w[i] for i in ex.decisive] == [ex.answer]  # all three tasks copy a prompt word
        assert all(0 <= i < len(w) for i in ex.relevant)
        assert tok.tokenize(ex.prompt) == w
        assert ex.continuation.split()[0] == ex.answer
        if ex.task == "copy":  # the rest of the list, to its last word
            assert ex.continuation.split()[-1] == w[w.index(";") - 1]
    ex = examples[0]
    assert no_bos(ex.prompt, tok).format_tokens() == ex.prompt.split()
    assert words(ex.prompt, tok).format_tokens() == ex.prompt.split()
    assert Example.from_dict(ex.to_dict()) == ex
    with pytest.raises(ValueError, match="Unknown task"):
        load_eval_prompts("poetry")


@pytest.mark.parametrize("task", TASKS)
def test_ablation_finds_the_decisive_words(demo, task):
    """Ground truth on held-out prompts: blanking the decisive word is among the three costliest
    changes, and the costliest one is always a word the answer depends on (in recall, the
    value's own key competes with the value: without it the value cannot be found) or the last
    one (``is``, ``?``: without it the question is not asked)."""
    model, tok = demo
    attr = LLMAttribution(FeatureAblation(model), tok)
    for ex in load_eval_prompts(task)[:8]:
        res = attr.attribute(no_bos(ex.prompt, tok), target=ex.answer)
        assert res.output_tokens == [ex.answer]
        ranked = res.seq_attr.argsort(descending=True).tolist()
        assert ex.decisive[0] in ranked[:3]
        last = len(ex.prompt.split()) - 1
        assert ranked[0] in [*ex.decisive, *ex.relevant, last]


# ---- the training script ------------------------------------------------------------------------


def _script():
    path = ROOT / "scripts" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_demo_model", module)
    spec.loader.exec_module(module)
    return module


def test_training_is_deterministic():
    """Two short runs give bit-identical weights and tokenizers, and leave torch's global
    settings (threads, deterministic algorithms) as they found them."""
    script = _script()
    settings = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    runs = []
    for _ in range(2):
        model, tok, report = script.train(
            max_steps=3, batch_size=4, hidden=16, layers=1, evaluate=False
        )
        runs.append((model.state_dict(), tok.get_vocab()))
        assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == settings
    (a, vocab_a), (b, vocab_b) = runs
    assert vocab_a == vocab_b
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert report["steps"] == 3


def test_held_out_prompts_are_the_shipped_ones():
    """The script regenerates exactly the prompts shipped in eval_prompts.json."""
    script = _script()
    assert [ex.to_dict() for ex in script.held_out()] == [
        ex.to_dict() for ex in load_eval_prompts()
    ]


def test_words_the_vocabulary_lacks(demo):
    """A baseline outside the vocabulary is refused; a target with such words is explained
    (Captum's behaviour) but with a warning that it explains the unknown token."""
    model, tok = demo
    prompt = "the key of box seven is red . the key of box seven is"
    with pytest.raises(ValueError, match="'zebra' is not in this tokenizer's vocabulary"):
        TextTokenInput(prompt, tok, baselines="zebra")
    TextTokenInput(prompt, tok, baselines="<unk>")  # the unknown token, asked for by name
    llm = LLMAttribution(FeatureAblation(model), tok)
    with pytest.warns(UserWarning, match="vocabulary lacks.*'<unk>'") as caught:
        result = llm.attribute(no_bos(prompt, tok), target="zebra")
    assert caught[0].filename == __file__  # points at the caller
    assert result.output_tokens == ["<unk>"]
    with pytest.warns(UserWarning, match="vocabulary lacks") as caught:  # a list of prompts
        llm.attribute([no_bos(prompt, tok)], target="<unk> zebra")
    assert caught[0].filename == __file__
    assert result.info["target_text"] == "<unk>"


def test_results_record_the_target_as_text(demo):
    """Both LLM attribution classes record what the tokenizer decodes the target to, and the
    report's title shows it."""
    from llmattr import LayerIntegratedGradients, LLMGradientAttribution

    model, tok = demo
    inp = no_bos("copy : cat dog sun fish ; copy : cat dog", tok)
    lig = LayerIntegratedGradients(model, model.get_input_embeddings())
    for llm in (LLMAttribution(FeatureAblation(model), tok), LLMGradientAttribution(lig, tok)):
        kwargs = {"n_steps": 4} if isinstance(llm, LLMGradientAttribution) else {}
        result = llm.attribute(inp, target="sun fish <eos>", **kwargs)
        assert result.info["target_text"] == "sun fish <eos>"
        assert f"<h2>{result.method}: sun fish &lt;eos&gt;</h2>" in result.to_html()
