"""trainer.search: exact chunked top-k and rank counting against a brute-force reference."""

import numpy as np
import pytest

from trainer.search import count_above, scores_of, top_k


def reference_top_k(q, c, k):
    scores = q @ c.T
    out_s, out_i = [], []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        out_i.append(order)
        out_s.append(row[order])
    return np.array(out_s, np.float32).reshape(len(q), k), np.array(out_i, np.int64).reshape(len(q), k)


@pytest.mark.parametrize("qb,cb", [(1, 1), (3, 5), (7, 64), (1024, 16384)])
def test_top_k_matches_brute_force_with_ties_to_the_lower_id(qb, cb):
    rng = np.random.default_rng(0)
    # small integer vectors: many exact ties, so the tie rule is exercised at every block cut
    q = rng.integers(-2, 3, size=(13, 4)).astype(np.float32)
    c = rng.integers(-2, 3, size=(41, 4)).astype(np.float32)
    for k in (0, 1, 5, 41):
        s, i = top_k(q, c, k, query_block=qb, candidate_block=cb)
        rs, ri = reference_top_k(q, c, k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(s, rs)


def test_top_k_blocks_do_not_change_the_result_on_real_valued_embeddings():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(50, 16)).astype(np.float32)
    c = rng.normal(size=(300, 16)).astype(np.float32)
    whole = top_k(q, c, 10)
    blocked = top_k(q, c, 10, query_block=7, candidate_block=33)
    np.testing.assert_array_equal(whole[1], blocked[1])
    np.testing.assert_allclose(whole[0], blocked[0], rtol=1e-6)
    np.testing.assert_array_equal(whole[1], reference_top_k(q, c, 10)[1])


def test_count_above_is_the_rank_with_ties_to_the_gold():
    rng = np.random.default_rng(2)
    q = rng.integers(-2, 3, size=(9, 3)).astype(np.float32)
    c = rng.integers(-2, 3, size=(30, 3)).astype(np.float32)
    gold = rng.integers(0, 30, size=9)
    floor = (q * c[gold]).sum(axis=1)
    expected = ((q @ c.T) > floor[:, None]).sum(axis=1)
    for qb, cb in [(2, 3), (1024, 16384)]:
        np.testing.assert_array_equal(count_above(q, c, floor, query_block=qb, candidate_block=cb), expected)


def test_bad_shapes_and_k_are_clear_errors():
    q, c = np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="k=5 outside 0..4"):
        top_k(q, c, 5)
    with pytest.raises(ValueError, match="dimension 3 but candidates 2"):
        top_k(q, np.zeros((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        top_k(np.zeros(3, np.float32), c, 1)
    with pytest.raises(ValueError, match="3 floors for 2 queries"):
        count_above(q, c, np.zeros(3))


def test_scores_of_takes_the_chosen_candidates_scores_from_the_same_blocks():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((7, 8)).astype(np.float32)
    c = rng.standard_normal((23, 8)).astype(np.float32)
    c[20:] = c[:3]  # exact duplicates
    ids = np.array([[0, 20], [5, -1], [22, 2], [1, 1], [3, 19], [0, -1], [11, 12]])
    got = scores_of(q, c, ids, query_block=3, candidate_block=4)
    ref = np.einsum("qd,qmd->qm", q, c[np.maximum(ids, 0)])
    assert np.isnan(got[ids < 0]).all()
    np.testing.assert_allclose(got[ids >= 0], ref[ids >= 0], rtol=1e-5)
    # as floors: neither the candidate itself nor an exact duplicate counts as above (integer
    # vectors make every product exact, so the brute force sees the same ties)
    qi, ci = np.round(q * 2), np.round(c * 2)
    floor = scores_of(qi, ci, ids, query_block=3, candidate_block=4)[:, 0]
    above = count_above(qi, ci, floor, query_block=3, candidate_block=4)
    np.testing.assert_array_equal(above, (qi @ ci.T > floor[:, None]).sum(axis=1))
    assert above[0] == np.count_nonzero(qi[0] @ ci.T > qi[0] @ ci[0])
    with pytest.raises(ValueError, match="below 23"):
        scores_of(q, c, np.full((7, 1), 23))


def test_count_above_with_several_floors_per_query():
    rng = np.random.default_rng(6)
    q = rng.integers(-2, 3, size=(9, 4)).astype(np.float32)
    c = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)
    floors = np.array([[0.0, 1.0, np.nan]] * 9, np.float32)
    got = count_above(q, c, floors, query_block=4, candidate_block=7)
    assert got.shape == (9, 3)
    np.testing.assert_array_equal(got[:, 0], count_above(q, c, floors[:, 0], query_block=4, candidate_block=7))
    np.testing.assert_array_equal(got[:, 1], (q @ c.T > 1.0).sum(axis=1))
    assert (got[:, 2] == 0).all()  # a NaN floor counts nothing
