"""Where each MMEB-V2 video task keeps a row's frames, as VLM2Vec's eval loaders look them up.

    video_folder("activitynetqa", row)     # "v_<video_name>", relative to the task's frame root
    moment_clips(frame_root / "<video>")   # QVHighlight / Charades-STA: candidate clips, positives
    momentseeker_clips(row)                # MomentSeeker: positive and negative clip folders

Paths are relative to the task's frame root (`pipelines.mmeb_v2.V2Task.root`). The folder names follow
``src/data/eval_dataset/*.py`` of TIGER-AI-Lab/VLM2Vec at commit 6e1e1d4; most lost-frame reports
(VLM2Vec issues 93, 99, 159) come down to one of these names not existing on disk, which
`pipelines.frames.sample_frames` then rejects naming the folder.

How many frames a task takes (`frames_per_video`): 8, sampled evenly, everywhere except
MomentSeeker, which loads every frame of its query videos and clips (extraction kept at most 8).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.errors import Rejected
from pipelines.v2_inputs import momentseeker_frame_folder

FRAMES_PER_VIDEO = 8  # the yaml's num_frames / num_video_frames / num_clip_frames
ALL_FRAMES = None  # MomentSeeker: `load_frames`, every frame of the folder


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


_FOLDERS = {
    "video_classification": lambda r: str(r["video_id"]),
    "ssv2": lambda r: str(r["video_id"]),
    "msrvtt": lambda r: r["video_id"],
    "msvd": lambda r: r["video_id"],
    "didemo": lambda r: _stem(r["video"]),
    "youcook2": lambda r: r["id"],
    "vatex": lambda r: r["videoID"],
    "videomme": lambda r: r["videoID"],
    "nextqa": lambda r: str(r["video"]),
    "egoschema": lambda r: r["video_idx"],
    "activitynetqa": lambda r: f"v_{r['video_name']}",
    "mvbench": lambda r: f"{r['subset']}/{r['video']}",
    "moment_retrieval": lambda r: f"{_stem(r['video_path'])}/query",
}


def video_folder(parser: str, row: dict) -> str | None:
    """The frame folder of a row's video (the query video; for text -> video retrieval, the
    candidate video). MomentSeeker: its query video's folder, None for an image or text query."""
    if parser == "momentseeker":
        frames = row["input_frames"]
        return f"video_frames/{momentseeker_frame_folder(frames)}" if frames.endswith(".mp4") else None
    if parser not in _FOLDERS:
        raise KeyError(f"not a video loader: {parser!r}; known: {', '.join(sorted(_FOLDERS))}, momentseeker")
    return _FOLDERS[parser](row)


def frames_per_video(parser: str) -> int | None:
    """How many frames the loader samples (None: all of them)."""
    return ALL_FRAMES if parser == "momentseeker" else FRAMES_PER_VIDEO


def momentseeker_image(row: dict) -> str:
    """The image of a MomentSeeker image query: ``query_<input_frames>`` in the frame root."""
    return f"query_{row['input_frames']}"


def moment_clips(video_dir: Path) -> tuple[list[Path], list[Path]]:
    """QVHighlight / Charades-STA: (candidate clip folders, positive ones) of one video's folder.

    Every sub-folder but ``query`` is a candidate; one whose name starts with ``positive`` is gold.
    VLM2Vec lists them in ``os.listdir`` order (the filesystem's) and keeps the last positive; here
    they are sorted by name, and a folder with no clip or no positive is rejected."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise Rejected("frames_missing", f"moment folder {video_dir} does not exist")
    clips = sorted((p for p in video_dir.iterdir() if p.is_dir() and p.name != "query"), key=lambda p: p.name)
    positives = [p for p in clips if p.name.startswith("positive")]
    if not clips:
        raise Rejected("no_candidates", f"{video_dir} holds no clip folder besides query/")
    if not positives:
        raise Rejected("no_positive", f"no clip folder of {video_dir} starts with 'positive'")
    return clips, positives


def momentseeker_clips(row: dict) -> tuple[list[str], list[str]]:
    """MomentSeeker: (positive, negative) clip folders of a row, ``video_frames/<output_path with
    '/' -> '_', cut at '.mp4'>``, in the row's order."""
    def folders(entries):
        return [f"video_frames/{momentseeker_frame_folder(e['output_path'])}" for e in entries]

    return folders(row["positive_frames"]), folders(row["negative_frames"])
