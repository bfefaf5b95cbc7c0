"""MMEB-V2's sets for the normalize stage: data/raw/MMEB-V2 -> data/normalized/eval_v2/<dataset>/.

    counts = normalize_v2(raw_root, out_root, rejects_root, params.normalize)   # {} without MMEB-V2

Each dataset becomes (`pipelines.schema`)::

    eval_v2/<dataset>/queries.parquet   V2_QUERY_SCHEMA: one row per query, its graded relevant ids
    eval_v2/<dataset>/corpus.parquet    V2_CORPUS_SCHEMA: one row per distinct candidate
    eval_v2/<dataset>/dataset.json      modality, meta-task, eval type (local / global), expected queries;
                                        a BEIR set's corpus id type (id_type) and ViDoRe prompt

Pages and sampled frames go to the image store (out_root/images, staged for the stage's merge) once
each; the rows hold references. Input strings are VLM2Vec's (`pipelines.v2_inputs`) with the
placeholder tokens. Each loader family has its reader (`READERS`, by the task's parser): ``vidore`` /
``visrag`` (`pipelines.sources.beir`), the video families (`pipelines.sources.v2_video`: classification,
SSv2, text -> video retrieval, moment retrieval; `pipelines.sources.v2_video_qa`: video QA) and the
image tasks (`pipelines.sources.v2_image`), each reading annotation rows and images or frame folders
(``frames_per_video`` frames a video, every frame of a MomentSeeker clip). Rows refused are counted by reason in the
dataset's metrics/etl.json entry and written to data/rejects/eval_v2/<dataset>.parquet; `problems`
names a dataset left short of its expected queries (the stage fails on it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import files, mmeb_v2
from pipelines.mmeb_v2 import LAYOUT_FOLDERS, RAW_FOLDER as FOLDER
from pipelines.imagestore import ImageStoreWriter
from pipelines.params import Normalize
from pipelines.schema import V2_CORPUS_SCHEMA, V2_QUERY_SCHEMA
from pipelines.sources.beir import read_beir
from pipelines.sources.v2_image import image_dataset
from pipelines.sources.v2_rows import Store, query_row, ref, side
from pipelines.sources.v2_video import moment_dataset, video_cls_dataset, video_ret_dataset
from pipelines.sources.v2_video_qa import video_qa_dataset
from pipelines.v2_inputs import PLACEHOLDERS, visdoc_candidate, visdoc_query

log = logging.getLogger(__name__)

OUT = "eval_v2"  # under data/normalized and data/rejects
REJECT_SCHEMA = pa.schema([("table", pa.string()), ("id", pa.string()), ("reason", pa.string()),
                           ("detail", pa.string())])


def beir_dataset(root: Path, task: mmeb_v2.V2Task, params: Normalize, store: Store):
    """Queries, corpus, rejects and counts of a visual-document set."""
    docset = read_beir(root / task.name, task.hub_split, task.language, store, params.image_reject_pixels)
    prompt = params.vidore_prompt
    queries = [query_row(task, i, qid, side(visdoc_query(task.parser, text, PLACEHOLDERS, prompt)), [],
                         docset.relevant[qid]) for i, (qid, text) in enumerate(docset.queries)]
    page = visdoc_candidate(task.parser, PLACEHOLDERS, prompt)
    corpus = [{"dataset": task.name, "candidate_id": cid,
               "candidate": side(page, ref(p.sha256, f"{task.name}/corpus/{cid}", p.width, p.height))}
              for cid, p in docset.pages.items()]
    rejects = [(r.table, r.id, r.reason, r.detail) for r in docset.rejects]
    return queries, corpus, rejects, docset.counts()


# each loader family's reader: (root, task, params, store) -> (queries, corpus, rejects, counts)
READERS = {
    **dict.fromkeys(mmeb_v2.BEIR_PARSERS, beir_dataset),
    **dict.fromkeys(("video_classification", "ssv2"), video_cls_dataset),
    **dict.fromkeys(("msrvtt", "msvd", "didemo", "youcook2", "vatex"), video_ret_dataset),
    **dict.fromkeys(("videomme", "nextqa", "egoschema", "mvbench", "activitynetqa"), video_qa_dataset),
    **dict.fromkeys(("moment_retrieval", "momentseeker"), moment_dataset),
    **dict.fromkeys(("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg"), image_dataset),
}


def _expected(raw_root: Path) -> dict[str, int]:
    manifest = raw_root / "manifest.json"
    if not manifest.is_file():
        return {}
    v2 = json.loads(manifest.read_text(encoding="utf-8")).get("v2", {})
    return {name: d["expected"] for name, d in v2.get("datasets", {}).items()}


def write_table(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    """`rows` as one zstd parquet file of `schema`, written atomically (the V2 tables and rejects)."""
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
        if task.parser not in READERS:
            raise ValueError(f"MMEB-V2 dataset {task.name}: loader family {task.parser!r} is not wired yet")
        queries, corpus, rejects, c = READERS[task.parser](root, task, params, store)
        write_table(out / task.name / "queries.parquet", queries, V2_QUERY_SCHEMA)
        write_table(out / task.name / "corpus.parquet", corpus, V2_CORPUS_SCHEMA)
        info = {"dataset": task.name, "modality": task.modality, "meta_task": task.meta_task,
                "eval_type": task.eval_type, "expected": expected.get(task.name, task.num_data)}
        if task.parser == "vidore":  # the instructions it was written with (normalize.vidore_prompt)
            info["vidore_prompt"] = params.vidore_prompt
        if "id_type" in c:  # a BEIR set's corpus ids: "int" ones are scored as integers, as VLM2Vec does
            info["id_type"] = c["id_type"]
        files.write_json(out / task.name / "dataset.json", info, sort_keys=True)
        if rejects:
            write_table(Path(rejects_root) / OUT / f"{task.name}.parquet",
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
