"""Faults injected into the data stages, as a user meets them: a stage killed with SIGKILL at a random
moment and rerun, a full disk, a read-only output folder, a missing input. Each ends with one
message naming the path and the cause (`stages.common.finish`), and a rerun writes the bytes of an
uninterrupted run. (Train's kill and corrupted checkpoints: tests/trainer/train/test_recipe_resume.py;
a changed model at evaluation: tests/trainer/eval/test_evaluate.py; a changed shard: test_stream.py.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages import backbone, download, evaluate, normalize, shard, train
from tests.support.faults import kill_midway, read_only, small_disk
from tests.support.params import write_params

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(synthetic={"train_rows": 120, "eval_rows": 20, "eval_candidates": 8}, normalize={"workers": 2},
             shard={"workers": 2})
NORMALIZE_OUT = ("data/normalized", "data/rejects", "metrics/etl.json")


def stage(ws: Path, name: str, *args: str, preexec=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"stages.{name}", "--params", "params.yaml", *args], cwd=ws,
                          env=env, capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def tree_digests(ws: Path, *paths: str) -> dict[str, str]:
    out = {}
    for rel in paths:
        root = ws / rel
        for f in sorted([root] if root.is_file() else root.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(ws))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def last_message(proc: subprocess.CompletedProcess, name: str) -> str:
    """The one line after ``<name>: FAILED`` that the stage ends with."""
    lines = proc.stderr.rstrip("\n").splitlines()
    assert proc.returncode == 1 and lines[-2] == f"{name}: FAILED", proc.stderr[-3000:]
    assert "Traceback" not in "\n".join(lines[-2:])
    return lines[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """A workspace after uninterrupted download, normalize and shard runs of small params, and how
    long normalize and shard worked (from their output folder's appearance to their exit)."""
    ws = tmp_path_factory.mktemp("faults") / "ws"
    ws.mkdir()
    write_params(ws / "params.yaml", **SMALL)
    assert stage(ws, "download").returncode == 0
    work = {}
    for name, out in (("normalize", "data/normalized"), ("shard", "data/shards/train")):
        started = time.monotonic()
        proc = stage(ws, name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        work[name] = time.monotonic() - started
    return {"ws": ws, "work": work}


def copy_inputs(reference: dict, dest: Path, *paths: str) -> Path:
    dest.mkdir()
    shutil.copy(reference["ws"] / "params.yaml", dest / "params.yaml")
    for rel in paths:
        shutil.copytree(reference["ws"] / rel, dest / rel)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("name, inputs, outputs, seed", [
    ("normalize", ["data/raw"], NORMALIZE_OUT, 1),
    ("shard", ["data/normalized"], ["data/shards/train"], 2),
])
def test_a_stage_killed_at_a_random_moment_then_rerun_writes_the_same_bytes(reference, tmp_path, name, inputs,
                                                                          outputs, seed):
    ws = copy_inputs(reference, tmp_path / "ws", *inputs)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", f"stages.{name}", "--params", "params.yaml"]
    # from the first output on, at a seeded random moment within the reference run's working time
    status = kill_midway(cmd, ws, env, started=lambda: (ws / outputs[0]).exists(),
                         window_s=0.6 * reference["work"][name], seed=seed)
    assert status == -9, f"{name} ended ({status}) before it was killed"
    proc = stage(ws, name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digests(ws, *outputs) == tree_digests(reference["ws"], *outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name, inputs, outputs", [
    ("normalize", ["data/raw"], NORMALIZE_OUT),
    ("shard", ["data/normalized"], ["data/shards/train"]),
])
def test_a_full_disk_ends_with_one_message_and_a_rerun_with_space_writes_the_same_bytes(reference, tmp_path, name,
                                                                                      inputs, outputs):
    """normalize used to log ENOSPC in a worker and end with `ArrowInvalid: Parquet magic bytes not
    found` from the image-store merge, which sent a user looking in the wrong place."""
    ws = copy_inputs(reference, tmp_path / "ws", *inputs)
    with small_disk(ws / "data" / "out", 96 * 1024) as disk:
        moved = [f"data/out/{Path(o).name}" for o in outputs]
        flags = ["--out", moved[0]] + (["--rejects", moved[1], "--metrics", moved[2]] if name == "normalize" else [])
        message = last_message(stage(ws, name, *flags, preexec=disk.preexec), name)
        assert message.startswith(("no space left on device", "file too large")), message
        assert "data/out" in message, message
        disk.grow()
        proc = stage(ws, name, *flags)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = {k.replace("data/out/", ""): v for k, v in tree_digests(ws, *moved).items()}
        want = {k.replace(str(Path(o).parent) + "/", ""): v for o in outputs
                for k, v in tree_digests(reference["ws"], o).items()}
        assert got == want


@pytest.mark.slow
def test_a_read_only_output_folder_ends_each_stage_with_one_message(reference, tmp_path, workspace):
    ws = copy_inputs(reference, tmp_path / "stages", "data/raw", "data/normalized", "data/shards")
    (ws / "models").symlink_to(workspace / "models")  # a tiny base model for train
    with read_only(ws / "ro"):
        for name, flags in [("download", ["--out", "ro/raw"]),
                            ("normalize", ["--out", "ro/n", "--rejects", "ro/r", "--metrics", "ro/etl.json"]),
                            ("shard", ["--out", "ro/shards"]),
                            ("backbone", ["--out", "ro/base"]),
                            ("train", ["--out", "ro/embedder", "--checkpoints", "ro/ckpt", "--metrics", "ro/m"])]:
            message = last_message(stage(ws, name, *flags), name)
            assert message.startswith(("read-only file system: ro/", "permission denied: ro/")), (name, message)


@pytest.mark.parametrize("module, name, argv, path", [
    (download, "download", ["--out", "{tmp}/raw"], "{tmp}/nowhere"),
    (normalize, "normalize", ["--raw", "{tmp}/nowhere", "--out", "{tmp}/n", "--rejects", "{tmp}/r",
                              "--metrics", "{tmp}/etl.json"], "{tmp}/nowhere"),
    (shard, "shard", ["--normalized", "{tmp}/nowhere", "--out", "{tmp}/s"], "{tmp}/nowhere"),
    (backbone, "backbone", ["--train-dir", "{tmp}/nowhere", "--out", "{tmp}/base"], "{tmp}/nowhere"),
    (train, "train", ["--base", "{tmp}/nowhere", "--shards", "{tmp}/nowhere", "--out", "{tmp}/e",
                      "--checkpoints", "{tmp}/c", "--metrics", "{tmp}/m"], "{tmp}/nowhere"),
    (evaluate, "evaluate", [], "data/normalized/eval"),
])
def test_a_missing_input_ends_each_stage_with_one_message_naming_it(tmp_path, monkeypatch, capsys, module, name,
                                                                    argv, path):
    params = write_params(tmp_path / "params.yaml", data={"source": "local", "local_dir": str(tmp_path / "nowhere")},
                          backbone={"pretrain_steps": 0})
    monkeypatch.chdir(tmp_path)
    assert module.main([*(a.format(tmp=tmp_path) for a in argv), "--params", str(params)]) == 1
    lines = capsys.readouterr().err.rstrip("\n").splitlines()
    assert lines[-2] == f"{name}: FAILED"
    assert path.format(tmp=tmp_path) in lines[-1] and (
        "missing input" in lines[-1] or "no such file or directory" in lines[-1]), lines[-1]
