"""MMEB-V2 from the Hugging Face Hub: each selected task's annotation repo and the frame and image
archives it needs, pinned, filtered and checked, assembled into the raw layout normalize reads.

    root, info = fetch(tasks, revisions, cache_dir, scratch)   # root = scratch/MMEB-V2

What a task needs (VLM2Vec's loaders read annotations from the Hub at run time, frames from disk):

    annotations  its repo's split: BEIR ``queries|corpus|qrels/<split>-*.parquet`` (visual documents),
                 else ``<config>/``, the top level or ``data/`` (the first that has ``<split>-*.parquet``),
                 else every sub-folder's (MVBench's subsets); placed under ``MMEB-V2/<task>/``
    frames       the archive of its frame group in ``TIGER-Lab/MMEB-V2``, extracted as VLM2Vec's
                 instructions say: ``video_cls`` and ``video_ret`` into their own folder (``tar -C``),
                 ``video_mret`` and the split ``video_qa.tar.gz-*`` into ``video-tasks/frames/``
    images       ``image-tasks/mmeb_v1.tar.gz`` (image tasks), whose ``MMEB/`` goes into ``image-tasks/``

Visual documents need no archive: their pages are in the corpus parquet. Each repo is fetched once at
one commit (`hub.list_repo`, `hub.plan_files`, `hub.download`), with `allow_patterns` limited to the
files the selection needs; the space is checked for all repos before the first byte; every LFS file's
sha256 is checked against the Hub's listing before it is used; archive members are extracted with
`archives.safe_extract_tar`, which refuses absolute names, ``..``, links and special files (the
refusals go to the manifest) and fails the stage on a decompression bomb, naming the member. Whether a dataset is complete is the inventory's check
(`pipelines.download_v2.inventory`), as for any other source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.utils import filter_repo_objects

from pipelines import archives, mmeb_v2
from pipelines.digests import sha256_of
from pipelines.files import place
from pipelines.errors import StageFailed
from pipelines.sources import hub

log = logging.getLogger(__name__)

ARCHIVE_REPO = "TIGER-Lab/MMEB-V2"
KIND = "v2"
BEIR_TABLES = ("queries", "corpus", "qrels")


@dataclass(frozen=True)
class Archive:
    """One archive of ARCHIVE_REPO: its files (one, or the parts of a split tar), the folder under
    MMEB-V2/ it is extracted into, and the prefix removed from its member names."""

    pattern: str
    into: str
    strip: str = ""


ARCHIVES = {  # frame group (video-tasks/frames/<group>/...) or "image-tasks" -> its archive
    "video_cls": Archive("video-tasks/frames/video_cls.tar.gz", "video-tasks/frames/video_cls"),
    "video_ret": Archive("video-tasks/frames/video_ret.tar.gz", "video-tasks/frames/video_ret"),
    "video_mret": Archive("video-tasks/frames/video_mret.tar.gz", "video-tasks/frames"),
    "video_qa": Archive("video-tasks/frames/video_qa.tar.gz-*", "video-tasks/frames"),
    "image-tasks": Archive("image-tasks/mmeb_v1.tar.gz", "image-tasks", strip="MMEB/"),
}


def archive_of(task: mmeb_v2.V2Task) -> str | None:
    """The ARCHIVES key holding a task's frames or images (None: visual documents)."""
    if task.modality == "video":
        return task.root.split("/")[2]
    return "image-tasks" if task.modality == "image" else None


def annotation_choices(task: mmeb_v2.V2Task) -> list[list[str]]:
    """The annotation patterns of a task, in the order a loader looks for them: the first group that
    matches a file of the repo is the task's (the layouts `pipelines.sources.v2_rows` reads)."""
    split = f"{task.hub_split}-*.parquet"
    if task.parser in mmeb_v2.BEIR_PARSERS:
        return [[f"{t}/{split}" for t in BEIR_TABLES]]
    places = ([task.hub_config] if task.hub_config else []) + ["", "data/"]
    return [[f"{p.rstrip('/')}/{split}" if p else split] for p in places] + [[f"*/{split}"]]


def _matching(paths: list[str], patterns: list[str]) -> list[str]:
    return sorted(filter_repo_objects(paths, allow_patterns=patterns))


def annotation_files(task: mmeb_v2.V2Task, paths: list[str]) -> list[str]:
    """The repo files of a task's annotations; for BEIR, every table must be there. [] when none."""
    for group in annotation_choices(task):
        if task.parser in mmeb_v2.BEIR_PARSERS:
            if all(_matching(paths, [p]) for p in group):
                return _matching(paths, group)
        elif found := _matching(paths, group):
            return found
    return []


def _plans(tasks: list[mmeb_v2.V2Task], revisions: dict[str, str], cache_dir: Path):
    """(plans, {task: its repo files}, {archive key: its repo files}); StageFailed naming every task
    whose annotations and every archive whose files its repo lacks."""
    by_repo: dict[str, list[mmeb_v2.V2Task]] = {}
    for task in tasks:
        by_repo.setdefault(task.hub_repo, []).append(task)
    groups = sorted({a for t in tasks if (a := archive_of(t)) is not None})
    if groups:
        by_repo.setdefault(ARCHIVE_REPO, [])
    plans, own, parts, problems = [], {}, {}, []
    for repo_id in sorted(by_repo):
        revision = revisions.get(repo_id, "main")
        commit, entries = hub.list_repo(repo_id, revision=revision, cache_dir=cache_dir)
        paths = sorted(entries)
        for task in by_repo[repo_id]:
            own[task.name] = annotation_files(task, paths)
            if not own[task.name]:
                problems.append(f"MMEB-V2 dataset {task.name}: {repo_id}@{commit} has no annotation files "
                                f"{annotation_choices(task)}")
        if repo_id == ARCHIVE_REPO:
            for key in groups:
                parts[key] = _matching(paths, [ARCHIVES[key].pattern])
                if not parts[key]:
                    problems.append(f"MMEB-V2 frames: {repo_id}@{commit} has no {ARCHIVES[key].pattern}")
        wanted = sorted({f for t in by_repo[repo_id] for f in own[t.name]}
                        | {f for key in parts for f in parts[key] if repo_id == ARCHIVE_REPO})
        plans.append(hub.plan_files(repo_id, kind=KIND, revision=revision, commit=commit,
                                    subsets=[t.name for t in by_repo[repo_id]], entries=entries, wanted=wanted,
                                    patterns=wanted, cache_dir=cache_dir))
    if problems:
        raise StageFailed("\n".join(problems))
    return plans, own, parts


def _checked(plan: hub.RepoPlan, cache_dir: Path) -> hub.FetchedRepo:
    fetched = hub.download(plan, cache_dir)
    try:
        fetched.check_sha256({p: sha256_of(f) for p, f in fetched.files.items() if p in fetched.expected_sha256})
    except hub.LayoutError as e:
        raise StageFailed(str(e)) from None
    return fetched


def fetch(tasks: list[mmeb_v2.V2Task], revisions: dict[str, str], cache_dir: Path,
          scratch: Path) -> tuple[Path, dict]:
    """Fetch the tasks' repos and archives into `cache_dir` and assemble ``scratch/MMEB-V2``; return it
    and the manifest's record: per repo the requested revision, the resolved commit and the tasks it
    served; per archive the members refused."""
    cache_dir, root = Path(cache_dir), Path(scratch) / mmeb_v2.RAW_FOLDER
    plans, own, parts = _plans(tasks, revisions, cache_dir)
    hub.check_space(plans, cache_dir, copy_to=root.parent)
    info: dict = {"repos": {}, "refused": {}}
    for plan in plans:
        fetched = _checked(plan, cache_dir)
        info["repos"][plan.repo_id] = {"requested_revision": plan.revision, "resolved_commit": plan.commit,
                                       "tasks": sorted(plan.subsets)}
        if plan.repo_id == ARCHIVE_REPO:
            info["repos"][plan.repo_id]["archives"] = sorted(ARCHIVES[key].pattern for key in parts)
        for name in plan.subsets:
            for path in own[name]:
                place(fetched.files[path], root / name / path, move=False)
        if plan.repo_id == ARCHIVE_REPO:
            for key in sorted(parts):
                archive = ARCHIVES[key]
                report = archives.safe_extract_tar([fetched.files[p] for p in parts[key]], root / archive.into,
                                                   strip=archive.strip)
                log.info("%s: %d files extracted, %d refused", archive.pattern, len(report.extracted),
                         len(report.refused))
                if report.refused:
                    info["refused"][archive.pattern] = {m: list(r) for m, r in sorted(report.refused.items())}
    return root, info

