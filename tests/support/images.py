"""Images for tests: bytes of solid colours in any mode, format and size, of seeded and drawn pictures,
and of bad images (truncated, CMYK, palette, alpha, header-only bombs); random-pixel PIL images.

    image_bytes((10, 20, 30), (8, 8), fmt="PNG")    # a solid 8x8 PNG
    encode(img, "JPEG", quality=90)                 # any PIL image's bytes
    noise(64, 32, seed=1)                           # random pixels, as a PIL image

Every builder is deterministic: tests compare hashes of what they write.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


def encode(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    """`img` saved in `fmt` with PIL's `save` options."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def image_bytes(color=(200, 40, 40), size=(8, 8), mode="RGB", fmt="JPEG", **save) -> bytes:
    """A solid `color` image of `size` in `mode`, saved in `fmt`."""
    return encode(Image.new(mode, size, color), fmt, **save)


def jpeg_for(path: str) -> bytes:
    """A distinct, deterministic tiny JPEG for a path."""
    h = hashlib.sha256(path.encode()).digest()
    return image_bytes(color=(h[0], h[1], h[2]), size=(8 + h[3] % 5, 8))


def seeded_png(seed: int, size=(8, 6)) -> bytes:
    """A PNG of a colour drawn from `seed`, its first pixel set from `seed`: distinct for each seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    img.putpixel((0, 0), (seed % 256, (seed // 256) % 256, 7))
    return encode(img)


def drawn_image(width: int, height: int, fmt: str, seed: int) -> bytes:
    """An ellipse and a line on a coloured ground (varied pixels, unlike a solid image), JPEGs at quality 90."""
    img = Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, 120))
    draw = ImageDraw.Draw(img)
    draw.ellipse((seed % 7, seed % 5, width - 3, height - 2), fill=(250, (seed * 13) % 256, 10))
    draw.line((0, 0, width, height), fill=(0, 0, 0), width=2)
    return encode(img, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Noise, not flat colour: a wrong patch order or channel layout changes the tensors."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "RGBA":
        img.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def truncated_jpeg() -> bytes:
    data = image_bytes(size=(64, 64), quality=95)
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    return image_bytes(color=(255, 0, 0, 0), mode="CMYK")  # pure cyan ink


def palette_png(transparent: bool = False) -> bytes:
    img = Image.new("P", (6, 6), 1)
    img.putpalette([255, 255, 255, 10, 200, 30] + [0] * 762)
    return encode(img, "PNG", **({"transparency": 1} if transparent else {}))


def rgba_png(alpha=0) -> bytes:
    return image_bytes(color=(0, 0, 255, alpha), mode="RGBA", fmt="PNG")


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels but carries almost no data: decoding it
    would allocate width*height bytes, reading the header costs nothing."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
