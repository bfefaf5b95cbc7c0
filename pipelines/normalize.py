"""Normalize raw MMEB (Hub layout) into unified records, a content-addressed image store and rejects.

Input  (the Hub layout): <raw>/MMEB-train/<Subset>/<split>-*.parquet (+ images_zip/<Subset>.zip),
       <raw>/MMEB-eval/<Dataset>/test-*.parquet (+ images.zip), <raw>/manifest.json.
Output (pipelines/schema.py):
       <out>/{train,eval}/<dataset>/part-NNNNN.parquet   RECORD_SCHEMA, source row order
       <out>/images/images-XX.parquet                     IMAGE_SCHEMA, via pipelines/imagestore.py
       <rejects>/{train,eval}/<dataset>.parquet          REJECT_SCHEMA, only for datasets with rejects
       metrics json                                       per "<train|eval>/<dataset>" and in total

Every source row ends up either as a record or as a reject (rows_in == accepted + rejected, checked
before the metrics are written). Reject reasons:
    text_not_utf8, bad_schema, duplicate_id, empty_query, empty_target,
    empty_candidate, no_candidates, candidate_length_mismatch, image_token_without_image,
    and the image reasons of pipelines/images.py (image_missing, image_unsafe_member, image_corrupt,
    archive_unreadable, image_empty, image_undecodable, image_truncated, image_too_large); the detail
    names the side ("query", "target", "candidate 3") and the image path.
Quirks that are kept and counted, not rejected:
    stray_image_token    a QUERY with "<|image_1|>" but no image path in a dataset whose queries are
                         text (WebQA/EDIS keep the token on text-only queries): raw kept, has_image_token true, image
                         null. On target/negative/candidate sides, and on the queries of datasets
                         whose queries have an image (pipelines/mmeb.py), the image IS the content,
                         so a token without a path is a reject (image_token_without_image).
    image_without_token  an image path on a side whose text has no "<|image_1|>": the image is kept
                         (has_image_token false); renderers must place the image token themselves.
    instruction_fallback query sides whose instruction was found by the ": " / whole-string fallback.
    composition_mismatches  sides where compose(template, instruction, text) != raw (0 expected).
    negative_dropped     a train row's hard negative that would be a reject for any of the reasons
                         above (empty, image token without image, bad image): negatives are
                         optional, so the pair is kept without it.

Determinism: each dataset is processed by one task in source order and writes its own files
(temporary name + rename); images are merged by sha256; so the bytes do not depend on the number of
workers or on scheduling. Outputs of a previous (possibly killed) run are removed at the start.
Memory is bounded: parquet is streamed in batches, parts and rejects are written incrementally,
images spill through ImageStoreWriter, and the image cache is a bounded LRU.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue as queue_mod
import shutil
from collections import Counter, OrderedDict
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipelines import errors, files, imagestore, mmeb, workers
from pipelines.errors import Rejected, StageFailed
from pipelines.params import Normalize
from pipelines.normalize_v2 import normalize_v2, problems as v2_problems
from pipelines.normalize_v2_train import normalize_v2_train, problems as v2_train_problems
from pipelines.images import ImageSource, pil_limits, prepare_image
from pipelines.prompts import compose, split_side
from pipelines.schema import (EVAL_COLUMNS, IMAGE_TOKEN, RECORD_SCHEMA, REJECT_SCHEMA, TRAIN_COLUMNS,
                              record_id)

log = logging.getLogger(__name__)

KINDS = ("train", "eval")
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True,
                       write_statistics=True)
IMAGE_CACHE_ENTRIES = 100_000
ROW_CHUNK = 64  # rows converted to Python objects at a time
FLUSH_SIDES = 65_536  # records are flushed to a row group once they hold this many sides
QUIRKS = ("stray_image_token", "image_without_token", "instruction_fallback", "composition_mismatches",
          "negative_dropped")


# --------------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class DatasetTask:
    """Everything one worker needs (plain values only: picklable under spawn)."""

    kind: str  # "train" | "eval"
    dataset: str
    split: str  # "original" | "diverse_instruction" | "test"
    files: tuple[str, ...]
    rows: int
    raw_root: str
    out_root: str
    rejects_root: str
    image_reject_pixels: int
    rows_per_part: int
    batch_rows: int

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.dataset}"


def train_split_of(raw_root: Path) -> str:
    """The train split to normalize: from manifest.json (repos["MMEB-train"].split or "split", as
    stages/download.py writes it) when it names one, else the single split present under MMEB-train/
    (an error when several are present and the manifest is silent)."""
    manifest = raw_root / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text(encoding="utf-8"))
        train_repo = (m.get("repos") or {}).get("MMEB-train") or {}
        for candidate in (train_repo.get("split"), m.get("split"), m.get("train_split")):
            if candidate:
                return str(candidate)
    present = {p.name.split("-")[0] for p in (raw_root / "MMEB-train").glob("*/*.parquet")}
    present &= set(mmeb.TRAIN_SPLITS)
    if len(present) > 1:
        raise ValueError(f"{raw_root}/MMEB-train holds splits {sorted(present)} and manifest.json "
                         f"names none; expected one")
    return present.pop() if present else mmeb.TRAIN_SPLITS[0]


def _num_rows(path: str) -> int:
    """Rows in a parquet file from its footer; 0 for an unreadable file (its task then fails and the
    stage reports it, rather than crashing before any dataset ran)."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        log.error("cannot read %s: %s", path, e)
        return 0


def discover(raw_root: str | Path, out_root: str | Path, rejects_root: str | Path,
             params: Normalize) -> list[DatasetTask]:
    """One task per dataset found in the raw layout, sorted by (kind, dataset).

    Raises ValueError naming datasets the registry (pipelines/mmeb.py) does not know."""
    raw_root = Path(raw_root)
    tasks, unknown = [], []
    layouts = [("train", raw_root / "MMEB-train", None), ("eval", raw_root / "MMEB-eval", mmeb.EVAL_SPLIT)]
    for kind, folder, split in layouts:
        if not folder.is_dir():
            log.warning("no %s folder %s", kind, folder)
            continue
        if split is None:
            split = train_split_of(raw_root)
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "images_zip"):
            files = tuple(str(f) for f in sorted(d.glob(f"{split}-*.parquet")))
            if not files:
                continue
            try:
                mmeb.lookup(d.name, split)
            except KeyError:
                unknown.append(f"{kind}/{d.name}")
                continue
            rows = sum(_num_rows(f) for f in files)
            tasks.append(DatasetTask(kind, d.name, split, files, rows, str(raw_root), str(out_root),
                                     str(rejects_root), params.image_reject_pixels, params.rows_per_part,
                                     params.batch_rows))
    if unknown:
        raise ValueError(f"datasets unknown to pipelines/mmeb.py: {unknown}; register them or leave "
                         f"them out of data.train_subsets / data.eval_subsets")
    return tasks


# --------------------------------------------------------------------------------------------
# reading raw rows


def _decode(value, column: str) -> str:
    if value is None:
        return ""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("text_not_utf8", f"column {column}: {e}") from e


def _lenient(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_lenient(v) for v in value]
    return value


def row_json(values: dict) -> str:
    """The source row as JSON; undecodable bytes are shown with backslash escapes."""
    return json.dumps({k: _lenient(v) for k, v in values.items()}, ensure_ascii=False, sort_keys=True)


def iter_source_rows(files: tuple[str, ...], kind: str, batch_rows: int
                     ) -> Iterator[tuple[int, dict, str | None]]:
    """Yield (row index, {column: bytes | None | list}, schema error or None) over the files in order.

    String columns are read as raw bytes (no UTF-8 validation yet); a batch whose columns are missing
    or of the wrong type yields its rows with a schema error instead of raising."""
    columns = TRAIN_COLUMNS if kind == "train" else EVAL_COLUMNS
    list_columns = () if kind == "train" else ("tgt_text", "tgt_img_path")
    index = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows):
            error, arrays = None, {}
            missing = [c for c in columns if c not in batch.schema.names]
            if missing:
                error = f"{Path(path).name}: missing columns {missing}"
            else:
                for c in columns:
                    target = pa.list_(pa.binary()) if c in list_columns else pa.binary()
                    try:
                        arrays[c] = batch.column(c).cast(target)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                        error = f"{Path(path).name}: column {c} of type {batch.schema.field(c).type}: {e}"
                        break
            for start in range(0, batch.num_rows, ROW_CHUNK):
                n = min(ROW_CHUNK, batch.num_rows - start)
                if error:
                    chunk = batch.slice(start, n)
                    cols = {name: _safe_pylist(chunk.column(name)) for name in chunk.schema.names}
                    for i in range(n):
                        yield index, {c: cols[c][i] for c in cols}, error
                        index += 1
                    continue
                cols = {c: arrays[c].slice(start, n).to_pylist() for c in columns}
                for i in range(n):
                    yield index, {c: cols[c][i] for c in columns}, None
                    index += 1


def _safe_pylist(array: pa.Array) -> list:
    """Python values of a column of unexpected type, for the reject record (strings as bytes)."""
    for target in (pa.binary(), pa.list_(pa.binary())):
        try:
            return array.cast(target).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    try:
        return [v if isinstance(v, (int, float, bool, type(None))) else str(v) for v in array.to_pylist()]
    except Exception:  # noqa: BLE001 - a column we cannot even print: say so in the reject record
        return [f"<unreadable {array.type}>"] * len(array)


# --------------------------------------------------------------------------------------------
# writing


class PartWriter:
    """Writes records to part-NNNNN.parquet files of `rows_per_part` rows, each through a temporary
    name that is renamed when the part is complete (`files.Pending`)."""

    def __init__(self, folder: Path, rows_per_part: int):
        self.folder = folder
        self.rows_per_part = rows_per_part
        self.parts: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._pending: files.Pending | None = None
        self._rows_in_part = 0

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"part-{len(self.parts):05d}.parquet"
        self._pending = files.Pending(final)
        self._writer = pq.ParquetWriter(self._pending.path, RECORD_SCHEMA, **PARQUET_OPTIONS)
        self._rows_in_part = 0
        self.parts.append(str(final))

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._pending.commit()
            self._writer = None

    def write(self, records: list[dict]) -> None:
        while records:
            if self._writer is None:
                self._open()
            room = self.rows_per_part - self._rows_in_part
            head, records = records[:room], records[room:]
            self._writer.write_table(pa.Table.from_pylist(head, schema=RECORD_SCHEMA))
            self._rows_in_part += len(head)
            if self._rows_in_part >= self.rows_per_part:
                self._finish()

    def close(self) -> list[str]:
        self._finish()
        return self.parts


class RejectWriter:
    """Streams rejects of one dataset to <rejects>/<kind>/<dataset>.parquet (created on first use)."""

    def __init__(self, path: Path, buffer_rows: int = 256):
        self.path = path
        self.buffer_rows = buffer_rows
        self._rows: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._pending = files.Pending(path)

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.buffer_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._pending.path, REJECT_SCHEMA, **PARQUET_OPTIONS)
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=REJECT_SCHEMA))
        self._rows = []

    def close(self) -> str | None:
        self._flush()
        if self._writer is None:
            return None
        self._writer.close()
        return str(self._pending.commit())


# --------------------------------------------------------------------------------------------
# one dataset


@dataclass
class DatasetStats:
    rows_in: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    converted: int = 0
    images: int = 0
    quirks: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        d = dict(rows_in=self.rows_in, accepted=self.accepted, rejected=self.rejected,
                 rejected_by_reason=dict(sorted(self.rejected_by_reason.items())),
                 converted=self.converted, images=self.images)
        d.update({q: self.quirks.get(q, 0) for q in QUIRKS})
        return d


class DatasetNormalizer:
    """Turns the source rows of one dataset into records and rejects (see the module doc)."""

    def __init__(self, task: DatasetTask, images: ImageSource, store: imagestore.ImageStoreWriter):
        self.task = task
        self.info = mmeb.lookup(task.dataset, task.split)
        self.images = images
        self.store = store
        self.stats = DatasetStats()
        self._cache: OrderedDict[str, dict | tuple[str, str]] = OrderedDict()  # path -> ref | (reason, detail)
        self._pending: dict[str, tuple] = {}  # this row's new images: path -> (PreparedImage, ref)
        self._last_index = -1

    # -- images --
    def image_ref(self, path: str, side: str) -> dict:
        """The image reference of `path`; raises Rejected for a bad image. A new image goes to
        the store only with its row (`_commit_images`): a row rejected later leaves none behind."""
        hit = self._cache.get(path)
        if hit is None and path in self._pending:
            hit = self._pending[path][1]
        elif hit is None:
            try:
                prepared = prepare_image(self.images.read(path), self.task.image_reject_pixels)
            except Rejected as e:
                hit = (e.reason, e.detail)  # not the exception: its traceback would pin the bytes
                self._remember(path, hit)
            else:
                s = prepared.stored
                hit = dict(sha256=s.sha256, path=path, width=s.width, height=s.height)
                self._pending[path] = (prepared, hit)
        else:
            self._cache.move_to_end(path)
        if isinstance(hit, tuple):
            reason, detail = hit
            raise Rejected(reason, f"{side} image {path!r}: {detail}")
        return hit

    def _remember(self, path: str, hit: dict | tuple[str, str]) -> None:
        self._cache[path] = hit
        if len(self._cache) > IMAGE_CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _commit_images(self) -> None:
        for path, (prepared, hit) in self._pending.items():
            self.store.add(prepared.stored)
            self.stats.images += 1
            self.stats.converted += prepared.converted
            self._remember(path, hit)
        self._pending.clear()

    # -- sides --
    def side(self, raw: str, path: str, role: str, name: str, quirks: Counter) -> dict:
        """One SIDE struct; raises Rejected for an empty side or a bad image."""
        has_token = IMAGE_TOKEN in raw
        if not raw.replace(IMAGE_TOKEN, "").strip() and not path:
            raise Rejected(f"empty_{name.split()[0]}", f"{name}: no text and no image ({raw!r})")
        if has_token and not path:
            if role == "query" and "I" not in self.info.query:  # WebQA/EDIS: text-only queries
                quirks["stray_image_token"] += 1
            else:
                raise Rejected("image_token_without_image",
                                  f"{name} text has {IMAGE_TOKEN} but no image path")
        if path and not has_token:
            quirks["image_without_token"] += 1
        split = split_side(raw, role)
        if role == "query" and split.method.startswith("fallback"):
            quirks["instruction_fallback"] += 1
        if compose(split.template, split.instruction, split.text) != raw:
            quirks["composition_mismatches"] += 1
        image = self.image_ref(path, name) if path else None
        return dict(raw=raw, instruction=split.instruction, text=split.text,
                    has_image_token=split.has_image_token, template=split.template, image=image)

    # -- rows --
    def record(self, index: int, values: dict) -> tuple[dict, Counter]:
        if index <= self._last_index:
            raise Rejected("duplicate_id", f"row index {index} repeats or goes back "
                                              f"(last was {self._last_index})")
        self._last_index = index
        self._pending.clear()  # images of a row rejected before
        quirks: Counter = Counter()
        if self.task.kind == "train":
            v = {c: _decode(values[c], c) for c in TRAIN_COLUMNS if not c.startswith("neg_")}
            query = self.side(v["qry"], v["qry_image_path"], "query", "query", quirks)
            target = self.side(v["pos_text"], v["pos_image_path"], "target", "target", quirks)
            negatives = []
            try:  # an optional hard negative: a bad one is dropped, the pair kept
                neg_text, neg_path = (_decode(values[c], c) for c in ("neg_text", "neg_image_path"))
                if neg_text or neg_path:
                    neg_quirks: Counter = Counter()  # counted only for a negative that is kept
                    negatives.append(self.side(neg_text, neg_path, "target", "negative", neg_quirks))
                    quirks.update(neg_quirks)
            except Rejected as e:
                quirks["negative_dropped"] += 1
                log.debug("%s row %d: negative dropped (%s)", self.task.key, index, e)
        else:
            qry_text, qry_path = _decode(values["qry_text"], "qry_text"), _decode(values["qry_img_path"],
                                                                                   "qry_img_path")
            texts, paths = values["tgt_text"] or [], values["tgt_img_path"] or []
            if len(texts) != len(paths):
                raise Rejected("candidate_length_mismatch",
                                  f"{len(texts)} tgt_text vs {len(paths)} tgt_img_path")
            if not texts:
                raise Rejected("no_candidates", "empty candidate lists")
            query = self.side(qry_text, qry_path, "query", "query", quirks)
            candidates = [
                self.side(_decode(t, f"tgt_text[{i}]"), _decode(p, f"tgt_img_path[{i}]"), "target",
                          f"candidate {i}", quirks)
                for i, (t, p) in enumerate(zip(texts, paths))
            ]
            target, negatives = candidates[0], candidates[1:]
        rec = dict(id=record_id(self.task.dataset, self.task.split, index), dataset=self.task.dataset,
                   split=self.task.split, meta_task=self.info.meta_task,
                   distribution=self.info.distribution, instruction=query["instruction"], query=query,
                   target=target, negatives=negatives)
        self._commit_images()
        return rec, quirks

    def reject_row(self, index: int, reason: str, detail: str, values: dict) -> dict:
        return dict(id=record_id(self.task.dataset, self.task.split, index), dataset=self.task.dataset,
                    split=self.task.split, reason=reason, detail=detail, row=row_json(values))


def normalize_dataset(task: DatasetTask, progress: Callable[[int], None] | None = None) -> dict:
    """Normalize one dataset; return {"key", "stats", "parts", "rejects"}. Spawn-safe (top level)."""
    with pil_limits(task.image_reject_pixels):
        return _normalize_dataset(task, progress)


def _normalize_dataset(task: DatasetTask, progress: Callable[[int], None] | None) -> dict:
    images = ImageSource(task.raw_root, task.kind, task.dataset)
    store = imagestore.ImageStoreWriter(Path(task.out_root) / "images", f"{task.kind}-{task.dataset}")
    norm = DatasetNormalizer(task, images, store)
    parts = PartWriter(Path(task.out_root) / task.kind / task.dataset, task.rows_per_part)
    rejects = RejectWriter(Path(task.rejects_root) / task.kind / f"{task.dataset}.parquet")
    stats = norm.stats
    pending: list[dict] = []
    pending_sides = 0
    since_progress = 0
    for index, values, schema_error in iter_source_rows(task.files, task.kind, task.batch_rows):
        stats.rows_in += 1
        try:
            if schema_error:
                raise Rejected("bad_schema", schema_error)
            rec, quirks = norm.record(index, values)
        except Rejected as e:
            stats.rejected += 1
            stats.rejected_by_reason[e.reason] += 1
            rejects.add(norm.reject_row(index, e.reason, e.detail, values))
        else:
            stats.accepted += 1
            stats.quirks.update(quirks)
            pending.append(rec)
            pending_sides += 2 + len(rec["negatives"])
            if len(pending) >= task.batch_rows or pending_sides >= FLUSH_SIDES:
                parts.write(pending)
                pending, pending_sides = [], 0
        since_progress += 1
        if progress and since_progress >= ROW_CHUNK:
            progress(since_progress)
            since_progress = 0
    parts.write(pending)
    if progress and since_progress:
        progress(since_progress)
    store.close()
    images.close()
    result = dict(key=task.key, stats=stats.as_dict(), parts=parts.close(), rejects=rejects.close())
    log.info("%s: %d in, %d accepted, %d rejected %s", task.key, stats.rows_in, stats.accepted,
             stats.rejected, dict(stats.rejected_by_reason) or "")
    return result


# --------------------------------------------------------------------------------------------
# the whole stage


_PROGRESS = None  # in a worker: the queue its rows/s progress goes to (set by `_start_worker`)


def _start_worker(progress_queue) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue
    imagestore.without_pandas()


def _report(n: int) -> None:
    workers.check_parent()  # a worker whose run was killed stops instead of writing on into the outputs
    _PROGRESS.put(n)


def _run_task(task: DatasetTask, progress: Callable[[int], None] = _report) -> dict:
    """Run one dataset and report its progress. An unreadable parquet file etc. is reported as that
    dataset's error, and the stage fails naming it; what the surroundings refused (a full disk, a
    read-only folder: `errors.ENVIRONMENT`) is raised, and stops the stage at once."""
    try:
        return normalize_dataset(task, progress=progress)
    except Exception as e:  # noqa: BLE001
        if (found := errors.os_error(e)) and found[0] in errors.ENVIRONMENT:
            raise  # a full disk or a read-only folder is the stage's failure, not the dataset's
        log.exception("%s failed", task.key)
        return dict(key=task.key, error=f"{type(e).__name__}: {e}")


def run_tasks(tasks: list[DatasetTask], n_workers: int, images_root: Path | None = None
              ) -> tuple[list[dict], int | None]:
    """Run the tasks (in `n_workers` processes when > 1, `pipelines.workers.process_pool`) with a
    rows/s progress bar; then, when `images_root` is given, merge the image store there with the
    same processes (its hash ranges in parallel). Returns the task results and the number of
    distinct images stored (None without `images_root`)."""
    results = []
    order = sorted(tasks, key=lambda t: (-t.rows, t.key))  # big first: better packing
    with tqdm(total=sum(t.rows for t in tasks), unit="rows", desc="normalize", dynamic_ncols=True) as bar:
        if n_workers <= 1 or len(tasks) <= 1:
            results = [_run_task(t, bar.update) for t in order]
            return results, imagestore.merge(images_root) if images_root else None
        progress = multiprocessing.get_context("spawn").Queue()
        with workers.process_pool(min(n_workers, len(tasks)), initializer=_start_worker,
                                  initargs=(progress,)) as pool:
            futures = {pool.submit(_run_task, t) for t in order}
            while futures:
                done, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                results.extend(f.result() for f in done)
                while True:
                    try:
                        bar.update(progress.get_nowait())
                    except queue_mod.Empty:
                        break
            stored = (imagestore.merge(images_root, min_ranges=2 * n_workers, map_fn=pool.map)
                      if images_root else None)
        progress.close()
    return results, stored


def build_metrics(tasks: list[DatasetTask], results: list[dict], images_stored: int) -> dict:
    """Per-dataset and total counts; asserts rows_in == accepted + rejected everywhere."""
    datasets, errors = {}, {}
    total = DatasetStats()
    for r in sorted(results, key=lambda r: r["key"]):
        if "error" in r:
            errors[r["key"]] = r["error"]
            continue
        s = r["stats"]
        assert s["rows_in"] == s["accepted"] + s["rejected"], (r["key"], s)
        assert s["rejected"] == sum(s["rejected_by_reason"].values()), (r["key"], s)
        s["reject_fraction"] = round(s["rejected"] / s["rows_in"], 6) if s["rows_in"] else 0.0
        datasets[r["key"]] = s
        total.rows_in += s["rows_in"]
        total.accepted += s["accepted"]
        total.rejected += s["rejected"]
        total.rejected_by_reason.update(s["rejected_by_reason"])
        total.converted += s["converted"]
        total.images += s["images"]
        total.quirks.update({q: s[q] for q in QUIRKS})
    t = total.as_dict()
    del t["images"]  # per-dataset image loads overlap across datasets; images_stored is exact
    t["images_stored"] = images_stored
    t["reject_fraction"] = round(t["rejected"] / t["rows_in"], 6) if t["rows_in"] else 0.0
    assert t["rows_in"] == t["accepted"] + t["rejected"], t
    metrics = dict(total=t, datasets=datasets)
    if errors:
        metrics["errors"] = errors
    missing = sorted({task.key for task in tasks} - {r["key"] for r in results})
    if missing:
        metrics.setdefault("errors", {}).update({k: "no result" for k in missing})
    return metrics


def normalize(raw_root: str | Path, out_root: str | Path, rejects_root: str | Path, metrics_path: str | Path,
              params: Normalize) -> dict:
    """The normalize stage: clear old outputs, normalize every dataset, merge the image store, write
    the metrics; return them. Raises StageFailed after writing everything when the failure policy
    (`failure_message`) says so."""
    metrics = run(raw_root, out_root, rejects_root, metrics_path, params)
    total = metrics["total"]
    log.info("%d rows in, %d accepted, %d rejected (%.2f%%), %d images stored, %d converted",
             total["rows_in"], total["accepted"], total["rejected"], 100 * total["reject_fraction"],
             total["images_stored"], total["converted"])
    problem = failure_message(metrics, params.max_reject_fraction,
                              max_dataset_reject_fraction=params.max_dataset_reject_fraction)
    problem = "\n".join(p for p in (problem, *v2_problems(metrics.get("v2", {})),
                                     *v2_train_problems(metrics.get("v2_train", {}),
                                                        params.max_dataset_reject_fraction)) if p) or None
    if problem:
        raise StageFailed(f"{problem}\n(see {metrics_path} and {rejects_root})")
    return metrics


def run(raw_root: str | Path, out_root: str | Path, rejects_root: str | Path,
        metrics_path: str | Path, params: Normalize) -> dict:
    """`normalize` without its failure policy: clear old outputs, normalize every dataset, merge the
    image store, write the metrics; return the metrics."""
    raw_root, out_root, rejects_root = Path(raw_root), Path(out_root), Path(rejects_root)
    tasks = discover(raw_root, out_root, rejects_root, params)
    if not tasks:
        raise FileNotFoundError(f"no MMEB parquet files under {raw_root} (run the download stage)")
    for stale in (out_root, rejects_root):  # outputs of an earlier or interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    for folder in (out_root / "images", *(out_root / k for k in KINDS), *(rejects_root / k for k in KINDS)):
        folder.mkdir(parents=True)  # DVC outs must exist even when a kind has no data or no rejects
    log.info("normalizing %d datasets, %d rows, %d workers", len(tasks), sum(t.rows for t in tasks),
             params.workers)
    v2 = normalize_v2(raw_root, out_root, rejects_root, params)  # MMEB-V2 (data.benchmark v2/both), else {}
    v2_train = normalize_v2_train(raw_root, out_root, rejects_root, params)  # VLM2Vec-V2's sources, else {}
    results, images_stored = run_tasks(tasks, params.workers, images_root=out_root / "images")
    metrics = build_metrics(tasks, results, images_stored)
    if v2:
        metrics["v2"] = v2
    if v2_train:
        metrics["v2_train"] = v2_train
    files.write_json(Path(metrics_path), metrics, sort_keys=True)
    return metrics


def _top_reasons(stats: dict, top: int = 3) -> str:
    """A dataset's most frequent reject reasons with their counts, e.g. "image_missing 6, empty_query 1"."""
    ranked = sorted(stats["rejected_by_reason"].items(), key=lambda x: -x[1])[:top]
    return ", ".join(f"{reason} {n}" for reason, n in ranked)


def failure_message(metrics: dict, max_reject_fraction: float, worst: int = 5,
                    max_dataset_reject_fraction: float = 1.0) -> str | None:
    """Why the stage must fail (dataset errors, a dataset without source rows, too many rejects in
    all naming the worst datasets, or a dataset rejecting more than `max_dataset_reject_fraction` of
    its rows: one bad image of an eval candidate pool rejects every query whose list holds it, which
    the total hides), or None when it passes."""
    problems = []
    for key, err in sorted(metrics.get("errors", {}).items()):
        problems.append(f"{key} failed: {err}")
    for key, s in sorted(metrics["datasets"].items()):
        if not s["rows_in"]:  # no part files: train and evaluate would leave it out without a word
            problems.append(f"{key}: its source parquet holds no rows")
        elif s["reject_fraction"] > max_dataset_reject_fraction:
            problems.append(f"{key}: {s['rejected']}/{s['rows_in']} rows rejected ({s['reject_fraction']:.2%}) > "
                            f"normalize.max_dataset_reject_fraction {max_dataset_reject_fraction:.2%} "
                            f"({_top_reasons(s)})")
    total = metrics["total"]
    if total["rows_in"] and total["reject_fraction"] > max_reject_fraction:
        ranked = sorted(metrics["datasets"].items(),
                        key=lambda kv: (-kv[1]["reject_fraction"], -kv[1]["rejected"], kv[0]))
        lines = []
        for key, s in ranked[:worst]:
            if not s["rejected"]:
                break
            lines.append(f"  {key}: {s['rejected']}/{s['rows_in']} rejected ({_top_reasons(s)})")
        problems.append(f"{total['rejected']}/{total['rows_in']} rows rejected "
                        f"({total['reject_fraction']:.2%}) > normalize.max_reject_fraction "
                        f"{max_reject_fraction:.2%}; worst datasets:\n" + "\n".join(lines))
    return "\n".join(problems) if problems else None
