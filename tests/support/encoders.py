"""Fake encoders and encoder wrappers for tests and benchmarks of the evaluation (each an
`trainer.eval.protocol.Encoder`: `fingerprint` and `encode(sides, images, batch_size)`).

    HashEncoder()              # a random unit vector per item: a model that knows nothing
    OverlapEncoder()           # shared words and colours score high: a model that learned something
    BatchSensitiveEncoder()    # vectors move with their batch, as a real model's do with padding
    CountingEncoder(inner)     # counts the items `inner` is asked to encode
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from PIL import Image

from trainer.eval.protocol import Encoder


class CountingEncoder:
    """Wraps an `Encoder` and counts the items it is asked to encode (cache hits never reach it):
    what the benchmarks and tests report as encodings."""

    def __init__(self, inner: Encoder):
        self.inner, self.fingerprint, self.encoded = inner, inner.fingerprint, 0

    def encode(self, sides: list[dict], images: list[Image.Image | None], batch_size: int = 32) -> np.ndarray:
        self.encoded += len(sides)
        return self.inner.encode(sides, images, batch_size=batch_size)


def _unit(seed_text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class HashEncoder:
    """Deterministic per-item random unit vectors (a model that knows nothing)."""

    def __init__(self, dim: int = 16, name: str = "hash"):
        self.dim, self.fingerprint, self.calls, self.encoded = dim, f"fake-{name}-{dim}", 0, 0

    def vector(self, s: dict, img) -> np.ndarray:
        assert (img is None) == (s["image"] is None)
        if img is not None:
            assert isinstance(img, Image.Image) and img.mode == "RGB"
        return _unit(s["raw"] + "|" + (s["image"] or {}).get("sha256", ""), self.dim)

    def encode(self, sides, images, batch_size=8):
        self.calls += 1
        self.encoded += len(sides)
        return np.stack([self.vector(s, i) for s, i in zip(sides, images)])


class OverlapEncoder(HashEncoder):
    """Bag of words of the side's text plus the image's first pixel colour: queries and their gold
    share content, so this 'model' scores well above chance."""

    def __init__(self, dim: int = 32, name: str = "overlap"):
        super().__init__(dim, name)

    def vector(self, s, img):
        super().vector(s, img)
        v = np.zeros(self.dim, np.float32) + 1e-3
        for word in re.findall(r"[a-z]+", s["text"].lower()):
            v += _unit(word, self.dim)
        if img is not None:
            v += 2 * _unit(str(img.getpixel((0, 0))), self.dim)
        return v / np.linalg.norm(v)


class BatchSensitiveEncoder(HashEncoder):
    """Adds a small perturbation that depends on the whole batch, like padding effects of a real model:
    results match another run only if every item is encoded in the same batch."""

    def encode(self, sides, images, batch_size=8):
        base = super().encode(sides, images, batch_size)
        noise = _unit("|".join(s["raw"] for s in sides), self.dim)
        out = base + 0.05 * noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)
