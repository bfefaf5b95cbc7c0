"""The cost of each MMEB-V2 video input mode on a tiny Qwen2-VL: `videos=` (one item a video) against
the frame mean (one image item a frame), and SmolVLM's frames as several images of one row.

    python benchmarks/video_input.py [--videos 64] [--frames 8] [--side 64] [--threads 2]

Each video is `--frames` noise frames of `--side` x `--side` pixels, with V2's video-classification
prompt; every mode encodes all videos in batches of 8 (the frame mean: 8 frames a batch) with the
images capped at side x side pixels; the machine is otherwise idle or not, as the caller says. Prints per mode the encoder rows, vision tokens per video, the
median wall time of 3 runs and the videos a second.
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
from trainer.embed import DEFAULT_COLLATION, EmbeddingModel  # noqa: E402

PROMPT = "<|video_1|> What actions or objects interactions are the person in the video doing?"


def frames_of(video: int, count: int, side: int) -> list[Image.Image]:
    rng = np.random.default_rng(video)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def timed(encode) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        encode()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = [frames_of(v, args.frames, args.side) for v in range(args.videos)]
    collation = dict(DEFAULT_COLLATION, image_max_pixels=args.side * args.side)
    side = {"raw": PROMPT, "text": PROMPT[len("<|video_1|> "):]}
    as_image = {**side, "raw": PROMPT.replace("<|video_1|>", "<|image_1|>")}
    frames = [f for v in videos for f in v]
    print(f"{args.videos} videos of {args.frames} frames, {args.side} x {args.side} px, {args.threads} threads")
    print("| model | video input | encoder rows | vision tokens a video | seconds | videos/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for family in ("qwen2_vl", "smolvlm"):
        model = EmbeddingModel(build_tiny(family, image_size=max(32, args.side)), collation=collation,
                               fingerprint=family, path=None)
        fmt = model.collator.format
        modes = [("native" if family == "qwen2_vl" else "frames_as_images", [side] * len(videos), videos, 8),
                 ("frames_mean", [as_image] * len(frames), frames, 8)]
        for mode, sides, inputs, batch in modes:
            token = fmt.video_token if mode == "native" else fmt.image_token
            vision_id = model.collator.tokenizer.convert_tokens_to_ids(token)
            tokens = int((model.collator(sides[:1], inputs[:1])["input_ids"] == vision_id).sum())
            per_video = tokens * (args.frames if mode == "frames_mean" else 1)
            seconds = timed(lambda: model.encode(sides, inputs, batch_size=batch, progress=False))
            print(f"| {family} | {mode} | {len(sides)} | {per_video} | {seconds:.2f} | {args.videos / seconds:.1f} |")


if __name__ == "__main__":
    main()
