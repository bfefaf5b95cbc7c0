"""MMEB-V2's video classification, text -> video retrieval and moment retrieval sets, read from a
local folder in the Hub layout (annotation parquet under ``<dataset>/``, frame folders under the
task's root) as VLM2Vec's eval loaders read them (``src/data/eval_dataset/*.py``).

    queries, corpus, rejects, counts = video_cls_dataset(root, task, params, store)   # also ssv2,
                                       video_ret_dataset(...), moment_dataset(...)    # momentseeker

Each returns the `pipelines.schema` V2 query rows, the distinct candidates, the rejects and the
metrics/etl.json counts (`pipelines.sources.v2_rows.Collected`). Inputs are `pipelines.v2_inputs`'s
strings with the placeholder tokens; frame folders are `pipelines.video_layout`'s.

* video_classification (K700, HMDB51, UCF101, Breakfast; global): ``video_id``, ``pos_text``; the
  corpus is the task's whole label list (a synthetic set's labels in order of appearance).
* ssv2 (local): ``video_id``, ``pos_text``, ``neg_text``; a row ranks its own ``neg_text`` list, and a
  ``pos_text`` absent from it is ``answer_not_in_options`` (VLM2Vec would score it 0).
* msrvtt / msvd / didemo / youcook2 / vatex (global): one query per caption row; the candidate is
  the row's video, named as VLM2Vec names it, stored once however many captions name it. MSVD and
  VATEX take their first caption; an empty caption list is ``no_caption`` (VLM2Vec crashes on it).
* moment_retrieval (QVHighlight, Charades-STA; local): ``query``, ``video_path``; the query is the
  whole video (``<stem>/query``), the candidates its clip folders, the gold the last ``positive*``
  one (VLM2Vec keeps one label); ids are the clip folders' paths under the MMEB-V2 root.
* momentseeker (local): ``query``, ``positive_frames``, ``negative_frames``, ``input_frames``; a
  video, image or text query; every positive clip is gold; clips keep all their frames.

A missing or empty frame folder or an unreadable frame rejects the query that needs it (for a
retrieval candidate: every query whose gold it is), with the folder in the detail.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import mmeb_v2, mmeb_v2_labels
from pipelines.errors import Rejected
from pipelines.mmeb_v2 import V2Task
from pipelines.params import Normalize
from pipelines.sources.v2_rows import Collected, Store, side, start
from pipelines.v2_inputs import (PLACEHOLDERS, momentseeker_query, mret_query, video_candidate, video_cls_query,
                                 video_ret_query)
from pipelines.video_layout import moment_clips, momentseeker_clips, momentseeker_image, video_folder

RET_COLUMNS = {"msrvtt": ["video_id", "caption"], "msvd": ["video_id", "caption"], "didemo": ["video", "caption"],
               "youcook2": ["id", "sentence"], "vatex": ["videoID", "enCap"]}
CAPTION_LISTS = ("msvd", "vatex")  # the caption column is a list; the loader takes its first


def video_cls_dataset(root: Path, task: V2Task, params: Normalize, store: Store):
    """Video classification (``video_classification``) or SSv2's multiple choice (``ssv2``)."""
    local = task.parser == "ssv2"
    rows, out = start(root, task, params, store, ["video_id", "pos_text"] + (["neg_text"] if local else []))
    prompt = video_cls_query(task.loader_name or task.name, PLACEHOLDERS)
    for i, row in enumerate(rows):
        vid, label = str(row["video_id"]), str(row["pos_text"])
        try:
            if local and label not in row["neg_text"]:
                raise Rejected("answer_not_in_options", f"pos_text {label!r} is not among the row's neg_text")
            refs, available = out.video(root / task.root / video_folder(task.parser, row), params.frames_per_video)
        except Rejected as e:
            out.reject("queries", vid, e)
            continue
        out.query(i, vid, side(prompt, video=refs, frames_available=available),
                  list(row["neg_text"]) if local else [], [(label, 1.0)])
        for name in row["neg_text"] if local else []:
            out.candidate(name, side(name))
    if not local:
        # the registry task's label list (VLM2Vec's); a synthetic set's labels in order of appearance
        labels = [] if task.name in mmeb_v2.SYNTHETIC else list(mmeb_v2_labels.LABELS[task.loader_name or task.name])
        for label in labels + [str(row["pos_text"]) for row in rows]:
            out.candidate(label, side(label))
    return out.result()


def _caption(parser: str, row: dict) -> str:
    caption = row[RET_COLUMNS[parser][1]]
    if parser in CAPTION_LISTS:
        if not caption:
            raise Rejected("no_caption", "the caption list is empty")
        caption = caption[0]
    return caption


def video_ret_dataset(root: Path, task: V2Task, params: Normalize, store: Store):
    """Text -> video retrieval: each row's caption ranked against every video of the set."""
    rows, out = start(root, task, params, store, RET_COLUMNS[task.parser])
    loader = task.loader_name or task.name
    target = video_candidate(PLACEHOLDERS)
    for i, row in enumerate(rows):
        name = video_folder(task.parser, row)
        try:
            text = video_ret_query(loader, _caption(task.parser, row), PLACEHOLDERS)
            refs, available = out.video(root / task.root / name, params.frames_per_video)
        except Rejected as e:
            out.reject("queries", str(i), e)
            continue
        out.candidate(name, side(target, video=refs, frames_available=available))
        out.query(i, str(i), side(text), [], [(name, 1.0)])
    return out.result()


def _clip_candidates(out: Collected, root: Path, clips: list[Path], num_frames: int | None, text: str) -> list[str]:
    names = []
    for clip in clips:
        refs, available = out.video(clip, num_frames)
        names.append(clip.relative_to(root).as_posix())
        out.candidate(names[-1], side(text, video=refs, frames_available=available))
    return names


def moment_dataset(root: Path, task: V2Task, params: Normalize, store: Store):
    """QVHighlight / Charades-STA (``moment_retrieval``) or MomentSeeker (``momentseeker``)."""
    if task.parser == "momentseeker":
        return _momentseeker(root, task, params, store)
    rows, out = start(root, task, params, store, ["query", "video_path"])
    target = video_candidate(PLACEHOLDERS)
    for i, row in enumerate(rows):
        query_folder = root / task.root / video_folder(task.parser, row)
        try:
            refs, available = out.video(query_folder, params.frames_per_video)
            clips, positives = moment_clips(query_folder.parent)
            names = _clip_candidates(out, root, clips, params.frames_per_video, target)
        except Rejected as e:
            out.reject("queries", str(i), e)
            continue
        gold = positives[-1].relative_to(root).as_posix()
        out.query(i, str(i), side(mret_query(row["query"], PLACEHOLDERS), video=refs, frames_available=available),
                  names, [(gold, 1.0)])
    return out.result()


def _momentseeker_query(out: Collected, frame_root: Path, row: dict) -> dict:
    text, kind = momentseeker_query(row["query"], row["input_frames"], PLACEHOLDERS)
    if kind == "video":
        refs, available = out.video(frame_root / video_folder("momentseeker", row), None)
        return side(text, video=refs, frames_available=available)
    if kind == "image":
        return side(text, image=out.image(frame_root / momentseeker_image(row)))
    return side(text)


def _momentseeker(root: Path, task: V2Task, params: Normalize, store: Store):
    rows, out = start(root, task, params, store, ["query", "positive_frames", "negative_frames", "input_frames"])
    frame_root, target = root / task.root, video_candidate(PLACEHOLDERS, clip=True)
    for i, row in enumerate(rows):
        positives, negatives = momentseeker_clips(row)
        try:
            if not positives:
                raise Rejected("no_positive", "positive_frames is empty")
            query = _momentseeker_query(out, frame_root, row)
            names = _clip_candidates(out, root, [frame_root / c for c in positives + negatives], None, target)
        except Rejected as e:
            out.reject("queries", str(i), e)
            continue
        out.query(i, str(i), query, names, [(n, 1.0) for n in names[:len(positives)]])
    return out.result()
