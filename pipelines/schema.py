"""The unified record schema: the contract between normalize, shard, the trainer and evaluation.

One row = one (instruction, query, target, negatives) example:

    id            "<dataset>/<split>/<row index>"  (row index in the source parquet, 0-based; stable)
    dataset       Hub config name, e.g. "CIRR" or "Syn-CIRR"
    split         "original" | "diverse_instruction" (train) | "test" (eval)
    meta_task     "classification" | "vqa" | "retrieval" | "grounding"
    distribution  "IND" | "OOD"
    instruction   the query-side task instruction, image token removed (== query.instruction)
    query         SIDE
    target        SIDE
    negatives     list<SIDE>  train: hard negatives (possibly empty);
                              eval: the other candidates in their original order, so
                              [target] + negatives is the source candidate list (gold at index 0)

    SIDE = struct {
        raw              the source string exactly as in the raw parquet (with "<|image_1|>")
        instruction      the instruction part of raw ("" when the side has none), no image token
        text             the content part of raw (question, caption, label, ...), no image token
        has_image_token  raw contains "<|image_1|>"
        template         raw with the instruction replaced by "{instruction}", the text by
                         "{text}" (literal braces doubled): `pipelines.prompts.compose`
                         rebuilds raw byte for byte from (template, instruction, text)
        image            struct {sha256, path, width, height} or null
                         sha256 of the stored bytes in data/normalized/images/ (see
                         pipelines/imagestore.py); path = the source path as written in the raw row
    }

Stored as data/normalized/{train,eval}/<dataset>/part-NNNNN.parquet. Rejected rows go to
data/rejects/{train,eval}/<dataset>.parquet with REJECT_SCHEMA.
"""

from __future__ import annotations

import pyarrow as pa

IMAGE_TOKEN = "<|image_1|>"  # MMEB's (Phi-3.5-V) placeholder, swapped per backbone at render time

IMAGE_REF = pa.struct(
    [
        ("sha256", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)

SIDE = pa.struct(
    [
        ("raw", pa.string()),
        ("instruction", pa.string()),
        ("text", pa.string()),
        ("has_image_token", pa.bool_()),
        ("template", pa.string()),
        ("image", IMAGE_REF),
    ]
)

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("meta_task", pa.string()),
        ("distribution", pa.string()),
        ("instruction", pa.string()),
        ("query", SIDE),
        ("target", SIDE),
        ("negatives", pa.list_(SIDE)),
    ]
)

# One row per rejected source row: what it was and why it was refused.
REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("reason", pa.string()),  # a short machine-readable reason, e.g. "image_missing"
        ("detail", pa.string()),  # human-readable detail (exception text, offending path, ...)
        ("row", pa.string()),  # the source row as JSON (strings only; bytes never stored here)
    ]
)

# data/normalized/images/images-XX.parquet, XX = sha256[:2]; each distinct image stored once.
IMAGE_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("bytes", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),  # PIL format name of the stored bytes: "JPEG", "PNG", ...
    ]
)

# Raw MMEB column names (MMEB-train's and MMEB-eval's parquet files)
TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")


def record_id(dataset: str, split: str, row_index: int) -> str:
    return f"{dataset}/{split}/{row_index}"


def sample_key(record_id_: str) -> str:
    """WebDataset key for a record id: no dots, no slashes (webdataset splits keys at the first dot)."""
    key = record_id_.replace("/", "__")
    if "." in key:
        key = key.replace(".", "_")
    return key


# --- MMEB-V2: queries, a per-dataset corpus and graded relevance ---------------------------------
# V2's datasets rank a query either against its own candidate list (eval_type "local") or against
# the dataset's whole corpus ("global"), and label relevance with grades (visual-document qrels).
# They are stored apart from the V1 records (RECORD_SCHEMA above is unchanged):
#
#   data/normalized/eval_v2/<dataset>/queries.parquet   V2_QUERY_SCHEMA, one row per query
#   data/normalized/eval_v2/<dataset>/corpus.parquet    V2_CORPUS_SCHEMA, one row per distinct candidate
#
# A candidate is stored once per dataset under its id; queries refer to candidates by id only.
# `raw` is the input string exactly as VLM2Vec's loader builds it, with IMAGE_TOKEN / VIDEO_TOKEN
# where the backbone's tokens go (`pipelines.v2_inputs.PLACEHOLDERS`). A video is its sampled
# frames in temporal order, each an IMAGE_REF into the image store (a frame shared by several
# videos or datasets is stored once).

VIDEO_TOKEN = "<|video_1|>"  # placeholder for a video, swapped per backbone at render time

V2_SIDE = pa.struct(
    [
        ("raw", pa.string()),
        ("image", IMAGE_REF),  # null when the side has no image
        ("video", pa.list_(IMAGE_REF)),  # null when the side has no video
        ("frames_available", pa.int32()),  # frame files in the source folder (null without video)
    ]
)

RELEVANCE = pa.struct([("candidate_id", pa.string()), ("grade", pa.float64())])

V2_QUERY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # "<dataset>/<split>/<row index>"
        ("dataset", pa.string()),  # the MMEB-V2 task name (score-file key)
        ("split", pa.string()),
        ("modality", pa.string()),  # "image" | "video" | "visdoc"
        ("meta_task", pa.string()),  # pipelines.mmeb_v2.META_TASKS
        ("eval_type", pa.string()),  # "local" | "global": a property of the dataset, on every row
        ("query_id", pa.string()),  # the source's query id (qrels query-id), else the row index
        ("query", V2_SIDE),
        ("candidates", pa.list_(pa.string())),  # local: the row's own list in source order (repeats
        # kept, as VLM2Vec ranks them); global: empty, the whole corpus is ranked
        ("relevant", pa.list_(RELEVANCE)),  # graded labels (grade 1 for binary), source order
    ]
)

V2_CORPUS_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("candidate_id", pa.string()),  # unique within the dataset
        ("candidate", V2_SIDE),
    ]
)

# --- MMEB-V2 training pairs: video and visual-document sources (VLM2Vec-V2's mixture) ----------
# A V2 training source (colpali_train_set, VisRAG in-domain, LLaVA-Hound video captions and QA)
# gives (query, positive) pairs whose sides may hold a page image or a video. They are stored
# beside the V1 training datasets, one folder per dataset, with their own schema (the V1 records
# above stay byte-identical):
#
#   data/normalized/train/<dataset>/pairs-NNNNN.parquet   V2_TRAIN_SCHEMA
#
# The file name tells the schemas apart (a V1 dataset's files are part-NNNNN.parquet), so a glob such
# as data/normalized/train/*/part-*.parquet reads MMEB-train's records alone, and
# data/normalized/train/*/pairs-*.parquet the V2 pairs alone (`train_parts` gives a dataset's files).
#
# A side is a V2_SIDE: `raw` is the input string exactly as VLM2Vec-V2's training loader builds it,
# with IMAGE_TOKEN / VIDEO_TOKEN where the backbone's tokens go; a video is its sampled frames in
# temporal order, each stored once in the image store.

V2_TRAIN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # "<dataset>/<split>/<row index>"
        ("dataset", pa.string()),  # this project's dataset name, e.g. "colpali_train_set"
        ("split", pa.string()),  # "train"
        ("modality", pa.string()),  # "image" | "video" | "visdoc"
        ("meta_task", pa.string()),  # "retrieval" | "vqa" | "classification" | "grounding"
        ("query", V2_SIDE),
        ("target", V2_SIDE),
        ("negatives", pa.list_(V2_SIDE)),  # hard negatives (VLM2Vec-V2 uses none: usually empty)
    ]
)


def is_v2_train_schema(schema: pa.Schema) -> bool:
    """Whether a training dataset's parquet schema is V2_TRAIN_SCHEMA (else RECORD_SCHEMA)."""
    return schema.equals(V2_TRAIN_SCHEMA, check_metadata=False)


RECORD_PARTS = "part-*.parquet"  # a train or eval dataset's RECORD_SCHEMA files
V2_PAIR_PARTS = "pairs-*.parquet"  # a V2 training set's V2_TRAIN_SCHEMA files


def train_parts(dataset_dir) -> list:
    """A training dataset's files in order: its RECORD_SCHEMA parts or its V2_TRAIN_SCHEMA pairs
    (ValueError for a folder holding both)."""
    from pathlib import Path

    records, pairs = (sorted(Path(dataset_dir).glob(g)) for g in (RECORD_PARTS, V2_PAIR_PARTS))
    if records and pairs:
        raise ValueError(f"{dataset_dir}: holds both {RECORD_PARTS} (MMEB records) and {V2_PAIR_PARTS} "
                         "(MMEB-V2 pairs); a dataset is one or the other")
    return records or pairs


def holds_v2_pairs(dataset_dir) -> bool:
    """Whether a training dataset holds MMEB-V2 pairs: its files are named `V2_PAIR_PARTS` (whose
    schema is V2_TRAIN_SCHEMA; `RECORD_PARTS` hold RECORD_SCHEMA). ValueError as `train_parts`."""
    parts = train_parts(dataset_dir)
    return bool(parts) and parts[0].match(V2_PAIR_PARTS)
