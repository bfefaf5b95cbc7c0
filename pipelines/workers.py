"""Worker processes that die with their parent and log through it.

    with process_pool(workers, initializer=f, initargs=(...)) as pool:   # a ProcessPoolExecutor
        pool.submit(...)

Workers are spawned (a clean interpreter: no forked torch or pyarrow thread state), and each one
  * is killed by the kernel when the process that started it dies (`die_with_parent`, Linux's
    PR_SET_PDEATHSIG): a stage killed with SIGKILL leaves no worker writing on into the outputs that
    its rerun is rebuilding; where the kernel cannot do that, `check_parent` stops the work at the
    next call;
  * sends its log records to the parent (a queue handler; the parent's handlers print them), so a
    worker's warnings reach the stage log with the worker's logger name.
`die_with_parent` is also what ties torchrun's ranks to their launcher (`trainer.distributed`).
"""

from __future__ import annotations

import ctypes
import logging
import logging.handlers
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT: int | None = None  # in a worker: the pid of the process that started it


class ParentGone(RuntimeError):
    """The process that started this worker is gone: its work is no longer wanted."""


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Linux: have the kernel send `sig` to this process when its parent dies; a process whose parent
    is already gone (re-parented) exits at once. False where this cannot be arranged."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            log.warning("could not tie process %d to its parent (prctl errno %d)", os.getpid(), ctypes.get_errno())
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent or parent == 1:  # the parent died before the prctl
        os._exit(1)
    return True


def check_parent() -> None:
    """In a worker of `process_pool`: raise ParentGone when the parent has died (where the kernel
    could not be asked to stop this process, e.g. off Linux)."""
    if _PARENT is not None and os.getppid() != _PARENT:
        raise ParentGone(f"parent {_PARENT} is gone")


def _start_worker(parent: int, log_queue, level: int, initializer: Callable | None, initargs: tuple) -> None:
    global _PARENT
    _PARENT = parent
    die_with_parent(signal.SIGTERM)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(level)
    if initializer is not None:
        initializer(*initargs)


@contextmanager
def process_pool(workers: int, *, initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context ProcessPoolExecutor of `workers` processes that die with this one and log
    through it; `initializer(*initargs)` runs in each after that set-up."""
    context = multiprocessing.get_context("spawn")
    log_queue = context.Queue()
    root = logging.getLogger()
    listener = logging.handlers.QueueListener(log_queue, *root.handlers, respect_handler_level=True)
    listener.start()
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                                 initargs=(os.getpid(), log_queue, root.getEffectiveLevel(), initializer,
                                           initargs)) as pool:
            yield pool
    finally:
        listener.stop()
        log_queue.close()
