"""MMEB from the Hugging Face Hub: the repo layout, subset selection, and a pinned, filtered download.

The Hub layout, for a train split `<split>` (original | diverse_instruction):

    MMEB-train/<Subset>/<split>-NNNNN-of-NNNNN.parquet     one folder per config (subset)
    MMEB-train/images_zip/<Subset>.zip                     the subset's images, one zip
    MMEB-eval/<Dataset>/test-NNNNN-of-NNNNN.parquet        one folder per config (dataset)
    MMEB-eval/images.zip                                   every eval image, one zip
    README.md                                              the dataset card (both repos)

The layout functions here work on a plain list of repo file paths, so `pipelines.sources.local` checks a
local folder against the very same rules. `fetch_repo` downloads only the selected subsets with
`huggingface_hub.snapshot_download(allow_patterns=...)` into a cache outside the DVC output, pinned to
the commit the requested revision resolved to, and hands back each LFS file's sha256 from the Hub's
listing so the caller can check the bytes it got. A selection whose missing files do not fit on the
cache's disk is refused before the first byte is fetched (huggingface_hub only warns, per file).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TRAIN = "train"
EVAL = "eval"
EVAL_SPLIT = "test"
CARD = "README.md"
EVAL_IMAGES = "images.zip"
# configs MMEB-eval has that are not among the benchmark's 36 datasets: never part of `all`, and
# refused by name, since normalize has no description of them (pipelines/mmeb.py) and would stop
# after the download (for the Hub, after the multi-GB images.zip)
EXTRA_EVAL_CONFIGS = ("CIFAR-100",)


class LayoutError(ValueError):
    """A repo or folder does not hold what the Hub layout and the selection require."""


class MissingFolder(LayoutError, FileNotFoundError):
    """The folder that should hold a repo is not there (a missing input: the stage says so in one line)."""


# --- layout --------------------------------------------------------------------------------------
def parquet_pattern(subset: str, split: str) -> str:
    """The glob (huggingface_hub `allow_patterns` syntax) of one subset's parquet shards."""
    return f"{subset}/{split}-*.parquet"


def train_zip(subset: str) -> str:
    return f"images_zip/{subset}.zip"


def _shard_re(split: str) -> re.Pattern:
    return re.compile(rf"^(?P<subset>[^/]+)/{re.escape(split)}-[^/]*\.parquet$")


def available_subsets(paths, kind: str, split: str) -> list[str]:
    """Configs present in a repo file listing: the top-level folders holding `<split>-*.parquet`
    (train) or `test-*.parquet` (eval). Sorted."""
    shard = _shard_re(split if kind == TRAIN else EVAL_SPLIT)
    return sorted({m["subset"] for p in paths if (m := shard.match(p))})


def resolve_selection(selection, available: list[str], kind: str) -> list[str]:
    """`all` -> every available config (for eval without the non-benchmark extras such as
    CIFAR-100), else the listed names in their given order, each checked to exist and not to be an
    extra. Raises LayoutError naming the unknown configs and the available ones."""
    if selection in (None, "all", ["all"]):
        chosen = [s for s in sorted(available) if not (kind == EVAL and s in EXTRA_EVAL_CONFIGS)]
        if not chosen:
            raise LayoutError(f"no {kind} configs found")
        return chosen
    names = [selection] if isinstance(selection, str) else list(selection)
    if not names:
        raise LayoutError(f"the {kind} subset list is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LayoutError(f"{kind} subsets listed twice: {duplicates}")
    extras = [n for n in names if kind == EVAL and n in EXTRA_EVAL_CONFIGS]
    if extras:
        raise LayoutError(f"{extras} are configs of MMEB-eval but not among MMEB's 36 datasets, which "
                          "normalize knows (pipelines/mmeb.py): leave them out of data.eval_subsets")
    missing = [n for n in names if n not in available]
    if missing:
        raise LayoutError(f"unknown {kind} subsets {missing}; available: {sorted(available)}")
    return names


def allow_patterns(kind: str, split: str, subsets: list[str]) -> list[str]:
    """What to fetch for the selection: parquet shards and image zips of the selected subsets only,
    plus the dataset card."""
    if kind == TRAIN:
        patterns = [p for s in subsets for p in (parquet_pattern(s, split), train_zip(s))]
    else:
        patterns = [parquet_pattern(s, EVAL_SPLIT) for s in subsets] + [EVAL_IMAGES]
    return patterns + [CARD]


def select_files(paths, kind: str, split: str, subsets: list[str]) -> list[str]:
    """The repo files the selection needs, sorted. Raises LayoutError naming every missing piece (a
    subset without parquet shards or without its image zip, a missing eval images.zip). The card is
    optional."""
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(set(paths))
    shard = _shard_re(split if kind == TRAIN else EVAL_SPLIT)
    have = set(paths)
    missing = []
    for s in subsets:
        if not any((m := shard.match(p)) and m["subset"] == s for p in paths):
            missing.append(parquet_pattern(s, split if kind == TRAIN else EVAL_SPLIT))
        if kind == TRAIN and train_zip(s) not in have:
            missing.append(train_zip(s))
    if kind == EVAL and EVAL_IMAGES not in have:
        missing.append(EVAL_IMAGES)
    if missing:
        raise LayoutError(f"missing {missing}")
    return sorted(filter_repo_objects(paths, allow_patterns=allow_patterns(kind, split, subsets)))


# --- download ------------------------------------------------------------------------------------
def bytes_to_fetch(cache_dir: Path, repo_id: str, commit: str, sizes: dict[str, int]) -> int:
    """The bytes of the files (repo path -> size) that the cache does not hold at `commit` yet."""
    from huggingface_hub import try_to_load_from_cache

    return sum(size for path, size in sizes.items()
               if not isinstance(try_to_load_from_cache(repo_id, path, cache_dir=cache_dir, revision=commit,
                                                        repo_type="dataset"), str))


def _nearest_existing(folder: Path) -> Path:
    """`folder`, or the nearest folder above it that exists (where it will be created)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return folder


def free_bytes(folder: Path) -> int:
    """Free space on the file system that holds (or will hold) `folder`."""
    return shutil.disk_usage(_nearest_existing(folder)).free


def remove_orphaned_partials(cache_dir: Path, repo_id: str) -> int:
    """Delete the partial downloads (`blobs/<etag>.<id>.incomplete`) that killed runs left in the cache
    folder of dataset `repo_id`; return the bytes freed. huggingface_hub never reuses them (each
    download writes a file of its own name), so each killed run would leave up to a whole image zip
    behind. A file whose download lock another process holds is being written and stays."""
    from filelock import FileLock, Timeout
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=repo_id, repo_type="dataset")
    freed = 0
    for part in sorted((Path(cache_dir) / folder / "blobs").glob("*.incomplete")):
        lock = Path(cache_dir) / ".locks" / folder / f"{part.name.split('.', 1)[0]}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(lock, timeout=0):
                size = part.stat().st_size
                part.unlink()
        except (Timeout, FileNotFoundError):
            continue
        except NotImplementedError:  # no flock on this file system: whether a download runs is unknown
            log.warning("%s: cannot lock %s; partial files left in place", repo_id, lock.parent)
            return freed
        freed += size
    return freed


@dataclass
class FetchedRepo:
    """A repo's selected files, downloaded. `files` maps the repo path to the cached file."""

    kind: str
    repo_id: str
    requested_revision: str
    commit: str
    subsets: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    expected_sha256: dict[str, str] = field(default_factory=dict)  # LFS files: the oid the Hub lists

    def check_sha256(self, hashes: dict[str, str]) -> None:
        """Raise LayoutError when a file's sha256 (repo path -> hex) differs from the Hub's LFS oid."""
        bad = [p for p, h in sorted(hashes.items()) if p in self.expected_sha256 and self.expected_sha256[p] != h]
        if bad:
            raise LayoutError(
                f"{self.repo_id}@{self.commit}: sha256 differs from the Hub's for {bad}; "
                f"delete them from the cache ({[str(self.files[p]) for p in bad]}) and rerun"
            )


@dataclass
class RepoPlan:
    """What `fetch_repo` will download for one repo: the resolved commit, the selected files (with
    the Hub's listing of each) and how many of their bytes the cache does not hold yet."""

    kind: str
    repo_id: str
    revision: str
    commit: str
    subsets: list[str]
    entries: dict  # repo path -> the Hub's RepoFile (size, lfs)
    wanted: list[str]
    patterns: list[str]
    need: int  # bytes still to download

    @property
    def total(self) -> int:
        return sum(self.entries[p].size or 0 for p in self.wanted)


def list_repo(repo_id: str, *, revision: str, cache_dir: Path) -> tuple[str, dict]:
    """Resolve `revision` to one commit and list the repo's files there: (commit, {path: RepoFile}).
    Without the Hub, the cached listing of that commit."""
    from huggingface_hub import HfApi, get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, OfflineModeIsEnabled
    import httpx2

    api = HfApi()
    commit = api.resolve_revision(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir).resolved
    log.info("%s: revision %r is commit %s", repo_id, revision, commit)
    try:
        tree = list(api.list_repo_tree(repo_id, repo_type="dataset", revision=commit, recursive=True))
    except (OfflineModeIsEnabled, httpx2.TransportError) as error:
        log.warning("%s: Hub not reachable (%s); using the cached file listing", repo_id, error)
        try:
            tree = get_cached_repo_tree(repo_id, repo_type="dataset", revision=commit, cache_dir=cache_dir)
        except CachedRepoTreeNotFoundError as missing:
            raise LayoutError(f"{repo_id}@{commit}: Hub not reachable and nothing cached: {missing}") from error
    return commit, {f.path: f for f in tree if hasattr(f, "blob_id")}  # RepoFile, not RepoFolder


def plan_files(repo_id: str, *, kind: str, revision: str, commit: str, subsets: list[str], entries: dict,
               wanted: list[str], patterns: list[str], cache_dir: Path) -> RepoPlan:
    """The plan of fetching `wanted` (paths of the listing `entries` at `commit`, matched by
    `patterns`): the bytes the cache lacks counted after deleting the partial files killed runs left."""
    cache_dir = Path(cache_dir)
    freed = remove_orphaned_partials(cache_dir, repo_id)
    if freed:
        log.info("%s: removed %.1f MB of partial files left by interrupted runs", repo_id, freed / 1e6)
    need = bytes_to_fetch(cache_dir, repo_id, commit, {p: entries[p].size or 0 for p in wanted})
    plan = RepoPlan(kind, repo_id, revision, commit, subsets, entries, wanted, patterns, need)
    log.info("%s@%s: %d subsets, %d files, %.1f MB (%.1f MB not cached)", repo_id, commit[:10], len(subsets),
             len(wanted), plan.total / 1e6, need / 1e6)
    return plan


def plan_repo(repo_id: str, *, kind: str, revision: str, split: str, selection, cache_dir: Path) -> RepoPlan:
    """Resolve `revision` to one commit, list the repo there, select the subsets' files and count the
    bytes the cache still lacks (after deleting the partial files killed runs left). Downloads nothing."""
    commit, entries = list_repo(repo_id, revision=revision, cache_dir=Path(cache_dir))
    try:
        subsets = resolve_selection(selection, available_subsets(entries, kind, split), kind)
        wanted = select_files(entries, kind, split, subsets)
    except LayoutError as e:
        raise LayoutError(f"{repo_id}@{commit}: {e}") from None
    return plan_files(repo_id, kind=kind, revision=revision, commit=commit, subsets=subsets, entries=entries,
                      wanted=wanted, patterns=allow_patterns(kind, split, subsets), cache_dir=cache_dir)


def check_space(plans: list[RepoPlan], cache_dir: Path, copy_to: Path | None = None) -> None:
    """Raise LayoutError, before any byte is fetched, when the plans' missing files do not fit on the
    cache's disk together, or (`copy_to`: a folder on another disk the files will be copied to) when
    all their files do not fit there."""
    names = ", ".join(f"{p.repo_id}@{p.commit}" for p in plans)
    checks = [(sum(p.need for p in plans), cache_dir, "still to download into",
               "free disk space, select fewer subsets, or point VLM2VEC_HUB_CACHE at a larger disk")]
    if copy_to is not None:
        checks.append((sum(p.total for p in plans), copy_to,
                       f"to copy (another disk than the cache {cache_dir}, so no hard links) into",
                       "put VLM2VEC_HUB_CACHE on the same disk as the project, or free disk space"))
    for size, folder, what, advice in checks:
        free = free_bytes(folder)
        if size > free:
            raise LayoutError(f"{names}: {size / 1e9:.2f} GB {what} {folder}, but only {free / 1e9:.2f} GB "
                              f"free there; {advice}")


def same_disk(a: Path, b: Path) -> bool:
    """Whether two folders (or the nearest existing folders above them) are on one file system."""
    return _nearest_existing(a).stat().st_dev == _nearest_existing(b).stat().st_dev


def download(plan: RepoPlan, cache_dir: Path, max_workers: int = 8) -> FetchedRepo:
    """Fetch `plan`'s files at its commit into `cache_dir` (files already there are not fetched
    again) and check each LFS file's size against the Hub's listing."""
    from huggingface_hub import snapshot_download

    repo_id, commit = plan.repo_id, plan.commit
    snapshot = Path(
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=commit,
            cache_dir=Path(cache_dir),
            allow_patterns=plan.patterns,
            max_workers=max_workers,
        )
    )
    fetched = FetchedRepo(plan.kind, repo_id, plan.revision, commit, plan.subsets)
    for path in plan.wanted:
        local = snapshot / path
        if not local.is_file():
            raise LayoutError(f"{repo_id}@{commit}: {path} was not downloaded")
        lfs = getattr(plan.entries[path], "lfs", None)
        if lfs is not None and local.stat().st_size != lfs.size:
            raise LayoutError(f"{repo_id}@{commit}: {path} has {local.stat().st_size} bytes, the Hub lists {lfs.size}")
        fetched.files[path] = local.resolve()
        if lfs is not None:
            fetched.expected_sha256[path] = lfs.sha256
    return fetched


def fetch_repo(
    repo_id: str,
    *,
    kind: str,
    revision: str,
    split: str,
    selection,
    cache_dir: Path,
    max_workers: int = 8,
) -> FetchedRepo:
    """Download the selected subsets of an MMEB repo at `revision` into `cache_dir` (the
    huggingface_hub cache layout) and return where each file is: `plan_repo`, `check_space`,
    `download` (the download stage plans both repos first and checks their space together).

    Guarantees: the revision is resolved to one commit first and every listing and download uses that
    commit, so the files belong to one snapshot; only files matching the selection's patterns are
    requested; each LFS file has the size the Hub lists (its sha256 is in `expected_sha256`, for
    `check_sha256` once the caller has hashed it). Files already in the cache are
    not fetched again, so a rerun after an interrupted run downloads only what is missing (a
    connection cut mid-file is resumed by the client with an HTTP Range request; a file a killed run
    was writing starts over, and the partial file it left is deleted first). Without network
    (HF_HUB_OFFLINE=1, Hub unreachable) it works from the cache when the revision and snapshot are
    there.
    """
    plan = plan_repo(repo_id, kind=kind, revision=revision, split=split, selection=selection, cache_dir=cache_dir)
    check_space([plan], Path(cache_dir))
    return download(plan, cache_dir, max_workers)
