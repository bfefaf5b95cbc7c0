"""Content-addressed image store: data/normalized/images/images-XX.parquet.

Each distinct image is stored once, keyed by the sha256 of its stored bytes, in the bucket file named
after the first two hex digits of the hash (at most 256 files, whatever the dataset size: DVC and the
file system stay fast). Rows inside a bucket are sorted by sha256, so the files are byte-deterministic.

Writers (one per normalize worker) spill their rows, sorted by hash, to `_staging/<writer>/`;
`merge()` then builds the buckets from every writer's staged rows, dropping duplicates, one hash range
at a time (memory bounded by `memory_bytes`, not by the store size).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.schema import IMAGE_SCHEMA

STAGING = "_staging"


def bucket_of(sha256: str) -> str:
    return sha256[:2]


def bucket_path(root: Path, bucket: str) -> Path:
    return Path(root) / f"images-{bucket}.parquet"


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    bytes: bytes
    width: int
    height: int
    format: str


class ImageStoreWriter:
    """Buffers one writer's images and spills them, sorted by sha256, to staged parquet files."""

    def __init__(self, root: str | Path, writer: str, flush_bytes: int = 64 << 20):
        self.dir = Path(root) / STAGING / writer
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_bytes = flush_bytes
        self._rows: list[dict] = []
        self._seen: set[str] = set()
        self._buffered = 0
        self._parts = 0

    def add(self, image: StoredImage) -> None:
        if image.sha256 in self._seen:
            return
        self._seen.add(image.sha256)
        self._rows.append(
            dict(sha256=image.sha256, bytes=image.bytes, width=image.width, height=image.height,
                 format=image.format)
        )
        self._buffered += len(image.bytes)
        if self._buffered >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=IMAGE_SCHEMA).sort_by("sha256")
        # small row groups: merge() reads hash ranges and skips row groups by their min/max statistics
        pq.write_table(table, self.dir / f"part-{self._parts:05d}.parquet", row_group_size=64)
        self._parts += 1
        self._rows = []
        self._buffered = 0

    def close(self) -> None:
        self.flush()


def _bucket_ranges(groups: int) -> list[list[str]]:
    buckets = [f"{i:02x}" for i in range(256)]
    size = -(-256 // groups)
    return [buckets[i : i + size] for i in range(0, 256, size)]


def merge(root: str | Path, memory_bytes: int = 64 << 20) -> int:
    """Merge every writer's staged rows into the bucket files; return the number of distinct images.

    Staged files are read in contiguous hash ranges sized so that one range of all staged bytes fits
    in `memory_bytes` (one pass over each file for small stores); each range is sorted, deduplicated
    and written as its bucket files. Buckets with no staged rows are left as they are, so re-running
    the merge is idempotent.
    """
    root = Path(root)
    staging = root / STAGING
    parts = sorted(staging.glob("*/*.parquet")) if staging.exists() else []
    total = sum(p.stat().st_size for p in parts)
    for buckets in _bucket_ranges(max(1, -(-total // memory_bytes))) if parts else []:
        lo, hi = buckets[0], buckets[-1] + "g"  # every sha256 with prefix <= buckets[-1] sorts below
        flt = (pc.field("sha256") >= lo) & (pc.field("sha256") < hi)
        tables = [pq.read_table(p, schema=IMAGE_SCHEMA, filters=flt) for p in parts]
        table = pa.concat_tables(tables).sort_by("sha256")
        shas = table.column("sha256").to_pylist()
        # keep the first row of each sha256 (identical bytes by construction)
        keep = [i for i, s in enumerate(shas) if i == 0 or s != shas[i - 1]]
        table = table.take(pa.array(keep, pa.int64()))
        shas = [shas[i] for i in keep]
        start = 0
        while start < len(shas):
            bucket = bucket_of(shas[start])
            end = start
            while end < len(shas) and shas[end].startswith(bucket):
                end += 1
            tmp = bucket_path(root, bucket).with_suffix(".tmp")
            pq.write_table(table.slice(start, end - start), tmp, compression="zstd", row_group_size=64)
            tmp.replace(bucket_path(root, bucket))
            start = end
        del tables, table
        pa.default_memory_pool().release_unused()  # hand freed buffers back before the next range
    shutil.rmtree(staging, ignore_errors=True)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in root.glob("images-*.parquet"))


class ImageStore:
    """Read access by sha256."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image store {self.root} does not exist (run the normalize stage)")

    def get_many(self, shas: Iterable[str]) -> dict[str, StoredImage]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for s in shas:
            wanted[bucket_of(s)].add(s)
        found: dict[str, StoredImage] = {}
        for bucket, keys in wanted.items():
            path = bucket_path(self.root, bucket)
            if not path.exists():
                continue
            table = pq.read_table(path, filters=pc.field("sha256").isin(sorted(keys)))
            for row in table.to_pylist():
                found[row["sha256"]] = StoredImage(**row)
        missing = set().union(*wanted.values()) - set(found) if wanted else set()
        if missing:
            raise KeyError(f"{len(missing)} image(s) not in {self.root}: {sorted(missing)[:3]}")
        return found

    def get(self, sha256: str) -> StoredImage:
        return self.get_many([sha256])[sha256]

    def __iter__(self):
        for path in sorted(self.root.glob("images-*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield StoredImage(**row)
