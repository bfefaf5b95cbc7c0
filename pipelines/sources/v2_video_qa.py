"""MMEB-V2's video QA sets (Video-MME, NExTQA, EgoSchema, MVBench, ActivityNetQA), read from a local
folder in the Hub layout as VLM2Vec's eval loaders read them (``src/data/eval_dataset/<x>_dataset.py``).

    queries, corpus, rejects, counts = video_qa_dataset(root, task, params, store)

A query is the video (sampled frames) with the QA prompt, the question and its options
(`pipelines.v2_inputs`: `videomme`, `nextqa`, `egoschema`, `mvbench`, `activitynetqa`); it ranks its
own options (``local``), whose ids are VLM2Vec's ``cand_names`` (Video-MME and EgoSchema: the raw
``"A. ..."`` option, its text the stripped one) and whose gold is the loader's ``label_name``.

Columns read (VLM2Vec's loaders): Video-MME ``question, videoID, options, answer, question_id``;
NExTQA ``video, question, answer, qid, a0..a4``; EgoSchema ``video_idx, question, answer,
question_idx, option``; MVBench ``subset, question, video, candidates, answer`` (``subset`` = the
Hub config, one folder each); ActivityNetQA ``video_name, question, answer, question_id``.

Rejected with a reason instead of crashing or scoring a gold that is not there:
``answer_not_in_options`` (a letter or index out of range, an MVBench answer equal to no candidate,
which VLM2Vec turns into the label ``"(@) answer"``, an ActivityNetQA answer other than yes / no),
``duplicate_query_id`` (a question id seen before: Video-MME, EgoSchema, ActivityNetQA, and NExTQA's
video + qid), and the frame folder's reasons (``frames_missing``, ``frames_empty``, image reasons).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import Rejected
from pipelines.mmeb_v2 import V2Task
from pipelines.params import Normalize
from pipelines.sources.v2_rows import Collected, Store, side, start
from pipelines.v2_inputs import PLACEHOLDERS, Choice, activitynetqa, egoschema, mvbench, nextqa, videomme
from pipelines.video_layout import video_folder

NEXTQA_OPTIONS = ["a0", "a1", "a2", "a3", "a4"]
COLUMNS = {
    "videomme": ["question", "videoID", "options", "answer", "question_id"],
    "nextqa": ["video", "question", "answer", "qid", *NEXTQA_OPTIONS],
    "egoschema": ["video_idx", "question", "answer", "question_idx", "option"],
    "mvbench": ["subset", "question", "video", "candidates", "answer"],
    "activitynetqa": ["video_name", "question", "answer", "question_id"],
}


def _choice(parser: str, row: dict) -> Choice:
    if parser == "videomme":
        return videomme(row["question"], list(row["options"]), row["answer"], PLACEHOLDERS)
    if parser == "nextqa":
        return nextqa(row["question"], [row[c] for c in NEXTQA_OPTIONS], int(row["answer"]), PLACEHOLDERS)
    if parser == "egoschema":
        return egoschema(row["question"], list(row["option"]), row["answer"], PLACEHOLDERS)
    if parser == "mvbench":
        return mvbench(row["question"], list(row["candidates"]), row["answer"], PLACEHOLDERS)
    return activitynetqa(row["question"], row["answer"], PLACEHOLDERS)


def choice(parser: str, row: dict) -> Choice:
    """The row's query, options and gold; Rejected when the gold is not one of the options."""
    try:
        out = _choice(parser, row)
    except (ValueError, IndexError, TypeError) as e:
        raise Rejected("answer_not_in_options", f"answer {row['answer']!r}: {e}") from None
    if out.label not in out.names or (parser == "nextqa" and int(row["answer"]) < 0):
        raise Rejected("answer_not_in_options", f"answer {row['answer']!r} is none of the options {out.names}")
    return out


def query_id(parser: str, index: int, row: dict) -> str | None:
    """The source's question id (None where the set has none: MVBench)."""
    key = {"videomme": "question_id", "egoschema": "question_idx", "activitynetqa": "question_id"}.get(parser)
    if key:
        return str(row[key])
    return f"{row['video']}/{row['qid']}" if parser == "nextqa" else None


def video_qa_dataset(root: Path, task: V2Task, params: Normalize, store: Store):
    """Queries (a video and a question each, its options ranked), the distinct options, rejects."""
    rows, out = start(root, task, params, store, COLUMNS[task.parser])
    seen: set[str] = set()
    for i, row in enumerate(rows):
        qid = query_id(task.parser, i, row)
        try:
            if qid is not None and qid in seen:
                raise Rejected("duplicate_query_id", f"question id {qid} was read before")
            mc = choice(task.parser, row)
            refs, available = out.video(root / task.root / video_folder(task.parser, row), params.frames_per_video)
        except Rejected as e:
            out.reject("queries", qid or str(i), e)
            continue
        seen.add(qid)
        for name, text in zip(mc.names, mc.texts):
            out.candidate(name, side(text))
        out.query(i, qid or str(i), side(mc.query, video=refs, frames_available=available), list(mc.names),
                  [(mc.label, 1.0)])
    return out.result()
