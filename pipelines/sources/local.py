"""MMEB from a local folder that already holds `MMEB-train/` and `MMEB-eval/` in the Hub layout
(e.g. a `git clone` of the two dataset repos, or an earlier download), checked against the same layout
rules as a Hub download (`pipelines.sources.hub`)."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.sources.hub import EVAL, TRAIN, LayoutError, MissingFolder, available_subsets, resolve_selection, select_files

log = logging.getLogger(__name__)

REPO_DIRS = {TRAIN: "MMEB-train", EVAL: "MMEB-eval"}


@dataclass
class LocalRepo:
    """A repo folder's selected files. `files` maps the repo path to the file on disk."""

    kind: str
    subsets: list[str]
    files: dict[str, Path] = field(default_factory=dict)


def list_files(folder: Path) -> list[str]:
    """Every regular file under `folder` as a posix path relative to it, hidden files and folders
    (`.git`, `.cache`, ...) left out. Sorted."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"  # how a git-lfs pointer file starts


def _is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_LFS_POINTER)) == _LFS_POINTER


def _is_parquet(path: Path) -> bool:
    """A parquet file starts and ends with its magic bytes (the footer's length sits before the end's)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0, 2)
        if f.tell() < 12:
            return False
        f.seek(-4, 2)
        return head == b"PAR1" and f.read(4) == b"PAR1"


def collect_repo(folder: str | Path, *, kind: str, split: str, selection) -> LocalRepo:
    """The selected subsets' files of one repo folder in the Hub layout.

    Guarantees: every selected subset has its parquet shard(s) (and, for train, its image zip), the
    eval folder has images.zip, and every zip is a readable zip archive; otherwise LayoutError names
    the folder and everything missing or broken. Nothing is copied or extracted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFolder(f"{folder}: no such folder (expected MMEB-{kind} in the Hub layout)")
    paths = list_files(folder)
    try:
        subsets = resolve_selection(selection, available_subsets(paths, kind, split), kind)
        wanted = select_files(paths, kind, split, subsets)
    except LayoutError as e:
        raise LayoutError(f"{folder}: {e}") from None
    pointers = [p for p in wanted if _is_lfs_pointer(folder / p)]
    if pointers:
        raise LayoutError(f"{folder}: git-lfs pointer files instead of data: {pointers}; the repo was cloned "
                          "without git-lfs (run `git lfs pull` there)")
    broken = [p for p in wanted if p.endswith(".zip") and not zipfile.is_zipfile(folder / p)]
    broken += [p for p in wanted if p.endswith(".parquet") and not _is_parquet(folder / p)]
    if broken:
        raise LayoutError(f"{folder}: not readable zip or parquet files: {broken}")
    log.info("%s: %d subsets, %d files", folder, len(subsets), len(wanted))
    return LocalRepo(kind, subsets, {p: folder / p for p in wanted})


def collect(local_dir: str | Path, *, split: str, train_subsets, eval_subsets) -> dict[str, LocalRepo]:
    """Both repos of a local MMEB folder (`<local_dir>/MMEB-train`, `<local_dir>/MMEB-eval`),
    keyed by kind (`train`, `eval`). Raises LayoutError on a missing folder or file."""
    if not local_dir:
        raise LayoutError("data.local_dir is empty: set it to the folder holding MMEB-train/ and MMEB-eval/")
    root = Path(local_dir).expanduser()
    if not root.is_dir():
        raise MissingFolder(f"data.local_dir {root}: no such folder")
    missing = [d for d in REPO_DIRS.values() if not (root / d).is_dir()]
    if missing:
        raise LayoutError(f"data.local_dir {root}: missing {missing} (expected MMEB-train/ and MMEB-eval/)")
    repos = {
        TRAIN: collect_repo(root / REPO_DIRS[TRAIN], kind=TRAIN, split=split, selection=train_subsets),
        EVAL: collect_repo(root / REPO_DIRS[EVAL], kind=EVAL, split=split, selection=eval_subsets),
    }
    linked = sorted({str(link.relative_to(root)) for repo in repos.values() for path in repo.files.values()
                     for link in _links_below(root, path)})
    if linked:
        raise LayoutError(
            f"data.local_dir {root}: {linked} are symbolic links. dvc tracks data.local_dir as a dep of the "
            "download stage but does not follow links inside it, so a change behind them would never rerun "
            "download: point data.local_dir at the real folder (or make data.local_dir itself the link)")
    return repos


def _links_below(root: Path, path: Path) -> list[Path]:
    """The symbolic links among the folders and file from `root` (exclusive) down to `path`."""
    out, current = [], root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            out.append(current)
    return out
