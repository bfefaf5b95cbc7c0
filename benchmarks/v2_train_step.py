"""The cost of a training step on MMEB-V2 pairs against V1 image pairs, on the default pipeline's tiny
Qwen2-VL (hidden 128, 2 layers, 64 px images, full fine-tuning as `train.lora_rank: 0`).

    python benchmarks/v2_train_step.py [--batch 32] [--frames 8] [--side 64] [--threads 2] [--lora 0]
                                       [--rounds 5] [--clock wall|cpu]

A batch of `--batch` pairs of one kind, the sides as the shards give them (pictures already at
`--side` x `--side`, the pre-scaled training resolution): image -> text (a V1 pair), page -> text
(colpali_train_set), video -> text (LLaVA-Hound captions, `--frames` frames), text -> video
(LLaVA-Hound video retrieval); and three mixed batches, each collated and embedded as one padded
batch per side (`train.sub_batches: none`) and by input kind (`kind`, the trainer's own
`collate_chunks` and `in_batch_order`): the four kinds in equal blocks; V1 pairs, half of them
image -> text and half text -> image (MMEB-train mixes such datasets); V1 pairs with one video pair
(about the default run's share of V2 pairs). Per kind: the
Collator's time for the batch (the loader's CPU work), the step's time (the forward of queries and
targets, InfoNCE, backward, gradient clipping, AdamW: the trainer's step without GradCache), both
medians of 5 steps after 1 warm-up, and the vision tokens a row. The machine is otherwise idle or
not, as the caller says.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.backbone.families import build_tiny  # noqa: E402
from trainer.model.embedder import Embedder  # noqa: E402
from trainer.model.inputs import Collator  # noqa: E402
from trainer.train.losses import in_batch_order, info_nce  # noqa: E402
from trainer.train.stream import collate_chunks  # noqa: E402

SINGLE = ("image", "page", "video", "text->video")
MIXES = ("mixed", "V1 i2t + t2i", "V1 + 1 video")
KINDS = SINGLE + tuple(f"{mix}{suffix}" for mix in MIXES for suffix in ("", ", by kind"))


def picture(seed: int, side: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def pair(kind: str, i: int, frames: int, side: int) -> tuple[tuple[dict, object], tuple[dict, object]]:
    """((query side, its visual), (target side, its visual)) of pair `i` of `kind`."""
    text = {"raw": f"a caption of item {i} with a few words", "image": None, "video": None}
    video = [picture(1000 * i + f, side) for f in range(frames)]
    if kind == "image":
        return ({"raw": "<|image_1|>\nRepresent the given image.", "image": {}}, picture(i, side)), (text, None)
    if kind == "page":
        return ({"raw": f"<|image_1|> what does page {i} say?", "image": {}}, picture(i, side)), (text, None)
    if kind == "video":
        return ({"raw": "<|video_1|>\nDescribe the video.", "video": [{}] * frames}, video), (text, None)
    if kind == "text->image":
        return (({"raw": f"Find me an everyday image that matches the given caption: item {i}"}, None),
                ({"raw": "<|image_1|>\nRepresent the given image.", "image": {}}, picture(i, side)))
    return (({"raw": f"Find a video that contains the following visual content: item {i}"}, None),
            ({"raw": "Understand the content of the provided video: <|video_1|>", "video": [{}] * frames}, video))


def batch_pairs(kind: str, size: int, frames: int, side: int) -> list:
    mix = kind.removesuffix(", by kind")
    if mix in SINGLE:
        return [pair(kind, i, frames, side) for i in range(size)]
    if mix == "mixed":
        return [pair(k, i, frames, side) for k in SINGLE for i in range(size // 4)]
    if mix == "V1 i2t + t2i":
        return [pair("image" if i % 2 else "text->image", i, frames, side) for i in range(size)]
    return [pair("video" if i == size // 2 else "image", i, frames, side) for i in range(size)]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU seconds, all threads
CLOCK = CLOCKS["wall"]


def timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("batch", 32), ("frames", 8), ("side", 64), ("threads", 2), ("rounds", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank; 0: full fine-tuning")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: the process's CPU time, steadier than wall time on a shared machine")
    args = parser.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = build_tiny("qwen2_vl", hidden_size=128, layers=2, image_size=64)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        get_peft_model(backbone.model, LoraConfig(r=args.lora, target_modules=backbone.lora_targets))  # in place
    embedder = Embedder(backbone).train()
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    collator = Collator(backbone, max_text_tokens=64, image_max_pixels=args.side * args.side)
    print(f"batch {args.batch} pairs, {args.frames} frames a video, {args.side} x {args.side} px, "
          f"{args.threads} threads, {'LoRA r=%d' % args.lora if args.lora else 'full fine-tuning'}, {args.clock} time")
    print("| pairs | collate ms | step ms | step / image step (same round) | vision tokens a row (query, target) |")
    print("|---|---|---|---|---|")
    cases = {kind: Case(kind, batch_pairs(kind, args.batch, args.frames, args.side), collator, embedder, params,
                        optimizer) for kind in KINDS}
    for case in cases.values():  # warm-up
        case.step()
    times = {kind: {"collate": [], "step": [], "ratio": []} for kind in KINDS}
    for _ in range(args.rounds):  # the kinds interleaved: a ratio within a round shares the machine's load
        row = {kind: (timed(case.collate), timed(case.step)) for kind, case in cases.items()}
        for kind, (collate_s, step_s) in row.items():
            times[kind]["collate"].append(collate_s)
            times[kind]["step"].append(step_s)
            times[kind]["ratio"].append(step_s / row["image"][1])
    for kind, case in cases.items():
        med = {k: statistics.median(v) for k, v in times[kind].items()}
        print(f"| {kind} | {med['collate'] * 1e3:.0f} | {med['step'] * 1e3:.0f} | {med['ratio']:.2f} | "
              f"{case.tokens[0]:g}, {case.tokens[1]:g} |")


class Case:
    """One kind's batch: its collation and its training step. ", by kind": each side's rows collated
    and embedded by input kind, as the trainer does with `train.sub_batches: kind`."""

    def __init__(self, kind, pairs, collator, embedder, params, optimizer):
        self.kind, self.collator, self.embedder, self.params, self.optimizer = kind, collator, embedder, params, optimizer
        (self.qs, self.qv), (self.ts, self.tv) = zip(*[p[0] for p in pairs]), zip(*[p[1] for p in pairs])
        self.sub_batches = "kind" if kind.endswith(", by kind") else "none"
        self.query, self.target = self.collate()
        self.tokens = [sum(map(vision_tokens, encs)) / len(pairs) for encs, _ in (self.query, self.target)]

    def collate(self):
        """Per side: (its collated chunks, the batch row of each embedded row)."""
        return tuple(collate_chunks(self.collator, list(texts), list(visual), 0, self.sub_batches)
                     for texts, visual in ((self.qs, self.qv), (self.ts, self.tv)))

    def embed(self, side) -> torch.Tensor:
        encs, order = side
        return in_batch_order(torch.cat([self.embedder(enc) for enc in encs]), order)

    def step(self) -> None:
        loss = info_nce(self.embed(self.query), self.embed(self.target), temperature=0.02)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def vision_tokens(enc: dict) -> int:
    """The language model's vision tokens of a batch (patches / merge 2 x 2)."""
    grids = [enc[k] for k in ("image_grid_thw", "video_grid_thw") if k in enc]
    return int(sum(int(g.prod(-1).sum()) for g in grids)) // 4


if __name__ == "__main__":
    main()
