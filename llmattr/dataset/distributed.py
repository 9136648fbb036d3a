"""The process group of a dataset run: joined from what ``torchrun`` / ``accelerate launch``
set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or one already
initialized by the caller; one process when neither.

Only small Python objects and counters travel between processes (settings to compare, the
prompt indices still to do, counts), always over gloo on the CPU, whatever the model's device:
a group initialized with NCCL gets a gloo subgroup for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from .._core.errors import InputError

__all__ = ["Group", "process_group", "rank_device"]

T = TypeVar("T")

# a dataset run's processes wait for each other at the start (the main process reads the
# output) and at the end (the slowest share); a launcher such as torchrun stops the group
# when one process dies, so the wait can be long without hanging on a dead peer
TIMEOUT = timedelta(hours=12)


@dataclass
class Group:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its
    machine, and the gloo group the run talks over (None: one process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    pg: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: T) -> list[T]:
        """``obj`` of every process, in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        objects: list[Any] = [None] * self.world
        dist.all_gather_object(objects, obj, group=self.pg)
        return objects

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj``, on every process."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.pg)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the main process, its value (or the InputError or OSError it raised)
        sent to every process: all of them return it, or all raise."""
        value: Any = None
        error: tuple[bool, str] | None = None
        if self.main:
            try:
                value = fn()
            except (InputError, OSError) as failure:
                if self.world == 1:
                    raise
                error = (isinstance(failure, InputError), str(failure))
        value, error = self.broadcast((value, error))
        if error is not None:
            raise (InputError if error[0] else OSError)(error[1])
        return value

    def same_everywhere(self, what: dict[str, Any]) -> None:
        """Raise InputError (on every process) unless every process has the same ``what``,
        naming the first process and key that differ."""
        for rank, theirs in enumerate(self.gather(what)):
            if rank == self.rank or theirs == what:
                continue
            keys = sorted(set(theirs) | set(what), key=str)
            key = next(k for k in keys if theirs.get(k) != what.get(k))
            raise InputError(
                f"the processes disagree on {key!r}: process {self.rank} has "
                f"{what.get(key)!r}, process {rank} has {theirs.get(key)!r}; every process of "
                "the run must be started with the same arguments"
            )

    def wait_for_all(self, counts: list[int], poll: Callable[[], None]) -> list[list[int]]:
        """Wait until every process is here, calling ``poll`` meanwhile (a progress bar);
        returns every process's ``counts``, in rank order."""
        if self.world == 1:
            return [counts]
        import torch
        import torch.distributed as dist

        table = torch.zeros(self.world, len(counts), dtype=torch.int64)
        table[self.rank] = torch.tensor(counts, dtype=torch.int64)
        work = dist.all_reduce(table, group=self.pg, async_op=True)  # a sum of one-hot rows
        while not work.is_completed():
            poll()
            time.sleep(0.2)
        work.wait()
        return table.tolist()


@contextmanager
def process_group() -> Iterator[Group]:
    """The run's :class:`Group`: the caller's initialized group (a gloo subgroup of it), else
    one initialized here from the launcher's environment variables and destroyed on leaving,
    else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        import torch.distributed as dist
    except ImportError:  # a torch without distributed support
        dist = None  # type: ignore[assignment]
    if dist is None or not dist.is_available() or (world == 1 and not dist.is_initialized()):
        yield Group()
        return
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    pg = None
    finished = False
    try:
        pg = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        yield Group(dist.get_rank(), dist.get_world_size(), local, pg)
        finished = True
    finally:
        if owned:
            if finished:  # tearing gloo down while a peer still talks aborts the process
                dist.barrier(group=pg)
            dist.destroy_process_group()
        elif pg is not None:  # the gloo subgroup of the caller's group
            dist.destroy_process_group(pg)


def rank_device(name: str | None, group: Group) -> Any:
    """Where this process's model goes: ``name`` as given, except that no name or a bare
    ``cuda`` means ``cuda:<local rank>`` when CUDA is there (one GPU per process), else the
    CPU. Raises InputError for an unknown device or CUDA asked for without CUDA."""
    import torch

    cuda = torch.cuda.is_available()
    if name is None:
        return torch.device(
            f"cuda:{group.local_rank % torch.cuda.device_count()}" if cuda else "cpu"
        )
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r} (use cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not cuda:
        raise InputError(f"device {name!r} was asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        return torch.device(f"cuda:{group.local_rank % torch.cuda.device_count()}")
    return device
