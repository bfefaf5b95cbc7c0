"""Synthetic stand-ins for MMEB-V2's other video families, in the layout the real sets use: annotations
as a one-split Hub dataset (``out/<name>/test-00000-of-00001.parquet``), frames as extracted frame
folders under ``out/video-tasks/frames/<family>/<name>/``.

    write_video_ret(out, seed)   Syn-VideoRET   text -> video retrieval, MSR-VTT's columns (video_id, video, caption)
    write_video_qa(out, seed)    Syn-VideoQA    multiple-choice QA, Video-MME's columns (question, videoID,
                                                options "A. ...", answer letter, question_id, domain, sub_category)
    write_video_mc(out, seed)    Syn-VideoMC    SSv2's multiple choice (video_id, pos_text, neg_text)
    write_moment(out, seed)      Syn-MomentRET  moment retrieval, QVHighlight's columns (query, video_path) and
                                                folders (<video>/query, <video>/positive, <video>/negative_<k>)
    write_momentseeker(out, seed) Syn-MomentSeeker  MomentSeeker's columns (query, positive_frames,
                                                negative_frames, input_frames): video, image and text queries

The videos are those of `pipelines.sources.synthetic.video`: one coloured circle or square doing one
action (moving left, right, up or down, growing, shrinking, changing colour), which shows only in how
the frames change. Captions and options name the action (``"a red circle moving left"``), so a model
that compares frames can match them; a moment-retrieval video chains several actions of one shape,
its clips being the single-action segments. Each writer returns its counts; ``queries`` is the number
of annotation rows, which `pipelines.mmeb_v2.SYNTHETIC` records as the set's expected count.
Deterministic for a seed (one ``random.Random`` stream per set, fixed JPEG settings, no timestamps).
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa

from pipelines.sources.synthetic.video import ACTIONS, COLOURS, jpeg, render_video, write_annotations, write_frames

RET, QA, MC, MOMENT, SEEKER = "Syn-VideoRET", "Syn-VideoQA", "Syn-VideoMC", "Syn-MomentRET", "Syn-MomentSeeker"
COLOUR_NAMES = ("red", "green", "blue", "orange")  # video.COLOURS, in order
PHRASES = {a: a.replace("_", " ") for a in ACTIONS}  # "moving left", ..., "changing colour"
MC_LABELS = {a: f"Something is {PHRASES[a]}" for a in ACTIONS}  # SSv2-style label sentences
LETTERS = "ABCD"
QUESTION = "What is the shape in the video doing?"


def _frames(out: Path, family: str, name: str) -> Path:
    return Path(out) / "video-tasks" / "frames" / family / name


def _shape(rng: random.Random) -> tuple[int, bool]:
    return rng.randrange(len(COLOURS)), rng.random() < 0.5


def _videos(out: Path, family: str, name: str, rng: random.Random, videos: int, frames: int, size: int,
            video_id) -> list[tuple[str, str, int, bool]]:
    """Write ``videos`` single-action videos (the actions cycling); [(video id, action, colour, square)]."""
    made = []
    for v in range(videos):
        action, (colour, square) = ACTIONS[v % len(ACTIONS)], _shape(rng)
        images = render_video(action, COLOURS[colour], square, frames, size)
        write_frames(_frames(out, family, name) / video_id(v), images)
        made.append((video_id(v), action, colour, square))
    return made


def caption(action: str, colour: int, square: bool) -> str:
    return f"a {COLOUR_NAMES[colour]} {'square' if square else 'circle'} {PHRASES[action]}"


def write_video_ret(out: Path, seed: int = 0, videos: int = 7, frames: int = 10, size: int = 32) -> dict[str, int]:
    """One caption per video; the videos' actions cycle, so every action is retrieved."""
    rng = random.Random(f"{seed}/{RET}")
    rows = {"video_id": [], "video": [], "caption": []}
    for video_id, action, colour, square in _videos(out, "video_ret", RET, rng, videos, frames, size, "video{}".format):
        rows["video_id"].append(video_id)
        rows["video"].append(f"{video_id}.mp4")
        rows["caption"].append(caption(action, colour, square))
    schema = pa.schema([(c, pa.string()) for c in rows])
    write_annotations(Path(out) / RET, RET, rows, schema, "text-to-video retrieval")
    return {"queries": videos, "videos": videos, "frames": videos * frames}


def write_video_qa(out: Path, seed: int = 0, videos: int = 6, frames: int = 10, size: int = 32) -> dict[str, int]:
    """A question per video with four options "A. Moving left." (the gold among three others)."""
    rng = random.Random(f"{seed}/{QA}")
    rows = {"question": [], "videoID": [], "options": [], "answer": [], "question_id": [], "domain": [],
            "sub_category": []}
    for video_id, action, _, _ in _videos(out, "video_qa", QA, rng, videos, frames, size, "qa{:03d}".format):
        choices = [action] + rng.sample([a for a in ACTIONS if a != action], len(LETTERS) - 1)
        rng.shuffle(choices)
        rows["question"].append(QUESTION)
        rows["videoID"].append(video_id)
        rows["options"].append([f"{x}. {PHRASES[a].capitalize()}." for x, a in zip(LETTERS, choices)])
        rows["answer"].append(LETTERS[choices.index(action)])
        rows["question_id"].append(f"{video_id}-1")
        rows["domain"].append("Synthetic")
        rows["sub_category"].append("Action")
    schema = pa.schema([(c, pa.list_(pa.string()) if c == "options" else pa.string()) for c in rows])
    write_annotations(Path(out) / QA, QA, rows, schema, "video question answering")
    return {"queries": videos, "videos": videos, "frames": videos * frames}


def write_video_mc(out: Path, seed: int = 0, videos: int = 7, frames: int = 10, size: int = 32) -> dict[str, int]:
    """SSv2's multiple choice: each row lists every label sentence (``neg_text``), its own among them."""
    rng = random.Random(f"{seed}/{MC}")
    rows = {"video_id": [], "pos_text": [], "neg_text": []}
    for video_id, action, _, _ in _videos(out, "video_cls", MC, rng, videos, frames, size, lambda v: str(100 + v)):
        rows["video_id"].append(video_id)
        rows["pos_text"].append(MC_LABELS[action])
        rows["neg_text"].append(list(MC_LABELS.values()))
    schema = pa.schema([("video_id", pa.string()), ("pos_text", pa.string()), ("neg_text", pa.list_(pa.string()))])
    write_annotations(Path(out) / MC, MC, rows, schema, "multiple-choice video classification")
    return {"queries": videos, "videos": videos, "frames": videos * frames}


def write_moment(out: Path, seed: int = 0, videos: int = 3, segments: int = 3, frames: int = 8,
                 size: int = 32) -> dict[str, int]:
    """Videos of ``segments`` actions of one shape; the query names one segment's action, that segment
    is the ``positive`` clip, the others ``negative_<k>``; ``query/`` holds every frame."""
    rng = random.Random(f"{seed}/{MOMENT}")
    rows = {"query": [], "video_path": []}
    for v in range(videos):
        (colour, square), actions = _shape(rng), rng.sample(ACTIONS, segments)
        gold = rng.randrange(segments)
        clips = [render_video(a, COLOURS[colour], square, frames, size) for a in actions]
        folder = _frames(out, "video_mret", MOMENT) / f"moment{v}"
        write_frames(folder / "query", [img for clip in clips for img in clip])
        negatives = iter(range(segments))
        for k, clip in enumerate(clips):
            write_frames(folder / ("positive" if k == gold else f"negative_{next(negatives)}"), clip)
        rows["query"].append(f"the {'square' if square else 'circle'} is {PHRASES[actions[gold]]}")
        rows["video_path"].append(f"moment{v}.mp4")
    write_annotations(Path(out) / MOMENT, MOMENT, rows, pa.schema([(c, pa.string()) for c in rows]), "moment retrieval")
    return {"queries": videos, "clips": videos * segments, "frames": 2 * videos * segments * frames}


def write_momentseeker(out: Path, seed: int = 0, videos: int = 3, frames: int = 6, size: int = 32) -> dict[str, int]:
    """MomentSeeker's columns and folders: a video, image or text query in turn (``input_frames``
    ``src/msN.mp4``, ``msN.jpg`` or empty), a positive and a negative clip of the same shape under
    ``video_frames/clips_msN_{pos,neg}``; the video query is the gold action, the image its first
    frame. ``videos``: the rows, as the other writers name them."""
    rng = random.Random(f"{seed}/{SEEKER}")
    root = _frames(out, "video_mret", SEEKER)
    rows = {"query": [], "positive_frames": [], "negative_frames": [], "input_frames": []}
    for q in range(videos):
        (colour, square), (gold, other) = _shape(rng), rng.sample(ACTIONS, 2)
        clips = {kind: render_video(a, COLOURS[colour], square, frames, size) for kind, a in (("pos", gold),
                                                                                              ("neg", other))}
        for kind, images in clips.items():
            write_frames(root / "video_frames" / f"clips_ms{q}_{kind}", images)
        query_input = ("src/ms{}.mp4", "ms{}.jpg", "")[q % 3].format(q)
        if query_input.endswith(".mp4"):
            write_frames(root / "video_frames" / f"src_ms{q}", clips["pos"])
        elif query_input:
            (root / f"query_{query_input}").write_bytes(jpeg(clips["pos"][0]))
        rows["query"].append(f"the {'square' if square else 'circle'} is {PHRASES[gold]}")
        rows["positive_frames"].append([{"output_path": f"clips/ms{q}_pos.mp4"}])
        rows["negative_frames"].append([{"output_path": f"clips/ms{q}_neg.mp4"}])
        rows["input_frames"].append(query_input)
    clip = pa.list_(pa.struct([("output_path", pa.string())]))
    schema = pa.schema([("query", pa.string()), ("positive_frames", clip), ("negative_frames", clip),
                        ("input_frames", pa.string())])
    write_annotations(Path(out) / SEEKER, SEEKER, rows, schema, "moment retrieval with video, image or text queries")
    return {"queries": videos, "clips": 2 * videos}


WRITERS = {RET: write_video_ret, QA: write_video_qa, MC: write_video_mc, MOMENT: write_moment,
           SEEKER: write_momentseeker}  # name -> writer
