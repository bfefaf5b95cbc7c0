"""Exact nearest-neighbour search over embeddings, in chunks so memory stays bounded.

    scores, ids = top_k(queries, candidates, k)        # [Q, k] best candidates per query
    above = count_above(queries, candidates, floor)     # [Q] candidates scoring strictly above
    floor = scores_of(queries, candidates, ids)          # [Q, m] scores of chosen candidates

All compute inner products (cosine for L2-normalised embeddings) block by block: a block of
``query_block`` queries against a block of ``candidate_block`` candidates at a time, so the largest
array is ``query_block x (candidate_block + k)`` floats however large the corpus. This is what
evaluation against a whole corpus (MMEB-V2's global retrieval) and hard-negative mining need: the
exact ranking without materialising the full score matrix. An approximate index is not used: exact
search over the sizes these stages see is a few matrix products.

Ranking is deterministic: a higher score first, and among equal scores the lower candidate index
first, whatever the block sizes (the blocks only change which candidates are compared when, not the
order the merge produces).
"""

from __future__ import annotations

import numpy as np

QUERY_BLOCK = 1024
CANDIDATE_BLOCK = 16384


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, dim], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must hold floats, got {x.dtype}")
    return x.astype(np.float32, copy=False)


def _check(queries: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, c = _as_matrix(queries, "queries"), _as_matrix(candidates, "candidates")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but candidates {c.shape[1]}")
    return q, c


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of (scores, ids): score descending, then id ascending."""
    if scores.shape[1] > k:  # cheap pre-selection; ties at the cut are resolved exactly below
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        keep = scores >= kth
        width = int(keep.sum(axis=1).max())
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        ids = np.where(np.take_along_axis(keep, order, axis=1), ids, np.iinfo(np.int64).max)
        scores = np.where(ids == np.iinfo(np.int64).max, -np.inf, scores)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def top_k(queries: np.ndarray, candidates: np.ndarray, k: int, *, query_block: int = QUERY_BLOCK,
          candidate_block: int = CANDIDATE_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring candidates of every query: (scores float32 [Q, k], ids int64 [Q, k]).

    ``k`` larger than the number of candidates is an error (the caller decides what a short pool
    means); ``k == 0`` gives empty arrays."""
    q, c = _check(queries, candidates)
    if k < 0 or k > len(c):
        raise ValueError(f"k={k} outside 0..{len(c)} (the number of candidates)")
    out_s = np.empty((len(q), k), np.float32)
    out_i = np.empty((len(q), k), np.int64)
    if k == 0:
        return out_s, out_i
    for q0 in range(0, len(q), query_block):
        qb = q[q0 : q0 + query_block]
        best_s = np.empty((len(qb), 0), np.float32)
        best_i = np.empty((len(qb), 0), np.int64)
        for c0 in range(0, len(c), candidate_block):
            block = qb @ c[c0 : c0 + candidate_block].T
            ids = np.broadcast_to(np.arange(c0, c0 + block.shape[1], dtype=np.int64), block.shape)
            best_s, best_i = _best(np.concatenate([best_s, block], axis=1),
                                   np.concatenate([best_i, ids], axis=1), k)
        out_s[q0 : q0 + len(qb)], out_i[q0 : q0 + len(qb)] = best_s, best_i
    return out_s, out_i


def count_above(queries: np.ndarray, candidates: np.ndarray, floor: np.ndarray, *,
                query_block: int = QUERY_BLOCK, candidate_block: int = CANDIDATE_BLOCK) -> np.ndarray:
    """Per query, how many candidates score strictly above ``floor[query]`` (int64 [Q]).

    With ``floor`` the gold's own score this is the gold's 0-based rank when ties go to the gold.
    ``floor`` may also be [Q, m], several floors per query (a query's relevant candidates), counted
    against one product per block; the result is then [Q, m] (a NaN floor counts nothing)."""
    q, c = _check(queries, candidates)
    floor = np.asarray(floor, np.float32)
    several = floor.ndim == 2
    floor = floor.reshape(len(floor), -1) if several else floor.reshape(-1, 1)
    if len(floor) != len(q):
        raise ValueError(f"{len(floor)} floors for {len(q)} queries")
    counts = np.zeros(floor.shape, np.int64)
    for q0 in range(0, len(q), query_block):
        qb, fb = q[q0 : q0 + query_block], floor[q0 : q0 + query_block]
        for c0 in range(0, len(c), candidate_block):
            block = qb @ c[c0 : c0 + candidate_block].T
            for j in range(floor.shape[1]):
                counts[q0 : q0 + len(qb), j] += (block > fb[:, j : j + 1]).sum(axis=1)
    return counts if several else counts[:, 0]


def scores_of(queries: np.ndarray, candidates: np.ndarray, ids: np.ndarray, *,
              query_block: int = QUERY_BLOCK, candidate_block: int = CANDIDATE_BLOCK) -> np.ndarray:
    """The scores of chosen candidates, ``out[q, j] = queries[q] . candidates[ids[q, j]]`` (float32
    [Q, m]; ``ids < 0`` marks an empty slot, scored NaN).

    Each score is taken from the same block product `count_above` computes with the same blocks,
    so it is bit-identical to the value `count_above` compares: with these scores as floors, a
    candidate that ties exactly (a duplicate of the gold, the gold itself) is never counted above."""
    q, c = _check(queries, candidates)
    ids = np.asarray(ids, np.int64).reshape(len(q), -1)
    if (ids >= len(c)).any():
        raise ValueError(f"candidate ids must be below {len(c)}, the number of candidates")
    out = np.full(ids.shape, np.nan, np.float32)
    for q0 in range(0, len(q), query_block):
        qb, ib = q[q0 : q0 + query_block], ids[q0 : q0 + query_block]
        for c0 in range(0, len(c), candidate_block):
            inside = (ib >= c0) & (ib < c0 + candidate_block)
            if not inside.any():
                continue
            block = qb @ c[c0 : c0 + candidate_block].T
            rows, cols = np.nonzero(inside)
            out[q0 + rows, cols] = block[rows, ib[rows, cols] - c0]
    return out
