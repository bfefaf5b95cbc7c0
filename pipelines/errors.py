"""The two exceptions every stage shares, and the words for what the operating system refused.

`Rejected`: one source row, image or archive member cannot be used. It carries a machine-readable
``reason`` (the reject reasons listed in docs/records.md) and a human ``detail`` naming the side and
the path; the caller quarantines the row under that reason (data/rejects, metrics/etl.json) instead of
crashing or dropping it silently.

`StageFailed`: a stage ran and wrote its outputs, but its acceptance policy says the run failed (e.g.
normalize rejected more rows than ``normalize.max_reject_fraction``). The stage entry point prints the
message and exits with status 1, leaving the outputs in place to be inspected.

`IntegrityError`: a file differs from the digest recorded when it was written (`pipelines.digests`).

`cause`: a full disk, a read-only or forbidden output folder, a missing input, as one line naming the
path and the cause, which the stage entry point prints instead of a traceback (`stages.common.finish`).
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import Iterable


class Rejected(Exception):
    """A row, image or member refused for `reason` (short, machine-readable), with `detail`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StageFailed(RuntimeError):
    """The stage's outputs are written but its acceptance policy failed; the message says why."""


class IntegrityError(ValueError):
    """A file of a verified folder differs from what its manifest recorded (or is missing, extra,
    or the manifest itself is missing or unreadable)."""

    def __init__(self, path: Path, expected: str, found: str, detail: str = ""):
        self.path, self.expected, self.found = Path(path), expected, found
        super().__init__(f"{path}: {detail or 'contents changed since it was written'}: "
                         f"expected sha256 {expected}, found {found}")


# What the operating system refused, in words a user can act on (`cause`).
CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EFBIG: "file too large (file system or process file-size limit)",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "operation not permitted", errno.ENOENT: "no such file or directory",
          errno.EIO: "input/output error (failing disk or network file system)"}
# the causes in the surroundings, not in the data: a worker stops the stage on them instead of
# failing one dataset (which would leave the next step to trip over its partial output)
ENVIRONMENT = frozenset(CAUSES) - {errno.ENOENT}
_ERRNO_IN_TEXT = re.compile(r"(?:\[errno |os error )(\d+)", re.IGNORECASE)  # Python/pyarrow, Rust (safetensors)
_SQLITE = {13: errno.ENOSPC, 8: errno.EROFS, 23: errno.EACCES}  # SQLITE_FULL, _READONLY, _AUTH (primary codes)


def os_error(exc: BaseException) -> tuple[int, BaseException] | None:
    """(errno of `CAUSES`, the exception carrying it) behind `exc`, or behind an exception it was
    raised from or during (pyarrow and safetensors put the errno in their messages only, sqlite has
    codes of its own; a FileNotFoundError raised with a message is ENOENT); None when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code is None and isinstance(exc, FileNotFoundError):
            code = errno.ENOENT
        if code is None and getattr(exc, "sqlite_errorcode", None) is not None:
            code = _SQLITE.get(exc.sqlite_errorcode & 0xFF)
        match = _ERRNO_IN_TEXT.search(str(exc))
        code = code if code in CAUSES else int(match.group(1)) if match else None
        if code in CAUSES:
            return code, exc
        exc = exc.__cause__ or exc.__context__
    return None


def cause(exc: BaseException, writing: Iterable[str | Path] = ()) -> str | None:
    """One line naming the path and the cause of a failure the operating system reported (`CAUSES`),
    or None for another failure. The path is the exception's own file name; an error without one
    (pyarrow, safetensors and tar writers report none) names the stage's outputs `writing` and the
    free space of their file systems."""
    found = os_error(exc)
    if found is None:
        return None
    code, carrier = found
    if isinstance(carrier, FileNotFoundError) and carrier.errno is None:  # raised with a message naming it
        return f"missing input: {carrier}"
    named = [f for f in (getattr(carrier, "filename", None), getattr(carrier, "filename2", None)) if f]
    if named:
        return f"{CAUSES[code]}: {' -> '.join(map(str, named))}"
    places = ", ".join(f"{p} ({_free(Path(p))} free)" for p in writing) or "unknown"
    detail = str(carrier).splitlines()[0][:200] if str(carrier) else type(carrier).__name__
    return f"{CAUSES[code]} ({detail}); this stage writes {places}"


def _free(path: Path) -> str:
    """The free space of the file system `path` is on (its nearest existing folder), in words."""
    for folder in (path, *path.parents):
        if folder.exists():
            free = shutil.disk_usage(folder).free
            return next(f"{free / 2 ** e:.1f} {u}" for e, u in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B"))
                        if free >= 2 ** e or e == 0)
    return "unknown"
