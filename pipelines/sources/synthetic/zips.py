"""Image files and zip archives of the synthetic MMEB, with fixed bytes: JPEG (quality 90, 4:4:4) and
PNG with fixed settings, zip entries (stored, not compressed) in sorted order with a fixed date and
fixed attributes, and every parent folder listed as its own entry.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from pipelines.sources.synthetic.datasets import Img

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_ATTR = 0o100644 << 16
ZIP_DIR_ATTR = (0o40755 << 16) | 0x10
JPEG_SETTINGS = {"quality": 90, "subsampling": 0, "optimize": False}
PNG_SETTINGS = {"compress_level": 6, "optimize": False}


def encode(img: Img) -> bytes:
    """The bytes of an image file in its format, written with the fixed settings."""
    buf = io.BytesIO()
    if img.fmt == "JPEG":
        img.image.convert("RGB").save(buf, "JPEG", **JPEG_SETTINGS)
    else:
        img.image.save(buf, "PNG", **PNG_SETTINGS)
    return buf.getvalue()


class ZipBuffer:
    """Members collected in memory, then written in sorted order with fixed dates and attributes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, int] = {}

    def add(self, arcname: str, img: Img) -> None:
        data = encode(img)
        if self.files.get(arcname, data) != data:
            raise AssertionError(f"two different images named {arcname}")
        if arcname not in self.files:  # an image that is two rows' candidate is stored and counted once
            self.modes[img.image.mode] = self.modes.get(img.image.mode, 0) + 1
        self.files[arcname] = data

    def write(self, path: Path) -> None:
        dirs = {str(Path(a).parent) + "/" for a in self.files}
        dirs = {d for a in dirs for d in _parents(a)}
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            for name in sorted(dirs | set(self.files)):
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.create_system = 3
                if name.endswith("/"):
                    info.external_attr = ZIP_DIR_ATTR
                    zf.writestr(info, b"")
                else:
                    info.external_attr = ZIP_FILE_ATTR
                    info.compress_type = zipfile.ZIP_STORED
                    zf.writestr(info, self.files[name])


def _parents(dir_name: str) -> list[str]:
    """Every folder on the way down to dir_name ("a/b/": "a/", "a/b/"); none for "."."""
    parts = dir_name.strip("/").split("/")
    return [] if parts == ["."] else ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]

