"""The `download` stage: synthetic, local and hub sources into data/raw/ with a deterministic manifest.

Hub runs go through the real huggingface_hub client against the local Hub stand-in
(tests/support/hubserver.py), as `python -m stages.download` in a subprocess: huggingface_hub reads HF_ENDPOINT
and HF_HUB_OFFLINE at import time, and conftest.py sets HF_HUB_OFFLINE=1 for the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import mmeb
from pipelines.sources import hub
from pipelines.sources.hub import LayoutError
from pipelines.download import MANIFEST, download
from pipelines.params import Data, Synthetic
from tests.support.params import write_params
from tests.support.hubserver import client_env, write_hub_layout

TRAIN_REPO, EVAL_REPO = "TIGER-Lab/MMEB-train", "TIGER-Lab/MMEB-eval"
SIZES = {"seed": 0, "train_rows": 6, "eval_rows": 4, "eval_candidates": 4, "image_size": 32}  # the generator's
SYN = {**SIZES, "v2_sets": "all"}  # the synthetic section


def data_params(**kw) -> dict:
    base = {
        "source": "synthetic",
        "local_dir": "data/local",
        "train_repo": TRAIN_REPO,
        "eval_repo": EVAL_REPO,
        "revision": "main",
        "train_split": "original",
        "train_subsets": "all",
        "eval_subsets": "all",
        "benchmark": "v1",
        "v2_datasets": "all",
        "v2_revisions": None,
        "v2_train_sets": [],
    }
    return {**base, **kw}


def run(data: dict, synthetic: dict, out: Path) -> dict:
    """The download stage's library call on these params sections."""
    return download(Data.parse(data), Synthetic.parse(synthetic), out=out)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_manifest(raw: Path) -> dict:
    """The manifest lists every file under raw (but itself) exactly once, with the right size and
    sha256, sorted, and holds no absolute path."""
    text = (raw / MANIFEST).read_text()
    manifest = json.loads(text)
    on_disk = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file() and p.name != MANIFEST)
    listed = [f["path"] for f in manifest["files"]]
    assert listed == on_disk
    for f in manifest["files"]:
        data = (raw / f["path"]).read_bytes()
        assert f["size"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert str(raw.parent) not in text and '"/' not in text  # nothing absolute
    return manifest


def no_work_dirs(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".raw.")]


# --- synthetic -----------------------------------------------------------------------------------
def test_synthetic_end_to_end(tmp_path):
    raw = tmp_path / "data" / "raw"
    manifest = run(data_params(), SYN, out=raw)
    train, evals = sorted(mmeb.SYNTHETIC_TRAIN), sorted(mmeb.SYNTHETIC_EVAL)
    expected = (
        {f"MMEB-train/{s}/original-00000-of-00001.parquet" for s in train}
        | {f"MMEB-train/images_zip/{s}.zip" for s in train}
        | {f"MMEB-eval/{d}/test-00000-of-00001.parquet" for d in evals}
        | {"MMEB-train/README.md", "MMEB-eval/README.md", "MMEB-eval/images.zip", MANIFEST}
    )
    assert set(tree_bytes(raw)) == expected  # in particular: no diverse_instruction parquet
    assert check_manifest(raw) == manifest
    assert manifest["source"] == "synthetic" and manifest["split"] == "original"
    assert manifest["repos"]["MMEB-train"]["subsets"] == train
    assert manifest["repos"]["MMEB-eval"]["subsets"] == evals
    assert manifest["synthetic"]["seed"] == 0 and manifest["synthetic"]["train_rows"] == 6
    assert no_work_dirs(raw.parent)


def test_synthetic_split_and_subset_selection(tmp_path):
    raw = tmp_path / "raw"
    run(data_params(train_split="diverse_instruction", train_subsets=["Syn-CIRR", "Syn-ShapeCLS"],
                    eval_subsets=["Syn-NIGHTS"]), SYN, out=raw)
    assert set(tree_bytes(raw)) == {
        "MMEB-train/Syn-CIRR/diverse_instruction-00000-of-00001.parquet",
        "MMEB-train/Syn-ShapeCLS/diverse_instruction-00000-of-00001.parquet",
        "MMEB-train/images_zip/Syn-CIRR.zip",
        "MMEB-train/images_zip/Syn-ShapeCLS.zip",
        "MMEB-train/README.md",
        "MMEB-eval/Syn-NIGHTS/test-00000-of-00001.parquet",
        "MMEB-eval/images.zip",
        "MMEB-eval/README.md",
        MANIFEST,
    }
    manifest = check_manifest(raw)
    assert manifest["repos"]["MMEB-train"] == {
        "split": "diverse_instruction", "subsets": ["Syn-CIRR", "Syn-ShapeCLS"]
    }


def test_same_inputs_give_identical_bytes(tmp_path, monkeypatch):
    import time

    a, b = tmp_path / "a" / "raw", tmp_path / "b" / "raw"
    run(data_params(eval_subsets=["Syn-CIRR", "Syn-TextVQA"]), SYN, out=a)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 86400 + 7)  # a later clock: no timestamps
    run(data_params(eval_subsets=["Syn-CIRR", "Syn-TextVQA"]), SYN, out=b)
    monkeypatch.undo()
    first = tree_bytes(a)
    assert first == tree_bytes(b)
    # rerunning into an existing output replaces it with the same bytes; other seed -> other bytes
    run(data_params(eval_subsets=["Syn-CIRR", "Syn-TextVQA"]), SYN, out=a)
    assert tree_bytes(a) == first
    run(data_params(eval_subsets=["Syn-CIRR", "Syn-TextVQA"]), {**SYN, "seed": 1}, out=b)
    assert tree_bytes(b)[MANIFEST] != first[MANIFEST]


def test_failed_run_leaves_the_previous_output(tmp_path):
    raw = tmp_path / "raw"
    run(data_params(train_subsets=["Syn-CIRR"], eval_subsets=["Syn-CIRR"]), SYN, out=raw)
    before = tree_bytes(raw)
    with pytest.raises(LayoutError, match=r"synthetic MMEB: unknown train subsets \['Syn-Nope'\]"):
        run(data_params(train_subsets=["Syn-CIRR", "Syn-Nope"]), SYN, out=raw)
    assert tree_bytes(raw) == before
    assert no_work_dirs(tmp_path)


def test_stale_work_dirs_of_dead_runs_are_removed(tmp_path):
    raw = tmp_path / "raw"
    stale = tmp_path / ".raw.tmp-999999999"  # no such process
    (stale / "MMEB-train").mkdir(parents=True)
    run(data_params(train_subsets=["Syn-CIRR"], eval_subsets=["Syn-CIRR"]), SYN, out=raw)
    assert not stale.exists() and no_work_dirs(tmp_path)


# --- local ---------------------------------------------------------------------------------------
@pytest.fixture
def local_mmeb(tmp_path):
    return write_hub_layout(tmp_path / "mmeb")


def test_local_source_copies_the_selection(tmp_path, local_mmeb):
    raw = tmp_path / "raw"
    manifest = run(data_params(source="local", local_dir=str(local_mmeb), train_subsets=["Beta"]), SYN, out=raw)
    got = tree_bytes(raw)
    expected = [
        "MMEB-train/Beta/original-00000-of-00001.parquet",
        "MMEB-train/images_zip/Beta.zip",
        "MMEB-train/README.md",
        "MMEB-eval/Alpha/test-00000-of-00001.parquet",
        "MMEB-eval/Delta/test-00000-of-00001.parquet",  # `all` = every config but CIFAR-100
        "MMEB-eval/images.zip",
        "MMEB-eval/README.md",
    ]
    assert set(got) == set(expected) | {MANIFEST}
    for rel in expected:
        assert got[rel] == (local_mmeb / rel).read_bytes()
    assert check_manifest(raw) == manifest
    assert manifest["source"] == "local"
    assert manifest["repos"] == {
        "MMEB-train": {"split": "original", "subsets": ["Beta"]},
        "MMEB-eval": {"split": "test", "subsets": ["Alpha", "Delta"]},
    }
    # the user's folder is untouched
    assert (local_mmeb / "MMEB-train/Alpha/diverse_instruction-00000-of-00001.parquet").is_file()


def test_local_source_missing_pieces_are_named(tmp_path, local_mmeb):
    raw = tmp_path / "raw"
    (local_mmeb / "MMEB-train/images_zip/Beta.zip").unlink()
    with pytest.raises(LayoutError, match=r"mmeb/MMEB-train: missing \['images_zip/Beta\.zip'\]"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=raw)
    # the other subsets alone are fine
    run(data_params(source="local", local_dir=str(local_mmeb), train_subsets=["Alpha", "Gamma"]), SYN, out=raw)
    assert check_manifest(raw)["repos"]["MMEB-train"]["subsets"] == ["Alpha", "Gamma"]

    with pytest.raises(LayoutError, match=r"unknown train subsets \['Omega'\].*'Alpha', 'Beta', 'Gamma'"):
        run(data_params(source="local", local_dir=str(local_mmeb), train_subsets=["Omega"]), SYN, out=raw)
    shutil.rmtree(local_mmeb / "MMEB-eval/Delta")
    with pytest.raises(LayoutError, match=r"MMEB-eval: unknown eval subsets \['Delta'\]"):
        run(data_params(source="local", local_dir=str(local_mmeb), train_subsets=["Alpha"], eval_subsets=["Delta"]),
            SYN, out=raw)
    shutil.rmtree(local_mmeb / "MMEB-eval")
    with pytest.raises(LayoutError, match=r"missing \['MMEB-eval'\]"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=raw)
    with pytest.raises(LayoutError, match=r"data.local_dir data/local: missing"):
        run(data_params(source="local"), SYN, out=raw)  # the default folder holds only its README
    assert check_manifest(raw)["repos"]["MMEB-train"]["subsets"] == ["Alpha", "Gamma"]  # still the good run
    assert no_work_dirs(tmp_path)


def test_local_source_refuses_links_that_dvc_would_not_follow(tmp_path, local_mmeb):
    """dvc tracks data.local_dir as the download stage's dep but not what links inside it point to:
    a linked repo or file would go stale without a rerun. The folder itself may be a link."""
    raw = tmp_path / "raw"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (local_mmeb / "MMEB-eval").rename(elsewhere / "MMEB-eval")
    (local_mmeb / "MMEB-eval").symlink_to(elsewhere / "MMEB-eval", target_is_directory=True)
    with pytest.raises(LayoutError, match=r"\['MMEB-eval'\] are symbolic links"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=raw)
    (local_mmeb / "MMEB-eval").unlink()
    (elsewhere / "MMEB-eval").rename(local_mmeb / "MMEB-eval")
    zip_path = local_mmeb / "MMEB-train/images_zip/Beta.zip"
    zip_path.rename(elsewhere / "Beta.zip")
    zip_path.symlink_to(elsewhere / "Beta.zip")
    with pytest.raises(LayoutError, match=r"\['MMEB-train/images_zip/Beta.zip'\] are symbolic links"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=raw)
    run(data_params(source="local", local_dir=str(local_mmeb), train_subsets=["Alpha"]), SYN, out=raw)  # not selected
    linked_root = tmp_path / "link-to-mmeb"
    linked_root.symlink_to(local_mmeb, target_is_directory=True)
    run(data_params(source="local", local_dir=str(linked_root), train_subsets=["Alpha"]), SYN, out=raw)
    assert check_manifest(raw)["repos"]["MMEB-train"]["subsets"] == ["Alpha"]


def test_extra_configs_normalize_does_not_know_are_refused_before_any_download(tmp_path, local_mmeb):
    """MMEB-eval's extra CIFAR-100 config is not one of the 36 datasets: normalize could not place
    it, so download refuses it up front instead of fetching it first."""
    with pytest.raises(LayoutError, match=r"\['CIFAR-100'\] are configs of MMEB-eval but not among"):
        run(data_params(source="local", local_dir=str(local_mmeb), eval_subsets=["Alpha", "CIFAR-100"]), SYN,
            out=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_local_source_rejects_a_broken_zip(tmp_path, local_mmeb):
    (local_mmeb / "MMEB-eval/images.zip").write_bytes(b"not a zip")
    with pytest.raises(LayoutError, match=r"not readable zip or parquet files: \['images\.zip'\]"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=tmp_path / "raw")


def test_local_source_names_git_lfs_pointers_and_broken_parquet(tmp_path, local_mmeb):
    """A repo cloned without git-lfs holds small text pointers instead of parquet and zips: named
    as such by download, not left to fail in normalize as 'Parquet magic bytes not found'."""
    shard = local_mmeb / "MMEB-eval/Alpha/test-00000-of-00001.parquet"
    good = shard.read_bytes()
    shard.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    with pytest.raises(LayoutError, match=r"git-lfs pointer files instead of data: \['Alpha/test-00000"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=tmp_path / "raw")
    shard.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(LayoutError, match=r"not readable zip or parquet files: \['Alpha/test-00000"):
        run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=tmp_path / "raw")
    shard.write_bytes(good)
    run(data_params(source="local", local_dir=str(local_mmeb)), SYN, out=tmp_path / "raw")


# --- hub, through the real client ----------------------------------------------------------------
def run_stage(work: Path, endpoint: str, *, offline: bool = False, check: bool = True, free_bytes: int | None = None,
              **data) -> subprocess.CompletedProcess:
    """`python -m stages.download` in `work` with params from a temp params file (`free_bytes`: every
    disk reports that much free space, through a sitecustomize module)."""
    work.mkdir(parents=True, exist_ok=True)
    write_params(work / "params.yaml", data=data_params(source="hub", **data), synthetic=SYN)
    env = client_env(work, endpoint, offline)
    if free_bytes is not None:
        shim = work / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(
            "import shutil\nfrom collections import namedtuple\n"
            f"shutil.disk_usage = lambda path: namedtuple('usage', 'total used free')(10 ** 12, 0, {free_bytes})\n")
        env["PYTHONPATH"] = f"{shim}{os.pathsep}{env['PYTHONPATH']}"
    env["VLM2VEC_PARAMS"] = str(work / "params.yaml")
    env.pop("VLM2VEC_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "stages.download"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_hub_source_fetches_only_the_selection(tmp_path, hub_standin, hub_layout):
    train_sha = hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    eval_sha = hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    work = tmp_path / "work"
    run_stage(work, hub_standin.endpoint, train_subsets=["Gamma", "Alpha"], eval_subsets=["Delta"])
    raw = work / "data" / "raw"
    manifest = check_manifest(raw)
    assert manifest["source"] == "hub"
    assert manifest["repos"] == {
        "MMEB-train": {"repo_id": TRAIN_REPO, "requested_revision": "main", "resolved_commit": train_sha,
                       "split": "original", "subsets": ["Gamma", "Alpha"]},
        "MMEB-eval": {"repo_id": EVAL_REPO, "requested_revision": "main", "resolved_commit": eval_sha,
                      "split": "test", "subsets": ["Delta"]},
    }
    want_train = {"Alpha/original-00000-of-00001.parquet", "Gamma/original-00000-of-00001.parquet",
                  "images_zip/Alpha.zip", "images_zip/Gamma.zip", "README.md"}
    want_eval = {"Delta/test-00000-of-00001.parquet", "images.zip", "README.md"}
    # the server never saw a request for anything else (Beta, other splits, Alpha/CIFAR-100 eval, ...)
    assert hub_standin.files_requested(TRAIN_REPO) == want_train
    assert hub_standin.files_requested(EVAL_REPO) == want_eval
    got = tree_bytes(raw)
    assert set(got) == {f"MMEB-train/{p}" for p in want_train} | {f"MMEB-eval/{p}" for p in want_eval} | {MANIFEST}
    for rel, data in got.items():
        if rel != MANIFEST:
            assert data == (hub_layout / rel).read_bytes()
    # huggingface_hub's cache and metadata stay outside the DVC output
    assert (work / ".cache/hub").is_dir()
    assert not any(p.is_symlink() or p.name.startswith(".") for p in raw.rglob("*"))
    assert no_work_dirs(raw.parent)

    # a rerun without network works from the cache and writes the same bytes
    hub_standin.clear_log()
    run_stage(work, hub_standin.endpoint, offline=True, train_subsets=["Gamma", "Alpha"], eval_subsets=["Delta"])
    assert tree_bytes(raw) == got
    assert hub_standin.requests == []


def test_hub_revision_pinning(tmp_path, hub_standin, hub_layout):
    # v1.0 = an older commit with other content; main = the current one
    old = write_hub_layout(tmp_path / "old", train_subsets=("Alpha",), eval_subsets=("Alpha",), rows=2)
    old_train = hub_standin.add_repo(TRAIN_REPO, old / "MMEB-train", refs=("main", "v1.0"))
    old_eval = hub_standin.add_repo(EVAL_REPO, old / "MMEB-eval", refs=("main", "v1.0"))
    new_train = hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    assert old_train != new_train

    for i, revision in enumerate(["v1.0", {"train": old_train, "eval": old_eval}]):
        work = tmp_path / f"work-{i}"
        run_stage(work, hub_standin.endpoint, revision=revision, train_subsets=["Alpha"], eval_subsets=["Alpha"])
        raw = work / "data" / "raw"
        manifest = check_manifest(raw)
        train, evals = manifest["repos"]["MMEB-train"], manifest["repos"]["MMEB-eval"]
        assert train["requested_revision"] == (revision if i == 0 else old_train)
        assert (train["resolved_commit"], evals["resolved_commit"]) == (old_train, old_eval)
        for rel in ("MMEB-train/Alpha/original-00000-of-00001.parquet", "MMEB-eval/Alpha/test-00000-of-00001.parquet"):
            assert (raw / rel).read_bytes() == (old / rel).read_bytes() != (hub_layout / rel).read_bytes()

    # one commit sha for two repos cannot be right: a clear error before any download, no output
    hub_standin.clear_log()
    r = run_stage(tmp_path / "w3", hub_standin.endpoint, check=False, revision=old_train)
    assert r.returncode != 0 and "pins one repo only" in r.stderr
    assert not (tmp_path / "w3/data/raw").exists() and hub_standin.requests == []
    # an unknown revision is the client's RevisionNotFoundError
    r = run_stage(tmp_path / "w4", hub_standin.endpoint, check=False, revision="v9")
    assert r.returncode != 0 and "RevisionNotFoundError" in r.stderr

    work = tmp_path / "work-main"
    run_stage(work, hub_standin.endpoint, train_subsets=["Alpha"], eval_subsets=["Alpha"])
    assert check_manifest(work / "data/raw")["repos"]["MMEB-train"]["resolved_commit"] == new_train


def test_hub_interrupted_transfer_is_resumed_with_a_range_request(tmp_path, hub_standin):
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole chunk: cut beyond it
    served = write_hub_layout(tmp_path / "big", train_subsets=("Alpha",), eval_subsets=("Alpha",), big_zip="Alpha")
    hub_standin.add_repo(TRAIN_REPO, served / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, served / "MMEB-eval")
    zip_path = "images_zip/Alpha.zip"
    size = (served / "MMEB-train" / zip_path).stat().st_size
    assert size > 11 * 1024 * 1024
    hub_standin.cut_next_transfer(TRAIN_REPO, zip_path, after_bytes=10 * 1024 * 1024 + 12345)
    work = tmp_path / "work"
    r = run_stage(work, hub_standin.endpoint)
    assert "Trying to resume download" in r.stderr
    gets = hub_standin.downloads(TRAIN_REPO, zip_path)
    assert [g.range for g in gets] == [None, "bytes=10485760-"]
    assert [g.status for g in gets] == [200, 206]
    raw = work / "data" / "raw"
    assert (raw / "MMEB-train" / zip_path).read_bytes() == (served / "MMEB-train" / zip_path).read_bytes()
    check_manifest(raw)


def test_hub_failed_run_leaves_no_output_and_the_rerun_fetches_only_what_is_missing(tmp_path, hub_standin, hub_layout):
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    hub_standin.fail_next_transfer(EVAL_REPO, "images.zip", status=500)
    work = tmp_path / "work"
    r = run_stage(work, hub_standin.endpoint, check=False)
    assert r.returncode != 0 and "500" in r.stderr
    assert not (work / "data/raw").exists() and no_work_dirs(work / "data")

    hub_standin.clear_log()
    run_stage(work, hub_standin.endpoint)
    fetched = {(r.repo_id, r.file) for r in hub_standin.requests if r.method == "GET" and r.file}
    assert fetched == {(EVAL_REPO, "images.zip")}  # everything else came from .cache/hub
    raw = work / "data" / "raw"
    assert (raw / "MMEB-eval/images.zip").read_bytes() == (hub_layout / "MMEB-eval/images.zip").read_bytes()
    assert check_manifest(raw)["repos"]["MMEB-train"]["subsets"] == ["Alpha", "Beta", "Gamma"]


def test_hub_partial_files_of_killed_runs_are_removed(tmp_path, hub_standin, hub_layout):
    """huggingface_hub writes each download to a file of its own name and never reuses another's, so
    the partial file a killed run leaves (up to a whole image zip) would stay in .cache/hub for good;
    the next run deletes it, but not one whose download lock another process holds."""
    from filelock import FileLock

    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    work = tmp_path / "work"
    blobs = work / ".cache/hub/datasets--TIGER-Lab--MMEB-train/blobs"
    blobs.mkdir(parents=True)
    orphan = blobs / f"{'a' * 64}.1f2e3d4c.incomplete"  # a killed run's partial images zip
    orphan.write_bytes(b"\0" * 4096)
    busy = blobs / f"{'b' * 64}.5a6b7c8d.incomplete"  # another process is downloading this one
    busy.write_bytes(b"\0" * 4096)
    lock = work / ".cache/hub/.locks/datasets--TIGER-Lab--MMEB-train" / f"{'b' * 64}.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(lock):
        r = run_stage(work, hub_standin.endpoint, train_subsets=["Alpha"], eval_subsets=["Alpha"])
    assert not orphan.exists() and busy.exists()
    assert "removed 0.0 MB of partial files" in r.stderr
    check_manifest(work / "data/raw")


def test_hub_download_of_the_synthetic_repos_equals_the_synthetic_source(tmp_path, hub_standin):
    """The synthetic source keeps exactly what a Hub download of the same repos would hold. (With a
    subset selection the generator writes only the selected datasets, so then the eval images.zip and
    the README cards hold less than the Hub's, while every per-subset file stays identical.)"""
    from pipelines.sources.synthetic import generate

    generate(tmp_path / "served", **SIZES)  # both splits, every dataset
    hub_standin.add_repo(TRAIN_REPO, tmp_path / "served/MMEB-train")
    hub_standin.add_repo(EVAL_REPO, tmp_path / "served/MMEB-eval")
    selection = {"train_split": "diverse_instruction"}
    work = tmp_path / "work"
    run_stage(work, hub_standin.endpoint, **selection)
    synthetic = run(data_params(**selection), SYN, out=tmp_path / "syn" / "raw")
    from_hub, from_synthetic = tree_bytes(work / "data/raw"), tree_bytes(tmp_path / "syn/raw")
    assert {k: v for k, v in from_hub.items() if k != MANIFEST} == {
        k: v for k, v in from_synthetic.items() if k != MANIFEST
    }
    hub_manifest = json.loads(from_hub[MANIFEST])
    assert hub_manifest["files"] == synthetic["files"]
    assert hub_manifest["repos"]["MMEB-train"]["subsets"] == synthetic["repos"]["MMEB-train"]["subsets"]


def test_hub_refuses_a_train_and_eval_selection_that_fits_only_one_repo_at_a_time(tmp_path, hub_standin, hub_layout):
    """Both repos are planned before either downloads: with room for the train selection alone, the
    stage fails before the first byte instead of after the train zips (the check used to be per repo)."""
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    train = hub_layout / "MMEB-train"
    train_bytes = sum(f.stat().st_size for f in [*train.glob("Alpha/original-*.parquet"), train / "images_zip/Alpha.zip",
                                                 train / "README.md"])
    r = run_stage(tmp_path / "w", hub_standin.endpoint, check=False, free_bytes=train_bytes,
                  train_subsets=["Alpha"], eval_subsets=["Alpha"])
    assert r.returncode != 0
    assert f"{TRAIN_REPO}@" in r.stderr and f"{EVAL_REPO}@" in r.stderr and "GB still to download" in r.stderr
    assert not any(req.method == "GET" and req.file for req in hub_standin.requests)  # not a byte fetched
    assert not (tmp_path / "w/data/raw").exists()
    run_stage(tmp_path / "w", hub_standin.endpoint, train_subsets=["Alpha"], eval_subsets=["Alpha"])  # room


def test_hub_cache_on_another_disk_needs_room_for_the_copies(monkeypatch, tmp_path):
    """When the cache and data/ are on two file systems, `place` copies every file: that space is
    checked too, on data/'s disk."""
    from types import SimpleNamespace

    entry = SimpleNamespace(size=6 * 10**9)
    plan = hub.RepoPlan("train", "r/x", "main", "c" * 40, ["A"], {"A.zip": entry}, ["A.zip"], [], need=0)
    monkeypatch.setattr(hub, "free_bytes", lambda folder: 5 * 10**9)
    hub.check_space([plan], tmp_path / "cache")  # all cached, nothing copied: fine
    with pytest.raises(hub.LayoutError, match=r"6.00 GB to copy \(another disk.*\) into .*data, but only 5.00 GB free"):
        hub.check_space([plan], tmp_path / "cache", copy_to=tmp_path / "data")
    assert hub.same_disk(tmp_path / "cache" / "not" / "yet", tmp_path)
