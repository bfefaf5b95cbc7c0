"""Content-addressed image store: data/normalized/images/images-XX.parquet.

Each distinct image is stored once, keyed by the sha256 of its stored bytes, in the bucket file named
after the first two hex digits of the hash (at most 256 files, whatever the dataset size: DVC and the
file system stay fast). Rows inside a bucket are sorted by sha256, so the files are byte-deterministic.

Writers (one per normalize worker) spill their rows, sorted by hash, to `_staging/<writer>/`;
`merge()` then builds the buckets from every writer's staged rows, dropping duplicates, one hash range
at a time (memory bounded by `memory_bytes`, not by the store size); the ranges are independent, so
`merge(map_fn=pool.map)` runs them in parallel processes with the same bytes as a serial merge.

The image bytes column is stored uncompressed (JPEG/PNG/WebP are compressed already: a general codec
costs CPU on every write and read for a few percent at best); the small columns use zstd.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.schema import IMAGE_SCHEMA

STAGING = "_staging"
# parquet options of staged and bucket files: images uncompressed and without dictionary or
# statistics (unique, incompressible blobs); sha256 statistics let a hash range skip row groups
WRITE_OPTIONS = dict(
    compression={"sha256": "zstd", "bytes": "none", "width": "zstd", "height": "zstd", "format": "zstd"},
    use_dictionary=["format"], write_statistics=["sha256"], row_group_size=64)


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
        self._rows.sort(key=lambda row: row["sha256"])  # sorted before arrow: one copy of the bytes
        table = pa.Table.from_pylist(self._rows, schema=IMAGE_SCHEMA)
        # small row groups: merge() reads hash ranges and skips row groups by their min/max statistics
        pq.write_table(table, self.dir / f"part-{self._parts:05d}.parquet", **WRITE_OPTIONS)
        self._parts += 1
        self._rows = []
        self._buffered = 0

    def close(self) -> None:
        self.flush()


def _bucket_ranges(groups: int) -> list[list[str]]:
    buckets = [f"{i:02x}" for i in range(256)]
    size = -(-256 // groups)
    return [buckets[i : i + size] for i in range(0, 256, size)]


def merge(root: str | Path, memory_bytes: int = 64 << 20, min_ranges: int = 1,
          map_fn: Callable = map) -> int:
    """Merge every writer's staged rows into the bucket files; return the number of distinct images.

    Staged files are read in contiguous hash ranges (at least `min_ranges`, more when needed so that
    one range of all staged bytes fits in `memory_bytes`; one pass over each file for small stores);
    each range is sorted, deduplicated and written as its bucket files by `merge_range`, through
    `map_fn` (e.g. a process pool's map: ranges touch disjoint buckets, the bytes do not depend on it).
    Buckets with no staged rows are left as they are, so re-running the merge is idempotent.
    """
    root = Path(root)
    staging = root / STAGING
    parts = sorted(staging.glob("*/*.parquet")) if staging.exists() else []
    if parts:
        total = sum(p.stat().st_size for p in parts)
        ranges = _bucket_ranges(max(min_ranges, -(-total // memory_bytes)))
        names = [str(p) for p in parts]
        list(map_fn(merge_range, [str(root)] * len(ranges), [names] * len(ranges), ranges))
    shutil.rmtree(staging, ignore_errors=True)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in root.glob("images-*.parquet"))


def _read_range(path: str, lo: str, hi: str) -> pa.Table | None:
    """The row groups of one staged file whose sha256 statistics overlap [lo, hi) (rows outside the
    range may come along; the caller selects by hash)."""
    pf = pq.ParquetFile(path)
    column = pf.schema_arrow.get_field_index("sha256")
    groups = []
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or (stats.min < hi and stats.max >= lo):
            groups.append(g)
    return pf.read_row_groups(groups).cast(IMAGE_SCHEMA) if groups else None


def merge_range(root: str, parts: list[str], buckets: list[str]) -> int:
    """Write the bucket files of one contiguous range of `buckets` from the staged `parts`: rows
    sorted by sha256, the first of each sha256 kept (identical bytes by construction). Returns the
    rows written. Top-level and plain-argument, so a spawned process can run it."""
    lo, hi = buckets[0], buckets[-1] + "g"  # every sha256 with prefix <= buckets[-1] sorts below
    tables = [t for t in (_read_range(p, lo, hi) for p in parts) if t is not None]
    if not tables:
        return 0
    table = pa.concat_tables(tables).combine_chunks()  # take() on many chunks would re-concatenate
    del tables
    sha = table.column("sha256")
    inside = pc.indices_nonzero(pc.and_(pc.greater_equal(sha, lo), pc.less(sha, hi)))
    order = inside.take(pc.sort_indices(sha.take(inside)))  # row positions in sha256 order
    shas = sha.take(order).to_pylist()
    written = start = 0
    while start < len(shas):
        bucket = bucket_of(shas[start])
        end = start
        keep = []  # the first row of each sha256 in this bucket
        while end < len(shas) and shas[end].startswith(bucket):
            if end == start or shas[end] != shas[end - 1]:
                keep.append(end)
            end += 1
        # one bucket's bytes copied at a time (small allocations the pool reuses)
        rows = table.take(order.take(pa.array(keep, pa.int64())))
        tmp = bucket_path(Path(root), bucket).with_suffix(".tmp")
        pq.write_table(rows, tmp, **WRITE_OPTIONS)
        tmp.replace(bucket_path(Path(root), bucket))
        written += len(keep)
        start = end
    del table, rows
    pa.default_memory_pool().release_unused()  # hand freed buffers back before the next range
    return written


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
