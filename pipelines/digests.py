"""Digests of the files of a model or checkpoint folder, recorded when it is written, verified when
it is read: bytes that change after they were written (a bad disk, a bad copy, a stray write) stop
the load with the file's name instead of training or scoring other weights than the run made.

    record(folder)          # after writing it: folder/digests.json, sha256 and size of every file
    verify(folder)          # before loading it: IntegrityError naming a file, expected and found digest
    sha256_files(root, paths)   # (size, sha256) of many files, with a progress bar (data/raw's manifest)

``digests.json`` lists every file under the folder by its relative path, except where a sub-folder
has a ``digests.json`` of its own (``models/embedder/merged/``, written by `save_backbone`): then
the parent lists that manifest only, and `verify` checks the sub-folder through it (``nested``), so
each byte is hashed once and a loader of the sub-folder alone verifies what it reads. A file the
manifest does not list is an error too (a stray weight shard would be loaded). A folder without
``digests.json`` (a Hub download, a folder written before digests existed) is not verified:
`verify` returns None, and `required=True` turns that into an IntegrityError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from pipelines.errors import IntegrityError
from pipelines.files import json_text

__all__ = ["IntegrityError", "MANIFEST", "check_file", "read_manifest", "record", "sha256_files", "sha256_of",
           "verify"]

log = logging.getLogger(__name__)

MANIFEST = "digests.json"
FORMAT = "vlm2vec-digests/1"
BLOCK = 1 << 22


def sha256_of(path: str | Path, progress: Callable[[int], Any] | None = None) -> str:
    """The sha256 of one file's bytes (hex); `progress(n)` after each block of n bytes read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def sha256_files(root: Path, paths: list[str]) -> dict[str, tuple[int, str]]:
    """(size, sha256) of each file under `root`, with a progress bar over bytes."""
    sizes = {p: (root / p).stat().st_size for p in paths}
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="sha256", disable=None) as bar:
        return {p: (sizes[p], sha256_of(root / p, bar.update)) for p in paths}


def check_file(path: Path, sha256: str, size: int, found: str | None = None) -> None:
    """IntegrityError unless the file `path` exists with this `sha256` (and `size`, named when it
    differs: a truncated copy); `found`: its digest when the caller computed it already."""
    if not path.is_file():
        raise IntegrityError(path, sha256, "no file", "missing")
    found = found or sha256_of(path)
    if found != sha256:
        found_size = path.stat().st_size
        detail = (f"truncated or extended ({found_size} bytes, {size} recorded)" if found_size != int(size)
                  else "contents changed since it was written")
        raise IntegrityError(path, sha256, found, detail)


def _digests_in_parallel(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each existing file of `paths`, hashed in threads (hashlib releases the GIL: a
    checkpoint's or a sharded model's files are hashed side by side, one core each)."""
    present = [p for p in paths if p.is_file()]
    with ThreadPoolExecutor(max_workers=max(1, min(len(present), os.cpu_count() or 1))) as pool:
        return dict(zip(present, pool.map(sha256_of, present)))


def _listed(folder: Path) -> list[Path]:
    """The files `record` lists under `folder`: every file, except inside a sub-folder that has its
    own manifest, where only that manifest is listed."""
    nested = sorted(p.parent for p in folder.rglob(MANIFEST) if p.parent != folder)
    outermost = [n for n in nested if not any(m in n.parents for m in nested)]
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p == folder / MANIFEST:
            continue
        owner = next((n for n in outermost if n in p.parents), None)
        if owner is None or p == owner / MANIFEST:
            out.append(p)
    return out


def record(folder: str | Path) -> dict[str, Any]:
    """Write ``folder/digests.json`` (sha256 and size of every file `_listed`); return it."""
    folder = Path(folder)
    entries = {p.relative_to(folder).as_posix(): {"sha256": sha256_of(p), "size": p.stat().st_size}
               for p in _listed(folder)}
    manifest = {"format": FORMAT, "files": entries}
    (folder / MANIFEST).write_text(json_text(manifest, sort_keys=True), encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/digests.json``, or None when there is none; IntegrityError when it is unreadable."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"not a {FORMAT} manifest")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(path, "a readable manifest", "none", f"unreadable digests ({exc})") from exc
    return manifest


def verify(folder: str | Path, *, required: bool = False, nested: bool = True) -> dict[str, Any] | None:
    """Check every file ``folder/digests.json`` lists (size, then sha256) and that no other file is
    there; with `nested`, the sub-folders with their own manifest too. Return the manifest, or None
    for a folder without one (IntegrityError when `required`)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        if required:
            raise IntegrityError(folder / MANIFEST, "a manifest", "none", "no digests recorded")
        log.warning("%s has no %s: its files are not verified", folder, MANIFEST)
        return None
    expected = manifest["files"]
    found = _digests_in_parallel([folder / rel for rel in sorted(expected)])
    for rel, entry in sorted(expected.items()):
        check_file(folder / rel, entry["sha256"], entry["size"], found.get(folder / rel))
    extra = [p for p in _listed(folder) if p.relative_to(folder).as_posix() not in expected]
    if extra:
        raise IntegrityError(extra[0], "no file", sha256_of(extra[0]),
                             f"not in {MANIFEST} ({len(extra)} unlisted file(s))")
    if nested:
        for rel in expected:
            if Path(rel).name == MANIFEST:
                verify(folder / Path(rel).parent, required=True)
    return manifest
