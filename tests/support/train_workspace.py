"""A training workspace for the recipe's tests: a tiny Qwen2-VL base and shards of shape / caption pairs.

    train(params(steps=2), paths_in(workspace))     # `workspace`: a fixture of tests/conftest.py

`BASE_PARAMS` is a complete train section (a `pipelines.params.Train`) sized for a CPU test run;
`params(**overrides)` is it with some values changed (checked again by the contract).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from pipelines.params import Train
from tests.support.images import encode
from tests.support.params import write_params
from tests.support.shards import make_side, write_test_shards
from trainer.train.paths import TrainPaths

ROOT = Path(__file__).resolve().parents[2]

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20),
           "purple": (140, 40, 170), "orange": (240, 130, 20), "black": (10, 10, 10), "cyan": (20, 200, 210)}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = [(c, s) for c in COLOURS for s in SHAPES]
INSTRUCTION = "Represent the given image"

BASE_PARAMS = Train.parse(dict(
    seed=0, steps=6, batch_size=8, gc_chunk_size=0, learning_rate=0.002, warmup_steps=2, weight_decay=0.0,
    max_grad_norm=1.0, temperature=0.05, hard_negatives=0, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
    lora_targets="default", dora=False, max_text_tokens=32, image_max_pixels=1024, instructions=True,
    positions="grid", stray_image_token="strip", image_resize="collator", image_square=None, small_image_side=None,
    prompt="vlm2vec", video_max_pixels=None, mixture="proportional", homogeneous_batch=0, shuffle_buffer=16,
    num_workers=0, save_every=3, precision="fp32",
    lora_dtype="fp32", batched_vision_attention=True, compile=False, pad_to_multiple_of=1, sub_batches="kind",
    fsdp=False,
))


def params(**overrides) -> Train:
    """`BASE_PARAMS` with `overrides`."""
    return replace(BASE_PARAMS, **overrides)


def render(colour: str, shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A shape of a colour on a light background, with jittered position and size."""
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    r = int(rng.integers(7, 11))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    draw, fill = ImageDraw.Draw(img), COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def shape_record(dataset: str, i: int):
    rng = np.random.default_rng([1, i])
    colour, shape = CAPTIONS[i % len(CAPTIONS)]
    return ({"query": make_side("", encode(render(colour, shape, rng)), "query.png", INSTRUCTION),
             "target": make_side(f"a {colour} {shape}"), "negatives": [make_side(f"a {colour} {s}")
                                                                         for s in SHAPES if s != shape]}, {})


def mixed_record(dataset: str, i: int):
    """Shape images with captions in one dataset, text-only queries (image targets) in the other, so
    that with homogeneous sub-batches one rank can embed images where the other embeds none."""
    if dataset.endswith("Text"):
        rng = np.random.default_rng([2, i])
        colour, shape = CAPTIONS[i % len(CAPTIONS)]
        return ({"query": make_side(f"a {colour} {shape}", instruction="Find the image"),
                 "target": make_side("", encode(render(colour, shape, rng)), "target.png"),
                 "negatives": []}, {})
    return shape_record(dataset, i)


def write_workspace(root: Path) -> Path:
    """root/models/base (tiny Qwen2-VL) + root/data/shards/train (480 shape/caption pairs in 2 datasets)."""
    from trainer.backbone.families import build_tiny, save_backbone

    save_backbone(build_tiny("qwen2_vl", seed=0, image_size=32, hidden_size=64, layers=2), root / "models/base")
    write_test_shards(root / "data/shards/train", {"Syn-ShapesA": 240, "Syn-ShapesB": 240}, per_shard=60,
                      make_record=shape_record)
    return root


def paths_in(ws: Path, **kw) -> TrainPaths:
    return TrainPaths(base=ws / "models/base", shards=ws / "data/shards/train", out=ws / "models/embedder",
                      checkpoints=ws / "models/checkpoints", metrics=ws / "metrics/train", **kw)


def merged_weights(ws: Path) -> dict[str, torch.Tensor]:
    return load_file(ws / "models/embedder/merged/model.safetensors")


def stage_cmd(ws: Path, train: Train) -> tuple[list[str], dict]:
    """`python -m stages.train` in `ws` with the repository's params.yaml, its train section `train`."""
    write_params(ws / "params.yaml", train=train.to_dict())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "VLM2VEC_TRAIN_IDS_LOG": str(ws / "ids.jsonl"), "DVCLIVE_LOGLEVEL": "ERROR"}
    return [sys.executable, "-m", "stages.train", "--params", "params.yaml"], env


def torchrun(ws: Path, train: Train) -> None:
    """The stage on 2 CPU ranks (gloo) in `ws`."""
    _, env = stage_cmd(ws, train)
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "stages.train", "--params", "params.yaml"]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
