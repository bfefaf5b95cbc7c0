"""Global ranking benchmark: MMEB-V2's whole-corpus ranking by exact chunked counting
(`trainer.eval.ranking.rank_global`, strict ties) against VLM2Vec's path (the whole query x corpus
score matrix, then numpy's argsort of every row).

    python benchmarks/ranking.py [--queries 2000] [--corpus 20000] [--dim 1536] [--relevant 3]
                                 [--threads 2] [--seed 0]

Random unit vectors stand in for embeddings (no ties, so both orders agree); each query has
``--relevant`` graded relevant candidates. Prints, per approach, wall time, the peak of memory that
numpy allocated (tracemalloc) and NDCG@5 / hit@1 of the two rankings, which must be equal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_data(queries: int, corpus: int, dim: int, relevant: int, seed: int):
    from trainer.eval.metrics import Relevance

    rng = np.random.default_rng(seed)
    c = rng.standard_normal((corpus, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    gold = np.stack([rng.choice(corpus, size=relevant, replace=False) for _ in range(queries)])
    q = c[gold[:, 0]] + 0.9 * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim) * 8
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(corpus)]
    rels = [Relevance(tuple(ids[j] for j in row), tuple(range(relevant, 0, -1))) for row in gold]
    return q, c, ids, rels


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, wall, peak


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--corpus", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--relevant", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    from trainer.eval.metrics import dataset_metrics
    from trainer.eval.ranking import rank_global

    q, c, ids, rels = make_data(args.queries, args.corpus, args.dim, args.relevant, args.seed)
    rows = {}
    for name, ties in (("VLM2Vec: full matrix + argsort", "argsort"), ("chunked count, strict ties", "strict")):
        if ties == "argsort":  # the whole matrix at once, as VLM2Vec's eval.py
            block = dict(query_block=args.queries, candidate_block=args.corpus)
        else:
            block = {}
        rankings, wall, peak = measure(lambda: rank_global(q, c, ids, rels, ties=ties, **block))
        m = dataset_metrics(rankings, rels)
        rows[name] = {"wall_s": wall, "peak_mib": peak / 2**20, "ndcg_linear@5": m["ndcg_linear@5"], "hit@1": m["hit@1"]}
    print(f"{args.queries} queries x {args.corpus} candidates, dim {args.dim}, {args.relevant} relevant each, "
          f"{args.threads} threads")
    print("| approach | wall time | peak numpy memory | NDCG@5 | hit@1 |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_s']:.1f} s | {r['peak_mib']:.0f} MiB | {r['ndcg_linear@5']:.4f} | {r['hit@1']:.4f} |")
    return rows


if __name__ == "__main__":
    main()
