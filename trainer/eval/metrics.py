"""MMEB-V2's ranking metrics with graded relevance, as VLM2Vec's scorer defines them, computed
correctly by default and exactly as VLM2Vec does on request.

    scores = dataset_metrics(rankings, relevances)                      # means over queries

The metrics are those of VLM2Vec's ``src/utils/eval_utils/metrics.py``, at k = 1, 5 and 10: hit,
precision, recall, F1, MAP (AP normalised by min(#relevant, k)), MRR (capped at k, as the score
files report it) and NDCG with linear (gain = grade) and exponential (gain = 2^grade - 1) gain; the
ideal DCG sorts the query's grades, binary labels have grade 1. ``mrr`` without a cut-off is
reported beside them. Scores are fractions, as in the score files.

``labels`` picks the computation:

* ``"correct"`` (the default): each relevant id keeps its own grade and counts once, at its best
  position.
* ``"official"``: VLM2Vec's code exactly. The labels pass through ``list(set(labels))`` before NDCG
  zips them with the grades, which stay in their original order, so with graded labels a grade can
  land on another document (for string ids that order depends on PYTHONHASHSEED). Every slot
  holding a relevant id counts, so a gold id repeated in a candidate list can push AP and NDCG
  above 1 (precision, recall and hit count distinct ids). The IDCG, hit, precision and recall are
  the same in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

KS = (1, 5, 10)
DEPTH = max(KS)  # every per-k metric reads at most the top 10
LABELS = ("correct", "official")
# The per-k metrics in the order VLM2Vec's score files list them.
METRICS = ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1", "map", "mrr")
SCORE_KEYS = tuple(f"{m}@{k}" for m in METRICS for k in KS)
GAINS = {"linear": lambda g: g, "exponential": lambda g: 2 ** g - 1}


@dataclass(frozen=True)
class Relevance:
    """One query's relevant candidate ids with their grades (None: binary, every grade 1)."""

    ids: tuple[Hashable, ...]
    grades: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.grades is not None and len(self.grades) != len(self.ids):
            raise ValueError(f"{len(self.ids)} relevant ids but {len(self.grades)} grades")

    def best_grades(self) -> dict[Hashable, float]:
        """Grade per distinct id (the highest where an id repeats, as VLM2Vec's qrels loader keeps)."""
        grades = self.grades if self.grades is not None else (1,) * len(self.ids)
        out: dict[Hashable, float] = {}
        for i, g in zip(self.ids, grades):
            out[i] = max(out.get(i, g), g)
        return out


@dataclass(frozen=True)
class Ranking:
    """What the metrics need of one query's ranking: the ids at positions 0..DEPTH-1 (an id may
    repeat where a candidate list repeats it), and the 0-based position of the first relevant
    candidate (None when no candidate is relevant)."""

    top: tuple[Hashable, ...]
    first_relevant: int | None


def _dcg(gains: Sequence[tuple[int, float]], form: str) -> float:
    """sum of gain(grade) / log2(position + 2) over (position, grade) pairs."""
    return sum(GAINS[form](g) / math.log2(p + 2) for p, g in gains)


def _per_k(k: int, found: int, n: int, ap: float, rr: float) -> dict[str, float]:
    """hit, precision, recall, F1, MAP and MRR at k as VLM2Vec computes them from the distinct
    relevant ids found in the top k, the number of relevant ids, AP's sum and the reciprocal rank."""
    if n == 0:  # VLM2Vec's conventions for a query without a relevant id
        return {"hit": 0.0, "precision": 0.0, "recall": 1.0, "f1": 0.0, "map": 0.0, "mrr": 0.0}
    p, r = found / k, found / n
    return {"hit": float(found > 0), "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "map": ap / min(n, k), "mrr": rr}


def query_metrics(ranking: Ranking, relevance: Relevance, labels: str = "correct") -> dict[str, float]:
    """Every metric of one query: ``{"hit@1": ..., ..., "mrr@10": ..., "mrr": ...}``."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    gain = relevance.best_grades()
    if labels == "official":
        slots, grade_of = _official_slots(ranking, relevance)
    else:
        slots, grade_of = [], gain
        for p, cid in enumerate(ranking.top):
            if cid in gain and cid not in {c for _, c in slots}:
                slots.append((p, cid))
    ideal = sorted(grade_of.values(), reverse=True)
    out: dict[str, float] = {}
    for k in KS:
        inside = [(p, cid) for p, cid in slots if p < k]
        ap = sum((j + 1) / (p + 1) for j, (p, _) in enumerate(inside))
        rr = 1.0 / (inside[0][0] + 1) if inside else 0.0
        row = _per_k(k, len({cid for _, cid in inside}), len(gain), ap, rr)
        for form in GAINS:
            idcg = _dcg(list(enumerate(ideal[:k])), form)
            dcg = _dcg([(p, grade_of.get(cid, 0)) for p, cid in inside], form)
            row[f"ndcg_{form}"] = dcg / idcg if idcg > 0 else 0.0
        out.update({f"{m}@{k}": row[m] for m in METRICS})
    out["mrr"] = 0.0 if ranking.first_relevant is None else 1.0 / (ranking.first_relevant + 1)
    return out


def _official_slots(ranking: Ranking, relevance: Relevance) -> tuple[list, dict]:
    """VLM2Vec's view of a query: every slot holding a label, and the grade NDCG gives each label
    after ``list(set(labels))`` reordered the labels but not the grades."""
    labels = list(set(relevance.ids))
    if relevance.grades is None:
        grade_of = {cid: 1 for cid in labels}
    else:
        if len(labels) != len(relevance.grades):  # VLM2Vec's ndcg_at_k raises here too
            raise ValueError("VLM2Vec's scorer refuses graded labels with a repeated id "
                             f"({len(relevance.ids)} labels, {len(labels)} distinct)")
        grade_of = dict(zip(labels, relevance.grades))
    return [(p, cid) for p, cid in enumerate(ranking.top) if cid in grade_of], grade_of


def dataset_metrics(rankings: Sequence[Ranking], relevances: Sequence[Relevance],
                    labels: str = "correct") -> dict[str, float]:
    """Means over queries of every metric, in the score files' key order, then ``mrr`` (uncapped)."""
    if len(rankings) != len(relevances):
        raise ValueError(f"{len(rankings)} rankings for {len(relevances)} relevance lists")
    if not rankings:
        raise ValueError("no queries to score")
    per_query = [query_metrics(r, rel, labels) for r, rel in zip(rankings, relevances)]
    return {key: float(np.mean([m[key] for m in per_query])) for key in (*SCORE_KEYS, "mrr")}
