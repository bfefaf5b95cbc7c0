"""benchmarks/mining.py clusters: the clusterings of the mine stage's graphs over the shards' records."""

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import mining
from tests.support.shards import default_record, write_test_shards


def label_record(dataset: str, i: int):
    """default_record with one of 4 labels as target: records 0-3 name the labels (as mine does)."""
    sides, images = default_record(dataset, i)
    sides["target"] = {**sides["target"], "raw": f"label {i % 4}", "text": f"label {i % 4}"}
    return sides, images


def test_clusters_counts_each_dataset_of_the_shards(tmp_path, capsys):
    write_test_shards(tmp_path / "shards", {"Syn-A": 8, "Syn-B": 16}, make_record=label_record)
    mined = tmp_path / "mined"
    mined.mkdir()
    # Syn-B: every record ranks the two next labels, named by their first records (ids 0-3)
    ids = [f"Syn-B/original/{i}" for i in range(16)]
    graph = [[f"Syn-B/original/{(i + 1) % 4}", f"Syn-B/original/{(i + 2) % 4}"] for i in range(16)]
    pq.write_table(pa.table({"id": ids, "negative_ids": graph}), mined / "Syn-B.parquet")
    assert mining.main(["clusters", "--mined", str(mined), "--shards", str(tmp_path / "shards"), "--size", "4"]) == 0
    out = mining.clusters(type("A", (), dict(mined=str(mined), shards=str(tmp_path / "shards"), size=4, seed=0)))
    assert out["Syn-A"]["clustered"] == 0 and out["Syn-A"]["fallback"] == 8  # no graph: all drawn at random
    b = out["Syn-B"]
    assert b["records"] == 16 and b["clustered"] + b["fallback"] == 16
    assert b["clustered"] >= 12  # each edge reaches every record of its label, not only the first
    assert '"Syn-B"' in capsys.readouterr().out
