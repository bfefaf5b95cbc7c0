"""Ranking for MMEB-V2: a query against its own candidate list (local) or the whole corpus (global).

    ranking = rank_local(query, candidates, ids, relevance)             # the query's own list
    rankings = rank_global(queries, corpus, corpus_ids, relevances)     # the whole corpus

The result is a `metrics.Ranking` (the top ``DEPTH`` ids and the first relevant position), which
`metrics.dataset_metrics` scores. ``ties`` picks the order among equal scores:

* ``"strict"`` (the default, this project's rule, as in V1): a candidate must score strictly
  higher than a relevant candidate to outrank it; among equal scores relevant candidates come
  first, the higher grade first, then the lower index. An id listed twice in a local list is ranked
  once.
* ``"argsort"``: the order numpy's default (unstable) ``argsort(-scores)`` gives, as VLM2Vec ranks
  (``eval.py``): a candidate tied with the gold lands anywhere among its ties, and a repeated id
  keeps every slot.

Global ranking never materialises the query x corpus score matrix under strict ties: each relevant
candidate's position is the number of candidates scoring strictly above it (`trainer.search`, exact
and chunked, one product per block for all of a query's relevant candidates) plus the relevant ones
tied with it and placed before it; only the top ``DEPTH`` are listed. A relevant candidate is compared with the very value the counting sees (its own score never
counts against it); the same vector in another candidate block can differ in its last bit, so an
exact duplicate under another id ties only as far as the arithmetic does. The argsort order needs whole rows, so it sorts as many rows at a time as fit in the same
memory as one search block.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from trainer import search
from trainer.eval.metrics import DEPTH, Ranking, Relevance

TIES = ("strict", "argsort")


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _first_relevant(ranked: Sequence[Hashable], relevant) -> int | None:
    return next((p for p, cid in enumerate(ranked) if cid in relevant), None)


# --- ranking -------------------------------------------------------------------------------------
def rank_local(query: np.ndarray, candidates: np.ndarray, ids: Sequence[Hashable], relevance: Relevance,
               ties: str = "strict") -> Ranking:
    """Rank one query's own candidate list (``candidates[i]`` is the vector of ``ids[i]``)."""
    _check_choice(ties, TIES, "ties")
    q = np.asarray(query, np.float32)
    c = np.asarray(candidates, np.float32)
    if len(c) != len(ids):
        raise ValueError(f"{len(c)} candidate vectors for {len(ids)} ids")
    gain = relevance.best_grades()
    if ties == "argsort":  # VLM2Vec: np.argsort(-np.dot(qry_embed, cand_embeds.T))
        ranked = [ids[i] for i in np.argsort(-np.dot(q, c.T))]
    else:
        first: dict[Hashable, int] = {}
        for i, cid in enumerate(ids):
            first.setdefault(cid, i)
        keep = sorted(first.values())
        scores = c[keep] @ q
        relevant = np.array([ids[i] in gain for i in keep])
        grade = np.array([gain.get(ids[i], 0) for i in keep], np.float64)
        order = np.lexsort((np.arange(len(keep)), -grade, ~relevant, -scores))
        ranked = [ids[keep[i]] for i in order]
    return Ranking(tuple(ranked[:DEPTH]), _first_relevant(ranked, gain))


def _gold_indices(relevances: Sequence[Relevance], index: dict) -> list[list[tuple[int, float]]]:
    out = []
    for r, rel in enumerate(relevances):
        absent = [g for g in rel.best_grades() if g not in index]
        if absent:
            raise ValueError(f"query {r}: relevant ids not in the corpus: {absent[:5]}")
        out.append([(index[g], grade) for g, grade in rel.best_grades().items()])
    return out


def rank_global(queries: np.ndarray, corpus: np.ndarray, corpus_ids: Sequence[Hashable],
                relevances: Sequence[Relevance], ties: str = "strict", *,
                query_block: int = search.QUERY_BLOCK, candidate_block: int = search.CANDIDATE_BLOCK) -> list[Ranking]:
    """Rank every query against the whole (deduplicated) corpus; memory stays within blocks of
    ``query_block x candidate_block`` scores (argsort order: rows of the whole corpus, as many as fit)."""
    _check_choice(ties, TIES, "ties")
    index = {cid: i for i, cid in enumerate(corpus_ids)}
    if len(index) != len(corpus_ids):
        raise ValueError(f"corpus ids repeat ({len(corpus_ids) - len(index)} duplicates): deduplicate the corpus first")
    if len(corpus) != len(corpus_ids):
        raise ValueError(f"{len(corpus)} corpus vectors for {len(corpus_ids)} ids")
    if len(queries) != len(relevances):
        raise ValueError(f"{len(queries)} queries but {len(relevances)} relevance lists")
    golds = _gold_indices(relevances, index)
    if ties == "argsort":
        return _global_argsort(queries, corpus, corpus_ids, golds, max(1, query_block * candidate_block // max(len(corpus), 1)))
    positions = _strict_positions(queries, corpus, golds, query_block, candidate_block)
    width = min(len(corpus), DEPTH + max((len(g) for g in golds), default=0))
    _, best = search.top_k(queries, corpus, width, query_block=query_block, candidate_block=candidate_block)
    out = []
    for q, (gold, pos) in enumerate(zip(golds, positions)):
        gold_ids = {i for i, _ in gold}
        fill = iter(i for i in best[q] if i not in gold_ids)
        at = {p: i for (i, _), p in zip(gold, pos) if p < DEPTH}
        top = [at[p] if p in at else next(fill) for p in range(min(DEPTH, len(corpus)))]
        out.append(Ranking(tuple(corpus_ids[i] for i in top), int(min(pos)) if len(pos) else None))
    return out


def _strict_positions(queries, corpus, golds, query_block, candidate_block) -> list[np.ndarray]:
    """0-based position of each relevant candidate of each query under the strict rule.

    A query's relevant candidates are its floors: their scores come from the very block products
    `count_above` compares (`search.scores_of`), so exact ties never count, and one product per block
    serves all of them."""
    width = max((len(g) for g in golds), default=0)
    if width == 0:
        return [np.zeros(0, np.int64) for _ in golds]
    ids = np.full((len(golds), width), -1, np.int64)
    grade = np.full((len(golds), width), np.nan)
    for q, g in enumerate(golds):
        ids[q, :len(g)] = [i for i, _ in g]
        grade[q, :len(g)] = [x for _, x in g]
    blocks = dict(query_block=query_block, candidate_block=candidate_block)
    scores = search.scores_of(queries, corpus, ids, **blocks)
    above = search.count_above(queries, corpus, scores, **blocks)
    # relevant candidates tied with each one and placed before it (NaN, an empty slot, never ties)
    s, g, i = scores[:, None, :], grade[:, None, :], ids[:, None, :]
    before = (s == scores[:, :, None]) & ((g > grade[:, :, None]) | ((g == grade[:, :, None]) & (i < ids[:, :, None])))
    position = above + before.sum(axis=2)  # `above` already counts the relevant ones scoring higher
    return [position[q, :len(g)] for q, g in enumerate(golds)]


def _global_argsort(queries, corpus, corpus_ids, golds, rows_per_block) -> list[Ranking]:
    """numpy's default argsort over each query's whole row of scores, as VLM2Vec ranks."""
    q_all, c = np.asarray(queries, np.float32), np.asarray(corpus, np.float32)
    out = []
    for q0 in range(0, len(q_all), rows_per_block):
        order = np.argsort(-np.dot(q_all[q0:q0 + rows_per_block], c.T), axis=1)
        for r, row in enumerate(order):
            gold = np.array([i for i, _ in golds[q0 + r]], np.int64)
            hits = np.nonzero(np.isin(row, gold))[0]
            out.append(Ranking(tuple(corpus_ids[i] for i in row[:DEPTH]), int(hits[0]) if len(hits) else None))
    return out


def candidate_pool(query_candidates: Sequence[Sequence[Hashable]], corpus_ids: Sequence[Hashable]) -> list[Hashable]:
    """A global dataset's ranking pool in VLM2Vec's order (``generate_cand_dataset``): the candidates
    each query lists, query by query, then the corpus, every id once (its first occurrence). Only the
    argsort tie order depends on this order; the pool holds every positive even when the corpus lacks it."""
    seen: dict[Hashable, None] = {}
    for ids in query_candidates:
        seen.update((i, None) for i in ids if i not in seen)
    seen.update((i, None) for i in corpus_ids if i not in seen)
    return list(seen)
