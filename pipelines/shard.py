"""Normalized train records -> deterministic WebDataset shards plus an index.

Layout written by `write_shards` (the `shard` stage):

    <out>/<dataset>/<dataset>-NNNNNN.tar     one dataset per tar, records in normalized row order, or
                                             in a seeded random order (`shuffle`), at most
                                             `max_rows_per_dataset` of them (a seeded random draw)
    <out>/index.json                         per shard: path, dataset, samples, bytes, sha256;
                                             per dataset totals; the params used

One sample per record, key = `schema.sample_key(record id)`:

    <key>.json          every record field (id, dataset, split, meta_task, distribution, instruction,
                        query, target, negatives); each side's `image` struct as in RECORD_SCHEMA plus
                        `member` (the member extension holding the bytes, e.g. "query.jpg") and
                        `member_sha256` (sha256 of those bytes)
    <key>.query.<ext>   raw image bytes of each side that has an image; ext from the stored format
    <key>.target.<ext>
    <key>.neg<i>.<ext>

MMEB-V2 training pairs (`pipelines.schema.V2_TRAIN_SCHEMA`: a dataset whose parts all have it) are
sharded the same way. Their JSON holds the V2 record's fields (id, dataset, split, modality, meta_task,
query, target, negatives; each side a V2_SIDE); a side's page image is a member like any image, and a
video side's frames are members too, one per frame in temporal order:

    <key>.query.f00.<ext>, <key>.query.f01.<ext>, ...   (the `video` list's refs, each with its
                                                         `member` and `member_sha256`)

Each frame is fitted exactly as an image is (same caps, same grid). The index entry of such a dataset
adds `modality` and `videos` (video sides written; their frames count in `images`); with mined
negatives it gets none (`mined_skipped`, `MINED_SKIP_V2`: the mine stage skips V2 records).

Image bytes are the image store's bytes unchanged, except when the image has more than
`max_image_pixels` pixels (set it to the training resolution, `train.image_max_pixels`: the image is
then scaled with the collator's own rule, `images.max_pixels_size`, so training decodes a smaller file
and resizes nothing, every epoch) or its longer side exceeds `max_image_side`: then the image is
downscaled (aspect kept, bicubic as PIL's default resize; the pixel cap first, then the side cap)
and re-encoded. With `image_size_multiple` set (the processor's patch size times its merge size: 28
for Qwen2-VL / Qwen2.5-VL), every image whose sides are not already multiples of it is also resized,
each side to the nearest multiple (`images.snapped_size`; rounded down where rounding up would break
the pixel or side cap), and re-encoded: Qwen2-VL's processor then resizes nothing either, which at
about 1 MP is the largest single cost of a training loader's worker. Re-encoding: JPEG -> JPEG
q95, WebP -> WebP q95, PNG -> PNG, any other format -> PNG; EXIF and ICC profile kept. For such an
image the JSON keeps `sha256` (the image-store key, so records still join to the store), while
`width`/`height` describe the member bytes and `member_sha256` differs from `sha256`. For every other
image `member_sha256 == sha256`.

Determinism: tars are plain POSIX tars (PAX format, no compression) written with `tarfile`, every
member with mtime 0, uid/gid 0, empty uname/gname, mode 0o444; members in sample order, inside a
sample the JSON first and then the images sorted by name; JSON with sorted keys and fixed separators.
Identical inputs and params give byte-identical tars and index, whatever `workers` is.

Bounded memory: the images the records reference are first copied, one store bucket at a time, into
a temporary SQLite file (a keyed local copy: the store is bucketed by hash, records are not, so a
direct per-batch lookup would re-read whole buckets for every batch); records are then read in
parquet batches and each batch's images fetched from that copy. With `shuffle` (the params.yaml
default) a dataset's records, without their image bytes, are read into memory at once to be taken in
the shuffled order (`iter_records_in_order`: about 100 MB for MMEB-train's largest dataset).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
import re
import sqlite3
import tarfile
from concurrent.futures import as_completed
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipelines import files, workers
from pipelines.images import max_pixels_size, snapped_size
from pipelines.imagestore import StoredImage, without_pandas
from pipelines.mined import MinedJoin
from pipelines.params import Shard
from pipelines.schema import (RECORD_SCHEMA, V2_TRAIN_SCHEMA, holds_v2_pairs, is_v2_train_schema, sample_key,
                              train_parts)

log = logging.getLogger(__name__)

FORMAT = "vlm2vec-wds/1"
INDEX_FILE = "index.json"
BATCH_ROWS = 64  # records read (and their images fetched) per batch: bounds memory
# why a V2_TRAIN_SCHEMA dataset gets no mined negatives: the mine stage skips it (`trainer.mine`)
MINED_SKIP_V2 = "v2_train_schema: the mine stage does not mine video / visual-document pairs"

# PIL format name of the stored bytes -> tar member extension
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
              "TIFF": "tiff"}
# format a downscaled image is re-encoded to, and the encoder options
REENCODE = {"JPEG": ("JPEG", {"quality": 95}), "MPO": ("JPEG", {"quality": 95}),
            "WEBP": ("WEBP", {"quality": 95}), "PNG": ("PNG", {})}
REENCODE_DEFAULT = ("PNG", {})

TAR_BLOCK = tarfile.BLOCKSIZE  # 512
TAR_RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this
TAR_FORMAT = tarfile.PAX_FORMAT


# --- params -----------------------------------------------------------------------------------
def output_params(params: Shard) -> dict[str, Any]:
    """The params that determine the output bytes, as the index records them (its key names are
    part of the shard format: `max_image_side` / `max_image_pixels` hold shard.image_max_side /
    shard.image_max_pixels, resolved to a number or null). `workers` changes speed only."""
    return {"max_samples": params.max_samples, "max_bytes": params.max_bytes,
            "max_image_side": params.image_max_side, "max_image_pixels": params.image_max_pixels,
            "image_size_multiple": params.image_size_multiple, "max_rows_per_dataset": params.max_rows_per_dataset,
            "shuffle": params.shuffle, "seed": params.seed}


def selected_rows(params: Shard, dataset: str, rows: int) -> set[int] | None:
    """The row numbers (in file order) of `dataset`'s records to shard, or None for all of them:
    with `max_rows_per_dataset` below `rows`, that many drawn at random, seeded by `seed` and the
    dataset's name (the same for every run and every worker), kept in their file order (which
    `row_order` then shuffles when `shuffle` is on)."""
    if params.max_rows_per_dataset is None or rows <= params.max_rows_per_dataset:
        return None
    return set(random.Random(f"{params.seed}:{dataset}").sample(range(rows), params.max_rows_per_dataset))


def row_order(params: Shard, dataset: str, rows: int, selected: set[int] | None) -> list[int] | None:
    """With `shuffle`, the row numbers to write in a seeded random order (None: file order).
    Sources keep related rows together (e.g. several captions of one image in a row), and the
    loader's shuffle buffer only mixes within a window, so file order puts such rows into one
    batch as each other's false negatives; VLM2Vec's sampler draws from the whole dataset."""
    if not params.shuffle:
        return None
    order = sorted(selected) if selected is not None else list(range(rows))
    random.Random(f"{params.seed}:{dataset}:order").shuffle(order)
    return order


# --- records ----------------------------------------------------------------------------------
def check_schema(path: Path, schema: pa.Schema) -> None:
    """Raise ValueError unless `schema` has RECORD_SCHEMA's field names and types (in order), or is
    V2_TRAIN_SCHEMA (MMEB-V2's video and visual-document pairs, `pipelines.schema.is_v2_train_schema`)."""
    got = [(f.name, f.type) for f in schema]
    want = [(f.name, f.type) for f in RECORD_SCHEMA]
    if got != want and not is_v2_train_schema(schema):
        raise ValueError(f"{path}: schema differs from pipelines.schema.RECORD_SCHEMA (and V2_TRAIN_SCHEMA):\n"
                         f"  got  {schema}\n  want {RECORD_SCHEMA}")


def dataset_schema(dataset_dir: Path) -> pa.Schema:
    """The records' schema of one dataset, as its file names say (`pipelines.schema.holds_v2_pairs`):
    V2_TRAIN_SCHEMA for pairs-*, RECORD_SCHEMA for part-*; ValueError for a dataset without files
    or a file whose schema is not the one its name says."""
    parts = train_parts(dataset_dir)
    if not parts:
        raise ValueError(f"{dataset_dir}: no part-*.parquet or pairs-*.parquet")
    v2 = holds_v2_pairs(dataset_dir)
    for part in parts:
        schema = pq.ParquetFile(part).schema_arrow
        check_schema(part, schema)
        if is_v2_train_schema(schema) != v2:
            raise ValueError(f"{part}: holds {'RECORD_SCHEMA' if v2 else 'V2_TRAIN_SCHEMA'} records, but its name "
                             f"says {'V2_TRAIN_SCHEMA (pairs-*)' if v2 else 'RECORD_SCHEMA (part-*)'}")
    return V2_TRAIN_SCHEMA if v2 else RECORD_SCHEMA


def iter_record_batches(dataset_dir: Path, batch_rows: int = BATCH_ROWS, columns: list[str] | None = None,
                        selected: set[int] | None = None) -> Iterator[list[dict]]:
    """Yield the records of one dataset as lists of dicts, parts in name order, rows in file order
    (only the row numbers in `selected`, when given)."""
    row = 0
    for part in train_parts(dataset_dir):
        pf = pq.ParquetFile(part)
        check_schema(part, pf.schema_arrow)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            records = batch.to_pylist()
            if selected is not None:
                records = [r for i, r in enumerate(records, start=row) if i in selected]
            row += batch.num_rows
            if records:
                yield records


def iter_records_in_order(dataset_dir: Path, order: list[int], batch_rows: int = BATCH_ROWS) -> Iterator[list[dict]]:
    """Yield the records of one dataset in the row order `order` (row numbers in file order). The
    records (texts and image references, not image bytes) are read into one Arrow table: a few
    hundred bytes per record, about 100 MB for MMEB-train's largest dataset."""
    tables = []
    for part in train_parts(dataset_dir):
        pf = pq.ParquetFile(part)
        check_schema(part, pf.schema_arrow)
        tables.append(pf.read())
    table = pa.concat_tables(tables) if tables else dataset_schema(dataset_dir).empty_table()
    for start in range(0, len(order), batch_rows):
        yield table.take(order[start:start + batch_rows]).to_pylist()


def count_records(dataset_dir: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in train_parts(dataset_dir))


def record_sides(record: dict) -> list[tuple[str, dict]]:
    """(member stem, side) for query, target and each negative, in that order."""
    sides = [("query", record["query"]), ("target", record["target"])]
    sides += [(f"neg{i}", side) for i, side in enumerate(record["negatives"] or [])]
    return sides


def side_refs(side: dict | None) -> list[dict]:
    """The image refs of a side: its image, or its video's frames in order (V2_SIDE), or none."""
    if not side:
        return []
    if side.get("video"):
        return list(side["video"])
    return [side["image"]] if side.get("image") else []


def record_image_shas(record: dict) -> list[str]:
    return [ref["sha256"] for _, side in record_sides(record) for ref in side_refs(side)]


# --- local copy of the images the records need --------------------------------------------------
class ImageCache:
    """SQLite copy of the image-store rows that a set of records references, keyed by sha256.

    `build` reads each store bucket at most once (only buckets holding a needed image) and fails with
    KeyError naming the missing hashes when a referenced image is not in the store.
    """

    def __init__(self, path: str | Path, readonly: bool = True):
        self.path = Path(path)
        uri = self.path.resolve().as_uri() + ("?mode=ro" if readonly else "")
        self.db = sqlite3.connect(uri, uri=True)

    @classmethod
    def build(cls, path: str | Path, store_root: str | Path, shas: Iterable[str]) -> "ImageCache":
        path, store_root = Path(path), Path(store_root)
        if not store_root.is_dir():
            raise FileNotFoundError(f"image store {store_root} does not exist (run the normalize stage)")
        path.unlink(missing_ok=True)
        cache = cls(path, readonly=False)
        db = cache.db
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE needed (sha TEXT PRIMARY KEY)")
        db.execute("CREATE TABLE images (sha TEXT PRIMARY KEY, bytes BLOB NOT NULL, width INTEGER,"
                   " height INTEGER, format TEXT)")
        chunk: list[tuple[str]] = []
        for sha in shas:
            chunk.append((sha,))
            if len(chunk) >= 10_000:
                db.executemany("INSERT OR IGNORE INTO needed VALUES (?)", chunk)
                chunk.clear()
        db.executemany("INSERT OR IGNORE INTO needed VALUES (?)", chunk)
        db.commit()
        buckets = sorted(store_root.glob("images-*.parquet"))
        for bucket_file in tqdm(buckets, desc="copy needed images", unit="bucket", leave=False):
            bucket = bucket_file.stem.split("-", 1)[1]
            wanted = [r[0] for r in db.execute(
                "SELECT sha FROM needed WHERE sha >= ? AND sha < ?", (bucket, bucket + "\x7f"))]
            if not wanted:
                continue
            wanted_arr = pa.array(wanted, pa.string())
            for batch in pq.ParquetFile(bucket_file).iter_batches(batch_size=64):
                batch = batch.filter(pc.is_in(batch.column("sha256"), value_set=wanted_arr))
                if batch.num_rows:
                    db.executemany(
                        "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?)",
                        zip(*(batch.column(c).to_pylist()
                              for c in ("sha256", "bytes", "width", "height", "format"))))
            db.commit()
        missing = [r[0] for r in db.execute(
            "SELECT sha FROM needed WHERE sha NOT IN (SELECT sha FROM images) ORDER BY sha LIMIT 4")]
        if missing:
            n = db.execute("SELECT COUNT(*) FROM needed WHERE sha NOT IN (SELECT sha FROM images)"
                           ).fetchone()[0]
            raise KeyError(f"{n} image(s) referenced by the records are not in {store_root}: {missing}")
        db.close()
        return cls(path, readonly=True)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def get_many(self, shas: Iterable[str]) -> dict[str, StoredImage]:
        wanted = sorted(set(shas))
        found: dict[str, StoredImage] = {}
        for i in range(0, len(wanted), 500):
            keys = wanted[i:i + 500]
            rows = self.db.execute(
                f"SELECT sha, bytes, width, height, format FROM images WHERE sha IN "
                f"({','.join('?' * len(keys))})", keys)
            for sha, data, width, height, fmt in rows:
                found[sha] = StoredImage(sha, bytes(data), width, height, fmt)
        missing = set(wanted) - set(found)
        if missing:
            raise KeyError(f"{len(missing)} image(s) not in {self.path}: {sorted(missing)[:3]}")
        return found

    def close(self) -> None:
        self.db.close()


# --- images -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberImage:
    bytes: bytes
    width: int
    height: int
    ext: str
    resized: bool


def extension(fmt: str) -> str:
    ext = EXTENSIONS.get(fmt, (fmt or "").lower())
    if not re.fullmatch(r"[a-z0-9]+", ext):
        raise ValueError(f"stored image format {fmt!r} gives no usable member extension")
    return ext


def downscaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longer side == max_side and the aspect ratio kept (each side at least 1)."""
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fitted_size(width: int, height: int, max_side: int, max_pixels: int | None,
                multiple: int | None = None) -> tuple[int, int]:
    """The member size: the training resolution's rule first (`images.max_pixels_size`, so that the
    collator finds nothing left to resize), then the longer side capped at max_side, then each side
    snapped to `multiple` (`images.snapped_size`, so that the processor finds nothing left to resize)."""
    size = (width, height) if max_pixels is None else max_pixels_size(width, height, max_pixels)
    size = downscaled_size(*size, max_side) if max(size) > max_side else size
    return size if multiple is None else snapped_size(*size, multiple, max_pixels, max_side)


def fit_image(image: StoredImage, max_side: int, max_pixels: int | None = None,
              multiple: int | None = None) -> MemberImage:
    """The stored bytes unchanged when they already have `fitted_size`, else resized and re-encoded."""
    size = fitted_size(image.width, image.height, max_side, max_pixels, multiple)
    if size == (image.width, image.height):
        return MemberImage(image.bytes, image.width, image.height, extension(image.format), False)
    with Image.open(io.BytesIO(image.bytes)) as img:
        info = dict(img.info)
        if img.format in ("JPEG", "MPO"):
            img.draft(img.mode, size)  # libjpeg DCT scaling when the target allows it (fast)
        img.load()
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in info else "RGB")
        elif img.mode not in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "I", "I;16", "F"):
            img = img.convert("RGB")
        img = img.resize(size, Image.Resampling.BICUBIC)
        fmt, options = REENCODE.get(image.format, REENCODE_DEFAULT)
        if fmt == "JPEG" and img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("RGB")
        if fmt == "WEBP" and img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        options = dict(options)
        for key in ("exif", "icc_profile"):
            if info.get(key) and fmt in ("JPEG", "WEBP", "PNG"):
                options[key] = info[key]
        out = io.BytesIO()
        img.save(out, format=fmt, **options)
    return MemberImage(out.getvalue(), size[0], size[1], extension(fmt), True)


# --- samples ----------------------------------------------------------------------------------
def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class Sample:
    key: str
    members: list[tuple[str, bytes]]  # (member name, bytes), in tar order
    resized: int = 0


def build_sample(record: dict, images: dict[str, StoredImage], max_side: int,
                 max_pixels: int | None = None, multiple: int | None = None) -> Sample:
    """One record as tar members: `<key>.json` first, then the images sorted by member name. A video
    side's frames (V2_SIDE) are members `<stem>.fNN.<ext>` (NN: the frame's position, zero-padded),
    each fitted like an image; its `video` list keeps the frame refs in order, each with its member."""
    key = sample_key(record["id"])
    doc = dict(record)
    image_members: list[tuple[str, bytes]] = []
    resized = 0
    new_sides: dict[str, dict] = {}
    for stem, side in record_sides(record):
        if side is not None and side.get("video"):
            digits = max(2, len(str(len(side["video"]) - 1)))
            frames = []
            for j, ref in enumerate(side["video"]):
                member, ref, data, was_resized = _member(f"{stem}.f{j:0{digits}d}", ref, images, max_side,
                                                         max_pixels, multiple)
                image_members.append((f"{key}.{member}", data))
                frames.append(ref)
                resized += was_resized
            new_sides[stem] = {**side, "video": frames}
            continue
        if side is None or side.get("image") is None:
            new_sides[stem] = side
            continue
        member, ref, data, was_resized = _member(stem, side["image"], images, max_side, max_pixels, multiple)
        image_members.append((f"{key}.{member}", data))
        resized += was_resized
        new_sides[stem] = {**side, "image": ref}
    doc["query"], doc["target"] = new_sides["query"], new_sides["target"]
    doc["negatives"] = [new_sides[f"neg{i}"] for i in range(len(record["negatives"] or []))]
    return Sample(key, [(f"{key}.json", json_bytes(doc))] + sorted(image_members), resized)


def _member(stem: str, ref: dict, images: dict[str, StoredImage], max_side: int, max_pixels: int | None,
            multiple: int | None) -> tuple[str, dict, bytes, bool]:
    """(member name, the ref as the sample JSON holds it, member bytes, resized) of one image or frame."""
    fitted = fit_image(images[ref["sha256"]], max_side, max_pixels, multiple)
    member = f"{stem}.{fitted.ext}"
    return member, {**ref, "width": fitted.width, "height": fitted.height, "member": member,
                    "member_sha256": hashlib.sha256(fitted.bytes).hexdigest() if fitted.resized else ref["sha256"],
                    }, fitted.bytes, fitted.resized


# --- deterministic tars -----------------------------------------------------------------------
def tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def member_size(name: str, size: int) -> int:
    """Bytes a member takes in the tar: its header block(s) (PAX extended ones included) + padded data."""
    header = tar_info(name, size).tobuf(TAR_FORMAT, "utf-8", "surrogateescape")
    return len(header) + -(-size // TAR_BLOCK) * TAR_BLOCK


def tar_file_size(members_bytes: int) -> int:
    """Size of a tar whose members take `members_bytes`: + two zero end blocks, padded to a record."""
    return -(-(members_bytes + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


class _HashingWriter:
    """File wrapper that hashes and counts what tarfile writes."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.n += len(data)
        return len(data)

    def tell(self) -> int:
        return self.n


@dataclass
class ShardInfo:
    path: str  # relative to the shards root
    dataset: str
    samples: int
    bytes: int
    sha256: str
    oversize: bool  # one sample larger than max_bytes on its own


@dataclass
class DatasetShards:
    dataset: str
    meta_task: str | None = None
    distribution: str | None = None
    split: str | None = None
    samples: int = 0
    source_rows: int = 0  # normalized records before `max_rows_per_dataset`
    images: int = 0
    resized_images: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    mined: int | None = None  # with mined negatives: records that got them (`pipelines.mined`)
    unmined: int | None = None  # ... and records the mined file did not cover
    modality: str | None = None  # V2_TRAIN_SCHEMA datasets only: "image" | "video" | "visdoc"
    videos: int | None = None  # ... and the video sides written (their frames count in `images`)
    mined_skipped: str | None = None  # with mined negatives: why this dataset got none (V2 records)


class ShardWriter:
    """Writes one dataset's samples to `<root>/<dataset>/<dataset>-NNNNNN.tar`, rolling over to a new
    tar before one would exceed max_samples or max_bytes. Each tar is written under a temporary
    name and renamed when complete (`files.Pending`), so a finished name always holds a complete tar."""

    def __init__(self, root: Path, dataset: str, max_samples: int, max_bytes: int):
        self.root, self.dataset = Path(root), dataset
        self.max_samples, self.max_bytes = max_samples, max_bytes
        (self.root / dataset).mkdir(parents=True, exist_ok=True)
        self.shards: list[ShardInfo] = []
        self._tar = self._file = self._hasher = None
        self._count = self._offset = 0
        self._oversize = False

    def _open(self) -> None:
        name = f"{self.dataset}/{self.dataset}-{len(self.shards):06d}.tar"
        self._name = name
        self._pending = files.Pending(self.root / name)
        self._file = open(self._pending.path, "wb")
        self._hasher = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w", format=TAR_FORMAT, encoding="utf-8")
        self._count = self._offset = 0
        self._oversize = False

    def _finish(self) -> None:
        self._tar.close()
        self._file.close()
        size = self._hasher.n
        if size != tar_file_size(self._offset):  # the size accounting that bounds max_bytes
            raise AssertionError(f"{self._name}: wrote {size} bytes, expected {tar_file_size(self._offset)}")
        self._pending.commit()
        self.shards.append(ShardInfo(self._name, self.dataset, self._count, size,
                                     self._hasher.sha.hexdigest(), self._oversize))
        self._tar = None

    def add(self, sample: Sample) -> None:
        sizes = [member_size(name, len(data)) for name, data in sample.members]
        need = sum(sizes)
        if self._tar is not None and (self._count >= self.max_samples
                                      or tar_file_size(self._offset + need) > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._open()
            if tar_file_size(need) > self.max_bytes:
                self._oversize = True
                log.warning("%s: sample %s alone takes %d bytes > shard.max_bytes=%d; it gets its own "
                            "shard %s", self.dataset, sample.key, tar_file_size(need), self.max_bytes,
                            self._name)
        for name, data in sample.members:
            self._tar.addfile(tar_info(name, len(data)), io.BytesIO(data))
        self._offset += need
        self._count += 1

    def close(self) -> list[ShardInfo]:
        if self._tar is not None:
            self._finish()
        return self.shards


# --- one dataset ------------------------------------------------------------------------------
def shard_dataset(dataset_dir: Path, cache_path: Path, out_root: Path, params: Shard,
                  progress: bool = True, mined: Path | None = None) -> DatasetShards:
    """Write the shards of one dataset (records of `dataset_dir`, images from the cache; with `mined`,
    the mine stage's negatives joined on first, `pipelines.mined`)."""
    dataset_dir = Path(dataset_dir)
    dataset = dataset_dir.name
    result = DatasetShards(dataset)
    v2 = is_v2_train_schema(dataset_schema(dataset_dir))
    if v2:
        result.videos = 0
    join = None
    if mined is not None and v2:
        result.mined_skipped = MINED_SKIP_V2
    elif mined is not None:
        join = MinedJoin.load(mined, dataset_dir)
    cache = ImageCache(cache_path)
    writer = ShardWriter(out_root, dataset, params.max_samples, params.max_bytes)
    seen: set[str] = set()
    rows = count_records(dataset_dir)
    selected = selected_rows(params, dataset, rows)
    result.source_rows = rows
    order = row_order(params, dataset, rows, selected)
    bar = tqdm(total=rows if selected is None else len(selected), desc=f"shard {dataset}", unit="sample",
               disable=not progress, leave=False)
    batches = iter_record_batches(dataset_dir, selected=selected) if order is None else \
        iter_records_in_order(dataset_dir, order)
    try:
        for records in batches:
            if join is not None:
                records = [join(r) for r in records]
            images = cache.get_many(s for r in records for s in record_image_shas(r))
            for record in records:
                if record["dataset"] != dataset:
                    raise ValueError(f"{dataset_dir}: record {record['id']} says dataset "
                                     f"{record['dataset']!r}, not {dataset!r}")
                if record["id"] in seen:
                    raise ValueError(f"{dataset_dir}: duplicate record id {record['id']!r}")
                seen.add(record["id"])
                if result.meta_task is None:
                    result.meta_task = record["meta_task"]
                    result.distribution = record.get("distribution")  # V2 records have none
                    result.split = record["split"]
                    result.modality = record.get("modality")
                sample = build_sample(record, images, params.image_max_side, params.image_max_pixels,
                                      params.image_size_multiple)
                writer.add(sample)
                result.samples += 1
                result.images += len(sample.members) - 1
                result.resized_images += sample.resized
                if v2:
                    result.videos += sum(bool(side and side.get("video")) for _, side in record_sides(record))
            bar.update(len(records))
        result.shards = writer.close()
    finally:
        bar.close()
        cache.close()
    if result.mined_skipped:
        log.warning("%s: no mined negatives (%s)", dataset, result.mined_skipped)
    if join is not None:
        result.mined, result.unmined = join.mined, join.unmined
        if join.unmined:
            log.warning("%s: %d records have no mined negatives (not in %s): they keep their own", dataset,
                        join.unmined, mined)
    if result.samples == 0:
        log.warning("%s: no records, no shards", dataset_dir)
    log.info("%s: %d samples%s, %d images (%d downscaled) in %d shard(s)", dataset, result.samples,
             f" (drawn from {rows})" if selected is not None else "", result.images, result.resized_images,
             len(result.shards))
    return result


# --- all datasets -----------------------------------------------------------------------------
def dataset_dirs(normalized_train: Path) -> list[Path]:
    return sorted(p for p in Path(normalized_train).iterdir() if p.is_dir())


def _all_shas(dirs: list[Path], params: Shard, mined: Path | None = None) -> Iterator[str]:
    """The image shas of the records to shard (the selected ones, under `max_rows_per_dataset`), their
    mined negatives' included."""
    for d in dirs:
        join = MinedJoin.load(mined, d) if mined is not None and not is_v2_train_schema(dataset_schema(d)) else None
        selected = selected_rows(params, d.name, count_records(d))
        for records in iter_record_batches(d, 4096, ["id", "query", "target", "negatives"], selected):
            for record in records:
                yield from record_image_shas(join(record) if join is not None else record)


def build_index(params: Shard, results: list[DatasetShards]) -> dict:
    datasets = {}
    for r in results:
        datasets[r.dataset] = {
            "meta_task": r.meta_task, "distribution": r.distribution, "split": r.split,
            "samples": r.samples, "source_rows": r.source_rows, "images": r.images,
            "resized_images": r.resized_images,
            "shards": len(r.shards), "bytes": sum(s.bytes for s in r.shards),
            "oversize_shards": sum(s.oversize for s in r.shards),
        }
        if r.mined is not None:
            datasets[r.dataset].update(mined=r.mined, unmined=r.unmined)
        if r.videos is not None:  # V2_TRAIN_SCHEMA datasets (V1 entries keep their keys)
            datasets[r.dataset].update(modality=r.modality, videos=r.videos)
        if r.mined_skipped is not None:
            datasets[r.dataset]["mined_skipped"] = r.mined_skipped
    shards = [asdict(s) for r in results for s in r.shards]
    return {
        "format": FORMAT,
        "params": output_params(params),
        "datasets": datasets,
        "shards": shards,
        "total": {"datasets": len(datasets), "samples": sum(d["samples"] for d in datasets.values()),
                  "shards": len(shards), "bytes": sum(s["bytes"] for s in shards)},
    }


def shard(normalized_train: str | Path, images_root: str | Path, out_root: str | Path, params: Shard,
          mined: str | Path | None = None) -> dict:
    """The shard stage: clear `out_root` (a run killed midway and restarted ends with the same bytes)
    and write the shards and their index; return the index."""
    out_root = Path(out_root)
    if out_root.exists():
        log.info("clearing %s", out_root)
        files.remove(out_root)
    return write_shards(normalized_train, images_root, out_root, params, mined)


def write_shards(normalized_train: str | Path, images_root: str | Path, out_root: str | Path,
                 params: Shard, mined: str | Path | None = None) -> dict:
    """Shard every dataset under `normalized_train` into `out_root` and write `out_root/index.json`.
    With `mined` (the mine stage's data/mined) every record's mined negatives come first.

    `out_root` must be absent or empty. Returns the index. Raises on a schema mismatch, a record
    whose image is not in the store, a duplicate record id, or a record of another dataset.
    """
    normalized_train, out_root = Path(normalized_train), Path(out_root)
    if not normalized_train.is_dir():
        raise FileNotFoundError(f"{normalized_train} does not exist (run the normalize stage)")
    if out_root.exists() and any(out_root.iterdir()):
        raise FileExistsError(f"{out_root} is not empty; clear it first")
    dirs = dataset_dirs(normalized_train)
    if not dirs:
        raise FileNotFoundError(f"no dataset folders under {normalized_train}")
    out_root.mkdir(parents=True, exist_ok=True)
    work = out_root / ".work"
    work.mkdir()
    cache_path = work / "images.sqlite"
    parallel = params.workers > 1 and len(dirs) > 1
    try:
        with ExitStack() as stack:
            if parallel:  # start the workers now: they import while this process copies the images
                ex = stack.enter_context(workers.process_pool(min(params.workers, len(dirs)),
                                                              initializer=without_pandas))
                for _ in range(min(params.workers, len(dirs))):
                    ex.submit(os.getpid)
            mined = Path(mined) if mined is not None else None
            cache = ImageCache.build(cache_path, images_root, _all_shas(dirs, params, mined))
            log.info("copied %d referenced images from %s", len(cache), images_root)
            cache.close()
            results: dict[str, DatasetShards] = {}
            if not parallel:
                for d in dirs:
                    results[d.name] = shard_dataset(d, cache_path, out_root, params, mined=mined)
            else:
                counts = {d: min(count_records(d), params.max_rows_per_dataset or math.inf) for d in dirs}
                with tqdm(total=sum(counts.values()), desc="shard", unit="sample") as bar:
                    futures = [ex.submit(shard_dataset, d, cache_path, out_root, params, False, mined)
                               for d in sorted(dirs, key=lambda d: (-counts[d], d.name))]  # big first
                    for fut in as_completed(futures):
                        r = fut.result()
                        results[r.dataset] = r
                        bar.update(r.samples)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    index = build_index(params, [results[d.name] for d in dirs])
    files.write_json(out_root / INDEX_FILE, index, sort_keys=True, indent=1)
    t = index["total"]
    log.info("wrote %d samples of %d datasets in %d shards (%.1f MB) to %s", t["samples"],
             t["datasets"], t["shards"], t["bytes"] / 1e6, out_root)
    return index


def read_index(out_root: str | Path) -> dict:
    with open(Path(out_root) / INDEX_FILE, encoding="utf-8") as f:
        index = json.load(f)
    if index.get("format") != FORMAT:
        raise ValueError(f"{out_root}/{INDEX_FILE}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index
