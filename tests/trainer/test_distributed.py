"""trainer.distributed in one process, and a 2-rank gloo DDP run compared with one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import distributed
from trainer.distributed import DistInfo, all_gather_object, barrier, cleanup, init_from_env, is_main

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_single_process_defaults(clean_env):
    info = init_from_env()
    assert isinstance(info, DistInfo)
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (0, 1, 0, True)
    assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not torch.distributed.is_initialized()
    assert is_main() and distributed.rank() == 0 and distributed.world_size() == 1
    assert all_gather_object({"n": 3}) == [{"n": 3}]
    barrier()
    cleanup()  # no-ops without a process group


def test_the_last_barrier_is_freed_after_the_group_is_destroyed(clean_env):
    """cleanup() destroys the group while the last barrier's work is still referenced here, so gloo's
    worker threads never drop the last reference to it during the destructor's join."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        barrier()
        work = distributed._last_barrier
        assert work is not None and work.is_completed()
    finally:
        cleanup()
    assert not torch.distributed.is_initialized() and distributed._last_barrier is None
    cleanup()  # again: a no-op


@pytest.mark.parametrize(
    "env, match",
    [
        ({"WORLD_SIZE": "2", "RANK": "2"}, "outside"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "two"}, "not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR"),
        ({"WORLD_SIZE": "1", "LOCAL_RANK": "-1"}, "LOCAL_RANK"),
    ],
)
def test_bad_launcher_environment_raises(clean_env, env, match):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        init_from_env()
    assert not torch.distributed.is_initialized()


def _relative_max_diff(got: dict, want: dict) -> float:
    scale = max(g.abs().max().item() for g in want.values())
    return max((got[n] - g).abs().max().item() for n, g in want.items()) / scale


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_process_on_global_batch(tmp_path):
    """2 gloo ranks x half batch == 1 process x global batch: loss and LoRA gradients, 5 cases (one
    with padded negatives masked out, the mask gathered with the embeddings)."""
    from safetensors.torch import load_file

    from tests.support.ddp_worker import CASES, single_process_step

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "support" / "ddp_worker.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for case in CASES:
        ref_loss, ref_grads = single_process_step(case)
        assert all(g.abs().max() > 0 for g in ref_grads.values()), "a LoRA weight got no gradient"
        for rank in (0, 1):
            saved = load_file(str(tmp_path / f"{case}.rank{rank}.safetensors"))
            got = {n: saved[f"grad.{n}"] for n in ref_grads}
            assert set(k[5:] for k in saved if k.startswith("grad.")) == set(ref_grads)
            assert saved["loss"].item() == pytest.approx(ref_loss, rel=1e-6), case
            # info_nce scaled the loss by the world size for DDP's gradient averaging
            assert saved["loss_scaled"].item() == pytest.approx(2 * ref_loss, rel=1e-6), case
            # max |grad difference| relative to the largest gradient entry (entries reach ~60)
            assert _relative_max_diff(got, ref_grads) < 1e-6, case
        # negative control: without cross-device negatives the gradients are far off
        _, local_grads = single_process_step(case, cross_device=False)
        assert _relative_max_diff(got, local_grads) > 1e-2, case
    # and the mask matters: the masked case's loss is not the unmasked one's
    masked, unmasked = (load_file(str(tmp_path / f"{c}.rank0.safetensors"))["loss"].item()
                        for c in ("gc_negs_masked", "gc_negs"))
    assert abs(masked - unmasked) > 1e-3

    for rank in (0, 1):
        meta = json.loads((tmp_path / f"meta.rank{rank}.json").read_text())
        assert meta["ranks"] == [0, 1]
        assert meta["is_main"] == [True, False]
        assert "equal shapes" in meta["unequal_shapes"]
        assert "different (query, target, negative) chunk counts" in meta["unequal_chunks"]
        assert meta["gathered"] == [[0.0] * 3] * 2 + [[1.0] * 3] * 2  # rank order
        assert meta["local_grad"] == [[1.0] * 3] * 2  # only the local slot carries gradient


def test_die_with_launcher_asks_the_kernel_for_sigkill_only_under_torchrun(monkeypatch):
    import signal

    calls = []
    monkeypatch.setattr(distributed, "die_with_parent", lambda sig: calls.append(sig) or True)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    distributed.die_with_launcher()
    assert calls == []  # not a torchrun worker: nothing to tie
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    distributed.die_with_launcher()
    assert calls == ([signal.SIGKILL] if sys.platform.startswith("linux") else [])


WORKER_THAT_WAITS = """
import os, sys, time
sys.path.insert(0, {root!r})
from trainer.distributed import init_from_env
init_from_env()
open(os.path.join({out!r}, f"pid.{{os.environ['RANK']}}"), "w").write(str(os.getpid()))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_torchrun_workers_die_with_the_launcher_killed_by_sigkill(tmp_path):
    """torchrun starts each worker in a session of its own: SIGKILL of the launcher's process group
    (the README's way to stop a stage, with -9) left the ranks training on, writing the checkpoints
    and outputs a re-run resumes from."""
    import signal
    import time

    script = tmp_path / "worker.py"
    script.write_text(WORKER_THAT_WAITS.format(root=str(ROOT), out=str(tmp_path)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node", "2", str(script)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids = []
    try:
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.2)
            pids = [int(p.read_text()) for p in tmp_path.glob("pid.*") if p.read_text()]
        assert len(pids) == 2, "the workers did not start"
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "a worker outlived its killed launcher"
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
