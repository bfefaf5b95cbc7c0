"""Hard-negative mining: a trained embedder picks, for every train record, the pool targets it finds
closest to the query that are not the record's positive, the material of a second training round.

    stats = mine(params.mine, encode_settings, paths)      # the mine stage: data/mined, metrics/mine.json

Per train dataset (data/normalized/train/<dataset>):

1. **Items.** Every distinct query and target (key: raw side string + image sha256, as evaluation
   keys them) is embedded once, in evaluation's batches, with its vectors kept in evaluation's
   embedding cache (`trainer.eval.protocol.encode_items`, `trainer.eval.cache`), so a rerun with
   other mining params encodes nothing.
2. **Pool.** The candidates of a query are the dataset's distinct targets: negatives are other records'
   positives, as in VLM2Vec / mmE5's mined MMEB-train. A candidate is named by the first record (file
   order) whose target it is.
3. **Retrieval.** Exact top-k by chunked matrix products (`trainer.search.top_k`, ties to the lower
   pool index): each distinct query's best ``depth`` pool targets, examined in rank order; the rest of
   the pool is never looked at (it bounds the work and the dropped lists when the filter drops much).
4. **False-negative filter**, in this order, each dropped candidate recorded with its reason:
   ``positive``: the record's own target item (the positive itself or an exact duplicate of it: same
   text and image bytes); ``listed_positive``: the positive of another record with the same query
   (text and image), so a true match too; ``score_ratio``: a score above ``max_score_ratio`` x the
   positive's score (positive-aware filtering, NV-Retriever's TopK-PercPos, published with 0.95),
   likely an unlabelled match (``max_score_ratio: null`` turns the rule off). The ratio presumes
   cosines spread over a wide range, as a real embedder's are; a small model trained at temperature
   0.02 can put every cosine within a few hundredths, where 0.95 drops every candidate.
5. ``negatives: random`` is the control of equal compute: ``top_k`` pool targets drawn at random
   (seeded per dataset) among those that are neither the positive nor a listed positive.

Outputs: data/mined/<dataset>.parquet (`MINED_SCHEMA`, one row per record in file order) and
metrics/mine.json (per dataset: queries, pool, kept, dropped by reason, queries short of ``top_k`` or
left with none, records without a target, score statistics). Both are byte-deterministic for fixed
inputs (the vectors come from fixed batches; no timings in the files).

MMEB-V2 training pairs (a dataset in `pipelines.schema.V2_TRAIN_SCHEMA`: page images, videos) are not
mined: VLM2Vec-V2 trains them without hard negatives, and mining them would embed every video of the
set. Each is skipped with a warning and listed under ``skipped`` in metrics/mine.json with its reason
(`SKIP_V2`); the mined shards keep its records as they are (`pipelines.shard`, ``mined_skipped``) and
mined batches draw its records at random (`trainer.train.clusters`, no kNN graph).

Bad input is accounted, never a crash or a silent gap: a pool smaller than ``top_k + 1`` keeps what
there is (``short_pool`` in the metrics, a warning); a query whose every candidate is filtered gets no
negatives (status ``all_filtered``); a record without a target (a null or empty target side) is
written with status ``no_target`` and nothing mined; an embedder not trained from ``models/base``
stops the stage with a message (`check_lineage`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import files
from pipelines.errors import StageFailed
from pipelines.params import Mine
from pipelines.schema import holds_v2_pairs
from trainer.eval.protocol import ImageLoader, content_key, encode_items
from trainer.search import top_k

log = logging.getLogger(__name__)

REASONS = ("positive", "listed_positive", "score_ratio")
STATUSES = ("ok", "short", "all_filtered", "no_target")
MINED_SCHEMA = pa.schema([
    ("id", pa.string()),                          # the record (data/normalized/train)
    ("status", pa.string()),                      # STATUSES: ok = top_k negatives kept
    ("negative_ids", pa.list_(pa.string())),      # records whose targets are the negatives, best first
    ("negative_scores", pa.list_(pa.float32())),  # their cosine scores with the query
    ("positive_score", pa.float32()),             # the positive's score (NaN: no target)
    ("dropped_ids", pa.list_(pa.string())),       # candidates the filter dropped, in rank order
    ("dropped_scores", pa.list_(pa.float32())),
    ("dropped_reasons", pa.list_(pa.string())),   # REASONS
])
WRITE_OPTIONS = dict(compression="zstd", write_statistics=False, use_dictionary=False)
CACHE_PREFIX = "train"  # cache keys train/<dataset>/<item key>: apart from eval's <dataset>/<item key>
SKIP_V2 = "v2_train_schema"  # metrics' reason for a dataset of MMEB-V2 training pairs left unmined


@dataclass(frozen=True)
class MinePaths:
    """Where the mine stage reads and writes: the DVC layout by default."""

    records: Path = Path("data/normalized/train")
    images: Path = Path("data/normalized/images")
    model: Path = Path("models/embedder")  # the miner: round one's embedder
    base: Path = Path("models/base")  # the embedder must have been trained from it
    out: Path = Path("data/mined")
    metrics: Path = Path("metrics/mine.json")


@dataclass(frozen=True)
class EncodeSettings:
    """How items become vectors: evaluation's settings (params `eval`), so its cache applies."""

    batch_size: int
    image_max_pixels: int | None
    precision: str
    cache: bool
    cache_dir: Path


# --- records -> distinct items ---------------------------------------------------------------------
@dataclass
class TrainSet:
    """One train dataset reduced to its distinct items. Record r's query is item ``query_item[r]``,
    its target item ``target_item[r]`` (-1: the record has no target)."""

    dataset: str
    row_ids: list[str]
    items: list[dict]
    keys: list[str]
    query_item: np.ndarray
    target_item: np.ndarray

    @property
    def pool(self) -> np.ndarray:
        """The distinct target items, in order of first appearance."""
        t = self.target_item[self.target_item >= 0]
        _, first = np.unique(t, return_index=True)
        return t[np.sort(first)]


def load_train_set(dataset_dir: Path) -> TrainSet:
    """The records of data/normalized/train/<dataset> as distinct items (query and target sides
    deduplicated together: an item that is both is embedded once)."""
    parts = sorted(Path(dataset_dir).glob("part-*.parquet"))
    if not parts:
        raise StageFailed(f"{dataset_dir}: no part-*.parquet (run the normalize stage)")
    table = pa.concat_tables(pq.read_table(p, columns=["id", "query", "target"]) for p in parts)
    ids = table.column("id").to_pylist()
    queries, targets = table.column("query").to_pylist(), table.column("target").to_pylist()
    items, keys, index = [], [], {}

    def item_of(side: dict | None) -> int:
        if side is None or not (side.get("raw") or side.get("image")):
            return -1
        key = content_key(side["raw"], (side.get("image") or {}).get("sha256"))
        if key not in index:
            index[key] = len(items)
            items.append(side)
            keys.append(key)
        return index[key]

    query_item = np.array([item_of(q) for q in queries], np.int64)
    target_item = np.array([item_of(t) for t in targets], np.int64)
    if (query_item < 0).any():
        raise StageFailed(f"{dataset_dir}: record {ids[int(np.flatnonzero(query_item < 0)[0])]} has no query")
    return TrainSet(Path(dataset_dir).name, ids, items, keys, query_item, target_item)


# --- choosing negatives ----------------------------------------------------------------------------
@dataclass
class Choice:
    """What one record got: kept (pool position, score) pairs and dropped (position, score, reason)."""

    kept: list[tuple[int, float]] = field(default_factory=list)
    dropped: list[tuple[int, float, str]] = field(default_factory=list)


def filter_candidates(ranked: list[tuple[int, float]], positive: int, listed: set[int], positive_score: float,
                      params: Mine) -> Choice:
    """The first ``top_k`` of `ranked` (pool position, score; best first) that pass the false-negative
    filter, and every candidate dropped on the way (module docstring, step 4)."""
    choice = Choice()
    ceiling = math.inf if params.max_score_ratio is None else params.max_score_ratio * positive_score
    for pos, s in ranked:
        if len(choice.kept) == params.top_k:
            break
        reason = ("positive" if pos == positive else "listed_positive" if pos in listed
                  else "score_ratio" if s > ceiling else None)
        if reason:
            choice.dropped.append((pos, s, reason))
        else:
            choice.kept.append((pos, s))
    return choice


def mine_dataset(ts: TrainSet, emb: np.ndarray, params: Mine) -> list[Choice | None]:
    """Per record its `Choice` (None: no target). `emb[i]` is the vector of ``ts.items[i]``."""
    pool = ts.pool
    where = {int(item): p for p, item in enumerate(pool)}
    cand = emb[pool]
    positive = np.array([where.get(int(t), -1) for t in ts.target_item], np.int64)
    listed: dict[int, set[int]] = {}
    for q, p in zip(ts.query_item.tolist(), positive.tolist()):
        if p >= 0:
            listed.setdefault(q, set()).add(p)
    if params.negatives == "random":
        return _random_choices(ts, cand, emb, positive, listed, params)
    pos_score = positive_scores(ts, emb)
    queries = np.unique(ts.query_item[positive >= 0])  # distinct queries retrieve once
    scores, ids = top_k(emb[queries], cand, min(len(pool), params.depth))
    ranked = {int(q): list(zip(i.tolist(), s.tolist())) for q, s, i in zip(queries, scores, ids)}
    return [None if positive[r] < 0 else
            filter_candidates(ranked[q], int(positive[r]), listed[q] - {int(positive[r])}, float(pos_score[r]), params)
            for r, q in enumerate(ts.query_item.tolist())]


def _random_choices(ts: TrainSet, cand: np.ndarray, emb: np.ndarray, positive: np.ndarray,
                    listed: dict[int, set[int]], params: Mine) -> list[Choice | None]:
    """``top_k`` random pool targets per record, never its positive or a listed positive (scores kept
    for the record); seeded by (mine.seed, dataset), so the draw is the same on every run."""
    rng = np.random.default_rng([params.seed, zlib.crc32(ts.dataset.encode("utf-8"))])
    choices: list[Choice | None] = []
    for r, q in enumerate(ts.query_item.tolist()):
        if positive[r] < 0:
            choices.append(None)
            continue
        banned = listed[q] | {int(positive[r])}
        draw = rng.choice(len(cand), size=min(len(cand), params.top_k + len(banned)), replace=False)
        picked = [int(p) for p in draw if int(p) not in banned][: params.top_k]
        scores = cand[picked] @ emb[q] if picked else np.zeros(0, np.float32)
        choices.append(Choice(kept=list(zip(picked, scores.tolist()))))
    return choices


# --- outputs ---------------------------------------------------------------------------------------
def status_of(choice: Choice | None, top: int) -> str:
    if choice is None:
        return "no_target"
    return "ok" if len(choice.kept) == top else "all_filtered" if not choice.kept else "short"


def mined_table(ts: TrainSet, choices: list[Choice | None], pos_score: np.ndarray, params: Mine) -> pa.Table:
    """data/mined/<dataset>.parquet's rows: one per record, in the records' order."""
    pool = ts.pool
    owner: dict[int, str] = {}
    for rid, t in zip(ts.row_ids, ts.target_item.tolist()):
        owner.setdefault(t, rid)  # a candidate is named by the first record whose target it is
    name = [owner[int(item)] for item in pool]
    rows = []
    for r, choice in enumerate(choices):
        c = choice or Choice()
        rows.append({
            "id": ts.row_ids[r], "status": status_of(choice, params.top_k),
            "negative_ids": [name[p] for p, _ in c.kept], "negative_scores": [s for _, s in c.kept],
            "positive_score": float(pos_score[r]) if choice is not None else float("nan"),
            "dropped_ids": [name[p] for p, _, _ in c.dropped], "dropped_scores": [s for _, s, _ in c.dropped],
            "dropped_reasons": [why for _, _, why in c.dropped],
        })
    return pa.Table.from_pylist(rows, schema=MINED_SCHEMA)


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = np.asarray(values, np.float64)
    return {k: round(float(f(v)), 6) for k, f in
            (("mean", np.mean), ("std", np.std), ("min", np.min), ("p50", np.median), ("max", np.max))}


def dataset_metrics(ts: TrainSet, choices: list[Choice | None], pos_score: np.ndarray, params: Mine) -> dict:
    """One dataset's entry of metrics/mine.json."""
    real = [(c, float(s)) for c, s in zip(choices, pos_score) if c is not None]
    statuses = [status_of(c, params.top_k) for c in choices]
    pool = len(ts.pool)
    return {
        "queries": len(choices), "distinct_queries": int(np.unique(ts.query_item).size), "candidates": pool,
        "short_pool": pool - 1 < params.top_k,
        "kept": sum(len(c.kept) for c, _ in real),
        "dropped": {why: sum(1 for c, _ in real for d in c.dropped if d[2] == why) for why in REASONS},
        "status": {s: statuses.count(s) for s in STATUSES},
        "scores": {"positive": _stats([s for _, s in real]),
                   "negative": _stats([x for c, _ in real for _, x in c.kept]),
                   "margin": _stats([s - c.kept[0][1] for c, s in real if c.kept])},
    }


# --- the stage -------------------------------------------------------------------------------------
def check_lineage(model: Path, base: Path) -> None:
    """StageFailed unless `model` is an embedder trained from `base` (its merged backbone describes the
    same model as base's backbone.json: family, size, tokenizer and processor settings)."""
    from trainer.backbone.families import BACKBONE_JSON
    from trainer.embed import model_dir_of

    try:
        merged = model_dir_of(model)
    except FileNotFoundError as e:
        raise StageFailed(f"mine: {e} (run the train stage)") from None
    mine_meta, base_meta = (json.loads((d / BACKBONE_JSON).read_text(encoding="utf-8")) for d in (merged, base))
    differ = sorted(k for k in set(mine_meta) | set(base_meta)
                    if k != "info" and mine_meta.get(k) != base_meta.get(k))
    info_differ = sorted(k for k in set(mine_meta.get("info") or {}) | set(base_meta.get("info") or {})
                         if (mine_meta.get("info") or {}).get(k) != (base_meta.get("info") or {}).get(k))
    if differ or info_differ:
        raise StageFailed(f"mine: {model} does not match the base model {base} (different "
                          f"{', '.join(differ + ['info.' + k for k in info_differ])}): it was trained from "
                          "another base; re-run the train stage on this base before mining")


ModelLoader = Callable[[Path, EncodeSettings], Any]


def load_model(path: Path, settings: EncodeSettings):
    from trainer.embed import EmbeddingModel

    return EmbeddingModel.load(path, dtype=None if settings.precision == "fp32" else settings.precision,
                               image_max_pixels=settings.image_max_pixels)


def mine(params: Mine, settings: EncodeSettings, paths: MinePaths = MinePaths(), *,
         load: ModelLoader = load_model) -> dict:
    """The mine stage: every train dataset's negatives to ``paths.out`` and the statistics to
    ``paths.metrics`` (returned). Stale outputs of datasets no longer present are removed."""
    from trainer.eval.cache import EmbeddingCache
    from trainer.eval.evaluate import cache_settings

    if not paths.records.is_dir():
        raise StageFailed(f"mine: {paths.records} does not exist (run the normalize stage)")
    check_lineage(paths.model, paths.base)
    datasets = sorted(p for p in paths.records.iterdir() if p.is_dir())
    if not datasets:
        raise StageFailed(f"mine: no train datasets under {paths.records}")
    model = load(paths.model, settings)
    cache = EmbeddingCache(settings.cache_dir, model.fingerprint,
                           cache_settings(settings.image_max_pixels, settings.batch_size)) if settings.cache else None
    images = ImageLoader(paths.images, settings.image_max_pixels)
    report: dict[str, Any] = {"model": str(paths.model), "fingerprint": model.fingerprint,
                              "params": params.to_dict(), "datasets": {}, "skipped": {}}
    with files.atomic_dir(paths.out) as tmp:
        for d in datasets:
            if holds_v2_pairs(d):
                log.warning("%s: MMEB-V2 training pairs (video / visual documents) are not mined; its records keep "
                            "no mined negatives", d.name)
                report["skipped"][d.name] = SKIP_V2
                continue
            started = time.perf_counter()
            ts = load_train_set(d)
            emb, stats = encode_items(model, ts.items, [f"{CACHE_PREFIX}/{ts.dataset}/{k}" for k in ts.keys],
                                      batch_size=settings.batch_size, load_images=images, cache=cache,
                                      desc=f"mine {ts.dataset}")
            choices = mine_dataset(ts, emb, params)
            pos_score = positive_scores(ts, emb)
            pq.write_table(mined_table(ts, choices, pos_score, params), tmp / f"{ts.dataset}.parquet", **WRITE_OPTIONS)
            entry = report["datasets"][ts.dataset] = dataset_metrics(ts, choices, pos_score, params)
            _log_dataset(ts.dataset, entry, stats, time.perf_counter() - started, params)
    report["total"] = {k: sum(e[k] for e in report["datasets"].values()) for k in ("queries", "kept")}
    report["total"]["dropped"] = {why: sum(e["dropped"][why] for e in report["datasets"].values()) for why in REASONS}
    report["total"]["skipped"] = len(report["skipped"])
    files.write_json(paths.metrics, report, sort_keys=True, indent=1)
    return report


def positive_scores(ts: TrainSet, emb: np.ndarray) -> np.ndarray:
    """Each record's query-positive cosine (NaN without a target)."""
    has = ts.target_item >= 0
    out = np.full(len(ts.row_ids), np.nan, np.float32)
    out[has] = np.einsum("ij,ij->i", emb[ts.query_item[has]], emb[ts.target_item[has]])
    return out


def _log_dataset(dataset: str, entry: dict, stats, seconds: float, params: Mine) -> None:
    if entry["short_pool"]:
        log.warning("%s: only %d distinct targets, fewer than mine.top_k=%d negatives + the positive: every "
                    "query keeps what the pool has", dataset, entry["candidates"], params.top_k)
    st = entry["status"]
    if st["all_filtered"] or st["no_target"]:
        log.warning("%s: %d queries left without negatives (every candidate filtered), %d records without a target",
                    dataset, st["all_filtered"], st["no_target"])
    log.info("%s: %d queries, pool %d, kept %d, dropped %s (%d encoded, %d cached) in %.1f s", dataset,
             entry["queries"], entry["candidates"], entry["kept"], entry["dropped"], stats.encoded,
             stats.cache_hits, seconds)
