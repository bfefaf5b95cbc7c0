"""Tiny normalized eval sets (records in RECORD_SCHEMA and their content-addressed image store) and a
straightforward reference scorer, for tests of the evaluation.

    paths = build_tiny_eval(tmp_path)      # {"eval": .../eval, "images": .../images}: 3 datasets
    write_records(eval_root, "Hand", "vqa", "IND", [(record_side("q"), [record_side("gold"), record_side("x")])])
    reference_scores(eval_root, "Hand", vector_of)     # precision@1, hit@5, MRR, NDCG@5 the slow, plain way
    eval_params(batch_size=3)                          # the eval section these tests score them with
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.imagestore import ImageStoreWriter, StoredImage, merge
from pipelines.params import Eval
from pipelines.schema import IMAGE_TOKEN, RECORD_SCHEMA
from tests.support.images import seeded_png


def record_side(text: str, image: str | None = None, instruction: str = "") -> dict:
    """A RECORD_SCHEMA side; `image` is an image sha256 (its store entry is written separately)."""
    raw = (f"{IMAGE_TOKEN}\n" if image else "") + instruction + text
    template = (f"{IMAGE_TOKEN}\n" if image else "") + ("{instruction}" if instruction else "") + "{text}"
    ref = None if image is None else {"sha256": image, "path": f"img/{image[:8]}.png", "width": 8, "height": 6}
    return {"raw": raw, "instruction": instruction, "text": text, "has_image_token": image is not None,
            "template": template, "image": ref}


def write_images(images_root: Path, blobs: list[bytes]) -> list[str]:
    """Store PNG blobs in a content-addressed image store; return their sha256s."""
    writer = ImageStoreWriter(images_root, "test")
    shas = []
    for b in blobs:
        sha = hashlib.sha256(b).hexdigest()
        w, h = Image.open(io.BytesIO(b)).size
        writer.add(StoredImage(sha, b, w, h, "PNG"))
        shas.append(sha)
    writer.close()
    merge(images_root)
    return shas


def write_records(eval_root: Path, dataset: str, meta: str, dist: str, rows: list[tuple[dict, list[dict]]],
                  rows_per_part: int = 0) -> None:
    """rows = [(query side, [gold, negatives...])] -> data/normalized/eval/<dataset>/part-*.parquet."""
    records = [
        {"id": f"{dataset}/test/{i}", "dataset": dataset, "split": "test", "meta_task": meta,
         "distribution": dist, "instruction": q["instruction"], "query": q, "target": cands[0],
         "negatives": cands[1:]}
        for i, (q, cands) in enumerate(rows)
    ]
    out = eval_root / dataset
    out.mkdir(parents=True, exist_ok=True)
    size = rows_per_part or len(records)
    for part, start in enumerate(range(0, len(records), size)):
        table = pa.Table.from_pylist(records[start:start + size], schema=RECORD_SCHEMA)
        pq.write_table(table, out / f"part-{part:05d}.parquet")


def build_tiny_eval(root: Path, seed: int = 0, n_rows: int = 12) -> dict[str, Path]:
    """Three small datasets covering the three modality buckets, planted duplicates included:

    * Tiny-CLS   (classification, IND): image -> label out of a 4-label set (shared candidates)
    * Tiny-VQA   (vqa, OOD): image + question -> answer, 5 candidates, the gold repeated in some rows
    * Tiny-RET   (retrieval, IND): text -> image, 4 to 6 candidates (ragged), queries repeated
    """
    rng = random.Random(seed)
    eval_root, images_root = root / "eval", root / "images"
    shas = write_images(images_root, [seeded_png(seed * 1000 + i, size=(8 + i % 5, 6 + i % 3))
                                      for i in range(10)])
    labels = ["red circle", "blue square", "green star", "yellow cross"]
    cls_rows = []
    for i in range(n_rows):
        gold = rng.randrange(4)
        cands = [record_side(labels[gold])] + [record_side(labels[j]) for j in range(4) if j != gold]
        cls_rows.append((record_side("", shas[i % 10], "Represent the given image for classification\n"), cands))
    vqa_rows = []
    answers = ["one", "two", "three", "four", "five", "six", "seven"]
    for i in range(n_rows):
        picks = rng.sample(answers, 5)
        if i % 3 == 0:
            picks[3] = picks[0]  # a duplicate of the gold at another index
        vqa_rows.append((record_side(f"how many {labels[i % 4]}?", shas[(i * 3) % 10], "Answer: "),
                         [record_side(a) for a in picks]))
    ret_rows = []
    for i in range(n_rows):
        k = 4 + i % 3
        picks = rng.sample(range(10), k)
        ret_rows.append((record_side(f"a photo of {labels[i % 4]}", None, "Find an image: "),
                         [record_side("", shas[j], "Represent the given image\n") for j in picks]))
    write_records(eval_root, "Tiny-CLS", "classification", "IND", cls_rows)
    write_records(eval_root, "Tiny-VQA", "vqa", "OOD", vqa_rows, rows_per_part=5)
    write_records(eval_root, "Tiny-RET", "retrieval", "IND", ret_rows)
    return {"eval": eval_root, "images": images_root}


def reference_scores(eval_root: Path, dataset: str, vector_of) -> dict:
    """Per row: encode the query and every candidate (no dedup), np.argmax over cosines;
    the gold's rank from a stable descending sort. vector_of(side) -> unit vector."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((eval_root / dataset).glob("part-*.parquet"))])
    hits, ranks = [], []
    for row in table.to_pylist():
        q = vector_of(row["query"])
        cands = np.stack([vector_of(c) for c in [row["target"]] + row["negatives"]])
        scores = cands @ q
        hits.append(int(np.argmax(scores) == 0))
        ranks.append(int(np.flatnonzero(np.argsort(-scores, kind="stable") == 0)[0]))
    ranks = np.array(ranks)
    return {
        "hits": int(sum(hits)),
        "precision_at_1": 100.0 * sum(hits) / len(hits),
        "hit_at_5": 100.0 * float(np.mean(ranks < 5)),
        "mrr": 100.0 * float(np.mean([1.0 / (r + 1) for r in ranks])),
        "ndcg_at_5": 100.0 * float(np.mean([1.0 / math.log2(r + 2) if r < 5 else 0.0 for r in ranks])),
        "ranks": ranks,
    }


def eval_params(**values) -> Eval:
    """The checked `eval` section of the evaluation tests (both models, every dataset, 40-pixel
    images, the cache on), with `values` instead."""
    return Eval.parse(dict({"models": ["base", "embedder"], "batch_size": 4, "datasets": "all",
                            "image_max_pixels": 40, "cache": True, "cache_dir": ".cache/embeddings",
                            "cache_max_gb": 20, "precision": "fp32", "positions": "grid",
                            "stray_image_token": "strip", "image_resize": "collator", "image_square": None, "small_image_side": None,
                            "prompt": "vlm2vec", "video_max_pixels": None,
                            "rendering_from": "params", "v2_ties": "strict", "v2_labels": "correct",
                            "video_input": "native"},
                           **values))
