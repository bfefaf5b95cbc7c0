"""Backbones: the vision-language model (or dual encoder) an embedding model is trained from.

A `Backbone` bundles the Hugging Face model, its processor and the per-family facts the rest of the
trainer needs (the image token written into prompts, the default LoRA targets).

Three ways to get one:
* `build_tiny(family)`: a random tiny model built from a config, fully offline (tests, the default
  `tiny-qwen2-vl` pipeline); its tokenizer is a byte-level BPE trained locally.
* `load_backbone(path)`: a folder written by `save_backbone`, or any folder in the Hub layout
  (config.json + safetensors + tokenizer/processor files; family read from `model_type`).
* `load_backbone("<org>/<name>", revision=...)`: a Hub model fetched with `huggingface_hub`; the
  resolved commit is recorded in `info["revision"]`.

No torchvision here: image processors use their PIL backends (`*ImageProcessorPil`), and the
Qwen2-VL / SmolVLM processors are rebuilt without a video processor (`ImageOnly*Processor`), because
`AutoProcessor` silently returns a bare tokenizer for them when torchvision is missing.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (CLIPProcessor, Idefics3Processor, LlavaNextProcessor, LlavaProcessor, PaliGemmaProcessor,
                          Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor, SiglipProcessor, SmolVLMProcessor)

from pipelines import digests

log = logging.getLogger(__name__)

VLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "idefics3", "smolvlm", "paligemma")
DUAL_FAMILIES = ("clip", "siglip")
FAMILIES = VLM_FAMILIES + DUAL_FAMILIES  # each has a tiny build (build_tiny)
# Qwen's VL families: one tokenizer layout (<|vision_start|>, <|image_pad|>, ...) and image processor
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# Families whose modeling and processing code ships with the model (Hub `auto_map`), not with
# transformers: loading one runs that code, so it needs `trust_remote_code`. Phi-3.5-V
# (microsoft/Phi-3.5-vision-instruct), VLM2Vec V1's main backbone, is one (a VLM). No tiny build.
REMOTE_CODE_FAMILIES = ("phi3_v",)

# The string written into a prompt for one image (VLM2Vec's VLM_IMAGE_TOKENS).
IMAGE_TOKENS = {
    "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>",
    "llava": "<image>", "llava_next": "<image>", "idefics3": "<image>", "smolvlm": "<image>",
    "paligemma": "<image>", "clip": "", "siglip": "",
    "phi3_v": "<|image_1|>",  # MMEB's own placeholder: Phi-3-V's processor expands it
}

# peft target_modules (a regex, matched with re.fullmatch against module names): the language model's
# attention and MLP projections only. Anchoring on the language model keeps the vision tower out
# (Qwen2.5-VL's vision MLP also has gate/up/down_proj; Qwen's patch embedding is a Conv3d `proj`).
_LM_PROJ = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
LORA_TARGETS = {
    "qwen2_vl": rf".*\.language_model\.layers\.\d+\.{_LM_PROJ}",
    "qwen2_5_vl": rf".*\.language_model\.layers\.\d+\.{_LM_PROJ}",
    "qwen3_vl": rf".*\.language_model\.layers\.\d+\.{_LM_PROJ}",
    "llava": rf".*\.language_model\.layers\.\d+\.{_LM_PROJ}",
    "llava_next": rf".*\.language_model\.layers\.\d+\.{_LM_PROJ}",
    "paligemma": rf".*\.language_model\.layers\.\d+\.{_LM_PROJ}",
    "idefics3": rf".*\.text_model\.layers\.\d+\.{_LM_PROJ}",
    "smolvlm": rf".*\.text_model\.layers\.\d+\.{_LM_PROJ}",
    # Phi-3(-V): fused projections (VLM2Vec V1's targets qkv_proj, o_proj, gate_up_proj, down_proj);
    # its vision tower lives under model.vision_embed_tokens, outside model.layers
    "phi3_v": r"(.*\.)?model\.layers\.\d+\.(self_attn\.(qkv|o)_proj|mlp\.(gate_up|down)_proj)",
    # dual encoders: both towers' attention and MLP linears (never the patch-embedding conv)
    "clip": r".*(text_model|vision_model)\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc(1|2))",
    "siglip": r".*(text_model|vision_model)\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc(1|2))",
}

MODEL_TYPE_TO_FAMILY = {
    "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "llava": "llava",
    "llava_next": "llava_next",
    "idefics3": "idefics3", "smolvlm": "smolvlm", "paligemma": "paligemma", "clip": "clip",
    "siglip": "siglip", "phi3_v": "phi3_v",
}

BACKBONE_JSON = "backbone.json"
PATCH = 8  # vision patch size of every tiny model


@dataclass
class Backbone:
    model: torch.nn.Module
    processor: Any
    family: str
    image_token: str
    kind: str  # "vlm" | "dual"
    lora_targets: list[str] | str
    info: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor


# --------------------------------------------------------------------------------------------------
# processors without a video processor (torchvision is absent; ProcessorMixin reads its attributes
# from the __init__ signature, so leaving `video_processor` out of it is what makes them buildable)

class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor for images only (no torchvision -> no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        Qwen2VLProcessor.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images only (no torchvision -> no video processor)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        Qwen2_5_VLProcessor.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor for images only (no torchvision -> no video processor; the Collator
    expands a video's tokens itself, timestamps included)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        Qwen3VLProcessor.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
    """SmolVLM processor for images only (no torchvision -> no video processor)."""

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
        SmolVLMProcessor.__init__(self, image_processor, tokenizer, None, image_seq_len=image_seq_len,
                                  chat_template=chat_template, **kwargs)


PROCESSOR_CLASSES: dict[str, type] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
    "llava": LlavaProcessor, "llava_next": LlavaNextProcessor, "idefics3": Idefics3Processor,
    "smolvlm": ImageOnlySmolVLMProcessor, "paligemma": PaliGemmaProcessor,
    "clip": CLIPProcessor, "siglip": SiglipProcessor,
}


def processor_class(family: str) -> type:
    return PROCESSOR_CLASSES[family]


def image_processor_class(family: str) -> type:
    import transformers as tf
    names = {
        "qwen2_vl": "Qwen2VLImageProcessorPil", "qwen2_5_vl": "Qwen2VLImageProcessorPil",
        "qwen3_vl": "Qwen2VLImageProcessorPil",  # Qwen3-VL's own preprocessor_config names this class
        "llava": "CLIPImageProcessorPil", "llava_next": "LlavaNextImageProcessorPil",
        "idefics3": "Idefics3ImageProcessorPil", "smolvlm": "SmolVLMImageProcessorPil",
        "paligemma": "SiglipImageProcessorPil", "clip": "CLIPImageProcessorPil",
        "siglip": "SiglipImageProcessorPil",
    }
    return getattr(tf, names[family])


def model_class(family: str) -> type:
    import transformers as tf
    if family == "clip":
        return tf.CLIPModel
    if family == "siglip":
        return tf.SiglipModel
    if family == "phi3_v":  # the repo's auto_map names its Phi3VForCausalLM for this class
        return tf.AutoModelForCausalLM
    return tf.AutoModelForImageTextToText


def _check_family(family: str) -> None:
    if family not in FAMILIES + REMOTE_CODE_FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; known: {', '.join(FAMILIES + REMOTE_CODE_FAMILIES)}")


def _kind(family: str) -> str:
    return "dual" if family in DUAL_FAMILIES else "vlm"


# --------------------------------------------------------------------------------------------------
# tiny random backbones built offline

def family_special_tokens(family: str) -> list[str]:
    """The special tokens a tiny tokenizer of `family` must hold (they get ids 0..n-1)."""
    _check_family(family)
    if family in QWEN_FAMILIES:
        return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    if family in ("llava", "llava_next"):
        return ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    if family in ("idefics3", "smolvlm"):
        grid = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
        return ["<|endoftext|>", "<pad>", "<image>", "<fake_token_around_image>", "<global-img>",
                "<end_of_utterance>", *grid]
    if family == "paligemma":
        return ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
    if family == "clip":
        return ["<|startoftext|>", "<|endoftext|>"]
    return ["<pad>", "</s>", "<unk>"]  # siglip


def train_family_tokenizer(family: str, texts=None, *, vocab_size: int = 2048):
    """A raw byte-level BPE (`tokenizers.Tokenizer`) for `family`, trained on `texts` (default corpus)."""
    from trainer.backbone.tokenizer import default_corpus, train_bpe
    template = {"clip": ("<|startoftext|>", "<|endoftext|>"), "siglip": ("", "</s>")}.get(family)
    return train_bpe(texts if texts is not None else default_corpus(), vocab_size=vocab_size,
                     special_tokens=family_special_tokens(family), eos_template=template)


def _wrap_tokenizer(family: str, raw):
    """Wrap a raw `tokenizers.Tokenizer` in the transformers tokenizer class the family's processor wants."""
    from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast
    missing = [t for t in family_special_tokens(family) if raw.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer lacks the {family} special tokens {missing[:5]} "
                         f"(train it with trainer.backbone.families.train_family_tokenizer)")
    if family in QWEN_FAMILIES:
        tok = Qwen2TokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    elif family in ("llava", "llava_next"):
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="<pad>")
    elif family in ("idefics3", "smolvlm"):
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<end_of_utterance>",
                                      pad_token="<pad>", unk_token="<|endoftext|>")
    elif family == "paligemma":
        # not GemmaTokenizerFast: reloading a GemmaTokenizer rebuilds a sentencepiece-style pipeline
        # around tokenizer.json and breaks this byte-level BPE (newlines become <unk>)
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>",
                                      bos_token="<bos>", unk_token="<unk>")
    elif family == "clip":
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|startoftext|>",
                                      eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                      unk_token="<|endoftext|>")
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>")
    tok.padding_side = "right"
    if family in ("clip", "siglip"):  # their text towers have fixed position tables (77 / 64)
        tok.model_max_length = 77 if family == "clip" else 64
    return tok


def _text_config(model_type: str, vocab: int, hidden: int, layers: int, tok, **extra) -> dict:
    heads = max(1, hidden // 32)
    cfg = dict(model_type=model_type, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
               max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=False)
    cfg.update(extra)
    return cfg


def _vision(hidden: int, image_size: int, model_type: str | None = None, **extra) -> dict:
    cfg = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
               num_attention_heads=max(1, hidden // 32), image_size=image_size, patch_size=PATCH)
    if model_type:
        cfg["model_type"] = model_type
    cfg.update(extra)
    return cfg


def _build_tiny_parts(family: str, tok, image_size: int, hidden: int, layers: int):
    """(processor, model) of a random tiny `family` model around the wrapped tokenizer `tok`."""
    import transformers as tf
    ip_cls, proc_cls = image_processor_class(family), processor_class(family)
    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    if family in QWEN_FAMILIES:
        merge, temporal = 2, 2
        ip = ip_cls(patch_size=PATCH, merge_size=merge, temporal_patch_size=temporal,
                    min_pixels=(PATCH * merge) ** 2, max_pixels=image_size * image_size)
        proc = proc_cls(image_processor=ip, tokenizer=tok)
        heads = max(1, hidden // 32)
        half = hidden // heads // 2
        section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
        if family == "qwen3_vl":  # Qwen3-VL interleaves the three axes over the rotary frequencies
            rope["mrope_interleaved"] = True
        text = _text_config(family + "_text", len(tok), hidden, layers, tok, rope_parameters=rope,
                            **({"head_dim": hidden // heads} if family == "qwen3_vl" else {}))
        width = 64
        if family == "qwen3_vl":  # deepstack: the first vision block's features also enter layer 0
            vision = dict(depth=2, hidden_size=width, num_heads=2, intermediate_size=2 * width,
                          out_hidden_size=hidden, patch_size=PATCH, spatial_merge_size=merge,
                          temporal_patch_size=temporal, num_position_embeddings=(image_size // PATCH) ** 2,
                          deepstack_visual_indexes=[0])
            cfg_cls = tf.Qwen3VLConfig
        elif family == "qwen2_vl":
            vision = dict(depth=2, embed_dim=width, num_heads=2, mlp_ratio=2, hidden_size=hidden,
                          patch_size=PATCH, spatial_merge_size=merge, temporal_patch_size=temporal)
            cfg_cls = tf.Qwen2VLConfig
        else:
            vision = dict(depth=2, hidden_size=width, num_heads=2, intermediate_size=2 * width,
                          out_hidden_size=hidden, patch_size=PATCH, spatial_merge_size=merge,
                          temporal_patch_size=temporal, window_size=2 * PATCH * merge, fullatt_block_indexes=[1])
            cfg_cls = tf.Qwen2_5_VLConfig
        cfg = cfg_cls(vision_config=vision, text_config=text, image_token_id=ids("<|image_pad|>"),
                      video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                      vision_end_token_id=ids("<|vision_end|>"))
    elif family in ("llava", "llava_next"):
        vision = _vision(64, image_size, "clip_vision_model")
        text = _text_config("llama", len(tok), hidden, layers, tok)
        common = dict(vision_config=vision, text_config=text, image_token_id=ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
        pkw = dict(patch_size=PATCH, vision_feature_select_strategy="default", image_token="<image>",
                   num_additional_image_tokens=1)
        if family == "llava":
            ip = ip_cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
            cfg = tf.LlavaConfig(**common)
        else:
            pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
            ip = ip_cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                        image_grid_pinpoints=pinpoints)
            cfg = tf.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        proc = proc_cls(image_processor=ip, tokenizer=tok, **pkw)
    elif family in ("idefics3", "smolvlm"):
        scale = 2
        ip = ip_cls(do_image_splitting=False, size={"longest_edge": image_size},
                    max_image_size={"longest_edge": image_size})
        proc = proc_cls(image_processor=ip, tokenizer=tok, image_seq_len=(image_size // PATCH) ** 2 // scale ** 2)
        vision = _vision(64, image_size)
        text = _text_config("llama", len(tok), hidden, layers, tok)
        cfg_cls = tf.Idefics3Config if family == "idefics3" else tf.SmolVLMConfig
        cfg = cfg_cls(vision_config=vision, text_config=text, scale_factor=scale, image_token_id=ids("<image>"))
    elif family == "paligemma":
        ip = ip_cls(size={"height": image_size, "width": image_size})
        ip.image_seq_length = (image_size // PATCH) ** 2
        proc = proc_cls(image_processor=ip, tokenizer=tok)  # adds <loc..>/<seg..> tokens: config after it
        vision = _vision(64, image_size, "siglip_vision_model", projection_dim=hidden)
        text = _text_config("gemma", len(tok), hidden, layers, tok, head_dim=32, num_key_value_heads=1)
        cfg = tf.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=ids("<image>"),
                                 projection_dim=hidden)
    elif family == "clip":
        ip = ip_cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
        proc = proc_cls(image_processor=ip, tokenizer=tok)
        text = _text_config("clip_text_model", len(tok), hidden, layers, tok, max_position_embeddings=77)
        cfg = tf.CLIPConfig(text_config=text, vision_config=_vision(hidden, image_size), projection_dim=hidden)
    else:  # siglip
        ip = ip_cls(size={"height": image_size, "width": image_size})
        proc = proc_cls(image_processor=ip, tokenizer=tok)
        text = _text_config("siglip_text_model", len(tok), hidden, layers, tok, max_position_embeddings=64,
                            projection_size=hidden, bos_token_id=None)
        cfg = tf.SiglipConfig(text_config=text, vision_config=_vision(hidden, image_size))
    if hasattr(cfg, "text_config") and cfg.text_config.vocab_size < len(tok):
        cfg.text_config.vocab_size = len(tok)  # processors may add tokens (PaliGemma, Idefics3)
    model = model_class(family).from_config(cfg) if family in VLM_FAMILIES else model_class(family)(cfg)
    return proc, model


def build_tiny(family: str, *, seed: int = 0, image_size: int = 32, hidden_size: int = 64, layers: int = 2,
               tokenizer=None) -> Backbone:
    """A random tiny `family` backbone built from a config, fully offline, deterministic for `seed`.

    `tokenizer`: a raw `tokenizers.Tokenizer` holding the family's special tokens (see
    `train_family_tokenizer`); by default one is trained on a small generated corpus.
    Vision towers are 2 layers of width 64 (CLIP/SigLIP: `hidden_size`), patch 8.
    """
    _check_family(family)
    if family in REMOTE_CODE_FAMILIES:
        raise ValueError(f"no tiny {family} backbone: its code ships with the model (load one with load_backbone)")
    if image_size % (2 * PATCH):
        raise ValueError(f"image_size must be a multiple of {2 * PATCH}, got {image_size}")
    if hidden_size % 32:
        raise ValueError(f"hidden_size must be a multiple of 32, got {hidden_size}")
    raw = tokenizer if tokenizer is not None else train_family_tokenizer(family)
    tok = _wrap_tokenizer(family, raw)
    random.seed(seed)
    torch.manual_seed(seed)
    proc, model = _build_tiny_parts(family, tok, image_size, hidden_size, layers)
    model.eval()
    info = dict(name=f"tiny-{family.replace('_', '-')}", revision=None, seed=seed, image_size=image_size,
                **_config_summary(model))
    return Backbone(model=model, processor=proc, family=family, image_token=IMAGE_TOKENS[family],
                    kind=_kind(family), lora_targets=LORA_TARGETS[family], info=info)


def _config_summary(model: torch.nn.Module) -> dict:
    cfg = model.config
    text = getattr(cfg, "text_config", cfg)
    return dict(model_type=cfg.model_type, hidden_size=getattr(text, "hidden_size", None),
                num_layers=getattr(text, "num_hidden_layers", None), vocab_size=getattr(text, "vocab_size", None),
                parameters=sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------------------------------
# save / load

def save_backbone(backbone: Backbone, path) -> None:
    """Write `backbone` to the folder `path`: safetensors weights + config, processor pieces
    (tokenizer, image processor, processor_config.json), backbone.json and digests.json (sha256 of
    every file, `pipelines.digests.record`); `load_backbone(path)` verifies them and rebuilds an
    equal backbone (same outputs)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = backbone.model
    if hasattr(model, "merge_and_unload") or type(model).__name__.startswith("Peft"):
        raise TypeError("save_backbone got a peft-wrapped model; merge it first (model.merge_and_unload())")
    model.save_pretrained(path, safe_serialization=True)
    backbone.processor.save_pretrained(path)
    meta = dict(family=backbone.family, image_token=backbone.image_token, kind=backbone.kind,
                lora_targets=backbone.lora_targets, info=backbone.info)
    (path / BACKBONE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    digests.record(path)


def detect_family(model_dir: Path, name: str | None = None) -> str:
    """The backbone family of a Hub-layout folder, from config.json's `model_type`; `name` (default
    the folder) is what an error calls the model."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPE_TO_FAMILY:
        raise ValueError(f"{name or model_dir}: unsupported model_type {model_type!r}; supported: "
                         f"{', '.join(sorted(MODEL_TYPE_TO_FAMILY))}")
    return MODEL_TYPE_TO_FAMILY[model_type]


class RemoteCodeRefused(PermissionError):
    """A model whose code ships with it was asked to load without `trust_remote_code`."""


def refuse_remote_code(family: str, name: str) -> None:
    """Raise `RemoteCodeRefused` for a model of a remote-code family loaded without the opt-in."""
    raise RemoteCodeRefused(
        f"{name} is a {family} model: its modeling and processing code ship with the model and run as "
        "arbitrary Python on this machine when it loads. Set `backbone.trust_remote_code: true` in "
        "params.yaml (trust_remote_code=True; trainer.released: --trust-remote-code) only for a model "
        "whose code you trust.")


def _load_remote_processor(model_dir: Path, num_crops: int | None):
    """The processor the folder's own code defines (Phi-3-V: `Phi3VProcessor`), as VLM2Vec builds it:
    `num_crops` passed to `from_pretrained` (None: the folder's own), right padding."""
    from transformers import AutoProcessor
    kwargs = {} if num_crops is None else {"num_crops": int(num_crops)}
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True, **kwargs)
    processor.tokenizer.padding_side = "right"
    return processor


def _load_processor(family: str, model_dir: Path, trust_remote_code: bool):
    """The family's processor rebuilt from the folder's tokenizer + image processor + processor kwargs."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    ip = image_processor_class(family).from_pretrained(model_dir)
    proc_cls = processor_class(family)
    kwargs: dict[str, Any] = {}
    cfg_file = model_dir / "processor_config.json"
    if cfg_file.exists():
        saved = json.loads(cfg_file.read_text(encoding="utf-8"))
        accepted = set(inspect.signature(proc_cls.__init__).parameters)
        kwargs = {k: v for k, v in saved.items()
                  if k in accepted and k not in ("image_processor", "tokenizer", "video_processor", "self")}
    if family in ("llava", "llava_next") and kwargs.get("patch_size") is None:
        # older llava-hf repos keep these only in config.json; the processor needs them to expand <image>
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        kwargs["patch_size"] = (config.get("vision_config") or {}).get("patch_size")
        kwargs.setdefault("vision_feature_select_strategy", config.get("vision_feature_select_strategy"))
        clip_tower = (config.get("vision_config") or {}).get("model_type") == "clip_vision_model"
        kwargs.setdefault("num_additional_image_tokens", 1 if clip_tower else 0)  # CLIP's CLS token
    template = model_dir / "chat_template.jinja"
    if template.exists() and "chat_template" not in kwargs:
        kwargs["chat_template"] = template.read_text(encoding="utf-8")
    return proc_cls(image_processor=ip, tokenizer=tok, **kwargs)


def _resolve_hub(repo_id: str, revision: str | None, trust_remote_code: bool = False) -> tuple[Path, str]:
    """Download (or find in the cache) the files of a Hub model; return (folder, resolved commit).

    config.json comes first and alone: a model of a family this trainer does not support is refused
    before its weights (gigabytes) download. The rest is fetched at the commit config.json came from."""
    from huggingface_hub import hf_hub_download, snapshot_download
    config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
    commit = config.parent.name if re.fullmatch(r"[0-9a-f]{40}", config.parent.name) else (revision or "")
    family = detect_family(config.parent, name=f"{repo_id}@{commit or 'main'}")
    if family in REMOTE_CODE_FAMILIES and not trust_remote_code:  # refused before any code downloads
        refuse_remote_code(family, repo_id)
    folder = Path(snapshot_download(
        repo_id, revision=commit or revision,
        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
        + (["*.py"] if trust_remote_code else [])))  # remote code is fetched only when it may run
    return folder, commit


def load_backbone(path_or_id: str, *, revision: str | None = None, trust_remote_code: bool = False,
                  torch_dtype=None, num_crops: int | None = None) -> Backbone:
    """Load a backbone from a `save_backbone` folder, a Hub-layout folder, or a Hub model id.

    A Hub id is fetched with `huggingface_hub.snapshot_download` (weights as safetensors only) at
    `revision`; the resolved commit goes to `info["revision"]`. `trust_remote_code` is off unless asked.
    Weights load in `torch_dtype`: float32 when None, whatever the checkpoint stores (transformers 5
    would otherwise keep a bf16 checkpoint in bf16), and the checkpoint's own dtype for "auto".
    A local folder has no revision: `info["revision"]` is None and `info["source"]` is "local"; its
    files are verified against its digests.json first (`pipelines.digests.verify`: an IntegrityError
    names a file whose bytes changed; a folder without digests loads with a warning).

    A family whose code ships with the model (`REMOTE_CODE_FAMILIES`: Phi-3-V) loads only with
    `trust_remote_code` (else `RemoteCodeRefused`), or from a `save_backbone` folder of one that was
    loaded with it (its backbone.json records `info["remote_code"]`) whose digests.json verifies: the
    code that runs is then the code the opt-in admitted, byte for byte. `num_crops` (Phi-3-V) goes
    to its processor's `from_pretrained`, as VLM2Vec passes it; None keeps the folder's own.
    """
    path = Path(path_or_id)
    if path.is_dir():
        if revision:
            log.info("%s is a local folder: revision %r does not apply", path, revision)
        folder, name, commit = path, str(path_or_id), None
        verified = digests.verify(folder) is not None
    elif path.exists():
        raise NotADirectoryError(f"{path} is a file, not a model folder")
    else:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path_or_id)):
            raise FileNotFoundError(f"{path_or_id!r} is neither a model folder nor a Hub id (org/name)")
        if Path(path.parts[0]).is_dir():  # "models/base" before the backbone stage ran: not a Hub id
            raise FileNotFoundError(f"no model folder {path} (its parent {path.parent} exists here); "
                                    "run the stage that writes it, or give a Hub id")
        folder, commit = _resolve_hub(str(path_or_id), revision, trust_remote_code)
        name, verified = str(path_or_id), False
    meta_file = folder / BACKBONE_JSON
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else None
    family = meta["family"] if meta else detect_family(folder)
    _check_family(family)
    remote = family in REMOTE_CODE_FAMILIES
    if remote and not trust_remote_code:
        if not (meta and verified and (meta.get("info") or {}).get("remote_code")):
            refuse_remote_code(family, name)
        log.info("%s: running its own %s code, admitted when it was fetched and verified by its digests",
                 name, family)
        trust_remote_code = True
    if remote:
        processor = _load_remote_processor(folder, num_crops)
    else:
        processor = _load_processor(family, folder, trust_remote_code)
    kwargs: dict[str, Any] = dict(trust_remote_code=trust_remote_code,
                                  dtype=torch.float32 if torch_dtype is None else torch_dtype)
    if remote:
        kwargs["attn_implementation"] = "eager"  # as VLM2Vec loads Phi-3-V (its config asks for flash-attn)
    model = model_class(family).from_pretrained(folder, **kwargs)
    model.eval()
    if meta:
        info = dict(meta.get("info") or {})
        return Backbone(model=model, processor=processor, family=family, image_token=meta["image_token"],
                        kind=meta["kind"], lora_targets=meta["lora_targets"], info=info)
    info = dict(name=name, revision=commit, source="local" if path.is_dir() else "hub", **_config_summary(model))
    if remote:
        info["remote_code"] = True
    log.info("loaded %s (%s, revision %s)", name, family, commit)
    return Backbone(model=model, processor=processor, family=family, image_token=IMAGE_TOKENS[family],
                    kind=_kind(family), lora_targets=LORA_TARGETS[family], info=info)
