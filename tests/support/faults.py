"""Faults injected into a workspace: bytes changed after they were written, a stage killed at a random
moment, a full disk, a read-only folder.

    overwrite(path, n)                        # n bytes in the middle zeroed, same size
    kill_midway(cmd, cwd, env, started, window_s, seed)     # SIGKILL at a seeded random moment
    with small_disk(folder, 1 << 20) as disk: run(..., preexec_fn=disk.preexec)   # a full disk
    with read_only(folder): ...

A full disk is a real one where this process may mount a tmpfs (root with CAP_SYS_ADMIN); elsewhere
the stage process gets a file-size limit (RLIMIT_FSIZE), so its writes fail in the same places with
EFBIG instead of ENOSPC. A read-only folder is a read-only tmpfs mount as root, a folder without
write permission otherwise.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest


def overwrite(path: Path, n: int) -> None:
    """`n` bytes from the middle of `path` set to zero (other bytes, same size)."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    data[start:start + n] = bytes(min(n, len(data) - start))
    path.write_bytes(bytes(data))


def kill_midway(cmd: list[str], cwd: Path, env: dict, started: Callable[[], bool], window_s: float,
                seed: int, timeout_s: float = 300) -> int:
    """Run `cmd`, wait until `started()`, then SIGKILL it after a random time in [0, window_s)
    (seeded); return its exit status (-9 when the kill came first)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while not started():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(random.Random(seed).uniform(0, window_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return proc.returncode


def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _file_size_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


class SmallDisk:
    """A folder on a small file system (`small_disk`): `preexec` is None for a real one, else the
    `preexec_fn` that limits a process's files instead; `grow()` lifts the limit."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self.mounted = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        self.preexec = None if self.mounted else _file_size_limit(size)

    def grow(self, size: int = 1 << 30) -> None:
        if self.mounted:
            assert _mount("-o", f"remount,size={size}", str(self.folder))
        self.preexec = None


@contextmanager
def small_disk(folder: Path, size: int) -> Iterator[SmallDisk]:
    """`folder` (created) on a file system of `size` bytes, or where none can be mounted, with
    the processes started with `SmallDisk.preexec` limited to files of `size` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    disk = SmallDisk(folder, size)
    try:
        yield disk
    finally:
        if disk.mounted:
            subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` (created, empty) where nothing can be written."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if not _mount("-t", "tmpfs", "-o", "ro,size=4k", "tmpfs", str(folder)):
        pytest.skip("running as root without the right to mount: no folder can be made read-only")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)
