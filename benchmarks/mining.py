"""Hard-negative mining benchmarks: the effect of mined negatives, the false-negative filter, the cost.

    python benchmarks/mining.py effect [--seeds 0 1 2] [--steps N] [--hard-negatives 1] [--start embedder]
                                       [--variants mined random clusters same_dataset] [--jobs 2]
    python benchmarks/mining.py filter [--mined data/mined]
    python benchmarks/mining.py cost [--scales 1 4 16] [--datasets Syn-Caption_i2t Syn-Caption_t2i]
    python benchmarks/mining.py clusters [--mined data/mined] [--shards data/shards/train] [--size 8]

Each prints a JSON document (and writes it to benchmarks/_work/mining/<command>.json).

effect   Round two with mined negatives against round two with as many random negatives (the same
         steps, batch and explicit negatives per query: equal compute), over seeds; also (--variants)
         round two on mined negatives with mined batches (`retrain.batching: mined_clusters`) or with
         every batch from one dataset (`train.homogeneous_batch` = the batch size). Round one is the
         repository's models/embedder (run `dvc repro train` first), copied once with the records
         to benchmarks/_work/mining/effect/inputs/; for each of mined/random the real stages run
         in a workspace under benchmarks/_work/mining/effect/<variant>/ that links those: `stages.mine` (with
         mine.negatives mined or random), `stages.shard --mined`, then per seed `stages.retrain`
         (train.seed = the seed; --steps, default retrain.steps) and `stages.evaluate` (eval.models
         [embedder_round2]); each seed's model is kept as models/embedder_round2_seed<n> there (for
         benchmarks/rendering.py --models). --jobs runs that many arms side by side. Reports
         overall and per-meta-task P@1 per run, and the mean and spread (sample std, min, max).
filter   The false-negative filter on the synthetic data, from data/mined and the normalized train
         records. Share of retrieved candidates dropped, by reason. The generator's truth: in
         Syn-Caption_i2t and Syn-Caption_t2i the caption lists every object's attributes, so a
         candidate is a true match of a query exactly when it has the query's caption (i2t: the
         candidate's text is the positive's; t2i: the candidate's record has the same query text).
         Precision and recall of the filter at catching true matches among the retrieved candidates.
         Also how often the miner finds a query's twin (the near-duplicate row 2j <-> 2j+1).
clusters How the mined batches' clusters cover each dataset (`trainer.train.clusters.build_clusters`
         over the mine stage's kNN graphs and the shards' records, as `retrain.batching: mined_clusters`
         builds them): per dataset the counts (records, clusters, clustered, fallback). Run it from
         an older checkout to compare clustering rules on the same data.
cost     Mining time and peak memory (`/usr/bin/time -v` of `stages.mine`, cold embedding cache)
         against the number of records: the synthetic train data generated with train_rows x scale
         (default datasets: the two caption datasets), normalized, mined with the repository's
         models/embedder (or --models DIR's). Also the exact search alone (`trainer.search.top_k`) on random vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = REPO / "benchmarks" / "_work" / "mining"
TRUTH = ("Syn-Caption_i2t", "Syn-Caption_t2i")


def params_with(**sections) -> dict:
    doc = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for name, values in sections.items():
        doc[name] = {**doc[name], **values}
    return doc


INPUTS = ("data/normalized", "models/base", "models/embedder", "metrics/etl.json")


def workspace(root: Path, params: dict, links=INPUTS, source: Path = REPO) -> Path:
    """A folder the stages run in: the inputs of `source` (the repository, or a snapshot of them)
    linked, its own params.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in links:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (root / rel).exists():
            (root / rel).symlink_to(source / rel)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return root


def stage(root: Path, *args: str, threads: int | None = None) -> dict:
    """Run `python -m stages.<args>` in `root`; wall and CPU seconds and peak RSS (/usr/bin/time -v)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", *args], cwd=root, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{args} failed in {root}")
    field = lambda name: float(re.search(rf"{name}: ([\d.]+)", done.stderr).group(1))  # noqa: E731
    return {"wall_s": round(wall, 1), "cpu_s": round(field("User time \\(seconds\\)") + field("System time \\(seconds\\)"), 1),
            "peak_rss_mb": round(field("Maximum resident set size \\(kbytes\\)") / 1024, 1)}


def scores(root: Path, model: str) -> dict:
    doc = json.loads((root / "metrics" / "eval.json").read_text())[model]
    return {"overall": doc["overall"], **doc["meta"]}


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 2), "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": round(min(values), 2), "max": round(max(values), 2)}


def snapshot() -> Path:
    """A copy of the repository's round-one inputs, so a `dvc repro` running meanwhile cannot change them."""
    root = WORK / "effect" / "inputs"
    if not root.is_dir():
        for rel in INPUTS:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (REPO / rel).is_dir() else shutil.copy2)(REPO / rel, root / rel)
    return root


# round two's arms: the mine stage's negatives and the batching of round two (params overrides)
VARIANTS = {
    "mined": {"mine": {"negatives": "mined"}},
    "random": {"mine": {"negatives": "random"}},
    "clusters": {"mine": {"negatives": "mined"}, "retrain": {"batching": "mined_clusters"}},
    "same_dataset": {"mine": {"negatives": "mined"}, "train": {"homogeneous_batch": "batch_size"}},
}


def variant_params(variant: str, seed: int, args) -> dict:
    over = {name: dict(values) for name, values in VARIANTS[variant].items()}
    train = {**over.pop("train", {}), "seed": seed}
    if train.get("homogeneous_batch") == "batch_size":  # every batch from one dataset
        train["homogeneous_batch"] = params_with()["train"]["batch_size"]
    steps = args.steps or params_with()["retrain"]["steps"]
    retrain = {**over.pop("retrain", {}), "steps": steps, "hard_negatives": args.hard_negatives,
               "start": args.start}
    return params_with(**over, train=train, retrain=retrain,
                       eval={"models": ["embedder_round2"], "cache_dir": str(WORK / "cache")})


def run_variant(variant: str, args, source: Path) -> list[dict]:
    """Every seed of one arm in its workspace; each seed's model kept as models/embedder_round2_seed<n>."""
    runs, t = [], args.threads
    for seed in args.seeds:
        root = workspace(WORK / "effect" / variant, variant_params(variant, seed, args), source=source)
        cost = {}
        if seed == args.seeds[0]:  # the negatives do not depend on the training seed
            cost["mine"] = stage(root, "stages.mine", threads=t)
            cost["shard_mined"] = stage(root, "stages.shard", "--mined", "data/mined", "--out", "data/shards/mined",
                                        threads=t)
        shutil.rmtree(root / "models" / "checkpoints_round2", ignore_errors=True)
        cost["retrain"] = stage(root, "stages.retrain", threads=t)
        cost["evaluate"] = stage(root, "stages.evaluate", threads=t)
        kept = root / "models" / f"embedder_round2_seed{seed}"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(root / "models" / "embedder_round2", kept)
        runs.append({"seed": seed, "p_at_1": scores(root, "embedder_round2"), "cost": cost})
        print(json.dumps({variant: runs[-1]}), flush=True)
    return runs


def effect(args) -> dict:
    out: dict = {"steps": args.steps, "hard_negatives": args.hard_negatives, "start": args.start,
                 "threads": args.threads, "variants": {v: VARIANTS[v] for v in args.variants}, "runs": {}}
    source = snapshot()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each arm's stages are subprocesses
        done = {v: pool.submit(run_variant, v, args, source) for v in args.variants}
        out["runs"] = {v: f.result() for v, f in done.items()}
    keys = next(iter(out["runs"].values()))[0]["p_at_1"]
    out["summary"] = {v: {k: spread([r["p_at_1"][k] for r in out["runs"][v]]) for k in keys} for v in out["runs"]}
    if "random" in out["runs"]:
        out["difference_minus_random"] = {
            v: {k: spread([m["p_at_1"][k] - r["p_at_1"][k] for m, r in zip(runs, out["runs"]["random"])])
                for k in keys}
            for v, runs in out["runs"].items() if v != "random"}
    return out


def _records(dataset: str) -> tuple[list[str], list[str], list[str]]:
    parts = sorted((REPO / "data/normalized/train" / dataset).glob("part-*.parquet"))
    t = [pq.read_table(p, columns=["id", "query", "target"]).to_pylist() for p in parts]
    rows = [r for part in t for r in part]
    return [r["id"] for r in rows], [r["query"]["raw"] for r in rows], [r["target"]["raw"] for r in rows]


def filter_quality(args) -> dict:
    mined_root = Path(args.mined)
    out: dict = {"datasets": {}}
    for path in sorted(mined_root.glob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        dropped: dict[str, int] = {}
        for r in rows:
            for why in r["dropped_reasons"]:
                dropped[why] = dropped.get(why, 0) + 1
        kept = sum(len(r["negative_ids"]) for r in rows)
        seen = kept + sum(dropped.values())
        entry = {"retrieved": seen, "kept": kept, "dropped": dropped,
                 "dropped_share": round(sum(dropped.values()) / seen, 4) if seen else None}
        dataset = path.stem
        if dataset in TRUTH:
            entry.update(_truth(dataset, rows))
        out["datasets"][dataset] = entry
    return out


def _truth(dataset: str, rows: list[dict]) -> dict:
    """Precision/recall of the filter against the generator's truth, and how often the twin is mined."""
    ids, queries, targets = _records(dataset)
    row_of = {rid: i for i, rid in enumerate(ids)}
    key = targets if dataset == "Syn-Caption_i2t" else queries  # the caption of a candidate / of its record
    tp = fp = fn = 0
    by_reason: dict[str, list[int]] = {}
    twin_found = twin_dropped = 0
    for r in rows:
        i = row_of[r["id"]]
        for cand, why in [(c, None) for c in r["negative_ids"]] + list(zip(r["dropped_ids"], r["dropped_reasons"])):
            j = row_of[cand]
            match = key[j] == key[i]
            if why is not None:
                tp += match
                fp += not match
                by_reason.setdefault(why, [0, 0])[0 if match else 1] += 1
            else:
                fn += match
        twin = ids[i ^ 1] if (i ^ 1) < len(ids) else None
        twin_found += twin in r["negative_ids"]
        twin_dropped += twin in r["dropped_ids"]
    return {"true_matches_caught": tp, "non_matches_dropped": fp, "true_matches_kept": fn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "by_reason_match_nonmatch": by_reason,
            "twin_in_negatives": round(twin_found / len(rows), 4), "twin_dropped": round(twin_dropped / len(rows), 4)}


def cost(args) -> dict:
    from pipelines import normalize
    from pipelines.params import load
    from pipelines.sources import synthetic

    base = load(REPO / "params.yaml")
    out: dict = {"datasets": args.datasets, "mine": [], "search": []}
    for scale in args.scales:
        rows = base.synthetic.train_rows * scale
        root = WORK / "cost" / f"x{scale}"
        if not (root / "data" / "normalized" / "train").is_dir():
            shutil.rmtree(root, ignore_errors=True)
            synthetic.generate(root / "raw", seed=0, train_rows=rows, eval_rows=1, eval_candidates=1,
                               train_subsets=args.datasets, eval_subsets=[], image_size=base.synthetic.image_size)
            (root / "raw" / "manifest.json").write_text(json.dumps({"split": "original"}))  # the one to normalize
            normalize.run(root / "raw", root / "data" / "normalized", root / "data" / "rejects",
                          root / "metrics" / "etl.json", base.normalize)
        shutil.rmtree(root / "cache", ignore_errors=True)
        workspace(root, params_with(eval={"cache_dir": "cache"}), links=("models/base", "models/embedder"),
                  source=Path(args.models).resolve())
        measured = stage(root, "stages.mine", threads=args.threads)
        report = json.loads((root / "metrics" / "mine.json").read_text())
        out["mine"].append({"scale": scale, "records": report["total"]["queries"], **measured})
        print(json.dumps(out["mine"][-1]), flush=True)
    out["search"] = search_cost(args.dim)
    return out


def search_cost(dim: int) -> list[dict]:
    from trainer.search import top_k

    rng = np.random.default_rng(0)
    out = []
    for n in (2400, 9600, 38400):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        started = time.perf_counter()
        top_k(x, x, 16)
        out.append({"queries": n, "pool": n, "dim": dim, "k": 16, "seconds": round(time.perf_counter() - started, 2)})
        print(json.dumps(out[-1]), flush=True)
    return out


def clusters(args) -> dict:
    """`clusters` (module docstring): per dataset of the shards, its clustering's counts."""
    from trainer.train.clusters import SampleIndex, dataset_clusters
    from trainer.train.stream import read_shards

    shards = read_shards(args.shards)
    index = SampleIndex(shards)
    return {d: dataset_clusters(index, Path(args.mined), d, args.size, args.seed).counts
            for d in sorted({s.dataset for s in shards})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("effect")
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    e.add_argument("--steps", type=int, default=None, help="round two's steps (default: retrain.steps)")
    e.add_argument("--hard-negatives", type=int, default=1)
    e.add_argument("--start", choices=("base", "embedder"), default="embedder")
    e.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the stages (default: torch's)")
    e.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["mined", "random"])
    e.add_argument("--jobs", type=int, default=1, help="arms run side by side")
    e.add_argument("--name", default="effect", help="the JSON's name under benchmarks/_work/mining/")
    f = sub.add_parser("filter")
    f.add_argument("--mined", default=str(REPO / "data" / "mined"))
    c = sub.add_parser("cost")
    c.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    c.add_argument("--datasets", nargs="+", default=list(TRUTH))
    c.add_argument("--dim", type=int, default=128)
    c.add_argument("--models", default=str(REPO), help="the folder whose models/base and models/embedder mine")
    c.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the mine stage")
    k = sub.add_parser("clusters")
    k.add_argument("--mined", default=str(REPO / "data" / "mined"))
    k.add_argument("--shards", default=str(REPO / "data" / "shards" / "train"))
    k.add_argument("--size", type=int, default=8, help="retrain.cluster_size")
    k.add_argument("--seed", type=int, default=0, help="train.seed")
    args = parser.parse_args(argv)
    result = {"effect": effect, "filter": filter_quality, "cost": cost, "clusters": clusters}[args.command](args)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / f"{getattr(args, 'name', args.command)}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
