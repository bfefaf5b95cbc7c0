"""Process-group setup for torchrun, and collectives that degrade to no-ops in one process.

Everything here is safe to call without ``torch.distributed`` being initialised: a single
process behaves as rank 0 of a world of size 1. Under ``torchrun`` (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) :func:`init_from_env`
joins the process group, with NCCL when CUDA is available and Gloo otherwise.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipelines.workers import die_with_parent

log = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "init_from_env",
    "barrier",
    "cleanup",
    "is_main",
    "rank",
    "world_size",
    "is_distributed",
    "all_gather_object",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world_size``, GPU ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from exc


def init_from_env(timeout_s: float = 1800.0) -> DistInfo:
    """Read the torchrun environment and, when ``WORLD_SIZE > 1``, join the process group.

    Guarantees:
      * without launcher variables this is one process: rank 0 of 1, no process group is created;
      * with ``WORLD_SIZE > 1`` the default process group is initialised (``env://``; NCCL on CUDA,
        Gloo on CPU) exactly once (a second call reuses it) and, on CUDA, the current device is set
        to ``cuda:LOCAL_RANK``;
      * inconsistent variables (rank outside ``[0, WORLD_SIZE)``, missing ``MASTER_ADDR`` /
        ``MASTER_PORT`` in a multi-process job) raise ``ValueError`` instead of hanging;
      * a worker started by torchrun dies with it (`die_with_launcher`).
    """
    die_with_launcher()
    world = _env_int("WORLD_SIZE", 1)
    rank_ = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if not 0 <= rank_ < world:
        raise ValueError(f"RANK={rank_} is outside [0, WORLD_SIZE={world})")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun")
        backend = "nccl" if use_cuda else "gloo"
        kwargs: dict[str, Any] = {}
        if use_cuda:
            kwargs["device_id"] = device
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank_,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
            **kwargs,
        )
        log.info("joined process group: rank %d of %d (%s, %s)", rank_, world, backend, device)
    if dist.is_initialized() and dist.get_world_size() != world:
        raise ValueError(
            f"process group has world size {dist.get_world_size()} but WORLD_SIZE={world}"
        )
    return DistInfo(rank=rank_, world_size=world, local_rank=local_rank, device=device, is_main=rank_ == 0)


def die_with_launcher() -> None:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set) on Linux, have the kernel SIGKILL this worker when
    its launcher dies (`pipelines.workers.die_with_parent`); elsewhere a no-op.

    torchrun starts every worker in a session of its own, so stopping the launcher's process group
    with SIGKILL (``kill -9 -- -<pgid>``; SIGINT and SIGTERM are forwarded by torchrun itself) would
    leave the ranks training on, writing checkpoints, ``metrics/train`` and ``models/embedder`` while
    the re-run that should resume from them reads and writes the same files. A worker whose launcher
    was already gone before this call (re-parented) exits at once."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    die_with_parent(signal.SIGKILL)


def is_distributed() -> bool:
    """True when a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks in the active process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the active process group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return rank() == 0


_last_barrier: Any = None  # the work handle of the latest `barrier`, released by `cleanup`


def barrier() -> None:
    """Wait for every rank; a no-op without a process group. The barrier's work handle is kept
    until `cleanup` has destroyed the group (see there)."""
    global _last_barrier
    if dist.is_available() and dist.is_initialized():
        work = dist.barrier(async_op=True)
        work.wait()
        _last_barrier = work


def cleanup() -> None:
    """Destroy the process group if one is active; safe to call more than once.

    Call it after every object that holds the group (a DDP wrapper's reducer) is gone. The group's
    destructor can deadlock on CPU: the main thread, holding the GIL, joins gloo's worker threads
    while a worker, dropping the last reference to a finished barrier's work (~AsyncBarrierWork),
    waits for the GIL. The last `barrier`'s handle is therefore held until the group is gone, so that
    work is freed here, on this thread; for works finished before that barrier the GIL is released
    for a moment first (the workers free them right after finishing them).
    """
    global _last_barrier
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        time.sleep(0.05)
        dist.destroy_process_group()
    _last_barrier = None


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process).

    ``obj`` must be picklable; use this only for small metadata (counts, ids, timings), never for
    tensors or data (use tensor collectives for those).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
