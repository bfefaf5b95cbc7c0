"""MMEB-V2 in the download stage: the inventory of data/raw/MMEB-V2 and its failures, and the
default (`data.benchmark: v1`) download left exactly as it was."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines import download_v2, mmeb_v2
from pipelines.download import download
from pipelines.errors import StageFailed
from pipelines.sources.synthetic.video import write_video_cls
from pipelines.sources.synthetic.visdoc import write_visdoc
from tests.support.params import section

TINY = {"train_subsets": ["Syn-ShapeCLS"], "eval_subsets": ["Syn-ShapeCLS"]}
TINY_SYN = {"train_rows": 6, "eval_rows": 4, "eval_candidates": 4, "image_size": 32}


def test_inventory_counts_expected_and_found(tmp_path):
    write_visdoc(tmp_path / "Syn-ViDoRe", size=32)
    write_video_cls(tmp_path, size=16)
    found = download_v2.inventory(tmp_path)
    assert found["Syn-ViDoRe"] == {"modality": "visdoc", "meta_task": "VDRv1", "eval_type": "global",
                                   "expected": 9, "found": 9}
    assert found["Syn-VideoCLS"]["found"] == found["Syn-VideoCLS"]["expected"] == 14


def test_a_short_dataset_fails_naming_it(tmp_path):
    write_visdoc(tmp_path / "Syn-ViDoRe", asked_docs=2, size=32)  # 6 queries of 9
    with pytest.raises(StageFailed, match=r"Syn-ViDoRe: 6 queries of the 9 expected \(3 missing\)"):
        download_v2.inventory(tmp_path)
    assert download_v2.inventory(tmp_path, {"Syn-ViDoRe": 6})["Syn-ViDoRe"]["found"] == 6


def test_a_missing_frame_folder_fails_naming_it(tmp_path):
    write_video_cls(tmp_path, size=16)
    frames = tmp_path / "video-tasks/frames/video_cls/Syn-VideoCLS"
    shutil.rmtree(frames / "syn00003")
    for f in (frames / "syn00005").iterdir():
        f.unlink()  # an empty folder is as bad
    with pytest.raises(StageFailed, match=r"Syn-VideoCLS: 2 video\(s\) without frames, e.g. .*syn00003"):
        download_v2.inventory(tmp_path)


def test_an_unknown_folder_fails(tmp_path):
    (tmp_path / "NotATask").mkdir()
    with pytest.raises(StageFailed, match="NotATask: not an MMEB-V2 task"):
        download_v2.inventory(tmp_path)


def test_v2_download_adds_the_sets_and_leaves_v1_bytes_alone(tmp_path):
    v1 = download(section("data", benchmark="v1", **TINY), section("synthetic", **TINY_SYN), out=tmp_path / "v1" / "raw")
    v2 = download(section("data", benchmark="v2", **TINY), section("synthetic", **TINY_SYN),
                  out=tmp_path / "v2" / "raw")
    assert v2["files"] == v1["files"]  # MMEB-train / MMEB-eval byte for byte
    assert "v2" not in v1
    assert {n: (d["expected"], d["found"]) for n, d in v2["v2"]["datasets"].items()} == {
        n: (t.num_data, t.num_data) for n, t in mmeb_v2.SYNTHETIC.items()}  # synthetic.v2_sets: all
    paths = [f["path"] for f in v2["v2"]["files"]]
    assert "MMEB-V2/Syn-ViDoRe/qrels/test-00000-of-00001.parquet" in paths
    assert "MMEB-V2/video-tasks/frames/video_cls/Syn-VideoCLS/syn00000/frame_0001.jpg" in paths
    assert all((tmp_path / "v2" / "raw" / p).is_file() for p in paths)
    manifest = json.loads((tmp_path / "v2" / "raw" / "manifest.json").read_text())
    assert manifest["v2"]["datasets"] == v2["v2"]["datasets"]
    assert not (tmp_path / "v1" / "raw" / "MMEB-V2").exists()
    assert manifest["synthetic"]["v2_sets"] == "all"


def test_synthetic_v2_sets_trims_the_stand_ins(tmp_path):
    picked = ["Syn-VideoQA", "Syn-ImageT2I"]
    v2 = download(section("data", benchmark="v2", **TINY), section("synthetic", **TINY_SYN, v2_sets=picked),
                  out=tmp_path / "raw")
    assert sorted(v2["v2"]["datasets"]) == sorted(picked)
    with pytest.raises(StageFailed, match=r"synthetic.v2_sets \['Syn-Nope'\]"):
        download(section("data", benchmark="v2", **TINY), section("synthetic", **TINY_SYN, v2_sets=["Syn-Nope"]),
                 out=tmp_path / "raw")
    assert sorted(json.loads((tmp_path / "raw/manifest.json").read_text())["v2"]["datasets"]) == sorted(picked)


def test_hub_v2_names_unknown_tasks_before_any_download(tmp_path):
    data = section("data", source="hub", benchmark="v2", v2_datasets=["HMDB51", "NoSuchTask"])
    with pytest.raises(StageFailed, match=r"data.v2_datasets \['NoSuchTask'\]: not MMEB-V2 tasks"):
        download_v2.source_folder(data, section("synthetic"), tmp_path, tmp_path / "cache")
    assert [t.name for t in download_v2.selected_tasks(section("data", v2_datasets=["UCF101", "K700"]))] == [
        "UCF101", "K700"]
    assert len(download_v2.selected_tasks(section("data", v2_datasets="all"))) == 78
