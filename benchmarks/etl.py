"""ETL benchmark: normalize + shard against a decode-only ceiling, and peak memory at 1x vs 10x rows.

    python benchmarks/etl.py [--rows N] [--workers W] [--repeats R] [--max-image-side S]

1. Generates MMEB-train in the Hub layout under benchmarks/_work/etl/ (cached per row count):
   five real subset names (so the registry knows them), `<Subset>/original-00000-of-00001.parquet`
   with MMEB-style strings and `images_zip/<Subset>.zip` holding JPEGs from 640x480 to 1600x1200
   (landscape and portrait; gradients + noise + shapes, quality 90, stored uncompressed in the zip).
   Every image occurrence has distinct bytes (a pool of rendered images, each copy given its own JPEG
   comment segment), so the image store de-duplicates nothing.
2. Runs the real stages, `python -m stages.normalize` then `python -m stages.shard`, as subprocesses
   in that folder with a params file (VLM2VEC_PARAMS): normalize.workers = shard.workers = W.
3. Runs the ceiling in a subprocess with W spawned processes as well (the stages spawn theirs): read
   every row, open every image from its zip and decode it once with Pillow (`Image.open(...).load()`),
   write nothing.
4. Prints rows/s and MB/s (MB = JPEG bytes in the zips) of both, and ratio = ceiling time / pipeline
   time (goal >= 0.7); medians over --repeats. When shard.image_max_side downscales some images, a
   second reference is run as well: the ceiling plus, from its one decode, the bicubic downscale and
   JPEG re-encode of those images (the least work any pipeline with that setting must do), which
   bounds the ratio a downscaling pipeline can reach.
5. Peak memory of normalize + shard at N and at 10*N rows, each run in a fresh wrapper process:
   the largest single process (getrusage RUSAGE_CHILDREN ru_maxrss) and the peak sum over the whole
   process tree (psutil, sampled every 50 ms); goal ratio 10x/1x <= 1.2.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "etl"
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (480, 640), (960, 1280)]
POOL = 28  # distinct rendered images (4 per size)

# (subset, query has image, target has image, negative image) with MMEB-like strings
SUBSETS = {
    "ImageNet_1K": lambda i: ("<|image_1|>\nRepresent the given image for classification\n", True,
                              f"label {i % 1000}, a synonym, another synonym", False, "", False),
    "OK-VQA": lambda i: (f"<|image_1|>\nRepresent the given image with the following question: "
                         f"What is shown in picture {i}?\n", True, f"answer {i % 97}", False,
                         f"answer {(i + 1) % 97}", False),
    "VisDial": lambda i: ("Represent the given dialogue about an image, which is used for image retrieval: "
                          + "".join(f"Q:question {j} of {i}\nA:answer {j}\n" for j in range(6)), False,
                          "<|image_1|>\nRepresent the given image\n", True, "", True),
    "MSCOCO": lambda i: (f"<|image_1|>\nSelect the portion of the image that isolates the object labeled "
                         f"as \"thing {i % 80}\"\n", True,
                         "<|image_1|>\nRepresent the given cropped image of the object", True, "", False),
    "CIRR": lambda i: (f"<|image_1|>\nGiven an image, find a similar everyday image with the described "
                       f"changes: make it number {i}\n", True, "<|image_1|>\nRepresent the given image.\n",
                       True, "", False),
}


# --- data ---------------------------------------------------------------------------------------
def render(width: int, height: int, seed: int) -> bytes:
    """A photographic-ish JPEG: colour gradient, soft shapes, sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (x / width * rng.uniform(0.3, 1) + y / height * rng.uniform(0.3, 1)) / 2
    img = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    im = Image.fromarray(img, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(25):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 20, width // 3), rng.integers(height // 20, height // 3)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=color)
    im = im.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(im, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def with_comment(jpeg: bytes, comment: str) -> bytes:
    """The same image with a COM segment after SOI: distinct bytes, identical pixels."""
    c = comment.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(c) + 2) + c + jpeg[2:]


def generate(raw: Path, rows: int) -> dict:
    """MMEB-train (Hub layout) with `rows` rows spread over SUBSETS under raw/; returns its sizes."""
    if (raw / "sizes.json").exists():
        return json.loads((raw / "sizes.json").read_text())
    shutil.rmtree(raw, ignore_errors=True)
    pool = [render(*SIZES[i % len(SIZES)], seed=i) for i in range(POOL)]
    train = raw / "MMEB-train"
    (train / "images_zip").mkdir(parents=True)
    image_bytes = images = 0
    per = -(-rows // len(SUBSETS))
    for s, (subset, make) in enumerate(SUBSETS.items()):
        cols = {c: [] for c in ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text",
                                "neg_image_path")}
        with zipfile.ZipFile(train / "images_zip" / f"{subset}.zip", "w", zipfile.ZIP_STORED) as zf:
            def add(name: str) -> str:
                nonlocal image_bytes, images
                path = f"images/{subset}/Train/{name}.jpg"
                data = with_comment(pool[(images + s) % POOL], path)
                zf.writestr(path, data)
                image_bytes += len(data)
                images += 1
                return path

            for i in range(min(per, rows - s * per)):
                qry, q_img, pos, p_img, neg, n_img = make(i)
                cols["qry"].append(qry)
                cols["qry_image_path"].append(add(f"{subset}_q{i}") if q_img else "")
                cols["pos_text"].append(pos)
                cols["pos_image_path"].append(add(f"{subset}_t{i}") if p_img else "")
                cols["neg_text"].append(neg)
                cols["neg_image_path"].append(add(f"{subset}_n{i}") if n_img else "")
        (train / subset).mkdir()
        pq.write_table(pa.table(cols), train / subset / "original-00000-of-00001.parquet")
    sizes = {"rows": rows, "images": images, "image_bytes": image_bytes}
    (raw / "sizes.json").write_text(json.dumps(sizes))
    return sizes


# --- ceiling: read every row, decode every image once ------------------------------------------------
def _decode_subset(raw: str, subset: str, max_side: int = 0) -> int:
    """Decode every image of one subset once; with max_side, also downscale (bicubic) and re-encode
    (JPEG q95) those whose longer side exceeds it, from that one decode: the least work a pipeline
    with shard.image_max_side can do."""
    table = pq.read_table(Path(raw) / "MMEB-train" / subset / "original-00000-of-00001.parquet")
    n = 0
    with zipfile.ZipFile(Path(raw) / "MMEB-train" / "images_zip" / f"{subset}.zip") as zf:
        for row in table.to_pylist():
            for col in ("qry_image_path", "pos_image_path", "neg_image_path"):
                if row[col]:
                    with Image.open(io.BytesIO(zf.read(row[col]))) as im:
                        im.load()
                        if max_side and max(im.size) > max_side:
                            scale = max_side / max(im.size)
                            size = max(1, round(im.width * scale)), max(1, round(im.height * scale))
                            im.resize(size, Image.Resampling.BICUBIC).save(io.BytesIO(), "JPEG", quality=95)
                    n += 1
    return n


def ceiling(raw: Path, workers: int, max_side: int = 0) -> int:
    subsets = sorted(p.name for p in (raw / "MMEB-train").iterdir() if p.name != "images_zip")
    # spawn, like the stages: same process count and the same start-up cost per worker
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        return sum(ex.map(_decode_subset, [str(raw)] * len(subsets), subsets, [max_side] * len(subsets)))


# --- runs ---------------------------------------------------------------------------------------
def write_params(run: Path, workers: int, max_image_side: int | None, max_image_pixels: int | None = None,
                 name: str = "params.yaml", image_size_multiple: int | None = None) -> Path:
    """params.yaml's sections with the benchmark's workers and image caps. The pixel cap and the size
    grid are off unless given (params.yaml's 4096 and 16 are the tiny model's, not ones for MMEB-sized
    photos)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["normalize"]["workers"] = workers
    params["shard"]["workers"] = workers
    params["shard"]["image_max_pixels"] = max_image_pixels
    params["shard"]["image_size_multiple"] = image_size_multiple
    params["train"]["image_max_pixels"] = max_image_pixels  # the training resolution the shards are made for
    if max_image_side:
        params["shard"]["image_max_side"] = max_image_side
    path = run / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def child_env(params: Path) -> dict:
    env = dict(os.environ, VLM2VEC_PARAMS=str(params), PYTHONPATH=str(REPO), LOGLEVEL="WARNING",
               TQDM_DISABLE="1")
    return env


class TreePeak:
    """Samples the summed RSS of this process's children (recursively) until stopped."""

    def __init__(self, interval: float = 0.05):
        self.peak = self.single = 0  # peak of the sum over the tree, peak of one process
        self.interval, self._stop = interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.single = max(self.single, rss)
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def children_cpu() -> float:
    """User + system CPU seconds of the waited-for child processes (and their descendants)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def pipeline_once(run: Path, params: Path) -> dict:
    """normalize then shard in `run` (fresh outputs); wall seconds of each, memory peaks.
    Meant to run in a fresh process, so RUSAGE_CHILDREN covers exactly these two stages."""
    for d in ("data/normalized", "data/rejects", "data/shards", "metrics"):
        shutil.rmtree(run / d, ignore_errors=True)
    out = {}
    for stage in ("normalize", "shard"):
        t0, c0 = time.perf_counter(), children_cpu()
        with TreePeak() as peak:
            subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=run, env=child_env(params),
                           check=True)
        out[stage] = time.perf_counter() - t0
        out[f"{stage}_cpu"] = children_cpu() - c0
        out[f"{stage}_tree_peak_rss"] = peak.peak
        out[f"{stage}_process_peak_rss"] = peak.single
    out["max_process_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out["tree_peak_rss"] = max(out["normalize_tree_peak_rss"], out["shard_tree_peak_rss"])
    return out


def in_fresh_process(mode: str, *args: str) -> dict:
    """Run this file in `mode` in a new interpreter; its JSON result plus `wall` (seconds, start-up
    included, as for the stage subprocesses)."""
    t0, c0 = time.perf_counter(), children_cpu()
    proc = subprocess.run([sys.executable, __file__, mode, *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode:
        raise RuntimeError(f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - t0,
            "cpu": children_cpu() - c0}


def prepare(rows: int, workers: int, max_image_side: int | None) -> tuple[Path, Path, dict]:
    run = WORK / f"rows-{rows}"
    t0 = time.perf_counter()
    sizes = generate(run / "data" / "raw", rows)
    print(f"[data] {rows} rows, {sizes['images']} images, {sizes['image_bytes'] / 1e6:.1f} MB "
          f"under {run} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return run, write_params(run, workers, max_image_side), sizes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400, help="train rows at 1x (default 400)")
    ap.add_argument("--workers", type=int, default=2, help="processes for normalize, shard and the ceiling")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the 1x timing (median reported)")
    ap.add_argument("--max-image-side", type=int, default=None,
                    help="override shard.image_max_side (default: params.yaml)")
    ap.add_argument("--no-memory", action="store_true", help="skip the 1x vs 10x memory runs")
    args = ap.parse_args(argv)

    run, params, sizes = prepare(args.rows, args.workers, args.max_image_side)
    side = yaml.safe_load(params.read_text())["shard"]["image_max_side"]
    downscales = max(max(w, h) for w, h in SIZES) > side
    pipe, ceil, ceil_ds = [], [], []
    for r in range(args.repeats):
        pipe.append(in_fresh_process("--_pipeline", str(run), str(params)))
        ceil.append(in_fresh_process("--_ceiling", str(run / "data" / "raw"), str(args.workers)))
        if downscales:
            ceil_ds.append(in_fresh_process("--_ceiling", str(run / "data" / "raw"), str(args.workers),
                                            str(side)))
        print(f"[repeat {r + 1}] normalize {pipe[-1]['normalize']:.2f} s  shard {pipe[-1]['shard']:.2f} s  "
              f"ceiling {ceil[-1]['wall']:.2f} s"
              + (f"  ceiling + downscale {ceil_ds[-1]['wall']:.2f} s" if downscales else ""), flush=True)
    index = json.loads((run / "data" / "shards" / "train" / "index.json").read_text())
    med = statistics.median
    rows_ = [
        ("normalize", med(p["normalize"] for p in pipe), med(p["normalize_cpu"] for p in pipe)),
        ("shard", med(p["shard"] for p in pipe), med(p["shard_cpu"] for p in pipe)),
        ("normalize + shard", med(p["normalize"] + p["shard"] for p in pipe),
         med(p["normalize_cpu"] + p["shard_cpu"] for p in pipe)),
        ("ceiling (read+decode)", med(c["wall"] for c in ceil), med(c["cpu"] for c in ceil)),
    ]
    if downscales:
        rows_.append(("ceiling + downscale", med(c["wall"] for c in ceil_ds), med(c["cpu"] for c in ceil_ds)))
    mb = sizes["image_bytes"] / 1e6
    print(f"\nETL throughput: {sizes['rows']} rows, {sizes['images']} JPEGs ({mb:.1f} MB), "
          f"{args.workers} processes, shard.image_max_side {side} "
          f"({sum(d['resized_images'] for d in index['datasets'].values())} images downscaled), "
          f"median of {args.repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':24}{'wall s':>9}{'rows/s':>9}{'MB/s':>9}{'CPU s':>9}")
    for name, wall, cpu in rows_:
        print(f"{name:24}{wall:9.2f}{sizes['rows'] / wall:9.1f}{mb / wall:9.1f}{cpu:9.2f}")
    (_, t_pipe, c_pipe), (_, t_ceil, c_ceil) = rows_[2], rows_[3]
    print(f"ratio ceiling/pipeline: wall {t_ceil / t_pipe:.2f}, CPU {c_ceil / c_pipe:.2f} (goal >= 0.7)",
          flush=True)
    if downscales:
        (_, t_ds, c_ds) = rows_[4]
        print(f"ratio (ceiling + the same downscale work)/pipeline: wall {t_ds / t_pipe:.2f}, CPU "
              f"{c_ds / c_pipe:.2f}; the most a pipeline that downscales can reach against the decode-only "
              f"ceiling: wall {t_ceil / t_ds:.2f}, CPU {c_ceil / c_ds:.2f}", flush=True)

    if args.no_memory:
        return
    mem = {}
    for factor in (1, 10):
        run_f, params_f, sizes_f = prepare(args.rows * factor, args.workers, args.max_image_side)
        mem[factor] = in_fresh_process("--_pipeline", str(run_f), str(params_f))
        m = mem[factor]
        mib = {k: v / 2**20 for k, v in m.items() if k.endswith("rss")}
        print(f"[memory {factor}x] {sizes_f['rows']} rows: normalize {m['normalize']:.1f} s, shard "
              f"{m['shard']:.1f} s; largest process {mib['max_process_rss']:.0f} MiB (getrusage); "
              f"process tree peak normalize {mib['normalize_tree_peak_rss']:.0f} MiB, shard "
              f"{mib['shard_tree_peak_rss']:.0f} MiB; largest sampled process normalize "
              f"{mib['normalize_process_peak_rss']:.0f} MiB, shard {mib['shard_process_peak_rss']:.0f} MiB",
              flush=True)
    ratio = {k: mem[10][k] / mem[1][k] for k in mem[1] if k.endswith("rss")}
    print("memory ratio 10x/1x (goal <= 1.2): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ratio.items())))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_pipeline":
        print(json.dumps(pipeline_once(Path(sys.argv[2]), Path(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_ceiling":
        t0 = time.perf_counter()
        n = ceiling(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
        print(json.dumps({"seconds": time.perf_counter() - t0, "images": n}))
    else:
        main()
