"""One device session's measurements for the GPU end-to-end goals, as one prepared command: the
trainer's loop against the plain loop, GradCache against plain GradCache, the encoder against the
plain forward, then the projected MMEB evaluation time.

    python3 benchmarks/gpu_session.py --base .gpu_train/base --shards .gpu_train/shards   # the device
    python benchmarks/gpu_session.py --tiny --base models/base --shards data/shards/train   # CPU (tests)

Parts, each its own process (a clean card, inductor's state not shared) under its own time limit
(killed at `limit`; a part's JSON is rewritten after each of its rows, so what it measured stays):

  loop     benchmarks/gpu_train.py --variants eager,plain,cuda-graphs,eager-one-batch: the trainer's loop
           at batch 32 (`--layers` decoder layers, default 8 to keep two region compilations in the
           budget) and the plain transformers + peft loop on the same batches: pairs/s, vs_plain,
           loader share, first-step (compilation) seconds, peak GiB, early losses against eager; last,
           if the budget leaves time, eager with one padded batch per side (what sub-batches by kind
           change on the card)
  gc       the same script, --variants gc-blocks,gc-plain: the trainer's GradCache (blocks compiled) at
           global batch 1024 in chunks of 64 against VLM2Vec-style eager GradCache on its batches
  encode   benchmarks/gpu_encode.py at 28 layers, --compile none (the compiled encoder's 28-layer
           region takes minutes: `--encode-compile region` adds it when the session has them): items/s
           of plain, ours, ours+prefetch and evaluate at the V1 and V2 shape classes, embeddings compared
  project  benchmarks/eval_projection.py on the encode JSON (path evaluate and best)

Writes to $OUT (else benchmarks/_work/): loop.json, gc.json, encode.json, projection_evaluate.json,
projection_best.json, session.json (each part's command, exit code, seconds) and session.log (every
part's output). Preparation (shards, base folder, wheels carried in `.gpu_train/`): the docstring of
benchmarks/gpu_train.py; the command that runs this on the device machine: benchmarks/RESULTS.md,
"Prepared, not yet run".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def minutes_left(limit_s: int, last_s: int) -> str:
    """A part's --budget-min: start no row (variant) later than `last_s` seconds before its limit."""
    return f"{max(limit_s - last_s, 0) / 60:.2f}"


def parts(args) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of each part, in the order they run."""
    py, tiny = sys.executable, ["--tiny"] if args.tiny else []
    data = ["--base", str(args.base), "--shards", str(args.shards)]
    train = [py, str(HERE / "gpu_train.py"), *tiny, *data, "--layers", str(args.layers), "--workers", str(args.workers)]
    small = ["--steps", "3", "--skip", "1", "--gc-steps", "2", "--multiple", "8"] if args.tiny else []
    out = args.out
    return [
        ("loop", [*train, "--variants", "eager,plain,cuda-graphs,eager-one-batch", "--steps", "30", "--skip", "5",
                  *small, "--budget-min", minutes_left(args.loop_s, 150), "--out", str(out / "loop.json")], args.loop_s),
        ("gc", [*train, "--variants", "gc-blocks,gc-plain", *([] if args.tiny else ["--gc-batch", "1024"]),
                *(["--gc-chunk", "64", "--gc-steps", "3"] if not args.tiny else []), *small,
                "--budget-min", minutes_left(args.gc_s, 45), "--out", str(out / "gc.json")], args.gc_s),
        ("encode", [py, str(HERE / "gpu_encode.py"), *tiny, "--base", str(args.base),
                    *(["--items", "3"] if args.tiny else ["--items", str(args.items)]),
                    "--classes", "v1-image,v2-video,v2-page,v1-text",
                    "--compile", args.encode_compile, "--budget-min", minutes_left(args.encode_s, 20),
                    "--out", str(out / "encode.json")], args.encode_s),
    ]


def run_part(name: str, command: list[str], limit: int, log) -> dict:
    """Run one part under its time limit, its output appended to the session log."""
    log.write(f"\n===== {name}: {' '.join(command)} (limit {limit} s)\n")
    log.flush()
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limit, env=env).returncode
        status = "ok" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        status = f"killed at its limit of {limit} s"
    return dict(part=name, command=" ".join(command), status=status, seconds=round(time.perf_counter() - t0, 1))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny sizes (tests)")
    p.add_argument("--base", type=Path, default=Path(".gpu_train/base"))
    p.add_argument("--shards", type=Path, default=Path(".gpu_train/shards"))
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the loop and gc parts' model")
    p.add_argument("--workers", type=int, default=8, help="data loader workers of both loops")
    p.add_argument("--items", type=int, default=128, help="encode: items per shape class")
    p.add_argument("--encode-compile", choices=("none", "region", "cuda-graphs"), default="none")
    p.add_argument("--loop-s", type=int, default=230, help="time limit of the loop part")
    p.add_argument("--gc-s", type=int, default=150, help="time limit of the gc part")
    p.add_argument("--encode-s", type=int, default=160, help="time limit of the encode part (its model build "
                   "and two loads take about a minute)")
    p.add_argument("--skip", default="", help="comma list of parts not to run (loop, gc, encode)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "_work")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    session = dict(command=" ".join(["gpu_session.py", *(argv if argv is not None else sys.argv[1:])]), parts=[])
    with open(args.out / "session.log", "a", encoding="utf-8") as log:
        for name, command, limit in parts(args):
            if name not in skip:
                session["parts"].append(run_part(name, command, limit, log))
                (args.out / "session.json").write_text(json.dumps(session, indent=1) + "\n", encoding="utf-8")
        encode = args.out / "encode.json"
        if encode.exists():
            for path in ("evaluate", "best"):
                command = [sys.executable, str(HERE / "eval_projection.py"), "--encode", str(encode), "--path", path,
                           "--out", str(args.out / f"projection_{path}.json")]
                session["parts"].append(run_part(f"project-{path}", command, 60, log))
    (args.out / "session.json").write_text(json.dumps(session, indent=1) + "\n", encoding="utf-8")
    for part in session["parts"]:
        print(f"{part['part']:16} {part['seconds']:7.1f} s  {part['status']}")
    return 0 if all(p["status"] == "ok" for p in session["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
