"""Dataset attribution in 2 processes under ``torch.distributed.run`` (torchrun) on the CPU
(gloo), offline, on the demo model: the merged output equals a one-process run's, a killed
run's shards and cut-short lines are resumed, and processes started with different arguments
refuse to run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)

from llmattr.dataset import explain_file, read_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECALL = "the key of box {} is {} . the key of box two is blue . the key of box {} is"
WORDS = ["one", "two", "six", "seven", "eight"]
PROMPTS = [
    {"prompt": RECALL.format(a, c, b), "id": f"p{i}", "label": c}
    for i, (a, b, c) in enumerate(zip(WORDS, WORDS[::-1], ["red", "pink", "white", "red", "pink"]))
]
ARGS = ["--method", "shapley", "--n-samples", "2", "--seed", "5", "--max-new-tokens", "1"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv: str, script: Path | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]  # fmt: skip
    target = [str(script)] if script else ["-m", "llmattr", "explain-file"]
    return subprocess.run([*launcher, *target, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=180)  # fmt: skip


def results(path: Path) -> list[str]:
    """Each prompt's line without its place in the file, sorted by index, as bytes would be."""
    _, records = read_results(path)
    return [json.dumps(r, sort_keys=True) for r in records]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("one")
    prompts = folder / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        explain_file(prompts, folder / "r.jsonl", method="shapley", n_samples=2, seed=5,
                     max_new_tokens=1)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return prompts, folder / "r.jsonl"


def test_two_processes_equal_one_then_resume(tmp_path, one_process):
    prompts, single = one_process
    out = tmp_path / "r.jsonl"
    proc = torchrun(str(prompts), "--out", str(out), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("5 prompts: 5 explained, 0 already in") == 1  # the main process
    assert "(2 processes)" in proc.stdout
    assert results(out) == results(single)  # the same numbers, byte for byte
    assert out.read_bytes() == single.read_bytes()  # and the same file: input order
    assert not list(tmp_path.glob("r.jsonl.rank*"))  # the shards are merged and gone

    # a killed 2-process run: the output has two results, shard 1 one whole line and one cut
    # short, shard 0 only its header
    lines = single.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]))  # header, p0, p1
    (tmp_path / "r.jsonl.rank0").write_bytes(lines[0])
    (tmp_path / "r.jsonl.rank1").write_bytes(lines[0] + lines[4] + lines[5][:30])  # p3, p4 cut
    proc = torchrun(str(prompts), "--out", str(out), *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 prompts: 2 explained, 3 already in" in proc.stdout  # p2 and p4 redone
    assert out.read_bytes() == single.read_bytes()
    assert not list(tmp_path.glob("r.jsonl.rank*"))

    # the settings of the file are checked by every process before any work
    proc = torchrun(str(prompts), "--out", str(out), *ARGS[:-1], "2")
    assert proc.returncode != 0 and "max_new_tokens is 1 there, 2 in this run" in proc.stderr
    assert out.read_bytes() == single.read_bytes()


def test_processes_that_disagree_refuse(tmp_path, one_process):
    prompts, _ = one_process
    script = tmp_path / "disagree.py"
    script.write_text(
        "import os, sys\n"
        "from llmattr.dataset import explain_file\n"
        "try:\n"
        f"    explain_file({str(prompts)!r}, {str(tmp_path / 'r.jsonl')!r}, max_new_tokens=1,\n"
        "                 seed=int(os.environ['RANK']), method='shapley', n_samples=1)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n"
        "    sys.exit(3)\n",
        encoding="utf-8",
    )
    proc = torchrun(script=script)
    assert proc.returncode != 0
    assert "refused: the processes disagree on 'seed'" in proc.stdout
    assert "process 0 has 0, process 1 has 1" in proc.stdout
    assert not (tmp_path / "r.jsonl").exists()  # nothing written, no model loaded
