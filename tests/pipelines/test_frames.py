"""Tests for pipelines/frames.py: VLM2Vec's frame listing and sampling."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import Rejected
from pipelines.frames import list_frames, natural_key, sample_frames, sample_indices


def make_folder(path, names):
    path.mkdir(parents=True)
    for n in names:
        (path / n).write_bytes(b"x")
    return path


def test_indices_are_vlm2vecs_linspace():
    assert sample_indices(64, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert sample_indices(10, 8) == [0, 1, 2, 3, 5, 6, 7, 9]  # 9 * i / 7 truncated
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]  # fewer: all kept, no padding
    assert sample_indices(5, None) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 0) == []
    for n in range(8, 80):
        assert sample_indices(n, 8) == [int(x) for x in np.linspace(0, n - 1, 8)]
    with pytest.raises(ValueError):
        sample_indices(5, -1)


def test_natural_order_and_extensions(tmp_path):
    folder = make_folder(tmp_path / "v", ["frame_10.jpg", "frame_2.JPG", "Frame_1.png", "frame_3.jpeg",
                                          "notes.txt", "frame_4.gif"])
    (folder / "sub.jpg").mkdir()
    assert [p.name for p in list_frames(folder)] == ["Frame_1.png", "frame_2.JPG", "frame_3.jpeg", "frame_10.jpg"]
    assert sorted(["a10b2", "a9b10", "a10b10"], key=natural_key) == ["a9b10", "a10b2", "a10b10"]


def test_sample_frames_keeps_a_short_folder_and_counts_it(tmp_path):
    full = sample_frames(make_folder(tmp_path / "full", [f"{i:04d}.jpeg" for i in range(64)]), 8)
    assert [p.name for p in full.paths] == [f"{i:04d}.jpeg" for i in (0, 9, 18, 27, 36, 45, 54, 63)]
    assert (full.available, full.short) == (64, False)
    short = sample_frames(make_folder(tmp_path / "short", ["frame_0001.jpg", "frame_0002.jpg", "frame_0003.jpg"]), 8)
    assert len(short.paths) == 3 and short.short and short.available == 3
    assert not sample_frames(tmp_path / "short", None).short


def test_missing_and_empty_folders_are_rejected_with_the_folder(tmp_path):
    with pytest.raises(Rejected) as missing:
        sample_frames(tmp_path / "nowhere", 8)
    assert missing.value.reason == "frames_missing" and "nowhere" in missing.value.detail
    with pytest.raises(Rejected) as empty:
        sample_frames(make_folder(tmp_path / "empty", ["readme.txt"]), 8)
    assert empty.value.reason == "frames_empty"
