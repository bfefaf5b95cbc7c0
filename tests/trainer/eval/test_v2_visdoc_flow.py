"""The MMEB-V2 pieces together on Syn-ViDoRe: read the BEIR set, rank every query against the whole
corpus, score with graded qrels, aggregate and write the leaderboard entry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.sources.beir import read_beir
from pipelines.sources.synthetic.visdoc import write_visdoc
from trainer.eval.metrics import Relevance, dataset_metrics
from trainer.eval.ranking import candidate_pool, rank_global
from trainer.eval.v2_scores import aggregate, leaderboard, score_file


def test_syn_vidore_end_to_end(tmp_path):
    write_visdoc(tmp_path / "Syn-ViDoRe", seed=0, docs=4, pages=3, asked_docs=3, size=48)
    docset = read_beir(tmp_path / "Syn-ViDoRe")
    pool = candidate_pool([[c for c, _ in docset.relevant[q]] for q, _ in docset.queries], list(docset.pages))
    assert sorted(pool) == sorted(docset.pages)  # every page once
    index = {c: i for i, c in enumerate(pool)}
    corpus = np.eye(len(pool), dtype=np.float32)  # an oracle: one direction per page
    queries = np.zeros((len(docset.queries), len(pool)), np.float32)
    relevances = []
    for r, (q, _) in enumerate(docset.queries):
        for c, grade in docset.relevant[q]:
            queries[r, index[c]] = grade  # the answering page (2) above its report's other pages (1)
        relevances.append(Relevance(tuple(c for c, _ in docset.relevant[q]), tuple(g for _, g in docset.relevant[q])))
    queries[0] = 0
    first = docset.relevant[docset.queries[0][0]]
    answer = next(c for c, g in first if g == 2)
    sibling = next(c for c, g in first if g == 1)
    queries[0, index[sibling]], queries[0, index[answer]] = 1.0, 0.5  # query 0 ranks a grade-1 page first
    rankings = rank_global(queries, corpus, pool, relevances, query_block=4, candidate_block=5)
    metrics = dataset_metrics(rankings, relevances)
    n = len(docset.queries)
    # query 0: gains 1, 2, then 0 for the third page (score 0 ties go to the relevant one: gain 1)
    ndcg0 = (1 + 2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3) + 1 / 2)
    assert metrics["ndcg_linear@5"] == pytest.approx((n - 1 + ndcg0) / n)
    assert metrics["hit@1"] == 1.0  # a grade-1 page is relevant too
    assert metrics["mrr"] == 1.0
    entry = score_file(metrics, n, n)
    summary = aggregate({"ViDoRe_arxivqa": entry})
    assert summary["meta"]["VDRv1"]["score"] == pytest.approx(metrics["ndcg_linear@5"])
    board = leaderboard({"model_name": "oracle"}, {"ViDoRe_arxivqa": entry}, generated="2026-12-07T00:00:00")
    assert board["metrics"]["visdoc"]["ViDoRe_arxivqa"]["num_data"] == n
