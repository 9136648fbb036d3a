"""The notebooks run top to bottom in a fresh kernel, and say what they claim.

Each notebook asserts its own numbers in its cells (accuracy, completeness gaps, figure content);
this test executes it with nbclient — any failing cell fails the test — and then checks the outputs
a reader relies on: the printed findings and the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# per notebook: text its printed output must contain, and how many figures it must show at least
EXPECTED: dict[str, tuple[list[str], int]] = {
    "01_demo_model.ipynb": (
        [
            "LlamaForCausalLM",
            "generated: ['red'] with probability",
            # converged Shapley sampling credits the queried box, then the colour it looks up;
            # Lime's surrogate puts the colour first; every method has it in its top three
            "ShapleyValueSampling: top two@28, red@6",
            "Lime: top red@6",
            "methods rank the decisive word first",
            "7 of 7 methods rank the decisive word in their top three",
            "max |exact - sampled| = 0.",
            "7 sections",
        ],
        1,
    ),
    "02_bert_layers.ipynb": (
        [
            "BertModel with 6 layers, hidden size 384",
            "similarity(passage) - similarity(baseline) = 0.75",
            "layer 6: row sum 0.75",
            "Eiffel + Tower share peaks at layer 5",
        ],
        1,
    ),
    "03_vision_digits.ipynb": (
        [
            "held-out accuracy: 0.9",
            "IG completeness gap, relative:",
            "Spearman with IG = 1.00",
            "masked pixels with no positive attribution are black: True",
        ],
        2,
    ),
    "04_vision.ipynb": (
        [
            "held-out accuracy: CNN 0.9",
            "max |FeatureAblation - brute force| = ",
            "cell sums preserved: True",
            "ids contiguous: True",
            "Grad-CAM on the last block is all zero: True | warned: True",
            "every method beats random on both curves",
            "modality shares: image ",
            "self-contained: True",
        ],
        5,
    ),
    "05_optim.ipynb": (
        [
            "held-out accuracy: 0.9",
            "channels above their training maximum: ",
            "with RedirectedReLU: 8 of 8",
            "classes rendered at p >= 0.99: ",
            "p(class) under shifts: plain ",
            "pixel correlation between the 4 images: ",
            "saved relu3_channels.png: 138x70 L",
            "MaxActivatingExamples(neuron 13",
            "search reaches ",
            "searched prompt beats every corpus token: True",
        ],
        4,
    ),
    "06_bert_qa_layers.ipynb": (
        [
            "BertForQuestionAnswering: 6 layers, 12 heads, hidden size 384",
            "held-out exact match ",
            "attention weights reproduce every attention module's output: True",
            "norm weighting lowers the share of [CLS]/[SEP] in every layer: True",
            "self-contained: True",
            "1. the model answers ",
            "2. completeness holds per layer: 14 LayerIntegratedGradients rows",
            "3. the answer span dominates the upper layers",
            "the same hand-over on 8 more held-out questions of every type",
            "LayerConductance agrees with LayerIntegratedGradients in layers 4-5",
            "the question's credit passes into the answer at layer ",
            "links the question word to the answer",
        ],
        7,
    ),
}


def _run(path: Path) -> tuple[str, int]:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    text, figures = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif "data" in out:
                figures += "image/png" in out.data
                text.append(out.data.get("text/plain", ""))
    return "".join(text), figures


def test_every_notebook_has_expectations() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_shows_its_findings(name: str) -> None:
    text, figures = _run(NOTEBOOKS / name)
    needles, min_figures = EXPECTED[name]
    for needle in needles:
        assert needle in text, f"{name}: expected output {needle!r} is missing"
    assert figures >= min_figures, f"{name}: {figures} figures shown, expected {min_figures}+"
