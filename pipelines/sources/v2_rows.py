"""What every MMEB-V2 loader family shares in normalize: annotation rows read from a dataset's Hub
folder, a video's frames sampled and stored once, and the dataset's rows, corpus and rejects collected.

    rows, out = start(root, task, params, store, ["video_id", "caption"])   # row dicts, a Collected
    refs, available = out.video(frame_folder, num_frames)      # Rejected: missing / empty / unreadable
    out.candidate("video7020", side(text, video=refs, frames_available=available))
    out.query(index, query_id, side(text), candidates=[], relevant=[("video7020", 1.0)])
    queries, corpus, rejects, counts = out.result()

A side is one `pipelines.schema.V2_SIDE` value (raw string with placeholder tokens, image ref, frame
refs). A candidate id is stored once per dataset, the first side given for it kept, as VLM2Vec's
``generate_cand_dataset`` deduplicates candidates by name. A video folder is sampled once however
many rows name it; its frames go to the image store (``store``), only references stay in the rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from pipelines.errors import Rejected, StageFailed
from pipelines.frames import sample_frames
from pipelines.images import prepare_image
from pipelines.imagestore import StoredImage
from pipelines.mmeb_v2 import FIRST_ROWS, V2Task

Store = Callable[[StoredImage], None]


def side(raw: str, image: dict | None = None, video: list[dict] | None = None,
         frames_available: int | None = None) -> dict:
    return {"raw": raw, "image": image, "video": video, "frames_available": frames_available}


def ref(sha256: str, path: str | None, width: int, height: int) -> dict:
    return {"sha256": sha256, "path": path, "width": width, "height": height}


def query_row(task: V2Task, index: int, query_id: str, query: dict, candidates: list[str],
              relevant: list[tuple[str, float]]) -> dict:
    return {"id": f"{task.name}/{task.hub_split}/{index}", "dataset": task.name, "split": task.hub_split,
            "modality": task.modality, "meta_task": task.meta_task, "eval_type": task.eval_type,
            "query_id": query_id, "query": query, "candidates": candidates,
            "relevant": [{"candidate_id": c, "grade": float(g)} for c, g in relevant]}


def _annotation_files(folder: Path, task: V2Task) -> list[tuple[Path, str | None]]:
    """(parquet file, subset) of a dataset's split: ``<config>/``, the folder itself or ``data/``;
    else one sub-folder per subset (MVBench's configs, concatenated with a ``subset`` column)."""
    split = f"{task.hub_split}-*.parquet"
    for place in ([task.hub_config] if task.hub_config else []) + [".", "data"]:
        found = sorted((folder / place).glob(split))
        if found:
            return [(f, None) for f in found]
    return [(f, f.parent.name) for f in sorted(folder.glob(f"*/{split}"))]


def _files_of(root: Path, task: V2Task) -> list[tuple[Path, str | None]]:
    folder = Path(root) / task.name
    found = _annotation_files(folder, task)
    if not found:
        raise StageFailed(f"MMEB-V2 dataset {task.name}: no {task.hub_split}-*.parquet under {folder} "
                          f"(the annotation repo in the Hub layout)")
    return found


def annotation_count(root: Path, task: V2Task) -> int:
    """The rows of a dataset's annotation split that VLM2Vec reads (the download's count of what was
    found): all of them, or the first `FIRST_ROWS`."""
    rows = sum(pq.read_metadata(path).num_rows for path, _ in _files_of(root, task))
    return min(rows, FIRST_ROWS.get(task.name, rows))


def annotations(root: Path, task: V2Task, columns: list[str]) -> dict[str, list]:
    """The columns of a dataset's annotation split under ``root/<task.name>`` (Hub layout); a
    missing split or column fails the stage, naming the dataset."""
    out: dict[str, list] = {c: [] for c in columns}
    for path, subset in _files_of(root, task):
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names and not (c == "subset" and subset)]
        if missing:
            raise StageFailed(f"MMEB-V2 dataset {task.name}: {path} lacks column(s) {', '.join(missing)} "
                              f"(VLM2Vec's {task.parser} loader reads {', '.join(columns)})")
        table = pq.read_table(path, columns=[c for c in columns if c in names])
        for c in columns:
            out[c] += table.column(c).to_pylist() if c in names else [subset] * table.num_rows
    return out


def _once(cache: dict, key, make):
    """``make()`` computed once per key; a Rejected is remembered and raised again each time."""
    if key not in cache:
        try:
            cache[key] = make()
        except Rejected as e:
            cache[key] = e
    if isinstance(cache[key], Rejected):
        raise cache[key]
    return cache[key]


class Collected:
    """One dataset's query rows, distinct candidates, rejects and counts, built row by row."""

    def __init__(self, task: V2Task, root: Path, store: Store, max_pixels: int, rows_in: int):
        self.task, self.root, self.store, self.max_pixels = task, Path(root), store, max_pixels
        self.rows_in = rows_in
        self.queries: list[dict] = []
        self.corpus: dict[str, dict] = {}
        self.rejects: list[tuple[str, str, str, str]] = []
        self.videos: dict[Path, tuple[list[dict], int] | Rejected] = {}
        self.images: dict[Path, dict | Rejected] = {}
        self.short = self.frames = self.not_sampled = 0

    def image(self, path: Path) -> dict:
        """One image file stored once; its reference (path relative to the MMEB-V2 root). A missing
        or unusable file is Rejected (the same reason each time it is named)."""
        return _once(self.images, path, lambda: self._stored(path))

    def video(self, folder: Path, num_frames: int | None) -> tuple[list[dict], int]:
        """(frame refs, frames in the folder) of one video, sampled and stored once; a missing or
        empty folder or an unreadable frame is Rejected (the same reason each time it is named)."""
        return _once(self.videos, folder, lambda: self._sampled(folder, num_frames))

    def _stored(self, path: Path) -> dict:
        if not path.is_file():
            raise Rejected("image_missing", f"{path} does not exist")
        stored = prepare_image(path.read_bytes(), self.max_pixels).stored
        self.store(stored)
        return ref(stored.sha256, path.relative_to(self.root).as_posix(), stored.width, stored.height)

    def _sampled(self, folder: Path, num_frames: int | None) -> tuple[list[dict], int]:
        sampled = sample_frames(folder, num_frames)
        refs = [self._stored(p) for p in sampled.paths]
        self.short += sampled.short
        self.frames += len(refs)
        return refs, sampled.available

    def reject(self, table: str, row_id: str, e: Rejected) -> None:
        self.rejects.append((table, row_id, e.reason, e.detail))

    def candidate(self, candidate_id: str, value: dict) -> None:
        self.corpus.setdefault(candidate_id, value)

    def query(self, index: int, query_id: str, value: dict, candidates: list[str],
              relevant: list[tuple[str, float]]) -> None:
        self.queries.append(query_row(self.task, index, query_id, value, candidates, relevant))

    def result(self):
        """(query rows, corpus rows, rejects, counts): the counts are the metrics/etl.json entry."""
        by_reason: dict[str, int] = {}
        for table, _, reason, _ in self.rejects:
            by_reason[f"{table}/{reason}"] = by_reason.get(f"{table}/{reason}", 0) + 1
        corpus = [{"dataset": self.task.name, "candidate_id": c, "candidate": v} for c, v in self.corpus.items()]
        counts = {"rows_in": {"queries": self.rows_in}, "queries": len(self.queries), "candidates": len(corpus),
                  "frames_stored": self.frames, "short_videos": self.short, "not_sampled": self.not_sampled,
                  "rejected": len(self.rejects),
                  "rejected_by_reason": dict(sorted(by_reason.items()))}
        return self.queries, corpus, self.rejects, counts


def start(root: Path, task: V2Task, params, store: Store, columns: list[str]) -> tuple[list[dict], Collected]:
    """A dataset's annotation rows (dicts of ``columns``) and the `Collected` to build it in
    (``params``: the normalize section, for ``image_reject_pixels``). A task VLM2Vec subsamples
    (`pipelines.mmeb_v2.FIRST_ROWS`) keeps its first rows; the others are counted, not rejected."""
    table = annotations(root, task, columns)
    rows = [dict(zip(table, values)) for values in zip(*table.values())]
    out = Collected(task, root, store, params.image_reject_pixels, len(rows))
    keep = FIRST_ROWS.get(task.name, len(rows))
    out.not_sampled = max(len(rows) - keep, 0)
    return rows[:keep], out
