"""pipelines.workers: pool workers die with their parent and log through it."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import workers

REPO = Path(__file__).resolve().parents[2]


def _warn(message: str) -> int:
    logging.getLogger("pipelines.some_worker").warning(message)
    return os.getpid()


def _sleep_forever(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def test_worker_log_records_reach_the_parents_handlers(caplog):
    with caplog.at_level(logging.INFO):
        with workers.process_pool(2) as pool:
            pids = {pool.submit(_warn, f"hello {i}").result() for i in range(4)}
    assert os.getpid() not in pids
    got = [r for r in caplog.records if r.name == "pipelines.some_worker"]
    assert sorted(r.getMessage() for r in got) == [f"hello {i}" for i in range(4)]
    assert {r.process for r in got} <= pids  # the worker's own record, re-emitted by the parent


def test_check_parent_raises_once_the_parent_is_gone(monkeypatch):
    monkeypatch.setattr(workers, "_PARENT", os.getppid())
    workers.check_parent()
    monkeypatch.setattr(workers, "_PARENT", -1)
    with pytest.raises(workers.ParentGone):
        workers.check_parent()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


PARENT = """
import sys, time
sys.path.insert(0, {repo!r})
from pipelines import workers
from tests.pipelines.test_workers import _sleep_forever
with workers.process_pool(1) as pool:
    pool.submit(_sleep_forever, {pid_file!r})
    time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_when_its_parent_is_killed(tmp_path):
    """A stage killed with SIGKILL must not leave workers writing into the outputs of its rerun."""
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(repo=str(REPO), pid_file=str(pid_file))],
                              cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
