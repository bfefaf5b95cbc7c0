"""Mined negatives joined onto the shards (pipelines.mined, `shard --mined`): mined first and in rank
order, the source's own after them, uncovered records counted, foreign ids refused."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipelines.shard import write_shards
from tests.pipelines.test_shard import PARAMS, build_normalized, shard_urls, strip_members


def write_mined(root: Path, dataset: str, negatives: dict[str, list[str]]) -> None:
    """data/mined/<dataset>.parquet with only the columns the join reads."""
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(negatives), "negative_ids": list(negatives.values())},
                     schema=pa.schema([("id", pa.string()), ("negative_ids", pa.list_(pa.string()))]))
    pq.write_table(table, root / f"{dataset}.parquet")


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    return build_normalized(tmp_path_factory.mktemp("norm"), {"Syn-A": 6, "Syn-B": 3})


def test_mined_negatives_come_first_and_the_sources_stay(normalized, tmp_path):
    train, store, records, _ = normalized
    ids = [r["id"] for r in records["Syn-A"]]
    write_mined(tmp_path / "mined", "Syn-A", {rid: [ids[(i + 2) % 6], ids[(i + 1) % 6]]
                                            for i, rid in enumerate(ids) if i != 3})
    write_mined(tmp_path / "mined", "Syn-B", {r["id"]: [] for r in records["Syn-B"]})
    out = tmp_path / "shards"
    index = write_shards(train, store, out, PARAMS, mined=tmp_path / "mined")
    assert index["datasets"]["Syn-A"]["mined"] == 5 and index["datasets"]["Syn-A"]["unmined"] == 1
    samples = [json.loads(s["json"]) for s in wds.WebDataset(shard_urls(out, ["Syn-A"]), shardshuffle=False,
                                                              empty_check=False)]
    targets = [r["target"] for r in records["Syn-A"]]
    for i, (doc, record) in enumerate(zip(samples, records["Syn-A"])):
        mined = [] if i == 3 else [targets[(i + 2) % 6], targets[(i + 1) % 6]]
        assert strip_members(doc)["negatives"] == mined + record["negatives"]


def test_foreign_or_missing_mined_files_are_refused(normalized, tmp_path):
    train, store, records, _ = normalized
    write_mined(tmp_path / "mined", "Syn-A", {records["Syn-A"][0]["id"]: ["Other/original/9"]})
    with pytest.raises(ValueError, match="no records of"):
        write_shards(train, store, tmp_path / "a", PARAMS, mined=tmp_path / "mined")
    write_mined(tmp_path / "mined", "Syn-A", {})
    with pytest.raises(FileNotFoundError, match="Syn-B.parquet missing"):
        write_shards(train, store, tmp_path / "b", PARAMS, mined=tmp_path / "mined")
