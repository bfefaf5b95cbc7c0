"""Image validation and conversion for the normalize stage.

`prepare_image(data, max_pixels)` turns the bytes of one source image into the bytes we store
(`imagestore.StoredImage`), or raises `Rejected(reason, detail)`:

    image_empty             zero bytes
    image_undecodable       PIL cannot identify or decode it (or its mode cannot be converted)
    image_truncated         the data ends before the image does
    image_too_large         more than `max_pixels` pixels, read from the header BEFORE decoding
                            (decompression-bomb guard)

Images that decode fine in modes "1", "L" or "RGB" without transparency are stored with their
original bytes untouched. Everything else (CMYK, palette, alpha or transparency, 16-bit and float
modes, ...) is converted to RGB — alpha composited on white — and re-encoded (JPEG quality 95 when the
source was a JPEG, PNG otherwise); such images are reported as `converted`. The sha256 is always that
of the stored bytes, so identical stored images share one entry in the image store.

`ImageSource` resolves the image paths of raw MMEB rows to archive members (the
train zips per subset, MMEB-eval's one images.zip) and reads them through `archives.SafeZip`, so nothing is ever extracted to disk.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from pipelines.archives import SafeZip, normalize_member_name
from pipelines.errors import Rejected
from pipelines.imagestore import StoredImage

log = logging.getLogger(__name__)

KEEP_MODES = ("1", "L", "RGB")
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class PreparedImage:
    stored: StoredImage
    converted: bool


def configure_pil(max_pixels: int) -> None:
    """Make PIL itself refuse images above the limit and never load truncated data silently.

    PIL warns above MAX_IMAGE_PIXELS and raises above twice that; `prepare_image` checks the header
    against `max_pixels` before decoding anyway, this is the second line of defence."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    ImageFile.LOAD_TRUNCATED_IMAGES = False


@contextmanager
def pil_limits(max_pixels: int):
    """`configure_pil` for the duration of a block; PIL's previous settings are restored after."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    configure_pil(max_pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def max_pixels_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size an image of `width` x `height` is scaled down to (aspect kept) so that
    width * height <= max_pixels; unchanged when it already fits. The one rule for the training
    resolution: the shard stage pre-scales with it and the collator (`trainer.model.inputs`) applies it."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > max_pixels:  # int() rounding can still overshoot by a pixel row
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


MAX_ASPECT = 200  # the most elongated image Qwen2-VL's processor takes (its smart_resize refuses more)


def keeping_side(max_pixels: int) -> int:
    """The smallest longer-side cap that keeps `max_pixels` for every aspect ratio up to `MAX_ASPECT`
    (the side of a ``MAX_ASPECT``:1 image of `max_pixels` pixels, rounded up)."""
    return math.isqrt(MAX_ASPECT * int(max_pixels) - 1) + 1


def side_cut(max_side: int | None, max_pixels: int | None) -> str | None:
    """Why capping the longer image side at `max_side` (after the pixel cap) holds elongated images
    below the training resolution `max_pixels`, or None when every aspect ratio up to `MAX_ASPECT`
    keeps it: an image of aspect ratio ``a`` keeps `max_pixels` only while ``sqrt(max_pixels * a)``
    fits the side, so at 1003520 pixels a 1344 px cap trains every image more elongated than 1.8:1
    (tall documents, infographics, panoramas) at a fraction of the pixels evaluation gives it."""
    if max_side is None or max_pixels is None or int(max_side) ** 2 >= MAX_ASPECT * int(max_pixels):
        return None
    need = keeping_side(max_pixels)
    side, pixels = int(max_side), int(max_pixels)
    return (f"shard.image_max_side {side} caps the longer image side after the pixel cap: images more elongated "
            f"than {side * side / pixels:.2f}:1 (tall documents, infographics, panoramas) train below "
            f"train.image_max_pixels={pixels} pixels (a 4:1 image at {min(pixels, side * side // 4)}), while "
            f"evaluation sees them at it; set shard.image_max_side: {need} to keep every aspect ratio up to "
            f"{MAX_ASPECT}:1 at the training resolution")


def snapped_size(width: int, height: int, multiple: int, max_pixels: int | None = None,
                 max_side: int | None = None) -> tuple[int, int]:
    """Each side rounded to a multiple of `multiple` (at least one multiple), or rounded down when
    rounding would exceed `max_pixels` or `max_side`. With `multiple` = the processor's patch size
    times its merge size (28 for Qwen2-VL / Qwen2.5-VL) such a size is a fixed point of Qwen2-VL's
    `smart_resize`, so the processor resizes nothing: the shard stage's `image_size_multiple`."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if (max_pixels is not None and max_pixels < multiple * multiple) or (max_side is not None and max_side < multiple):
        raise ValueError(f"no size on a grid of {multiple} px fits max_pixels={max_pixels}, max_side={max_side}")

    def snap(value: int, rounding) -> int:
        return max(multiple, int(rounding(value / multiple)) * multiple)

    w, h = snap(width, round), snap(height, round)
    if (max_pixels is not None and w * h > max_pixels) or (max_side is not None and max(w, h) > max_side):
        w, h = snap(width, math.floor), snap(height, math.floor)
    if max_pixels is not None and w * h > max_pixels:  # a short side raised to one multiple: shorten the long one
        if w >= h:
            w = max_pixels // h // multiple * multiple
        else:
            h = max_pixels // w // multiple * multiple
    return w, h


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _needs_conversion(img: Image.Image) -> bool:
    return img.mode not in KEEP_MODES or "transparency" in img.info


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any PIL image as the pipeline stores it: transparency composited on white, 16-bit and
    float greyscale mapped onto 8 bits, everything else `convert("RGB")`."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La", "P") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit greyscale: the 16-bit range onto 8 bits (v / 257) instead of clipping at 255; int or
        # float images with values in 0..255 as they are, floats in 0..1 times 255, else stretched
        sixteen_bit = img.mode.startswith("I;16")
        if sixteen_bit:
            img = img.convert("I")  # Pillow has no extrema or arithmetic for I;16B/L/N
        lo, hi = img.getextrema()
        if sixteen_bit or (img.mode == "I" and 255 < hi <= 65535 and lo >= 0):
            offset, scale = 0.0, 1 / 257
        elif img.mode == "F" and 0 <= lo and hi <= 1:
            offset, scale = 0.0, 255.0
        elif 0 <= lo and hi <= 255:
            offset, scale = 0.0, 1.0
        else:
            offset, scale = lo, (255.0 / (hi - lo) if hi > lo else 0.0)
        rounded = img.convert("F").point(lambda v: (v - offset) * scale + 0.5)  # "L" truncates
        return rounded.convert("L").convert("RGB")
    return img.convert("RGB")


def _encode(img: Image.Image, source_format: str | None) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if source_format in ("JPEG", "MPO"):
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "JPEG"
    img.save(buf, format="PNG")
    return buf.getvalue(), "PNG"


def prepare_image(data: bytes, max_pixels: int) -> PreparedImage:
    """Validate one image and return what to store; raises Rejected (never anything else)."""
    if not data:
        raise Rejected("image_empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise Rejected("image_too_large",
                                    f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
            img.load()
            converted = _needs_conversion(img)
            if converted:
                rgb = to_rgb(img)
                stored_bytes, fmt = _encode(rgb, img.format)
                width, height = rgb.size
            else:
                stored_bytes, fmt = data, img.format or "UNKNOWN"
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("image_too_large", f"{e} (max_pixels {max_pixels})") from e
    except UnidentifiedImageError as e:
        raise Rejected("image_undecodable", str(e)) from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        reason = "image_truncated" if "truncat" in str(e).lower() else "image_undecodable"
        raise Rejected(reason, f"{type(e).__name__}: {e}") from e
    stored = StoredImage(sha256=_sha256(stored_bytes), bytes=stored_bytes, width=int(width),
                         height=int(height), format=fmt)
    return PreparedImage(stored=stored, converted=converted)


class ImageSource:
    """Reads the images referenced by raw MMEB rows from their zip archives.

    train: row paths look like "images/<Subset>/Train/<file>" and live in
           MMEB-train/images_zip/<Subset>.zip; the subset is taken from the path, falling back to the
           dataset's own zip. The official instructions unzip those archives *into* images/, so
           their members are named "<Subset>/Train/<file>": `member_for` finds a member under the
           row path or under it without its leading folders (at least folder/file kept).
    eval:  row paths look like "<Dataset>/<file>" and live in MMEB-eval/images.zip.
    `read(path)` returns the member's bytes or raises Rejected (image_missing,
    image_unsafe_member, image_corrupt, archive_unreadable).
    """

    def __init__(self, raw_root: str | Path, kind: str, dataset: str, **zip_limits):
        self.raw_root = Path(raw_root)
        self.kind = kind
        self.dataset = dataset
        self.zip_limits = zip_limits
        self._zips: dict[Path, SafeZip | Exception] = {}

    def archive_for(self, path: str) -> Path:
        if self.kind == "eval":
            return self.raw_root / "MMEB-eval" / "images.zip"
        parts = normalize_member_name(path).split("/")
        zips = self.raw_root / "MMEB-train" / "images_zip"
        if len(parts) > 2 and parts[0] == "images" and (zips / f"{parts[1]}.zip").exists():
            return zips / f"{parts[1]}.zip"
        return zips / f"{self.dataset}.zip"

    def _open(self, archive: Path) -> SafeZip:
        if archive not in self._zips:
            try:
                self._zips[archive] = SafeZip(archive, **self.zip_limits)
            except FileNotFoundError as e:
                self._zips[archive] = e
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                log.error("cannot open image archive %s: %s", archive, e)
                self._zips[archive] = e
        found = self._zips[archive]
        if isinstance(found, FileNotFoundError):
            raise Rejected("image_missing", f"archive {archive.name} not found")
        if isinstance(found, Exception):
            raise Rejected("archive_unreadable", f"{archive.name}: {type(found).__name__}: {found}")
        return found

    @staticmethod
    def member_for(archive: SafeZip, path: str) -> str:
        """The member of `archive` that holds row path `path`: the path itself, else the first of its
        suffixes without leading folders ("ImageNet_1K/Train/x.jpg", then "Train/x.jpg" for
        "images/ImageNet_1K/Train/x.jpg") that the archive has, else the path under the folder that
        holds all of the archive's members, if there is one ("images/WebQA/x.jpg" for "WebQA/x.jpg":
        an archive packed with its root folder; never guessed among several folders); a refused
        member included, so its refusal is reported. The path itself when none is there."""
        name = normalize_member_name(path)
        parts = name.split("/")
        found = lambda candidate: candidate in archive or candidate in archive.refused  # noqa: E731
        for k in range(max(1, len(parts) - 1)):
            candidate = "/".join(parts[k:])
            if found(candidate):
                return candidate
        root = archive.root_folder
        if root is not None and found(candidate := f"{root}/{name}"):
            return candidate
        return name

    def read(self, path: str) -> bytes:
        archive = self._open(self.archive_for(path))
        try:
            return archive.read(self.member_for(archive, path))
        except Rejected as e:
            if e.reason == "missing":
                raise Rejected("image_missing", e.detail) from e
            if e.reason == "corrupt":
                raise Rejected("image_corrupt", e.detail) from e
            raise Rejected("image_unsafe_member", f"{e.reason}: {e.detail}") from e

    def close(self) -> None:
        for z in self._zips.values():
            if isinstance(z, SafeZip):
                z.close()
        self._zips.clear()
