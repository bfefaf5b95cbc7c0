"""Loader benchmark: model-ready pairs/s of the streaming shard loader vs a VLM2Vec-style loader.

    python benchmarks/loader.py [--rows N] [--pairs P] [--repeats R] [--workers W] [--append]

1. Data (cached under benchmarks/_work/loader/): MMEB-train in the Hub layout from benchmarks/etl.py's
   generator (5 real subset names, MMEB-style strings, JPEGs from 640x480 to 1600x1200 in
   images_zip/), then the real `normalize` stage and the `shard` stage once per setting
   (subprocesses, params.yaml defaults: shard.max_image_side 1344; shard.max_image_pixels off, and
   = each `image_max_pixels` setting), and the zips extracted to a folder for the VLM2Vec-style path.
2. Both loaders deliver the same thing: query and target batches of `--batch` pairs collated by the
   same `trainer.inputs.Collator` (tiny Qwen2-VL processor, its max_pixels set to the setting as a
   real run sets it) in `--workers` DataLoader workers.
   * streaming: `trainer.data.ContrastiveStream` over the shards (tar streams, shuffle windows,
     decode + collate in the workers; JPEGs far above image_max_pixels decoded at reduced DCT
     scale), twice: over shards pre-scaled to the setting (shard.max_image_pixels =
     image_max_pixels, what the pipeline does) and over unscaled shards (max_image_pixels null);
   * VLM2Vec-style (their V1 `TrainTextImageDataset` + collator): HF `datasets` over the source
     parquet files, a map-style dataset whose `__getitem__` does `Image.open` of the full-size image
     file, DataLoader(shuffle=True, collate_fn = the same Collator).
3. For each `image_max_pixels` setting (4096 = this pipeline's tiny default; 1003520 = 1280*28*28,
   VLM2Vec's Qwen2-VL max_pixels) it times `--pairs` pairs after one warm-up batch, alternating the
   three loaders `--repeats` times (median), and prints pairs/s side by side. The shard stage's time
   per setting is printed too: pre-scaling is paid once, not every epoch. `--append` adds the table
   and the command to benchmarks/RESULTS.md ("Loader" section).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import etl  # noqa: E402  (the ETL benchmark's MMEB-layout generator)

from pipelines.schema import IMAGE_TOKEN  # noqa: E402
from trainer.backbones import build_tiny  # noqa: E402
from trainer.data import ContrastiveStream, StreamConfig, make_loader, read_shards  # noqa: E402
from trainer.inputs import Collator  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "loader"
MAX_PIXELS = (4096, 1280 * 28 * 28)


# --- data -------------------------------------------------------------------------------------
def shard_dir(run: Path, max_pixels: int | None) -> Path:
    return run / "data" / "shards" / f"max-pixels-{max_pixels}"


def prepare(rows: int) -> Path:
    run = WORK / f"rows-{rows}"
    raw = run / "data" / "raw"
    sizes = etl.generate(raw, rows)
    if not (run / "data/normalized/train").exists():
        params = etl.write_params(run, 2, None)
        subprocess.run([sys.executable, "-m", "stages.normalize"], cwd=run, env=etl.child_env(params), check=True)
    for max_pixels in (None, *MAX_PIXELS):  # shards without a pixel cap, and pre-scaled to each setting
        out = shard_dir(run, max_pixels)
        if not (out / "index.json").exists():
            params = etl.write_params(run, 2, None, max_pixels, name=f"params-{max_pixels}.yaml")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "stages.shard", "--out", str(out)], cwd=run,
                           env=etl.child_env(params), check=True)
            print(f"[data] shard stage, shard.max_image_pixels {max_pixels}: {time.perf_counter() - t0:.1f} s "
                  f"(once per setting)", flush=True)
    extracted = run / "extracted"
    if not extracted.exists():
        tmp = run / "extracted.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for z in sorted((raw / "MMEB-train" / "images_zip").glob("*.zip")):
            with zipfile.ZipFile(z) as zf:
                zf.extractall(tmp)  # our own generated zips (etl.generate): member names are plain
        tmp.rename(extracted)
    print(f"[data] {sizes['rows']} rows, {sizes['images']} images, {sizes['image_bytes'] / 1e6:.1f} MB JPEG "
          f"under {run}", flush=True)
    return run


# --- VLM2Vec-style path -----------------------------------------------------------------------
def raw_side(raw: str, has_image: bool) -> dict:
    """A SIDE for the Collator from an MMEB source string (the Collator renders `raw`)."""
    return {"raw": raw, "instruction": "", "text": raw.replace(IMAGE_TOKEN, "").strip(),
            "has_image_token": IMAGE_TOKEN in raw, "template": "", "image": None}


class PairDataset(Dataset):
    """VLM2Vec V1's TrainTextImageDataset, reduced to what matters for speed: a HF dataset of
    (qry, qry_image_path, pos_text, pos_image_path) rows; images opened from files per item."""

    def __init__(self, parquet_files: list[str], image_dir: Path):
        import datasets

        self.rows = datasets.load_dataset("parquet", data_files=parquet_files, split="train",
                                          cache_dir=str(WORK / "hf_cache"))
        self.image_dir = image_dir

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, path: str):
        if not path:
            return None
        return Image.open(self.image_dir / path).convert("RGB")

    def __getitem__(self, i: int):
        row = self.rows[i]
        q_img, t_img = self._image(row["qry_image_path"]), self._image(row["pos_image_path"])
        return (raw_side(row["qry"], q_img is not None), q_img, raw_side(row["pos_text"], t_img is not None), t_img)


class PairCollate:
    def __init__(self, collator: Collator):
        self.collator = collator

    def __call__(self, items):
        qs, qi, ts, ti = zip(*items)
        return {"query": [self.collator(list(qs), list(qi))], "target": [self.collator(list(ts), list(ti))],
                "pairs": len(items)}


def vlm2vec_batches(run: Path, collator: Collator, batch: int, workers: int):
    files = sorted(str(p) for p in (run / "data/raw/MMEB-train").glob("*/original-*.parquet"))
    ds = PairDataset(files, run / "extracted")
    while True:  # epochs, like the Trainer
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=PairCollate(collator),
                            drop_last=True, generator=torch.Generator().manual_seed(0))
        yield from loader


def stream_batches(run: Path, collator: Collator, batch: int, workers: int, max_pixels: int,
                   shard_cap: int | None):
    shards = read_shards(shard_dir(run, shard_cap))
    config = StreamConfig(seed=0, global_batch=batch, slots_per_rank=max(1, workers), shuffle_buffer=1000,
                          image_max_pixels=max_pixels)
    yield from make_loader(ContrastiveStream(shards, config, collator), workers)


def at_resolution(backbone, max_pixels: int):
    """The backbone with its image processor set to Qwen2-VL's min_pixels (56*56) and to max_pixels,
    as a real run configures it: the tiny processor's own cap (1024 pixels) would otherwise shrink
    every image again and hide the patchify cost of a real resolution."""
    processor = copy.deepcopy(backbone.processor)
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    return dataclasses.replace(backbone, processor=processor)


def timed(batches, pairs: int) -> float:
    """pairs/s over `pairs` pairs, after one warm-up batch (worker start-up excluded)."""
    it = iter(batches)
    next(it)
    done, t0 = 0, time.perf_counter()
    while done < pairs:
        done += next(it)["pairs"]
    rate = done / (time.perf_counter() - t0)
    it.close() if hasattr(it, "close") else None
    return rate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400, help="train rows (default 400)")
    ap.add_argument("--pairs", type=int, default=256, help="pairs timed per run (default 256)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = prepare(args.rows)
    backbone = build_tiny("qwen2_vl", seed=0, image_size=64, hidden_size=64, layers=2)
    results = []
    for max_pixels in MAX_PIXELS:
        collator = Collator(at_resolution(backbone, max_pixels), max_text_tokens=256, image_max_pixels=max_pixels)
        rates: dict[str, list[float]] = {"prescaled": [], "unscaled": [], "vlm2vec": []}
        for r in range(args.repeats):  # the three loaders alternate, so drifting load hits them alike
            rates["prescaled"].append(timed(stream_batches(run, collator, args.batch, args.workers, max_pixels,
                                                           max_pixels), args.pairs))
            rates["unscaled"].append(timed(stream_batches(run, collator, args.batch, args.workers, max_pixels,
                                                          None), args.pairs))
            rates["vlm2vec"].append(timed(vlm2vec_batches(run, collator, args.batch, args.workers), args.pairs))
            print(f"[image_max_pixels={max_pixels}] repeat {r}: streaming, shards pre-scaled "
                  f"{rates['prescaled'][-1]:.1f} pairs/s; streaming, shards unscaled {rates['unscaled'][-1]:.1f}; "
                  f"VLM2Vec-style {rates['vlm2vec'][-1]:.1f}", flush=True)
        results.append((max_pixels, *(statistics.median(v) for v in rates.values())))

    lines = ["| image_max_pixels | streaming, shards pre-scaled (pairs/s) | streaming, shards unscaled (pairs/s) "
             "| VLM2Vec-style files (pairs/s) | pre-scaled / VLM2Vec | unscaled / VLM2Vec |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {mp} | {p:.1f} | {u:.1f} | {t:.1f} | {p / t:.2f}x | {u / t:.2f}x |" for mp, p, u, t in results]
    table = "\n".join(lines)
    print(table)
    if args.append:
        cmd = "python benchmarks/loader.py " + " ".join(argv if argv is not None else sys.argv[1:])
        section = (
            f"\n## Loader\n\nModel-ready pairs/s (query + target collated by the tiny Qwen2-VL Collator, batch "
            f"{args.batch}, {args.workers} DataLoader workers, median of {args.repeats}, {args.pairs} pairs timed "
            f"after one warm-up batch) on {args.rows} MMEB-style rows with JPEGs of 640x480 to 1600x1200; "
            f"{platform.machine()}, {os.cpu_count()} CPUs (shared).\n\n{table}\n\nCommand: `{cmd.strip()}`\n")
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(section)


if __name__ == "__main__":
    main()
