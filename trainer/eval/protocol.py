"""MMEB evaluation: load eval records, encode each distinct item once, score, aggregate.

Protocol (MMEB V1, as in the VLM2Vec paper and its official evaluation code):

* every row carries its own candidate list `[target] + negatives`, gold at index 0;
* a query is scored against its own candidates by the cosine of L2-normalised embeddings; it is a hit
  (Precision@1) when the FIRST maximum is at index 0 (np.argmax semantics, as the official code: a
  duplicate of the gold elsewhere in the list ties and counts as correct);
* also hit@5, MRR and NDCG@5 (linear gain; one relevant item) from the gold's rank, where ties are
  broken in favour of the gold (a stable sort, consistent with argmax for k=1);
* per dataset, then unweighted means per meta-task, over IND, over OOD and overall (all datasets).

Efficiency: items are deduplicated on the key (side raw string, image sha256), as the official code
does, but over queries and candidates together (the official code keeps one list of each): an item
that is both a query and a candidate is encoded once. Items
are encoded in batches bucketed by modality (text / image / image+text) and size, vectors can come
from an `EmbeddingCache`, and under torchrun the batches are split across ranks and gathered on rank 0
(the batches are planned once for the whole job, so every item is encoded in the same batch whatever
the world size: the vectors are identical to a one-process run).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipelines import mmeb
from pipelines.imagestore import ImageStore
from pipelines.schema import RECORD_SCHEMA
from trainer.model.inputs import resize_to_max_pixels

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "image+text", "video")  # batch buckets, in encoding order


class Encoder(Protocol):
    """What evaluation needs from a model (`trainer.embed.EmbeddingModel` satisfies it)."""

    fingerprint: str

    def encode(self, sides: list[dict], images: list[Image.Image | None], batch_size: int = ...) -> np.ndarray:
        """float32 [len(sides), D] embeddings, one per side (L2-normalised by contract)."""


# --- records -> distinct items -------------------------------------------------------------------
@dataclass
class EvalSet:
    """One eval dataset reduced to its distinct items and per-row candidate index lists.

    `items[i]` is a side dict (RECORD_SCHEMA SIDE); `keys[i]` its content hash (sha256 of raw + NUL +
    image sha256). Row r's query is item `query_item[r]`; its candidates, in source order with the gold
    first, are `cand_item[cand_offsets[r]:cand_offsets[r + 1]]`.
    """

    dataset: str
    meta_task: str
    distribution: str
    row_ids: list[str]
    items: list[dict]
    keys: list[str]
    query_item: np.ndarray
    cand_offsets: np.ndarray
    cand_item: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.row_ids)

    @property
    def candidates_per_query(self) -> np.ndarray:
        return np.diff(self.cand_offsets)

    @property
    def distinct_queries(self) -> int:
        return int(np.unique(self.query_item).size)

    @property
    def distinct_candidates(self) -> int:
        return int(np.unique(self.cand_item).size)

    @property
    def naive_encodings(self) -> int:
        """Encoder calls of the per-row approach: each row's query and all its candidates."""
        return self.n_queries + int(self.cand_item.size)

    @property
    def dedup_encodings(self) -> int:
        """Encoder calls with deduplication and a cold (or no) cache: the distinct items."""
        return len(self.items)


def content_key(raw: str, image_sha256: str | None) -> str:
    """The cache key of an item: sha256 hex of its raw side string and image hash."""
    return hashlib.sha256(f"{raw}\x00{image_sha256 or ''}".encode("utf-8")).hexdigest()


def list_datasets(root: str | Path) -> list[str]:
    """Datasets present under data/normalized/eval (folders holding part-*.parquet)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"eval records {root} do not exist (run the normalize stage)")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("part-*.parquet")))


def load_eval_set(root: str | Path, dataset: str) -> EvalSet:
    """Read data/normalized/eval/<dataset>/part-*.parquet into an EvalSet.

    Raises ValueError on records that cannot be scored (no rows, null sides or raw strings, a null
    negatives list, mixed meta-task/distribution), naming the dataset and the offending row.
    """
    files = sorted((Path(root) / dataset).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no part-*.parquet for eval dataset {dataset!r} under {root}")
    columns = ["id", "meta_task", "distribution", "query", "target", "negatives"]
    tables = []
    for f in files:
        missing = [c for c in columns if c not in pq.read_schema(f).names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing} of pipelines.schema.RECORD_SCHEMA")
        t = pq.read_table(f, columns=columns)
        for name in columns:
            want = RECORD_SCHEMA.field(name).type
            if not t.schema.field(name).type.equals(want):
                raise ValueError(f"{f}: column {name!r} has type {t.schema.field(name).type}, expected {want}")
        tables.append(t)
    table = pa.concat_tables(tables).combine_chunks()
    n = table.num_rows
    if n == 0:
        raise ValueError(f"eval dataset {dataset!r} has no rows")
    ids = table.column("id").to_pylist()

    def _check(mask: pa.Array, what: str) -> None:  # mask over rows, or over queries then targets
        bad = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
        if bad.size:
            raise ValueError(f"{dataset}: {bad.size} row(s) with {what}, e.g. {ids[bad[0] % n]}")

    meta = _single_value(table, "meta_task", dataset)
    distribution = _single_value(table, "distribution", dataset)
    _check_registry(dataset, meta, distribution)

    query = table.column("query").chunk(0)
    target = table.column("target").chunk(0)
    negatives = table.column("negatives").chunk(0)
    _check(pc.is_null(negatives), "a null negatives list")
    neg_flat = negatives.flatten()
    neg_counts = pc.list_value_length(negatives).to_numpy().astype(np.int64)
    sides = pa.concat_arrays([query, target, neg_flat])
    raw = pc.struct_field(sides, "raw")
    _check(pc.is_null(raw)[: 2 * n], "a null query/target side or raw string")
    neg_bad = pc.is_null(pc.struct_field(neg_flat, "raw")).to_numpy(zero_copy_only=False)
    if neg_bad.any():  # a null negative side or raw string: name its row
        row = int(np.searchsorted(np.cumsum(neg_counts), np.flatnonzero(neg_bad)[0], side="right"))
        raise ValueError(f"{dataset}: a null negative side or raw string, e.g. in row {ids[row]}")
    sha = pc.fill_null(pc.struct_field(sides, ["image", "sha256"]), "")
    dedup = pc.binary_join_element_wise(raw, sha, "\x00").dictionary_encode()
    codes = dedup.indices.to_numpy().astype(np.int64)
    n_items = len(dedup.dictionary)
    # items numbered in order of first appearance (stable across runs)
    _, first = np.unique(codes, return_index=True)
    order = np.argsort(first, kind="stable")
    renumber = np.empty(n_items, np.int64)
    renumber[order] = np.arange(n_items)
    codes = renumber[codes]
    first_rows = first[order]
    items = sides.take(pa.array(first_rows)).to_pylist()
    keys = [content_key(it["raw"], (it["image"] or {}).get("sha256")) for it in items]

    counts = 1 + neg_counts
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    cand = np.empty(int(offsets[-1]), np.int64)
    is_gold = np.zeros(cand.size, bool)
    is_gold[offsets[:-1]] = True
    cand[is_gold] = codes[n:2 * n]
    cand[~is_gold] = codes[2 * n:]
    return EvalSet(dataset, meta, distribution, ids, items, keys, codes[:n], offsets, cand)


def _single_value(table: pa.Table, column: str, dataset: str) -> str:
    values = [v for v in pc.unique(table.column(column)).to_pylist()]
    if len(values) != 1 or values[0] is None:
        raise ValueError(f"{dataset}: expected one {column}, found {values}")
    return values[0]


def _check_registry(dataset: str, meta: str, distribution: str) -> None:
    if meta not in mmeb.META_TASKS or distribution not in mmeb.DISTRIBUTIONS:
        raise ValueError(f"{dataset}: unknown meta_task/distribution {meta!r}/{distribution!r}")
    try:
        info = mmeb.lookup(dataset, mmeb.EVAL_SPLIT)
    except KeyError:
        log.warning("%s is not in the MMEB registry; using the records' %s/%s", dataset, meta, distribution)
        return
    if (info.meta_task, info.distribution) != (meta, distribution):
        log.warning("%s: records say %s/%s, the registry %s/%s; using the records",
                    dataset, meta, distribution, info.meta_task, info.distribution)


# --- scoring -------------------------------------------------------------------------------------
def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32). Raises on non-finite values or zero vectors."""
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} embedding(s) are zero vectors")
    return e / norms


def gold_ranks(es: EvalSet, embeddings: np.ndarray) -> np.ndarray:
    """0-based rank of the gold candidate per row: the number of candidates scoring strictly higher.

    rank == 0 exactly when np.argmax over the row's cosine scores is 0. Each distinct item is scored
    once per row, so duplicates of an item (the gold included) get bit-identical scores and tie.
    """
    e = normalize(embeddings)
    if e.shape[0] != len(es.items):
        raise ValueError(f"{es.dataset}: {e.shape[0]} embeddings for {len(es.items)} items")
    ranks = np.empty(es.n_queries, np.int64)
    for r in range(es.n_queries):
        cand = es.cand_item[es.cand_offsets[r]:es.cand_offsets[r + 1]]
        unique, inverse = np.unique(cand, return_inverse=True)
        scores = (e[unique] @ e[es.query_item[r]])[inverse]
        ranks[r] = np.count_nonzero(scores[1:] > scores[0])
    return ranks


@dataclass
class DatasetResult:
    """Scores of one model on one dataset, in percent (precision_at_1 = 100 * hits / queries)."""

    dataset: str
    meta_task: str
    distribution: str
    n_queries: int
    candidates_min: int
    candidates_max: int
    n_candidates: int  # candidate slots over all rows
    distinct_queries: int
    distinct_candidates: int
    encodings_naive: int
    encodings_dedup: int
    hits_at_1: int
    precision_at_1: float
    hit_at_5: float
    mrr: float
    ndcg_at_5: float
    source_rows: int | None = None  # the dataset's rows before normalize's rejects (metrics/etl.json), if known
    ranks: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0, np.int64))


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """hit@1, hit@5, MRR and linear NDCG@5 (percent) for 0-based gold ranks, one relevant item each."""
    ranks = np.asarray(ranks)
    top5 = ranks < 5
    ndcg = np.where(top5, 1.0 / np.log2(np.minimum(ranks, 4) + 2.0), 0.0)
    return {
        "precision_at_1": 100.0 * float(np.mean(ranks == 0)),
        "hit_at_5": 100.0 * float(np.mean(top5)),
        "mrr": 100.0 * float(np.mean(1.0 / (ranks + 1.0))),
        "ndcg_at_5": 100.0 * float(np.mean(ndcg)),
    }


def score(es: EvalSet, embeddings: np.ndarray) -> DatasetResult:
    """Score one dataset from the embeddings of its items (`embeddings[i]` belongs to `es.items[i]`)."""
    ranks = gold_ranks(es, embeddings)
    per_query = es.candidates_per_query
    return DatasetResult(
        dataset=es.dataset, meta_task=es.meta_task, distribution=es.distribution,
        n_queries=es.n_queries, candidates_min=int(per_query.min()), candidates_max=int(per_query.max()),
        n_candidates=int(per_query.sum()), distinct_queries=es.distinct_queries,
        distinct_candidates=es.distinct_candidates, encodings_naive=es.naive_encodings,
        encodings_dedup=es.dedup_encodings, hits_at_1=int(np.count_nonzero(ranks == 0)),
        ranks=ranks, **ranking_metrics(ranks),
    )


def aggregate(results: Sequence[DatasetResult], metric: str = "precision_at_1") -> dict[str, Any]:
    """Unweighted means of `metric` as in the paper: {"overall", "IND", "OOD", "meta": {task: mean}}.

    A group without datasets is left out (never NaN). Meta-tasks follow mmeb.META_TASKS order.
    """
    if not results:
        raise ValueError("nothing to aggregate")

    def mean(rs):
        return float(np.mean([getattr(r, metric) for r in rs]))

    out: dict[str, Any] = {"overall": mean(results)}
    for dist in mmeb.DISTRIBUTIONS:
        group = [r for r in results if r.distribution == dist]
        if group:
            out[dist] = mean(group)
    out["meta"] = {t: mean([r for r in results if r.meta_task == t])
                   for t in mmeb.META_TASKS if any(r.meta_task == t for r in results)}
    return out


# --- images --------------------------------------------------------------------------------------
class ImageLoader:
    """Decoded RGB images by sha256 from the image store, downscaled (aspect kept) to at most
    `max_pixels` pixels with the training collator's rule, like VLM2Vec's pre-resize before the
    processor."""

    def __init__(self, store: ImageStore | str | Path, max_pixels: int | None = None):
        self.store = store if isinstance(store, ImageStore) else ImageStore(store)
        self.max_pixels = int(max_pixels) if max_pixels else None

    def __call__(self, shas: Sequence[str]) -> dict[str, Image.Image]:
        stored = self.store.get_many(set(shas))
        out = {}
        for sha, s in stored.items():
            try:
                img = Image.open(io.BytesIO(s.bytes))
                img.load()
            except Exception as e:  # PIL raises many types for undecodable bytes
                raise ValueError(f"image {sha} in {self.store.root} cannot be decoded: {e}") from e
            out[sha] = resize_to_max_pixels(img, self.max_pixels)
        return out


# --- batch planning and (distributed) encoding -----------------------------------------------------
def modality(side: dict) -> str:
    if side.get("video"):  # a video item (MMEB-V2, native video input): its frames as `video`
        return "video"
    if side.get("image") is None:
        return "text"
    return "image+text" if (side.get("text") or "").strip() else "image"


def plan_batches(items: Sequence[dict], indices: Sequence[int], batch_size: int) -> list[list[int]]:
    """Cut `indices` (into items) into batches of at most batch_size, each of one modality, items
    sorted by image size and raw length inside a modality (similar lengths pad least). Deterministic."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def sort_key(i):
        side = items[i]
        frames = side.get("video") or [side.get("image") or {}]
        return (len(frames) * (frames[0].get("width") or 0) * (frames[0].get("height") or 0), len(side["raw"]), i)

    batches = []
    for m in MODALITIES:
        bucket = sorted((i for i in indices if modality(items[i]) == m), key=sort_key)
        batches += [bucket[k:k + batch_size] for k in range(0, len(bucket), batch_size)]
    return batches


@dataclass
class EncodeStats:
    items: int = 0
    cache_hits: int = 0
    encoded: int = 0  # items sent through the encoder by all ranks, padding excluded
    padded: int = 0  # extra encodes that only keep the ranks in step


class _Comm:
    """The few collectives encoding needs; one process needs none."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1

    def _device(self):
        import torch

        if self.dist and self.dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def broadcast_indices(self, values: np.ndarray | None) -> np.ndarray:
        if self.world == 1:
            return values
        import torch

        n = torch.tensor([0 if values is None else len(values)], dtype=torch.int64, device=self._device())
        self.dist.broadcast(n, 0)
        buf = (torch.from_numpy(values).to(self._device()) if self.rank == 0
               else torch.empty(int(n.item()), dtype=torch.int64, device=self._device()))
        self.dist.broadcast(buf, 0)
        return buf.cpu().numpy()

    def gather_rows(self, rows: np.ndarray, max_rows: int) -> list[np.ndarray] | None:
        """Every rank's [n_r, D] float32 array on rank 0 (None elsewhere); ranks pad to max_rows."""
        if self.world == 1:
            return [rows]
        import torch

        dim = torch.tensor([rows.shape[1]], dtype=torch.int64, device=self._device())
        n = torch.tensor([rows.shape[0]], dtype=torch.int64, device=self._device())
        dims = [torch.zeros_like(dim) for _ in range(self.world)]
        self.dist.all_gather(dims, dim)
        if len({int(d.item()) for d in dims}) != 1:
            raise RuntimeError(f"ranks produced different embedding sizes: {[int(d.item()) for d in dims]}")
        counts = [torch.zeros_like(n) for _ in range(self.world)]
        self.dist.all_gather(counts, n)
        padded = torch.zeros((max_rows, rows.shape[1]), dtype=torch.float32, device=self._device())
        padded[: rows.shape[0]] = torch.from_numpy(rows).to(self._device())
        out = [torch.zeros_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        self.dist.gather(padded, out, dst=0)
        if self.rank != 0:
            return None
        return [o[: int(c.item())].cpu().numpy() for o, c in zip(out, counts)]


def encode_items(
    encoder: Encoder,
    items: Sequence[dict],
    keys: Sequence[str],
    *,
    batch_size: int,
    load_images: Callable[[Sequence[str]], dict[str, Image.Image]] | None,
    cache=None,
    batches_per_flush: int = 64,
    desc: str = "encode",
) -> tuple[np.ndarray | None, EncodeStats]:
    """Embeddings [len(items), D] on rank 0 (None on other ranks) and what it took.

    Every rank plans ALL items into the same batches (`plan_batches`); rank 0 asks the cache (if any)
    which items are known, and every batch holding an unknown item is encoded whole. An item's vector
    thus always comes from the same batch, whatever the cache held before (padding changes a vector in
    its last bits, enough to reorder near-tied candidates), so cold, warm and resumed runs give the
    same metrics. The batches to encode are padded to a multiple of the world size with one-item
    batches and dealt round-robin. After every `batches_per_flush * world` batches the new vectors are
    gathered on rank 0 and written to the cache, so an interrupted run keeps its progress.
    """
    comm = _Comm()
    stats = EncodeStats(items=len(items))
    known: dict[str, np.ndarray] = {}
    missing = None
    if comm.rank == 0:
        known = cache.lookup(keys) if cache is not None else {}
        stats.cache_hits = len(known)
        missing = np.array([i for i, k in enumerate(keys) if k not in known], dtype=np.int64)
    missing = set(comm.broadcast_indices(missing).tolist())
    batches = [b for b in plan_batches(items, range(len(items)), batch_size) if any(i in missing for i in b)]
    n_real = len(batches)
    if n_real % comm.world:
        batches += [[batches[-1][0]]] * (comm.world - n_real % comm.world)
    stats.padded = sum(len(b) for b in batches[n_real:])

    new: dict[int, np.ndarray] = {}
    step = batches_per_flush * comm.world
    mine_total = len(batches[comm.rank::comm.world])
    bar = tqdm(total=mine_total, desc=desc, unit="batch", disable=comm.rank != 0 or mine_total == 0,
               leave=False)
    for start in range(0, len(batches), step):
        chunk = batches[start:start + step]
        mine = chunk[comm.rank::comm.world]
        vectors = []
        for b in mine:
            vectors.append(_encode_batch(encoder, items, b, load_images, desc))
            bar.update(1)
        local = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
        max_rows = max(sum(len(b) for b in chunk[r::comm.world]) for r in range(comm.world))
        gathered = comm.gather_rows(local, max_rows)
        if comm.rank != 0:
            continue
        fresh: dict[int, np.ndarray] = {}
        for r, rows in enumerate(gathered):
            cursor = 0
            for b_pos, b in enumerate(chunk[r::comm.world]):
                if start + r + b_pos * comm.world < n_real:  # padding batches are dropped
                    for j, i in enumerate(b):
                        fresh[i] = rows[cursor + j]
                cursor += len(b)
        new.update(fresh)
        unknown = sorted(i for i in fresh if i in missing)  # the others are cached from this same batch
        if cache is not None and unknown:
            cache.put([keys[i] for i in unknown], np.stack([fresh[i] for i in unknown]))
    bar.close()
    stats.encoded = sum(len(b) for b in batches[:n_real])
    if comm.rank != 0:
        return None, stats
    rows = [new[i] if i in new else known.get(k) for i, k in enumerate(keys)]
    if any(r is None for r in rows):
        raise RuntimeError("internal error: some items were neither cached nor encoded")
    if not rows:
        return np.zeros((0, 0), np.float32), stats
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"embedding sizes differ between cache and encoder: {sorted(dims)}")
    return np.stack(rows).astype(np.float32, copy=False), stats


def _encode_batch(encoder: Encoder, items: Sequence[dict], batch: list[int], load_images,
                  desc: str = "encode") -> np.ndarray:
    sides = [items[i] for i in batch]
    shas = [s["image"]["sha256"] for s in sides if s.get("image")]
    shas += [f["sha256"] for s in sides for f in s.get("video") or ()]
    if shas and load_images is None:
        raise ValueError("items have images but no image loader was given")
    decoded = load_images(shas) if shas else {}
    images = [[decoded[f["sha256"]] for f in s["video"]] if s.get("video")
              else decoded[s["image"]["sha256"]] if s.get("image") else None for s in sides]
    try:
        out = np.asarray(encoder.encode(sides, images, batch_size=len(sides)), dtype=np.float32)
    except ValueError as exc:  # e.g. Qwen2-VL's processor refuses an aspect ratio over 200
        raise ValueError(f"{desc}: cannot encode the batch of items {batch[:8]}{'...' if len(batch) > 8 else ''}"
                         f" ({_culprit(encoder, sides, images, batch)}): {exc}") from exc
    if out.ndim != 2 or out.shape[0] != len(sides):
        raise ValueError(f"encoder returned shape {out.shape} for {len(sides)} sides")
    if not np.isfinite(out).all():
        raise ValueError("encoder returned NaN or infinite values")
    return out


def _culprit(encoder: Encoder, sides: Sequence[dict], images: Sequence, batch: list[int]) -> str:
    """The first item of a failed batch that the encoder's collator refuses on its own (text and
    image size rules, `Collator.validate`), described for the error message."""
    validate = getattr(getattr(encoder, "collator", None), "validate", None)
    if validate is None:
        return "an encoder without a collator to check items one by one"
    for i, side, image in zip(batch, sides, images):
        try:
            validate([side], [image])
        except ValueError as exc:
            first = image[0] if isinstance(image, list) else image
            size = f", image {first.width}x{first.height}" if first is not None else ""
            return f"item {i}: {side.get('raw', '')[:60]!r}{size}: {exc}"
    return "no single item is refused on its own"
