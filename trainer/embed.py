"""Embedding API and CLI: load a trained (or base) model and embed sides, texts or images.

    from trainer.embed import EmbeddingModel
    model = EmbeddingModel.load("models/embedder")
    q = model.encode_texts(["a red circle"], instruction="Find me an everyday image that matches the given caption:")
    t = model.encode_images([PIL.Image.open("x.jpg")], instruction="Represent the given image.")
    (q @ t.T)                       # cosine similarities (rows are L2-normalised)

    python -m trainer.embed --model models/embedder --text "a red circle" --image x.jpg --out emb.npy
    python -m trainer.embed --model models/embedder --pair "What colour is it?" x.jpg \
        --pair-instruction "Represent the given image with the following question:"

`encode_texts`, `encode_images` and `encode_pairs` render a user's inputs in MMEB's common layout
(`make_side`). To embed exactly what evaluation embeds, pass the normalized records' own sides (the
`query` / `target` / `negatives` structs of data/normalized, which carry each dataset's template:
grounding targets without a final newline, dialogue queries ending in a blank line, ...) to
`encode(sides, images)`: its vectors are evaluate's, to float rounding, when the model, precision
and `image_max_pixels` are the same.

Model folders:
* a `save_backbone` folder (models/base), or
* an embedder folder (models/embedder) holding `merged/` (a `save_backbone` folder of the LoRA-merged
  model), `adapter/` (the peft adapter), `lineage.json` and `digests.json`. Only `merged/` is loaded.

Every file is verified against the folder's digests.json before it is read (`pipelines.digests`):
a changed or truncated file raises `IntegrityError` naming it with the expected and found sha256.

Collation settings (max_text_tokens, image_max_pixels, instructions and the input rendering:
positions, stray_image_token, image_resize, image_square, small_image_side, prompt, video_max_pixels)
come from, in order: the arguments of `load`, lineage.json (`collation`, else `train` / `params.train`),
the defaults (256, None, True, grid, strip, collator, None, None, vlm2vec, None: what a model without
those keys was trained with). They are part of the fingerprint; a rendering setting joins it only
when it differs from the default, so a model rendered as before keeps its fingerprint. `load` warns,
naming each, about rendering settings given that differ from those the model was trained with (a
VLM2Vec checkpoint scored with grid positions, say). One exception to the defaults: a dual encoder (CLIP, SigLIP)
without lineage, i.e. a base model, embeds without instructions, as the paper's baselines were scored
(paper-v1 §4.1; instructions cost CLIP 29 % there), so that its row sits beside the published
CLIP/SigLIP numbers on equal terms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pipelines import digests
from pipelines.images import to_rgb
from pipelines.schema import IMAGE_TOKEN
from trainer.model.acceleration import batch_vision_attention, compile_blocks, compile_language_model
from trainer.backbone.families import BACKBONE_JSON, load_backbone
from trainer.model.inputs import Collator, size_order
from trainer.model.embedder import Embedder

log = logging.getLogger(__name__)

# how a side becomes model input (trainer.model.inputs.Collator); absent from a lineage: this rendering
RENDERING_DEFAULTS = dict(positions="grid", stray_image_token="strip", image_resize="collator", image_square=None,
                          small_image_side=None, prompt="vlm2vec", video_max_pixels=None)
DEFAULT_COLLATION = dict(max_text_tokens=256, image_max_pixels=None, instructions=True, **RENDERING_DEFAULTS)
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def make_side(text: str = "", instruction: str = "", *, has_image: bool = False) -> dict:
    """A SIDE dict (pipelines/schema.py) in MMEB's common layout: `<|image_1|>\\n{instruction} {text}\\n`
    for a side with an image or an instruction; a bare text (a caption, a label: MMEB's text
    candidates and train targets) has no newline, so last-token pooling takes the text's own last
    token. A few datasets write theirs otherwise (module docstring: use their records' sides)."""
    instruction, text = instruction.strip(), text.strip()
    body = " ".join(p for p in (instruction, text) if p)
    prefix = f"{IMAGE_TOKEN}\n" if has_image else ""
    end = "\n" if body and (instruction or has_image) else ""
    sep = " " if instruction and text else ""
    template = prefix + ("{instruction}" if instruction else "") + sep + ("{text}" if text else "") + end
    return dict(raw=prefix + body + end, instruction=instruction, text=text, has_image_token=has_image,
                template=template, image=None)


def model_dir_of(path: Path) -> Path:
    """The save_backbone folder inside a model folder (itself, or its `merged/`)."""
    path = Path(path)
    if (path / BACKBONE_JSON).exists():
        return path
    if (path / "merged" / BACKBONE_JSON).exists():
        return path / "merged"
    raise FileNotFoundError(f"{path} is not a model folder: no {BACKBONE_JSON} in it or in {path}/merged")


def _lineage_collation(path: Path) -> dict:
    lineage_file = Path(path) / "lineage.json"
    if not lineage_file.exists():
        return {}
    lineage = json.loads(lineage_file.read_text(encoding="utf-8"))
    for section in (lineage.get("collation"), lineage.get("train"), (lineage.get("params") or {}).get("train")):
        if isinstance(section, dict) and any(k in section for k in DEFAULT_COLLATION):
            return {k: section[k] for k in DEFAULT_COLLATION if k in section}
    return {}


def fingerprint_of(model_dir: Path, collation: dict, dtype: torch.dtype = torch.float32) -> str:
    """sha256 over every file of the save_backbone folder (relative path + content), the collation
    settings and the dtype the weights compute in: it changes when weights, tokenizer, processor,
    backbone.json, collation or precision change (bf16 and fp32 embeddings differ)."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(file.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    kept = {k: v for k, v in collation.items() if k not in RENDERING_DEFAULTS or v != RENDERING_DEFAULTS[k]}
    h.update(json.dumps({**kept, "dtype": str(dtype).removeprefix("torch.")}, sort_keys=True).encode())
    return h.hexdigest()


def rendering_differences(trained_with: dict, given: dict) -> list[str]:
    """'key: trained X, given Y' for each rendering setting `given` that differs from the model's
    (`trained_with`, a lineage's collation; a key it lacks had its default)."""
    out = []
    for key, value in sorted(given.items()):
        if key in RENDERING_DEFAULTS:
            trained = trained_with.get(key, RENDERING_DEFAULTS[key])
            if trained != value:
                out.append(f"{key}: trained {trained}, given {value}")
    return out


class EmbeddingModel:
    """A loaded embedding model: `encode*` return float32 [N, D] L2-normalised numpy arrays."""

    def __init__(self, backbone, *, collation: dict, fingerprint: str, path: Path, device="cpu", dtype=None):
        self.backbone = backbone
        self.device = torch.device(device)
        self.dtype = dtype
        self.embedder = Embedder(backbone).to(self.device)
        if dtype is not None:
            self.embedder.to(dtype)
        batch_vision_attention(self.embedder.model)  # same embeddings, one attention call per vision layer
        self.embedder.eval()
        self.collator = Collator(backbone, **collation)
        self.collation = collation
        self.fingerprint = fingerprint
        self.path = path
        self.cuda_graphs = False  # `accelerate(compile="cuda-graphs")`: each batch marks a new graph step

    @classmethod
    def load(cls, path, *, device="cpu", dtype=None, max_text_tokens: int | None = None,
             image_max_pixels: int | None = None, instructions: bool | None = None,
             rendering: dict | None = None, lineage_first: bool = False) -> "EmbeddingModel":
        """`rendering`: input-rendering settings (keys of `RENDERING_DEFAULTS`) that replace the lineage's;
        with `lineage_first`, the settings (and `image_max_pixels`) a lineage records win instead, and
        the given ones fill only what it does not record (a model scored with its own rendering)."""
        path = Path(path)
        rendering = dict(rendering or {})
        if unknown := set(rendering) - set(RENDERING_DEFAULTS):
            raise ValueError(f"unknown rendering setting(s) {sorted(unknown)}; known: {sorted(RENDERING_DEFAULTS)}")
        model_dir = model_dir_of(path)
        if model_dir != path:  # models/embedder: its own files here, merged/'s where load_backbone reads them
            digests.verify(path, nested=False)
        collation = dict(DEFAULT_COLLATION)
        trained_with = _lineage_collation(path)
        if not trained_with and model_dir.name == "merged":  # models/embedder/merged: lineage sits beside it
            if (model_dir.parent / "lineage.json").is_file():
                digests.verify(model_dir.parent, nested=False)
            trained_with = _lineage_collation(model_dir.parent)
        collation.update(trained_with)
        if lineage_first:
            rendering = {k: v for k, v in rendering.items() if k not in trained_with}
            if "image_max_pixels" in trained_with:
                image_max_pixels = None
        for key, value in (("max_text_tokens", max_text_tokens), ("image_max_pixels", image_max_pixels),
                           ("instructions", instructions)):
            if value is not None:
                collation[key] = value
        if trained_with and (differ := rendering_differences(trained_with, rendering)):
            log.warning("%s is scored with other input rendering than it was trained with: %s", path,
                        "; ".join(differ))
        collation.update(rendering)
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
            dtype = _DTYPES[dtype]
        backbone = load_backbone(str(model_dir), torch_dtype=dtype)
        if backbone.kind == "dual" and instructions is None and "instructions" not in trained_with:
            collation["instructions"] = False  # the paper's CLIP-family baselines (module docstring)
        if collation["image_max_pixels"] is None:
            log.warning("%s: no image_max_pixels known (no lineage.json, none given): images reach the model at "
                        "its processor's own limit, not at the cap evaluate used (eval.image_max_pixels); pass "
                        "image_max_pixels= (CLI: --image-max-pixels) for embeddings comparable with its scores", path)
        fp = fingerprint_of(model_dir, collation, dtype or torch.float32)
        log.info("loaded embedding model %s (%s, fingerprint %s)", path, backbone.family, fp[:12])
        return cls(backbone, collation=collation, fingerprint=fp, path=path, device=device, dtype=dtype)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def accelerate(self, compile: str, *, pad_to_multiple_of: int = 64, backend: str = "inductor") -> None:
        """Compile the encoder for faster no-grad encoding (an explicit choice: compilation takes
        minutes on a 2B model and pays off over thousands of items): `compile` "blocks" (each decoder
        layer and vision block), "region" (the language model as one region, the vision blocks one by
        one) or "cuda-graphs" (that region replayed as inductor's CUDA graphs); batches are padded to
        a multiple of `pad_to_multiple_of` so that compiled code and graphs see few shapes. The
        embeddings are the same to float rounding (padding is masked)."""
        model = self.embedder.model
        if compile == "blocks":
            compile_blocks(model, backend=backend)
        elif compile in ("region", "cuda-graphs"):
            compile_language_model(model, cuda_graphs=compile == "cuda-graphs", backend=backend)
        else:
            raise ValueError(f"compile must be blocks, region or cuda-graphs, got {compile!r}")
        self.cuda_graphs = compile == "cuda-graphs"
        self.collator.pad_to_multiple_of = pad_to_multiple_of

    def _to_device(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            v = v.to(self.device)
            if self.dtype is not None and v.is_floating_point():
                v = v.to(self.dtype)
            out[k] = v
        return out

    @torch.inference_mode()
    def encode(self, sides: Sequence[dict], images: Sequence[Image.Image | None], *, batch_size: int = 32,
               progress: bool | None = None, prefetch: bool = False) -> np.ndarray:
        """float32 [N, D] L2-normalised embeddings of `sides` (row i uses images[i], or no image when
        None), in their order; more than `batch_size` of them are batched by kind and size (text,
        then images, then videos, smaller first), which pads each batch less. Normalised again in
        float32: a bf16/fp16 model's own normalisation leaves norms ~1e-3 off. Texts the collator cut
        at `max_text_tokens` are counted in a warning. `prefetch`: the next batch is collated in a
        thread while the model encodes this one (same embeddings; on a GPU the device no longer
        waits for the processor)."""
        if len(sides) != len(images):
            raise ValueError(f"{len(sides)} sides but {len(images)} images")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.embedder.eval()
        # more than one batch: rows sorted by kind and size (text, images, videos), so that each batch
        # pads to a length near its rows' own; the vectors come back in the caller's order
        order = size_order(sides, images) if len(sides) > batch_size else list(range(len(sides)))
        starts = range(0, len(sides), batch_size)
        show = progress if progress is not None else len(starts) > 4
        chunks, truncated = [], self.collator.truncated
        jobs = [partial(self.collator, [sides[i] for i in order[start:start + batch_size]],
                        [images[i] for i in order[start:start + batch_size]]) for start in starts]
        for batch in tqdm(prefetched(jobs) if prefetch else (job() for job in jobs), total=len(jobs), desc="embed",
                          unit="batch", disable=not show):
            if self.cuda_graphs:  # the last batch's graph outputs were copied out: they may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            emb = self.embedder(self._to_device(batch))
            chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.collator.truncated > truncated:
            log.warning("%d of %d texts are longer than max_text_tokens=%d and are cut at the end (as in training "
                        "and evaluation)", self.collator.truncated - truncated, len(sides), self.collator.max_text_tokens)
        out = np.empty((len(sides), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
        return out

    def encode_texts(self, texts: Sequence[str], *, instruction: str = "", batch_size: int = 32) -> np.ndarray:
        """Embeddings of plain texts, each rendered as `{instruction} {text}\\n` (without an
        instruction: the bare text, as MMEB's text candidates are written)."""
        sides = self._user_sides(_sequence_of(texts, "texts", str), instruction, has_image=False)
        return self.encode(sides, [None] * len(sides), batch_size=batch_size)

    def encode_images(self, images: Sequence[Image.Image | str | Path], *, instruction: str = "", text: str = "",
                      batch_size: int = 32) -> np.ndarray:
        """Embeddings of images (PIL images or file paths), each rendered as
        `<image>\\n{instruction} {text}\\n` with the same `text` for every image (one text per image:
        `encode_pairs`)."""
        images = [open_image(i) for i in _sequence_of(images, "images", (Image.Image, str, Path))]
        sides = self._user_sides([text] * len(images), instruction, has_image=True)
        return self.encode(sides, images, batch_size=batch_size)

    def encode_pairs(self, texts: Sequence[str], images: Sequence[Image.Image | str | Path], *,
                     instruction: str = "", batch_size: int = 32) -> np.ndarray:
        """Embeddings of (text, image) pairs, one multimodal input each, rendered as
        `<image>\\n{instruction} {text}\\n` (a VQA query, an image with its caption)."""
        texts = _sequence_of(texts, "texts", str)
        images = [open_image(i) for i in _sequence_of(images, "images", (Image.Image, str, Path))]
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images: pairs need one of each")
        sides = self._user_sides(texts, instruction, has_image=True)
        return self.encode(sides, images, batch_size=batch_size)

    def _user_sides(self, texts: list[str], instruction: str, *, has_image: bool) -> list[dict]:
        """`make_side` of a user's texts. Refused: the image placeholder in a text or instruction (the
        collator would drop it, or take it for the image's place). Texts over `max_text_tokens` are
        cut at the end as in training and evaluation, and `encode` warns with their count."""
        for t in (instruction, *texts):
            if IMAGE_TOKEN in t:
                raise ValueError(f"text or instruction contains the image placeholder {IMAGE_TOKEN}: {t[:80]!r}; "
                                 "images are passed separately")
        return [make_side(t, instruction, has_image=has_image) for t in texts]


def prefetched(jobs: Sequence[Callable[[], dict]]) -> Iterator[dict]:
    """The jobs' results in order, each next job running in a thread while the caller uses the last result."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate") as pool:
        pending = pool.submit(jobs[0])
        for job in jobs[1:]:
            result = pending.result()
            pending = pool.submit(job)
            yield result
        yield pending.result()


def _sequence_of(items, name: str, kind) -> list:
    """`items` as a list, each of `kind`: a bare string (which would embed one row per character) or
    image is refused."""
    if isinstance(items, (str, bytes, Path, Image.Image)):
        raise TypeError(f"{name} must be a list, not a single {type(items).__name__}: pass [{name[:-1]}]")
    items = list(items)
    wrong = [type(i).__name__ for i in items if not isinstance(i, kind)]
    if wrong:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise TypeError(f"{name}: expected {' or '.join(k.__name__ for k in kinds)} items, got {sorted(set(wrong))}")
    return items


def open_image(image: Image.Image | str | Path) -> Image.Image:
    """An RGB image decoded now, from a PIL image or a file path (an image opened in a `with` block
    that has since closed its file fails here, with its name, instead of deep in the processor). An
    image that is RGB already (one this function returned, say) is returned as it is, not copied."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return to_rgb(im)
    try:
        image.load()
    except (OSError, ValueError, AttributeError, AssertionError) as exc:
        raise ValueError(f"image {getattr(image, 'filename', '') or image!r} cannot be read "
                         f"(closed or truncated?): {exc}") from exc
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    return to_rgb(image)


# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="models/base or models/embedder")
    parser.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    parser.add_argument("--pair", action="append", nargs=2, default=[], metavar=("TEXT", "IMAGE"),
                        help="a text and an image embedded together as one input (repeatable)")
    parser.add_argument("--instruction", default="", help="instruction for the texts")
    parser.add_argument("--image-instruction", default="", help="instruction for the images")
    parser.add_argument("--pair-instruction", default="", help="instruction for the pairs")
    parser.add_argument("--out", help="write the embeddings (texts, then images, then pairs) to this .npy file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=sorted(_DTYPES))
    parser.add_argument("--image-max-pixels", type=int, default=None,
                        help="image pixel cap (default: the model's lineage; evaluate uses eval.image_max_pixels)")
    parser.add_argument("--max-text-tokens", type=int, default=None, help="text token cap (default: the lineage's)")
    parser.add_argument("--no-instructions", action="store_true", help="drop instructions (the paper's ablation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.text or args.image or args.pair):
        parser.error("give at least one --text, --image or --pair")
    if any(not t.strip() for t in args.text + [t for t, _ in args.pair]):
        parser.error("--text and --pair texts must not be empty")
    for option, value in (("--image-max-pixels", args.image_max_pixels), ("--max-text-tokens", args.max_text_tokens)):
        if value is not None and value < 1:
            parser.error(f"{option} must be a positive number")
    if args.out and (not args.out.endswith(".npy") or Path(args.out).is_dir()):
        parser.error(f"--out {args.out}: give a .npy file path")  # before minutes of loading and encoding

    def read(file: str) -> Image.Image:
        try:
            return open_image(file)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # the last is no OSError
            parser.error(f"cannot read image {file}: {e}")

    images, pair_images = [read(f) for f in args.image], [read(f) for _, f in args.pair]
    try:  # a user's mistake (a folder that is no model, an image the processor refuses) is no traceback
        model = EmbeddingModel.load(args.model, device=args.device, dtype=args.dtype,
                                    max_text_tokens=args.max_text_tokens, image_max_pixels=args.image_max_pixels,
                                    instructions=False if args.no_instructions else None)
        parts, labels = [], []
        if args.text:
            parts.append(model.encode_texts(args.text, instruction=args.instruction))
            labels += [f"text:{t[:30]}" for t in args.text]
        if images:
            parts.append(model.encode_images(images, instruction=args.image_instruction))
            labels += [f"image:{Path(f).name}" for f in args.image]
        if args.pair:
            parts.append(model.encode_pairs([t for t, _ in args.pair], pair_images, instruction=args.pair_instruction))
            labels += [f"pair:{t[:20]}+{Path(f).name}" for t, f in args.pair]
    except (FileNotFoundError, ValueError, RuntimeError, AssertionError) as e:
        parser.error(f"{type(e).__name__}: {e}")
    emb = np.concatenate(parts)
    print(f"model {args.model} ({model.backbone.family}), fingerprint {model.fingerprint[:16]}")
    print(f"embeddings: shape {emb.shape}, dtype {emb.dtype}")
    sims = emb @ emb.T
    width = max(len(s) for s in labels)
    print("cosine similarities:")
    for label, row in zip(labels, sims):
        print(f"  {label:<{width}}  " + " ".join(f"{v:+.3f}" for v in row))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, emb, allow_pickle=False)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
