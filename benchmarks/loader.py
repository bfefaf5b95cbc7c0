"""Loader benchmark: model-ready pairs/s of the streaming shard loader vs a VLM2Vec-style loader.

    python benchmarks/loader.py [--rows N] [--pairs P] [--repeats R] [--workers W] [--max-pixels MP ...]

1. Data (cached under benchmarks/_work/loader/): MMEB-train in the Hub layout from benchmarks/etl.py's
   generator (5 real subset names, MMEB-style strings, JPEGs from 640x480 to 1600x1200 in
   images_zip/), then the real `normalize` stage and the `shard` stage once per shard setting
   (subprocesses, params.yaml defaults otherwise: shard.image_max_side 1344): unscaled
   (shard.image_max_pixels and shard.image_size_multiple null), pre-scaled (image_max_pixels = each
   `image_max_pixels` setting), and pre-scaled on Qwen2-VL's grid (image_size_multiple 28 as well),
   and the zips extracted to a folder for the VLM2Vec-style path.
2. Every loader delivers the same thing: query and target batches of `--batch` pairs collated by
   `trainer.model.inputs.Collator` (the tiny Qwen2-VL's tokenizer; its image processor set up as
   Qwen2-VL-2B's at the setting: patch 14, merge 2, min_pixels 56*56, max_pixels the setting) in
   `--workers` DataLoader workers, the image tensors computed either by transformers' image
   processor or by `trainer.model.image_processing` (the same tensors to ~5e-7).
   * pipeline: `trainer.train.stream.ContrastiveStream` over the shards pre-scaled on the grid, torch image
     processing: what `train` runs with shard.image_max_pixels: train and
     shard.image_size_multiple = 28;
   * the same over the same shards with transformers' image processor, over shards pre-scaled
     without the grid, and over unscaled shards (JPEGs far above image_max_pixels decoded at reduced
     DCT scale): where the gain comes from;
   * VLM2Vec-style (their V1 `TrainTextImageDataset` + collator): HF `datasets` over the source
     parquet files, a map-style dataset whose `__getitem__` does `Image.open` of the full-size image
     file, DataLoader(shuffle=True, collate_fn = the Collator with transformers' image processor).
3. For each `image_max_pixels` setting (4096 = this pipeline's tiny default; 1003520 = 1280*28*28,
   VLM2Vec's Qwen2-VL max_pixels) it times `--pairs` pairs after one warm-up batch, alternating the
   loaders `--repeats` times (median, and the per-repeat pipeline / VLM2Vec ratios), and prints a
   markdown table. The shard stage's time per setting is printed too: pre-scaling is paid once, not
   every epoch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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

from pipelines.images import keeping_side  # noqa: E402
from pipelines.schema import IMAGE_TOKEN  # noqa: E402
from trainer.backbone.families import build_tiny  # noqa: E402
from trainer.train.stream import ContrastiveStream, StreamConfig, make_loader, read_shards  # noqa: E402
from trainer.model.inputs import Collator  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "loader"
MAX_PIXELS = (4096, 1280 * 28 * 28)


# --- data -------------------------------------------------------------------------------------
GRID = 28  # Qwen2-VL-2B's processor: 14 px patches merged 2x2, so its image sides are multiples of 28


def shard_dir(run: Path, max_pixels: int | None, multiple: int | None = None) -> Path:
    suffix = f"-grid-{multiple}" if multiple else ""
    return run / "data" / "shards" / f"max-pixels-{max_pixels}{suffix}"


def prepare(rows: int, settings=MAX_PIXELS) -> Path:
    run = WORK / f"rows-{rows}"
    raw = run / "data" / "raw"
    sizes = etl.generate(raw, rows)
    if not (run / "data/normalized/train").exists():
        params = etl.write_params(run, 2, None)
        subprocess.run([sys.executable, "-m", "stages.normalize"], cwd=run, env=etl.child_env(params), check=True)
    # shards without a pixel cap, and pre-scaled to each setting with the sides on Qwen2-VL's grid
    for max_pixels, multiple in ((None, None), *((mp, g) for mp in settings for g in (None, GRID))):
        out = shard_dir(run, max_pixels, multiple)
        if not (out / "index.json").exists():
            # a longer-side cap that keeps every aspect ratio at the pixel cap (the params check's rule)
            side = None if max_pixels is None else max(1344, keeping_side(max_pixels))
            params = etl.write_params(run, 2, side, max_pixels, name=f"params-{max_pixels}-{multiple}.yaml",
                                      image_size_multiple=multiple)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "stages.shard", "--out", str(out)], cwd=run,
                           env=etl.child_env(params), check=True)
            print(f"[data] shard stage, shard.image_max_pixels {max_pixels}, shard.image_size_multiple "
                  f"{multiple}: {time.perf_counter() - t0:.1f} s (once per setting)", flush=True)
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
                   shard_cap: int | None, multiple: int | None = None):
    shards = read_shards(shard_dir(run, shard_cap, multiple))
    config = StreamConfig(seed=0, global_batch=batch, slots_per_rank=max(1, workers), shuffle_buffer=1000,
                          image_max_pixels=max_pixels)
    yield from make_loader(ContrastiveStream(shards, config, collator), workers)


def at_resolution(backbone, max_pixels: int):
    """The backbone with its image processor set to Qwen2-VL's min_pixels (56*56) and to max_pixels,
    as a real run configures it: the tiny processor's own cap (1024 pixels) would otherwise shrink
    every image again and hide the patchify cost of a real resolution."""
    processor = copy.deepcopy(backbone.processor)
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    processor.image_processor.patch_size = 14  # Qwen2-VL-2B's processor: 14 px patches, 2x2 merge
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


LOADERS = {  # name: (description, shards: (pixel cap is the setting?, grid), torch image processing)
    "pipeline": ("streaming, shards pre-scaled on the grid, torch images", (True, GRID), True),
    "grid_hf": ("streaming, shards pre-scaled on the grid, transformers' images", (True, GRID), False),
    "prescaled": ("streaming, shards pre-scaled, torch images", (True, None), True),
    "unscaled": ("streaming, shards unscaled, torch images", (False, None), True),
    "vlm2vec": ("VLM2Vec-style files, transformers' images", None, False),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400, help="train rows (default 400)")
    ap.add_argument("--pairs", type=int, default=256, help="pairs timed per run (default 256)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-pixels", type=int, nargs="+", default=list(MAX_PIXELS),
                    help=f"image_max_pixels settings (default {' '.join(map(str, MAX_PIXELS))})")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = prepare(args.rows, args.max_pixels)
    backbone = build_tiny("qwen2_vl", seed=0, image_size=64, hidden_size=64, layers=2)
    results = []
    for max_pixels in args.max_pixels:
        processor = at_resolution(backbone, max_pixels)
        collators = {fast: Collator(processor, max_text_tokens=256, image_max_pixels=max_pixels, torch_images=fast)
                     for fast in (True, False)}
        rates: dict[str, list[float]] = {name: [] for name in LOADERS}
        for r in range(args.repeats):  # the loaders alternate, so drifting load hits them alike
            for name, (_, shards, fast) in LOADERS.items():
                if shards is None:
                    batches = vlm2vec_batches(run, collators[fast], args.batch, args.workers)
                else:
                    cap, grid = shards
                    batches = stream_batches(run, collators[fast], args.batch, args.workers, max_pixels,
                                             max_pixels if cap else None, grid)
                rates[name].append(timed(batches, args.pairs))
            print(f"[image_max_pixels={max_pixels}] repeat {r}: "
                  + "; ".join(f"{name} {v[-1]:.1f}" for name, v in rates.items()) + " pairs/s", flush=True)
        results.append((max_pixels, {name: statistics.median(v) for name, v in rates.items()},
                        [a / b for a, b in zip(rates["pipeline"], rates["vlm2vec"])]))

    header = " | ".join(description for description, _, _ in LOADERS.values())
    lines = [f"| image_max_pixels | {header} | pipeline / VLM2Vec (per-repeat ratios) |",
             "|---" * (len(LOADERS) + 2) + "|"]
    for mp, median, ratios in results:
        cells = " | ".join(f"{median[name]:.1f}" for name in LOADERS)
        per_repeat = ", ".join(f"{x:.2f}" for x in ratios)
        lines.append(f"| {mp} | {cells} | **{median['pipeline'] / median['vlm2vec']:.2f}x** ({per_repeat}) |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
