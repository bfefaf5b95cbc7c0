"""Tests for pipelines/video_layout.py: each V2 video loader's frame folders."""

from __future__ import annotations

import pytest

from pipelines import mmeb_v2
from pipelines.errors import Rejected
from pipelines.video_layout import (frames_per_video, moment_clips, momentseeker_clips, momentseeker_image,
                                    video_folder)

ROWS = [
    ("video_classification", {"video_id": "abc_000", "pos_text": "waiting_in_line"}, "abc_000"),
    ("ssv2", {"video_id": 74225}, "74225"),
    ("msrvtt", {"video_id": "video7020", "video": "video7020.mp4"}, "video7020"),
    ("msvd", {"video_id": "-4wsuPCjDBc_5_15"}, "-4wsuPCjDBc_5_15"),
    ("didemo", {"video": "test/12090392@N02_13482799053_87ef417396.mp4"}, "12090392@N02_13482799053_87ef417396"),
    ("youcook2", {"id": "xHr8X2Wpmno_0"}, "xHr8X2Wpmno_0"),
    ("vatex", {"videoID": "G_xcGTumCkg_000000_000010"}, "G_xcGTumCkg_000000_000010"),
    ("videomme", {"videoID": "fFjv93ACGo8"}, "fFjv93ACGo8"),
    ("nextqa", {"video": 4010069381}, "4010069381"),
    ("egoschema", {"video_idx": "001934bb-81bd-4cd8-a574-0472ef3f6678"}, "001934bb-81bd-4cd8-a574-0472ef3f6678"),
    ("activitynetqa", {"video_name": "sJFgo9H6zNo"}, "v_sJFgo9H6zNo"),
    ("mvbench", {"subset": "action_antonym", "video": "166583.webm"}, "action_antonym/166583.webm"),
    ("moment_retrieval", {"video_path": "videos/AO8RW.mp4"}, "AO8RW/query"),
    ("momentseeker", {"input_frames": "movie101/77.mp4"}, "video_frames/movie101_77"),
    ("momentseeker", {"input_frames": "ego_3.jpg"}, None),
]


@pytest.mark.parametrize("parser,row,folder", ROWS)
def test_frame_folders_as_vlm2vecs_loaders(parser, row, folder):
    assert video_folder(parser, row) == folder


def test_every_video_task_has_a_layout_and_a_frame_count():
    for task in mmeb_v2.tasks("video"):
        assert task.parser in {p for p, _, _ in ROWS}
        assert frames_per_video(task.parser) == (None if task.name == "MomentSeeker" else 8)
    with pytest.raises(KeyError, match="not a video loader"):
        video_folder("vidore", {})


def test_moment_clips_list_the_candidate_folders_and_the_positive(tmp_path):
    video = tmp_path / "AO8RW"
    for name in ("query", "negative_3", "positive_0", "negative_1"):
        (video / name).mkdir(parents=True)
    (video / "notes.txt").write_text("x")
    clips, positives = moment_clips(video)
    assert [p.name for p in clips] == ["negative_1", "negative_3", "positive_0"]
    assert [p.name for p in positives] == ["positive_0"]
    (video / "positive_0").rmdir()
    with pytest.raises(Rejected) as no_positive:
        moment_clips(video)
    assert no_positive.value.reason == "no_positive"
    with pytest.raises(Rejected) as missing:
        moment_clips(tmp_path / "gone")
    assert missing.value.reason == "frames_missing"


def test_momentseeker_clips_and_image_queries():
    row = {"input_frames": "q.jpg", "positive_frames": [{"output_path": "ego4d/clip_1.mp4"}],
           "negative_frames": [{"output_path": "ego4d/clip_2.mp4"}, {"output_path": "ego4d/clip_3.mp4"}]}
    assert momentseeker_clips(row) == (["video_frames/ego4d_clip_1"],
                                       ["video_frames/ego4d_clip_2", "video_frames/ego4d_clip_3"])
    assert momentseeker_image(row) == "query_q.jpg"
