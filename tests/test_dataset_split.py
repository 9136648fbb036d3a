"""One attribution split across processes (llmattr.dataset.split): 2 CPU processes (gloo) launched
with ``torch.distributed.run`` must return exactly the one-process result computed here, each
scoring only its share of the perturbed prompts; errors on one rank reach every rank."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dist_split_worker as worker
import pytest
import torch
import torch.distributed as dist

from llmattr import (
    FeatureAblation,
    IntegratedGradients,
    KernelShap,
    LLMAttribution,
    ShapleyValueSampling,
)
from llmattr._core.errors import InputTypeError
from llmattr.dataset.split import SplitAttribution, split_attribute

WORKER = Path(worker.__file__)
TOL = 1e-12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(out: Path, scenario: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(WORKER), str(out), scenario,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("split")
    done = _launch(out, "cases")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def demo() -> tuple[Any, Any, str, str]:
    return worker.demo()


@pytest.fixture(scope="module")
def one_process(demo: tuple[Any, Any, str, str]) -> dict[str, tuple[dict[str, Any], int]]:
    """Per case, its result in this process and the perturbed prompts it scored."""
    model, tokenizer, prompt, answer = demo
    out = {}
    for name, (method, kwargs) in worker.CASES.items():
        inp, rows = worker.counted_input(tokenizer, prompt)
        result = LLMAttribution(method(model), tokenizer).attribute(inp, answer, **kwargs)
        out[name] = result.to_dict(), rows[0]
    return out


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("seq_attr", "token_attr", "output_probs"):
        if want[key] is None:
            assert got[key] is None, key
            continue
        assert got[key]["shape"] == want[key]["shape"], key
        assert got[key]["dtype"] == want[key]["dtype"], key
        a, b = torch.tensor(got[key]["data"]), torch.tensor(want[key]["data"])
        assert (a - b).abs().max().item() <= TOL, key
    for key in ("input_tokens", "output_tokens", "method", "info"):
        assert got[key] == want[key], key


@pytest.mark.parametrize("name", list(worker.CASES))
def test_split_equals_one_process(ranks, one_process, name):
    want, _ = one_process[name]
    assert want["seq_attr"]["data"] != [0.0] * len(want["seq_attr"]["data"])
    for rank in ranks:
        assert rank["world"] == 2
        _assert_same(rank[name]["result"], want)
        assert rank[name]["untouched"]


@pytest.mark.parametrize("name", list(worker.CASES))
def test_each_rank_scores_its_share(ranks, one_process, name):
    _, total = one_process[name]
    counted = [rank[name]["rows"] for rank in ranks]
    # prompt i of the call (the unperturbed one first) on rank i % 2
    assert counted == [(total + 1) // 2, total // 2]
    for rank in ranks:
        assert rank[name]["rows_evaluated"] == rank[name]["rows"]
        assert rank[name]["rows_total"] == total


def test_template_baselines_drawn_alike(ranks, demo):
    model, tokenizer, _, answer = demo
    llm = LLMAttribution(ShapleyValueSampling(model), tokenizer)
    want = llm.attribute(worker.template(), answer, **worker.TEMPLATE_ARGS).to_dict()
    for rank in ranks:
        _assert_same(rank["template"]["result"], want)
        assert rank["template_unseeded"]["type"] == "InputError"
        assert "disagree on: inp" in rank["template_unseeded"]["message"]


def test_generic_perturbation_method(ranks):
    forward, x = worker.linear_case()
    want = KernelShap(forward).attribute(x, target=1, n_samples=30, generator=3)
    assert want.abs().sum() > 0
    for rank in ranks:
        assert (
            torch.tensor(rank["linear"]["result"], dtype=torch.float64) - want
        ).abs().max() <= TOL


@pytest.mark.parametrize(
    ("case", "message"),
    [("fails_in_forward", "injected failure on rank 1"), ("fails_before", "model is broken")],
)
def test_error_on_one_rank_reaches_every_rank(ranks, case, message):
    failing, other = ranks[1][case], ranks[0][case]
    assert failing == {"type": "RuntimeError", "message": failing["message"]}
    assert message in failing["message"]
    assert other["type"] == "SplitError"
    assert "rank 1" in other["message"] and message in other["message"]


def test_group_usable_after_errors(ranks, one_process):
    want, _ = one_process["ablation"]
    for rank in ranks:
        _assert_same(rank["after_errors"]["result"], want)


def test_disagreeing_processes_refused_before_any_forward(ranks):
    for rank in ranks:
        assert rank["disagree"]["type"] == "InputError"
        assert "disagree on: target" in rank["disagree"]["message"]
        assert rank["disagree"]["rows"] == 0
        assert rank["unseeded"]["type"] == "InputError"
        assert "generator=" in rank["unseeded"]["message"]


def test_dead_rank_stops_the_run(tmp_path):
    done = _launch(tmp_path, "crash")  # rank 1 exits mid-way; no hang (timeout 120 s)
    assert done.returncode != 0
    assert not list(tmp_path.glob("rank*.json"))


def test_without_group_or_in_group_of_one_is_the_plain_call(demo, tmp_path):
    model, tokenizer, prompt, answer = demo
    llm = LLMAttribution(ShapleyValueSampling(model), tokenizer)
    inp, _ = worker.counted_input(tokenizer, prompt)
    want = llm.attribute(inp, answer, n_samples=2, generator=5).to_dict()
    assert not dist.is_initialized()
    _assert_same(split_attribute(llm, inp, answer, n_samples=2, generator=5).to_dict(), want)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))  # fmt: skip
    try:
        split = SplitAttribution(llm)
        assert split.world == 1
        _assert_same(split.attribute(inp, answer, n_samples=2, generator=5).to_dict(), want)
        assert split.rows_total == 0  # nothing to divide
    finally:
        dist.destroy_process_group()


def test_refuses_methods_without_perturbations(demo):
    model = demo[0]
    with pytest.raises(InputTypeError, match="gradient methods"):
        SplitAttribution(IntegratedGradients(model))
    with pytest.raises(InputTypeError):
        SplitAttribution(model)
    SplitAttribution(FeatureAblation(model))  # accepted
