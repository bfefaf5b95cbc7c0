"""Encoder wrappers for tests and benchmarks of the evaluation (`trainer.eval.protocol.Encoder`)."""

from __future__ import annotations

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
