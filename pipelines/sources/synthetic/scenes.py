"""Scenes of the synthetic MMEB: the visual vocabulary (8 shapes x 8 colours, 5 positions, 2 sizes),
random layouts without overlaps, and their Pillow rendering, crop boxes and captions.

Geometry is laid out on a 64-unit canvas and scaled to the image side, so a scene looks the same at
every `image_size`. A fixed set of 16 colour-shape combinations (`HELD_OUT`, 2 per colour and 2 per
shape) is reserved for the out-of-distribution eval dataset; `SEEN` holds the other 48.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

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


def background(rng: random.Random) -> tuple[int, int, int]:
    base = rng.randint(215, 250)
    return tuple(max(0, min(255, base + rng.randint(-12, 5))) for _ in range(3))


def feasible(attrs: list[tuple[str, str, str, str]]) -> bool:
    """Can these (shape, colour, position, size) objects be laid out without overlap? Only a large
    object in the center next to another large one cannot."""
    by_pos = {a[2]: a[3] for a in attrs}
    return not (by_pos.get("center") == "large" and sum(z == "large" for z in by_pos.values()) > 1)


def layout(rng: random.Random, attrs: list[tuple[str, str, str, str]], jitter: float = JITTER) -> tuple[Obj, ...]:
    """Place objects at their nominal positions with random jitter; bounding circles never overlap
    (GAP apart) and stay inside the canvas. Falls back to no jitter, which always fits (`feasible`)."""
    if not feasible(attrs):
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


def sample_attrs(
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
        if len(chosen) == n and feasible(attrs):
            return attrs


def sample_scene(rng: random.Random, n_objects: int, combos=SEEN) -> Scene:
    """A random scene of n_objects objects on a light background."""
    return Scene(background(rng), layout(rng, sample_attrs(rng, n_objects, combos)))


def jittered(rng: random.Random, scene: Scene) -> Scene:
    """The same objects (shape, colour, position, size) re-placed with fresh jitter, on a slightly
    different background: a 'similar image' (NIGHTS)."""
    bg = tuple(max(0, min(255, v + rng.randint(-8, 8))) for v in scene.bg)
    attrs = [(o.shape, o.colour, o.position, o.size) for o in scene.objects]
    return Scene(bg, layout(rng, attrs), scene.words)


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

