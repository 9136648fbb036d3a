"""Explaining every prompt of a file into a resumable results file, in one process or in
every process of a ``torchrun`` / ``accelerate launch`` group.

Each process loads the model once and explains its share of the prompts still to do (every
``world``-th), appending each result to its own shard ``OUT.rank<k>`` (one process: to ``OUT``
itself); the main process shows one progress bar for the whole run (it counts the shards'
lines), then merges the shards and the earlier results into ``OUT`` in input order (written
to a new file and renamed over the old one), and removes the shards.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .._core.errors import InputError
from ..cli_options import COMPLETE, attribute, completeness_info, make_input, robustness_of
from .distributed import Group, process_group, rank_device
from .prompts import PromptRecord, prompts_digest, read_prompts
from .results_io import ResultsWriter, Scan, merge_results, scan, truncate_to
from .settings import check_options, model_fingerprint, run_settings, settings_difference

__all__ = ["RunSummary", "explain_file"]


@dataclass(frozen=True)
class RunSummary:
    """What a run did: ``done`` results and ``failed`` prompts written by this run (all
    processes), ``skipped`` prompts already in the output, of ``total`` in the file; ``rank``
    is the process that returns it."""

    path: Path
    total: int
    done: int
    skipped: int
    failed: int
    processes: int
    rank: int = 0


def _shards(out: Path) -> list[Path]:
    pattern = re.compile(re.escape(out.name) + r"\.rank\d+$")
    if not out.parent.is_dir():
        return []
    found = [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("rank", 1)[1]))


def _check_output(
    out: Path, settings: dict[str, Any], records: list[PromptRecord], overwrite: bool
) -> list[Scan]:
    """Read the output and any shards left by a killed run, and check they can be resumed:
    ours, with this run's settings, and holding the prompts of this prompts file. Read only."""
    if out.is_dir():
        raise InputError(f"cannot write {out}: it is a folder; give a file name")
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InputError(f"cannot write {out}: permission denied (checked before the model loads)")
    if overwrite:
        return []
    scans = [scan(p) for p in (out, *_shards(out))]
    by_id = {r.id: r for r in records}
    fresh = "start fresh with another output file, or --overwrite (overwrite=True) to replace it"
    for s in scans:
        if s.settings is None:
            continue
        found = {k: v for k, v in s.settings.items() if k != "model_fingerprint"}
        diff = settings_difference(found, settings)
        if diff is not None:
            raise InputError(
                f"cannot resume {s.path}: it was written with other settings ({diff}); {fresh}"
            )
        for e in s.entries:
            r = by_id.get(e.id)
            if r is None or (r.index, r.prompt, r.target) != (e.index, e.prompt, e.target):
                raise InputError(
                    f"cannot resume {s.path}: its result for id {e.id!r} (prompt {e.index}) is "
                    "not that of the prompts file's prompt with this id (the prompts file "
                    f"changed since); {fresh}"
                )
    return scans


def _prepare(
    out: Path, scans: list[Scan], settings: dict[str, Any], records: list[PromptRecord]
) -> tuple[list[int], Scan]:
    """On the main process, with the model loaded: replace (overwrite) or repair the output,
    fold shards of a killed run into it, and return the prompt indices still to do and the
    output's scan."""
    fingerprint = settings["model_fingerprint"]
    for s in scans:
        old = (s.settings or {}).get("model_fingerprint", fingerprint)
        if old != fingerprint:
            raise InputError(
                f"cannot resume {s.path}: it was written by a model with other weights or "
                f"config (fingerprint {old}, this model's {fingerprint}); start fresh with "
                "another output file, or --overwrite (overwrite=True) to replace it"
            )
    if not scans:  # overwrite
        for p in (out, *_shards(out)):
            p.unlink(missing_ok=True)
        scans = [scan(out)]
    for s in scans:
        truncate_to(s.path, s.end)
    main, shards = scans[0], scans[1:]
    if shards:  # a killed run's shards: into the output, in input order
        merge_results(out, scans, main.settings or settings)
        for s in shards:
            s.path.unlink()
        main = scan(out)
    if main.settings is None:
        out.write_bytes(b"")
        ResultsWriter(out, settings).close()
        main = scan(out)
    done = {e.id for e in main.entries if e.ok}
    return [r.index for r in records if r.id not in done], main


def _explain_one(model: Any, tokenizer: Any, record: PromptRecord, opts: Any) -> dict[str, Any]:
    """The results line of one prompt: its result, or the error that stopped it."""
    import torch

    from ..text.inputs import unknown_text

    line: dict[str, Any] = {"id": record.id, "index": record.index, "prompt": record.prompt,
                            "target": record.target, "meta": record.meta}  # fmt: skip
    args = SimpleNamespace(**vars(opts), target=record.target)
    try:
        inp = make_input(args.features, record.prompt, tokenizer, args.baseline)
        config = getattr(model, "config", None)
        limit = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 0
        )
        if limit and inp.ids.numel() > limit:
            raise InputError(
                f"the prompt is {inp.ids.numel()} tokens, more than the model's context of {limit}"
            )
        if record.target is not None:
            ids = tokenizer.encode(record.target, add_special_tokens=False)
            if unknown_text(tokenizer, record.target, ids):
                raise InputError(
                    f"the target {record.target!r} has words the model's vocabulary lacks"
                )
        result = attribute(model, tokenizer, inp, args, False)
        result.info.update(opts.info)
        result.info["prompt"] = record.prompt
        result.info["target"] = record.target if record.target is not None else "generated (greedy)"
        if args.method in COMPLETE:
            result.info["completeness"] = completeness_info(model, tokenizer, inp, result)
        if args.robustness:
            result.info["robustness"] = robustness_of(model, tokenizer, inp, result, args).to_dict()
    except (ValueError, NotImplementedError, RuntimeError) as error:  # OOM is a RuntimeError
        if isinstance(error, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        line["error"] = f"{type(error).__name__}: {error}"
        return line
    line["result"] = result.to_dict()
    return line


class _Progress:
    """The main process's bar over the whole run: its own lines plus the other shards'."""

    def __init__(self, show: bool, total: int, shards: list[Path]) -> None:
        self.bar = None
        self.shards = {p: 0 for p in shards}  # bytes read so far
        self.others = 0
        self.own = 0
        if show and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="explain-file", unit="prompt", file=sys.stderr)

    def update(self, own: int | None = None) -> None:
        if self.bar is None:
            return
        if own is not None:
            self.own = own
        for path, seen in self.shards.items():
            if path.exists():
                with path.open("rb") as f:
                    f.seek(seen)
                    chunk = f.read()
                self.shards[path] = seen + len(chunk)
                self.others += chunk.count(b"\n")
        # the shards' header lines are not prompts
        done = self.own + self.others - sum(1 for p in self.shards if self.shards[p])
        self.bar.update(max(0, min(done, self.bar.total)) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def explain_file(
    prompts: str | Path,
    out: str | Path,
    model: Any = None,
    tokenizer: Any = None,
    *,
    method: str = "ablation",
    features: str = "tokens",
    baseline: str | None = None,
    max_new_tokens: int = 10,
    n_samples: int | None = None,
    n_steps: int = 50,
    seed: int = 0,
    robustness: bool = False,
    device: Any = None,
    overwrite: bool = False,
    progress: bool = False,
) -> RunSummary:
    """Explain every prompt of a file, one results line per prompt, resumably.

    The options are those of ``llmattr explain`` (same names, same defaults). Run it under
    ``torchrun`` / ``accelerate launch`` (or in an initialized ``torch.distributed`` group) and
    the processes share the prompts; results equal those of one process.

    Args:
        prompts: a JSONL or plain text prompts file (see :func:`read_prompts`).
        out: the results file (JSONL: a header, then one line per prompt; see
            :func:`read_results`). When it exists, the run resumes: prompts with a result are
            skipped, failed ones retried, if its settings equal this run's.
        model: a model directory or hub name, ``None`` or ``"demo"`` for the demo model, or a
            loaded model (then ``tokenizer`` is required; it stays where it is, which is how a
            model dispatched with ``device_map`` is used).
        tokenizer: the loaded model's tokenizer.
        method: ``ablation``, ``shapley``, ``lime``, ``kernel-shap`` or
            ``integrated-gradients``.
        features: ``tokens``, ``words`` or ``sentences``.
        baseline, max_new_tokens, n_samples, n_steps, seed, robustness: as in ``explain``.
        device: where a model loaded by name goes (default: ``cuda:<local rank>`` when CUDA is
            available, else the CPU).
        overwrite: replace the output instead of resuming it.
        progress: a progress bar on stderr (main process only).

    Returns:
        A :class:`RunSummary` (the same on every process).

    Raises:
        InputError: bad options, a bad prompts file, an output that cannot be resumed
            (different settings, another model, not a results file), or processes started
            with different arguments; before any model is loaded, except for the model's
            fingerprint.
    """
    from .._hf import load_language_model, quiet_transformers

    check_options(method, features, max_new_tokens=max_new_tokens, n_samples=n_samples,
                  n_steps=n_steps)  # fmt: skip
    loaded = model is not None and not isinstance(model, (str, Path))
    if loaded and tokenizer is None:
        raise InputError("a loaded model needs its tokenizer: explain_file(..., tokenizer=...)")
    if loaded:
        config = getattr(model, "config", None)
        label = getattr(config, "name_or_path", "") or type(model).__name__
    else:
        demo = model is None or (model == "demo" and not Path("demo").is_dir())
        label = "demo" if demo else str(model)
    settings = run_settings(label, method, features, baseline, max_new_tokens, n_samples,
                            n_steps, seed, robustness)  # fmt: skip
    out = Path(out).expanduser()
    records = read_prompts(prompts)
    source = Path(prompts).expanduser()
    for p in (out, *_shards(out)):  # hard links and symlinks too
        if out.resolve() == source.resolve() or (p.exists() and os.path.samefile(p, source)):
            raise InputError(f"the output {p} is the prompts file; give another output file")
    with process_group() as group:
        group.same_everywhere({**settings, "out": str(out.resolve()), "overwrite": overwrite,
                               "prompts": prompts_digest(records)})  # fmt: skip
        kept: dict[str, Any] = {}  # the main process's scans of the output (and shards)

        def check() -> None:
            kept["scans"] = _check_output(out, settings, records, overwrite)
            kept["lock"] = _lock(out)  # held until this run ends: one run per output

        try:
            group.on_main(check)
            if loaded:
                the_model = model
            else:
                with quiet_transformers():
                    name = None if label == "demo" else label
                    the_model, tokenizer, _ = load_language_model(name, rank_device(device, group))
            settings["model_fingerprint"] = model_fingerprint(the_model)
            group.same_everywhere({"model_fingerprint": settings["model_fingerprint"]})

            def prepare() -> list[int]:
                todo, kept["main"] = _prepare(out, kept["scans"], settings, records)
                return todo

            todo = group.on_main(prepare)
            opts = SimpleNamespace(
                method=method, features=features, baseline=baseline, max_new_tokens=max_new_tokens,
                n_samples=settings.get("n_samples"), n_steps=n_steps, seed=seed,
                robustness=robustness, info={k: v for k, v in settings.items() if k
                                             not in ("method", "llmattr_version", "robustness")},
            )  # fmt: skip
            return _run(group, out, records, todo, kept.get("main"), settings, opts, the_model,
                        tokenizer, progress)  # fmt: skip
        finally:
            lock = kept.get("lock")
            if lock is not None:
                lock.close()


def _lock(out: Path) -> Any:
    """An exclusive lock on ``OUT.lock`` (POSIX), or InputError when another run holds it."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return None
    handle = open(f"{out}.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InputError(
            f"another run is writing {out} (it holds {out}.lock); wait for it to finish or "
            "give another output file"
        ) from None
    return handle


def _run(
    group: Group,
    out: Path,
    records: list[PromptRecord],
    todo: list[int],
    main: Scan | None,
    settings: dict[str, Any],
    opts: Any,
    model: Any,
    tokenizer: Any,
    progress: bool,
) -> RunSummary:
    mine = todo[group.rank :: group.world]
    shard = out if group.world == 1 else out.with_name(f"{out.name}.rank{group.rank}")
    others = [out.with_name(f"{out.name}.rank{k}") for k in range(1, group.world)]
    bar = _Progress(progress and group.main, len(todo), others)
    try:
        with ResultsWriter(shard, settings) as writer:
            for n, index in enumerate(mine, start=1):
                writer.write(_explain_one(model, tokenizer, records[index], opts))
                bar.update(n)
        ok = sum(e.ok for e in writer.appended)
        counts = group.wait_for_all([ok, len(writer.appended) - ok], bar.update)
        bar.update()
    finally:
        bar.close()

    def merge() -> None:
        assert main is not None  # the main process's
        shards: list[Scan] = []
        if group.world == 1:
            main.entries.extend(writer.appended)
        else:
            shards = [scan(out.with_name(f"{out.name}.rank{k}")) for k in range(group.world)]
            for k, (s, (ok, failed)) in enumerate(zip(shards, counts)):
                if len(s.entries) < ok + failed:  # another machine's disk, or removed
                    raise InputError(
                        f"process {k} wrote {ok + failed} lines to {s.path}, but the main "
                        f"process finds {len(s.entries)} there: the output's folder must be "
                        "one that every process sees (one machine, or a shared file system); "
                        "their results stay in the processes' own shard files"
                    )
        indices = [e.index for e in main.entries]
        # in order with nothing retried, and no new lines elsewhere: the output is final
        if any(s.entries for s in shards) or indices != sorted(set(indices)):
            merge_results(out, [main, *shards], main.settings or settings)
        for s in shards:
            s.path.unlink(missing_ok=True)

    group.on_main(merge)
    done, failed = (sum(column) for column in zip(*counts))
    return RunSummary(
        out, len(records), done, len(records) - len(todo), failed, group.world, group.rank
    )
