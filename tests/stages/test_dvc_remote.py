"""The whole pipeline through `dvc repro` (tiny params) in a scratch repository, then shared through
a DVC remote as the README says.

The loop first: base -> train -> mine -> shard_mined -> retrain -> evaluate, round two trained on the
mined negatives from round one's embedder, the report scoring the three models side by side. Then
`dvc remote add` of a local folder, `dvc push`; a fresh `git clone`, `dvc pull`: `dvc status` is
clean, every DVC output has the same bytes, the pulled models verify against their digests, and the
checkpoints stayed behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
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
        "mine": {"top_k": 2, "depth": 8}, "retrain": {"steps": 2, "hard_negatives": 2},
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


def check_mining_loop(root: Path) -> None:
    """Round two trained on mined negatives from round one's embedder; three models in the report."""
    report = json.loads((root / "metrics/mine.json").read_text())
    assert "Syn-Caption_i2t" in report["datasets"]
    mined = pq.read_table(root / "data/mined/Syn-Caption_i2t.parquet").to_pylist()
    assert len(mined) == TINY["synthetic"]["train_rows"] and any(r["negative_ids"] for r in mined)
    index = json.loads((root / "data/shards/mined/index.json").read_text())
    assert index["datasets"]["Syn-Caption_i2t"]["mined"] == len(mined)
    lineage = json.loads((root / "models/embedder_round2/lineage.json").read_text())
    assert lineage["shards"] == "data/shards/mined" and lineage["train"]["hard_negatives"] == 2
    assert lineage["base_model"] == "models/embedder/merged"  # retrain.start: embedder
    scores = json.loads((root / "metrics/eval.json").read_text())
    assert {"base", "embedder", "embedder_round2"} <= set(scores)
    assert "embedder_round2" in (root / "reports/eval.md").read_text()


def test_the_pipeline_runs_and_a_remote_restores_it_in_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("needs git and a git checkout")
    root = scratch_repo(tmp_path / "repo", TINY)
    dvc(root, "repro")
    check_mining_loop(root)
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

    # the pulled clone goes on from the remote: round two again with mined batches (each batch from
    # clusters of the mine stage's kNN graph) reruns retrain alone
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["retrain"].update(batching="mined_clusters", cluster_size=2)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc(clone, "repro", "retrain")
    assert "Running stage 'retrain'" in log and "Running stage 'train'" not in log, log
    summary = json.loads((clone / "metrics/train_round2/metrics.json").read_text())["mined_batches"]
    assert summary["datasets"]["Syn-Caption_i2t"]["records"] == TINY["synthetic"]["train_rows"]
    batch = TINY["train"]["batch_size"]
    assert summary["draws"]["clustered"] + summary["draws"]["fallback"] == TINY["retrain"]["steps"] * batch
