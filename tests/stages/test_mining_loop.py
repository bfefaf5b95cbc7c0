"""The mining loop end to end through the stage entry points, on a miniature of the default data:
download -> normalize -> shard -> backbone -> train -> mine -> shard_mined -> retrain -> evaluate, with
every stage's default paths (as dvc.yaml runs them) in a scratch folder. Round two trains on the mined
negatives, and the report scores base, round one and round two side by side."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.params import write_params

pytestmark = pytest.mark.slow

SMALL = dict(
    synthetic={"train_rows": 12, "eval_rows": 6, "eval_candidates": 4},
    data={"train_subsets": ["Syn-Caption_i2t", "Syn-ShapeCLS"], "eval_subsets": ["Syn-Caption_i2t", "Syn-ShapeCLS"]},
    normalize={"workers": 1},
    shard={"workers": 1},
    backbone={"pretrain_steps": 2, "pretrain_batch_size": 4},
    train={"steps": 2, "batch_size": 4, "num_workers": 0, "save_every": 2, "warmup_steps": 0},
    mine={"top_k": 2, "depth": 8},
    retrain={"steps": 2, "hard_negatives": 2},
    eval={"batch_size": 8},
)


def test_the_loop_runs_and_round_two_trains_on_mined_negatives(tmp_path, monkeypatch):
    from stages import backbone, download, evaluate, mine, normalize, retrain, shard, train

    (tmp_path / "data" / "local").mkdir(parents=True)
    write_params(tmp_path / "params.yaml", **SMALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "LOGLEVEL", "WARNING")
    for step in (download.main, normalize.main, shard.main, backbone.main, train.main, mine.main):
        assert step([]) == 0, step.__module__
    assert shard.main(["--mined", "data/mined", "--out", "data/shards/mined"]) == 0
    assert retrain.main([]) == 0
    assert evaluate.main([]) == 0

    report = json.loads(Path("metrics/mine.json").read_text())
    assert set(report["datasets"]) == {"Syn-Caption_i2t", "Syn-ShapeCLS"}
    mined = pq.read_table("data/mined/Syn-Caption_i2t.parquet").to_pylist()
    assert len(mined) == 12 and any(r["negative_ids"] for r in mined)
    index = json.loads(Path("data/shards/mined/index.json").read_text())
    assert index["datasets"]["Syn-Caption_i2t"]["mined"] == 12
    lineage = json.loads(Path("models/embedder_round2/lineage.json").read_text())
    assert lineage["shards"] == "data/shards/mined" and lineage["train"]["hard_negatives"] == 2
    assert lineage["base_model"] == "models/embedder/merged"  # retrain.start: embedder
    scores = json.loads(Path("metrics/eval.json").read_text())
    assert {"base", "embedder", "embedder_round2"} <= set(scores)
    assert "embedder_round2" in Path("reports/eval.md").read_text()

    # round two again with mined batches: each batch from clusters of the mine stage's kNN graph
    write_params(Path("params.yaml"), **{**SMALL, "retrain": {**SMALL["retrain"], "batching": "mined_clusters",
                                                              "cluster_size": 2}})
    assert retrain.main([]) == 0
    summary = json.loads(Path("metrics/train_round2/metrics.json").read_text())["mined_batches"]
    assert summary["datasets"]["Syn-Caption_i2t"]["records"] == 12
    assert summary["draws"]["clustered"] + summary["draws"]["fallback"] == 2 * 4  # 2 steps of 4 pairs
