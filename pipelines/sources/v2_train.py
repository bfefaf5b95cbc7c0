"""Readers of VLM2Vec-V2's training sources (`pipelines.v2_train`): a set's raw rows in its Hub layout
-> `pipelines.schema.V2_TRAIN_SCHEMA` pairs, page images and sampled frames stored once.

    pairs = read_set(root / "V2-train", SETS["visrag-indomain"], params.normalize, store)
    pairs.rows, pairs.rejects, pairs.counts()

``vidore`` / ``visrag`` read the repo's ``data/train-*.parquet`` in batches (``normalize.batch_rows``
rows); the page (``image.bytes``) is decoded and checked as every image is
(`pipelines.images.prepare_image`). ``llavahound_caption`` / ``llavahound_qa`` read the jsonl line by
line (``id, video, conversations``) and sample ``normalize.frames_per_video`` frames of
``train_300k/<video>/`` (`pipelines.frames`). A row VLM2Vec skips (a missing or empty frame folder) or
this project refuses (an undecodable page, an empty question or answer, a malformed line, a video
name leaving the frame folder) is a reject with its reason. Row ids are ``<set>/train/<source row>``,
the row's 0-based index over the set's files in order.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterator

import pyarrow.parquet as pq

from pipelines.errors import Rejected, StageFailed
from pipelines.images import prepare_image
from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN
from pipelines.sources.v2_rows import Collected, Store, ref, side
from pipelines.v2_train import (FRAME_FOLDER, QUERY_PROMPTS, SOURCES, TrainSet, colpali_query, llavahound_pair,
                                video_side, visrag_query, visrag_target)

SPLIT = "train"


class Pairs:
    """One set's pair rows, rejects and counts, built row by row."""

    def __init__(self, spec: TrainSet, root: Path, store: Store, params):
        self.spec, self.store, self.max_pixels = spec, store, params.image_reject_pixels
        self.frames_per_video = params.frames_per_video
        self.videos = Collected(None, Path(root), store, params.image_reject_pixels, 0)  # frame cache only
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self.rows_in = 0
        self.notes: Counter = Counter()  # kept rows worth counting (an unknown VisRAG source, ...)

    def row_id(self, index: int) -> str:
        return f"{self.spec.name}/{SPLIT}/{index}"

    def add(self, index: int, query: dict, target: dict) -> None:
        """Keep a pair; Rejected ``placeholder_mismatch`` unless each side's string holds one image
        placeholder exactly when it has an image and one video placeholder exactly when it has frames
        (a LLaVA-Hound request without its ``<video>`` mark: the frames would have no place, and the
        backbone would read a stray placeholder as text)."""
        for name, s in (("query", query), ("target", target)):
            want = (int(s.get("image") is not None), int(bool(s.get("video"))))
            got = (s["raw"].count(IMAGE_TOKEN), s["raw"].count(VIDEO_TOKEN))
            if got != want:
                raise Rejected("placeholder_mismatch", f"{name} {s['raw'][:80]!r}: {got[0]} image and {got[1]} "
                               f"video placeholder(s) for {want[0]} image(s) and {want[1]} video(s)")
        self.rows.append({"id": self.row_id(index), "dataset": self.spec.name, "split": SPLIT,
                          "modality": self.spec.modality, "meta_task": self.spec.meta_task,
                          "query": query, "target": target, "negatives": []})

    def reject(self, index: int, e: Rejected, row: dict) -> None:
        self.rejects.append({"id": self.row_id(index), "dataset": self.spec.name, "split": SPLIT,
                             "reason": e.reason, "detail": e.detail,
                             "row": json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)})

    def page(self, image: dict | None, path: str) -> dict:
        """A page image from its parquet cell ({bytes, path}), stored; its reference."""
        data = (image or {}).get("bytes")
        if not data:
            raise Rejected("image_missing", f"{path}: the page has no bytes")
        stored = prepare_image(data, self.max_pixels).stored
        self.store(stored)
        return ref(stored.sha256, (image or {}).get("path") or path, stored.width, stored.height)

    def counts(self) -> dict:
        by_reason = Counter(r["reason"] for r in self.rejects)
        return {"rows_in": self.rows_in, "pairs": len(self.rows), "rejected": len(self.rejects),
                "rejected_by_reason": dict(sorted(by_reason.items())), "frames_stored": self.videos.frames,
                "short_videos": self.videos.short, "notes": dict(sorted(self.notes.items()))}


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Rejected("text_empty", f"{what} is {value!r}")
    return value


def set_files(root: Path, spec: TrainSet) -> list[Path]:
    """The annotation files of a set in its repo folder, in order; StageFailed when there are none."""
    folder = Path(root) / SOURCES[spec.source].folder
    found = sorted(folder.glob(spec.files))
    if not found:
        raise StageFailed(f"V2 training set {spec.name}: no {spec.files} under {folder} "
                          f"({SOURCES[spec.source].repo} in its Hub layout)")
    return found


def parquet_rows(files: list[Path], columns: list[str], batch_rows: int) -> Iterator[dict]:
    for path in files:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise StageFailed(f"{path} lacks column(s) {', '.join(missing)}")
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield from batch.to_pylist()


def _described(row: dict) -> dict:
    """A row for the rejects table: the image's path, never its bytes."""
    return {k: ({"path": v.get("path")} if isinstance(v, dict) else v) for k, v in row.items()}


def read_pages(root: Path, spec: TrainSet, params, store: Store) -> Pairs:
    """colpali_train_set (image + question -> answer) or visrag-indomain (query -> page)."""
    out = Pairs(spec, root, store, params)
    columns = ["image", "query"] + (["image_filename", "answer"] if spec.parser == "vidore" else ["source"])
    for index, row in enumerate(parquet_rows(set_files(root, spec), columns, params.batch_rows)):
        out.rows_in += 1
        try:
            question = _text(row["query"], "query")
            if spec.parser == "vidore":
                answer = _text(row["answer"], "answer")
                page = out.page(row["image"], row["image_filename"] or f"{spec.name}/{index}")
                out.add(index, side(colpali_query(question), image=page), side(answer))
            else:
                page = out.page(row["image"], f"{spec.name}/{index}")
                if row["source"] not in QUERY_PROMPTS:  # kept, as VLM2Vec keeps it, with no prompt
                    out.notes["source_without_prompt"] += 1
                out.add(index, side(visrag_query(question, row["source"])),
                        side(visrag_target(row["source"]), image=page))
        except Rejected as e:
            out.reject(index, e, _described(row))
    return out


def jsonl_rows(path: Path) -> Iterator[dict | Rejected]:
    """The non-blank lines of a jsonl file as dicts, a malformed line as a Rejected in its place."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield Rejected("row_malformed", f"{path.name} line {n}: {e}")
                continue
            yield row if isinstance(row, dict) else Rejected("row_malformed", f"{path.name} line {n}: not an object")


def _turns(row: dict) -> tuple[str, str]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        raise Rejected("conversation_short", f"conversations {turns!r}: VLM2Vec reads the first two turns")
    return _text(turns[0].get("value"), "conversations[0]"), _text(turns[1].get("value"), "conversations[1]")


def frame_folder(root: Path, spec: TrainSet, video) -> Path:
    """``train_300k/<video>`` in the repo folder; a name that would leave it is Rejected."""
    if not isinstance(video, str) or not video.strip():
        raise Rejected("video_missing", f"video is {video!r}")
    name = PurePosixPath(video)
    if name.is_absolute() or ".." in name.parts:
        raise Rejected("video_path_unsafe", f"video {video!r} leaves {FRAME_FOLDER}/")
    return Path(root) / SOURCES[spec.source].folder / FRAME_FOLDER / name


def read_videos(root: Path, spec: TrainSet, params, store: Store) -> Pairs:
    """A LLaVA-Hound set: each line's two turns and its video's sampled frames."""
    out = Pairs(spec, root, store, params)
    (path,) = set_files(root, spec)
    for index, row in enumerate(jsonl_rows(path)):
        out.rows_in += 1
        try:
            if isinstance(row, Rejected):
                raise row
            request, answer = _turns(row)
            refs, available = out.videos.video(frame_folder(root, spec, row.get("video")), out.frames_per_video)
            query, target = llavahound_pair(spec, request, answer)
            video = {"video": refs, "frames_available": available}
            if video_side(spec) == "query":
                out.add(index, side(query, **video), side(target))
            else:
                out.add(index, side(query), side(target, **video))
        except Rejected as e:
            out.reject(index, e, row if isinstance(row, dict) else {})
    return out


READERS = {"vidore": read_pages, "visrag": read_pages, "llavahound_caption": read_videos,
           "llavahound_qa": read_videos}


def read_set(root: Path, spec: TrainSet, params, store: Store) -> Pairs:
    """One set's pairs from ``root`` (the V2-train folder); ``params``: the normalize section."""
    return READERS[spec.parser](root, spec, params, store)
