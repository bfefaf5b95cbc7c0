"""The backbone stage's library: the base model, built offline or fetched, saved to models/base.

    backbone = build(params.backbone, train_dir=..., images_dir=..., out=Path("models/base"))

* `name: tiny-<family>` (the default tiny-qwen2-vl; e.g. tiny-llava, tiny-smolvlm): a small model built
  from a config (`families.build_tiny`) with a byte-level BPE tokenizer trained on the normalized
  train texts, then warmed up generatively for `pretrain_steps` steps on the train data
  (`pretrain.pretrain`), so that its image tokens mean something before contrastive training. Dual
  encoders (tiny-clip, tiny-siglip) are not warmed up. Sizes: the `tiny_*` params.
* `name: <org>/<model>` (e.g. Qwen/Qwen2-VL-2B-Instruct): fetched with huggingface_hub at `revision`
  (the resolved commit is recorded in backbone.json), its family from config.json's model_type;
  the repo's own code runs only with `trust_remote_code`.

Deterministic for `seed`: the same params and data give a byte-identical models/base on one machine.
The folder is built beside its final place and renamed into it (`pipelines.files.atomic_dir`), so a
failed run leaves no half model behind.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from pipelines import files
from pipelines.params import Backbone as BackboneParams

log = logging.getLogger(__name__)

TRAIN_DIR = Path("data/normalized/train")
IMAGES_DIR = Path("data/normalized/images")
OUT = Path("models/base")
TINY_PREFIX = "tiny-"


def tiny_family(name: str) -> str | None:
    """`tiny-qwen2-vl` -> "qwen2_vl"; None when `name` is not a tiny-model name."""
    from trainer.backbone.families import FAMILIES

    if not name.startswith(TINY_PREFIX):
        return None
    family = name[len(TINY_PREFIX):].replace("-", "_")
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny backbone {name!r}; known: "
                         f"{', '.join(TINY_PREFIX + f.replace('_', '-') for f in FAMILIES)}")
    return family


def build_pretrained_tiny(params: BackboneParams, *, train_dir: Path, images_dir: Path):
    """A tiny backbone with a tokenizer trained on the train texts, generatively pretrained."""
    from trainer.backbone.families import build_tiny, train_family_tokenizer
    from trainer.backbone.pretrain import load_examples, pretrain
    from trainer.backbone.tokenizer import corpus_from_normalized

    family = tiny_family(params.name)
    # tiny matrices gain nothing from threads, and on a shared CPU extra threads cost several times the work
    torch.set_num_threads(params.tiny_threads)
    raw = train_family_tokenizer(family, corpus_from_normalized(train_dir), vocab_size=params.tiny_vocab_size)
    backbone = build_tiny(family, seed=params.seed, image_size=params.tiny_image_size, tokenizer=raw,
                          hidden_size=params.tiny_hidden_size, layers=params.tiny_layers)
    backbone.info.update(name=params.name, tokenizer=dict(kind="byte-level BPE", trained_on=str(train_dir),
                                                          vocab_size=raw.get_vocab_size()))
    steps = params.pretrain_steps
    if backbone.kind == "vlm" and steps > 0:
        examples, images = load_examples(train_dir, images_dir, max_image_pixels=params.tiny_image_size ** 2)
        started = time.monotonic()
        summary = pretrain(backbone, examples, images, steps=steps, seed=params.seed,
                           batch_size=params.pretrain_batch_size, lr=params.pretrain_lr)
        log.info("pretrained %d steps in %.1f s: loss %.3f -> %.3f", steps, time.monotonic() - started,
                 summary["loss_first"], summary["loss_last"])
        backbone.info["pretrain"] = summary
    else:
        backbone.info["pretrain"] = None
        if steps > 0:
            log.info("%s is a dual encoder: no generative warm-up", params.name)
    return backbone


def build(params: BackboneParams, *, train_dir: Path = TRAIN_DIR, images_dir: Path = IMAGES_DIR,
          out: Path = OUT):
    """Build or fetch the backbone `params` describe and save it to `out`; return the Backbone."""
    from trainer.backbone.families import load_backbone, save_backbone

    random.seed(params.seed)
    torch.manual_seed(params.seed)
    with files.atomic_dir(out) as tmp:  # opened first: an output folder that cannot be written fails at once
        if tiny_family(params.name) is not None:
            backbone = build_pretrained_tiny(params, train_dir=Path(train_dir), images_dir=Path(images_dir))
        else:
            # models/base keeps the checkpoint's dtype (bf16: half the bytes)
            backbone = load_backbone(params.name, revision=params.revision,
                                     trust_remote_code=params.trust_remote_code, torch_dtype="auto",
                                     num_crops=params.num_crops)
            log.info("fetched %s at %s (%s, %s parameters)", params.name, backbone.info.get("revision"),
                     backbone.family, backbone.info.get("parameters"))
        save_backbone(backbone, tmp)
    log.info("wrote %s (%s)", out, backbone.info.get("name"))
    return backbone
