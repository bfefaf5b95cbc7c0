"""Tiny MMEB-V2 Hub repos for the `hub` download of V2: tar archives with chosen members (hostile
ones included) and three repos in the Hub layout, a BEIR visual-document set, a video annotation repo
and `TIGER-Lab/MMEB-V2` with that video set's frame archive."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from pipelines.sources.synthetic.video import write_video_cls
from pipelines.sources.synthetic.visdoc import write_visdoc

VISDOC_TASK, VIDEO_TASK = "ViDoRe_arxivqa", "HMDB51"
VISDOC_REPO, VIDEO_REPO, ARCHIVE_REPO = "vidore/arxivqa_test_subsampled_beir", "VLM2Vec/HMDB51", "TIGER-Lab/MMEB-V2"
# members no extraction may write: out of the folder, absolute, and links (out of and into it)
HOSTILE = {"../escaped.txt": b"x", "/tmp/absolute.txt": b"x"}
LINKS = {"HMDB51/passwd": "/etc/passwd", "HMDB51/inside": "HMDB51"}


def write_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None, gz: bool = True) -> Path:
    """A tar (gzip by default) holding `members` (name -> bytes) and symbolic `links` (name -> target),
    in order, written as given (no name checks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def write_v2_repos(root: Path, drop_video: str | None = None) -> dict[str, Path]:
    """{repo id: folder} of the three repos under `root`; the frame archive holds the video set's
    frames under HMDB51/ (without `drop_video`'s) plus the HOSTILE members and LINKS. Counts: 9
    queries (visual documents), 14 videos."""
    write_visdoc(root / "visdoc", size=32)
    scratch = root / "scratch"
    write_video_cls(scratch, size=16)
    (root / "video").mkdir(parents=True)
    shutil.copy(scratch / "Syn-VideoCLS/test-00000-of-00001.parquet", root / "video/test-00000-of-00001.parquet")
    frames = scratch / "video-tasks/frames/video_cls/Syn-VideoCLS"
    members = {f"HMDB51/{p.relative_to(frames).as_posix()}": p.read_bytes() for p in sorted(frames.rglob("*"))
               if p.is_file() and p.parent.name != drop_video}
    write_tar(root / "archive/video-tasks/frames/video_cls.tar.gz", {**members, **HOSTILE}, LINKS)
    write_tar(root / "archive/video-tasks/frames/video_ret.tar.gz", {"MSR-VTT/v0/0.jpg": b"never fetched"})
    (root / "archive/README.md").write_text("MMEB-V2\n")
    shutil.rmtree(scratch)
    return {VISDOC_REPO: root / "visdoc", VIDEO_REPO: root / "video", ARCHIVE_REPO: root / "archive"}
