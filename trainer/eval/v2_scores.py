"""MMEB-V2's score files, aggregation and leaderboard JSON, as VLM2Vec's ``eval.py`` and
``experiments/report_score_v2.py`` write them.

    entry = score_file(metrics, num_pred, num_data)  # one task's `<task>_score.json` content
    summary = aggregate({task: entry, ...})        # per meta-task, per modality, overall
    board = leaderboard(metadata, {task: entry}, generated="2026-01-01T00:00:00")

Each task contributes its headline metric (``hit@1`` for image and video, ``ndcg_linear@5`` for
visual documents, `pipelines.mmeb_v2`). A meta-task's, a modality's and the overall score are plain
means over the tasks scored (the overall over all 78 when complete, not a mean of the modality
means). A partial run averages fewer tasks; every group says how many it holds and which are
missing, as the official report prints "from N datasets".
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pipelines import mmeb_v2
from trainer.eval.metrics import SCORE_KEYS

MISSING = "FILE_N/A"  # what report_score_v2.py writes for a task without a score file


def score_file(metrics: Mapping[str, float], num_pred: int, num_data: int) -> dict[str, float | int]:
    """One task's score dict: the per-k metrics in the score files' order, ``num_pred`` (queries
    scored) and ``num_data`` (queries expected, the registry's count)."""
    missing = [k for k in SCORE_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack {missing[:4]}")
    entry: dict[str, float | int] = {k: float(metrics[k]) for k in SCORE_KEYS}
    entry["num_pred"] = int(num_pred)
    entry["num_data"] = int(num_data)
    return entry


def _group(names: list[str], scores: Mapping[str, Mapping[str, Any]],
           registry: Mapping[str, mmeb_v2.V2Task]) -> dict[str, Any]:
    have = [n for n in names if n in scores]
    values = [float(scores[n][registry[n].headline_metric]) for n in have]
    return {"score": float(np.mean(values)) if values else None, "tasks": len(have), "expected": len(names),
            "missing": [n for n in names if n not in scores]}


def aggregate(scores: Mapping[str, Mapping[str, Any]],
              registry: Mapping[str, mmeb_v2.V2Task] | None = None) -> dict[str, Any]:
    """``{"overall": group, "modality": {m: group}, "meta": {meta: group}, "task": {name: headline}}``
    from score dicts by task name; group = score (None when empty), tasks, expected, missing.
    ``registry`` defaults to the 78 tasks (`mmeb_v2.SYNTHETIC` aggregates the synthetic stand-ins)."""
    registry = mmeb_v2.TASKS if registry is None else registry
    unknown = [n for n in scores if n not in registry]
    if unknown:
        raise KeyError(f"not MMEB-V2 tasks: {unknown}")

    def names(modality=None, meta=None) -> list[str]:
        return [t.name for t in registry.values()
                if (modality is None or t.modality == modality) and (meta is None or t.meta_task == meta)]

    return {
        "overall": _group(names(), scores, registry),
        "modality": {m: _group(names(m), scores, registry) for m in mmeb_v2.MODALITIES},
        "meta": {meta: _group(names(meta=meta), scores, registry)
                 for m in mmeb_v2.MODALITIES for meta in mmeb_v2.META_TASKS[m]},
        "task": {n: float(scores[n][registry[n].headline_metric]) for n in registry if n in scores},
    }


def leaderboard(metadata: Mapping[str, Any], scores: Mapping[str, Mapping[str, Any]], generated: str) -> dict:
    """The MMEB-V2 leaderboard JSON of one model as ``report_score_v2.py`` writes it: metadata plus
    ``report_generated_date``, and per modality every task's score dict (``FILE_N/A`` when absent),
    the page-fixed visdoc sets under their ``-fixed`` keys. ``generated`` is passed in (an ISO time)
    so the output is deterministic."""
    return {
        "metadata": {**metadata, "report_generated_date": generated},
        "metrics": {m: {mmeb_v2.leaderboard_key(t.name): dict(scores[t.name]) if t.name in scores else MISSING
                        for t in mmeb_v2.tasks(m)} for m in mmeb_v2.MODALITIES},
    }
