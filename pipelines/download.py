"""The download stage's library: MMEB-train and MMEB-eval in their Hub layout -> data/raw/.

    manifest = download(params.data, params.synthetic, out=Path("data/raw"))

Writes `data/raw/MMEB-train/` (the selected split's parquet shards + images_zip/<Subset>.zip per selected
subset), `data/raw/MMEB-eval/` (test parquet per selected dataset + images.zip) and
`data/raw/manifest.json`. Images stay inside their zip archives. MMEB-V2's sets (``data.benchmark``) go to
`data/raw/MMEB-V2/` (`pipelines.download_v2`) and VLM2Vec-V2's training sources (``data.v2_train_sets``)
to `data/raw/V2-train/` (`pipelines.download_v2_train`), each with its manifest entry.

`data.source` picks where the bytes come from:
  synthetic  the embedded miniature MMEB, generated (`pipelines.sources.synthetic.generate`)
  local      a folder `data.local_dir` holding MMEB-train/ and MMEB-eval/ in the Hub layout
  hub        the Hugging Face Hub, `data.train_repo` / `data.eval_repo` at `data.revision`, through a
             cache outside data/raw (`.cache/hub`, or $VLM2VEC_HUB_CACHE) so huggingface_hub's metadata
             and lock files never enter the DVC output; files are hard-linked from there (copied
             across file systems)

data/raw is a DVC output, so its bytes are a function of the inputs only: the manifest has no
timestamps and no absolute paths, files and keys are sorted. The output is built in a temporary
sibling folder and swapped into place at the end (`pipelines.files.atomic_dir`), so a killed run
leaves the previous data/raw (or none), never half of one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines import download_v2_train, files
from pipelines.digests import sha256_files
from pipelines.files import place
from pipelines.params import Data, Synthetic
from pipelines.sources import hub, local

log = logging.getLogger(__name__)

RAW = Path("data/raw")
HUB_CACHE = Path(os.environ.get("VLM2VEC_HUB_CACHE", ".cache/hub"))
MANIFEST = "manifest.json"
REPO_DIRS = local.REPO_DIRS  # kind -> folder name under data/raw
GENERATOR = "pipelines.sources.synthetic"  # recorded in the manifest of a synthetic download


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
def from_synthetic(data: Data, synthetic: Synthetic, scratch: Path) -> list[Selected]:
    """Generate the synthetic MMEB into `scratch` and select the requested split and subsets.

    Only the selected datasets are generated (each dataset's bytes do not depend on the selection), so
    with a selection the eval images.zip and the README cards list less than the full synthetic repos
    would; with `all` the result equals a Hub download of the generator's repos byte for byte."""
    from pipelines import mmeb
    from pipelines.sources import synthetic as generator

    try:
        train = hub.resolve_selection(data.train_subsets, mmeb.SYNTHETIC_TRAIN, hub.TRAIN)
        evals = hub.resolve_selection(data.eval_subsets, mmeb.SYNTHETIC_EVAL, hub.EVAL)
    except hub.LayoutError as e:
        raise hub.LayoutError(f"synthetic MMEB: {e}") from None
    log.info("generating synthetic MMEB: %d train / %d eval datasets", len(train), len(evals))
    generator.generate(out_dir=str(scratch), seed=synthetic.seed, train_rows=synthetic.train_rows,
                       eval_rows=synthetic.eval_rows, eval_candidates=synthetic.eval_candidates,
                       image_size=synthetic.image_size, train_subsets=train, eval_subsets=evals)
    # the generator writes both train splits; keep what a Hub download of this selection would hold
    try:
        repos = local.collect(scratch, split=data.train_split, train_subsets=train, eval_subsets=evals)
    except hub.LayoutError as e:
        raise hub.LayoutError(f"the synthetic generator's output is not in the Hub layout: {e}") from None
    return [Selected(kind, r.subsets, r.files, move=True) for kind, r in repos.items()]


def from_local(data: Data) -> list[Selected]:
    repos = local.collect(data.local_dir, split=data.train_split, train_subsets=data.train_subsets,
                          eval_subsets=data.eval_subsets)
    return [Selected(kind, r.subsets, r.files) for kind, r in repos.items()]


def from_hub(data: Data, cache_dir: Path, out: Path = RAW) -> list[Selected]:
    """Both repos planned first (commits, files, bytes missing from the cache), their space checked
    together (and on `out`'s disk when the cache is on another, where `place` must copy), then
    downloaded: a selection that cannot fit fails before the first byte, not after the train zips."""
    revisions = data.revisions()
    plans = [hub.plan_repo(repo_id, kind=kind, revision=revisions[kind], split=data.train_split,
                           selection=selection, cache_dir=cache_dir)
             for kind, repo_id, selection in ((hub.TRAIN, data.train_repo, data.train_subsets),
                                              (hub.EVAL, data.eval_repo, data.eval_subsets))]
    hub.check_space(plans, cache_dir, copy_to=None if hub.same_disk(cache_dir, out.parent) else out.parent)
    selected = []
    for plan in plans:
        fetched = hub.download(plan, cache_dir)
        info = {"repo_id": plan.repo_id, "requested_revision": plan.revision, "resolved_commit": fetched.commit}
        selected.append(Selected(plan.kind, fetched.subsets, fetched.files, info, check=fetched.check_sha256))
    return selected


# --- output --------------------------------------------------------------------------------------
def write_manifest(build: Path, source: str, split: str, repos: list[Selected], extra: dict | None = None) -> dict:
    """Hash every file placed under `build`, check expected hashes, write manifest.json; return it.
    `extra` adds top-level fields (e.g. the synthetic generator's params)."""
    paths = sorted(f"{REPO_DIRS[r.kind]}/{p}" for r in repos for p in r.files)
    hashes = sha256_files(build, paths)
    for r in repos:
        if r.check is not None:
            prefix = f"{REPO_DIRS[r.kind]}/"
            r.check({p[len(prefix):]: h for p, (_, h) in hashes.items() if p.startswith(prefix)})
    manifest = {
        "source": source,
        "split": split,
        "repos": {REPO_DIRS[r.kind]: {**r.info, "split": split if r.kind == hub.TRAIN else hub.EVAL_SPLIT,
                                      "subsets": list(r.subsets)} for r in repos},
        "files": [{"path": p, "size": hashes[p][0], "sha256": hashes[p][1]} for p in paths],
        **(extra or {}),
    }
    files.write_json(build / MANIFEST, manifest, sort_keys=True)
    return manifest


def select(data: Data, synthetic: Synthetic, scratch: Path, out: Path, hub_cache: Path) -> list[Selected]:
    """The files of `data.source` to place, with what the manifest records of each repo."""
    if data.source == "synthetic":
        scratch.mkdir()
        return from_synthetic(data, synthetic, scratch)
    if data.source == "local":
        return from_local(data)
    return from_hub(data, Path(hub_cache), out)


def place_v2(data: Data, synthetic: Synthetic, scratch: Path, build: Path, hub_cache: Path) -> dict:
    """MMEB-V2's sets placed under build/MMEB-V2 (`pipelines.download_v2`); their manifest entry:
    per dataset the queries expected and found, every file's size and sha256, and for the Hub its
    repos' commits and the archive members refused."""
    from pipelines import download_v2

    root, expected, info = download_v2.source_folder(data, synthetic, scratch, hub_cache)
    datasets = download_v2.inventory(root, expected)
    placed = download_v2.files_of(root)
    for path, src in placed.items():
        place(src, build / path, data.source != "local")
    hashes = sha256_files(build, list(placed))
    return {"datasets": datasets, **info,
            "files": [{"path": p, "size": hashes[p][0], "sha256": hashes[p][1]} for p in placed]}


def download(data: Data, synthetic: Synthetic, *, out: Path = RAW, hub_cache: Path = HUB_CACHE) -> dict:
    """Build `out` (data/raw) from the `data` / `synthetic` params; return the manifest.

    Guarantees: on success `out` holds exactly the selected files and manifest.json, byte-identical
    for identical inputs; on failure `out` is left as it was and no temporary folder remains."""
    out = Path(out)
    generated = out.with_name(out.name + ".synthetic")  # the generator's output, moved into `out`
    files.remove_stale(generated)
    scratch = files.temporary(generated)
    try:
        with files.atomic_dir(out) as build:
            repos = select(data, synthetic, scratch, out, hub_cache)
            log.info("placing %d files under %s", sum(len(r.files) for r in repos), out)
            for r in repos:
                for path, src in sorted(r.files.items()):
                    place(src, build / REPO_DIRS[r.kind] / path, r.move)
            extra = None
            if data.source == "synthetic":
                extra = {"synthetic": {"generator": GENERATOR, **dict(sorted(synthetic.to_dict().items()))}}
            if data.benchmark != "v1":
                extra = {**(extra or {}), "v2": place_v2(data, synthetic, scratch, build, hub_cache)}
            v2_train = download_v2_train.place(data, synthetic, scratch, build, hub_cache)  # {}: none selected
            if v2_train:
                extra = {**(extra or {}), "v2_train": v2_train}
            manifest = write_manifest(build, data.source, data.train_split, repos, extra)
    finally:
        files.remove(scratch)
    total = sum(f["size"] for f in manifest["files"])
    log.info("wrote %s: %d files, %.1f MB", out, len(manifest["files"]), total / 1e6)
    return manifest
