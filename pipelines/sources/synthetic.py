"""The embedded synthetic miniature MMEB: a seeded generator that writes 14 small datasets in exactly
the Hugging Face Hub layout and formats of TIGER-Lab/MMEB-train and TIGER-Lab/MMEB-eval
(../shared/research/MMEB_SPEC.md §1.1-1.3, §1.6, §2.1, §2.3, §3).

    out_dir/MMEB-train/README.md                                       card with a `configs:` header
    out_dir/MMEB-train/<Subset>/original-00000-of-00001.parquet        qry, qry_image_path, pos_text,
    out_dir/MMEB-train/<Subset>/diverse_instruction-00000-of-00001.parquet   pos_image_path, neg_text,
                                                                        neg_image_path (all strings)
    out_dir/MMEB-train/images_zip/<Subset>.zip                          <Subset>/Train/<file> (rows:
                                                                        images/<Subset>/Train/<file>)
    out_dir/MMEB-eval/README.md
    out_dir/MMEB-eval/<Dataset>/test-00000-of-00001.parquet            qry_text, qry_img_path (string),
                                                                        tgt_text, tgt_img_path (list)
    out_dir/MMEB-eval/images.zip                                        <Dataset>/<file>

Only the dataset names (prefix `Syn-`, registry: `pipelines.mmeb.SYNTHETIC`) tell it from the real
thing. The quirks are reproduced on purpose: `<|image_1|>\\n` after the image token, queries ending in
`\\n`, VisDial dialogues ending `\\n\\n`, the stray image token of WebQA's text-only queries, crop file
names with spaces, the eval grounding instruction "Crop the image to to isolate ..." (sic), and
`diverse_instruction` built the way the real one was (archive/diverse_inst.py of VLM2Vec): instruction-
only queries are replaced whole, otherwise only the instruction prefix (the length of the original
instruction) is swapped; `pos_*`/`neg_*` never change.

Content is learnable and needs the image: Pillow draws 1-3 objects (8 shapes x 8 colours, 5 positions,
2 sizes) on light backgrounds, or short words; every label, caption, answer and dialogue is derived
from what was drawn. A fixed set of 16 colour-shape combinations (`HELD_OUT`) never appears in any
train image or text; only Syn-ShapeCLS-Unseen uses it. Syn-ShapeVQA-NewInst uses an instruction
never used in train. Eval images are fresh renderings from their own random streams.

Every output file is byte-deterministic for a seed: per-dataset `random.Random` streams seeded by
strings, JPEG (quality 90, 4:4:4) / PNG with fixed settings, parquet via pyarrow without timestamps,
zip entries sorted with a fixed date and fixed attributes.

CLI: `python -m pipelines.sources.synthetic OUT_DIR [--seed 0] [--train-rows 240] ...`
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import shutil
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from pipelines.mmeb import EVAL_SPLIT, SYNTHETIC, SYNTHETIC_EVAL, SYNTHETIC_TRAIN, resolve_subsets
from pipelines.prompts import MSCOCO_DIVERSE
from pipelines.schema import EVAL_COLUMNS, IMAGE_TOKEN, TRAIN_COLUMNS

log = logging.getLogger(__name__)

TOK = IMAGE_TOKEN + "\n"  # the image token as it opens `original` / eval strings
CARD = "README.md"
CARD_MARKER = "pretty_name: Synthetic miniature MMEB"  # lets a re-run replace its own earlier output
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_ATTR = 0o100644 << 16
ZIP_DIR_ATTR = (0o40755 << 16) | 0x10
JPEG_SETTINGS = {"quality": 90, "subsampling": 0, "optimize": False}
PNG_SETTINGS = {"compress_level": 6, "optimize": False}

# --- the visual vocabulary ---------------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 205, 30),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (240, 110, 190),
    "brown": (130, 85, 40),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "rectangle", "hexagon")
# object centres, as fractions of the image side; "center" is adjacent to the four others
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5),
    "right": (0.8, 0.5),
    "top": (0.5, 0.2),
    "bottom": (0.5, 0.8),
    "center": (0.5, 0.5),
}
SIZES = {"small": 6.0, "large": 10.0}  # radius of the object's bounding circle, in 1/64 of the side
BASE = 64.0  # geometry is laid out on a 64-unit canvas and scaled to image_size
JITTER = 2.0  # max centre offset per axis, units
GAP = 2.0  # min distance between two objects' bounding circles, units

# colour-shape combinations held out of every train split (2 per colour, 2 per shape)
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    (c, s)
    for ci, c in enumerate(COLOURS)
    for si, s in enumerate(SHAPES)
    if (ci - si) % len(SHAPES) in (0, len(SHAPES) // 2)
)
SEEN: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT
)
UNSEEN: tuple[tuple[str, str], ...] = tuple(sorted(HELD_OUT, key=lambda cs: (SHAPES.index(cs[1]), cs[0])))

# N24News-style domains: the domain is the shape and size of the object the caption points at
NEWS_DOMAINS: dict[tuple[str, str], str] = dict(
    zip(
        [(s, z) for s in SHAPES for z in SIZES],
        [
            "Sports", "Dance", "Real Estate", "Economy", "Travel", "Movies", "Science",
            "Television", "Health", "Well", "Style", "Fashion & Style", "Technology",
            "Media", "Food", "Books",
        ],
    )
)
WORDS = (
    "cat", "dog", "sun", "map", "box", "key", "cup", "hat", "pen", "bus", "car", "fish", "bird",
    "tree", "frog", "moon", "ship", "lamp", "book", "door", "rain", "snow", "fire", "gold", "milk",
    "rose", "bell", "kite", "nest", "wolf",
)
GUILDS = (
    "Varna", "Tolmek", "Ostrel", "Quenby", "Harlow", "Mirefen", "Dunmore", "Calder", "Ashgrove",
    "Pellin", "Brisk", "Yarrow",
)
COUNT_WORDS = ("one", "two", "three")

# --- instructions (verbatim from MMEB, MMEB_SPEC.md §2.3/§3 and VLM2Vec archive/instruction_dict.py)
# The first phrasing of each list is the original (with " " where `original` has "\n").
_VQA_PHRASINGS = [
    "<|image_1|> Represent the given image with the following question: ",
    "Use the given question to represent <|image_1|>: ",
    "Represent <|image_1|> with the provided question: ",
    "Using the given question, represent <|image_1|>: ",
    "Align the question with <|image_1|> for representation: ",
    "Match the provided question to <|image_1|> as its representation: ",
    "Represent <|image_1|> using the associated question: ",
    "<|image_1|> is represented by the given question: ",
    "Use the assigned question to express <|image_1|>: ",
    "<|image_1|> can be expressed through the provided question: ",
]
DIVERSE_PHRASINGS: dict[str, list[str]] = {
    "Syn-ShapeCLS": [  # ImageNet_1K
        "<|image_1|> Represent the given image for classification.",
        "Represent <|image_1|> for classification.",
        "Analyze <|image_1|> and represent it for classification.",
        "Use <|image_1|> to perform classification.",
        "For classification, represent <|image_1|>.",
        "Take <|image_1|> and represent it for classification.",
        "Analyze <|image_1|> and determine its category.",
        "Evaluate <|image_1|> and provide a label.",
        "Review the details in <|image_1|> for classification.",
        "Label <|image_1|> with the correct category.",
    ],
    "Syn-NewsCLS": [  # N24News
        "<|image_1|> Represent the given news image with the following caption for domain classification: ",
        "Represent <|image_1|> using the provided caption for domain classification: ",
        "Use the following caption to represent <|image_1|> for domain classification: ",
        "For domain classification, represent <|image_1|> with the given caption: ",
        "The given caption should be used to represent <|image_1|> for domain classification: ",
        "Use the caption provided to represent <|image_1|> in the context of domain classification: ",
        "With the following caption, represent <|image_1|> for domain classification: ",
        "Apply the caption to represent <|image_1|> for classification of its domain: ",
        "Use <|image_1|> and the following caption to classify its domain: ",
        "Represent the given image, <|image_1|>, for domain classification with the caption provided: ",
    ],
    "Syn-ShapeVQA": _VQA_PHRASINGS,  # OK-VQA
    "Syn-TextVQA": _VQA_PHRASINGS,  # DocVQA
    "Syn-Dialog_t2i": [  # VisDial
        "Represent the given dialogue about an image, which is used for image retrieval: ",
        "Represent the provided dialogue related to an image for the purpose of image retrieval: ",
        "Use the given dialogue about an image to aid in image retrieval: ",
        "Represent the dialogue concerning an image for use in image retrieval tasks: ",
        "Create a representation of the provided dialogue about an image to facilitate image retrieval: ",
        "Use the dialogue referencing an image as input for image retrieval: ",
        "Represent the dialogue associated with an image to support image retrieval: ",
        "Process the given dialogue about an image to make it suitable for image retrieval: ",
        "Represent the provided image-related dialogue for retrieving the corresponding image: ",
        "Utilize the dialogue about an image to perform image retrieval effectively: ",
    ],
    "Syn-Caption_t2i": [  # MSCOCO_t2i
        "Find me an everyday image that matches the given caption: ",
        "Locate an everyday image that aligns with the provided caption: ",
        "Find an image from daily life that corresponds to the given caption: ",
        "Search for an everyday image that fits the specified caption: ",
        "Identify a day-to-day image that matches the caption provided: ",
        "Retrieve an everyday image that corresponds to the given caption: ",
        "Find a corresponding everyday image based on the given caption: ",
        "Match the provided caption to an appropriate everyday image: ",
        "Search for a daily-life image that aligns with the specified caption: ",
        "Identify an everyday image that reflects the meaning of the given caption: ",
    ],
    "Syn-Caption_i2t": [  # MSCOCO_i2t
        "<|image_1|> Find an image caption describing the given everyday image.",
        "Find a caption that describes the everyday image in <|image_1|>.",
        "Locate a suitable caption for the provided everyday image <|image_1|>.",
        "Based on <|image_1|>, identify a caption describing the given everyday image.",
        "Use <|image_1|> to find a caption that matches the everyday image.",
        "Search for an image caption that fits the everyday image <|image_1|>.",
        "From <|image_1|>, retrieve a caption that describes the given everyday image.",
        "With <|image_1|> as input, locate a caption that describes the everyday image.",
        "Find a description for the everyday image represented by <|image_1|>.",
        "Use the everyday image in <|image_1|> to locate a fitting caption.",
    ],
    "Syn-CIRR": [  # CIRR
        "<|image_1|> Given an image, find a similar everyday image with the described changes: ",
        "Given <|image_1|>, identify a similar everyday image incorporating the described changes: ",
        "Use <|image_1|> to locate a comparable everyday image with the specified modifications: ",
        "From <|image_1|>, find a similar everyday image reflecting the described changes: ",
        "Find an everyday image similar to <|image_1|> but with the indicated alterations: ",
        "Locate an everyday image resembling <|image_1|> while applying the described changes: ",
        "Based on <|image_1|>, search for a similar everyday image with the specified adjustments: ",
        "Using the given <|image_1|>, retrieve a similar everyday image with the described modifications: ",
        "Identify an everyday image akin to <|image_1|> that reflects the outlined changes: ",
        "Search for an image resembling <|image_1|>, but adjusted according to the described changes: ",
    ],
    "Syn-WebQA": [  # WebQA (the token stays although the query has no image)
        "<|image_1|> Find a Wikipedia image that answers this question: ",
        "Find a Wikipedia image that answers the question based on <|image_1|>: ",
        "Using <|image_1|>, locate a Wikipedia image that provides an answer to this question: ",
        "Locate a Wikipedia image that addresses the question given <|image_1|>: ",
        "From <|image_1|>, find a Wikipedia image that answers this question: ",
        "Identify a Wikipedia image that answers the question in relation to <|image_1|>: ",
        "Based on the provided <|image_1|>, search for a Wikipedia image that answers the question: ",
        "Search for a Wikipedia image that answers the question using <|image_1|>: ",
        "Find a Wikipedia image answering this question in the context of <|image_1|>: ",
        "With <|image_1|> as reference, find a Wikipedia image that answers this question: ",
    ],
    "Syn-Grounding": [  # MSCOCO (visual grounding)
        "<|image_1|> Select the portion of the image that isolates the object labeled as ",
        *MSCOCO_DIVERSE,
    ],
}
# subsets whose query is only an instruction: diverse_instruction replaces the whole qry
INSTRUCTION_ONLY = frozenset({"Syn-ShapeCLS", "Syn-Caption_i2t"})

CLS_INST = "Represent the given image for classification"
NEWS_INST = "Represent the given news image with the following caption for domain classification: "
VQA_INST = "Represent the given image with the following question: "
# Syn-ShapeVQA-NewInst: a phrasing that no train split (original or diverse) ever uses
NEW_VQA_INST = "Look closely at the picture and encode it together with this query: "
DIALOG_INST = "Represent the given dialogue about an image, which is used for image retrieval: "
T2I_INST = "Find me an everyday image that matches the given caption: "
I2T_INST = "Find an image caption describing the given everyday image."
CIRR_INST = "Given an image, find a similar everyday image with the described changes: "
WEBQA_INST = "Find a Wikipedia image that answers this question: "
NIGHTS_INST = "Find a day-to-day image that looks similar to the provided image."
GROUND_TRAIN_INST = "Select the portion of the image that isolates the object labeled as "
GROUND_EVAL_INST = "Crop the image to to isolate the object labeled as "  # sic, as in MMEB-eval
REFCOCO_INST = "Select the portion of the image that follows the language expressions. "
IMAGE_TGT = TOK + "Represent the given image.\n"
DIALOG_TGT = TOK + "Represent the given image\n"
CROP_TGT = TOK + "Represent the given cropped image of the object"
WEBQA_TGT = TOK + "Represent the given Wikipedia image with related text information: "


# --- scenes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Obj:
    """One drawn object. cx, cy, r are in units of a 64-unit canvas; r bounds the whole shape."""

    shape: str
    colour: str
    position: str
    size: str
    cx: float
    cy: float
    r: float

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    def phrase(self) -> str:
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where}"


@dataclass(frozen=True)
class Scene:
    bg: tuple[int, int, int]
    objects: tuple[Obj, ...]
    words: tuple[tuple[str, str], ...] = ()  # (word, position) for rendered text


def _background(rng: random.Random) -> tuple[int, int, int]:
    base = rng.randint(215, 250)
    return tuple(max(0, min(255, base + rng.randint(-12, 5))) for _ in range(3))


def _feasible(attrs: list[tuple[str, str, str, str]]) -> bool:
    """Can these (shape, colour, position, size) objects be laid out without overlap? Only a large
    object in the center next to another large one cannot."""
    by_pos = {a[2]: a[3] for a in attrs}
    return not (by_pos.get("center") == "large" and sum(z == "large" for z in by_pos.values()) > 1)


def _layout(rng: random.Random, attrs: list[tuple[str, str, str, str]], jitter: float = JITTER) -> tuple[Obj, ...]:
    """Place objects at their nominal positions with random jitter; bounding circles never overlap
    (GAP apart) and stay inside the canvas. Falls back to no jitter, which always fits (`_feasible`)."""
    if not _feasible(attrs):
        raise ValueError(f"infeasible layout {attrs}")
    for attempt in range(30):
        j = jitter if attempt < 29 else 0.0
        objs = []
        for shape, colour, pos, size in attrs:
            fx, fy = POSITIONS[pos]
            r = SIZES[size] + (rng.uniform(-0.5, 0.5) if j else 0.0)
            cx = fx * BASE + rng.uniform(-j, j)
            cy = fy * BASE + rng.uniform(-j, j)
            objs.append(Obj(shape, colour, pos, size, cx, cy, r))
        inside = all(o.r + 1 <= o.cx <= BASE - o.r - 1 and o.r + 1 <= o.cy <= BASE - o.r - 1 for o in objs)
        apart = all(
            math.dist((a.cx, a.cy), (b.cx, b.cy)) >= a.r + b.r + GAP
            for i, a in enumerate(objs)
            for b in objs[i + 1 :]
        )
        if inside and apart:
            return tuple(objs)
    raise AssertionError("a feasible layout without jitter always fits")  # pragma: no cover


def _sample_attrs(
    rng: random.Random, n: int, combos=SEEN, positions=tuple(POSITIONS)
) -> list[tuple[str, str, str, str]]:
    """n objects with distinct shapes, distinct colours and distinct positions, from `combos`."""
    while True:
        chosen: list[tuple[str, str]] = []
        for c, s in rng.sample(list(combos), len(combos)):
            if all(c != c2 and s != s2 for c2, s2 in chosen):
                chosen.append((c, s))
                if len(chosen) == n:
                    break
        pos = rng.sample(list(positions), n)
        attrs = [(s, c, p, rng.choice(tuple(SIZES))) for (c, s), p in zip(chosen, pos)]
        if len(chosen) == n and _feasible(attrs):
            return attrs


def sample_scene(rng: random.Random, n_objects: int, combos=SEEN) -> Scene:
    """A random scene of n_objects objects on a light background."""
    return Scene(_background(rng), _layout(rng, _sample_attrs(rng, n_objects, combos)))


def jittered(rng: random.Random, scene: Scene) -> Scene:
    """The same objects (shape, colour, position, size) re-placed with fresh jitter, on a slightly
    different background: a 'similar image' (NIGHTS)."""
    bg = tuple(max(0, min(255, v + rng.randint(-8, 8))) for v in scene.bg)
    attrs = [(o.shape, o.colour, o.position, o.size) for o in scene.objects]
    return Scene(bg, _layout(rng, attrs), scene.words)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, start: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(start + 2 * math.pi * k / n), cy + radius * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, 0.45 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    raise ValueError(shape)


def _draw_object(draw: ImageDraw.ImageDraw, o: Obj, k: float) -> None:
    cx, cy, r, fill = o.cx * k, o.cy * k, o.r * k, COLOURS[o.colour]
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif o.shape == "square":
        h = 0.8 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif o.shape == "rectangle":
        draw.rectangle([cx - r, cy - 0.5 * r, cx + r, cy + 0.5 * r], fill=fill)
    elif o.shape == "cross":
        t = 0.3 * r
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(o.shape, cx, cy, r), fill=fill)


def render(scene: Scene, size: int) -> Image.Image:
    """Draw the scene as an RGB image of size x size pixels."""
    img = Image.new("RGB", (size, size), scene.bg)
    draw = ImageDraw.Draw(img)
    k = size / BASE
    for o in scene.objects:
        _draw_object(draw, o, k)
    if scene.words:
        font = _font(size)
        for word, pos in scene.words:
            fx, fy = POSITIONS[pos]
            draw.text((fx * size, fy * size), word, fill=(0, 0, 0), font=font, anchor="mm")
    return img


_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=max(8, round(size * 0.28)))
    return _FONTS[size]


def crop_box(o: Obj, size: int) -> tuple[int, int, int, int]:
    """Pixel box of an object's bounding circle plus a 1-unit margin, clipped to the image."""
    k = size / BASE
    m = o.r + 1.0
    return (
        max(0, math.floor((o.cx - m) * k)),
        max(0, math.floor((o.cy - m) * k)),
        min(size, math.ceil((o.cx + m) * k)),
        min(size, math.ceil((o.cy + m) * k)),
    )


def caption(scene: Scene) -> str:
    parts = [o.phrase() for o in scene.objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


# --- examples: what each dataset builder returns ---------------------------------------------------
@dataclass
class Img:
    name: str  # file name inside the dataset's image folder
    image: Image.Image
    fmt: str = "JPEG"  # JPEG | PNG


@dataclass
class Example:
    """One raw row before layout: the train writer turns it into the six MMEB-train columns, the eval
    writer into qry_text/qry_img_path and a candidate list (gold first)."""

    qry: str
    qry_image: Img | None
    pos_text: str
    pos_image: Img | None
    neg_text: str = ""
    neg_image: Img | None = None
    hard_candidates: list[tuple[str, Img | None]] = field(default_factory=list)  # eval: same-scene distractors


class _Namer:
    """Sequential image file names in the style of the mimicked dataset."""

    def __init__(self, stem: str):
        self.stem, self.n = stem, 0

    def __call__(self, fmt: str = "JPEG") -> str:
        name = f"{self.stem}{self.n}.{'jpg' if fmt == 'JPEG' else 'png'}"
        self.n += 1
        return name


@dataclass
class _Ctx:
    name: str
    split: str  # "train" | "test"
    size: int
    names: _Namer

    @property
    def train(self) -> bool:
        return self.split == "train"

    def img(self, scene_or_image, fmt: str = "JPEG") -> Img:
        image = render(scene_or_image, self.size) if isinstance(scene_or_image, Scene) else scene_or_image
        return Img(self.names(fmt), image, fmt)


def _n_objects(rng: random.Random) -> int:
    return rng.choice((1, 2, 2, 3))


# --- the 14 dataset builders ------------------------------------------------------------------------
def _shape_cls(rng, n, ctx, combos=SEEN):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, 1, combos)
        out.append(Example(TOK + CLS_INST + "\n", ctx.img(scene), scene.objects[0].label, None))
    return out


def _shape_cls_unseen(rng, n, ctx):
    return _shape_cls(rng, n, ctx, combos=UNSEEN)


_NEWS_TEMPLATES = (
    "A {colour} object at the {where} of the frame.",
    "Pictured: the {colour} piece seen at the {where}.",
    "In this photo, the {colour} item placed at the {where} draws attention.",
    "The {colour} figure at the {where}, photographed on Tuesday.",
)


def _news_cls(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        o = rng.choice(scene.objects)
        cap = rng.choice(_NEWS_TEMPLATES).format(colour=o.colour, where=o.position)
        other = "large" if o.size == "small" else "small"  # near miss: same shape, other size
        out.append(
            Example(
                TOK + NEWS_INST + cap + "\n",
                ctx.img(scene),
                NEWS_DOMAINS[(o.shape, o.size)],
                None,
                neg_text=NEWS_DOMAINS[(o.shape, other)],
            )
        )
    return out


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _where(pos: str) -> str:
    return "in the center" if pos == "center" else f"at the {pos}"


def _shape_question(rng: random.Random, scene: Scene) -> tuple[str, str, str]:
    """(question, answer, near-miss answer) about a scene."""
    o = rng.choice(scene.objects)
    kind = rng.choice(("colour", "shape", "count", "position"))
    if kind == "colour":
        wrong = [c for c in COLOURS if c != o.colour]
        return f"What color is the {o.shape}?", o.colour, rng.choice(wrong)
    if kind == "shape":
        wrong = [s for s in SHAPES if s != o.shape]
        return f"What shape is {_where(o.position)}?", o.shape, rng.choice(wrong)
    if kind == "count":
        k = len(scene.objects)
        return "How many shapes are in the image?", COUNT_WORDS[k - 1], COUNT_WORDS[k % 3]
    wrong = [p for p in POSITIONS if p != o.position]
    return f"Where is the {o.colour} {o.shape}?", o.position, rng.choice(wrong)


def _shape_vqa(rng, n, ctx, inst=VQA_INST):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        q, a, wrong = _shape_question(rng, scene)
        out.append(Example(TOK + inst + q + "\n", ctx.img(scene), a, None, neg_text=wrong))
    return out


def _shape_vqa_newinst(rng, n, ctx):
    return _shape_vqa(rng, n, ctx, inst=NEW_VQA_INST)


def _text_vqa(rng, n, ctx):
    out = []
    for i in range(n):
        bg = _background(rng)
        if rng.random() < 0.5:
            words = ((rng.choice(WORDS), "center"),)
            q, a = "What word is written in the image?", words[0][0]
        else:
            w1, w2 = rng.sample(WORDS, 2)
            words = ((w1, "top"), (w2, "bottom"))
            side = rng.choice(words)
            q, a = f"What word is written at the {side[1]}?", side[0]
        image = render(Scene(bg, (), words), ctx.size)
        if i % 10 == 3:  # a few RGBA and palette PNGs, as found in real data
            image = image.convert("RGBA")
        elif i % 10 == 7:
            image = image.quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out.append(Example(TOK + VQA_INST + q + "\n", ctx.img(image, "PNG"), a, None))
    return out


def _dialogue(rng: random.Random, scene: Scene) -> str:
    """VisDial-style turns "Q:...\\nA:...\\n" (lower case, no question marks)."""
    turns = [("how many shapes are there", COUNT_WORDS[len(scene.objects) - 1])]
    for o in scene.objects:
        turns += [
            (f"is there a {o.shape}", "yes"),
            ("what color is it", o.colour),
            ("where is it", o.position),
            ("is it big", "yes" if o.size == "large" else "no, it is small"),
        ]
    return "".join(f"Q:{q}\nA:{a}\n" for q, a in turns)


def _recoloured(rng: random.Random, scene: Scene) -> Scene:
    """Near miss: the same layout with one object in another (seen, unused) colour."""
    i = rng.randrange(len(scene.objects))
    o = scene.objects[i]
    used = {x.colour for x in scene.objects}
    options = [c for c in COLOURS if c not in used and (c, o.shape) not in HELD_OUT]
    objs = list(scene.objects)
    objs[i] = replace(o, colour=rng.choice(options))
    return Scene(scene.bg, tuple(objs))


def _dialog_t2i(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        ex = Example(DIALOG_INST + _dialogue(rng, scene) + "\n", None, DIALOG_TGT, ctx.img(scene))
        if ctx.train:
            ex.neg_image = ctx.img(_recoloured(rng, scene))
        out.append(ex)
    return out


def _caption_t2i(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        out.append(Example(T2I_INST + caption(scene) + "\n", None, IMAGE_TGT, ctx.img(scene)))
    return out


def _caption_i2t(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        out.append(Example(TOK + I2T_INST + "\n", ctx.img(scene), caption(scene), None))
    return out


def _modify(rng: random.Random, scene: Scene) -> tuple[str, list[tuple[str, str, str, str]]]:
    """A CIRR-style modification text and the modified objects' attributes."""
    attrs = [(o.shape, o.colour, o.position, o.size) for o in scene.objects]
    used_c = {a[1] for a in attrs}
    used_s = {a[0] for a in attrs}
    free_pos = [p for p in POSITIONS if p not in {a[2] for a in attrs}]
    while True:
        i = rng.randrange(len(attrs))
        s, c, p, z = attrs[i]
        kind = rng.choice(("colour", "shape", "move", "remove", "add"))
        new = list(attrs)
        if kind == "colour":
            options = [c2 for c2 in COLOURS if c2 not in used_c and (c2, s) not in HELD_OUT]
            c2 = rng.choice(options)
            new[i] = (s, c2, p, z)
            text = f"change the {s} to {c2}"
        elif kind == "shape":
            options = [s2 for s2 in SHAPES if s2 not in used_s and (c, s2) not in HELD_OUT]
            s2 = rng.choice(options)
            new[i] = (s2, c, p, z)
            text = f"turn the {c} {s} into {_a(s2)}"
        elif kind == "move" and free_pos:
            p2 = rng.choice(free_pos)
            new[i] = (s, c, p2, z)
            text = f"move the {s} to the {p2}" if p2 != "center" else f"move the {s} to the center"
        elif kind == "remove" and len(attrs) > 1:
            del new[i]
            text = f"remove the {c} {s}"
        elif kind == "add" and len(attrs) < 3:
            fresh = [cs for cs in SEEN if cs[0] not in used_c and cs[1] not in used_s]
            extra = _sample_attrs(rng, 1, fresh, free_pos)[0]
            new.append(extra)
            text = f"add a {extra[3]} {extra[1]} {extra[0]} {_where(extra[2])}"
        else:
            continue
        if _feasible(new):
            return text, new


def _cirr(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        text, attrs = _modify(rng, scene)
        target = Scene(scene.bg, _layout(rng, attrs))
        out.append(Example(TOK + CIRR_INST + text + "\n", ctx.img(scene), IMAGE_TGT, ctx.img(target)))
    return out


def _webqa(rng, n, ctx):
    out = []
    for i in range(n):
        scene = sample_scene(rng, rng.choice((1, 2)))
        guild = rng.choice(GUILDS)
        o = rng.choice(scene.objects)
        q = f"Which emblem of the {guild} guild shows {_a(o.colour)} {o.shape}?"
        image = render(scene, ctx.size)
        if i % 7 == 5:
            image = image.convert("RGBA")
        out.append(
            Example(
                TOK + WEBQA_INST + q + "\n",  # the stray token: the query has no image
                None,
                WEBQA_TGT + f"Emblem of the {guild} guild.\n",
                ctx.img(image, "PNG"),
            )
        )
    return out


def _nights(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        out.append(Example(TOK + NIGHTS_INST + "\n", ctx.img(scene), IMAGE_TGT, ctx.img(jittered(rng, scene))))
    return out


def _crop_name(i: int, o: Obj, ext: str = "jpg") -> str:
    return f"{i:06d}_object_{o.label}.{ext}"  # note the space, as in MSCOCO's "558840_object_hot dog.jpg"


def _grounding(rng, n, ctx):
    inst = GROUND_TRAIN_INST if ctx.train else GROUND_EVAL_INST
    out = []
    for i in range(n):
        scene = sample_scene(rng, rng.choice((2, 3)))
        image = render(scene, ctx.size)
        o = rng.choice(scene.objects)
        crop = Img(_crop_name(i, o), image.crop(crop_box(o, ctx.size)))
        out.append(Example(TOK + inst + f'"{o.label}"\n', Img(f"{i:06d}.jpg", image), CROP_TGT, crop))
    return out


def _ref_grounding(rng, n, ctx):
    out = []
    for i in range(n):
        scene = sample_scene(rng, rng.choice((2, 3)))
        image = render(scene, ctx.size)
        o = rng.choice(scene.objects)
        expr = "the object in the center" if o.position == "center" else f"the object at the {o.position}"
        crops = {x: Img(_crop_name(i, x), image.crop(crop_box(x, ctx.size))) for x in scene.objects}
        ex = Example(TOK + REFCOCO_INST + f'"{expr}"\n', Img(f"{i:06d}.jpg", image), CROP_TGT, crops[o])
        ex.hard_candidates = [(CROP_TGT, crops[x]) for x in scene.objects if x is not o]
        out.append(ex)
    return out


@dataclass(frozen=True)
class _Builder:
    build: Callable
    stem: str  # image file name stem
    labels: tuple[str, ...] = ()  # classification: the label set (candidates of every eval row)
    vocabulary: tuple[str, ...] = ()  # text targets: tops up distractors when other rows run short


_CLS_LABELS = tuple(f"{c} {s}" for c, s in SEEN)
_SHAPE_ANSWERS = (*COLOURS, *SHAPES, *COUNT_WORDS, *POSITIONS)
BUILDERS: dict[str, _Builder] = {
    "Syn-ShapeCLS": _Builder(_shape_cls, "image_", labels=_CLS_LABELS),
    "Syn-NewsCLS": _Builder(_news_cls, "Syn-NewsCLS_image_", labels=tuple(NEWS_DOMAINS.values())),
    "Syn-ShapeCLS-Unseen": _Builder(_shape_cls_unseen, "image_", labels=tuple(f"{c} {s}" for c, s in UNSEEN)),
    "Syn-ShapeVQA": _Builder(_shape_vqa, "Syn-ShapeVQA_image_", vocabulary=_SHAPE_ANSWERS),
    "Syn-TextVQA": _Builder(_text_vqa, "Syn-TextVQA_image_", vocabulary=WORDS),
    "Syn-ShapeVQA-NewInst": _Builder(_shape_vqa_newinst, "Syn-ShapeVQA-NewInst_image_", vocabulary=_SHAPE_ANSWERS),
    "Syn-Dialog_t2i": _Builder(_dialog_t2i, "Syn-Dialog_t2i_image_"),
    "Syn-Caption_t2i": _Builder(_caption_t2i, "Syn-Caption_t2i_image_"),
    "Syn-Caption_i2t": _Builder(_caption_i2t, "Syn-Caption_i2t_image_"),
    "Syn-CIRR": _Builder(_cirr, "Syn-CIRR_image_"),
    "Syn-WebQA": _Builder(_webqa, "Syn-WebQA_image_"),
    "Syn-NIGHTS": _Builder(_nights, "Syn-NIGHTS_image_"),
    "Syn-Grounding": _Builder(_grounding, ""),
    "Syn-RefGrounding": _Builder(_ref_grounding, ""),
}
assert set(BUILDERS) == set(SYNTHETIC), "every registry dataset needs a builder"


def _rng(seed: int, name: str, split: str) -> random.Random:
    return random.Random(f"mmeb-synthetic:{seed}:{name}:{split}")  # str seeds are hash-stable


# --- diverse_instruction ------------------------------------------------------------------------
def diversify(name: str, qry: str, rng: random.Random) -> str:
    """The diverse_instruction version of an `original` qry, built as VLM2Vec built it: a random one of
    the 10 phrasings replaces the whole qry (instruction-only subsets) or the instruction prefix."""
    phrasings = DIVERSE_PHRASINGS[name]
    choice = rng.choice(phrasings)
    if name in INSTRUCTION_ONLY:
        return choice
    first = phrasings[0]
    expected = first.replace(IMAGE_TOKEN + " ", TOK, 1)
    if not qry.startswith(expected):
        raise AssertionError(f"{name}: qry {qry[:80]!r} does not start with its instruction {expected!r}")
    return choice + qry[len(first) :]


# --- writers ---------------------------------------------------------------------------------------
def _encode(img: Img) -> bytes:
    buf = io.BytesIO()
    if img.fmt == "JPEG":
        img.image.convert("RGB").save(buf, "JPEG", **JPEG_SETTINGS)
    else:
        img.image.save(buf, "PNG", **PNG_SETTINGS)
    return buf.getvalue()


class _ZipBuffer:
    """Members collected in memory, then written in sorted order with fixed dates and attributes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, int] = {}

    def add(self, arcname: str, img: Img) -> None:
        data = _encode(img)
        if self.files.get(arcname, data) != data:
            raise AssertionError(f"two different images named {arcname}")
        self.files[arcname] = data
        self.modes[img.image.mode] = self.modes.get(img.image.mode, 0) + 1

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
    parts = dir_name.strip("/").split("/")
    return [] if parts == ["."] else ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def _hf_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata the Hub's parquet files carry (datasets' features)."""
    feats = {}
    for f in schema:
        value = {"dtype": "string", "_type": "Value"}
        feats[f.name] = {"feature": value, "_type": "Sequence"} if pa.types.is_list(f.type) else value
    return {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}


def _schema(columns: tuple[str, ...], list_columns: tuple[str, ...] = ()) -> pa.Schema:
    schema = pa.schema([(c, pa.list_(pa.string()) if c in list_columns else pa.string()) for c in columns])
    return schema.with_metadata(_hf_metadata(schema))


TRAIN_SCHEMA = _schema(TRAIN_COLUMNS)
EVAL_SCHEMA = _schema(EVAL_COLUMNS, list_columns=("tgt_text", "tgt_img_path"))


def _write_parquet(rows: dict[str, list], schema: pa.Schema, path: Path) -> int:
    table = pa.Table.from_pydict(rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")
    return table.nbytes


def _train_rows(name: str, examples: list[Example], zipbuf: _ZipBuffer, rng: random.Random) -> tuple[dict, dict]:
    member = f"{name}/Train/"  # the zips unpack into images/ (MMEB_SPEC §1.3): rows say images/<member>

    def path(img: Img | None) -> str:
        if img is None:
            return ""
        zipbuf.add(member + img.name, img)
        return "images/" + member + img.name

    original = {c: [] for c in TRAIN_COLUMNS}
    for ex in examples:
        for col, val in zip(
            TRAIN_COLUMNS,
            (ex.qry, path(ex.qry_image), ex.pos_text, path(ex.pos_image), ex.neg_text, path(ex.neg_image)),
        ):
            original[col].append(val)
    diverse = dict(original, qry=[diversify(name, q, rng) for q in original["qry"]])
    return original, diverse


def _eval_rows(name: str, examples: list[Example], k: int, zipbuf: _ZipBuffer, rng: random.Random) -> dict:
    builder = BUILDERS[name]

    def path(img: Img | None) -> str:
        if img is None:
            return ""
        zipbuf.add(f"{name}/{img.name}", img)
        return f"{name}/{img.name}"

    golds = [(ex.pos_text, path(ex.pos_image)) for ex in examples]
    rows = {c: [] for c in EVAL_COLUMNS}
    for i, ex in enumerate(examples):
        gold = golds[i]
        if builder.labels:
            rest = [label for label in builder.labels if label != gold[0]]
            rng.shuffle(rest)
            cands = [gold] + [(label, "") for label in rest]
        else:
            cands = [gold] + [(t, path(img)) for t, img in ex.hard_candidates[: k - 1]]  # exactly k
            pool = [g for j, g in enumerate(golds) if j != i]
            rng.shuffle(pool)
            pool += [(v, "") for v in builder.vocabulary]  # top-up, only reached when rows run short
            seen = {c if c[1] else c[0] for c in cands}
            for cand in pool:
                if len(cands) >= k:
                    break
                key = cand if cand[1] else cand[0]  # text candidates must differ in text
                if key not in seen:
                    seen.add(key)
                    cands.append(cand)
            if len(cands) < k:
                raise ValueError(
                    f"{name}: only {len(cands)} distinct candidates for row {i}; "
                    f"eval_rows={len(examples)} is too small for eval_candidates={k}"
                )
        rows["qry_text"].append(ex.qry)
        rows["qry_img_path"].append(path(ex.qry_image))
        rows["tgt_text"].append([t for t, _ in cands])
        rows["tgt_img_path"].append([p for _, p in cands])
    return rows


def _card(title: str, configs: list[dict], infos: list[dict]) -> str:
    header = yaml.safe_dump(
        {"pretty_name": "Synthetic miniature MMEB", "configs": configs, "dataset_info": infos},
        sort_keys=False,
        allow_unicode=True,
        width=1000,
    )
    return (
        f"---\n{header}---\n\n# {title}\n\n"
        "Synthetic miniature of MMEB written by `pipelines/sources/synthetic.py` in the Hub layout of "
        "TIGER-Lab/MMEB-train and TIGER-Lab/MMEB-eval. Images are drawn with Pillow (shapes, colours, "
        "words); every text is derived from what was drawn.\n"
    )


def _features(schema: pa.Schema) -> list[dict]:
    return [
        {"name": f.name, "sequence": "string"} if pa.types.is_list(f.type) else {"name": f.name, "dtype": "string"}
        for f in schema
    ]


def _prepare_dir(path: Path) -> None:
    """Empty `path` for writing; an existing folder is only removed if it is our own earlier output."""
    if path.exists() and any(path.iterdir()):
        card = path / CARD
        if not (card.is_file() and CARD_MARKER in card.read_text(encoding="utf-8")):
            raise FileExistsError(f"{path} exists and is not a synthetic MMEB folder; refusing to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_rows: int = 240,
    eval_rows: int = 60,
    eval_candidates: int = 16,
    image_size: int = 64,
    train_subsets: list[str] | None = None,
    eval_subsets: list[str] | None = None,
) -> dict:
    """Write the synthetic miniature MMEB under out_dir (MMEB-train/ and MMEB-eval/, Hub layout).

    Guarantees: identical bytes for identical arguments; each dataset's content depends only on
    (seed, dataset, split, sizes), not on which other subsets are selected; every image path in a row
    exists in its zip; eval candidate lists have the gold at index 0 (classification: the whole label
    set; other tasks: exactly `eval_candidates` distinct candidates). An existing MMEB-train/ or
    MMEB-eval/ is replaced only if it was written by this generator. Returns a summary dict.
    """
    if min(train_rows, eval_rows) < 1:
        raise ValueError("train_rows and eval_rows must be >= 1")
    if eval_candidates < 2:
        raise ValueError("eval_candidates must be >= 2")
    if image_size < 32:
        raise ValueError("image_size must be >= 32 pixels")
    train_names = resolve_subsets(train_subsets, SYNTHETIC_TRAIN)
    eval_names = resolve_subsets(eval_subsets, SYNTHETIC_EVAL)
    out = Path(out_dir)
    t0 = time.perf_counter()
    summary = {"seed": seed, "train": {}, "eval": {}, "images": {"train": 0, "eval": 0}, "image_modes": {}}

    def count_modes(zb: _ZipBuffer) -> None:
        for mode, n in zb.modes.items():
            summary["image_modes"][mode] = summary["image_modes"].get(mode, 0) + n

    train_dir = out / "MMEB-train"
    _prepare_dir(train_dir)
    configs, infos = [], []
    for name in tqdm(train_names, desc="synthetic MMEB-train", disable=None):
        rng = _rng(seed, name, "train")
        examples = BUILDERS[name].build(rng, train_rows, _Ctx(name, "train", image_size, _Namer(BUILDERS[name].stem)))
        zipbuf = _ZipBuffer()
        original, diverse = _train_rows(name, examples, zipbuf, _rng(seed, name, "diverse_instruction"))
        splits = []
        for split, rows in (("original", original), ("diverse_instruction", diverse)):
            nbytes = _write_parquet(rows, TRAIN_SCHEMA, train_dir / name / f"{split}-00000-of-00001.parquet")
            splits.append({"name": split, "num_bytes": nbytes, "num_examples": train_rows})
        zipbuf.write(train_dir / "images_zip" / f"{name}.zip")
        configs.append(
            {
                "config_name": name,
                "data_files": [{"split": s["name"], "path": f"{name}/{s['name']}-*"} for s in splits],
            }
        )
        infos.append({"config_name": name, "features": _features(TRAIN_SCHEMA), "splits": splits})
        summary["train"][name] = train_rows
        summary["images"]["train"] += len(zipbuf.files)
        count_modes(zipbuf)
    (train_dir / CARD).write_text(_card("MMEB-train (synthetic)", configs, infos), encoding="utf-8")

    eval_dir = out / "MMEB-eval"
    _prepare_dir(eval_dir)
    configs, infos = [], []
    zipbuf = _ZipBuffer()
    for name in tqdm(eval_names, desc="synthetic MMEB-eval", disable=None):
        rng = _rng(seed, name, EVAL_SPLIT)
        examples = BUILDERS[name].build(rng, eval_rows, _Ctx(name, EVAL_SPLIT, image_size, _Namer(BUILDERS[name].stem)))
        rows = _eval_rows(name, examples, eval_candidates, zipbuf, _rng(seed, name, "candidates"))
        nbytes = _write_parquet(rows, EVAL_SCHEMA, eval_dir / name / f"{EVAL_SPLIT}-00000-of-00001.parquet")
        configs.append({"config_name": name, "data_files": [{"split": EVAL_SPLIT, "path": f"{name}/{EVAL_SPLIT}-*"}]})
        infos.append(
            {
                "config_name": name,
                "features": _features(EVAL_SCHEMA),
                "splits": [{"name": EVAL_SPLIT, "num_bytes": nbytes, "num_examples": eval_rows}],
            }
        )
        summary["eval"][name] = eval_rows
    zipbuf.write(eval_dir / "images.zip")
    summary["images"]["eval"] = len(zipbuf.files)
    count_modes(zipbuf)
    (eval_dir / CARD).write_text(_card("MMEB-eval (synthetic)", configs, infos), encoding="utf-8")

    summary["datasets"] = sorted(set(train_names) | set(eval_names))
    summary["rows"] = {"train": train_rows * len(train_names), "eval": eval_rows * len(eval_names)}
    log.info(
        "synthetic MMEB: %d train subsets, %d eval datasets, %d images in %.1f s -> %s",
        len(train_names), len(eval_names), summary["images"]["train"] + summary["images"]["eval"],
        time.perf_counter() - t0, out,
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-rows", type=int, default=240)
    p.add_argument("--eval-rows", type=int, default=60)
    p.add_argument("--eval-candidates", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = generate(
        args.out_dir, seed=args.seed, train_rows=args.train_rows, eval_rows=args.eval_rows,
        eval_candidates=args.eval_candidates, image_size=args.image_size,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
