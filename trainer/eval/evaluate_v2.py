"""The evaluate stage's MMEB-V2 part: every dataset under data/normalized/eval_v2 scored with the V2
protocol, beside the V1 scores.

    pool = load_v2_pool(root / V2_ROOT)                         # no sets without MMEB-V2 data
    protocol = Protocol(ties=params.v2_ties, labels=params.v2_labels)
    scores = score_v2(name, model, pool, batch_size=..., images=..., cache=..., protocol=protocol)
    write_v2({name: scores}, metadata, root, protocol.record(pool.sets))   # eval.json "v2", eval.md, ...

A global dataset ranks each query against its whole deduplicated corpus (`ranking.rank_global`), a
local one against its own list (`ranking.rank_local`); the ties (strict or VLM2Vec's argsort) and
the label computation (correct or VLM2Vec's) are `Protocol`'s, recorded with the scores beside the
ViDoRe prompt normalize wrote (docs/mmeb-v2.md). Every metric at 1/5/10 goes to metrics/eval.json;
the aggregate per meta-task, modality and overall is `v2_scores.aggregate` over the registry's
tasks, the synthetic stand-ins aggregated apart so they never pass for official tasks.

Each distinct item is encoded once across all V2 datasets: a page, frame, video or label shared by
several datasets with the same rendered input is one item of the pool. A video reaches the model in
one of two ways (`eval.video_input`, per model `video_input_of`):
* ``native``: one item, its sampled frames given as ``videos=`` with the model's video token, as
  VLM2Vec-V2 encodes video with Qwen2-VL / Qwen2.5-VL (`trainer.model.inputs`); Idefics3 / SmolVLM,
  without video input but with several images a row, take the frames as that many images of one
  item (recorded as ``frames_as_images``); the other families fall back to ``frames_mean``;
* ``frames_mean``: each frame one image item with the video's prompt (the video placeholder turned
  into the image one), the video's vector the normalised mean of its frames' vectors; every family
  can take it, but no published model was scored so, so its video scores are not comparable.
The mode a model used is recorded beside its scores. Cache keys are the items' content (raw string
and image or frame digests); the model's fingerprint (its rendering included) and the encode
settings name the cache's namespace, so a changed item, model or rendering never reuses a stale
vector. The pool is planned into batches as a whole (`protocol.encode_items`), so the same V2
selection gives the same vectors cold or warm; a vector cached under another selection came from
another batch and may differ in its last bits.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines import files, mmeb_v2
from pipelines.params import VIDEO_INPUTS
from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN
from trainer.eval import v2_scores
from trainer.eval.metrics import Relevance, dataset_metrics
from trainer.eval.protocol import Encoder, ImageLoader, content_key, encode_items
from trainer.eval.ranking import rank_global, rank_local
from trainer.model.inputs import FRAME_IMAGE_FAMILIES, v2_text

log = logging.getLogger(__name__)

V2_ROOT = Path("data/normalized/eval_v2")
CACHE_PREFIX = "v2"  # cache keys: v2/<content key>
METRICS_FILE = Path("metrics/eval.json")
REPORT_FILE = Path("reports/eval.md")
LEADERBOARD_FILE = Path("reports/leaderboard_v2.json")
PLOTS_DIR = Path("reports/plots/v2_meta")  # one file per model: a bar per meta-task (dvc plots)
VERSION_FILES = ("queries.parquet", "corpus.parquet", "dataset.json")


@dataclass
class V2Set:
    """One V2 dataset over the shared item pool (`V2Pool`): each query / corpus side is a list of
    indices into the pool's items (one item, or a video's frames)."""

    task: mmeb_v2.V2Task
    version: str  # sha256 of the normalized files, 16 hex
    expected: int
    query_sides: list[list[int]]
    corpus_ids: list[str | int]  # int where the source's were (`id_type`), as VLM2Vec ranks and scores them
    corpus_sides: list[list[int]]
    candidates: list[list[str | int]]  # local lists (empty for global)
    relevances: list[Relevance]
    vidore_prompt: str | None = None  # the ViDoRe instructions normalize wrote (None: another family)

    def item_indices(self) -> list[int]:
        """The distinct pool items this dataset needs."""
        return sorted({i for side in (*self.query_sides, *self.corpus_sides) for i in side})


@dataclass
class V2Pool:
    """The distinct encoder items of every V2 dataset, each once: a page, a frame or a label string
    shared by several datasets under the same rendered input (raw string + image) is one item, so it
    is encoded once for all of them. Its cache key is its content (`content_key`), with no dataset in
    it: a changed item has a new key, an unchanged one keeps its vector."""

    items: list[dict]
    keys: list[str]
    sets: list[V2Set]
    native: V2Pool | None = None  # the same datasets with each video one item; None: no video


def dataset_version(folder: Path) -> str:
    h = hashlib.sha256()
    for name in VERSION_FILES:
        h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()[:16]


def _text(raw: str) -> str:
    return v2_text(raw)  # what training renders of a V2 side without instructions (`trainer.model.inputs`)


class _Items:
    """Distinct items by content key, shared by the datasets loaded into it (a video's key: its
    prompt and its frames' digests in order)."""

    def __init__(self):
        self.items, self.keys, self.index = [], [], {}

    def add(self, raw: str, image: dict | None, video: list[dict] | None = None) -> int:
        visual = ",".join(f["sha256"] for f in video) if video else image["sha256"] if image else None
        key = content_key(raw, visual)
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append({"raw": raw, "text": _text(raw), "image": image, **({"video": video} if video else {})})
            self.keys.append(f"{CACHE_PREFIX}/{key}")
        return self.index[key]

    def side(self, side: dict, native: bool = False) -> list[int]:
        if side["video"] and native:
            return [self.add(side["raw"], None, list(side["video"]))]
        if side["video"]:
            raw = side["raw"].replace(VIDEO_TOKEN, IMAGE_TOKEN)
            return [self.add(raw, frame) for frame in side["video"]]
        return [self.add(side["raw"], side["image"])]


def _read(folder: Path) -> dict:
    """A normalized V2 dataset's files."""
    folder = Path(folder)
    return {"info": json.loads((folder / "dataset.json").read_text(encoding="utf-8")),
            "version": dataset_version(folder), "queries": pq.read_table(folder / "queries.parquet").to_pylist(),
            "corpus": pq.read_table(folder / "corpus.parquet").to_pylist()}


def load_v2_set(data: dict, items: _Items, native: bool = False) -> V2Set:
    """One dataset (`_read`), its items added to `items` (those already there are shared); videos as
    frames, or each video one item (`native`). Candidate ids stored as strings come back as integers
    where the source's were (``id_type`` "int" in dataset.json: ViDoRe's corpus ids), so the official
    labels' ``list(set(labels))`` orders them as VLM2Vec does, whatever PYTHONHASHSEED."""
    info, queries, corpus = data["info"], data["queries"], data["corpus"]
    cast = int if info.get("id_type") == "int" else str
    return V2Set(mmeb_v2.known(info["dataset"]), data["version"], int(info["expected"]),
                 [items.side(q["query"], native) for q in queries], [cast(c["candidate_id"]) for c in corpus],
                 [items.side(c["candidate"], native) for c in corpus],
                 [[cast(c) for c in q["candidates"]] for q in queries],
                 [Relevance(tuple(cast(r["candidate_id"]) for r in q["relevant"]),
                            tuple(r["grade"] for r in q["relevant"])) for q in queries],
                 info.get("vidore_prompt"))


def _pool(datasets: list[dict], native: bool) -> V2Pool:
    items = _Items()
    sets = [load_v2_set(data, items, native) for data in datasets]
    return V2Pool(items.items, items.keys, sets)


def load_v2_pool(root: Path, names: list[str] | None = None) -> V2Pool:
    """Every dataset under data/normalized/eval_v2 (or those `names`) over one item pool (no sets
    when the folder is absent or empty), videos as frames; its `native` holds the same datasets with
    each video one item (None without a video)."""
    datasets = [_read(Path(root) / name) for name in (load_v2_names(root) if names is None else names)]
    pool = _pool(datasets, native=False)
    if any(side["video"] for d in datasets for side in (*(q["query"] for q in d["queries"]),
                                                        *(c["candidate"] for c in d["corpus"]))):
        pool.native = _pool(datasets, native=True)
    return pool


def _side_vectors(emb: np.ndarray, sides: list[list[int]]) -> np.ndarray:
    out = np.stack([emb[idx].mean(axis=0) for idx in sides]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@dataclass(frozen=True)
class Protocol:
    """The V2 protocol's choices (`ranking.TIES`, `metrics.LABELS`), recorded with the scores."""

    ties: str = "strict"
    labels: str = "correct"

    def record(self, sets: list[V2Set]) -> dict:
        """What metrics/eval.json and the report say the scores were computed with: the ties, the
        labels, and the ViDoRe prompt of the ViDoRe sets (None without one; "mixed" when they differ)."""
        prompts = {vs.vidore_prompt for vs in sets if vs.vidore_prompt is not None}
        prompt = None if not prompts else prompts.pop() if len(prompts) == 1 else "mixed"
        return {"ties": self.ties, "labels": self.labels, "vidore_prompt": prompt}


def score_set(vs: V2Set, emb: np.ndarray, protocol: Protocol = Protocol()) -> dict:
    """The dataset's score dict (`v2_scores.score_file`, plus uncapped ``mrr`` and its version); `emb`
    holds the pool's vectors."""
    queries, corpus = _side_vectors(emb, vs.query_sides), _side_vectors(emb, vs.corpus_sides)
    if vs.task.eval_type == "global":
        rankings = rank_global(queries, corpus, vs.corpus_ids, vs.relevances, protocol.ties)
    else:
        at = {c: i for i, c in enumerate(vs.corpus_ids)}
        rankings = [rank_local(q, corpus[[at[c] for c in ids]], ids, rel, protocol.ties)
                    for q, ids, rel in zip(queries, vs.candidates, vs.relevances)]
    metrics = dataset_metrics(rankings, vs.relevances, protocol.labels)
    return {**v2_scores.score_file(metrics, len(vs.relevances), vs.expected), "mrr": float(metrics["mrr"]),
            "version": vs.version}


def video_input_of(model: Encoder, requested: str) -> str:
    """The way `model` takes video. Asked for ``native``: ``native`` when its family takes `videos=`
    (its collator's prompt format has a video token), ``frames_as_images`` when its processor takes
    the frames as several images of one row (`FRAME_IMAGE_FAMILIES`), else ``frames_mean``."""
    if requested not in VIDEO_INPUTS:
        raise ValueError(f"video_input must be one of {VIDEO_INPUTS}, got {requested!r}")
    fmt = getattr(getattr(model, "collator", None), "format", None)
    if requested == "frames_mean" or fmt is None:
        return "frames_mean"
    if getattr(fmt, "video_token", None):
        return "native"
    return "frames_as_images" if fmt.family in FRAME_IMAGE_FAMILIES and fmt.kind == "vlm" else "frames_mean"


def score_v2(name: str, model: Encoder, pool: V2Pool, *, batch_size: int, images: ImageLoader | None,
             cache, protocol: Protocol = Protocol(), video_input: str = "frames_mean") -> dict[str, dict]:
    """{dataset: score dict} of one model on rank 0 ({} on other ranks, which encode their share).
    The pool is encoded in one pass, each distinct item once whichever datasets share it; videos as
    `video_input_of(model, video_input)` says."""
    if video_input_of(model, video_input) != "frames_mean" and pool.native is not None:
        pool = pool.native  # one item a video
    emb, stats = encode_items(model, pool.items, pool.keys, batch_size=batch_size, load_images=images,
                              cache=cache, desc=f"{name} MMEB-V2")
    if emb is None:
        return {}
    log.info("%s MMEB-V2: %d datasets, %d distinct items (%d encoded, %d cached)", name, len(pool.sets),
             len(pool.items), stats.encoded, stats.cache_hits)
    out = {}
    for vs in pool.sets:
        out[vs.task.name] = score_set(vs, emb, protocol)
        log.info("%s %s (MMEB-V2 %s): %s %.4f (%d queries, %d items)", name, vs.task.name, vs.task.eval_type,
                 vs.task.headline_metric, out[vs.task.name][vs.task.headline_metric], len(vs.relevances),
                 len(vs.item_indices()))
    return out


def summary(scores: dict[str, dict], protocol: dict) -> dict:
    """The protocol's choices, per-dataset score dicts and the aggregates: official tasks, synthetic
    stand-ins apart."""
    official = {n: s for n, s in scores.items() if n in mmeb_v2.TASKS}
    synthetic = {n: s for n, s in scores.items() if n in mmeb_v2.SYNTHETIC}
    return {"protocol": protocol, "datasets": dict(sorted(scores.items())),
            "aggregate": v2_scores.aggregate(official),
            "synthetic_aggregate": v2_scores.aggregate(synthetic, mmeb_v2.SYNTHETIC)}


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def markdown(summaries: dict[str, dict], protocol: dict) -> str:
    """The MMEB-V2 section of reports/eval.md: per dataset the headline metric of every model beside
    the published scores of the same data, then the groups."""
    models = list(summaries)
    names = sorted({n for s in summaries.values() for n in s["datasets"]})
    published = list(mmeb_v2.published.MODELS)
    lines = ["", "## MMEB-V2", "",
             "Headline metric in % (hit@1 for image and video, NDCG@5 for visual documents); published "
             "scores are of the same data (`score_version`); synthetic stand-ins have none. Protocol: ties "
             f"`{protocol['ties']}`, labels `{protocol['labels']}`, ViDoRe prompt `{protocol['vidore_prompt']}` "
             "(docs/mmeb-v2.md). Video input (native: `videos=`; frames_as_images: the frames as one row's "
             "images; frames_mean: the mean of the frames' vectors): "
             + ", ".join(f"{m} {summaries[m].get('video_input', 'frames_mean')}" for m in models) + ".", "",
             "| dataset | modality | meta-task | eval | " + " | ".join(models + published) + " |",
             "| --- | --- | --- | --- |" + " ---: |" * (len(models) + len(published))]
    for n in names:
        t = mmeb_v2.known(n)
        ours = [_pct(summaries[m]["datasets"][n][t.headline_metric]) if n in summaries[m]["datasets"] else "—"
                for m in models]
        ref = t.published if n in mmeb_v2.TASKS else {}
        lines.append(f"| {n} | {t.modality} | {t.meta_task} | {t.eval_type} | "
                     + " | ".join(ours + [_pct(ref.get(p)) for p in published]) + " |")
    lines += ["", "| group (tasks scored / expected) | " + " | ".join(models) + " |",
              "| --- |" + " ---: |" * len(models)]
    for label, key in (("official", "aggregate"), ("synthetic", "synthetic_aggregate")):
        first = summaries[models[0]][key]
        groups = [("overall", first["overall"], lambda a: a["overall"])]
        groups += [(m, g, lambda a, m=m: a["modality"][m]) for m, g in first["modality"].items()]
        groups += [(m, g, lambda a, m=m: a["meta"][m]) for m, g in first["meta"].items()]
        for gname, g, pick in groups:
            if g["tasks"]:
                lines.append(f"| {label} {gname} ({g['tasks']}/{g['expected']}) | "
                             + " | ".join(_pct(pick(summaries[m][key])["score"]) for m in models) + " |")
    return "\n".join(lines) + "\n"


def v2_only(models: list[str], root: Path, models_root: Path = Path("models")) -> list:
    """No V1 eval sets ([]), once every model folder and some MMEB-V2 dataset are known to exist
    (data.benchmark: v2)."""
    missing = [m for m in models if not (Path(root) / models_root / m).is_dir()]
    if missing:
        raise FileNotFoundError(f"model folder(s) {[str(models_root / m) for m in missing]} missing under {root}: "
                                "run the backbone/train stages first")
    if not load_v2_names(Path(root) / V2_ROOT):
        raise FileNotFoundError(f"data.benchmark v2, but {V2_ROOT} holds no MMEB-V2 dataset: run the download "
                                "and normalize stages with data.benchmark v2")
    return []


def load_v2_names(root: Path) -> list[str]:
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / "dataset.json").is_file()) if root.is_dir() else []


def clear_v1_outputs(root: Path, paths: tuple[Path, ...], plots: Path) -> None:
    """data.benchmark v2: the V1 outputs of an earlier run removed, so nothing stale is reported. The
    DVC outputs the V2 writer does not fill are left empty: the leaderboard with no model, the per-model
    plots folder without plots."""
    for path in paths:
        (Path(root) / path).unlink(missing_ok=True)
    files.write_json(Path(root) / paths[2], {"models": {}})
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.json"):
        stale.unlink()


def plot_rows(summaries: dict[str, dict]) -> dict[str, list[dict]]:
    """{model: [{meta_task, model, modality, tasks, score}]}: per model, each meta-task group that holds
    a scored task, in % of its headline metric; synthetic groups named "<meta-task> (synthetic)"."""
    out = {}
    for model, summ in summaries.items():
        rows = []
        for key, suffix in (("aggregate", ""), ("synthetic_aggregate", " (synthetic)")):
            for meta, group in summ[key]["meta"].items():
                if group["tasks"]:
                    modality = next(m for m, metas in mmeb_v2.META_TASKS.items() if meta in metas)
                    rows.append({"meta_task": meta + suffix, "model": model, "modality": modality,
                                 "tasks": group["tasks"], "score": round(100 * group["score"], 4)})
        out[model] = rows
    return out


def write_plots(summaries: dict[str, dict], folder: Path) -> None:
    """reports/plots/v2_meta/<model>.json for every model scored (none without V2: the folder is a DVC
    output, so it exists, empty); the files of models not scored this time are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        stale.unlink()
    for model, rows in plot_rows(summaries).items():
        files.write_json(folder / f"{model}.json", rows, ensure_ascii=False)


def write_v2(scores: dict[str, dict[str, dict]], metadata: dict[str, dict], root: Path, protocol: dict,
             video_inputs: dict[str, str] | None = None) -> None:
    """Add the "v2" entry to metrics/eval.json, the MMEB-V2 section to reports/eval.md, and write
    reports/leaderboard_v2.json (one report_score_v2.py document per model; official tasks only) and
    the per-meta-task plots (reports/plots/v2_meta/<model>.json).
    Byte-deterministic: the leaderboard's date is $SOURCE_DATE_EPOCH's, else the epoch. `video_inputs`
    (per model, `video_input_of`; default frames_mean) goes beside each model's scores."""
    root = Path(root)
    summaries = {m: {**summary(s, protocol), "video_input": (video_inputs or {}).get(m, "frames_mean")}
                 for m, s in scores.items()}
    metrics_path = root / METRICS_FILE
    document = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    document["v2"] = summaries
    files.write_json(metrics_path, document, ensure_ascii=False)
    report_path = root / REPORT_FILE
    before = report_path.read_text(encoding="utf-8") if report_path.is_file() else "# Evaluation\n"
    files.write_text(report_path, before + markdown(summaries, protocol))
    generated = datetime.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                                                datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    boards = {m: v2_scores.leaderboard({"model_name": m, **metadata.get(m, {})},
                                       {n: e for n, e in s.items() if n in mmeb_v2.TASKS}, generated)
              for m, s in scores.items()}
    files.write_json(root / LEADERBOARD_FILE, boards, ensure_ascii=False)
    write_plots(summaries, root / PLOTS_DIR)
    log.info("wrote the MMEB-V2 scores to %s, %s and %s", METRICS_FILE, REPORT_FILE, LEADERBOARD_FILE)
