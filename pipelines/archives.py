"""Safe reading of zip archives: members are read straight from the zip, never trusted blindly.

MMEB ships its images as zips (one per train subset, one for all of MMEB-eval). `SafeZip` reads members into memory without
extracting anything to disk and refuses, member by member, anything a hostile or broken archive could
use against us:

    unsafe_path   absolute names ("/x", "C:\\x", "\\\\host\\x") or names with a ".." component (zip-slip)
    symlink       members whose Unix mode marks them as symbolic links
    encrypted     password-protected members (we cannot verify them)
    duplicate     a name that occurs twice in the central directory (which one is meant is ambiguous)
    too_large     declared uncompressed size above `max_member_bytes`
    ratio         declared compression ratio above `max_ratio` (only checked for members larger than
                  `ratio_min_bytes`, so tiny highly-compressible files are not flagged)
    missing       no member of that name
    corrupt       CRC or size mismatch, or an undecompressable stream, found while reading

A refusal is raised as `Rejected(reason, detail)` for that member only; the archive stays usable.
`safe_extract_zip` applies the same checks when extracting a whole archive and returns a report of
what was extracted and what was refused; `safe_extract_tar` does the same for a tar (MMEB-V2's frame
archives, possibly split into parts), refusing links and special files as well. A tar is read as a
stream, where skipping a member means decompressing it, so its size guards stop the extraction instead
(`StageFailed` naming the archive and the member): a member declaring more than `max_member_bytes`, one
whose bytes decompress at more than `max_ratio` times the compressed bytes they came from (checked while
it is written, once past `ratio_min_bytes`), or one that would take the files extracted past
`max_total_bytes` (by default the free space of the destination's disk when extraction starts).
"""

from __future__ import annotations

import functools
import io
import logging
import lzma
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipelines import files
from pipelines.errors import Rejected, StageFailed

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMBER_BYTES = 512 << 20  # 512 MiB: far above any real MMEB image
DEFAULT_MAX_RATIO = 200.0  # JPEG/PNG barely compress (~1:1); deflate tops out near 1032:1
DEFAULT_RATIO_MIN_BYTES = 1 << 20  # the ratio check applies to members declaring more than 1 MiB

_CHUNK = 1 << 20
# the compressed bytes a tar stream may have read ahead of a member's data (the buffered reader's and
# tarfile's buffers, ~20 KiB): the ratio guard never credits a member with fewer
_READ_AHEAD = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_name_reason(name: str) -> str | None:
    """Return why a member name is unsafe to join under a folder, or None when it is safe.

    A safe name is relative, has no ".." component and no drive letter; backslashes count as
    separators (zips written on Windows use them)."""
    if not name or "\x00" in name:
        return "empty name or NUL byte in name"
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        return f"absolute path {name!r}"
    if ".." in PurePosixPath(normalized).parts:
        return f"path escapes its folder: {name!r}"
    return None


def normalize_member_name(name: str) -> str:
    """The lookup key of a member or row path: forward slashes, no leading "./"."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


@dataclass
class SafeZip:
    """Read-only access to the members of one zip file, with per-member refusals.

    `refused` maps member name -> (reason, detail) for every member refused while indexing;
    `read(name)` returns a member's verified bytes or raises `Rejected`.
    """

    path: Path
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_min_bytes: int = DEFAULT_RATIO_MIN_BYTES
    refused: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self._zip = zipfile.ZipFile(self.path)  # raises BadZipFile / OSError for unreadable archives
        self._members: dict[str, zipfile.ZipInfo] = {}
        counts: dict[str, int] = {}
        for info in self._zip.infolist():
            key = normalize_member_name(info.filename)
            counts[key] = counts.get(key, 0) + 1
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            key = normalize_member_name(info.filename)
            why = self._refusal(info, duplicated=counts[key] > 1)
            if why:
                self.refused[key] = why
                self._members.pop(key, None)
            elif key not in self.refused:
                self._members[key] = info
        if self.refused:
            log.warning("%s: refused %d member(s), e.g. %s", self.path, len(self.refused),
                        next(iter(self.refused.items())))

    def _refusal(self, info: zipfile.ZipInfo, duplicated: bool) -> tuple[str, str] | None:
        name = info.filename
        unsafe = unsafe_name_reason(name)
        if unsafe:
            return "unsafe_path", unsafe
        if is_symlink(info):
            return "symlink", f"{name!r} is a symbolic link"
        if info.flag_bits & 0x1:
            return "encrypted", f"{name!r} is encrypted"
        if duplicated:
            return "duplicate", f"{name!r} occurs more than once in the archive"
        if info.file_size > self.max_member_bytes:
            return "too_large", f"{name!r} declares {info.file_size} bytes (limit {self.max_member_bytes})"
        if info.file_size > self.ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > self.max_ratio:
                return "ratio", f"{name!r} compression ratio {ratio:.0f} (limit {self.max_ratio:.0f})"
        return None

    def names(self) -> list[str]:
        """The readable (not refused) member names, sorted."""
        return sorted(self._members)

    def __contains__(self, name: str) -> bool:
        return normalize_member_name(name) in self._members

    @functools.cached_property
    def root_folder(self) -> str | None:
        """The one folder every member (readable or refused) sits under, as in a zip of a folder; None
        when members sit at the top or under several folders."""
        tops = {name.split("/", 1)[0] if "/" in name else None for name in (*self._members, *self.refused)}
        return tops.pop() if len(tops) == 1 else None

    def info(self, name: str) -> zipfile.ZipInfo:
        key = normalize_member_name(name)
        if key in self.refused:
            raise Rejected(*self.refused[key])
        if key not in self._members:
            raise Rejected("missing", f"{name!r} is not in {self.path.name}")
        return self._members[key]

    def read(self, name: str) -> bytes:
        """The member's bytes, verified against its declared size and CRC-32."""
        info = self.info(name)
        try:
            with self._zip.open(info) as f:
                data = f.read(info.file_size + 1)  # ZipExtFile checks the CRC when it reaches the end
                if len(data) == info.file_size:
                    f.read(1)  # force the end-of-stream CRC check when the read stopped exactly at it
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError,
                NotImplementedError) as e:  # bz2's errors are OSError
            raise Rejected("corrupt", f"{info.filename!r}: {type(e).__name__}: {e}") from e
        if len(data) != info.file_size:
            raise Rejected("corrupt", f"{info.filename!r}: read {len(data)} bytes, "
                                         f"declared {info.file_size}")
        if zlib.crc32(data) & 0xFFFFFFFF != info.CRC:
            raise Rejected("corrupt", f"{info.filename!r}: CRC-32 mismatch")
        return data

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "SafeZip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ExtractReport:
    extracted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)


def safe_extract_zip(path: str | Path, dest: str | Path, **limits) -> ExtractReport:
    """Extract every safe member of `path` under `dest` and report the refused ones.

    Guarantees: nothing is written outside `dest` (checked on the resolved path too), no symlink is
    created, every written file passed the size and CRC checks (it is written to a temporary name and
    renamed only when complete). Refused or corrupt members are listed in the report, never raised.
    `limits` are SafeZip's (max_member_bytes, max_ratio, ratio_min_bytes).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    report = ExtractReport()
    with SafeZip(Path(path), **limits) as archive:
        report.refused.update(archive.refused)
        for name in archive.names():
            target = (root / name).resolve()
            if root != target and root not in target.parents:
                report.refused[name] = ("unsafe_path", f"{name!r} resolves outside {dest}")
                continue
            try:
                data = archive.read(name)
            except Rejected as e:
                report.refused[name] = (e.reason, e.detail)
                continue
            try:
                files.write_bytes(target, data)
            except OSError as e:  # e.g. members "a" and "a/b": a file where a folder must go
                report.refused[name] = ("unwritable", f"{name!r}: {type(e).__name__}: {e}")
                continue
            report.extracted.append(name)
    for name, (reason, detail) in sorted(report.refused.items()):
        log.warning("%s: refused %s (%s: %s)", path, name, reason, detail)
    return report


class _Chained(io.RawIOBase):
    """The concatenation of several files, read as one stream (a tar split into parts: `cat a-00 a-01 |`)."""

    def __init__(self, paths: list[Path]):
        self._paths, self._current = list(paths), None
        self.consumed = 0  # bytes read from the parts so far (the compressed stream)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._current is None:
                if not self._paths:
                    return 0
                self._current = open(self._paths.pop(0), "rb")
            n = self._current.readinto(buffer)
            if n:
                self.consumed += n
                return n
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


def _tar_refusal(member: tarfile.TarInfo, name: str, root: Path) -> tuple[str, str] | None:
    if (why := unsafe_name_reason(member.name)) is not None:
        return "unsafe_path", why
    if member.issym() or member.islnk():
        return "link", f"{member.name!r} is a link to {member.linkname!r}; frame archives hold plain files"
    if not (member.isfile() or member.isdir()):
        return "special", f"{member.name!r} is neither a file nor a folder"
    target = (root / name).resolve()
    if root != target and root not in target.parents:
        return "unsafe_path", f"{member.name!r} resolves outside {root}"
    return None


@dataclass(frozen=True)
class _TarLimits:
    max_member_bytes: int
    max_ratio: float
    ratio_min_bytes: int
    max_total_bytes: int


def _check_member_size(archive: str, member: tarfile.TarInfo, extracted: int, limits: _TarLimits) -> None:
    if member.size > limits.max_member_bytes:
        raise StageFailed(f"{archive}: member {member.name!r} declares {member.size} bytes (limit "
                          f"{limits.max_member_bytes}): refusing the archive, a decompression bomb or not a "
                          "frame archive")
    if extracted + member.size > limits.max_total_bytes:
        raise StageFailed(f"{archive}: member {member.name!r} ({member.size} bytes) would take the files "
                          f"extracted to {extracted + member.size} bytes (limit {limits.max_total_bytes}): "
                          "refusing the rest of the archive")


def _copy_member(archive: str, member: tarfile.TarInfo, source, out, raw: _Chained, limits: _TarLimits) -> None:
    """The member's bytes to `out`, stopped with StageFailed as soon as they outgrow the compressed
    bytes they came from by more than `max_ratio` (a bomb within the declared size; with the default
    limits a gzip bomb stops within 200 x 64 KiB, 13 MiB, written)."""
    start, written = raw.consumed, 0
    while chunk := source.read(_CHUNK):
        out.write(chunk)
        written += len(chunk)
        ratio = written / max(raw.consumed - start, _READ_AHEAD)
        if written > limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise StageFailed(f"{archive}: member {member.name!r} decompresses {ratio:.0f} times its compressed "
                              f"size (limit {limits.max_ratio:.0f}) after {written} bytes: refusing the archive, "
                              "a decompression bomb")


def safe_extract_tar(parts: list[Path], dest: str | Path, strip: str = "", *,
                     max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES, max_ratio: float = DEFAULT_MAX_RATIO,
                     ratio_min_bytes: int = DEFAULT_RATIO_MIN_BYTES,
                     max_total_bytes: int | None = None) -> ExtractReport:
    """Extract the plain files of a tar (gzip or not; given as its parts, in order, when split) under
    `dest`, `strip` removed from the front of each member name, and report the refused members.

    Guarantees, as `safe_extract_zip`: nothing is written outside `dest` (absolute names, ".."
    components and names resolving elsewhere are refused), no link, device or fifo is created (links
    are refused, even to inside), and every file is written whole or not at all. Refusals are listed in
    the report, never raised; a broken stream raises `tarfile.TarError`. Members outside `strip` are
    refused as `outside_strip`. The size guards (module docstring) raise `StageFailed` naming the
    member; `max_total_bytes` None: the free space of `dest`'s disk."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    report = ExtractReport()
    limits = _TarLimits(max_member_bytes, max_ratio, ratio_min_bytes,
                        shutil.disk_usage(root).free if max_total_bytes is None else max_total_bytes)
    extracted = 0
    with _Chained(parts) as raw, tarfile.open(fileobj=io.BufferedReader(raw), mode="r|*") as archive:
        for member in archive:
            name = normalize_member_name(member.name)
            if strip and not (name + "/").startswith(strip):
                report.refused[member.name] = ("outside_strip", f"{member.name!r} is not under {strip!r}")
                continue
            name = name[len(strip):]
            refusal = _tar_refusal(member, name, root)
            if refusal is not None:
                report.refused[member.name] = refusal
            elif member.isfile():
                _check_member_size(parts[0].name, member, extracted, limits)
                extracted += member.size
                try:
                    with files.atomic_file(root / name) as out:  # streamed: a member may be large
                        _copy_member(parts[0].name, member, archive.extractfile(member), out, raw, limits)
                except OSError as e:  # a file where a folder must go
                    report.refused[member.name] = ("unwritable", f"{member.name!r}: {type(e).__name__}: {e}")
                    continue
                report.extracted.append(name)
    for name, (reason, detail) in sorted(report.refused.items()):
        log.warning("%s: refused %s (%s: %s)", parts[0], name, reason, detail)
    return report
