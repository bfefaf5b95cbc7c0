"""MMEB-V2's 36 image tasks with V2's loaders (``src/data/eval_dataset/image_*.py`` of VLM2Vec), read
from MMEB-eval's annotation parquet (``ziyjiang/MMEB_Test_Instruct``, config = task name, split
``test``) under ``MMEB-V2/<task>/`` and the images under the task's root (``image-tasks/``).

    queries, corpus, rejects, counts = image_dataset(root, task, params, store)

Columns: ``qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text, tgt_img_path`` (lists for the
targets). Every task is ``local``: a query ranks its own candidates, the first one gold.

* image_cls / image_qa / image_i2t: the query is the image with `v2_inputs.image_query`'s text; the
  candidates are the raw ``tgt_text`` strings, which are also their ids (``tgt_inst`` is not read).
* image_t2i: a text query (VisDial with its extra newline); the candidates are images with
  `v2_inputs.image_candidates`' text, their ids the image paths (a repeated path keeps its first
  caption, as VLM2Vec's deduplication by name does).
* image_i2i_vg: an image query; image candidates named ``path:caption`` (`v2_inputs.vg_candidate_names`).

A row with no target is ``no_candidates``; target lists of unequal lengths are
``candidate_lists_unequal`` (VLM2Vec's ``zip`` would drop the surplus); a query or candidate image
that is missing or unusable rejects the row with the image's reason (VLM2Vec fails on it).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import Rejected
from pipelines.mmeb_v2 import V2Task
from pipelines.params import Normalize
from pipelines.sources.v2_rows import Collected, Store, side, start
from pipelines.v2_inputs import PLACEHOLDERS, image_candidates, image_query, vg_candidate_names

COLUMNS = ["qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"]
TEXT_TARGETS = ("image_cls", "image_qa", "image_i2t")


def _query(out: Collected, task: V2Task, image_root: Path, row: dict) -> dict:
    text = image_query(task.parser, row["qry_inst"], row["qry_text"], PLACEHOLDERS, dataset=task.name)
    if task.parser == "image_t2i":
        return side(text)
    return side(text, image=out.image(image_root / row["qry_img_path"]))


def _candidates(out: Collected, task: V2Task, image_root: Path, row: dict) -> list[tuple[str, dict]]:
    """(id, side) of each candidate of a row, in source order."""
    captions = list(row["tgt_text"] or [])
    if not captions:
        raise Rejected("no_candidates", "tgt_text is empty")
    if task.parser in TEXT_TARGETS:
        return [(c, side(c)) for c in captions]
    paths = list(row["tgt_img_path"] or [])
    if len(paths) != len(captions):
        raise Rejected("candidate_lists_unequal", f"{len(paths)} tgt_img_path for {len(captions)} tgt_text")
    texts = image_candidates(task.parser, row["tgt_inst"], captions, PLACEHOLDERS)
    names = vg_candidate_names(paths, captions) if task.parser == "image_i2i_vg" else paths
    return [(n, side(t, image=out.image(image_root / p))) for n, t, p in zip(names, texts, paths)]


def image_dataset(root: Path, task: V2Task, params: Normalize, store: Store):
    """Queries (each with its candidate list, the first gold), the distinct candidates, rejects."""
    rows, out = start(root, task, params, store, COLUMNS)
    image_root = root / task.root
    for i, row in enumerate(rows):
        try:
            query = _query(out, task, image_root, row)
            candidates = _candidates(out, task, image_root, row)
        except Rejected as e:
            out.reject("queries", str(i), e)
            continue
        for name, value in candidates:
            out.candidate(name, value)
        names = [n for n, _ in candidates]
        out.query(i, str(i), query, names, [(names[0], 1.0)])
    return out.result()
