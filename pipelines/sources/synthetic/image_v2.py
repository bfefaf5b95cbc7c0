"""Synthetic stand-ins for MMEB-V2's image tasks, in the layout V2's image loaders read: MMEB-eval's
annotation columns (``qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text, tgt_img_path``) as a
one-split Hub dataset ``out/<name>/test-00000-of-00001.parquet``, the images under
``out/image-tasks/<name>/``.

    write_image_v2(out, seed)   Syn-ImageCLS  image_cls     a shape's colour among the colour names
                                Syn-ImageT2I  image_t2i     a caption -> the image it describes
                                Syn-ImageVG   image_i2i_vg  grounding: an image + an object -> the object's
                                                            crop, candidates named ``path:caption``

An image is one or two coloured shapes on a light background; captions and labels name colour and
shape, so a model that sees colours can score. Every row lists ``candidates`` targets, gold first, as
MMEB-eval does. Instructions are written in MMEB-eval's style (the image token, a newline, the task
phrase). Deterministic for a seed; returns {name: rows}.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw

from pipelines.sources.synthetic.video import COLOURS, jpeg, write_annotations
from pipelines.sources.synthetic.video_families import COLOUR_NAMES

CLS, T2I, VG = "Syn-ImageCLS", "Syn-ImageT2I", "Syn-ImageVG"
SHAPES = ("circle", "square")
COLUMNS = ("qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path")
SCHEMA = pa.schema([(c, pa.list_(pa.string()) if c.startswith("tgt_t") or c == "tgt_img_path" else pa.string())
                    for c in COLUMNS])
INSTRUCTIONS = {  # (qry_inst, tgt_inst)
    CLS: ("<|image_1|>\nRepresent the given image for classification", ""),
    T2I: ("Find me an everyday image that matches the given caption:", "<|image_1|>\nRepresent the given image."),
    VG: ("<|image_1|>\nSelect the portion of the image that isolates the object labeled as: ",
         "<|image_1|>\nRepresent the given cropped image of the object."),
}


def _draw(objects: list[tuple[int, str, tuple[float, float, float, float]]], size: int) -> bytes:
    """A JPEG of shapes (colour index, shape, box as fractions) on a light background."""
    img = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    for colour, shape, (x0, y0, x1, y1) in objects:
        box = (x0 * size, y0 * size, x1 * size, y1 * size)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return jpeg(img)


def _image(out: Path, name: str, file: str, data: bytes) -> str:
    path = f"{name}/{file}"
    (out / "image-tasks" / name).mkdir(parents=True, exist_ok=True)
    (out / "image-tasks" / path).write_bytes(data)
    return path


def _row(name: str, qry_text: str, qry_img: str, tgt_text: list[str], tgt_img: list[str]) -> dict:
    return dict(zip(COLUMNS, (*INSTRUCTIONS[name][:1], qry_text, qry_img, INSTRUCTIONS[name][1], tgt_text, tgt_img)))


def _cls(out: Path, rng: random.Random, n: int, size: int) -> list[dict]:
    rows = []
    for i in range(n):
        colour, shape = i % len(COLOURS), rng.choice(SHAPES)
        path = _image(out, CLS, f"{i}.jpg", _draw([(colour, shape, (0.2, 0.2, 0.8, 0.8))], size))
        labels = [COLOUR_NAMES[colour]] + [c for j, c in enumerate(COLOUR_NAMES) if j != colour]
        rows.append(_row(CLS, "", path, labels, [""] * len(labels)))
    return rows


def _t2i(out: Path, rng: random.Random, n: int, size: int) -> list[dict]:
    paths, captions = [], []
    for i in range(n):
        colour, shape = i % len(COLOURS), SHAPES[(i // len(COLOURS)) % 2]
        paths.append(_image(out, T2I, f"{i}.jpg", _draw([(colour, shape, (0.25, 0.25, 0.75, 0.75))], size)))
        captions.append(f"A {COLOUR_NAMES[colour]} {shape}.")
    return [_row(T2I, captions[i], "", [""] * n, [paths[i]] + paths[:i] + paths[i + 1:]) for i in range(n)]


def _vg(out: Path, rng: random.Random, n: int, size: int) -> list[dict]:
    rows = []
    for i in range(n):
        left, right = rng.sample(range(len(COLOURS)), 2)
        objects = [(left, "circle", (0.05, 0.3, 0.45, 0.7)), (right, "square", (0.55, 0.3, 0.95, 0.7))]
        scene = _image(out, VG, f"{i}.jpg", _draw(objects, size))
        crops = [_image(out, VG, f"{i}_{k}.jpg", _draw([(c, s, (0.1, 0.1, 0.9, 0.9))], size // 2))
                 for k, (c, s, _) in enumerate(objects)]
        gold = i % 2
        labels = [f'"{COLOUR_NAMES[c]} {s}"' for c, s, _ in objects]
        order = [gold, 1 - gold]
        rows.append(_row(VG, labels[gold].strip('"'), scene, [labels[k] for k in order], [crops[k] for k in order]))
    return rows


def write_image_v2(out: Path, seed: int = 0, rows: int = 8, size: int = 32,
                   names: tuple[str, ...] = (CLS, T2I, VG)) -> dict[str, int]:
    """Write the sets ``names`` (default: all three) under ``out``; {name: rows written}. Each set has
    its own random stream, so a set's bytes do not depend on which others are written."""
    out = Path(out)
    written = {}
    for name, build, what in ((CLS, _cls, "image classification"), (T2I, _t2i, "text-to-image retrieval"),
                              (VG, _vg, "visual grounding")):
        if name not in names:
            continue
        table = build(out, random.Random(f"{seed}/{name}"), rows, size)
        write_annotations(out / name, name, {c: [r[c] for r in table] for c in COLUMNS}, SCHEMA, what)
        written[name] = len(table)
    return written
