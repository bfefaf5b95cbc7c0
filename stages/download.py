"""DVC stage `download`: MMEB-train and MMEB-eval in their Hub layout -> data/raw/.

    python -m stages.download        # params: data, synthetic (params.yaml, or $VLM2VEC_PARAMS)

Writes `data/raw/MMEB-train/` (the selected split's parquet shards + images_zip/<Subset>.zip per selected
subset), `data/raw/MMEB-eval/` (test parquet per selected dataset + images.zip) and
`data/raw/manifest.json`. Images stay inside their zip archives.

`data.source` picks where the bytes come from:
  synthetic  the embedded miniature MMEB, generated (`pipelines.sources.synthetic.generate`)
  local      a folder `data.local_dir` holding MMEB-train/ and MMEB-eval/ in the Hub layout
  hub        the Hugging Face Hub, `data.train_repo` / `data.eval_repo` at `data.revision`, through a
             cache outside data/raw (`.cache/hub`, or $VLM2VEC_HUB_CACHE) so huggingface_hub's metadata
             and lock files never enter the DVC output; files are hard-linked from there (copied
             across file systems)

data/raw is a DVC output, so its bytes are a function of the inputs only: the manifest has no
timestamps and no absolute paths, files and keys are sorted. The output is built in a sibling folder
and renamed into place at the end, so a killed run leaves the previous data/raw (or none), never half.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from pipelines import mmeb
from pipelines.sources import hub, local
from stages.common import check_keys, load_params, setup_logging

log = logging.getLogger("stages.download")

RAW = Path("data/raw")
HUB_CACHE = Path(os.environ.get("VLM2VEC_HUB_CACHE", ".cache/hub"))
MANIFEST = "manifest.json"
SOURCES = ("synthetic", "local", "hub")
REPO_DIRS = local.REPO_DIRS  # kind -> folder name under data/raw
DATA_PARAMS = ("source", "local_dir", "train_repo", "eval_repo", "revision", "train_split", "train_subsets",
               "eval_subsets")
SYNTHETIC_PARAMS = ("seed", "train_rows", "eval_rows", "eval_candidates", "image_size")
_WORK_TAGS = ("build", "old", "synthetic")  # sibling work folders: .<raw>.<tag>-<pid>


@dataclass
class Selected:
    """One repo's files to place under data/raw/<MMEB-train|MMEB-eval>/ and what the manifest says."""

    kind: str
    subsets: list[str]
    files: dict[str, Path]  # repo path -> file to place
    info: dict = field(default_factory=dict)  # extra manifest fields for this repo
    move: bool = False  # the files are scratch output: move them instead of linking
    check: Callable[[dict[str, str]], None] | None = None  # given {repo path: sha256}, raises on a mismatch


# --- sources -------------------------------------------------------------------------------------
def from_synthetic(data: dict, synthetic: dict, scratch: Path) -> list[Selected]:
    """Generate the synthetic MMEB into `scratch` and select the requested split and subsets.

    Only the selected datasets are generated (each dataset's bytes do not depend on the selection), so
    with a selection the eval images.zip and the README cards list less than the full synthetic repos
    would; with `all` the result equals a Hub download of the generator's repos byte for byte."""
    from pipelines.sources import synthetic as synth

    split = data["train_split"]
    try:
        train = hub.resolve_selection(data.get("train_subsets", "all"), mmeb.SYNTHETIC_TRAIN, hub.TRAIN)
        evals = hub.resolve_selection(data.get("eval_subsets", "all"), mmeb.SYNTHETIC_EVAL, hub.EVAL)
    except hub.LayoutError as e:
        raise hub.LayoutError(f"synthetic MMEB: {e}") from None
    log.info("generating synthetic MMEB: %d train / %d eval datasets", len(train), len(evals))
    synth.generate(
        out_dir=str(scratch),
        seed=synthetic["seed"],
        train_rows=synthetic["train_rows"],
        eval_rows=synthetic["eval_rows"],
        eval_candidates=synthetic["eval_candidates"],
        image_size=synthetic["image_size"],
        train_subsets=train,
        eval_subsets=evals,
    )
    # the generator writes both train splits; keep what a Hub download of this selection would hold
    try:
        repos = local.collect(scratch, split=split, train_subsets=train, eval_subsets=evals)
    except hub.LayoutError as e:
        raise hub.LayoutError(f"the synthetic generator's output is not in the Hub layout: {e}") from None
    return [Selected(kind, r.subsets, r.files, move=True) for kind, r in repos.items()]


def from_local(data: dict) -> list[Selected]:
    repos = local.collect(
        data.get("local_dir"),
        split=data["train_split"],
        train_subsets=data.get("train_subsets", "all"),
        eval_subsets=data.get("eval_subsets", "all"),
    )
    return [Selected(kind, r.subsets, r.files) for kind, r in repos.items()]


def hub_revisions(data: dict) -> dict[str, str]:
    """The revision to fetch per repo kind. `data.revision` is a branch or tag for both repos, or a
    mapping {train: <rev>, eval: <rev>} (a commit sha exists in one repo only; a missing kind = main)."""
    rev = data.get("revision") or "main"
    if isinstance(rev, dict):
        unknown = sorted(set(rev) - {hub.TRAIN, hub.EVAL})
        if unknown:
            raise ValueError(f"data.revision: unknown keys {unknown}; use {{train: <rev>, eval: <rev>}}")
        return {kind: str(rev.get(kind) or "main") for kind in (hub.TRAIN, hub.EVAL)}
    rev = str(rev)
    if re.fullmatch(r"[0-9a-f]{40}", rev) and data.get("train_repo") != data.get("eval_repo"):
        raise ValueError(
            f"data.revision {rev} is a commit sha, which pins one repo only; "
            "give one per repo: revision: {train: <sha>, eval: <sha>}"
        )
    return {hub.TRAIN: rev, hub.EVAL: rev}


def from_hub(data: dict, cache_dir: Path, out: Path = RAW) -> list[Selected]:
    """Both repos planned first (commits, files, bytes missing from the cache), their space checked
    together (and on `out`'s disk when the cache is on another, where `place` must copy), then
    downloaded: a selection that cannot fit fails before the first byte, not after the train zips."""
    revisions = hub_revisions(data)
    plans = []
    for kind, repo_key, subsets_key in ((hub.TRAIN, "train_repo", "train_subsets"), (hub.EVAL, "eval_repo", "eval_subsets")):
        repo_id = data.get(repo_key)
        if not repo_id:
            raise ValueError(f"data.{repo_key} is empty")
        plans.append(hub.plan_repo(repo_id, kind=kind, revision=revisions[kind], split=data["train_split"],
                                   selection=data.get(subsets_key, "all"), cache_dir=cache_dir))
    hub.check_space(plans, cache_dir, copy_to=None if hub.same_disk(cache_dir, out.parent) else out.parent)
    selected = []
    for plan in plans:
        fetched = hub.download(plan, cache_dir)
        info = {"repo_id": plan.repo_id, "requested_revision": plan.revision, "resolved_commit": fetched.commit}
        selected.append(Selected(plan.kind, fetched.subsets, fetched.files, info, check=fetched.check_sha256))
    return selected


# --- output --------------------------------------------------------------------------------------
def place(src: Path, dst: Path, move: bool) -> None:
    """Put `src`'s bytes at `dst`: rename (scratch files), else hard link, else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if move:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def sha256_files(root: Path, paths: list[str]) -> dict[str, tuple[int, str]]:
    """(size, sha256) of each file under `root`, with a progress bar over bytes."""
    sizes = {p: (root / p).stat().st_size for p in paths}
    out = {}
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="sha256", disable=None) as bar:
        for p in paths:
            h = hashlib.sha256()
            with open(root / p, "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
                    bar.update(len(block))
            out[p] = (sizes[p], h.hexdigest())
    return out


def write_manifest(build: Path, source: str, split: str, repos: list[Selected], extra: dict | None = None) -> dict:
    """Hash every file placed under `build`, check expected hashes, write manifest.json; return it.
    `extra` adds top-level fields (e.g. the synthetic generator's params)."""
    paths = sorted(f"{REPO_DIRS[r.kind]}/{p}" for r in repos for p in r.files)
    hashes = sha256_files(build, paths)
    for r in repos:
        if r.check is not None:
            prefix = f"{REPO_DIRS[r.kind]}/"
            r.check({p[len(prefix) :]: h for p, (_, h) in hashes.items() if p.startswith(prefix)})
    manifest = {
        "source": source,
        "split": split,
        "repos": {REPO_DIRS[r.kind]: {**r.info, "split": split if r.kind == hub.TRAIN else hub.EVAL_SPLIT,
                                      "subsets": list(r.subsets)} for r in repos},
        "files": [{"path": p, "size": hashes[p][0], "sha256": hashes[p][1]} for p in paths],
        **(extra or {}),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (build / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def _work_dir(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{os.getpid()}"


def _remove_stale_work_dirs(out: Path) -> None:
    """Remove work folders left by killed runs (their process is gone)."""
    for tag in _WORK_TAGS:
        for d in out.parent.glob(f".{out.name}.{tag}-*"):
            pid = d.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                log.info("removing %s, left by an interrupted run", d)
                shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(data: dict, synthetic: dict, *, out: Path = RAW, hub_cache: Path = HUB_CACHE) -> dict:
    """Build `out` (data/raw) from the `data` / `synthetic` params; return the manifest.

    Guarantees: on success `out` holds exactly the selected files and manifest.json, byte-identical
    for identical inputs; on failure `out` is left as it was and no work folder remains.
    """
    check_keys("data", data, DATA_PARAMS)
    check_keys("synthetic", synthetic, SYNTHETIC_PARAMS)
    source = data.get("source", "synthetic")
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    split = data.get("train_split", "original")
    if split not in mmeb.TRAIN_SPLITS:
        raise ValueError(f"data.train_split must be one of {mmeb.TRAIN_SPLITS}, got {split!r}")
    data = {**data, "train_split": split}
    check_local_dir(data.get("local_dir"))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out)
    build, scratch = _work_dir(out, "build"), _work_dir(out, "synthetic")
    build.mkdir()
    try:
        if source == "synthetic":
            scratch.mkdir()
            repos = from_synthetic(data, synthetic, scratch)
        elif source == "local":
            repos = from_local(data)
        else:
            repos = from_hub(data, Path(hub_cache), out)
        n = sum(len(r.files) for r in repos)
        log.info("placing %d files under %s", n, out)
        for r in repos:
            for path, src in sorted(r.files.items()):
                place(src, build / REPO_DIRS[r.kind] / path, r.move)
        extra = None
        if source == "synthetic":
            extra = {"synthetic": {"generator": "pipelines.sources.synthetic", **dict(sorted(synthetic.items()))}}
        manifest = write_manifest(build, source, split, repos, extra)
        _swap_into_place(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    total = sum(f["size"] for f in manifest["files"])
    log.info("wrote %s: %d files, %.1f MB", out, len(manifest["files"]), total / 1e6)
    return manifest


def check_local_dir(local_dir) -> None:
    """`data.local_dir` is a dvc dep of this stage (dvc.yaml) whatever the source, so dvc needs an
    existing path it can read as written: not empty, and no `~` (dvc does not expand it)."""
    if not isinstance(local_dir, str) or not local_dir.strip():
        raise ValueError(f"data.local_dir must name a folder (default data/local), got {local_dir!r}: "
                         "it is a dvc dep of the download stage for every data.source")
    if local_dir.startswith("~"):
        raise ValueError(f"data.local_dir {local_dir!r}: dvc does not expand '~'; give the full path")


def _swap_into_place(build: Path, out: Path) -> None:
    if out.exists() or out.is_symlink():
        old = _work_dir(out, "old")
        os.replace(out, old)
        os.replace(build, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(build, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    setup_logging("stages.download")
    params = load_params("data", "synthetic", path=args.params)
    run(params["data"], params["synthetic"])


if __name__ == "__main__":
    main()
