"""The no-grad encoder (evaluation, mining) against the plain transformers forward, at MMEB-V1 and
MMEB-V2 shapes, in items/s, with the embeddings compared.

    python3 benchmarks/gpu_encode.py --base .gpu_train/base --budget-min 4     # the device
    python benchmarks/gpu_encode.py --tiny                                      # CPU (tests)

Model: as `benchmarks/gpu_train.py --shape 2b` builds it (Qwen2-VL-2B-shaped, random bf16 weights,
`--layers` decoder layers, the base folder's tokenizer), its image processor set to VLM2Vec's range
(3136 to 1003520 pixels, `--max-pixels`), so an image reaches the model at its own size up to about
1 MP. No LoRA: encoding a merged model is the same work. Two copies are loaded: one for the plain
path, one for ours (ours patches the vision attention).

Shape classes (`--classes`), synthetic and seeded, `--items` each (text-only ones twice as many):
  v1-image  an image of random aspect (1:2 to 2:1) and 15-100 % of --max-pixels, with an
            instruction and query text of 10-40 words (MMEB-V1's I and I+T sides)
  v1-text   a text of 2-30 words, no image (V1's label and caption candidates, t2i queries)
  v2-page   a document page of about 95 % of --max-pixels, portrait, with V2's visdoc candidate
            instruction (V2's visdoc corpus)
  v2-video  8 frames of 336x336 (`--frame-side`; 8 x 336 x 336 / 28^2 / 2 = 576 tokens in Qwen2-VL's
            video layout, temporal patch 2) with V2's video candidate string (`<|video_1|> ` +
            instruction), given to the model as `videos=` (`pixel_values_videos`, `video_grid_thw`)

Paths, each over the same items of a class (one untimed warm-up batch first):
  plain     the items in their order, `--batch` at a time: the model's processor
            (`backbone.processor(text=..., images=..., padding=True)`), `model(**inputs,
            output_hidden_states=True)` under no_grad (LM head included), the last layer's hidden
            state at the last real token, L2-normalised. For v2-video the pixel values come from the
            project's video processor (transformers' video processors need torchvision; the patches
            are transformers' order, tested) and the model computes its own positions
  ours      `trainer.embed.EmbeddingModel.encode` over the items in evaluation's order
            (`trainer.eval.protocol.plan_batches`: by image size and length): the project's collator
            (torch image processing, M-RoPE positions), the inner model without the LM head,
            batched (padded) vision attention, inference mode
  ours+prefetch   the same with `encode(prefetch=True)`: collation overlaps the device's work
  evaluate  `trainer.eval.protocol.encode_items`, evaluate's own encoding loop, with the images kept
            as JPEG bytes and decoded by its image loader (what the evaluate stage does per dataset)
  ours+<compile>  after the others, for every class: `EmbeddingModel.accelerate(--compile)`
            (region: the language model as one compiled region; cuda-graphs: replayed as CUDA
            graphs) with `--multiple` padding and prefetch; `compile_s` is its warm-up pass over the
            class (compilation included), then one timed pass

Reported per class and path: items/s, seconds, peak GiB, against plain (`vs_plain`) and the largest
difference of its embeddings from plain's (`max_abs`, `cos_min`: bf16 tolerance); per class the
mean image pixels and tokens. JSON to $OUT/gpu_encode.json (or benchmarks/_work/), rewritten after
every row; `--budget-min` skips rows once the run has used that much wall time.
`benchmarks/eval_projection.py` projects the full MMEB evaluation time from this JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_train import run_record, scaled_base  # noqa: E402
from pipelines.schema import VIDEO_TOKEN  # noqa: E402
from trainer.backbone.families import load_backbone  # noqa: E402
from trainer.embed import EmbeddingModel, make_side  # noqa: E402
from trainer.eval.protocol import encode_items, plan_batches  # noqa: E402
from trainer.model.inputs import render_text  # noqa: E402
from trainer.model.pooling import last_token_pool  # noqa: E402

log = logging.getLogger("gpu_encode")
GIB = 1024 ** 3
CLASSES = ("v1-image", "v1-text", "v2-page", "v2-video")
WORDS = ("the a of image photo red blue green small large man woman dog cat street car house table water sky "
         "tree book page chart figure table question answer caption news sport food city river two three left "
         "right top bottom near under over with without shows holding wearing standing sitting").split()
INSTRUCTIONS = {"v1-image": "Represent the given image with the following question:",
                "v2-page": "Understand the content of the provided document image.",
                "v2-video": "Understand the content of the provided video."}


@dataclass
class Item:
    side: dict
    image: Image.Image | list[Image.Image] | None = None  # a video: its frames
    jpeg: bytes | list[bytes] | None = None


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def picture(rng: random.Random, width: int, height: int) -> Image.Image:
    """A few coloured boxes on a coloured ground: content does not change the work, only the size does."""
    img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.randrange(width), rng.randrange(height)
        draw.rectangle([x, y, x + width // 4, y + height // 4], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def image_item(rng: random.Random, cls: str, width: int, height: int, text: str) -> Item:
    buffer = io.BytesIO()
    picture(rng, width, height).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")  # every path sees the pixels evaluate decodes
    side = make_side(text, INSTRUCTIONS[cls], has_image=True)
    side["image"] = dict(sha256=hashlib.sha256(jpeg).hexdigest(), width=width, height=height)
    return Item(side, image, jpeg)


def video_item(rng: random.Random, frames: int, side: int) -> Item:
    """A video of `frames` frames of `side` x `side`, as evaluate holds it: a V2 side whose `video`
    lists the frames' refs, each frame JPEG bytes."""
    jpegs = []
    for _ in range(frames):
        buffer = io.BytesIO()
        picture(rng, side, side).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    refs = [dict(sha256=hashlib.sha256(j).hexdigest(), width=side, height=side) for j in jpegs]
    raw = f"{VIDEO_TOKEN} {INSTRUCTIONS['v2-video']}"
    return Item(dict(raw=raw, text="", image=None, video=refs),
                [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs], jpegs)


def make_items(cls: str, n: int, max_pixels: int, seed: int = 0, frames: int = 8,
               frame_side: int = 336) -> list[Item]:
    """`n` items of a shape class (module docstring), seeded."""
    rng = random.Random(f"{cls}-{seed}")
    items = []
    for _ in range(n):
        if cls == "v1-text":
            items.append(Item(make_side(words(rng, 2, 30))))
        elif cls == "v1-image":
            area, aspect = max_pixels * rng.uniform(0.15, 1.0), 2 ** rng.uniform(-1, 1)
            width, height = max(28, int((area * aspect) ** 0.5)), max(28, int((area / aspect) ** 0.5))
            items.append(image_item(rng, cls, width, height, words(rng, 8, 32)))
        elif cls == "v2-page":
            area = max_pixels * rng.uniform(0.9, 0.95)
            width = int((area / 1.3) ** 0.5)
            items.append(image_item(rng, cls, width, int(width * 1.3), ""))
        elif cls == "v2-video":
            items.append(video_item(rng, frames, frame_side))
        else:
            raise ValueError(f"make_items: unknown class {cls!r}")
    return items


# --------------------------------------------------------------------------------------------------
# the paths

def plain_forward(model, inputs: dict) -> np.ndarray:
    """The plain path's embeddings of one batch on the device (module docstring)."""
    out = model(**inputs, output_hidden_states=True)
    return F.normalize(last_token_pool(out.hidden_states[-1], inputs["attention_mask"]).float(), dim=-1).cpu().numpy()


def on_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()
            if isinstance(v, torch.Tensor)}


# what the plain forward takes of the project's collation of a video batch (its own positions excepted)
PLAIN_VIDEO_KEYS = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts",
                    "mm_token_type_ids")


@torch.no_grad()
def run_plain(backbone, items: list[Item], batch: int, device, dtype, collate=None) -> np.ndarray:
    """The plain path (module docstring); `collate` (a project Collator) builds the video batches."""
    model, processor = backbone.model, backbone.processor
    out = []
    for start in range(0, len(items), batch):
        rows = items[start:start + batch]
        if any(isinstance(r.image, list) for r in rows):
            enc = {k: v for k, v in collate([r.side for r in rows], [r.image for r in rows]).items()
                   if k in PLAIN_VIDEO_KEYS}
        else:
            texts = [render_text(r.side, backbone, has_image=r.image is not None) for r in rows]  # the same tokens
            pics = [r.image for r in rows if r.image is not None]
            enc = dict(processor(text=texts, images=pics or None, padding=True, return_tensors="pt"))
        out.append(plain_forward(model, on_device(enc, device, dtype)))
    return np.concatenate(out)


def run_ours(ours: EmbeddingModel, items: list[Item], batch: int, prefetch: bool) -> np.ndarray:
    """`EmbeddingModel.encode` over the items in evaluation's order (`plan_batches`), in item order."""
    order = [i for b in plan_batches([it.side for it in items], range(len(items)), batch) for i in b]
    emb = ours.encode([items[i].side for i in order], [items[i].image for i in order], batch_size=batch,
                      progress=False, prefetch=prefetch)
    out = np.empty_like(emb)
    out[order] = emb
    return out


def run_evaluate(ours: EmbeddingModel, items: list[Item], batch: int) -> np.ndarray:
    """evaluate's encoding loop (`encode_items`) with a loader that decodes the items' JPEG bytes."""
    by_sha = {it.side["image"]["sha256"]: it.jpeg for it in items if it.side.get("image")}
    by_sha.update((ref["sha256"], jpeg) for it in items if it.side.get("video")
                  for ref, jpeg in zip(it.side["video"], it.jpeg))

    def load_images(shas):
        return {s: Image.open(io.BytesIO(by_sha[s])).convert("RGB") for s in shas}

    keys = [f"{i}" for i in range(len(items))]
    emb, _ = encode_items(ours, [it.side for it in items], keys, batch_size=batch, load_images=load_images)
    return emb


# --------------------------------------------------------------------------------------------------
# the run

@dataclass
class Setup:
    """What every row of a run uses."""

    args: argparse.Namespace
    plain: object  # the plain path's backbone
    ours: EmbeddingModel
    device: torch.device
    dtype: torch.dtype
    start: float
    rows: list
    reference: dict  # plain's embeddings by class


def class_inputs(setup: Setup, cls: str):
    """The items of a class (`make_items`)."""
    a = setup.args
    return make_items(cls, a.items * (2 if cls == "v1-text" else 1), a.max_pixels, frames=a.frames,
                      frame_side=a.frame_side)


def path_function(setup: Setup, cls: str, path: str):
    a = setup.args
    if path == "plain":
        return lambda x: run_plain(setup.plain, x, a.batch, setup.device, setup.dtype, setup.ours.collator)
    if path == "evaluate":
        return lambda x: run_evaluate(setup.ours, x, a.batch)
    return lambda x: run_ours(setup.ours, x, a.batch, prefetch=path != "ours")


def measure(setup: Setup, cls: str, path: str, inputs, warm: bool = True) -> dict:
    """One row: the path over the class's inputs (after a warm-up batch when `warm`), timed."""
    fn = path_function(setup, cls, path)
    n = len(inputs)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    compile_s = None
    if warm:
        fn(inputs[:setup.args.batch])
    else:  # a compiled path: the first pass over the class compiles (and records its graphs)
        t0 = time.perf_counter()
        fn(inputs)
        compile_s = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    emb = fn(inputs)
    seconds = time.perf_counter() - t0
    row = dict(cls=cls, path=path, items=n, seconds=round(seconds, 3), items_per_s=round(n / seconds, 2),
               compile_s=compile_s, status="ok",
               peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None)
    if path == "plain":
        setup.reference[cls] = (emb, row["items_per_s"])
    elif cls in setup.reference:
        ref, rate = setup.reference[cls]
        row.update(vs_plain=round(row["items_per_s"] / rate, 3), max_abs=float(np.abs(emb - ref).max()),
                   cos_min=float((emb * ref).sum(axis=1).min()))
    return row


def class_stats(cls: str, inputs) -> dict:
    """Mean image pixels (a video: all its frames') and mean words of a class's items."""
    pixels = [sum(f.width * f.height for f in it.image) if isinstance(it.image, list) else it.image.width *
              it.image.height for it in inputs if it.image is not None]
    return dict(image_pixels=round(float(np.mean(pixels))) if pixels else 0,
                text_words=round(float(np.mean([len(it.side["raw"].split()) for it in inputs])), 1))


def load_models(args, folder: Path, device: torch.device) -> tuple[object, EmbeddingModel, torch.dtype]:
    """(the plain path's backbone, ours) from the same folder, in bf16 on a GPU (fp32 with --tiny)."""
    dtype = torch.float32 if args.tiny else torch.bfloat16
    plain = load_backbone(str(folder), torch_dtype=dtype)
    plain.model.to(device).eval()
    ours = EmbeddingModel(load_backbone(str(folder), torch_dtype=dtype), device=device, dtype=dtype, path=folder,
                          fingerprint="benchmark",
                          collation=dict(max_text_tokens=256, image_max_pixels=None, instructions=True))
    return plain, ours, dtype


def run_rows(setup: Setup, write) -> None:
    """Every class under the eager paths, then (budget allowing) every class compiled."""
    a, inputs = setup.args, {}
    for cls in a.classes:
        inputs[cls] = class_inputs(setup, cls)
        for path in ("plain", "ours", "ours+prefetch", "evaluate"):
            if (time.perf_counter() - setup.start) / 60 > a.budget_min:
                setup.rows.append(dict(cls=cls, path=path, status="skipped (time budget)"))
                continue
            log.info("%s: %s", cls, path)
            try:
                row = measure(setup, cls, path, inputs[cls])
            except Exception as exc:  # record and go on: one row's failure is a finding
                log.exception("%s %s failed", cls, path)
                row = dict(cls=cls, path=path, status=f"error: {type(exc).__name__}: {str(exc)[:300]}")
            setup.rows.append({**row, **class_stats(cls, inputs[cls])} if row["status"] == "ok" else row)
            write()
    if a.compile == "none":
        return
    setup.ours.accelerate(a.compile, pad_to_multiple_of=a.multiple, backend="aot_eager" if a.tiny else "inductor")
    for cls in a.classes:
        path = f"ours+{a.compile}"
        if (time.perf_counter() - setup.start) / 60 > a.budget_min:
            setup.rows.append(dict(cls=cls, path=path, status="skipped (time budget)"))
            continue
        log.info("%s: %s", cls, path)
        try:
            row = measure(setup, cls, "ours+prefetch", inputs[cls], warm=False)
            row["path"] = path
        except Exception as exc:
            log.exception("%s %s failed", cls, path)
            row = dict(cls=cls, path=path, status=f"error: {type(exc).__name__}: {str(exc)[:300]}")
        setup.rows.append(row)
        write()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, the base as it is, fp32, aot_eager, few items (tests)")
    p.add_argument("--base", type=Path, default=Path("models/base"), help="a save_backbone folder (Qwen2-VL)")
    p.add_argument("--layers", type=int, default=28, help="decoder layers (28 is Qwen2-VL-2B)")
    p.add_argument("--max-pixels", type=int, default=None, help="image pixel cap (default 1003520, --tiny 1024)")
    p.add_argument("--classes", default=",".join(CLASSES), help=f"comma list of {','.join(CLASSES)}")
    p.add_argument("--items", type=int, default=None, help="items per class (default 512, --tiny 6)")
    p.add_argument("--batch", type=int, default=None, help="items per batch (default 32, --tiny 4)")
    p.add_argument("--frames", type=int, default=8, help="v2-video: frames per video (VLM2Vec-V2: 8)")
    p.add_argument("--frame-side", type=int, default=None, help="v2-video: frame side (default 336, --tiny 32)")
    p.add_argument("--compile", choices=("none", "region", "cuda-graphs"), default="region")
    p.add_argument("--multiple", type=int, default=64, help="pad_to_multiple_of of the compiled path")
    p.add_argument("--budget-min", type=float, default=4.0, help="skip rows once this much wall time is used")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if bad := [c for c in args.classes if c not in CLASSES]:
        p.error(f"unknown class(es) {bad}; known: {','.join(CLASSES)}")
    for name, (tiny, full) in dict(max_pixels=(1024, 1003520), items=(6, 512), batch=(4, 32)).items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.frame_side is None:
        args.frame_side = 32 if args.tiny else 336
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    out, meta = run_record("gpu_encode.py", argv, args.out, device)
    meta.update(layers=None if args.tiny else args.layers, batch=args.batch, items=args.items,
                max_pixels=args.max_pixels, frames=args.frames, frame_side=args.frame_side)
    with tempfile.TemporaryDirectory(prefix="gpu_encode_") as tmp:
        folder = args.base
        if not args.tiny:
            t0 = time.perf_counter()
            folder = scaled_base(args.base, Path(tmp) / "base", layers=args.layers, image_pixels=args.max_pixels,
                                 min_pixels=3136, device=device)
            meta["build_s"] = round(time.perf_counter() - t0, 1)
        plain, ours, dtype = load_models(args, folder, device)
        setup = Setup(args, plain, ours, device, dtype, start, [], {})

        def write() -> None:
            out.write_text(json.dumps(dict(meta=meta, rows=setup.rows), indent=1) + "\n", encoding="utf-8")

        run_rows(setup, write)
        write()
    print(f"\nencoder: {meta['device']}, batch {args.batch}, {args.items} items per class")
    print(f"{'class':9} {'path':18} {'items/s':>9} {'vs plain':>8} {'compile s':>9} {'peak GiB':>8} {'cos min':>8}  status")
    for r in setup.rows:
        def f(key, fmt):  # "-" where a value is missing, in the column's width
            return format(r[key], fmt) if r.get(key) is not None else "-".rjust(int(fmt.split(".")[0].rstrip("dfe")))
        print(f"{r['cls']:9} {r['path']:18} {f('items_per_s', '9.2f')} {f('vs_plain', '8.3f')} "
              f"{f('compile_s', '9.1f')} {f('peak_gib', '8.2f')} {f('cos_min', '8.5f')}  {r['status']}")
    print(f"JSON: {out}  ({time.perf_counter() - start:.0f} s)")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped")
                    for r in setup.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
