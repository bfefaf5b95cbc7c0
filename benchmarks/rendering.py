"""The effect of the input rendering on a trained workspace's scores: each Qwen position scheme
(grid, sequential) x each stray-token rule (strip, keep), scored by the evaluate stage's work.

    python benchmarks/rendering.py [--root .] [--models NAME ...] [--out rendering.json]

`--root` is a workspace after `dvc repro` (data/normalized, metrics/etl.json, models/base and
models/embedder); its params.yaml's eval section is used with the two keys changed, the cache off
and eval.models set to `--models` (folders under <root>/models; default: the params' own). The
outputs of each run are written under <root>/benchmarks/_work/rendering/ (the workspace's own
metrics and reports are left alone); prints overall Precision@1 per combination and model, and with
several models (trained models of several seeds, e.g. those `benchmarks/mining.py effect` keeps)
their mean and spread (sample std, min, max) overall and per meta-task; writes all to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.params import load  # noqa: E402
from trainer.eval.evaluate import evaluate  # noqa: E402

COMBINATIONS = [(p, s) for p in ("grid", "sequential") for s in ("strip", "keep")]


def scratch_root(root: Path) -> Path:
    """A folder whose data, metrics/etl.json and models are the workspace's (links), outputs its own."""
    work = root / "benchmarks" / "_work" / "rendering"
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "metrics").mkdir(exist_ok=True)
    for link, target in ((work / "data" / "normalized", root / "data" / "normalized"),
                         (work / "models", root / "models"), (work / "metrics" / "etl.json", root / "metrics" / "etl.json")):
        if not link.exists():
            os.symlink(target.resolve(), link)
    return work


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": round(min(values), 2), "max": round(max(values), 2)}


def across_models(runs: dict[str, dict]) -> dict:
    """Mean and spread over the models of one combination, overall and per meta-task."""
    first = next(iter(runs.values()))
    keys = ["overall", *first["meta"]]
    value = lambda run, k: run["overall"] if k == "overall" else run["meta"][k]  # noqa: E731
    return {k: spread([value(run, k) for run in runs.values()]) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--models", nargs="+", default=None, help="folders under <root>/models to score")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load(args.root / "params.yaml")
    work = scratch_root(args.root.resolve())
    found, summary = {}, {}
    for positions, stray in COMBINATIONS:
        section = replace(params.eval, positions=positions, stray_image_token=stray, cache=False,
                          **({"models": list(args.models)} if args.models else {}))
        started = time.perf_counter()
        evaluate(section, root=work)
        metrics = json.loads((work / "metrics" / "eval.json").read_text())
        name = f"{positions}/{stray}"
        found[name] = {m: {k: metrics[m][k] for k in ("overall", "meta", "dataset")} for m in metrics}
        print(f"{positions:10s} {stray:5s} " + "  ".join(f"{m} {v['overall']:.2f}" for m, v in found[name].items())
              + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        if len(found[name]) > 1:
            summary[name] = across_models(found[name])
            print(f"{'':16s} mean " + "  ".join(f"{k} {v['mean']:.2f} ± {v['std']:.2f}"
                                                for k, v in summary[name].items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"runs": found, "summary": summary}, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
