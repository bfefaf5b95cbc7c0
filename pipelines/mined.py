"""Mined negatives joined onto train records: the shard stage's second instance (data/shards/mined).

    join = MinedJoin.load(Path("data/mined"), dataset_dir)     # one dataset's mined negatives
    record = join(record)          # negatives = the mined ones (best first), then the source's own

The mine stage (`trainer.mine`) writes data/mined/<dataset>.parquet: per record its id and
`negative_ids`, the records whose targets it mined as negatives, best first. Here those ids become
target sides of the same dataset's records, put before the record's own negatives, so
`train.hard_negatives` (the first K negatives of a sample) takes the mined ones and the source's own
stay available after them. A record the mine stage did not cover (mined on other records) keeps its
own negatives and is counted (`unmined`); a negative id that names no record of the dataset, or a
dataset without a mined file, is an error: the mined files belong to other records (re-run mine).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


@dataclass
class MinedJoin:
    """One dataset's mined negatives as target sides, by record id."""

    dataset: str
    negatives: dict[str, list[dict]]
    mined: int = 0  # records given mined negatives so far
    unmined: int = 0  # records the mined file does not cover

    @classmethod
    def load(cls, mined_root: Path, dataset_dir: Path) -> "MinedJoin":
        dataset_dir = Path(dataset_dir)
        dataset = dataset_dir.name
        path = Path(mined_root) / f"{dataset}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: no mined negatives for train dataset {dataset} (re-run the "
                                    "mine stage on these records)")
        parts = sorted(dataset_dir.glob("part-*.parquet"))
        records = pa.concat_tables(pq.read_table(p, columns=["id", "target"]) for p in parts)
        targets = dict(zip(records.column("id").to_pylist(), records.column("target").to_pylist()))
        mined = pq.read_table(path, columns=["id", "negative_ids"])
        negatives = {}
        for rid, ids in zip(mined.column("id").to_pylist(), mined.column("negative_ids").to_pylist()):
            unknown = [i for i in ids if i not in targets]
            if unknown:
                raise ValueError(f"{path}: record {rid} has mined negative(s) {unknown[:3]} that are no records of "
                                 f"{dataset_dir}: the mined files belong to other records (re-run the mine stage)")
            negatives[rid] = [targets[i] for i in ids]
        return cls(dataset, negatives)

    def __call__(self, record: dict) -> dict:
        """`record` with its mined negatives first (a copy; the record itself is left as it is)."""
        mined = self.negatives.get(record["id"])
        if mined is None:
            self.unmined += 1
            return record
        self.mined += 1
        return {**record, "negatives": list(mined) + list(record.get("negatives") or [])}
