"""MMEB-V2 from the Hub: which files a task needs, and the download stage (`data.source: hub`,
`data.benchmark: v2`) against the Hub stand-in (tests/support/hubserver.py), run as
`python -m stages.download` in a subprocess since huggingface_hub reads HF_ENDPOINT at import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipelines import mmeb_v2
from pipelines.sources import hub_v2
from pipelines.download import MANIFEST
from tests.pipelines.test_download import EVAL_REPO, SYN, TRAIN_REPO, data_params
from tests.support.hubserver import client_env
from tests.support.params import write_params
from tests.support.v2_hub import ARCHIVE_REPO, VIDEO_REPO, VIDEO_TASK, VISDOC_REPO, VISDOC_TASK, write_v2_repos

TASKS = [VISDOC_TASK, VIDEO_TASK]
# the registry's counts are the real sets'; the stand-in's are the synthetic ones
COUNTS = {VISDOC_TASK: 9, VIDEO_TASK: 14}


def test_each_family_finds_its_annotation_files():
    beir = mmeb_v2.lookup("VisRAG_ChartQA")
    listing = ["README.md", "corpus/train-0.parquet", "queries/train-0.parquet", "qrels/train-0.parquet",
               "qrels/test-0.parquet"]
    assert hub_v2.annotation_files(beir, listing) == sorted(listing[1:4])
    assert hub_v2.annotation_files(beir, listing[:3]) == []  # no qrels: not a BEIR set
    nextqa = mmeb_v2.lookup("NExTQA")  # config MC
    assert hub_v2.annotation_files(nextqa, ["MC/test-0.parquet", "OE/test-0.parquet", "test-0.parquet"]) == [
        "MC/test-0.parquet"]
    hmdb = mmeb_v2.lookup("HMDB51")
    assert hub_v2.annotation_files(hmdb, ["data/test-0.parquet", "data/train-0.parquet"]) == ["data/test-0.parquet"]
    assert hub_v2.annotation_files(mmeb_v2.lookup("MVBench"), ["a/train-0.parquet", "b/train-0.parquet"]) == [
        "a/train-0.parquet", "b/train-0.parquet"]
    assert [hub_v2.archive_of(mmeb_v2.lookup(n)) for n in ("K700", "MSR-VTT", "NExTQA", "MomentSeeker", "CIRR",
                                                           "ViDoSeek-doc")] == [
        "video_cls", "video_ret", "video_qa", "video_mret", "image-tasks", None]


def run_v2(work: Path, endpoint: str, counts: dict[str, int], check: bool = True, offline: bool = False, **data):
    """The download stage on the stand-in, with the registry's expected counts set to `counts`."""
    work.mkdir(parents=True, exist_ok=True)
    write_params(work / "params.yaml", synthetic=SYN, data=data_params(
        source="hub", benchmark="v2", train_subsets=["Alpha"], eval_subsets=["Alpha"], v2_datasets=TASKS, **data))
    shim = work / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import dataclasses\nfrom pipelines import mmeb_v2\n"
        f"for name, n in {counts!r}.items():\n"
        "    mmeb_v2.TASKS[name] = dataclasses.replace(mmeb_v2.TASKS[name], num_data=n)\n")
    env = client_env(work, endpoint, offline)
    env.update(PYTHONPATH=f"{shim}:{env['PYTHONPATH']}", VLM2VEC_PARAMS=str(work / "params.yaml"))
    env.pop("VLM2VEC_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "stages.download"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=180)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_hub_v2_fetches_the_selection_and_extracts_frames_safely(tmp_path, hub_standin, hub_layout):
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    commits = {repo: hub_standin.add_repo(repo, folder) for repo, folder in write_v2_repos(tmp_path / "repos").items()}
    work = tmp_path / "work"
    run_v2(work, hub_standin.endpoint, COUNTS, v2_revisions={VIDEO_REPO: commits[VIDEO_REPO]})

    raw = work / "data/raw"
    manifest = json.loads((raw / MANIFEST).read_text())
    v2 = manifest["v2"]
    on_disk = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert sorted(f["path"] for f in manifest["files"] + v2["files"]) == on_disk
    assert str(tmp_path) not in json.dumps(manifest)
    assert {n: (d["expected"], d["found"]) for n, d in v2["datasets"].items()} == {VIDEO_TASK: (14, 14),
                                                                                   VISDOC_TASK: (9, 9)}
    assert v2["repos"] == {
        ARCHIVE_REPO: {"requested_revision": "main", "resolved_commit": commits[ARCHIVE_REPO], "tasks": [],
                       "archives": ["video-tasks/frames/video_cls.tar.gz"]},
        VIDEO_REPO: {"requested_revision": commits[VIDEO_REPO], "resolved_commit": commits[VIDEO_REPO],
                     "tasks": [VIDEO_TASK]},
        VISDOC_REPO: {"requested_revision": "main", "resolved_commit": commits[VISDOC_REPO], "tasks": [VISDOC_TASK]}}
    # the hostile members are refused and named; nothing lands outside the frame folder
    assert {m: r[0] for m, r in v2["refused"]["video-tasks/frames/video_cls.tar.gz"].items()} == {
        "../escaped.txt": "unsafe_path", "/tmp/absolute.txt": "unsafe_path", "HMDB51/passwd": "link",
        "HMDB51/inside": "link"}
    assert not list(work.rglob("escaped.txt")) and not [p for p in raw.rglob("*") if p.is_symlink()]
    # only what the two tasks need was requested: no README, no video_ret archive
    assert hub_standin.files_requested(ARCHIVE_REPO, "GET") == {"video-tasks/frames/video_cls.tar.gz"}
    assert hub_standin.files_requested(VISDOC_REPO, "GET") == {
        f"{t}/test-00000-of-00001.parquet" for t in ("queries", "corpus", "qrels")}
    placed = {f["path"] for f in v2["files"]}
    assert f"MMEB-V2/{VIDEO_TASK}/test-00000-of-00001.parquet" in placed
    assert f"MMEB-V2/{VISDOC_TASK}/qrels/test-00000-of-00001.parquet" in placed
    frames = sorted(p for p in placed if p.startswith("MMEB-V2/video-tasks/frames/video_cls/HMDB51/"))
    assert len({p.split("/")[-2] for p in frames}) == 14
    # offline, from the cache: the same bytes, no request
    hub_standin.clear_log()
    run_v2(work, hub_standin.endpoint, COUNTS, offline=True, v2_revisions={VIDEO_REPO: commits[VIDEO_REPO]})
    assert hub_standin.requests == [] and json.loads((raw / MANIFEST).read_text()) == manifest


def test_hub_v2_short_sets_and_missing_frames_fail_naming_them(tmp_path, hub_standin, hub_layout):
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    for repo, folder in write_v2_repos(tmp_path / "repos", drop_video="syn00003").items():
        hub_standin.add_repo(repo, folder)
    r = run_v2(tmp_path / "work", hub_standin.endpoint, {VIDEO_TASK: 14}, check=False)
    assert r.returncode != 0
    assert "HMDB51: 1 video(s) without frames" in r.stderr and "HMDB51/syn00003" in r.stderr
    assert "ViDoRe_arxivqa: 9 queries of the 500 expected (491 missing)" in r.stderr
    assert not (tmp_path / "work/data/raw").exists()
    # an archive repo without the frame archive: refused before any download, naming the file
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "README.md").write_text("no frames\n")
    hub_standin.add_repo(ARCHIVE_REPO, bare)
    hub_standin.clear_log()
    r = run_v2(tmp_path / "work2", hub_standin.endpoint, COUNTS, check=False)
    assert r.returncode != 0 and "TIGER-Lab/MMEB-V2@" in r.stderr
    assert "has no video-tasks/frames/video_cls.tar.gz" in r.stderr
    assert not any(hub_standin.files_requested(repo, "GET") for repo in (VIDEO_REPO, VISDOC_REPO, ARCHIVE_REPO))
