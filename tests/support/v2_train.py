"""A tiny normalized training set with MMEB-V2 pairs (V2_TRAIN_SCHEMA) beside a V1 dataset, for the
shard, stream and recipe tests of video and visual-document training.

    train, store = build_v2_train(root)        # root/normalized/train/<dataset>/, root/normalized/images/

Datasets (`rows` records each), their raw strings as VLM2Vec-V2's training loaders build them:

    Syn-V2Doc        visdoc: "<|image_1|> <question>" + a page image -> the answer text (colpali_train_set)
    Syn-V2VideoCap   video:  "<|video_1|>\\nDescribe the video." + frames -> the caption (LLaVA-Hound captions)
    Syn-V2VideoRet   video:  "Find a video that contains ...: <caption>" -> "Understand ...: <|video_1|>" + frames
    Syn-V1           RECORD_SCHEMA: an image query -> a caption (only with `v1=True`)

Every picture is a flat colour drawn from the record's index, so each record's frames and pages differ;
pages are larger than the frames (`page_size`) so that the shard stage's pre-scaling has work to do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.imagestore import ImageStoreWriter, StoredImage, merge
from pipelines.schema import IMAGE_TOKEN, RECORD_SCHEMA, V2_TRAIN_SCHEMA, VIDEO_TOKEN
from tests.support.images import image_bytes

DOC, VIDEO_CAPTION, VIDEO_RETRIEVAL, V1 = "Syn-V2Doc", "Syn-V2VideoCap", "Syn-V2VideoRet", "Syn-V1"
CAPTION_PROMPT = "Describe the video."
RETRIEVAL_PROMPT = "Find a video that contains the following visual content: "
VIDEO_TARGET_PROMPT = "Understand the content of the provided video: "


def _picture(writer: ImageStoreWriter, colour: tuple[int, int, int], size: tuple[int, int], path: str) -> dict:
    data = image_bytes(colour, size=size, fmt="PNG")
    image = StoredImage(hashlib.sha256(data).hexdigest(), data, size[0], size[1], "PNG")
    writer.add(image)
    return {"sha256": image.sha256, "path": path, "width": size[0], "height": size[1]}


def v2_side(raw: str, image: dict | None = None, video: list[dict] | None = None) -> dict:
    """A V2_SIDE: `raw` with its placeholders, and a page image or a video's frames."""
    return {"raw": raw, "image": image, "video": video, "frames_available": len(video) if video else None}


def _record(dataset: str, i: int, modality: str, query: dict, target: dict) -> dict:
    return {"id": f"{dataset}/train/{i}", "dataset": dataset, "split": "train", "modality": modality,
            "meta_task": "retrieval", "query": query, "target": target, "negatives": []}


def _v1_side(raw: str, text: str, image: dict | None) -> dict:
    return {"raw": raw, "instruction": "", "text": text, "has_image_token": image is not None,
            "template": raw.replace(text, "{text}", 1), "image": image}


def frame_colour(dataset: str, i: int, f: int) -> tuple[int, int, int]:
    """The colour of frame `f` of record `i`'s video in `dataset`."""
    return (i * 40 + f * 9) % 256, (len(dataset) * 17 + f * 50) % 256, (i * 7 + 90) % 256


def _frames(writer: ImageStoreWriter, dataset: str, i: int, frames: int, size: tuple[int, int]) -> list[dict]:
    return [_picture(writer, frame_colour(dataset, i, f), size, f"{dataset}/video{i}/frame{f:03d}.jpg")
            for f in range(frames)]


def v2_records(writer: ImageStoreWriter, rows: int, frames: int, frame_size: tuple[int, int],
               page_size: tuple[int, int]) -> dict[str, list[dict]]:
    """The three V2 datasets' records, their pictures added to `writer`."""
    out: dict[str, list[dict]] = {DOC: [], VIDEO_CAPTION: [], VIDEO_RETRIEVAL: []}
    for i in range(rows):
        page = _picture(writer, ((i * 50) % 256, 200, (i * 30) % 256), page_size, f"pages/{i}.png")
        out[DOC].append(_record(DOC, i, "visdoc", v2_side(f"{IMAGE_TOKEN} what is on page {i}?", image=page),
                                v2_side(f"the answer is {i}")))
        video = _frames(writer, VIDEO_CAPTION, i, frames, frame_size)
        out[VIDEO_CAPTION].append(_record(VIDEO_CAPTION, i, "video", v2_side(f"{VIDEO_TOKEN}\n{CAPTION_PROMPT}",
                                                                             video=video),
                                          v2_side(f"a video of colour {i}")))
        video = _frames(writer, VIDEO_RETRIEVAL, i, frames, frame_size)
        out[VIDEO_RETRIEVAL].append(_record(VIDEO_RETRIEVAL, i, "video", v2_side(f"{RETRIEVAL_PROMPT}colour {i}"),
                                            v2_side(f"{VIDEO_TARGET_PROMPT}{VIDEO_TOKEN}", video=video)))
    return out


def v1_records(writer: ImageStoreWriter, rows: int, size: tuple[int, int]) -> list[dict]:
    out = []
    for i in range(rows):
        image = _picture(writer, (200, (i * 60) % 256, 40), size, f"images/{i}.png")
        out.append({"id": f"{V1}/original/{i}", "dataset": V1, "split": "original", "meta_task": "retrieval",
                    "distribution": "IND", "instruction": "",
                    "query": _v1_side(f"{IMAGE_TOKEN}\nimage {i}", f"image {i}", image),
                    "target": _v1_side(f"caption {i}", f"caption {i}", None), "negatives": []})
    return out


def build_v2_train(root: Path, *, rows: int = 4, frames: int = 2, v1: bool = True,
                   frame_size: tuple[int, int] = (28, 28), page_size: tuple[int, int] = (56, 84)) -> tuple[Path, Path]:
    """Write the datasets (one part each) and their image store under `root/normalized`; return
    (train records folder, image store folder)."""
    train, store = Path(root) / "normalized" / "train", Path(root) / "normalized" / "images"
    writer = ImageStoreWriter(store, "w0")
    tables = {d: pa.Table.from_pylist(recs, schema=V2_TRAIN_SCHEMA)
              for d, recs in v2_records(writer, rows, frames, frame_size, page_size).items()}
    if v1:
        tables[V1] = pa.Table.from_pylist(v1_records(writer, rows, frame_size), schema=RECORD_SCHEMA)
    writer.close()
    merge(store)
    for dataset, table in tables.items():
        (train / dataset).mkdir(parents=True)
        pq.write_table(table, train / dataset / ("part-00000.parquet" if dataset == V1 else "pairs-00000.parquet"))
    return train, store
