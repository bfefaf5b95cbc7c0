"""Content-addressed image store: data/normalized/images/images-XX.parquet.

Each distinct image is stored once, keyed by the sha256 of its stored bytes, in the bucket file named
after the first two hex digits of the hash (at most 256 files, whatever the dataset size: DVC and the
file system stay fast). Rows inside a bucket are sorted by sha256, so the files are byte-deterministic.

Writers (one per normalize worker) spill their rows, sorted by hash, to `_staging/<writer>/`, one
parquet row group per bucket (at most 64 rows); `merge()` then builds the buckets from every writer's
staged rows, dropping duplicates, one range of buckets at a time, reading exactly the row groups of
that range (memory bounded by `memory_bytes` and the largest bucket, not by the store size); the
ranges are independent, so `merge(map_fn=pool.map)` runs them in parallel processes with the same
bytes as a serial merge.

The image bytes column is stored uncompressed (JPEG/PNG/WebP are compressed already: a general codec
costs CPU on every write and read for a few percent at best); the small columns use zstd.
"""

from __future__ import annotations

import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import files
from pipelines.schema import IMAGE_SCHEMA

STAGING = "_staging"
# parquet options of staged and bucket files: images uncompressed and without dictionary or
# statistics (unique, incompressible blobs); sha256 statistics let a hash range skip row groups
WRITE_OPTIONS = dict(
    compression={"sha256": "zstd", "bytes": "none", "width": "zstd", "height": "zstd", "format": "zstd"},
    use_dictionary=["format"], write_statistics=["sha256"], row_group_size=64)


class _NoPandas:
    """Meta-path finder that refuses pandas (see `without_pandas`)."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is kept out of this ETL process", name=name)
        return None


def without_pandas() -> None:
    """Keep pandas out of this process: pyarrow (26) imports it on the first table or array built
    from Python objects just to test `isinstance(data, pandas.DataFrame)`, a noticeable start-up cost
    per process, and the ETL stages and their workers never use pandas (pyarrow treats it as absent).
    Only for processes that are ETL stages or their workers, since `import pandas` fails there
    afterwards; a no-op where pandas is imported already."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


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

    def __init__(self, root: str | Path, writer: str, flush_bytes: int = 16 << 20):
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
        shas = [row["sha256"] for row in self._rows]
        options = {k: v for k, v in WRITE_OPTIONS.items() if k != "row_group_size"}
        with pq.ParquetWriter(self.dir / f"part-{self._parts:05d}.parquet", IMAGE_SCHEMA, **options) as w:
            start = 0
            while start < len(shas):  # row groups never span two buckets: merge() reads by bucket
                end = start + 1
                while end < len(shas) and shas[end][:2] == shas[start][:2]:
                    end += 1
                w.write_table(table.slice(start, end - start), row_group_size=WRITE_OPTIONS["row_group_size"])
                start = end
        self._parts += 1
        self._rows = []
        self._buffered = 0

    def close(self) -> None:
        self.flush()


def _staged_groups(parts: list[Path]) -> dict[str, list[tuple[str, list[int], int]]]:
    """bucket -> [(staged file, its row groups holding that bucket's hashes, their bytes)], from the
    files' footers (sha256 min/max statistics), each read once."""
    found: dict[str, list[tuple[str, list[int], int]]] = defaultdict(list)
    for path in parts:
        meta = pq.ParquetFile(path).metadata
        column = meta.schema.to_arrow_schema().get_field_index("sha256")
        per_bucket: dict[str, tuple[list[int], int]] = {}
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            stats = rg.column(column).statistics
            if stats is None or not stats.has_min_max:
                raise ValueError(f"{path}: row group {g} has no sha256 statistics")
            for b in range(int(stats.min[:2], 16), int(stats.max[:2], 16) + 1):
                groups, size = per_bucket.get(f"{b:02x}", ([], 0))
                per_bucket[f"{b:02x}"] = (groups + [g], size + rg.total_byte_size)
        for bucket, (groups, size) in per_bucket.items():
            found[bucket].append((str(path), groups, size))
    return found


def _bucket_ranges(groups: dict[str, list[tuple[str, list[int], int]]], memory_bytes: int,
                   min_ranges: int) -> list[list[str]]:
    """Consecutive staged buckets grouped into ranges of at most max(memory_bytes, one bucket) staged
    bytes, and into at least `min_ranges` ranges when there are that many buckets."""
    buckets = sorted(groups)
    sizes = [sum(size for _, _, size in groups[b]) for b in buckets]
    limit = max(1, min(memory_bytes, -(-sum(sizes) // max(1, min_ranges))))
    ranges: list[list[str]] = []
    held = 0
    for bucket, size in zip(buckets, sizes):
        if not ranges or held + size > limit:
            ranges.append([])
            held = 0
        ranges[-1].append(bucket)
        held += size
    return ranges


def merge(root: str | Path, memory_bytes: int = 32 << 20, min_ranges: int = 1,
          map_fn: Callable = map) -> int:
    """Merge every writer's staged rows into the bucket files; return the number of distinct images.

    Staged buckets are grouped into consecutive ranges of at most `memory_bytes` staged bytes (a
    larger bucket is a range of its own), at least `min_ranges` of them; each range is sorted,
    deduplicated and written as its bucket files by `merge_range`, through `map_fn` (e.g. a process
    pool's map: ranges touch disjoint buckets and the bytes do not depend on it). Buckets with no
    staged rows are left as they are, so re-running the merge is idempotent.
    """
    root = Path(root)
    staging = root / STAGING
    parts = sorted(staging.glob("*/*.parquet")) if staging.exists() else []
    if parts:
        groups = _staged_groups(parts)
        tasks = [{b: groups[b] for b in r} for r in _bucket_ranges(groups, memory_bytes, min_ranges)]
        list(map_fn(merge_range, [str(root)] * len(tasks), tasks))
    shutil.rmtree(staging, ignore_errors=True)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in root.glob("images-*.parquet"))


def merge_range(root: str, staged: dict[str, list[tuple[str, list[int], int]]]) -> int:
    """Write the bucket files of `staged` (bucket -> staged row groups, as `_staged_groups` gives):
    rows sorted by sha256, the first of each sha256 kept (identical bytes by construction). Returns
    the rows written. Top-level and plain-argument, so a spawned process can run it."""
    sources: dict[str, set[int]] = defaultdict(set)
    for entries in staged.values():
        for path, groups, _ in entries:
            sources[path].update(groups)
    tables = [pq.ParquetFile(path).read_row_groups(sorted(groups)) for path, groups in sorted(sources.items())]
    # one contiguous copy: take() on a table of many chunks would re-concatenate them for every call
    table = pa.concat_tables(tables).cast(IMAGE_SCHEMA).combine_chunks()
    del tables
    sha = table.column("sha256")
    lo, hi = min(staged), max(staged) + "g"  # every sha256 with prefix <= the last bucket sorts below
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
        rows = table.take(order.take(pa.array(keep, pa.int64())))  # one bucket's bytes at a time
        pending = files.Pending(bucket_path(Path(root), bucket))
        pq.write_table(rows, pending.path, **WRITE_OPTIONS)
        pending.commit()
        written += len(keep)
        start = end
        del rows
    del table
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
