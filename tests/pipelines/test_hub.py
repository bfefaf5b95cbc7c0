"""pipelines.sources.hub: the Hub layout rules, and `fetch_repo` through the real huggingface_hub client
against the local Hub stand-in (tests/support/hubserver.py).

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import time and conftest.py sets
HF_HUB_OFFLINE=1 for the suite, so every client call runs in a subprocess with its own env.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.sources import hub
from tests.support.hubserver import client_env, fake_commit

TRAIN_REPO, EVAL_REPO = "TIGER-Lab/MMEB-train", "TIGER-Lab/MMEB-eval"


# --- layout rules --------------------------------------------------------------------------------
PATHS = [
    "README.md",
    ".gitattributes",
    "MSCOCO/original-00000-of-00001.parquet",
    "MSCOCO/diverse_instruction-00000-of-00001.parquet",
    "MSCOCO/train-00000-of-00001.parquet",
    "MSCOCO_t2i/original-00000-of-00002.parquet",
    "MSCOCO_t2i/original-00001-of-00002.parquet",
    "OnlyLegacy/train-00000-of-00001.parquet",
    "images_zip/MSCOCO.zip",
    "images_zip/MSCOCO_t2i.zip",
    "images_zip/OnlyLegacy.zip",
    "unzip_file.py",
]


def test_available_subsets_follow_the_split():
    assert hub.available_subsets(PATHS, hub.TRAIN, "original") == ["MSCOCO", "MSCOCO_t2i"]
    assert hub.available_subsets(PATHS, hub.TRAIN, "diverse_instruction") == ["MSCOCO"]
    assert hub.available_subsets(["A/test-00000-of-00001.parquet", "B/x.parquet"], hub.EVAL, "original") == ["A"]


def test_select_files_takes_only_the_selected_subsets_and_split():
    got = hub.select_files(PATHS, hub.TRAIN, "original", ["MSCOCO"])
    # MSCOCO's pattern must not leak into MSCOCO_t2i, nor take the other splits
    assert got == ["MSCOCO/original-00000-of-00001.parquet", "README.md", "images_zip/MSCOCO.zip"]
    got = hub.select_files(PATHS, hub.TRAIN, "original", ["MSCOCO_t2i"])
    assert got == [
        "MSCOCO_t2i/original-00000-of-00002.parquet",
        "MSCOCO_t2i/original-00001-of-00002.parquet",
        "README.md",
        "images_zip/MSCOCO_t2i.zip",
    ]


def test_select_files_names_what_is_missing():
    paths = [p for p in PATHS if p != "images_zip/MSCOCO.zip"]
    with pytest.raises(hub.LayoutError, match=r"images_zip/MSCOCO\.zip"):
        hub.select_files(paths, hub.TRAIN, "original", ["MSCOCO"])
    with pytest.raises(hub.LayoutError, match=r"images\.zip"):
        hub.select_files(["A/test-00000-of-00001.parquet"], hub.EVAL, "original", ["A"])


def test_resolve_selection():
    avail = ["A-OKVQA", "CIFAR-100", "CIRR"]
    assert hub.resolve_selection("all", avail, hub.EVAL) == ["A-OKVQA", "CIRR"]  # extra config left out
    assert hub.resolve_selection("all", avail, hub.TRAIN) == avail
    with pytest.raises(hub.LayoutError, match="not among MMEB's 36 datasets"):  # not even by name
        hub.resolve_selection(["CIFAR-100"], avail, hub.EVAL)
    assert hub.resolve_selection("CIRR", avail, hub.EVAL) == ["CIRR"]
    with pytest.raises(hub.LayoutError, match=r"unknown eval subsets \['OKVQA'\].*available"):
        hub.resolve_selection(["CIRR", "OKVQA"], avail, hub.EVAL)
    with pytest.raises(hub.LayoutError, match="twice"):
        hub.resolve_selection(["CIRR", "CIRR"], avail, hub.EVAL)
    with pytest.raises(hub.LayoutError, match="empty"):
        hub.resolve_selection([], avail, hub.EVAL)


def test_check_sha256_flags_a_mismatch(tmp_path):
    fetched = hub.FetchedRepo(hub.TRAIN, "o/r", "main", "c" * 40, ["A"], {"A/x.parquet": tmp_path / "x"})
    fetched.expected_sha256 = {"A/x.parquet": "ab" * 32}
    fetched.check_sha256({"A/x.parquet": "ab" * 32, "README.md": "00" * 32})  # card: no LFS oid, not checked
    with pytest.raises(hub.LayoutError, match=r"A/x\.parquet"):
        fetched.check_sha256({"A/x.parquet": "cd" * 32})


# --- through the real client ---------------------------------------------------------------------
def run_client(code: str, env: dict, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter; it must print one JSON object as its last line."""
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_standin_speaks_the_api_the_client_uses(hub_standin, hub_layout, tmp_path):
    sha = hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval", refs=("main", "v1"))
    code = f"""
import json
from huggingface_hub import HfApi
from huggingface_hub.errors import RevisionNotFoundError, RepositoryNotFoundError, RemoteEntryNotFoundError
from huggingface_hub import hf_hub_download
api = HfApi()
out = {{}}
out["sha_main"] = api.dataset_info("{EVAL_REPO}", revision="main").sha
out["sha_tag"] = api.resolve_revision("{EVAL_REPO}", repo_type="dataset", revision="v1").resolved
out["files"] = api.list_repo_files("{EVAL_REPO}", repo_type="dataset", revision="{sha}")
top = api.list_repo_tree("{EVAL_REPO}", repo_type="dataset", revision="main")
out["top"] = sorted((f.path, type(f).__name__) for f in top)
out["lfs"] = {{f.path: f.lfs.sha256 for f in api.list_repo_tree("{EVAL_REPO}", repo_type="dataset", recursive=True) if getattr(f, "lfs", None)}}
for name, call in [("bad_rev", lambda: api.dataset_info("{EVAL_REPO}", revision="nope")),
                   ("bad_repo", lambda: api.dataset_info("x/y")),
                   ("bad_file", lambda: hf_hub_download("{EVAL_REPO}", "nope.txt", repo_type="dataset"))]:
    try:
        call(); out[name] = None
    except Exception as e:
        out[name] = type(e).__name__
print(json.dumps(out))
"""
    out = run_client(code, client_env(tmp_path, hub_standin.endpoint), tmp_path)
    assert out["sha_main"] == out["sha_tag"] == sha
    expected = sorted(p.relative_to(hub_layout / "MMEB-eval").as_posix() for p in (hub_layout / "MMEB-eval").rglob("*") if p.is_file())
    assert sorted(out["files"]) == expected
    assert ["Alpha", "RepoFolder"] in out["top"] and ["images.zip", "RepoFile"] in out["top"]
    assert not any("/" in p for p, _ in out["top"])  # non-recursive listing stays at the top level
    import hashlib

    assert out["lfs"]["images.zip"] == hashlib.sha256((hub_layout / "MMEB-eval/images.zip").read_bytes()).hexdigest()
    assert "README.md" not in out["lfs"]
    assert out["bad_rev"] == "RevisionNotFoundError"
    assert out["bad_repo"] == "RepositoryNotFoundError"
    assert out["bad_file"] == "RemoteEntryNotFoundError"


FETCH = """
import json, sys
from pathlib import Path
from pipelines.sources import hub
f = hub.fetch_repo("{repo}", kind="{kind}", revision="{revision}", split="original", selection={selection!r},
                   cache_dir=Path("cache"))
print(json.dumps({{"commit": f.commit, "subsets": f.subsets, "expected": f.expected_sha256,
                  "files": {{p: str(q) for p, q in f.files.items()}}}}))
"""


def test_fetch_repo_gets_only_the_selection_pinned_to_one_commit(hub_standin, hub_layout, tmp_path):
    sha = hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    code = FETCH.format(repo=TRAIN_REPO, kind="train", revision="main", selection=["Gamma", "Alpha"])
    out = run_client(code, client_env(tmp_path, hub_standin.endpoint), tmp_path)
    assert out["commit"] == sha
    assert out["subsets"] == ["Gamma", "Alpha"]
    want = {"Alpha/original-00000-of-00001.parquet", "Gamma/original-00000-of-00001.parquet",
            "images_zip/Alpha.zip", "images_zip/Gamma.zip", "README.md"}
    assert set(out["files"]) == want
    # nothing else was asked for: not Beta, not the other splits, not the legacy train parquet
    assert hub_standin.files_requested(TRAIN_REPO) == want
    for path, local in out["files"].items():
        assert Path(local).read_bytes() == (hub_layout / "MMEB-train" / path).read_bytes()
        assert str(tmp_path / "cache") in local  # inside the given cache, nowhere else
    assert set(out["expected"]) == want - {"README.md"}  # LFS oids from the tree listing
    # every resolve request was pinned to the commit, never to the branch name
    resolves = [r.url for r in hub_standin.requests if "/resolve/" in r.url]
    assert resolves and all(f"/resolve/{sha}/" in u for u in resolves)


def test_fetch_repo_offline_works_from_the_cache(hub_standin, hub_layout, tmp_path):
    hub_standin.add_repo(EVAL_REPO, hub_layout / "MMEB-eval")
    code = FETCH.format(repo=EVAL_REPO, kind="eval", revision="main", selection="all")
    online = run_client(code, client_env(tmp_path, hub_standin.endpoint), tmp_path)
    assert online["subsets"] == ["Alpha", "Delta"]  # CIFAR-100 is not part of `all`
    hub_standin.clear_log()
    offline = run_client(code, client_env(tmp_path, hub_standin.endpoint, offline=True), tmp_path)
    assert offline["commit"] == online["commit"] and offline["files"] == online["files"]
    assert hub_standin.requests == []


def test_fetch_repo_unknown_subset_is_a_clear_error(hub_standin, hub_layout, tmp_path):
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    code = FETCH.format(repo=TRAIN_REPO, kind="train", revision="main", selection=["Alpha", "Omega"])
    r = subprocess.run([sys.executable, "-c", code], env=client_env(tmp_path, hub_standin.endpoint), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "LayoutError" in r.stderr and "unknown train subsets ['Omega']" in r.stderr and "Beta" in r.stderr
    assert not any(r.method == "GET" and r.file for r in hub_standin.requests)  # failed before downloading


def test_fake_commit_is_stable():
    assert fake_commit("a/b") == fake_commit("a/b") != fake_commit("a/c")
    assert len(fake_commit("a/b")) == 40


def test_fetch_repo_refuses_a_selection_the_disk_cannot_hold_before_downloading(hub_standin, hub_layout, tmp_path):
    """huggingface_hub only warns, and only when one file alone does not fit: twenty image zips that
    fit one by one would fill the disk hours in. The selection's missing bytes are checked first."""
    hub_standin.add_repo(TRAIN_REPO, hub_layout / "MMEB-train")
    low_disk = """
import shutil
from collections import namedtuple
free = {free}
shutil.disk_usage = lambda path: namedtuple("usage", "total used free")(10 ** 12, 10 ** 12 - free, free)
"""
    fetch = FETCH.format(repo=TRAIN_REPO, kind="train", revision="main", selection=["Alpha"])
    guarded = fetch.replace("f = hub.fetch_repo", "try:\n    f = hub.fetch_repo").replace(
        'cache_dir=Path("cache"))', 'cache_dir=Path("cache"))\nexcept hub.LayoutError as e:\n'
        '    print(json.dumps({"error": str(e)})); sys.exit(0)')
    env = client_env(tmp_path, hub_standin.endpoint)
    out = run_client(low_disk.format(free=100) + guarded, env, tmp_path)
    assert "still to download into cache, but only 0.00 GB free there" in out["error"]
    assert not any(r.method == "GET" and r.file for r in hub_standin.requests)  # refused before any byte
    assert not (tmp_path / "cache/datasets--TIGER-Lab--MMEB-train/snapshots").exists()

    run_client(fetch, env, tmp_path)  # room enough: fetched
    hub_standin.clear_log()
    out = run_client(low_disk.format(free=0) + fetch, env, tmp_path)  # all cached: nothing left to fit
    assert set(out["files"]) == {"Alpha/original-00000-of-00001.parquet", "images_zip/Alpha.zip", "README.md"}
    assert not any(r.method == "GET" and r.file for r in hub_standin.requests)
