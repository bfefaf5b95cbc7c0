"""A synthetic video classification set in MMEB-V2's layout: annotations as a Hub dataset, frames as
extracted frame folders.

    write_video_cls(out_dir, seed=0)

writes (the frame folders where MMEB-V2's ``video_cls.tar.gz`` puts its sets, the annotations as a
one-split Hub dataset like ``VLM2Vec/HMDB51``)::

    out_dir/Syn-VideoCLS/README.md                                  card with a `configs:` header
    out_dir/Syn-VideoCLS/test-00000-of-00001.parquet                video_id, pos_text (strings)
    out_dir/video-tasks/frames/video_cls/Syn-VideoCLS/<video_id>/frame_0001.jpg ...

A video is one coloured shape on a light background doing one action over its frames: moving left,
right, up or down, growing, shrinking, or changing colour. The label is the action, written as the
Kinetics / HMDB51 labels are (``moving_left``), and it shows in how the frames change (where the
shape goes, its size, its colour), so a model must compare frames to learn it. Most videos have ``frames`` frames; every ``short_every``-th has
fewer than 8 (``SHORT_FRAMES``), which the sampler keeps whole and counts. Frame files are named as
VLM2Vec's ffmpeg extraction names them (``frame_%04d.jpg`` from 1).

Deterministic for a seed: one ``random.Random`` stream, JPEG with the synthetic set's fixed settings,
parquet without timestamps. The exact file names inside the Hub annotation repos are inferred from
the loaders (``load_dataset(repo, split="test")``), not copied from a listing.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw

from pipelines.sources.synthetic.zips import JPEG_SETTINGS

NAME = "Syn-VideoCLS"
ACTIONS = ("moving_left", "moving_right", "moving_up", "moving_down", "growing", "shrinking", "changing_colour")
LABELS = ACTIONS  # the global candidate list, in order
COLOURS = ((220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 160, 20))
SHORT_FRAMES = 5
SCHEMA = pa.schema([("video_id", pa.string()), ("pos_text", pa.string())])


def _state(action: str, t: float, colour: tuple[int, int, int]) -> tuple[float, float, float, tuple]:
    """(centre x, centre y, radius) as fractions of the frame, and the colour, at time t in [0, 1]."""
    x, y, r = 0.5, 0.5, 0.18
    if action == "moving_left":
        x = 0.8 - 0.6 * t
    elif action == "moving_right":
        x = 0.2 + 0.6 * t
    elif action == "moving_up":
        y = 0.8 - 0.6 * t
    elif action == "moving_down":
        y = 0.2 + 0.6 * t
    elif action == "growing":
        r = 0.08 + 0.3 * t
    elif action == "shrinking":
        r = 0.38 - 0.3 * t
    elif action == "changing_colour":
        colour = tuple(round(a + (b - a) * t) for a, b in zip(colour, (250 - colour[0], colour[2], colour[1])))
    return x, y, r, colour


def render_video(action: str, colour: tuple[int, int, int], square: bool, frames: int, size: int) -> list[Image.Image]:
    out = []
    for i in range(frames):
        x, y, r, c = _state(action, i / max(frames - 1, 1), colour)
        img = Image.new("RGB", (size, size), (245, 245, 240))
        box = ((x - r) * size, (y - r) * size, (x + r) * size, (y + r) * size)
        draw = ImageDraw.Draw(img)
        (draw.rectangle if square else draw.ellipse)(box, fill=c)
        out.append(img)
    return out


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **JPEG_SETTINGS)
    return buf.getvalue()


def write_video_cls(out: Path, seed: int = 0, videos: int = 14, frames: int = 12, short_every: int = 7,
                    size: int = 48) -> dict[str, int]:
    """Write the set under ``out`` and return its counts: videos, frames written, short videos."""
    rng = random.Random(f"{seed}/{NAME}")
    out = Path(out)
    frame_root = out / "video-tasks" / "frames" / "video_cls" / NAME
    rows = {"video_id": [], "pos_text": []}
    written = short = 0
    for v in range(videos):
        action = ACTIONS[v % len(ACTIONS)] if v < len(ACTIONS) else rng.choice(ACTIONS)
        n = SHORT_FRAMES if short_every and (v + 1) % short_every == 0 else frames
        short += n < 8
        video_id = f"syn{v:05d}"
        write_frames(frame_root / video_id, render_video(action, rng.choice(COLOURS), rng.random() < 0.5, n, size))
        written += n
        rows["video_id"].append(video_id)
        rows["pos_text"].append(action)
    write_annotations(out / NAME, NAME, rows, SCHEMA, "video classification")
    return {"videos": videos, "frames": written, "short": short}


def _feature(kind: pa.DataType) -> dict:
    """The Hugging Face feature of a column (strings, integers, structs and lists of them)."""
    if pa.types.is_list(kind):
        return {"feature": _feature(kind.value_type), "_type": "Sequence"}
    if pa.types.is_struct(kind):
        return {f.name: _feature(f.type) for f in kind}
    return {"dtype": "int64" if pa.types.is_integer(kind) else "string", "_type": "Value"}


def write_annotations(repo: Path, name: str, rows: dict[str, list], schema: pa.Schema, what: str) -> None:
    """An annotation set as a one-split (``test``) Hub dataset: the parquet with its features and a
    card whose ``configs:`` header `datasets` reads."""
    repo.mkdir(parents=True, exist_ok=True)
    features = {f.name: _feature(f.type) for f in schema}
    schema = schema.with_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), repo / "test-00000-of-00001.parquet",
                   compression="snappy")
    card = yaml.safe_dump({"pretty_name": f"Synthetic {name}", "configs": [
        {"config_name": "default", "data_files": [{"split": "test", "path": "test-*"}]}]}, sort_keys=False)
    (repo / "README.md").write_text(f"---\n{card}---\n\n# {name}\n\nSynthetic {what} in MMEB-V2's layout.\n",
                                    encoding="utf-8")


def write_frames(folder: Path, images: list[Image.Image]) -> None:
    """A video's frames as VLM2Vec's ffmpeg extraction names them (``frame_%04d.jpg`` from 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        (folder / f"frame_{i + 1:04d}.jpg").write_bytes(jpeg(img))
