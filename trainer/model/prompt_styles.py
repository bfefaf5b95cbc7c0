r"""Prompt styles: how a side becomes the backbone's text (the `prompt` rendering setting).

* `vlm2vec` (the default): VLM2Vec's string, the side's `raw` with MMEB's placeholders swapped for
  the backbone's tokens and no chat template (`trainer.model.inputs.render_text`).
* `qwen3-vl-embedding`: the input of Qwen3-VL-Embedding (Qwen/Qwen3-VL-Embedding-2B, -8B), as its
  released embedder builds it (`Qwen3VLEmbedder.format_model_input`, then the processor's chat
  template with the generation prompt). The instruction is the system message; the user message
  holds the video, then the image, then the text::

      <|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{vision}{text}<|im_end|>\n
      <|im_start|>assistant\n                        (one string: the line break is not in it)

  An instruction that does not end in punctuation gets a full stop; a side without one gets the
  embedder's default, "Represent the user's input."; a side with neither text nor picture is the
  text "NULL". An image is `<|vision_start|><|image_pad|><|vision_end|>`; a video
  `<|vision_start|><|video_pad|><|vision_end|>`, which Qwen3-VL's processor (and the Collator) turns
  into one timestamped run per temporal patch. Last-token pooling then takes the newline after
  `assistant`, as the embedder does. Its MMEB-V2 evaluation gives queries their task's instruction
  and candidates none, so a side whose instruction is a candidate's (`TARGET_INSTRUCTIONS`: "Represent
  the given image.", "Understand the content of the provided video.", ...) gets the default too.

Where the instruction and the text come from: an MMEB-V1 side carries them (`pipelines.prompts.split_side`
wrote `instruction` and `text`). An MMEB-V2 side (an evaluation item, a V2 training pair) has only
its `raw`: its instruction is the longest known MMEB or MMEB-V2 instruction (`INSTRUCTIONS`) that
starts the text left after its placeholders are removed, and the rest is its text; a side that starts
with none has no instruction. The instruction strings are VLM2Vec's, which Qwen3-VL-Embedding's own
evaluation loaders sometimes phrase otherwise ("... described scenes." for "... described scenes:"),
so scores in this style are the model in its own input format on VLM2Vec's instructions, not a
reproduction of its reported numbers.

* `gme`: GME (Alibaba-NLP/gme-Qwen2-VL-2B-Instruct, -7B) as VLM2Vec-V2 scores it, whose published
  GME scores it reproduces (VLM2Vec 6e1e1d4: src/model/baseline_backbone/gme/gme_inference.py `embed`,
  src/model/model.py `encode_input`, src/model/processor.py `process_input_text`)::

      <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{text}<|im_end|>\n
      <|im_start|>assistant\n<|endoftext|>            (one string: the line break is not in it)

  where {text} is VLM2Vec's string for GME (`gme_text`: its loaders' string without the token that
  `process_input_text` writes for other backbones, the instruction followed by a space when the side
  has no text, the tokens the loaders write themselves kept as text, then `encode_input`'s removal of
  `<|image_pad|>` + newline), {image} `<|vision_start|><|image_pad|><|vision_end|>` for a side with
  a picture, and a video its middle frame as that picture. The last token pooled is `<|endoftext|>`.
  A kept token is embedded as a text token, so the style needs `stray_image_token: keep`.
  `gme_text` reproduces `pipelines.v2_inputs`' GME strings from the stored ones for every MMEB-V2
  loader family (tests/trainer/model/test_prompt_styles.py); an MMEB-V1 record's string keeps its own
  layout (`<|image_1|>\n` before the instruction where V2's image loaders write `<|image_1|> `).

The chat styles need Qwen's chat markers: families other than Qwen2-VL, Qwen2.5-VL and Qwen3-VL refuse them.
"""

from __future__ import annotations

import unicodedata

from pipelines import v2_inputs, v2_train
from pipelines.params import PROMPTS, prompt_problem
from pipelines.prompts import KNOWN_INSTRUCTIONS
from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN
from trainer.backbone.families import QWEN_FAMILIES

CHAT_FAMILIES = QWEN_FAMILIES  # the families whose tokenizers hold Qwen's chat and vision markers
DEFAULT_INSTRUCTION = "Represent the user's input."  # Qwen3VLEmbedder's default_instruction
GME_SYSTEM = "You are a helpful assistant."  # GmeQwen2VL's default instruction, the one VLM2Vec scores with
QA_INSTRUCTION = v2_inputs.QA_PROMPT.strip()  # the video QA loaders write the video token themselves
EMPTY = "NULL"  # what the embedder writes for a side with neither text nor picture

# the instructions of MMEB-V2's candidates and training targets (VLM2Vec's target instructions),
# which Qwen3-VL-Embedding's evaluation replaces with its default
TARGET_INSTRUCTIONS = frozenset(s.strip() for s in (
    "Represent the given image.", "Represent the given image",
    "Represent the given Wikipedia image with related text information: ",
    "Represent the given image with related text information: ",
    "Represent the given cropped image of the object",
    v2_inputs.VIDEO_TARGET, v2_inputs.MOMENTSEEKER_TARGET, v2_inputs.VISDOC_TARGET,
    *v2_train.TARGET_PROMPTS.values(), v2_train.VRET_TARGET_PROMPT))

# every instruction an MMEB or MMEB-V2 side (evaluation or training) may start with, longest first (a
# prefix match takes the longest)
INSTRUCTIONS = tuple(sorted({s.strip() for s in (
    *KNOWN_INSTRUCTIONS, *v2_inputs.VIDEO_CLS_INSTRUCTIONS.values(), *v2_inputs.VIDEO_RET_INSTRUCTIONS.values(),
    v2_inputs.VIDEO_TARGET, v2_inputs.MRET_QUERY, *v2_inputs.MOMENTSEEKER_QUERY.values(),
    v2_inputs.MOMENTSEEKER_TARGET, v2_inputs.QA_PROMPT, v2_inputs.VISDOC_QUERY, v2_inputs.VISDOC_TARGET,
    *v2_train.QUERY_PROMPTS.values(), *v2_train.TARGET_PROMPTS.values(), v2_train.VRET_QUERY_PROMPT,
    v2_train.VRET_TARGET_PROMPT, v2_train.QA_QUERY_PROMPT)
    if s.strip()}, key=lambda s: (-len(s), s)))

_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def check_prompt(prompt: str, family: str, stray_image_token: str = "strip") -> None:
    """ValueError for an unknown style, a chat style with a family that has no Qwen chat markers, or
    a style with a stray-token rule it cannot follow (`pipelines.params.prompt_problem`)."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    if prompt != "vlm2vec" and family not in CHAT_FAMILIES:
        raise ValueError(f"prompt {prompt!r} writes Qwen's chat template: it needs a Qwen2-VL, Qwen2.5-VL or "
                         f"Qwen3-VL backbone, not {family}")
    if problem := prompt_problem(prompt, stray_image_token):
        raise ValueError(problem)


def split_v2(raw: str) -> tuple[str, str]:
    """(instruction, text) of an MMEB-V2 side's raw string: placeholders removed, then the longest
    known instruction at its start (followed by the end or whitespace), both stripped."""
    body = raw.replace(IMAGE_TOKEN, "").replace(VIDEO_TOKEN, "").strip()
    for known in INSTRUCTIONS:
        if body.startswith(known) and (len(body) == len(known) or body[len(known)].isspace()):
            return known, body[len(known):].strip()
    return "", body


def side_parts(side: dict) -> tuple[str, str]:
    """(instruction, text) of a side, stripped: an MMEB-V1 side's own split, else `split_v2` of its raw."""
    if "instruction" in side:
        return (side.get("instruction") or "").strip(), (side.get("text") or "").strip()
    return split_v2(side.get("raw") or "")


def system_instruction(instruction: str) -> str:
    """Qwen3-VL-Embedding's system message for a side's instruction: the default for none or a
    candidate's instruction, else the instruction with a full stop unless it ends in punctuation."""
    if not instruction or instruction in TARGET_INSTRUCTIONS:
        return DEFAULT_INSTRUCTION
    return instruction if unicodedata.category(instruction[-1]).startswith("P") else instruction + "."


def chat_text(instruction: str, text: str, *, image: bool, video_token: str | None) -> str:
    """The qwen3-vl-embedding string of a side with this (stripped) instruction and text, an image or
    not, and `video_token` the text its video takes (None: no video)."""
    vision = (video_token or "") + (_IMAGE if image else "")
    user = vision + text if vision or text else EMPTY
    return (f"<|im_start|>system\n{system_instruction(instruction)}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def gme_text(raw: str, has_picture: bool) -> str:
    """VLM2Vec's text for GME of a side stored as VLM2Vec writes it for other backbones (MMEB's
    placeholders for the tokens), before `encode_input`'s removal.

    For GME `process_input_text` writes no token and ends in a space when it gets no text
    (``instruction + " "``), so of a side with a picture: the leading token and the space after it
    are dropped, and a space follows the instruction of a side without text, or the content of an
    image candidate (its loader passes instruction + caption as the instruction, and no text), before
    the loader's final newlines. A text-only side's token and the video QA loaders' own stay: those
    loaders write them for GME too."""
    instruction, text = split_v2(raw)
    if not has_picture or instruction == QA_INSTRUCTION:
        return raw
    out = raw
    for token in (IMAGE_TOKEN, VIDEO_TOKEN):
        if out.startswith(token):
            out = out[len(token):]
            out = out[1:] if out.startswith(" ") else out
            break
    if instruction in TARGET_INSTRUCTIONS and text:
        body = out.rstrip("\n")
        return body + " " + out[len(body):]
    if not text:
        at = out.find(instruction) + len(instruction) if instruction else 0
        out = out[:at] + " " + out[at:]
    return out


def gme_chat(text: str, *, image: bool) -> str:
    """The gme string of a side whose (GME, tokens swapped, cut) text is `text`: `encode_input` drops
    every image token followed by a newline, `embed` puts the image first and the template around."""
    user = (_IMAGE if image else "") + text.replace("<|image_pad|>\n", "")
    return (f"<|im_start|>system\n{GME_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n<|endoftext|>")
