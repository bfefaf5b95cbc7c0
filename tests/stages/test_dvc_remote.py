"""Sharing data and models through a DVC remote, as the README says: the whole pipeline (tiny params)
in a scratch repository, `dvc remote add` of a local folder, `dvc push`; a fresh `git clone`, `dvc
pull`: `dvc status` is clean, every DVC output has the same bytes, the pulled models verify against
their digests, and the checkpoints stayed behind."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import digests
from tests.stages.test_e2e_data import REPO, dvc, scratch_repo, sh

pytestmark = pytest.mark.slow

TINY = {"synthetic": {"train_rows": 40, "eval_rows": 12, "eval_candidates": 8},
        "normalize": {"workers": 1}, "shard": {"workers": 1},
        "backbone": {"pretrain_steps": 0, "tiny_hidden_size": 32, "tiny_vocab_size": 512},
        "train": {"steps": 4, "batch_size": 8, "save_every": 2, "num_workers": 0, "warmup_steps": 1,
                  "shuffle_buffer": 16},
        "eval": {"batch_size": 32, "cache": False}}


def cached_outputs(root: Path) -> dict[str, str]:
    """sha256 of every file of every cached DVC output (dvc.lock's outs), by relative path."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    out = {}
    for stage in lock["stages"].values():
        for entry in stage.get("outs", []):
            base = root / entry["path"]
            for f in sorted([base] if base.is_file() else base.rglob("*")):
                if f.is_file():
                    out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_push_to_a_remote_and_pull_into_a_fresh_clone_restores_the_workspace(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("needs git and a git checkout")
    root = scratch_repo(tmp_path / "repo", TINY)
    dvc(root, "repro")
    assert (root / "models" / "checkpoints").is_dir()
    remote = tmp_path / "remote"
    dvc(root, "remote", "add", "-d", "shared", str(remote))
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "pipeline run, remote")
    dvc(root, "push")

    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(root), str(clone))
    dvc(clone, "pull")
    status = dvc(clone, "status")
    assert "Data and pipelines are up to date" in status, status
    expected = cached_outputs(root)
    assert any(p.startswith("models/embedder/") for p in expected)
    assert cached_outputs(clone) == expected
    for model in ("models/base", "models/embedder"):
        assert digests.verify(clone / model) is not None
    assert not (clone / "models" / "checkpoints").exists()  # not a DVC output: never pushed
