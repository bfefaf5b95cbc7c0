"""Stage `backbone`: write the base model to models/base (a `trainer.backbone.families.save_backbone` folder).

    python -m stages.backbone            # params section `backbone`

* `name: tiny-qwen2-vl` (default; any `tiny-<family>` works, e.g. tiny-llava, tiny-smolvlm): a small
  model built offline from a config with a byte-level BPE tokenizer trained on the synthetic train
  texts, then pretrained generatively for `pretrain_steps` steps on the synthetic train data
  (`trainer.backbone.pretrain`; dual encoders tiny-clip / tiny-siglip are not pretrained). Sizes: optional
  params `tiny_hidden_size` (128), `tiny_layers` (2), `tiny_image_size` (64 -> 16 image tokens),
  `tiny_vocab_size` (2048), `tiny_threads` (1: torch threads during the warm-up).
* `name: <org>/<model>` (e.g. Qwen/Qwen2-VL-2B-Instruct): fetched with huggingface_hub at `revision`
  (the resolved commit is recorded in backbone.json), family from config.json's model_type;
  `trust_remote_code` only when the param says so.

Deterministic for `seed`: same params + same data -> byte-identical models/base on one machine.
The folder is written next to its final place and renamed into it, so a failed run leaves no half
model behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from stages.common import check_keys, load_params, setup_logging

TRAIN_DIR = Path("data/normalized/train")
IMAGES_DIR = Path("data/normalized/images")
OUT = Path("models/base")
TINY_PREFIX = "tiny-"
PARAMS = ("name", "revision", "trust_remote_code", "seed", "pretrain_steps", "pretrain_batch_size", "pretrain_lr",
          "tiny_hidden_size", "tiny_layers", "tiny_image_size", "tiny_vocab_size", "tiny_threads")

log = logging.getLogger("backbone")


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


def build_pretrained_tiny(params: Mapping[str, Any], *, train_dir: Path, images_dir: Path):
    """A tiny backbone with a tokenizer trained on the train texts, generatively pretrained."""
    from trainer.backbone.families import build_tiny, train_family_tokenizer
    from trainer.backbone.pretrain import load_examples, pretrain
    from trainer.backbone.tokenizer import corpus_from_normalized

    family = tiny_family(params["name"])
    seed = int(params.get("seed", 0))
    # tiny matrices gain nothing from threads, and on a shared CPU extra threads cost several times
    # the work (measured: 2.3 s/step with 2 contended threads vs 0.25 s/step with one)
    torch.set_num_threads(int(params.get("tiny_threads", 1)))
    image_size = int(params.get("tiny_image_size", 64))
    raw = train_family_tokenizer(family, corpus_from_normalized(train_dir),
                                 vocab_size=int(params.get("tiny_vocab_size", 2048)))
    backbone = build_tiny(family, seed=seed, image_size=image_size, tokenizer=raw,
                          hidden_size=int(params.get("tiny_hidden_size", 128)),
                          layers=int(params.get("tiny_layers", 2)))
    backbone.info.update(name=params["name"], tokenizer=dict(kind="byte-level BPE", trained_on=str(train_dir),
                                                             vocab_size=raw.get_vocab_size()))
    steps = int(params.get("pretrain_steps", 0))
    if backbone.kind == "vlm" and steps > 0:
        examples, images = load_examples(train_dir, images_dir, max_image_pixels=image_size * image_size)
        started = time.monotonic()
        summary = pretrain(backbone, examples, images, steps=steps, seed=seed,
                           batch_size=int(params.get("pretrain_batch_size", 32)),
                           lr=float(params.get("pretrain_lr", 2e-3)))
        log.info("pretrained %d steps in %.1f s: loss %.3f -> %.3f", steps, time.monotonic() - started,
                 summary["loss_first"], summary["loss_last"])
        backbone.info["pretrain"] = summary
    else:
        backbone.info["pretrain"] = None
        if steps > 0:
            log.info("%s is a dual encoder: no generative warm-up", params["name"])
    return backbone


def run(params: Mapping[str, Any], *, train_dir: Path = TRAIN_DIR, images_dir: Path = IMAGES_DIR,
        out: Path = OUT):
    """Build or fetch the backbone described by `params` and save it to `out`; return the Backbone."""
    from trainer.backbone.families import load_backbone, save_backbone

    check_keys("backbone", params, PARAMS)
    seed = int(params.get("seed", 0))
    random.seed(seed)
    torch.manual_seed(seed)
    name = str(params["name"])
    if tiny_family(name) is not None:
        backbone = build_pretrained_tiny(params, train_dir=Path(train_dir), images_dir=Path(images_dir))
    else:
        revision = params.get("revision") or None
        backbone = load_backbone(name, revision=revision, trust_remote_code=bool(params.get("trust_remote_code", False)),
                                 torch_dtype="auto")  # models/base keeps the checkpoint's dtype (bf16: half the bytes)
        log.info("fetched %s at %s (%s, %s parameters)", name, backbone.info.get("revision"), backbone.family,
                 backbone.info.get("parameters"))
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_backbone(backbone, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("wrote %s (%s)", out, backbone.info.get("name"))
    return backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"model folder (default: {OUT})")
    args = parser.parse_args(argv)
    setup_logging("backbone")
    run(load_params("backbone", path=args.params), out=args.out)


if __name__ == "__main__":
    main()
