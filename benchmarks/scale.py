"""Dataset attribution at scale: prompts per second of ``llmattr explain-file`` in 1 and 2
processes (``torchrun --nproc_per_node N``), on the CPU and, when there is one, on the GPU.

The demo model explains ~40 held-out prompts (word-level, 20-40 tokens each) with
FeatureAblation and with Shapley value sampling. Each case runs the command twice on a fresh
output: once doing every prompt, once again on the finished output (which only starts the
processes, loads the model, reads the output and skips every prompt), so the start-up is
measured and taken out:

    prompts/s = prompts / (time of the full run - time of the resumed, empty run)

The table gives both times, the rate and the speed-up over one process; the header gives the
machine (CPU count, torch threads per process, GPU). Each process runs
``--threads`` torch threads (default: the CPU count divided by the processes).

    python benchmarks/scale.py [--prompts 40] [--processes 1 2] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "FeatureAblation": ["--method", "ablation"],
    "ShapleyValueSampling (10)": ["--method", "shapley", "--n-samples", "10"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_prompts(path: Path, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    from llmattr.demo import load_eval_prompts

    examples = load_eval_prompts()
    rows = [
        {"prompt": e.prompt, "id": f"{e.task}-{i}", "task": e.task}
        for i, e in enumerate(examples[i % len(examples)] for i in range(n))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run(nproc: int, threads: int, argv: list[str]) -> float:
    """Seconds of one ``explain-file`` command under torchrun with ``nproc`` processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "llmattr", "explain-file", *argv, "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"explain-file failed ({nproc} processes):\n{proc.stderr[-3000:]}")
    return seconds


def machine(threads: dict[int, int], device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    per = ", ".join(f"{n} process{'es' if n > 1 else ''}: {t}" for n, t in threads.items())
    return (
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, torch threads per process ({per}), GPU: {gpu}, "
        f"device: {device}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40, help="prompts in the file")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if there)")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and max(args.processes) > torch.cuda.device_count():
        parser.error(f"{max(args.processes)} processes, {torch.cuda.device_count()} GPUs")
    cpus = os.cpu_count() or 1
    threads = {n: args.threads or max(1, cpus // n) for n in args.processes}
    print(machine(threads, device))
    print(f"{args.prompts} prompts of the demo model's held-out set, max 1 new token")
    print(f"{'method':<28}{'processes':>10}{'full run s':>12}{'start-up s':>12}"
          f"{'prompts/s':>11}{'speed-up':>10}{'end-to-end/s':>14}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        prompts = Path(folder) / "prompts.jsonl"
        write_prompts(prompts, args.prompts)
        for name, method in METHODS.items():
            base = None
            for n in args.processes:
                out = Path(folder) / f"r{n}.jsonl"
                argv = [str(prompts), "--out", str(out), "--device", device,
                        "--max-new-tokens", "1", *method]  # fmt: skip
                full = run(n, threads[n], [*argv, "--overwrite"])
                startup = run(n, threads[n], argv)  # resumes a finished file: start-up only
                work = full - startup
                if work < 0.05 * full:  # lost in the noise of a busy machine: no rate
                    print(
                        f"{name:<28}{n:>10}{full:>12.2f}{startup:>12.2f}{'-':>11}{'-':>10}"
                        f"{args.prompts / full:>14.2f}  (too few prompts, or a busy machine)"
                    )
                    continue
                rate = args.prompts / work
                base = base or rate
                print(f"{name:<28}{n:>10}{full:>12.2f}{startup:>12.2f}{rate:>11.2f}"
                      f"{rate / base:>9.2f}x{args.prompts / full:>14.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
