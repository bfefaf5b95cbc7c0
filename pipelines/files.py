"""Atomic writes: a file or folder appears whole at its final path, or not at all.

    write_json(path, obj)                    # and write_text / write_bytes
    with atomic_file(path) as f: ...         # stream into a file (a tar, a parquet part)
    with atomic_dir(path) as tmp: ...        # build a folder (a model, a checkpoint, data/raw)
    place(src, dst, move)                    # a file's bytes at dst: renamed, hard-linked or copied

Everything is first written to a temporary sibling ``.<name>.tmp-<pid>`` in the same folder, then
renamed over the final path (`os.replace`, atomic on one file system); a folder that already exists
is moved aside and removed after the new one is in place. On an error the temporary is removed; a
process killed midway leaves only its temporary, which the next writer of the same path removes once
the process that made it is gone (`remove_stale`). With ``fsync=True`` the bytes and the folder entry
reach the disk before the rename returns, for state that must survive a power loss (checkpoints).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

TMP = ".tmp-"
OLD = ".old"


def temporary(path: str | Path) -> Path:
    """The temporary sibling this process writes `path` through: ``.<name>.tmp-<pid>``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP}{os.getpid()}")


def final_name(path: str | Path) -> str | None:
    """The name a temporary stands for (``.step-000006.tmp-123`` -> ``step-000006``), or None when
    `path` is no temporary."""
    name = Path(path).name
    if not name.startswith(".") or TMP not in name:
        return None
    final, pid = name[1:].rsplit(TMP, 1)
    return final if pid.isdigit() else None


def is_temporary(path: str | Path) -> bool:
    return final_name(path) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a temporary of ours left by an earlier failure in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of `path` whose process is gone (a killed writer); return them."""
    path = Path(path)
    removed = []
    for name in (path.name, path.name + OLD):  # a new copy, or the old one moved aside by `replace_dir`
        for tmp in path.parent.glob(f".{name}{TMP}*"):
            pid = tmp.name.rsplit(TMP, 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                remove(tmp)
                removed.append(tmp)
    return removed


def remove(path: str | Path) -> None:
    """Remove a file, a link or a folder tree; nothing when it is absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file under `path` and every folder, deepest first."""
    path = Path(path)
    for root, _dirs, names in os.walk(path, topdown=False):
        for name in names:
            _fsync_file(Path(root, name))
        fsync_dir(root)


class Pending:
    """A file or folder being written under its temporary name `path` (`temporary(final)`): `commit`
    puts it at `final`, `abort` removes it. For writers that hand a path to another library
    (pyarrow's ParquetWriter) or keep a file open across calls (a tar being filled)."""

    def __init__(self, final: str | Path, *, fsync: bool = False):
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = temporary(self.final)
        self.fsync = fsync

    def commit(self) -> Path:
        if self.fsync:
            fsync_tree(self.path) if self.path.is_dir() else _fsync_file(self.path)
        if self.path.is_dir():
            replace_dir(self.path, self.final)
        else:
            os.replace(self.path, self.final)
        if self.fsync:
            fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        remove(self.path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, fsync: bool = False,
                encoding: str | None = None) -> Iterator[IO]:
    """An open file whose bytes appear at `path` when the block ends without an error."""
    pending = Pending(path, fsync=fsync)
    try:
        with open(pending.path, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
        pending.commit()
    except BaseException:
        pending.abort()
        raise


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    with atomic_file(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), fsync=fsync)


def json_text(obj: Any, *, indent: int = 2, sort_keys: bool = False, ensure_ascii: bool = True,
              default=None) -> str:
    """The project's JSON layout: indented, one trailing newline."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default) + "\n"


def write_json(path: str | Path, obj: Any, *, fsync: bool = False, **layout) -> None:
    """`obj` as JSON (`json_text`'s layout: indent, sort_keys, ensure_ascii, default)."""
    write_text(path, json_text(obj, **layout), fsync=fsync)


@contextmanager
def atomic_dir(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """A new empty folder to fill; when the block ends without an error it replaces `path` (whatever
    was there goes), else it is removed. Temporaries of killed writers are removed first."""
    remove_stale(path)  # this process's own leftover included
    pending = Pending(path, fsync=fsync)
    pending.path.mkdir()
    try:
        yield pending.path
        pending.commit()
    except BaseException:
        pending.abort()
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Put folder `src` at `dst`: an existing `dst` is renamed aside first, then removed."""
    if dst.exists() or dst.is_symlink():
        old = temporary(dst.with_name(dst.name + OLD))
        remove(old)
        os.replace(dst, old)
        os.replace(src, dst)
        remove(old)
    else:
        os.replace(src, dst)


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
