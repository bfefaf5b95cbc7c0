"""End to end: the data half of the DVC pipeline (download -> normalize -> shard) in a scratch copy of
the repository, on a tiny synthetic MMEB.

Checks that the stages are reproducible (a forced re-run leaves every output hash in dvc.lock as it
was), that a params change goes through `dvc exp run` and changes the shards, that DVC then reports
the pipeline up to date, and that the polars inspection one-liners of docs/records.md work on the
outputs and agree with metrics/etl.json and the shard index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STAGES = ["download", "normalize", "shard"]
SMALL = {"synthetic": {"train_rows": 40, "eval_rows": 12, "eval_candidates": 8}, "normalize": {"workers": 1}}

# docs/records.md ("Inspecting the data with polars") quotes these verbatim: (what it shows, a polars
# expression), run from the repo root after `dvc repro shard`. Each expression evaluates to a polars DataFrame.
INSPECTION_DOC = REPO / "docs" / "records.md"
INSPECTION_ONELINERS = [
    ("rows per dataset and meta-task",
     'pl.scan_parquet("data/normalized/train/*/part-*.parquet").group_by("dataset", "meta_task").len()'
     '.sort("dataset").collect()'),
    ("MMEB-V2 training pairs per set and modality, and their videos' frames",
     'pl.scan_parquet("data/normalized/train/*/pairs-*.parquet").group_by("dataset", "modality").agg(pl.len()'
     '.alias("pairs"), frames=pl.col("query").struct.field("video").list.len().sum() + pl.col("target")'
     '.struct.field("video").list.len().sum()).sort("dataset").collect()'),
    ("rejected rows by split, dataset and reason (the schema lets it work when nothing was rejected)",
     'pl.scan_parquet("data/rejects/*/*.parquet", schema=dict.fromkeys(["id", "dataset", "split", "reason", '
     '"detail", "row"], pl.String)).group_by("split", "dataset", "reason").len().sort("split", "dataset", '
     '"reason").collect()'),
    ("instruction variety: distinct instructions per dataset",
     'pl.scan_parquet("data/normalized/train/*/part-*.parquet").group_by("dataset")'
     '.agg(pl.col("instruction").n_unique().alias("instructions"), pl.len().alias("rows")).sort("dataset").collect()'),
    ("text lengths (characters) of query and target texts",
     'pl.scan_parquet("data/normalized/train/*/part-*.parquet").select('
     'query=pl.col("query").struct.field("text").str.len_chars(), '
     'target=pl.col("target").struct.field("text").str.len_chars()).collect().describe()'),
    ("query images joined to the image store (size and format per record)",
     'pl.scan_parquet("data/normalized/train/*/part-*.parquet").select("id", '
     'sha256=pl.col("query").struct.field("image").struct.field("sha256")).drop_nulls("sha256")'
     '.join(pl.scan_parquet("data/normalized/images/*.parquet").select("sha256", "width", "height", "format"), '
     'on="sha256", how="left", maintain_order="left").collect()'),
    ("samples and bytes per shard",
     'pl.DataFrame(json.load(open("data/shards/train/index.json"))["shards"])'
     '.select("path", "dataset", "samples", "bytes")'),
]


def run_inspection(cwd: Path) -> dict[str, pl.DataFrame]:
    """Evaluate every INSPECTION_ONELINERS expression with `cwd` as the working directory."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return {desc: eval(code, {"pl": pl, "json": json}) for desc, code in INSPECTION_ONELINERS}
    finally:
        os.chdir(here)


def test_records_doc_quotes_the_inspection_oneliners():
    """What users copy is what the pipeline test runs: every expression, verbatim, in the docs."""
    text = INSPECTION_DOC.read_text(encoding="utf-8")
    section = text.split("## Inspecting the data with polars", 1)[1]
    for desc, code in INSPECTION_ONELINERS:
        assert code in section, f"docs/records.md lacks the one-liner for {desc}"


# --- scratch repository ---------------------------------------------------------------------------
def repo_files() -> list[str]:
    """Tracked plus untracked-but-not-ignored files of the working tree (working-tree versions),
    without pipeline outputs."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    skip = ("data/", "metrics/", "models/", "dvc.lock", "benchmarks/_work/")
    return sorted(p for p in out if p and (not p.startswith(skip) or p.startswith("data/local/"))
                  and (REPO / p).is_file())


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"  # `python` in dvc.yaml
    e.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
             GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid")
    e.pop("VLM2VEC_PARAMS", None)
    return e


def sh(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def dvc(cwd: Path, *args: str) -> str:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def out_hashes(cwd: Path) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} for the data stages, from dvc.lock."""
    lock = yaml.safe_load((cwd / "dvc.lock").read_text())
    return {s: {o["path"]: o["md5"] for o in lock["stages"][s]["outs"]} for s in STAGES}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    for needed in ("stages/download.py", "stages/normalize.py", "stages/shard.py"):
        if not (REPO / needed).exists():
            pytest.skip(f"{needed} is not there yet")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    return scratch_repo(tmp_path_factory.mktemp("e2e") / "repo", SMALL)


def scratch_repo(root: Path, sections: dict[str, dict]) -> Path:
    """A git repository at `root` holding a copy of the working tree (`repo_files`) whose
    params.yaml has the values of `sections`, committed."""
    for rel in repo_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "scratch copy")
    return root


def test_data_pipeline_reproducible_and_inspectable(scratch):
    dvc(scratch, "repro", "shard")
    first = out_hashes(scratch)
    assert set(first["shard"]) == {"data/shards/train"}

    # the docs/records.md one-liners over the outputs agree with the normalize metrics and the shard index
    results = run_inspection(scratch)
    metrics = json.loads((scratch / "metrics" / "etl.json").read_text())
    index = json.loads((scratch / "data" / "shards" / "train" / "index.json").read_text())
    check_inspection(results, metrics, index, scratch)

    sh(scratch, "git", "add", "-A")
    sh(scratch, "git", "commit", "-q", "-m", "pipeline run")

    # a forced re-run reproduces every output byte for byte
    log = dvc(scratch, "repro", "-f", "shard")
    assert "Running stage 'normalize'" in log and "Running stage 'shard'" in log
    assert out_hashes(scratch) == first

    # a params change runs as an experiment and changes the data
    dvc(scratch, "exp", "run", "shard", "-S", "synthetic.seed=1")
    changed = out_hashes(scratch)
    assert changed["shard"] != first["shard"] and changed["normalize"] != first["normalize"]
    assert yaml.safe_load((scratch / "params.yaml").read_text())["synthetic"]["seed"] == 1

    # ... after which the workspace is up to date
    log = dvc(scratch, "repro", "shard")
    assert "Running stage" not in log, log
    assert "Data and pipelines are up to date" in log, log
    # the data stages (shard and everything upstream) are clean; backbone/train/evaluate never ran here
    status = dvc(scratch, "status", "--with-deps", "shard")
    assert "Data and pipelines are up to date" in status, status
    # the local MMEB folder (data.local_dir) is a dep of download: a change there reruns it
    (scratch / "data" / "local" / "MMEB-eval").mkdir()
    (scratch / "data" / "local" / "MMEB-eval" / "images.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    status = dvc(scratch, "status", "download")
    assert "changed deps" in status and "data/local" in status, status


def check_inspection(results: dict[str, pl.DataFrame], metrics: dict, index: dict, cwd: Path) -> None:
    rows, pairs, rejects, variety, lengths, joined, shard_table = (results[d] for d, _ in INSPECTION_ONELINERS)
    train = {k.split("/", 1)[1]: v for k, v in metrics["datasets"].items() if k.startswith("train/")}
    assert train, metrics

    # rows per dataset == accepted train rows in the metrics; with the V2 pairs == samples in the shards
    per_dataset = {r["dataset"]: r["len"] for r in rows.iter_rows(named=True)}
    assert per_dataset == {d: s["accepted"] for d, s in train.items() if s["accepted"]}
    per_set = {r["dataset"]: r["pairs"] for r in pairs.iter_rows(named=True)}
    assert per_set and per_set == {d: s["pairs"] for d, s in metrics["v2_train"].items()}
    assert {**per_dataset, **per_set} == {d: e["samples"] for d, e in index["datasets"].items()}
    assert {r["dataset"]: r["meta_task"] for r in rows.iter_rows(named=True)} == \
        {d: e["meta_task"] for d, e in index["datasets"].items() if d in per_dataset}
    # every video pair has its frames (8 a video by default), pages none
    assert all((r["frames"] > 0) == (r["modality"] == "video") for r in pairs.iter_rows(named=True))

    # rejects by reason == the metrics' rejected_by_reason, train and eval
    got = {(("eval" if r["split"] == "test" else "train") + "/" + r["dataset"], r["reason"]): r["len"]
           for r in rejects.iter_rows(named=True)}
    want = {(k, reason): n for k, s in metrics["datasets"].items()
            for reason, n in s["rejected_by_reason"].items() if n}
    assert got == want
    assert sum(got.values()) == metrics["total"]["rejected"]

    # instruction variety: at least one instruction per dataset, never more than rows
    for r in variety.iter_rows(named=True):
        assert 1 <= r["instructions"] <= r["rows"] == per_dataset[r["dataset"]]

    # text lengths: one value per train record on each side
    stats = {r["statistic"]: r for r in lengths.iter_rows(named=True)}
    assert stats["count"]["query"] + stats["null_count"]["query"] == sum(per_dataset.values())
    assert stats["min"]["target"] >= 0

    # every query image of a record is in the image store, with its size
    assert joined.height > 0 and joined["width"].null_count() == 0
    assert (joined["width"] > 0).all() and set(joined["format"].unique()) <= {"JPEG", "PNG", "WEBP", "GIF"}

    # the shard table from the index: every sample once, sizes are the files'
    assert shard_table["samples"].sum() == index["total"]["samples"] == sum(per_dataset.values()) + sum(per_set.values())
    for r in shard_table.iter_rows(named=True):
        assert (cwd / "data" / "shards" / "train" / r["path"]).stat().st_size == r["bytes"]
