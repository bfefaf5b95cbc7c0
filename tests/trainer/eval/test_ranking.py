"""trainer.eval.ranking: local and global ranking under the strict and the argsort tie rules."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.eval.metrics import Relevance, query_metrics
from trainer.eval.ranking import rank_global, rank_local


def strict_reference(q, c, ids, rel):
    """Brute force: sort by (-score, not relevant, -grade, index) over the distinct ids."""
    gain = rel.best_grades()
    scores = c @ q
    keys = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i] not in gain, -gain.get(ids[i], 0), i))
    return [ids[i] for i in keys]


def integer_vectors(rng, n, dim=4):
    """Small integer-valued vectors: every product is exact, so ties are exact in any order of sums."""
    return rng.integers(-2, 3, size=(n, dim)).astype(np.float32)


def test_strict_ties_go_to_the_gold_and_a_repeated_id_is_ranked_once():
    c = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)  # x, g, g again, y
    r = rank_local(np.array([1, 0], np.float32), c, ["x", "g", "g", "y"], Relevance(("g",)))
    assert r.top == ("g", "x", "y") and r.first_relevant == 0
    assert query_metrics(r, Relevance(("g",)))["hit@1"] == 1.0


def test_strict_puts_the_higher_grade_first_among_tied_golds():
    c = np.array([[1, 0], [1, 0], [1, 0]], np.float32)
    r = rank_local(np.array([1, 0], np.float32), c, ["x", "low", "high"], Relevance(("low", "high"), (1, 3)))
    assert r.top == ("high", "low", "x")


def test_argsort_is_numpys_default_order_with_every_slot():
    rng = np.random.default_rng(0)
    c = np.repeat(integer_vectors(rng, 20), 2, axis=0)  # every candidate twice: many exact ties
    ids = [f"c{i // 2}" for i in range(40)]
    q = integer_vectors(rng, 1)[0]
    r = rank_local(q, c, ids, Relevance(("c3",)), ties="argsort")
    expected = [ids[i] for i in np.argsort(-np.dot(q, c.T))]
    assert r.top == tuple(expected[:10])
    assert r.first_relevant == expected.index("c3")
    # a gold listed twice takes two slots: VLM2Vec's NDCG goes above 1 when both are on top
    two = rank_local(np.array([1, 0], np.float32), np.array([[1, 0], [0, 1], [1, 0]], np.float32),
                     ["g", "y", "g"], Relevance(("g",)), ties="argsort")
    assert two.top == ("g", "g", "y")
    assert query_metrics(two, Relevance(("g",)), "official")["ndcg_linear@5"] > 1.0
    assert query_metrics(two, Relevance(("g",)))["ndcg_linear@5"] == 1.0


@pytest.mark.parametrize("blocks", [(2, 3), (1000, 1000)])
def test_global_strict_matches_the_brute_force_order(blocks):
    rng = np.random.default_rng(1)
    corpus = integer_vectors(rng, 37)
    corpus[30:] = corpus[:7]  # exact duplicates under other ids
    queries = integer_vectors(rng, 9)
    ids = [f"d{i}" for i in range(37)]
    rels = []
    for _ in range(9):
        chosen = tuple(str(i) for i in rng.choice(ids, size=int(rng.integers(1, 4)), replace=False))
        rels.append(Relevance(chosen, tuple(int(g) for g in rng.integers(1, 4, size=len(chosen)))))
    rels[0] = Relevance(("d0", "d30", "d5"), (1, 2, 3))  # d30 duplicates d0: an exact tie between golds
    out = rank_global(queries, corpus, ids, rels, query_block=blocks[0], candidate_block=blocks[1])
    for q, rel, got in zip(queries, rels, out):
        ref = strict_reference(q, corpus, ids, rel)
        gold_positions = sorted(ref.index(g) for g in rel.best_grades())
        assert got.first_relevant == gold_positions[0]
        # the metrics read only where the relevant ids sit in the top 10, and those must match exactly
        assert [p for p, cid in enumerate(got.top) if cid in rel.best_grades()] == [p for p in gold_positions if p < 10]
        assert [cid for cid in got.top if cid in rel.best_grades()] == [g for g in ref[:10] if g in rel.best_grades()]
        assert query_metrics(got, rel) == query_metrics(type(got)(tuple(ref[:10]), gold_positions[0]), rel)


def test_global_argsort_is_numpys_order_over_the_whole_row():
    rng = np.random.default_rng(2)
    corpus, queries = integer_vectors(rng, 50), integer_vectors(rng, 7)
    ids = list(range(100, 150))
    rels = [Relevance((int(rng.integers(100, 150)),)) for _ in range(7)]
    out = rank_global(queries, corpus, ids, rels, ties="argsort", query_block=2, candidate_block=25)  # 1 row a block
    full = np.argsort(-np.dot(queries, corpus.T), axis=1)  # VLM2Vec's whole score matrix
    for row, rel, got in zip(full, rels, out):
        order = [ids[i] for i in row]
        assert got.top == tuple(order[:10])
        assert got.first_relevant == order.index(rel.ids[0])


def test_global_refuses_duplicate_corpus_ids_and_absent_golds():
    c = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="corpus ids repeat"):
        rank_global(c, c, ["a", "a", "b"], [Relevance(("a",))] * 3)
    with pytest.raises(ValueError, match="not in the corpus"):
        rank_global(c[:1], c, ["a", "b", "c"], [Relevance(("z",))])
    with pytest.raises(ValueError, match="ties must be one of"):
        rank_global(c[:1], c, ["a", "b", "c"], [Relevance(("a",))], ties="stable")


def test_candidate_pool_is_vlm2vecs_order_without_repeats():
    from trainer.eval.ranking import candidate_pool

    assert candidate_pool([["p2", "p1"], ["p1", "p3"]], ["c1", "p3", "p2", "c2"]) == ["p2", "p1", "p3", "c1", "c2"]
    assert candidate_pool([], ["a", "a", "b"]) == ["a", "b"]
