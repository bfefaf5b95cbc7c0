"""MMEB-V2's sets for the normalize stage: data/raw/MMEB-V2 -> data/normalized/eval_v2/<dataset>/.

    counts = normalize_v2(raw_root, out_root, rejects_root, params.normalize)   # {} without MMEB-V2

Each dataset becomes (`pipelines.schema`)::

    eval_v2/<dataset>/queries.parquet   V2_QUERY_SCHEMA: one row per query, its graded relevant ids
    eval_v2/<dataset>/corpus.parquet    V2_CORPUS_SCHEMA: one row per distinct candidate
    eval_v2/<dataset>/dataset.json      modality, meta-task, eval type (local / global), expected queries

Pages and sampled frames go to the image store (out_root/images, staged for the stage's merge) once
each; the rows hold references. Input strings are VLM2Vec's (`pipelines.v2_inputs`) with the
placeholder tokens. Wired loader families: ``vidore`` / ``visrag`` (`pipelines.sources.beir`) and
``video_classification`` (annotation rows + frame folders, `pipelines.frames`, ``frames_per_video``
frames a video). Rows refused are counted by reason in the dataset's metrics/etl.json entry and
written to data/rejects/eval_v2/<dataset>.parquet; `problems` names a dataset left short of its
expected queries (the stage fails on it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import files, mmeb_v2, mmeb_v2_labels
from pipelines.errors import Rejected
from pipelines.frames import sample_frames
from pipelines.images import prepare_image
from pipelines.mmeb_v2 import ANNOTATED_VIDEO_PARSERS, BEIR_PARSERS, LAYOUT_FOLDERS, RAW_FOLDER as FOLDER
from pipelines.imagestore import ImageStoreWriter, StoredImage
from pipelines.params import Normalize
from pipelines.schema import V2_CORPUS_SCHEMA, V2_QUERY_SCHEMA
from pipelines.sources.beir import read_beir
from pipelines.v2_inputs import PLACEHOLDERS, video_cls_query, visdoc_candidate, visdoc_query

log = logging.getLogger(__name__)

OUT = "eval_v2"  # under data/normalized and data/rejects
REJECT_SCHEMA = pa.schema([("table", pa.string()), ("id", pa.string()), ("reason", pa.string()),
                           ("detail", pa.string())])
Store = Callable[[StoredImage], None]


def side(raw: str, image: dict | None = None, video: list[dict] | None = None,
         frames_available: int | None = None) -> dict:
    return {"raw": raw, "image": image, "video": video, "frames_available": frames_available}


def _ref(sha256: str, path: str | None, width: int, height: int) -> dict:
    return {"sha256": sha256, "path": path, "width": width, "height": height}


def _query_row(task: mmeb_v2.V2Task, index: int, query_id: str, query: dict, candidates: list[str],
               relevant: list[tuple[str, float]]) -> dict:
    return {"id": f"{task.name}/{task.hub_split}/{index}", "dataset": task.name, "split": task.hub_split,
            "modality": task.modality, "meta_task": task.meta_task, "eval_type": task.eval_type,
            "query_id": query_id, "query": query, "candidates": candidates,
            "relevant": [{"candidate_id": c, "grade": float(g)} for c, g in relevant]}


def beir_dataset(root: Path, task: mmeb_v2.V2Task, params: Normalize, store: Store):
    """Queries, corpus, rejects and counts of a visual-document set."""
    docset = read_beir(root / task.name, task.hub_split, task.language, store, params.image_reject_pixels)
    prompt = params.vidore_prompt
    queries = [_query_row(task, i, qid, side(visdoc_query(task.parser, text, PLACEHOLDERS, prompt)), [],
                          docset.relevant[qid]) for i, (qid, text) in enumerate(docset.queries)]
    page = visdoc_candidate(task.parser, PLACEHOLDERS, prompt)
    corpus = [{"dataset": task.name, "candidate_id": cid,
               "candidate": side(page, _ref(ref.sha256, f"{task.name}/corpus/{cid}", ref.width, ref.height))}
              for cid, ref in docset.pages.items()]
    rejects = [(r.table, r.id, r.reason, r.detail) for r in docset.rejects]
    return queries, corpus, rejects, docset.counts()


def _frames(folder: Path, root: Path, num_frames: int, max_pixels: int, store: Store) -> tuple[list[dict], int, bool]:
    sampled = sample_frames(folder, num_frames)
    refs = []
    for path in sampled.paths:
        stored = prepare_image(path.read_bytes(), max_pixels).stored
        store(stored)
        refs.append(_ref(stored.sha256, path.relative_to(root).as_posix(), stored.width, stored.height))
    return refs, sampled.available, sampled.short


def video_cls_dataset(root: Path, task: mmeb_v2.V2Task, params: Normalize, store: Store):
    """Queries (a video each, its label relevant), corpus (every label) and rejects of a video
    classification set; a video whose frames are missing, empty or unreadable is rejected."""
    table = pq.read_table(sorted((root / task.name).glob(f"{task.hub_split}-*.parquet")),
                          columns=["video_id", "pos_text"]).to_pylist()
    prompt = video_cls_query(task.loader_name or task.name, PLACEHOLDERS)
    queries, rejects, short, frames = [], [], 0, 0
    for i, row in enumerate(table):
        vid = str(row["video_id"])
        try:
            refs, available, is_short = _frames(root / task.root / vid, root, params.frames_per_video,
                                                params.image_reject_pixels, store)
        except Rejected as e:
            rejects.append(("queries", vid, e.reason, e.detail))
            continue
        short += is_short
        frames += len(refs)
        queries.append(_query_row(task, i, vid, side(prompt, video=refs, frames_available=available), [],
                                  [(row["pos_text"], 1.0)]))
    # the registry task's label list (VLM2Vec's); a synthetic set's labels in order of first appearance
    labels = [] if task.name in mmeb_v2.SYNTHETIC else list(mmeb_v2_labels.LABELS[task.loader_name or task.name])
    labels += list(dict.fromkeys(str(row["pos_text"]) for row in table if str(row["pos_text"]) not in labels))
    corpus = [{"dataset": task.name, "candidate_id": label, "candidate": side(label)} for label in labels]
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[f"queries/{r[2]}"] = by_reason.get(f"queries/{r[2]}", 0) + 1
    counts = {"rows_in": {"queries": len(table)}, "queries": len(queries), "candidates": len(corpus),
              "frames_stored": frames, "short_videos": short, "rejected": len(rejects),
              "rejected_by_reason": dict(sorted(by_reason.items()))}
    return queries, corpus, rejects, counts


def _expected(raw_root: Path) -> dict[str, int]:
    manifest = raw_root / "manifest.json"
    if not manifest.is_file():
        return {}
    v2 = json.loads(manifest.read_text(encoding="utf-8")).get("v2", {})
    return {name: d["expected"] for name, d in v2.get("datasets", {}).items()}


def _write_table(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    with files.atomic_file(path) as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), f, compression="zstd")


def normalize_v2(raw_root: Path, out_root: Path, rejects_root: Path, params: Normalize) -> dict:
    """Write every MMEB-V2 dataset under raw_root/MMEB-V2, its images staged in out_root/images;
    return {dataset: counts} ({} when there is none). out_root/eval_v2/datasets.json lists the
    datasets written, [] without MMEB-V2: the folder is the evaluate stage's dependency, and DVC
    restores no empty folder (a pulled workspace would miss it)."""
    root = Path(raw_root) / FOLDER
    out = Path(out_root) / OUT
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    if root.is_dir():
        writer = ImageStoreWriter(Path(out_root) / "images", "v2")
        try:
            counts = _datasets(root, out, Path(rejects_root), params, writer.add, _expected(Path(raw_root)))
        finally:
            writer.close()
    files.write_json(out / "datasets.json", {"datasets": sorted(counts)}, sort_keys=True)
    return counts


def _datasets(root: Path, out: Path, rejects_root: Path, params: Normalize, store: Store,
              expected: dict[str, int]) -> dict:
    counts = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in LAYOUT_FOLDERS):
        task = mmeb_v2.known(folder.name)
        if task.parser in BEIR_PARSERS:
            queries, corpus, rejects, c = beir_dataset(root, task, params, store)
        elif task.parser in ANNOTATED_VIDEO_PARSERS:
            queries, corpus, rejects, c = video_cls_dataset(root, task, params, store)
        else:
            raise ValueError(f"MMEB-V2 dataset {task.name}: loader family {task.parser!r} is not wired yet")
        _write_table(out / task.name / "queries.parquet", queries, V2_QUERY_SCHEMA)
        _write_table(out / task.name / "corpus.parquet", corpus, V2_CORPUS_SCHEMA)
        info = {"dataset": task.name, "modality": task.modality, "meta_task": task.meta_task,
                "eval_type": task.eval_type, "expected": expected.get(task.name, task.num_data)}
        if task.parser == "vidore":  # the instructions it was written with (normalize.vidore_prompt)
            info["vidore_prompt"] = params.vidore_prompt
        files.write_json(out / task.name / "dataset.json", info, sort_keys=True)
        if rejects:
            _write_table(Path(rejects_root) / OUT / f"{task.name}.parquet",
                         [dict(zip(REJECT_SCHEMA.names, r)) for r in rejects], REJECT_SCHEMA)
        counts[task.name] = {**c, "eval_type": task.eval_type, "expected": info["expected"]}
        log.info("MMEB-V2 %s: %d queries, %d candidates, %d rejected", task.name, len(queries), len(corpus),
                 len(rejects))
    return counts


def problems(counts: dict) -> list[str]:
    """A dataset left with fewer queries than expected, named (the stage fails on it)."""
    return [f"MMEB-V2 dataset {name}: {c['queries']} queries of the {c['expected']} expected after normalize "
            f"({c['rejected']} rejected: {c['rejected_by_reason']})"
            for name, c in sorted(counts.items()) if c["queries"] < c["expected"]]
