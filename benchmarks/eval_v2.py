"""MMEB-V2 evaluation benchmark: the evaluate stage's V2 path (one pool of distinct items across the V2
datasets, `trainer.eval.evaluate_v2`) against the naive path that VLM2Vec's ``eval.py`` takes (per
dataset: every query encoded, then the dataset's candidates deduplicated by id, nothing shared across
datasets), per modality; and the distinct items per V2 dataset and modality.

    python benchmarks/eval_v2.py [--model tiny|hash] [--frames 8] [--batch-size 64] [--threads 2]
                                 [--repeat 3] [--work benchmarks/_work/eval_v2] [--results benchmarks/RESULTS.md]

1. Writes the synthetic MMEB-V2 sets (`data.benchmark: v2`, `pipelines.download.download`) and
   normalizes them (`pipelines.normalize.normalize`, ``--frames`` frames a video) under ``--work``.
2. The encoder: a tiny random Qwen2-VL (`build_tiny('qwen2_vl')`, seed 0) loaded as the evaluate
   stage loads a model, at params.yaml's eval resolution; or ``hash``, a stand-in without a model
   (tests).
3. After one warm-up encode, per modality, ``--repeat`` cold runs (no cache) of the pipeline's path
   and of the naive path, the fastest reported, timed, the
   encoder inputs counted (`tests.support.encoders.CountingEncoder`), the headline metric of both.
4. The synthetic sets' distinct items per dataset (measured), and the 78 real tasks' inputs per
   modality counted from `benchmarks/mmeb_items.json` (queries: the registry's ``num_data``;
   candidates: the spec's corpus and label-set sizes, estimates where its ``basis`` says so).

A video is ``--frames`` frame items for this pipeline (their vectors averaged) and one video input for
VLM2Vec: the real-task table counts inputs (videos, pages, texts), the synthetic one encoder items.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import mmeb_v2  # noqa: E402
from pipelines.download import download  # noqa: E402
from pipelines.normalize import normalize  # noqa: E402
from pipelines.params import load  # noqa: E402
from tests.support.encoders import CountingEncoder, HashEncoder  # noqa: E402
from tests.support.params import section  # noqa: E402
from trainer.eval import evaluate as evaluation  # noqa: E402
from trainer.eval import evaluate_v2  # noqa: E402
from trainer.eval.protocol import ImageLoader, encode_items  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "eval_v2"
ITEMS = REPO / "benchmarks" / "mmeb_items.json"
V1_SUBSET = {"train_subsets": ["Syn-ShapeCLS"], "eval_subsets": ["Syn-ShapeCLS"]}  # V1 is not measured here
log = logging.getLogger("benchmarks.eval_v2")


def prepare(work: Path, frames: int) -> Path:
    """The synthetic V2 sets, normalized under work/data (rewritten each run: a few seconds)."""
    download(section("data", benchmark="v2", **V1_SUBSET),
             section("synthetic", train_rows=2, eval_rows=2, eval_candidates=2), out=work / "data/raw")
    normalize(work / "data/raw", work / "data/normalized", work / "data/rejects", work / "metrics/etl.json",
              section("normalize", workers=1, frames_per_video=frames))
    return work


def encoder(kind: str, work: Path, params):
    if kind == "hash":
        return HashEncoder(name="bench")
    from trainer.backbone.families import build_tiny, save_backbone, train_family_tokenizer

    path = work / "models" / "base"
    if not path.exists():
        save_backbone(build_tiny("qwen2_vl", seed=0, tokenizer=train_family_tokenizer("qwen2_vl")), path)
    return evaluation.load_embedding_model("base", path, params)


def naive_indices(vs: evaluate_v2.V2Set) -> list[int]:
    """The pool items VLM2Vec's loop encodes for one dataset, repeats kept: every query's side, then
    each candidate of the dataset once (``generate_cand_dataset`` deduplicates by id)."""
    return [i for side in vs.query_sides for i in side] + [i for side in vs.corpus_sides for i in side]


def pipeline_run(model, pool: evaluate_v2.V2Pool, batch_size: int, images) -> dict:
    counter = CountingEncoder(model)
    started = time.perf_counter()
    scores = evaluate_v2.score_v2("bench", counter, pool, batch_size=batch_size, images=images, cache=None)
    return {"wall": time.perf_counter() - started, "encodings": counter.encoded,
            "scores": {n: s[mmeb_v2.known(n).headline_metric] for n, s in scores.items()}}


def naive_run(model, pool: evaluate_v2.V2Pool, batch_size: int, images) -> dict:
    """Each dataset on its own, nothing deduplicated across its queries or shared with another dataset."""
    counter = CountingEncoder(model)
    started = time.perf_counter()
    scores = {}
    for vs in pool.sets:
        order = naive_indices(vs)
        emb, _ = encode_items(counter, [pool.items[i] for i in order], [str(k) for k in range(len(order))],
                              batch_size=batch_size, load_images=images, desc=f"naive {vs.task.name}")
        vectors = np.zeros((len(pool.items), emb.shape[1]), np.float32)
        for row, i in reversed(list(enumerate(order))):  # an item's first encoding
            vectors[i] = emb[row]
        scores[vs.task.name] = evaluate_v2.score_set(vs, vectors)[vs.task.headline_metric]
    return {"wall": time.perf_counter() - started, "encodings": counter.encoded, "scores": scores}


def synthetic_counts(pool: evaluate_v2.V2Pool) -> list[dict]:
    """Per synthetic dataset: queries, candidates, the naive path's encodings, its distinct items."""
    return [{"dataset": vs.task.name, "modality": vs.task.modality, "queries": len(vs.query_sides),
             "candidates": len(vs.corpus_sides), "naive": len(naive_indices(vs)),
             "distinct": len(vs.item_indices())} for vs in pool.sets]


def real_counts(items_file: Path = ITEMS) -> dict[str, dict]:
    """Per modality of the 78 tasks: datasets, query inputs, candidate inputs (low, high), and how many
    of the candidate counts are estimates (from benchmarks/mmeb_items.json)."""
    out: dict[str, dict] = defaultdict(lambda: {"datasets": 0, "queries": 0, "low": 0, "high": 0, "estimated": 0})
    for key, entry in json.loads(items_file.read_text(encoding="utf-8"))["v2"].items():
        row = out[key.split("/", 1)[0]]
        cand = entry["candidates"]
        row["datasets"] += 1
        row["queries"] += entry["queries"]["count"]
        row["low"] += cand["low"]
        row["high"] += cand["high"]
        row["estimated"] += "estimat" in cand.get("basis", "") or cand["low"] != cand["high"]
    return dict(out)


def markdown(args, runs: dict, synthetic: list[dict], real: dict) -> str:
    lines = ["## MMEB-V2 evaluation: shared pool against VLM2Vec's per-dataset path", "",
             f"`python benchmarks/eval_v2.py --model {args.model} --frames {args.frames} --batch-size "
             f"{args.batch_size} --threads {args.threads} --repeat {args.repeat}` — the synthetic V2 sets, "
             f"{'a tiny random Qwen2-VL' if args.model == 'tiny' else 'a hash stand-in encoder'}, CPU, torch "
             f"threads {args.threads}, {platform.processor() or platform.machine()}; the fastest of {args.repeat} "
             "cold runs each (the machine is shared with other jobs: expect noise).", "",
             "| modality | path | wall (s) | encoder items | headline metric (mean) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for modality, pair in runs.items():
        for label, r in pair.items():
            mean = sum(r["scores"].values()) / len(r["scores"])
            lines.append(f"| {modality} | {label} | {r['wall']:.2f} | {r['encodings']} | {mean:.4f} |")
    lines += ["", "Distinct items per synthetic dataset (a video: its sampled frames, each an item):", "",
              "| dataset | modality | queries | candidates | naive encodings | distinct items |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['dataset']} | {r['modality']} | {r['queries']} | {r['candidates']} | {r['naive']} | "
              f"{r['distinct']} |" for r in synthetic]
    lines += ["", "The 78 real tasks, counted (not measured) from `benchmarks/mmeb_items.json`: queries are the "
              "registry's `num_data`, candidates the spec's corpus and label-set sizes (a range where the "
              "count after deduplication is not known). Inputs, a video being one input (8 frame items here):",
              "", "| modality | datasets | query inputs | candidate inputs | of which estimated |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for modality, r in real.items():
        cands = f"{r['low']}" if r["low"] == r["high"] else f"{r['low']}–{r['high']}"
        lines.append(f"| {modality} | {r['datasets']} | {r['queries']} | {cands} | {r['estimated']} datasets |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "hash"), default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each path; the fastest is reported")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--results", type=Path, default=None, help="append the markdown section here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    work = prepare(args.work, args.frames)
    params = load(REPO / "params.yaml").eval
    model = encoder(args.model, work, params)
    images = ImageLoader(work / evaluation.IMAGES_ROOT,
                         evaluation.pre_scale(evaluation.rendering_of(model, params)))
    root = work / evaluate_v2.V2_ROOT
    by_modality = defaultdict(list)
    for name in evaluate_v2.load_v2_names(root):
        by_modality[mmeb_v2.known(name).modality].append(name)
    whole = evaluate_v2.load_v2_pool(root)
    encode_items(model, whole.items[:1], ["warm-up"], batch_size=1, load_images=images)  # first-call costs
    runs = {}
    for modality, names in sorted(by_modality.items()):
        pool = evaluate_v2.load_v2_pool(root, names)
        runs[modality] = {}
        for label, run in (("pipeline (shared pool)", pipeline_run), ("naive (VLM2Vec, per dataset)", naive_run)):
            tries = [run(model, pool, args.batch_size, images) for _ in range(args.repeat)]
            runs[modality][label] = min(tries, key=lambda r: r["wall"])
    text = markdown(args, runs, synthetic_counts(whole), real_counts())
    print(text)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return {"runs": runs, "synthetic": synthetic_counts(whole), "real": real_counts()}


if __name__ == "__main__":
    main()
