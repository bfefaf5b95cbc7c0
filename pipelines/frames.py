"""Video frames as MMEB-V2 feeds them to a model: a folder of extracted frames, naturally sorted,
sampled at evenly spaced indices.

    sampled = sample_frames(Path("video-tasks/frames/video_ret/MSR-VTT/video7020"), 8)
    sampled.paths      # the chosen frame files, in temporal order
    sampled.short      # True when the folder held fewer frames than asked (all kept, none padded)

As VLM2Vec's ``src/utils/vision_utils/vision_utils.py`` (``load_frames``, ``process_video_frames``,
``sample_frames``):

* frames are the files ending ``.jpg``, ``.jpeg`` or ``.png`` (any case), in natural order: digit
  runs compare as numbers and the rest case-insensitively, so ``frame_2`` comes before ``frame_10``;
* with at least ``num_frames`` frames the indices are ``np.linspace(0, n - 1, num_frames,
  dtype=int)`` (truncated toward zero: 64 frames give 0, 9, 18, 27, 36, 45, 54, 63);
* with fewer, every frame is kept, unpadded; ``num_frames=None`` keeps every frame (MomentSeeker's
  clips), ``0`` none.

Unlike VLM2Vec, which then extracts frames from a raw video (or fails later on a length mismatch),
a missing folder or one without frames is a `Rejected` with the folder in its detail, so normalize
counts it instead of crashing. A short folder is kept and counted (``short``): VLM2Vec's retrieval
loaders assert exactly ``num_frames`` frames, its classification and QA loaders accept fewer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import Rejected

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """VLM2Vec's sort key: digit runs as integers, other runs lower-cased (they alternate, so an
    integer is never compared with a string)."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def list_frames(folder: Path) -> list[Path]:
    """The frame files of a folder in natural order (other files and sub-folders are ignored)."""
    names = sorted((p.name for p in folder.iterdir()), key=natural_key)
    return [folder / n for n in names if n.lower().endswith(FRAME_EXTENSIONS) and (folder / n).is_file()]


def sample_indices(available: int, num_frames: int | None) -> list[int]:
    """Evenly spaced indices into ``available`` frames, VLM2Vec's ``process_video_frames`` rule."""
    if num_frames is not None and num_frames < 0:
        raise ValueError(f"num_frames must be >= 0 or None, got {num_frames}")
    if num_frames == 0:
        return []
    if num_frames is None or num_frames > available:
        return list(range(available))
    return np.linspace(0, available - 1, num_frames, dtype=int).tolist()


@dataclass(frozen=True)
class SampledFrames:
    folder: Path
    paths: tuple[Path, ...]  # the sampled frames in temporal order
    available: int  # frame files in the folder
    requested: int | None

    @property
    def short(self) -> bool:
        """The folder held fewer frames than requested (every frame kept)."""
        return self.requested is not None and self.available < self.requested


def sample_frames(folder: Path, num_frames: int | None) -> SampledFrames:
    """Sample a video's frames; a missing folder or one without frames is `Rejected`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Rejected("frames_missing", f"frame folder {folder} does not exist")
    frames = list_frames(folder)
    if not frames:
        raise Rejected("frames_empty", f"frame folder {folder} holds no .jpg/.jpeg/.png file")
    chosen = tuple(frames[i] for i in sample_indices(len(frames), num_frames))
    return SampledFrames(folder, chosen, len(frames), num_frames)
