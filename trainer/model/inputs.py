"""Prompt rendering and batch collation: record SIDEs + images -> model-ready tensors.

Rendering (`render_text`) writes VLM2Vec's text: the MMEB source string (`side["raw"]`) with MMEB's
placeholder `<|image_1|>` swapped for the backbone's image token (a bare `<|image_pad|>` for
Qwen2-VL, `<image>` for LLaVA / Idefics3 / SmolVLM / PaliGemma), no chat template (as VLM2Vec's
evaluation and training code write them; the `Collator`'s `prompt` setting picks Qwen3-VL-Embedding's
or GME's chat input instead, `trainer.model.prompt_styles`). Two cases are `Collator` settings, both
logged once:
* a side WITHOUT an image whose raw string still carries the placeholder (the WebQA / EDIS quirk:
  their text-only queries keep the token): `stray_image_token="keep"` swaps it for the backbone's
  image token like any other, which the model then embeds as a plain text token (VLM2Vec: its
  forward puts image features only into the rows that have pixels); `"strip"` removes it (and the
  newline or space after it);
* a side WITH an image whose raw string lacks the placeholder gets `<image token>\n` prepended.

What VLM2Vec's Qwen2-VL / Qwen2.5-VL inputs need beyond the text (`Collator` settings): its image tokens
carry sequential 1-D positions, not the M-RoPE grid (`positions="sequential"`,
`trainer.model.positions`); its V1 checkpoints saw every image squashed to 1344 x 1344
(`image_square`); its V2 code resizes an image with a side under 28 px to 56 x 56 before the
processor (`small_image_side=28`); it leaves every other resize to the processor, capped at its
max_pixels (`image_resize="processor"`), where this project's default scales an image to the cap
first (aspect kept) and the processor then snaps it to its grid, which may give another size. A text-only row that keeps a stray image token cannot share a
forward with rows that have pixels (transformers counts every image token of the batch against the
image features), so the Collator marks such rows (`stray_token`) and `trainer.model.embedder`
encodes the text rows of such a batch apart.

MMEB-V2 sides (`pipelines.schema.V2_SIDE`: training pairs from the shards, evaluation items) render
by the same rules from their `raw`. They have no instruction / text split, so `instructions=False`
keeps their whole raw text without its placeholders (`side_text`, `v2_text`): training and evaluation
give such a side the same text either way.

Collation (`Collator`) turns a mixed batch (some rows with an image, some without) into one dict of
tensors. Text is truncated to `max_text_tokens` BEFORE the processor expands the image token, so an
image's tokens are never cut (the crash of VLM2Vec issues #38/#79). Rows with and without images are
run through the processor separately and merged row by row (PaliGemma's processor refuses rows
without images; the others accept it, so the same path serves all). Because VLM inputs are not
row-splittable tensors (Qwen's `pixel_values` are patches of all images), GradCache-style chunking
must call the Collator per chunk of sides ("late processing"), not slice its output.

Video (Qwen2-VL / Qwen2.5-VL, `videos=`): a row whose visual input is a list of frames is a video row.
Its raw string's `<|video_1|>` becomes the backbone's `<|video_pad|>` (VLM2Vec-V2's string), the frames
go through `trainer.model.video_processing.QwenVideoProcessor` (after the same resize rules as
images), the token is expanded to the video's token count, and its tokens get `mm_token_type_ids` 2;
the batch carries `pixel_values_videos`, `video_grid_thw` (and Qwen2.5-VL's `second_per_grid_ts`), and
its M-RoPE positions cover the video grids. A family without video input refuses video rows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from pipelines.images import max_pixels_size, to_rgb
from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN
from trainer.model import image_processing, positions, prompt_styles
from trainer.model.positions import FAMILIES as POSITION_FAMILIES
from trainer.model.video_processing import TIMESTAMP_FAMILIES, VIDEO_TOKENS, QwenVideoProcessor

STRAY_RULES = ("strip", "keep")  # a text-only side's <|image_1|>: removed | the backbone's token, as text
RESIZERS = ("collator", "processor")  # who brings an image to image_max_pixels (VLM2Vec: the processor)
# processors that take one row per call and write image tokens as negative ids (Phi-3-V: its own
# code; MMEB's `<|image_1|>` is its placeholder, kept in the text, and a stray one stays plain text)
PER_ROW_FAMILIES = ("phi3_v",)
# families without video input whose processors take several images a row: a video's frames are
# given as that many images, one image token each in the video placeholder's place
FRAME_IMAGE_FAMILIES = ("idefics3", "smolvlm")
VISION_MARKERS = ("<|vision_start|>", "<|vision_end|>")  # Qwen's tokens around an image's or video's tokens

log = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


@dataclass(frozen=True)
class PromptFormat:
    """What rendering needs to know about a backbone (picklable, no model)."""

    family: str
    kind: str
    image_token: str
    video_token: str | None = None  # the token of a family that takes `videos=`; None: it takes none


def _format_of(backbone) -> PromptFormat:
    return PromptFormat(backbone.family, backbone.kind, backbone.image_token, VIDEO_TOKENS.get(backbone.family))


def _strip_placeholder(raw: str) -> str:
    """`raw` without MMEB's image placeholder and the one newline/space right after it."""
    out = raw
    for sep in ("\n", " ", ""):
        out = out.replace(IMAGE_TOKEN + sep, "")
    return out


def side_text(side: dict) -> str:
    """The content part of a side, what `instructions=False` keeps: a V1 SIDE's `text`. An MMEB-V2 side
    (`pipelines.schema.V2_SIDE`, training pair or evaluation item) has no instruction / text split, so
    its `raw` without its image and video placeholders, stripped: the instruction stays (logged once)."""
    if "text" in side:  # a V1 SIDE, or an evaluation item (a V2 one's text is `v2_text` of its raw)
        return side["text"] or ""
    _warn_once("v2_text", "MMEB-V2 sides have no instruction / text split: without instructions they keep "
               "their whole raw text, placeholders removed (as evaluation renders them)")
    return v2_text(side.get("raw") or "")


def v2_text(raw: str) -> str:
    """An MMEB-V2 side's text without instructions: `raw` without its placeholders, stripped."""
    return raw.replace(IMAGE_TOKEN, "").replace(VIDEO_TOKEN, "").strip()


def render_text(side: dict, backbone, *, instructions: bool = True, has_image: bool,
                stray_image_token: str = "strip", has_video: int = 0) -> str:
    """The text fed to the backbone for one SIDE (see the module docstring).

    VLMs, `instructions=True`: VLM2Vec's exact input string (`raw` with the placeholder swapped).
    VLMs, `instructions=False` (the paper's ablation): `"<image token>\\n" + text + "\\n"` (each part
    only when present), i.e. the same layout without the instruction.
    Dual encoders (CLIP/SigLIP): plain text without any image token: instruction + text stripped of
    surrounding whitespace (`instructions=True`) or the text alone.
    `stray_image_token` ("strip" | "keep") is the rule for the placeholder of a VLM side without image.
    The result is never empty for a side without image (ValueError instead: a dual encoder would give
    it an all-zero embedding, a VLM nothing to pool), and holds the VLM's image token exactly once per
    image or kept placeholder (ValueError for a source text that contains it, e.g. "<image>" for LLaVA: the processor
    would expand it and find no image for it).
    A side with a video (`has_video`: its number of frames): `_render_video`.
    """
    if stray_image_token not in STRAY_RULES:
        raise ValueError(f"stray_image_token must be one of {STRAY_RULES}, got {stray_image_token!r}")
    fmt = _format_of(backbone)
    if has_video:
        return _render_video(side, fmt, instructions, int(has_video))
    raw = side.get("raw") or ""
    expected = int(has_image)  # image tokens in the result
    if fmt.kind == "dual":
        text = _strip_placeholder(raw).strip() if instructions else side_text(side).strip()
    elif instructions:
        n = raw.count(IMAGE_TOKEN)
        if has_image:
            if n == 0:
                _warn_once("prepend", "a side with an image has no %s in its text; prepending the image token",
                           IMAGE_TOKEN)
                text = f"{fmt.image_token}\n{raw}"
            elif n == 1:
                text = raw.replace(IMAGE_TOKEN, fmt.image_token)
            else:
                raise ValueError(f"side has {n} image placeholders but one image: {raw[:80]!r}")
        elif n and stray_image_token == "keep" and fmt.image_token:
            _warn_once("keep", "keeping %s of sides without an image as a text token (WebQA/EDIS quirk, as "
                       "VLM2Vec)", IMAGE_TOKEN)
            text, expected = raw.replace(IMAGE_TOKEN, fmt.image_token), n
        else:
            if n:
                _warn_once("strip", "removing %s from sides without an image (WebQA/EDIS quirk)", IMAGE_TOKEN)
            text = _strip_placeholder(raw)
    else:
        body = side_text(side).strip()
        parts = ([fmt.image_token] if has_image else []) + ([body] if body else [])
        text = "\n".join(parts) + "\n" if parts else ""
    if not has_image and not text.strip():
        raise ValueError(f"side renders to empty text and has no image: {side!r:.200}")
    if fmt.image_token and text.count(fmt.image_token) != expected:  # the source text holds it
        raise ValueError(f"side text holds the backbone's image token {fmt.image_token!r} itself: {raw[:80]!r}")
    return text


def _render_video(side: dict, fmt: PromptFormat, instructions: bool, frames: int) -> str:
    """A video side's text: `raw` with its one video placeholder swapped for the backbone's video
    token (VLM2Vec-V2's input string), or without instructions `"<video token>\\n" + text + "\\n"`.
    A family that takes several images a row (`FRAME_IMAGE_FAMILIES`) gets one image token per frame
    in the placeholder's place instead. ValueError for any other family, and for a raw string without
    exactly one video placeholder, with an image placeholder, or holding the backbone's token itself."""
    if fmt.video_token:
        token = fmt.video_token
    elif fmt.family in FRAME_IMAGE_FAMILIES:
        token = fmt.image_token * frames
    else:
        raise ValueError(f"{fmt.family} takes no video input: give it the frames as images instead "
                         "(eval.video_input frames_mean)")
    raw = side.get("raw") or ""
    if raw.count(VIDEO_TOKEN) != 1 or IMAGE_TOKEN in raw or (fmt.video_token or fmt.image_token) in raw:
        raise ValueError(f"a side with a video needs exactly one {VIDEO_TOKEN} and no image placeholder: {raw[:80]!r}")
    if instructions:
        return raw.replace(VIDEO_TOKEN, token)
    body = side_text(side).strip()
    return f"{token}\n" + (f"{body}\n" if body else "")


def _is_video(image) -> bool:
    """Whether a row's visual input is a video: its frames as a list (a single image is a PIL image)."""
    return isinstance(image, (list, tuple))


def input_kind(image) -> int:
    """A row's input kind, the first key of `size_order`: 0 text only, 1 an image, 2 a video (its
    frames)."""
    return 2 if _is_video(image) else int(image is not None)


def input_size(side: dict, image) -> tuple[int, int]:
    """What a side's length grows with, inside its kind: its pixels (a video's frames together),
    then its text's characters."""
    frames = image if _is_video(image) else [] if image is None else [image]
    return sum(f.width * f.height for f in frames), len(side.get("raw") or "")


def size_order(sides: Sequence[dict], images: Sequence) -> list[int]:
    """Row indices stably sorted by `input_kind`, then `input_size` (as evaluation orders its
    items): rows batched in this order pad to a length near their own."""
    return sorted(range(len(sides)), key=lambda i: (input_kind(images[i]), *input_size(sides[i], images[i])))


def resize_to_max_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """RGB copy of `image` scaled down (aspect kept, bicubic) so that width*height <= max_pixels.
    Transparency goes onto white, as the normalize stage and transformers' processors put it
    (`pipelines.images.to_rgb`; a plain `convert("RGB")` would show the hidden colours, often black)."""
    image = to_rgb(image)
    if max_pixels is None or image.width * image.height <= max_pixels:
        return image
    return image.resize(max_pixels_size(image.width, image.height, max_pixels), Image.BICUBIC)


# keys that hold one entry per row of the text sequence (padded when merging sub-batches)
_SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}


class Collator:
    """Sides + images -> model-ready tensors (picklable: holds the processor, never the model).

    `torch_images` (default on) swaps a Qwen2-VL / Qwen2.5-VL image processor for
    `trainer.model.image_processing.QwenImageProcessor`: the same tensors, several times faster.
    `mrope_positions` (default on) adds Qwen2-VL / Qwen2.5-VL batches with images their M-RoPE
    `position_ids` [3, B, L] (`trainer.model.positions`), which the model would otherwise compute itself
    with a device sync per row and step. `pad_to_multiple_of` (VLMs) pads every batch's length up to
    a multiple of it, on the tokenizer's padding side: a handful of lengths instead of one per batch,
    for compiled code and CUDA graphs, which are specialised per shape; the embeddings are the same
    (padding is masked; `trainer.model.pooling` finds the last real token on either side).

    Output for VLMs: the processor's keys (input_ids, attention_mask, pixel_values, image_grid_thw,
    mm_token_type_ids, ... per family) plus `has_image` (bool [B]). Dual encoders: input_ids,
    attention_mask, pixel_values (only the rows with an image, in row order), `has_image` and
    `has_text` (bool [B]).
    """

    def __init__(self, backbone, *, max_text_tokens: int = 256, image_max_pixels: int | None = None,
                 instructions: bool = True, torch_images: bool = True, mrope_positions: bool = True,
                 pad_to_multiple_of: int = 1, positions: str = "grid", stray_image_token: str = "strip",
                 image_resize: str = "collator", image_square: int | None = None,
                 small_image_side: int | None = None, prompt: str = "vlm2vec", video_max_pixels: int | None = None):
        if max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1, got {max_text_tokens}")
        if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be an integer >= 1, got {pad_to_multiple_of!r}")
        self.pad_to_multiple_of = pad_to_multiple_of
        self._check_rendering(positions, stray_image_token, image_resize, image_square, small_image_side,
                              video_max_pixels)
        self.positions, self.stray_image_token, self.image_resize = positions, stray_image_token, image_resize
        self.image_square, self.small_image_side = image_square, small_image_side
        self.format = _format_of(backbone)
        prompt_styles.check_prompt(prompt, self.format.family, stray_image_token)
        self.prompt, self.video_max_pixels = prompt, video_max_pixels
        processor = backbone.processor
        if image_max_pixels:  # Qwen2-VL / Qwen2.5-VL: the processor's own max_pixels lowered to the cap
            processor, own = image_processing.cap_max_pixels(processor, image_max_pixels)
            if own is not None and own < image_max_pixels:
                _warn_once("max_pixels", "image_max_pixels %d is above the image processor's own max_pixels %d, "
                           "which wins: images reach the model at most at %d pixels", image_max_pixels, own, own)
        # Qwen2-VL / Qwen2.5-VL: transformers' image tensors computed in torch (trainer.model.image_processing)
        self.processor = image_processing.install(processor) if torch_images else processor
        self.max_text_tokens = int(max_text_tokens)
        self.image_max_pixels = image_max_pixels
        self.instructions = bool(instructions)
        self.truncated = 0  # texts `__call__` cut at max_text_tokens so far (VLM backbones)
        # Qwen2-VL / Qwen2.5-VL: M-RoPE positions computed here, not in the model (trainer.model.positions)
        self._mrope = None
        if mrope_positions and self.format.family in POSITION_FAMILIES:
            token_id = getattr(self.processor, "image_token_id", None)
            merge = getattr(getattr(self.processor, "image_processor", None), "merge_size", None)
            if isinstance(token_id, int) and isinstance(merge, int):
                self._mrope = (token_id, merge)
        # VLM2Vec's positions: passed for every batch of an M-RoPE family (other families' positions are 1-D)
        self._sequential = positions == "sequential" and self.format.family in POSITION_FAMILIES
        token_id = getattr(self.processor, "image_token_id", None)
        if token_id is None and self.format.kind != "dual" and self.format.image_token:
            token_id = self.tokenizer.convert_tokens_to_ids(self.format.image_token)
        if self.format.family in PER_ROW_FAMILIES:  # no image token id: a kept placeholder is text
            token_id = None
        self._image_token_id = token_id  # to find kept stray placeholders in text-only rows
        self._video = self._video_input(backbone)

    def _video_input(self, backbone) -> tuple[QwenVideoProcessor, int, float] | None:
        """(video processor, video token id, Qwen2.5-VL's tokens per second or None) of a family that
        takes `videos=` (None for the others: the Collator then refuses rows with a video). Its frames
        take the image processor's bounds, capped at `video_max_pixels` when that is set."""
        if not self.format.video_token:
            return None
        family = self.format.family
        images = self.processor
        if self.video_max_pixels is not None:
            images, _ = image_processing.cap_max_pixels(backbone.processor, self.video_max_pixels)
        processor = QwenVideoProcessor(images.image_processor, seconds_per_grid=family == "qwen2_5_vl")
        vision = getattr(getattr(getattr(backbone, "model", None), "config", None), "vision_config", None)
        per_second = getattr(vision, "tokens_per_second", None) if family == "qwen2_5_vl" else None
        token_id = self.tokenizer.convert_tokens_to_ids(self.format.video_token)
        return processor, token_id, per_second

    @staticmethod
    def _check_rendering(scheme, stray, resize, square, small, video_pixels) -> None:
        if scheme not in positions.SCHEMES:
            raise ValueError(f"positions must be one of {positions.SCHEMES}, got {scheme!r}")
        if stray not in STRAY_RULES:
            raise ValueError(f"stray_image_token must be one of {STRAY_RULES}, got {stray!r}")
        if resize not in RESIZERS:
            raise ValueError(f"image_resize must be one of {RESIZERS}, got {resize!r}")
        for name, value in (("image_square", square), ("small_image_side", small), ("video_max_pixels", video_pixels)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def settings(self) -> dict:
        """The settings that change the tensors (part of an embedding model's fingerprint)."""
        return dict(max_text_tokens=self.max_text_tokens, image_max_pixels=self.image_max_pixels,
                    instructions=self.instructions, positions=self.positions,
                    stray_image_token=self.stray_image_token, image_resize=self.image_resize,
                    image_square=self.image_square,
                    small_image_side=self.small_image_side, prompt=self.prompt,
                    video_max_pixels=self.video_max_pixels)

    # -- text --------------------------------------------------------------------------------------
    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cut(self, piece: str, budget: int) -> str:
        """The longest token-aligned prefix of `piece` that tokenizes to <= budget tokens."""
        if budget <= 0:
            return ""
        enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= budget:
            return piece
        k = budget
        while k > 0:
            prefix = piece[: offsets[k - 1][1]]
            if self._count(prefix) <= budget:
                return prefix
            k -= 1
        return ""

    def truncate(self, text: str) -> str:
        """`text` with at most `max_text_tokens` text tokens; every image token is kept.

        The text between image tokens is tokenized piece by piece and cut at the end once the budget
        is spent (VLM2Vec truncates on the right too); special tokens added later by the processor
        (BOS, PaliGemma's layout) are not counted.
        """
        tokens = [t for t in (self.format.image_token, self.format.video_token) if t]
        pieces = re.split("(" + "|".join(map(re.escape, tokens)) + ")", text) if tokens else [text]
        budget, out = self.max_text_tokens, []
        for i, piece in enumerate(pieces):
            if i % 2:  # a vision token, kept whole
                out.append(piece)
                continue
            kept = self._cut(piece, budget)
            budget -= self._count(kept) if kept else 0
            out.append(kept)
        return "".join(out)

    # -- batch -------------------------------------------------------------------------------------
    def validate(self, sides: Sequence[dict], images: Sequence[Image.Image | None]) -> None:
        """Raise ValueError when a side could not be collated: its text (`render_text`), and for a
        Qwen2-VL / Qwen2.5-VL image the processor's size rule (it refuses an aspect ratio over 200).
        Cheap (no tokenizing, no pixels): the loader checks each record with it before building a
        batch, so one bad record is quarantined instead of failing the whole batch."""
        size_rule = getattr(self.processor.image_processor, "target_size", None)
        for side, image in zip(sides, images):
            if self.prompt == "vlm2vec":
                render_text(side, self.format, instructions=self.instructions, has_image=image is not None,
                            stray_image_token=self.stray_image_token, has_video=_is_video(image) and len(image))
            video = _is_video(image) and self.prompt != "gme"
            if _is_video(image):
                image = image[0] if image else None  # every frame takes the first frame's size
            if image is not None and size_rule is not None:
                limit = self._cap(video) if self.image_resize == "collator" else None
                width, height = self._resized_size(image.width, image.height)
                size_rule(*(max_pixels_size(width, height, limit) if limit else (width, height)))

    def __call__(self, sides: Sequence[dict], images: Sequence[Image.Image | list[Image.Image] | None]
                 ) -> dict[str, torch.Tensor]:
        """One batch: images[i] is row i's image, its video's frames (a list), or None."""
        if len(sides) != len(images):
            raise ValueError(f"{len(sides)} sides but {len(images)} images")
        if not sides:
            raise ValueError("empty batch")
        has_image = [im is not None for im in images]
        videos = [len(im) if _is_video(im) else 0 for im in images]
        if any(_is_video(im) and not im for im in images):
            raise ValueError("a video row has no frames")
        if self.prompt == "gme":  # VLM2Vec's GME path: a video's middle frame as its image
            images = [im[len(im) // 2] if _is_video(im) else im for im in images]
            videos = [0] * len(images)
        if any(videos) and self._video is None and self.format.family not in FRAME_IMAGE_FAMILIES:
            raise ValueError(f"{self.format.family} takes no video input: give it the frames as images instead "
                             "(eval.video_input frames_mean)")
        pics = [[self._fit(f, self._cap(True)) for f in im] if v else self._fit(im) if im is not None else None
                for im, v in zip(images, videos)]
        if self.prompt == "qwen3-vl-embedding":
            return self._vlm([self._chat(s, h, v) for s, h, v in zip(sides, has_image, videos)], pics, has_image,
                             videos)
        if self.prompt == "gme":
            return self._vlm([self._gme(s, h) for s, h in zip(sides, has_image)], pics, has_image, videos)
        texts = [render_text(s, self.format, instructions=self.instructions, has_image=h,
                             stray_image_token=self.stray_image_token, has_video=v)
                 for s, h, v in zip(sides, has_image, videos)]
        if self.format.kind == "dual":
            return self._dual(texts, pics, has_image)
        return self._vlm([self._truncated(t) for t in texts], pics, has_image, videos)

    def _truncated(self, text: str) -> str:
        """`truncate`, counting the texts it cut (`truncated`)."""
        cut = self.truncate(text)
        self.truncated += cut != text
        return cut

    def _chat(self, side: dict, has_image: bool, video: int) -> str:
        """A side's text in the qwen3-vl-embedding style (`trainer.model.prompt_styles`): its text cut to
        `max_text_tokens` (the template and the instruction are not counted), its instruction dropped
        without `instructions`."""
        instruction, text = prompt_styles.side_parts(side)
        cut = self._truncated(text)
        token = self.format.video_token
        if video and self.format.family not in TIMESTAMP_FAMILIES:
            token = VISION_MARKERS[0] + token + VISION_MARKERS[1]  # Qwen3-VL's expansion writes its own
        return prompt_styles.chat_text(instruction if self.instructions else "", cut, image=has_image and not video,
                                       video_token=token if video else None)

    def _gme(self, side: dict, has_image: bool) -> str:
        """A side's text in the gme style (`trainer.model.prompt_styles.gme_chat`): VLM2Vec's GME string
        with the backbone's tokens, cut to `max_text_tokens` (its kept tokens are never cut)."""
        text = prompt_styles.gme_text(side.get("raw") or "", has_image)
        text = text.replace(IMAGE_TOKEN, self.format.image_token).replace(VIDEO_TOKEN, self.format.video_token)
        return prompt_styles.gme_chat(self._truncated(text), image=has_image)

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the VLM2Vec resize rules in force: V1's square, then V2's small-image rule."""
        if self.image_square:
            width = height = self.image_square
        if self.small_image_side and min(width, height) < self.small_image_side:
            width = height = 2 * self.small_image_side
        return width, height

    def _cap(self, video: bool) -> int | None:
        """The pixel cap of an image, or of a video's frame (`video_max_pixels`, else the image's)."""
        return self.video_max_pixels if video and self.video_max_pixels is not None else self.image_max_pixels

    def _fit(self, image: Image.Image, limit: int | None = None) -> Image.Image:
        """The VLM2Vec resize rules (`_resized_size`, bicubic as PIL's `resize` default), then
        (image_resize "collator") `resize_to_max_pixels` to `limit` (default `image_max_pixels`),
        without its copy for an RGB image that already fits (pre-scaled shards): the processors only
        read it. With "processor" the image reaches the processor as it is, which resizes it to at most
        its cap (`image_max_pixels`; a video's frames `video_max_pixels`)."""
        size = self._resized_size(image.width, image.height)
        if size != image.size:
            image = to_rgb(image).resize(size, Image.BICUBIC)
        if self.image_resize == "processor":
            return image if image.mode == "RGB" else to_rgb(image)
        limit = self.image_max_pixels if limit is None else limit
        if image.mode == "RGB" and (limit is None or image.width * image.height <= limit):
            return image
        return resize_to_max_pixels(image, limit)

    def _dual(self, texts, pics, has_image) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        limit = self.max_text_tokens
        model_max = getattr(tok, "model_max_length", None)
        if model_max and model_max < 10**6:
            limit = min(limit, model_max)
        if self.format.family == "siglip":  # SigLIP pools the LAST position: always pad to max length
            enc = tok(texts, padding="max_length", truncation=True, max_length=limit, return_tensors="pt")
        else:
            enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}
        if "attention_mask" not in out:
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        with_image = [p for p in pics if p is not None]
        if with_image:
            out["pixel_values"] = self.processor.image_processor(with_image, return_tensors="pt")["pixel_values"]
        out["has_image"] = torch.tensor(has_image, dtype=torch.bool)
        out["has_text"] = torch.tensor([bool(t) for t in texts], dtype=torch.bool)
        return out

    def _process(self, texts: list[str], pics: list[Image.Image] | None) -> dict[str, Any]:
        family, proc = self.format.family, self.processor
        if family in PER_ROW_FAMILIES:
            return self._per_row(texts, pics)
        if pics is None:
            if family == "paligemma":  # its processor requires images; same layout as its image rows
                texts = [f"{proc.tokenizer.bos_token}{t}\n" for t in texts]
                enc = proc.tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=True)
                return dict(enc)
            tokens = [t for t in (self.format.image_token, self.format.video_token) if t]
            if any(token in t for token in tokens for t in texts):
                # kept stray placeholders: transformers' processors refuse image tokens without images,
                # the tokenizer writes them as the plain tokens VLM2Vec's (older) processor gave
                return dict(proc.tokenizer(texts, padding=True, return_tensors="pt"))
            return dict(proc(text=texts, padding=True, return_tensors="pt"))
        if family in ("idefics3", "smolvlm"):
            pics = [p if isinstance(p, list) else [p] for p in pics]  # a video row: its frames
        if self.format.video_token and any(self.format.video_token in t for t in texts):
            return self._images_with_text_video_tokens(texts, pics)
        return dict(proc(text=texts, images=pics, padding=True, return_tensors="pt"))

    def _images_with_text_video_tokens(self, texts: list[str], pics: list[Image.Image]) -> dict[str, Any]:
        """Image rows whose text also holds a video token that is text, not a video (VLM2Vec's GME
        input for video QA: the middle frame, and the token the loader wrote): what the processor
        gives image rows (it refuses a video token without a video), its image token expanded here,
        `mm_token_type_ids` 1 at the image tokens only."""
        out = dict(self.processor.image_processor(images=pics, return_tensors="pt"))
        merge = self.processor.image_processor.merge_size
        token = self.format.image_token
        expanded = [t.replace(token, token * (int(torch.as_tensor(g).prod()) // merge ** 2), 1)
                    for t, g in zip(texts, out["image_grid_thw"])]
        return {**self._typed_tokens(expanded, self.tokenizer.convert_tokens_to_ids(token), 1), **out}

    def _typed_tokens(self, expanded: list[str], token_id: int, token_type: int) -> dict[str, torch.Tensor]:
        """Texts whose vision tokens are already expanded, tokenized and padded, with
        `mm_token_type_ids` `token_type` at `token_id` (1 image, 2 video, as transformers marks them)."""
        enc = dict(self.tokenizer(expanded, padding=True, return_tensors="pt"))
        enc["mm_token_type_ids"] = (enc["input_ids"] == token_id).long() * token_type
        return enc

    def _per_row(self, texts: list[str], pics: list[Image.Image] | None) -> dict[str, Any]:
        """Phi-3-V as VLM2Vec's `Phi3V_process_fn` runs it: rows without image through the tokenizer
        (what its processor does for them), each row with an image through the processor alone, the
        ids padded by the tokenizer, `pixel_values` / `image_sizes` stacked in row order."""
        proc = self.processor
        if pics is None:
            return dict(proc.tokenizer(texts, padding=True, return_tensors="pt"))
        rows = [proc(text=t, images=[p], return_tensors="pt") for t, p in zip(texts, pics)]
        ids = [torch.as_tensor(r["input_ids"]).reshape(-1).tolist() for r in rows]
        enc = proc.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        for key in ("pixel_values", "image_sizes"):
            out[key] = torch.cat([torch.as_tensor(r[key]) for r in rows])
        return out

    def _vlm(self, texts, pics, has_image, videos) -> dict[str, torch.Tensor]:
        native = self._video is not None  # else a video row's frames are its images (FRAME_IMAGE_FAMILIES)
        rows_img = [i for i, (h, v) in enumerate(zip(has_image, videos)) if h and not (v and native)]
        rows_vid = [i for i, v in enumerate(videos) if v and native]
        rows_txt = [i for i, h in enumerate(has_image) if not h]
        parts = []
        if rows_img:
            parts.append((rows_img, self._process([texts[i] for i in rows_img], [pics[i] for i in rows_img])))
        if rows_vid:
            parts.append((rows_vid, self._process_videos([texts[i] for i in rows_vid], [pics[i] for i in rows_vid])))
        if rows_txt:
            parts.append((rows_txt, self._process([texts[i] for i in rows_txt], None)))
        out = parts[0][1] if len(parts) == 1 else self._merge(parts, len(texts))
        out = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k != "labels"}
        out = self._pad_length(out)
        rows_with_image = torch.tensor(has_image, dtype=torch.bool)
        stray = self._stray_rows(out, rows_with_image)
        if self._sequential:
            out["position_ids"] = positions.sequential_position_ids(out["attention_mask"])
        elif self._mrope is not None and ("image_grid_thw" in out or "video_grid_thw" in out):
            out["position_ids"] = positions.mrope_position_ids(
                out["input_ids"], out["attention_mask"], out.get("image_grid_thw"), *self._mrope,
                has_image=rows_with_image if stray is not None else None, **self._video_positions(out))
        if stray is not None:
            out["stray_token"] = stray
        out["has_image"] = rows_with_image
        return out

    def _process_videos(self, texts: list[str], videos: list[list[Image.Image]]) -> dict[str, Any]:
        """Rows with one video each, as the processor would give them with `videos=` (transformers'
        processor cannot hold a video processor here): the video tensors (`QwenVideoProcessor`),
        each row's video token expanded to the video's token count, tokenized and padded, and
        `mm_token_type_ids` 2 at the video tokens (the value transformers gives video tokens)."""
        processor, token_id, _ = self._video
        out = processor(videos)
        token = self.format.video_token
        grids = out["video_grid_thw"].tolist()
        if self.format.family in TIMESTAMP_FAMILIES:  # one timestamped, marked run per temporal patch
            expanded = [t.replace(token, processor.timestamped_text(g, len(v), token, *VISION_MARKERS), 1)
                        for t, g, v in zip(texts, grids, videos)]
        else:
            expanded = [t.replace(token, token * processor.tokens(g), 1) for t, g in zip(texts, grids)]
        return {**self._typed_tokens(expanded, token_id, 2), **out}

    def _video_positions(self, out: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The video arguments of `positions.mrope_position_ids` for a batch with videos ({} without):
        each video's temporal interval is Qwen2.5-VL's tokens_per_second * second_per_grid_ts (as its
        `get_rope_index`), 1 for Qwen2-VL; Qwen3-VL's video is one grid per temporal patch (t = 1), as
        its text gives each patch a run of its own."""
        if "video_grid_thw" not in out:
            return {}
        _, token_id, per_second = self._video
        grids = out["video_grid_thw"]
        if self.format.family in TIMESTAMP_FAMILIES:
            grids = grids.repeat_interleave(grids[:, 0], dim=0)
            grids[:, 0] = 1
        seconds = out.get("second_per_grid_ts")
        intervals = None if per_second is None or seconds is None else [per_second * s for s in seconds.tolist()]
        return dict(video_token_id=token_id, video_grid_thw=grids, video_intervals=intervals)

    def _stray_rows(self, out: dict[str, torch.Tensor], has_image: torch.Tensor) -> torch.Tensor | None:
        """bool [B]: the rows without image that hold a kept placeholder as a text token (None when
        there are none); their `mm_token_type_ids` are set to text, so the model takes them for text."""
        if self.stray_image_token != "keep" or self._image_token_id is None:
            return None
        stray = (out["input_ids"] == self._image_token_id).any(dim=1) & ~has_image
        if not bool(stray.any()):
            return None
        if "mm_token_type_ids" in out:
            out["mm_token_type_ids"] = out["mm_token_type_ids"].masked_fill(stray.unsqueeze(1), 0)
        return stray

    def _fill(self, key: str) -> int:
        """The padding value of sequence key `key`: the tokenizer's pad id for input_ids, else `_SEQUENCE_KEYS`'."""
        if key != "input_ids":
            return _SEQUENCE_KEYS[key]
        pad_id = self.tokenizer.pad_token_id
        return pad_id if pad_id is not None else 0

    def _pad_length(self, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`enc` with its sequence keys padded up to a length that is a multiple of `pad_to_multiple_of`."""
        extra = -enc["input_ids"].shape[1] % self.pad_to_multiple_of
        if not extra:
            return enc
        side = (extra, 0) if self.tokenizer.padding_side == "left" else (0, extra)
        return {k: torch.nn.functional.pad(v, side, value=self._fill(k)) if k in _SEQUENCE_KEYS else v
                for k, v in enc.items()}

    def _merge(self, parts, batch: int) -> dict[str, torch.Tensor]:
        """Row-wise merge of the image-row and text-row encodings into one padded batch, rows in order."""
        length = max(p["input_ids"].shape[1] for _, p in parts)
        left = self.tokenizer.padding_side == "left"
        merged: dict[str, torch.Tensor] = {}
        seq_keys = [k for k in _SEQUENCE_KEYS if any(k in p for _, p in parts)]
        for key in seq_keys:
            ref = next(p[key] for _, p in parts if key in p)
            full = torch.full((batch, length), self._fill(key), dtype=ref.dtype)
            for rows, p in parts:
                t = p.get(key)
                if t is None:  # e.g. mm_token_type_ids absent from a text-only encoding: all text
                    t = torch.zeros_like(p["input_ids"], dtype=ref.dtype)
                n = t.shape[1]
                idx = torch.tensor(rows)
                if left:
                    full[idx, length - n:] = t
                else:
                    full[idx, :n] = t
            merged[key] = full
        for _, p in parts:  # image tensors come from the image rows only, already in row order
            for key, value in p.items():
                if key not in _SEQUENCE_KEYS and key not in merged:
                    merged[key] = value
        return merged
