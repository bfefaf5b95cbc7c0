"""VLM2Vec-V2's training sources in the download stage (``data.v2_train_sets``): the synthetic
stand-ins, a local folder, the Hub (through the stand-in, as `python -m stages.download`), the
selection and the failures that name a set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipelines import download_v2_train
from pipelines.download import MANIFEST, download
from pipelines.errors import StageFailed
from pipelines.imagestore import ImageStore
from pipelines.normalize_v2_train import normalize_v2_train
from pipelines.sources.synthetic.train_v2 import write_train_v2
from pipelines.v2_train import RAW_FOLDER, SETS
from tests.pipelines.test_download import EVAL_REPO, SYN, TRAIN_REPO, data_params
from tests.pipelines.test_download_v2 import TINY, TINY_SYN
from tests.support.hubserver import client_env
from tests.support.params import section, write_params
from tests.support.v2_train_hub import write_v2_train_repos

PICK = ["visrag-indomain", "video_qa_240k"]
HOUND, VISRAG = "ShareGPTVideo/train_video_and_instruction", "openbmb/VisRAG-Ret-Train-In-domain-data"


def test_synthetic_places_only_the_selected_sets(tmp_path):
    none = download(section("data", v2_train_sets=[], **TINY), section("synthetic", **TINY_SYN), out=tmp_path / "a")
    picked = download(section("data", v2_train_sets=PICK, **TINY), section("synthetic", **TINY_SYN),
                      out=tmp_path / "b")
    assert "v2_train" not in none and not (tmp_path / "a" / RAW_FOLDER).exists()
    assert picked["files"] == none["files"]  # MMEB-train / MMEB-eval untouched
    entry = picked["v2_train"]
    assert {n: (d["expected"], d["found"], d["repo"]) for n, d in entry["datasets"].items()} == {
        "visrag-indomain": (21, 21, VISRAG), "video_qa_240k": (24, 24, HOUND)}
    paths = [f["path"] for f in entry["files"]]
    assert {p.split("/")[1] for p in paths} == {"VisRAG-Ret-Train-In-domain-data", "train_video_and_instruction"}
    assert not [p for p in paths if p.endswith("video_caption_300k.jsonl")]
    assert "V2-train/train_video_and_instruction/train_300k/syn_v00000/frame_0012.jpg" in paths
    assert all((tmp_path / "b" / p).is_file() for p in paths)
    assert json.loads((tmp_path / "b" / MANIFEST).read_text())["v2_train"] == entry


def test_selection_and_missing_or_short_sources_fail_naming_them(tmp_path):
    with pytest.raises(StageFailed, match=r"data.v2_train_sets \['nope'\]: not VLM2Vec-V2 training sets"):
        download_v2_train.selected(section("data", v2_train_sets=["colpali_train_set", "nope"]))
    assert len(download_v2_train.selected(section("data", v2_train_sets="all"))) == 5
    with pytest.raises(StageFailed, match="data.local_dir/V2-train|does not exist"):
        download_v2_train.source_folder(section("data", source="local", local_dir=str(tmp_path)), None,
                                        list(SETS.values()), tmp_path / "s", None)
    root = tmp_path / RAW_FOLDER
    write_train_v2(root, docs=1, pages=2, videos=2, size=16)
    shard = root / "colpali_train_set/data/train-00000-of-00001.parquet"
    shard.rename(shard.with_name("train-00000-of-00002.parquet"))  # one shard of two
    (root / "train_video_and_instruction/video_instruction/train/sft/video_caption_300k.jsonl").unlink()
    with pytest.raises(StageFailed) as e:
        download_v2_train.inventory(root, list(SETS.values()), {"video_qa_240k": 3})
    assert str(e.value).splitlines() == [
        f"V2 training set colpali_train_set: 1 of the 00002 data/train-*.parquet shards under {root}/colpali_train_set",
        f"V2 training set video_caption_300k: no {SETS['video_caption_300k'].files} under "
        f"{root}/train_video_and_instruction",
        f"V2 training set video_caption_300k-video: no {SETS['video_caption_300k'].files} under "
        f"{root}/train_video_and_instruction",
        "V2 training set video_qa_240k: 2 rows of the 3 expected"]


def test_local_takes_the_folder_as_it_is(tmp_path):
    write_train_v2(tmp_path / "local" / RAW_FOLDER, docs=1, pages=2, videos=2, size=16)
    entry = download_v2_train.place(section("data", source="local", local_dir=str(tmp_path / "local"),
                                            v2_train_sets=["visrag-indomain"]), None, tmp_path / "s",
                                    tmp_path / "build", None)
    assert entry["datasets"]["visrag-indomain"]["expected"] is None  # unknown outside synthetic
    assert entry["datasets"]["visrag-indomain"]["found"] == 2
    assert [f["path"] for f in entry["files"]] == [
        "V2-train/VisRAG-Ret-Train-In-domain-data/data/train-00000-of-00001.parquet"]


def _run_hub(work, endpoint, **data):
    work.mkdir(parents=True, exist_ok=True)
    write_params(work / "params.yaml", synthetic=SYN, data=data_params(
        source="hub", train_subsets=["Alpha"], eval_subsets=["Alpha"], **data))
    env = client_env(work, endpoint)
    env["VLM2VEC_PARAMS"] = str(work / "params.yaml")
    env.pop("VLM2VEC_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "stages.download"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=180)


def test_hub_fetches_only_what_the_sets_need_and_extracts_frames_safely(tmp_path, hub_standin, hub_layout):
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    commits = {r: hub_standin.add_repo(r, f) for r, f in write_v2_train_repos(tmp_path / "repos").items()}
    work = tmp_path / "work"
    r = _run_hub(work, hub_standin.endpoint, v2_train_sets=PICK, v2_revisions={HOUND: commits[HOUND]})
    assert r.returncode == 0, r.stderr[-4000:]
    raw = work / "data/raw"
    entry = json.loads((raw / MANIFEST).read_text())["v2_train"]
    assert entry["repos"] == {
        HOUND: {"requested_revision": commits[HOUND], "resolved_commit": commits[HOUND], "sets": ["video_qa_240k"]},
        VISRAG: {"requested_revision": "main", "resolved_commit": commits[VISRAG], "sets": ["visrag-indomain"]}}
    assert {m: why[0] for m, why in entry["refused"][f"{HOUND}/train_300k/chunk_0.tar.gz"].items()} == {
        "../escaped.txt": "unsafe_path", "/tmp/absolute.txt": "unsafe_path", "syn_v00000/passwd": "link"}
    assert not list(tmp_path.rglob("escaped.txt")) and not [p for p in raw.rglob("*") if p.is_symlink()]
    assert hub_standin.files_requested(HOUND, "GET") == {
        "train_300k/chunk_0.tar.gz", "video_instruction/train/sft/video_240k_caption_15k.jsonl"}
    assert hub_standin.files_requested(VISRAG, "GET") == {"data/train-00000-of-00001.parquet"}
    assert {n: d["found"] for n, d in entry["datasets"].items()} == {"visrag-indomain": 3, "video_qa_240k": 4}
    assert not (raw / RAW_FOLDER / "train_video_and_instruction/train_300k/chunk_0.tar.gz").exists()
    counts = normalize_v2_train(raw, tmp_path / "norm", tmp_path / "rej", section("normalize"))
    assert {n: c["pairs"] for n, c in counts.items()} == {"visrag-indomain": 3, "video_qa_240k": 4}
    # a repo without the set's file: the stage fails naming the set and the file, nothing placed
    shutil.rmtree(work)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "README.md").write_text("empty\n")
    hub_standin.add_repo(VISRAG, bare)
    r = _run_hub(work, hub_standin.endpoint, v2_train_sets=PICK)
    assert r.returncode != 0 and "V2 training set visrag-indomain: openbmb/VisRAG" in r.stderr
    assert "has no data/train-*.parquet" in r.stderr and not (work / "data/raw").exists()


def test_the_normalize_stage_counts_the_sets_and_fails_on_a_short_one(tmp_path):
    from pipelines.normalize import normalize

    raw = tmp_path / "raw"
    download(section("data", v2_train_sets=["video_qa_240k"], **TINY), section("synthetic", **TINY_SYN), out=raw)
    params = section("normalize", workers=1)
    metrics = normalize(raw, tmp_path / "norm", tmp_path / "rej", tmp_path / "etl.json", params)
    assert json.loads((tmp_path / "etl.json").read_text())["v2_train"] == metrics["v2_train"]
    assert metrics["v2_train"]["video_qa_240k"]["pairs"] == 24
    assert sorted(p.name for p in (tmp_path / "norm/train").iterdir()) == ["Syn-ShapeCLS", "video_qa_240k"]
    row = pq.read_table(tmp_path / "norm/train/video_qa_240k/pairs-00000.parquet").to_pylist()[0]
    frame = ImageStore(tmp_path / "norm/images").get(row["query"]["video"][0]["sha256"])  # merged into the store
    assert (frame.width, frame.height) == (64, 64)
    manifest = json.loads((raw / MANIFEST).read_text())
    manifest["v2_train"]["datasets"]["video_qa_240k"]["expected"] = 30
    (raw / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StageFailed, match="V2 training set video_qa_240k: 24 rows of the 30 expected"):
        normalize(raw, tmp_path / "norm", tmp_path / "rej", tmp_path / "etl.json", params)
