"""The 14 dataset builders of the synthetic MMEB: each draws its scenes from its own random stream
and derives every label, caption, answer and dialogue from what was drawn, so the content is
learnable and needs the image.

A builder returns `Example`s, raw rows before the Hub layout (`rows` turns them into MMEB-train
columns or MMEB-eval candidate lists). Train and eval call the same builder with different streams,
so eval images are fresh renderings. Only Syn-ShapeCLS-Unseen draws the held-out colour-shape
combinations; Syn-ShapeVQA-NewInst asks with an instruction no train split uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable

from PIL import Image

from pipelines.mmeb import SYNTHETIC
from pipelines.sources.synthetic.instructions import (
    CIRR_INST, CLS_INST, CROP_TGT, DIALOG_INST, DIALOG_TGT, GROUND_EVAL_INST, GROUND_TRAIN_INST, I2T_INST,
    IMAGE_TGT, NEW_VQA_INST, NEWS_INST, NIGHTS_INST, REFCOCO_INST, T2I_INST, TOK, VQA_INST, WEBQA_INST,
    WEBQA_TGT,
)
from pipelines.sources.synthetic.scenes import (
    COLOURS, HELD_OUT, POSITIONS, SEEN, SHAPES, SIZES, UNSEEN, Obj, Scene, background, caption, crop_box,
    feasible, jittered, layout, render, sample_attrs, sample_scene,
)

# --- the text vocabulary ---------------------------------------------------------------------------
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
    """What a builder needs besides its stream: the split, the image side and the file namer."""

    name: str
    split: str  # "train" | "test"
    size: int
    names: _Namer

    @property
    def train(self) -> bool:
        return self.split == "train"

    def img(self, scene_or_image, fmt: str = "JPEG") -> Img:
        """A scene rendered (or an image as it is) under the next file name."""
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
        bg = background(rng)
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


def _twin_scenes(rng: random.Random, n: int) -> list[Scene]:
    """n scenes in near-duplicate pairs: rows 2j and 2j+1 are twins, the second the first with one
    object recoloured, so their captions differ in one attribute. Twins are the confusable candidates
    that random in-batch negatives rarely contain and mined hard negatives do."""
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = sample_scene(rng, _n_objects(rng))
        scenes += [scene, _recoloured(rng, scene)]
    return scenes[:n]


def _with_twins(examples: list[Example], ctx: _Ctx, candidate: Callable) -> list[Example]:
    """Eval: each row's twin's gold (`candidate(twin example)`) among its candidates."""
    if not ctx.train:
        for i, ex in enumerate(examples):
            if i ^ 1 < len(examples):
                ex.hard_candidates = [candidate(examples[i ^ 1])]
    return examples


def _caption_t2i(rng, n, ctx):
    out = [Example(T2I_INST + caption(s) + "\n", None, IMAGE_TGT, ctx.img(s)) for s in _twin_scenes(rng, n)]
    return _with_twins(out, ctx, lambda twin: (IMAGE_TGT, twin.pos_image))


def _caption_i2t(rng, n, ctx):
    out = [Example(TOK + I2T_INST + "\n", ctx.img(s), caption(s), None) for s in _twin_scenes(rng, n)]
    return _with_twins(out, ctx, lambda twin: (twin.pos_text, None))


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
            extra = sample_attrs(rng, 1, fresh, free_pos)[0]
            new.append(extra)
            text = f"add a {extra[3]} {extra[1]} {extra[0]} {_where(extra[2])}"
        else:
            continue
        if feasible(new):
            return text, new


def _cirr(rng, n, ctx):
    out = []
    for _ in range(n):
        scene = sample_scene(rng, _n_objects(rng))
        text, attrs = _modify(rng, scene)
        target = Scene(scene.bg, layout(rng, attrs))
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


def stream(seed: int, name: str, purpose: str) -> random.Random:
    """The random stream of one dataset for one purpose (a split, or the draws made when writing it)."""
    return random.Random(f"mmeb-synthetic:{seed}:{name}:{purpose}")  # str seeds are hash-stable


def build(name: str, split: str, seed: int, rows: int, image_size: int) -> list[Example]:
    """`rows` examples of dataset `name` for `split` ("train" or the eval split), images of
    image_size x image_size pixels, drawn from the dataset's own stream for that split."""
    builder = BUILDERS[name]
    return builder.build(stream(seed, name, split), rows, _Ctx(name, split, image_size, _Namer(builder.stem)))
