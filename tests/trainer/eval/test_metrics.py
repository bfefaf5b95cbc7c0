"""trainer.eval.metrics: MMEB-V2's ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from trainer.eval.metrics import SCORE_KEYS, Ranking, Relevance, dataset_metrics, query_metrics

L2, L3, L5, L6 = 1.0, math.log2(3), math.log2(5), math.log2(6)


def test_one_binary_gold_at_the_third_position():
    m = query_metrics(Ranking(("x", "y", "g", "z"), 2), Relevance(("g",)))
    assert (m["hit@1"], m["hit@5"], m["hit@10"]) == (0.0, 1.0, 1.0)
    assert (m["precision@1"], m["precision@5"], m["precision@10"]) == (0.0, 0.2, 0.1)
    assert m["recall@5"] == 1.0 and m["recall@1"] == 0.0
    assert m["f1@5"] == pytest.approx(2 * 0.2 * 1 / 1.2)
    assert m["map@5"] == pytest.approx(1 / 3) and m["map@1"] == 0.0
    assert (m["mrr@1"], m["mrr@5"], m["mrr"]) == (0.0, pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert m["ndcg_linear@5"] == pytest.approx(1 / math.log2(4))
    assert m["ndcg_exponential@5"] == pytest.approx(1 / math.log2(4))  # 2^1 - 1 = 1


def test_graded_labels():
    rel = Relevance(("a", "b", "c"), (3, 2, 1))
    m = query_metrics(Ranking(("x", "b", "a", "y", "c", "z"), 1), rel)
    dcg = 2 / L3 + 3 / 2 + 1 / L6  # b (2) at position 1, a (3) at 2, c (1) at 4
    idcg = 3 / L2 + 2 / L3 + 1 / 2
    assert m["ndcg_linear@5"] == pytest.approx(dcg / idcg)
    assert m["ndcg_exponential@5"] == pytest.approx((3 / L3 + 7 / 2 + 1 / L6) / (7 + 3 / L3 + 1 / 2))
    assert m["ndcg_linear@1"] == 0.0
    assert m["ndcg_linear@10"] == m["ndcg_linear@5"]
    assert m["precision@5"] == pytest.approx(3 / 5) and m["recall@5"] == 1.0 and m["recall@1"] == 0.0
    assert m["map@5"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert m["map@1"] == 0.0
    assert m["mrr@5"] == m["mrr"] == 0.5


def test_idcg_counts_relevant_ids_beyond_k_and_mrr_is_also_uncapped():
    rel = Relevance(tuple("abcdefg"))  # 7 relevant, only "a" retrieved, at position 11
    m = query_metrics(Ranking(tuple("uvwxyzopqr"), 11), rel)
    assert m["hit@10"] == m["ndcg_linear@10"] == m["mrr@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 12)
    m = query_metrics(Ranking(("a",) + tuple("uvwxyzopq"), 0), rel)
    assert m["ndcg_linear@5"] == pytest.approx(1 / (1 + 1 / L3 + 1 / 2 + 1 / L5 + 1 / L6))  # IDCG over 5 of the 7
    assert m["map@5"] == pytest.approx(1 / 5)  # AP normalised by min(#relevant, k)
    assert m["recall@10"] == pytest.approx(1 / 7)


def test_official_set_reordering_moves_grades_on_a_graded_set():
    # list(set([3, 1, 2])) is [1, 2, 3]: VLM2Vec zips it with the grades (3, 2, 1) in their original order
    assert list({3, 1, 2}) == [1, 2, 3]
    rel = Relevance((3, 1, 2), (3, 2, 1))
    ranking = Ranking((3, 1, 2), 0)  # the ideal order
    correct = query_metrics(ranking, rel)
    official = query_metrics(ranking, rel, labels="official")
    assert correct["ndcg_linear@5"] == pytest.approx(1.0)
    # official grades: 1 -> 3, 2 -> 2, 3 -> 1; ranked 3, 1, 2 -> gains 1, 3, 2
    idcg = 3 + 2 / L3 + 1 / 2
    assert official["ndcg_linear@5"] == pytest.approx((1 + 3 / L3 + 2 / 2) / idcg)
    assert official["ndcg_exponential@5"] == pytest.approx((1 + 7 / L3 + 3 / 2) / (7 + 3 / L3 + 1 / 2))
    assert official["ndcg_linear@5"] < 0.9
    # IDCG, hit, precision, recall and MAP do not depend on the grades
    for key in ("hit@1", "precision@5", "recall@5", "map@5", "mrr@5"):
        assert official[key] == correct[key]
    # binary labels: both agree
    assert query_metrics(ranking, Relevance((3, 1, 2)), "official") == query_metrics(ranking, Relevance((3, 1, 2)))


def test_a_repeated_gold_counts_once_correctly_and_in_every_slot_officially():
    ranking = Ranking(("a", "a", "b"), 0)  # a local list that lists the gold "a" twice
    correct = query_metrics(ranking, Relevance(("a",)))
    official = query_metrics(ranking, Relevance(("a",)), "official")
    assert correct["ndcg_linear@5"] == 1.0 and correct["map@5"] == 1.0
    assert official["ndcg_linear@5"] == pytest.approx(1 + 1 / L3)  # above 1, as VLM2Vec reports it
    assert official["map@5"] == pytest.approx(2.0)
    assert official["precision@5"] == correct["precision@5"] == pytest.approx(1 / 5)


def test_official_refuses_graded_labels_with_a_repeated_id_like_vlm2vec():
    with pytest.raises(ValueError, match="repeated id"):
        query_metrics(Ranking(("a",), 0), Relevance(("a", "a"), (1, 2)), "official")
    # the correct computation keeps the highest grade
    assert Relevance(("a", "a", "b"), (1, 2, 1)).best_grades() == {"a": 2, "b": 1}


def test_no_relevant_id_follows_vlm2vecs_conventions():
    m = query_metrics(Ranking(("x",), None), Relevance(()))
    assert (m["hit@1"], m["precision@1"], m["recall@1"], m["ndcg_linear@1"], m["mrr"]) == (0.0, 0.0, 1.0, 0.0, 0.0)


def test_dataset_metrics_are_means_in_the_score_files_order():
    rankings = [Ranking(("g", "x"), 0), Ranking(("x", "g"), 1)]
    rels = [Relevance(("g",)), Relevance(("g",))]
    m = dataset_metrics(rankings, rels)
    assert list(m) == [*SCORE_KEYS, "mrr"]
    assert SCORE_KEYS[:3] == ("hit@1", "hit@5", "hit@10") and SCORE_KEYS[-1] == "mrr@10"
    assert m["hit@1"] == 0.5 and m["mrr"] == pytest.approx(0.75)
    assert m["ndcg_linear@5"] == pytest.approx((1 + 1 / L3) / 2)
    with pytest.raises(ValueError, match="labels must be one of"):
        dataset_metrics(rankings, rels, labels="vlm2vec")
    with pytest.raises(ValueError):
        dataset_metrics(rankings, rels[:1])
