"""benchmarks/ranking.py: both global rankings agree on tie-free data and report their cost."""

from __future__ import annotations

from tests.support.scripts import script_module


def test_chunked_and_full_matrix_rankings_agree():
    with script_module("benchmarks/ranking.py", "ranking_benchmark_under_test") as bench:
        rows = bench.main(["--queries", "40", "--corpus", "300", "--dim", "16", "--relevant", "2"])
    full, chunked = rows.values()
    assert full["ndcg_linear@5"] == chunked["ndcg_linear@5"] and full["hit@1"] == chunked["hit@1"]
    assert full["wall_s"] > 0 and chunked["peak_mib"] > 0
