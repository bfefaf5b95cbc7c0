"""Tests for pipelines/sources/synthetic/video.py: synthetic video classification in MMEB-V2's layout."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipelines.frames import sample_frames
from pipelines.sources.synthetic.video import ACTIONS, LABELS, NAME, write_video_cls
from pipelines.video_layout import video_folder


def features(paths):
    """Centre, area and mean colour of the non-background pixels of each frame."""
    out = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGB"), np.float32)
        mask = np.abs(a - [245, 245, 240]).sum(axis=2) > 60
        ys, xs = np.nonzero(mask)
        out.append((xs.mean(), ys.mean(), mask.sum(), a[mask].mean(axis=0)))
    return out


def action_of(paths) -> str:
    """The action told from the first and last sampled frames only."""
    (x0, y0, s0, c0), (x1, y1, s1, c1) = features([paths[0], paths[-1]])
    moves = {"moving_right": x1 - x0, "moving_left": x0 - x1, "moving_down": y1 - y0, "moving_up": y0 - y1}
    best = max(moves, key=moves.get)
    if moves[best] > 5:
        return best
    if abs(s1 - s0) > 0.3 * max(s0, s1):
        return "growing" if s1 > s0 else "shrinking"
    assert np.abs(c1 - c0).max() > 40
    return "changing_colour"


def test_layout_frames_and_learnable_labels(tmp_path):
    counts = write_video_cls(tmp_path, seed=0, videos=14, frames=12, short_every=7, size=48)
    assert counts == {"videos": 14, "frames": 12 * 12 + 2 * 5, "short": 2}
    rows = pq.read_table(tmp_path / NAME / "test-00000-of-00001.parquet").to_pylist()
    assert {r["pos_text"] for r in rows} == set(ACTIONS) and set(LABELS) == set(ACTIONS)
    root = tmp_path / "video-tasks/frames/video_cls" / NAME
    short = 0
    for row in rows:
        sampled = sample_frames(root / video_folder("video_classification", row), 8)
        short += sampled.short
        assert len(sampled.paths) == (5 if sampled.short else 8)
        assert sampled.paths[0].name == "frame_0001.jpg"
        assert action_of(sampled.paths) == row["pos_text"]
    assert short == 2


def test_deterministic_bytes_and_hf_datasets_reads_the_annotations(tmp_path):
    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    write_video_cls(tmp_path / "a", seed=1, videos=4, frames=9)
    write_video_cls(tmp_path / "b", seed=1, videos=4, frames=9)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    from datasets import load_dataset

    ds = load_dataset(str(tmp_path / "a" / NAME), split="test", cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["video_id", "pos_text"] and len(ds) == 4
