"""VLM2Vec-V2's training sources for the download stage (``data.v2_train_sets``): fetched or generated
into ``data/raw/V2-train/`` and counted.

    entry = place(data, synthetic, scratch, build, hub_cache)   # the manifest's "v2_train"; {} if none

The layout is one folder per Hub repo in its own layout (`pipelines.v2_train.SOURCES`), LLaVA-Hound's
frame archives extracted in place::

    V2-train/colpali_train_set/data/train-*.parquet
    V2-train/VisRAG-Ret-Train-In-domain-data/data/train-*.parquet
    V2-train/train_video_and_instruction/video_instruction/train/sft/*.jsonl
    V2-train/train_video_and_instruction/train_300k/<video>/<frames>

``data.source: synthetic`` writes the stand-ins (`pipelines.sources.synthetic.train_v2`); ``local``
takes ``data.local_dir/V2-train`` as it is; ``hub`` fetches, per repo at ``data.v2_revisions``' pin
(else main), only the files the selected sets need (the parquet shards, the set's jsonl, and
``train_300k/*.tar.gz`` for a video set), checks each LFS file's sha256 against the Hub's listing and
extracts the frame archives with `archives.safe_extract_tar` (refused members go to the manifest).
The manifest records per set the rows expected (the generator's count for synthetic; unknown
elsewhere: the published sizes are approximate) and found. A set whose files are missing, a parquet
set missing one of its ``train-NNNNN-of-MMMMM`` shards, or one with fewer rows than expected fails
the stage, naming every one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pyarrow.parquet as pq

from pipelines import archives
from pipelines.errors import StageFailed
from pipelines.params import Data, Synthetic
from pipelines.v2_train import FRAME_FOLDER, RAW_FOLDER, SETS, SOURCES, TrainSet

log = logging.getLogger(__name__)

KIND = "v2_train"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.parquet$")


def selected(data: Data) -> list[TrainSet]:
    """The sets ``data.v2_train_sets`` selects (``all``: the five; ``[]``: none); StageFailed naming
    a name that is not one."""
    if data.v2_train_sets == "all":
        return list(SETS.values())
    unknown = [n for n in data.v2_train_sets if n not in SETS]
    if unknown:
        raise StageFailed(f"data.v2_train_sets {unknown}: not VLM2Vec-V2 training sets; known: {', '.join(SETS)}")
    return [SETS[n] for n in data.v2_train_sets]


def wanted_files(spec: TrainSet, paths: list[str]) -> list[str]:
    """The repo files a set needs of a repo listing: its annotation files, and the frame archives
    for a video set."""
    return _matching(paths, _patterns(spec))


def _patterns(spec: TrainSet) -> list[str]:
    archives_ = SOURCES[spec.source].archives if spec.modality == "video" else None
    return [spec.files] + ([archives_] if archives_ else [])


def _matching(paths: list[str], patterns: list[str]) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(paths, allow_patterns=patterns))


def needed(rel: str, sets: list[TrainSet]) -> bool:
    """Whether a file of the V2-train folder (path under it) belongs to a selected set: its
    annotation files, or a frame of a video set's repo."""
    folder, _, path = rel.partition("/")
    for spec in sets:
        if SOURCES[spec.source].folder != folder:
            continue
        if _matching([path], [spec.files]) or (spec.modality == "video" and path.startswith(f"{FRAME_FOLDER}/")):
            return True
    return False


def fetch_hub(sets: list[TrainSet], revisions: dict[str, str], cache_dir: Path, root: Path) -> dict:
    """The sets' repos fetched into ``cache_dir`` and assembled under ``root``; the manifest's
    record of each repo (revision, commit, sets, archive members refused)."""
    from pipelines.digests import sha256_of
    from pipelines.files import place
    from pipelines.sources import hub

    by_source: dict[str, list[TrainSet]] = {}
    for spec in sets:
        by_source.setdefault(spec.source, []).append(spec)
    plans, problems = [], []
    for key, specs in sorted(by_source.items()):
        repo = SOURCES[key].repo
        revision = revisions.get(repo, "main")
        commit, entries = hub.list_repo(repo, revision=revision, cache_dir=cache_dir)
        wanted = sorted({f for s in specs for f in wanted_files(s, sorted(entries))})
        problems += [f"V2 training set {s.name}: {repo}@{commit} has no {pattern}" for s in specs
                     for pattern in _patterns(s) if not _matching(wanted, [pattern])]
        plans.append(hub.plan_files(repo, kind=KIND, revision=revision, commit=commit,
                                    subsets=[s.name for s in specs], entries=entries, wanted=wanted,
                                    patterns=wanted, cache_dir=cache_dir))
    if problems:
        raise StageFailed("\n".join(problems))
    hub.check_space(plans, cache_dir, copy_to=root.parent)
    info: dict = {"repos": {}, "refused": {}}
    for plan, key in zip(plans, sorted(by_source)):
        fetched = hub.download(plan, cache_dir)
        try:
            fetched.check_sha256({p: sha256_of(f) for p, f in fetched.files.items() if p in fetched.expected_sha256})
        except hub.LayoutError as e:
            raise StageFailed(str(e)) from None
        info["repos"][plan.repo_id] = {"requested_revision": plan.revision, "resolved_commit": plan.commit,
                                       "sets": sorted(plan.subsets)}
        folder = root / SOURCES[key].folder
        for path in sorted(fetched.files):
            if SOURCES[key].archives and Path(path).match(SOURCES[key].archives):
                _extract(fetched.files[path], folder / Path(path).parent, f"{plan.repo_id}/{path}", info)
            else:
                place(fetched.files[path], folder / path, move=False)
    return info


def _extract(archive: Path, into: Path, name: str, info: dict) -> None:
    report = archives.safe_extract_tar([archive], into)
    log.info("%s: %d files extracted, %d refused", name, len(report.extracted), len(report.refused))
    if report.refused:
        info["refused"][name] = {m: list(r) for m, r in sorted(report.refused.items())}


def source_folder(data: Data, synthetic: Synthetic, sets: list[TrainSet], scratch: Path,
                  hub_cache: Path | None) -> tuple[Path, dict[str, int], dict]:
    """The V2-train folder of ``data.source``, the rows each synthetic set was written with ({}
    elsewhere) and the manifest's record of the Hub's repos ({} elsewhere)."""
    if data.source == "synthetic":
        from pipelines.sources.synthetic.train_v2 import write_train_v2

        root = Path(scratch) / RAW_FOLDER
        written = write_train_v2(root, seed=synthetic.seed)
        return root, {s.name: written[s.name] for s in sets}, {}
    if data.source == "local":
        root = Path(data.local_dir) / RAW_FOLDER
        if not root.is_dir():
            raise StageFailed(f"data.v2_train_sets with data.source local: {root} does not exist (VLM2Vec-V2's "
                              f"training sources go there in the layout of docs/mmeb-v2.md)")
        return root, {}, {}
    root = Path(scratch) / RAW_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    return root, {}, fetch_hub(sets, data.v2_revisions or {}, Path(hub_cache), root)


def count_rows(root: Path, spec: TrainSet) -> int:
    """Rows of a set's files under ``root``: parquet rows from the footers, non-blank jsonl lines.
    StageFailed when the files are missing, or a parquet shard of ``-of-MMMMM`` is."""
    folder = Path(root) / SOURCES[spec.source].folder
    found = sorted(folder.glob(spec.files))
    if not found:
        raise StageFailed(f"V2 training set {spec.name}: no {spec.files} under {folder}")
    if spec.files.endswith(".parquet"):
        shards = [m for f in found if (m := _SHARD.search(f.name))]
        total = {int(m.group(2)) for m in shards}
        if len(total) == 1 and len(shards) == len(found) and len(found) != total.pop():
            raise StageFailed(f"V2 training set {spec.name}: {len(found)} of the {shards[0].group(2)} "
                              f"{spec.files} shards under {folder}")
        return sum(pq.read_metadata(f).num_rows for f in found)
    with open(found[0], encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def inventory(root: Path, sets: list[TrainSet], expected: dict[str, int]) -> dict[str, dict]:
    """{set: source repo, modality, meta_task, expected (None: unknown), found}; StageFailed naming
    every set missing or short."""
    out, problems = {}, []
    for spec in sets:
        try:
            found = count_rows(root, spec)
        except StageFailed as e:
            problems.append(str(e))
            continue
        want = expected.get(spec.name)
        if want is not None and found < want:
            problems.append(f"V2 training set {spec.name}: {found} rows of the {want} expected")
        out[spec.name] = {"repo": SOURCES[spec.source].repo, "modality": spec.modality,
                          "meta_task": spec.meta_task, "expected": want, "found": found}
    if problems:
        raise StageFailed("\n".join(problems))
    log.info("V2 training sets: %s", ", ".join(f"{n} ({d['found']} rows)" for n, d in out.items()))
    return out


def place(data: Data, synthetic: Synthetic, scratch: Path, build: Path, hub_cache: Path) -> dict:
    """The selected sets placed under build/V2-train; the manifest's entry ({} when none is
    selected): per set the rows expected and found, every file's size and sha256, the Hub's repos."""
    from pipelines.digests import sha256_files
    from pipelines.files import place as place_file

    sets = selected(data)
    if not sets:
        return {}
    root, expected, info = source_folder(data, synthetic, sets, scratch, hub_cache)
    datasets = inventory(root, sets, expected)
    placed = {f"{RAW_FOLDER}/{p.relative_to(root).as_posix()}": p for p in sorted(root.rglob("*"))
              if p.is_file() and needed(p.relative_to(root).as_posix(), sets)}
    for path, src in placed.items():
        place_file(src, build / path, data.source != "local")
    hashes = sha256_files(build, list(placed))
    return {"datasets": datasets, **info,
            "files": [{"path": p, "size": hashes[p][0], "sha256": hashes[p][1]} for p in placed]}
