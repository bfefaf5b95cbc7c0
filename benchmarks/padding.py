"""How much of the language model's input is padding: one padded batch per side against sub-batches
by input kind (`train.sub_batches`), without and with GradCache chunks.

    python benchmarks/padding.py [--rows 400] [--batch 64] [--steps 16] [--gc-chunk 16]
                                 [--max-pixels 1003520] [--workers 2]
    python benchmarks/padding.py --shards data/shards/train --base models/base   # the default run's data

It counts, it does not time, so its figures do not depend on the machine. For each setting,
`sub_batches` none or kind, no GradCache or chunks of `--gc-chunk`, it reads the same `--steps`
batches of `--batch` pairs from the training stream (`ContrastiveStream`, seed 0: the batches do
not depend on the setting) collated by the trainer's `Collator`, and adds up per step the model's
real tokens and its token positions (rows x padded length, over every chunk of every side: the
positions the language model's layers compute on, image tokens included). Reported per setting:
the padding share (1 - tokens / positions), positions per pair, and positions against `none`
without GradCache (VLM2Vec's batching). The real tokens are the same in every setting (checked).

Data: by default `benchmarks/loader.py`'s stand-in of MMEB-train (five real subset names with
MMEB's strings: VisDial's text queries and image targets beside subsets with image queries and
text or image targets; JPEGs of 640x480 to 1600x1200), sharded at `--max-pixels` on Qwen2-VL's
28 px grid, and the tiny Qwen2-VL with Qwen2-VL-2B's image processor at that resolution (patch 14,
merge 2), as a 2B run sees them: an image is hundreds of tokens, a text query tens. With
`--shards` and `--base`: those shards and that backbone (its processor as it is), at
`--max-pixels` (default: none). JSON to benchmarks/_work/padding.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import loader  # noqa: E402
from trainer.backbone.families import build_tiny, load_backbone  # noqa: E402
from trainer.model.inputs import Collator  # noqa: E402
from trainer.train.stream import ContrastiveStream, StreamConfig, make_loader, read_shards  # noqa: E402

OUT = REPO / "benchmarks" / "_work" / "padding.json"


def count(shards: Path, collator: Collator, *, batch: int, steps: int, gc_chunk: int, sub_batches: str,
          max_pixels: int | None, workers: int) -> dict:
    """Real tokens, token positions and pairs over the stream's first `steps` batches."""
    config = StreamConfig(seed=0, global_batch=batch, slots_per_rank=max(1, workers), shuffle_buffer=1000,
                          gc_chunk_size=gc_chunk, image_max_pixels=max_pixels, sub_batches=sub_batches)
    batches = iter(make_loader(ContrastiveStream(read_shards(shards), config, collator), workers))
    tokens = positions = pairs = 0
    for _ in range(steps):
        b = next(batches)
        tokens, positions, pairs = tokens + b["tokens"], positions + b["positions"], pairs + b["pairs"]
    return {"tokens": tokens, "positions": positions, "pairs": pairs}


def data(args) -> tuple[Path, Collator]:
    """The shards and the Collator of the run (`--shards`/`--base`, or loader.py's stand-in)."""
    if args.shards:
        backbone = load_backbone(str(args.base))
        return Path(args.shards), Collator(backbone, max_text_tokens=256, image_max_pixels=args.max_pixels)
    run = loader.prepare(args.rows, (args.max_pixels,))
    backbone = loader.at_resolution(build_tiny("qwen2_vl", seed=0, image_size=64, hidden_size=64, layers=2),
                                    args.max_pixels)
    collator = Collator(backbone, max_text_tokens=256, image_max_pixels=args.max_pixels)
    return loader.shard_dir(run, args.max_pixels, loader.GRID), collator


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400, help="rows of loader.py's stand-in (default 400)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--gc-chunk", type=int, default=16)
    ap.add_argument("--max-pixels", type=int, default=None,
                    help="image_max_pixels (default 1003520 for the stand-in, none with --shards)")
    ap.add_argument("--shards", type=Path, default=None)
    ap.add_argument("--base", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if bool(args.shards) != bool(args.base):
        ap.error("--shards and --base go together")
    if not args.shards and args.max_pixels is None:
        args.max_pixels = 1280 * 28 * 28
    torch.set_num_threads(1)
    shards, collator = data(args)
    rows = []
    for gc_chunk in (0, args.gc_chunk):
        for sub_batches in ("none", "kind"):
            counts = count(shards, collator, batch=args.batch, steps=args.steps, gc_chunk=gc_chunk,
                           sub_batches=sub_batches, max_pixels=args.max_pixels, workers=args.workers)
            rows.append({"gc_chunk": gc_chunk, "sub_batches": sub_batches, **counts,
                         "padding": round(1 - counts["tokens"] / counts["positions"], 4),
                         "positions_per_pair": round(counts["positions"] / counts["pairs"], 1)})
    if len({r["tokens"] for r in rows}) != 1:
        raise RuntimeError(f"the settings saw different real tokens: {[r['tokens'] for r in rows]}")
    for r in rows:
        r["vs_one_batch"] = round(r["positions"] / rows[0]["positions"], 3)
    result = {"shards": str(shards), "batch": args.batch, "steps": args.steps, "max_pixels": args.max_pixels,
              "tokens_per_pair": round(rows[0]["tokens"] / rows[0]["pairs"], 1), "rows": rows}
    print(f"{args.steps} batches of {args.batch} pairs from {shards}, image_max_pixels {args.max_pixels}: "
          f"{result['tokens_per_pair']} real tokens a pair")
    print("| GradCache chunk | sub_batches | padding share | positions a pair | positions / one padded batch |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['gc_chunk'] or 'off'} | {r['sub_batches']} | {r['padding']:.3f} | {r['positions_per_pair']:.1f} "
              f"| {r['vs_one_batch']:.3f} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
