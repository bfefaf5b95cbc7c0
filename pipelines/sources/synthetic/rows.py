"""Rows of the synthetic MMEB: builders' examples as the column values of the Hub's parquet files.

Train: the six MMEB-train columns of `original`, and `diverse_instruction`, where only `qry` differs
(`instructions.diversify`). Eval: the query and a candidate list with the gold at index 0; for
classification the whole label set in a per-row shuffled order, otherwise exactly `k` distinct
candidates: the row's same-scene hard candidates, then other rows' golds in a random order, topped
up from the dataset's text vocabulary only when the rows run short. Every image a row names is added
to the zip it will be read from; train rows name it as images/<zip member>, as the train zips unpack
into images/.
"""

from __future__ import annotations

import random

from pipelines.schema import EVAL_COLUMNS, TRAIN_COLUMNS
from pipelines.sources.synthetic.datasets import BUILDERS, Example, Img
from pipelines.sources.synthetic.instructions import diversify
from pipelines.sources.synthetic.zips import ZipBuffer

Candidate = tuple[str, str]  # (text, image path); "" where there is none


def train_columns(name: str, examples: list[Example], zipbuf: ZipBuffer, rng: random.Random) -> tuple[dict, dict]:
    """The `original` and `diverse_instruction` columns of train subset `name`."""
    member = f"{name}/Train/"  # the zips unpack into images/: rows say images/<member>

    def path(img: Img | None) -> str:
        if img is None:
            return ""
        zipbuf.add(member + img.name, img)
        return "images/" + member + img.name

    original = {c: [] for c in TRAIN_COLUMNS}
    for ex in examples:
        for col, val in zip(
            TRAIN_COLUMNS,
            (ex.qry, path(ex.qry_image), ex.pos_text, path(ex.pos_image), ex.neg_text, path(ex.neg_image)),
        ):
            original[col].append(val)
    diverse = dict(original, qry=[diversify(name, q, rng) for q in original["qry"]])
    return original, diverse


def eval_columns(name: str, examples: list[Example], k: int, zipbuf: ZipBuffer, rng: random.Random) -> dict:
    """The MMEB-eval columns of dataset `name`, with `k` candidates per row (classification: its labels)."""
    builder = BUILDERS[name]

    def path(img: Img | None) -> str:
        if img is None:
            return ""
        zipbuf.add(f"{name}/{img.name}", img)
        return f"{name}/{img.name}"

    golds = [(ex.pos_text, path(ex.pos_image)) for ex in examples]
    rows = {c: [] for c in EVAL_COLUMNS}
    for i, ex in enumerate(examples):
        gold = golds[i]
        if builder.labels:
            cands = _label_candidates(gold, builder.labels, rng)
        else:
            hard = [(t, path(img)) for t, img in ex.hard_candidates[: k - 1]]  # exactly k with the gold
            others = [g for j, g in enumerate(golds) if j != i]
            cands = _drawn_candidates([gold] + hard, others, builder.vocabulary, k, rng)
            if len(cands) < k:
                raise ValueError(
                    f"{name}: only {len(cands)} distinct candidates for row {i}; "
                    f"eval_rows={len(examples)} is too small for eval_candidates={k}"
                )
        rows["qry_text"].append(ex.qry)
        rows["qry_img_path"].append(path(ex.qry_image))
        rows["tgt_text"].append([t for t, _ in cands])
        rows["tgt_img_path"].append([p for _, p in cands])
    return rows


def _label_candidates(gold: Candidate, labels: tuple[str, ...], rng: random.Random) -> list[Candidate]:
    """The gold label, then every other label of the set in a random order."""
    rest = [label for label in labels if label != gold[0]]
    rng.shuffle(rest)
    return [gold] + [(label, "") for label in rest]


def _drawn_candidates(
    cands: list[Candidate], others: list[Candidate], vocabulary: tuple[str, ...], k: int, rng: random.Random
) -> list[Candidate]:
    """`cands` (the gold and its hard candidates) filled up to k with distinct ones from the other rows'
    golds in a random order, then from `vocabulary`; fewer than k when both run short."""
    pool = list(others)
    rng.shuffle(pool)
    pool += [(v, "") for v in vocabulary]  # top-up, only reached when rows run short
    seen = {c if c[1] else c[0] for c in cands}
    for cand in pool:
        if len(cands) >= k:
            break
        key = cand if cand[1] else cand[0]  # text candidates must differ in text
        if key not in seen:
            seen.add(key)
            cands.append(cand)
    return cands
