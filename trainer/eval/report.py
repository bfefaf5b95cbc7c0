"""Outputs of the evaluate stage: metrics for `dvc metrics diff`, plot data, the leaderboard JSON and
the markdown report, plus the published MMEB numbers they are compared with.

Every function here is pure (results in, JSON-able dicts or text out) and deterministic: no
timestamps, fixed key order, floats rounded to `DIGITS` decimals (scores are percentages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from pipelines import mmeb
from trainer.eval.protocol import DatasetResult, aggregate
from trainer.eval.submission import score_fields

DIGITS = 4
META_LABELS = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval", "grounding": "Grounding"}

# --- published numbers ----------------------------------------------------------------------------
# Precision@1 (%) on the 36 MMEB-V1 datasets, transcribed from the papers' tables:
# paper-v1 (VLM2Vec, arXiv 2410.05160) Table 6 for the baselines and VLM2Vec (LLaVA-1.6, LoRA, 1344²);
# paper-v2 (VLM2Vec-V2, arXiv 2507.04590) Table 5 for the V2-pipeline re-evaluation of the Qwen2-VL
# checkpoints and VLM2Vec-V2.0. Baselines fuse image and text features by element-wise addition and use
# no instructions (paper-v1 §4.1). "UniIR" is the CLIP_SF variant.
PUBLISHED_MODELS = (
    "CLIP", "OpenCLIP", "SigLIP", "BLIP2", "MagicLens", "E5-V", "UniIR",
    "VLM2Vec (LLaVA-1.6)", "VLM2Vec (Qwen2-VL-2B)", "VLM2Vec (Qwen2-VL-7B)", "VLM2Vec-V2.0 (2B)",
)
PUBLISHED_SOURCES = {
    **{m: "paper-v1 Table 6" for m in PUBLISHED_MODELS[:7]},
    "VLM2Vec (LLaVA-1.6)": "paper-v1 Table 6 (LLaVA-1.6, LoRA, 1344x1344)",
    "VLM2Vec (Qwen2-VL-2B)": "paper-v2 Table 5 (V1 checkpoint, V2 evaluation pipeline)",
    "VLM2Vec (Qwen2-VL-7B)": "paper-v2 Table 5 (V1 checkpoint, V2 evaluation pipeline)",
    "VLM2Vec-V2.0 (2B)": "paper-v2 Table 5",
}
PUBLISHED_P1: dict[str, tuple[float, ...]] = {
    "ImageNet-1K": (55.8, 63.5, 45.4, 10.3, 48.0, 9.6, 58.3, 74.5, 77.5, 80.1, 80.8),
    "N24News": (34.7, 38.6, 13.9, 36.0, 33.7, 23.4, 42.5, 80.3, 73.7, 79.7, 72.9),
    "HatefulMemes": (51.1, 51.7, 47.2, 49.6, 49.0, 49.7, 56.4, 67.9, 58.3, 69.7, 56.3),
    "VOC2007": (50.7, 52.4, 64.3, 52.1, 51.6, 49.9, 66.2, 91.5, 74.3, 80.7, 85.0),
    "SUN397": (43.4, 68.8, 39.6, 34.5, 57.0, 33.1, 63.2, 75.8, 73.8, 77.4, 71.0),
    "Place365": (28.5, 37.8, 20.0, 21.5, 31.5, 8.6, 36.5, 44.0, 35.3, 37.4, 35.9),
    "ImageNet-A": (25.5, 14.2, 42.6, 3.2, 8.0, 2.0, 9.8, 43.6, 50.9, 58.1, 47.4),
    "ImageNet-R": (75.6, 83.0, 75.0, 39.7, 70.9, 30.8, 66.2, 79.8, 84.7, 73.9, 89.3),
    "ObjectNet": (43.4, 51.4, 40.3, 20.6, 31.6, 7.5, 32.2, 39.6, 37.1, 40.1, 65.2),
    "Country211": (19.2, 16.8, 14.2, 2.5, 6.2, 3.1, 11.3, 14.7, 21.5, 29.8, 25.2),
    "OK-VQA": (7.5, 11.5, 2.4, 8.7, 12.7, 8.9, 25.4, 69.0, 48.5, 56.8, 51.5),
    "A-OKVQA": (3.8, 3.3, 1.5, 3.2, 2.9, 5.9, 8.8, 54.4, 39.5, 47.3, 43.6),
    "DocVQA": (4.0, 5.3, 4.2, 2.6, 3.0, 1.7, 6.2, 52.0, 82.5, 89.7, 90.1),
    "InfographicsVQA": (4.6, 4.6, 2.7, 2.0, 5.9, 2.3, 4.6, 30.7, 47.7, 60.0, 58.8),
    "ChartQA": (1.4, 1.5, 3.0, 0.5, 0.9, 2.4, 1.6, 34.8, 42.3, 56.9, 47.4),
    "Visual7W": (4.0, 2.6, 1.2, 1.3, 2.5, 5.8, 14.5, 49.8, 51.2, 52.7, 52.9),
    "ScienceQA": (9.4, 10.2, 7.9, 6.8, 5.2, 3.6, 12.8, 42.1, 30.7, 38.5, 38.2),
    "VizWiz": (8.2, 6.6, 2.3, 4.0, 1.7, 2.6, 24.3, 43.0, 38.6, 39.9, 43.3),
    "GQA": (41.3, 52.5, 57.5, 9.7, 43.5, 7.8, 48.8, 61.2, 48.3, 55.1, 64.9),
    "TextVQA": (7.0, 10.9, 1.0, 3.3, 4.6, 8.2, 15.1, 62.0, 63.3, 71.6, 72.2),
    "VisDial": (30.7, 25.4, 21.5, 18.0, 24.8, 9.2, 42.2, 80.9, 74.3, 81.9, 82.7),
    "CIRR": (12.6, 15.4, 15.1, 9.8, 39.1, 6.1, 51.3, 49.9, 46.8, 51.1, 57.5),
    "VisualNews_t2i": (78.9, 74.0, 51.0, 48.1, 50.7, 13.5, 74.3, 75.4, 73.1, 80.5, 74.5),
    "VisualNews_i2t": (79.6, 78.0, 52.4, 13.5, 21.1, 8.1, 76.8, 80.0, 73.7, 81.2, 78.2),
    "MSCOCO_t2i": (59.5, 63.6, 58.3, 53.7, 54.1, 20.7, 68.5, 75.7, 73.4, 77.2, 75.3),
    "MSCOCO_i2t": (57.7, 62.1, 55.0, 20.3, 40.0, 14.0, 72.1, 73.1, 68.5, 73.9, 71.4),
    "NIGHTS": (60.4, 66.1, 62.9, 56.5, 58.1, 4.2, 66.2, 65.5, 66.3, 67.6, 68.6),
    "WebQA": (67.5, 62.1, 58.1, 55.4, 43.0, 17.7, 89.6, 87.6, 85.9, 88.3, 90.6),
    "FashionIQ": (11.4, 13.8, 20.1, 9.3, 11.2, 2.8, 40.2, 16.2, 14.0, 17.1, 19.5),
    "Wiki-SS-NQ": (55.0, 44.6, 55.1, 28.7, 18.7, 8.6, 12.2, 60.2, 54.2, 62.3, 66.9),
    "OVEN": (41.1, 45.0, 56.0, 39.5, 1.6, 5.9, 69.4, 56.5, 68.3, 66.5, 64.3),
    "EDIS": (81.0, 77.5, 23.6, 54.4, 62.6, 26.8, 79.2, 87.8, 81.2, 85.7, 84.1),
    "MSCOCO": (33.8, 34.5, 46.4, 28.9, 22.1, 10.8, 46.6, 80.6, 66.5, 75.7, 67.1),
    "RefCOCO": (56.9, 54.2, 70.8, 47.4, 22.8, 11.9, 67.8, 88.7, 80.9, 87.6, 87.1),
    "RefCOCO-Matching": (61.3, 68.3, 50.8, 59.5, 35.6, 38.9, 62.9, 84.0, 75.7, 84.6, 85.8),
    "Visual7W-Pointing": (55.1, 56.3, 70.1, 52.0, 23.4, 14.3, 71.3, 90.9, 68.3, 81.0, 69.2),
}
# The "All 36" row as printed in the papers (the means of the columns above, except as noted).
PUBLISHED_OVERALL = dict(zip(PUBLISHED_MODELS, (37.8, 39.7, 34.8, 25.2, 27.8, 13.3, 44.7, 62.9, 59.7, 65.5, 64.9)))
PUBLISHED_NOTES = (
    "UniIR: the per-dataset column averages to 44.3 (grounding 62.2, the BLIP_FF variant's value) while the "
    "paper prints 44.7 overall and grounding 65.3 for CLIP_SF; the papers' tables disagree.",
    "SigLIP: paper-v1 Table 2 prints retrieval 31.6, but its per-dataset numbers average to 44.1 "
    "(the overall 34.8 agrees with the per-dataset numbers).",
    "Means of published columns over a subset of datasets are computed here (DERIVED), not published.",
)
# Published columns shown next to ours in reports/eval.md.
REPORT_MODELS = ("CLIP", "OpenCLIP", "SigLIP", "UniIR", "VLM2Vec (LLaVA-1.6)", "VLM2Vec (Qwen2-VL-2B)",
                 "VLM2Vec (Qwen2-VL-7B)")


def published(dataset: str) -> dict[str, float] | None:
    """Published Precision@1 of each PUBLISHED_MODELS entry on a real MMEB dataset, else None."""
    row = PUBLISHED_P1.get(dataset)
    return None if row is None else dict(zip(PUBLISHED_MODELS, row))


# --- helpers ---------------------------------------------------------------------------------------
def _r(x: float) -> float:
    return round(float(x), DIGITS)


def _rounded(tree):
    if isinstance(tree, dict):
        return {k: _rounded(v) for k, v in tree.items()}
    return _r(tree)


def _base_of(evals: Mapping[str, Sequence[DatasetResult]], base: str) -> str | None:
    return base if base in evals and len(evals) > 1 else None


# --- metrics/eval.json -------------------------------------------------------------------------------
def metrics_document(evals: Mapping[str, Sequence[DatasetResult]], base: str = "base") -> dict:
    """{model: {overall, IND, OOD, meta.<task>, dataset.<name>, hit_at_5, mrr, ndcg_at_5, encodings.*,
    delta_vs_base.*}}: nested dicts that dvc flattens to `embedder.meta.retrieval` etc."""
    doc = {}
    base_name = _base_of(evals, base)
    base_agg = aggregate(evals[base_name]) if base_name else None
    for model, results in evals.items():
        agg = aggregate(results)
        entry = {k: v for k, v in agg.items() if k != "meta"}
        entry["meta"] = agg["meta"]
        entry["dataset"] = {r.dataset: r.precision_at_1 for r in results}
        for metric in ("hit_at_5", "mrr", "ndcg_at_5"):
            entry[metric] = aggregate(results, metric)["overall"]
        entry = _rounded(entry)
        naive = sum(r.encodings_naive for r in results)
        dedup = sum(r.encodings_dedup for r in results)
        entry["encodings"] = {
            "naive": naive,
            "deduplicated": dedup,
            "distinct_queries": sum(r.distinct_queries for r in results),
            "distinct_candidates": sum(r.distinct_candidates for r in results),
            "saving_factor": round(naive / dedup, 2) if dedup else 0.0,
        }
        entry["rows"] = _rows(results)
        if base_agg is not None and model != base_name:
            entry["delta_vs_base"] = _rounded(_delta(agg, base_agg))
        doc[model] = entry
    return doc


def _rows(results: Sequence[DatasetResult]) -> dict:
    """Query rows scored, and rejected by normalize (of datasets whose source count is known)."""
    return {"scored": sum(r.n_queries for r in results),
            "rejected": sum(r.source_rows - r.n_queries for r in results if r.source_rows is not None)}


def _group_sizes(results: Sequence[DatasetResult]) -> dict[str, int]:
    """How many datasets each leaderboard average is over: a mean over a subset is no MMEB score."""
    sizes = {"Overall": len(results)}
    for key in mmeb.DISTRIBUTIONS:
        sizes[key] = sum(r.distribution == key for r in results)
    for task, label in META_LABELS.items():
        sizes[label] = sum(r.meta_task == task for r in results)
    return {k: v for k, v in sizes.items() if v}


def _delta(agg: dict, base_agg: dict) -> dict:
    out = {k: agg[k] - base_agg[k] for k in ("overall", "IND", "OOD") if k in agg and k in base_agg}
    out["meta"] = {t: agg["meta"][t] - base_agg["meta"][t] for t in agg["meta"] if t in base_agg["meta"]}
    return out


# --- plots --------------------------------------------------------------------------------------------
def plot_rows(evals: Mapping[str, Sequence[DatasetResult]]) -> dict[str, list[dict]]:
    """{model: [{dataset, model, meta_task, distribution, precision_at_1}]}: one JSON file per model,
    so that `dvc plots` draws one plot per model with a bar per dataset (grouped by revision)."""
    return {
        model: [{"dataset": r.dataset, "model": model, "meta_task": r.meta_task,
                 "distribution": r.distribution, "precision_at_1": _r(r.precision_at_1)} for r in results]
        for model, results in evals.items()
    }


# --- reports/leaderboard.json ---------------------------------------------------------------------------
def leaderboard(evals: Mapping[str, Sequence[DatasetResult]], metadata: Mapping[str, dict]) -> dict:
    """Per model, the MMEB leaderboard layout: `scores` = dataset -> Precision@1 (%) plus the four
    meta-task averages, IND, OOD and Overall; `num_datasets` = how many datasets each average is over
    (36 / 20 / 16 for the full MMEB); `metrics.image` = the V2 score-file fields per dataset (fractions:
    hit@1, hit@5, ndcg_linear@5, mrr; num_pred = queries scored, num_data = the dataset's source rows,
    more when normalize rejected some)."""
    models = {}
    for model, results in evals.items():
        agg = aggregate(results)
        scores = {r.dataset: _r(r.precision_at_1) for r in results}
        for task, label in META_LABELS.items():
            if task in agg["meta"]:
                scores[label] = _r(agg["meta"][task])
        for key in ("IND", "OOD"):
            if key in agg:
                scores[key] = _r(agg[key])
        scores["Overall"] = _r(agg["overall"])
        per_dataset = {r.dataset: score_fields(r) for r in results}
        models[model] = {"metadata": dict(metadata.get(model, {}), model_name=model),
                         "scores": scores, "num_datasets": _group_sizes(results), "metrics": {"image": per_dataset}}
    return {"benchmark": "MMEB-V1 (image tasks)", "metric": "Precision@1 (%)", "models": models}


# --- reports/eval.md -----------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows]


def markdown(evals: Mapping[str, Sequence[DatasetResult]], metadata: Mapping[str, dict], base: str = "base",
             recipe: Mapping | None = None) -> str:
    """The human report: the recipe (`pipelines.profiles.differences`, when given), summary,
    per-dataset table, efficiency and the published numbers."""
    view = _View.of(evals, base)
    lines = (_introduction(view, metadata) + _recipe(recipe) + _summary(view) + _per_dataset(view)
             + _secondary_metrics(view)
             + _encoding_work(view) + _published_comparison(view) + _sources_and_notes())
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _View:
    """What the report's sections are drawn from: the models in order, the base model the others are
    compared with (None without one), each model's results by dataset, the datasets in order of first
    appearance and, per dataset, the first model's result (its counts are the same for every model)."""

    evals: Mapping[str, Sequence[DatasetResult]]
    models: list[str]
    base_name: str | None
    others: list[str]
    by_model: dict[str, dict[str, DatasetResult]]
    datasets: list[str]
    first: dict[str, DatasetResult]
    aggs: dict[str, dict]

    @classmethod
    def of(cls, evals: Mapping[str, Sequence[DatasetResult]], base: str) -> _View:
        models = list(evals)
        base_name = _base_of(evals, base)
        by_model = {m: {r.dataset: r for r in evals[m]} for m in models}
        datasets = list(dict.fromkeys(r.dataset for m in models for r in evals[m]))
        first = {d: next(by_model[m][d] for m in models if d in by_model[m]) for d in datasets}
        return cls(evals, models, base_name, [m for m in models if m != base_name], by_model, datasets, first,
                   {m: aggregate(evals[m]) for m in models})

    @property
    def delta_header(self) -> list[str]:
        return [f"Δ {m} vs {self.base_name}" for m in self.others] if self.base_name else []

    def delta_cols(self, get) -> list[str]:
        """Each other model's value minus the base model's (`get(model)`; – where either is missing)."""
        if self.base_name is None:
            return []
        b = get(self.base_name)
        return [_signed(None if (b is None or get(m) is None) else get(m) - b) for m in self.others]

    def precision(self, model: str, dataset: str) -> float | None:
        return self.by_model[model][dataset].precision_at_1 if dataset in self.by_model[model] else None


def _introduction(view: _View, metadata: Mapping[str, dict]) -> list[str]:
    return [
        "# MMEB evaluation", "",
        "Precision@1 in percent: each query is ranked against its own candidate list (gold first) by the cosine "
        "of L2-normalised embeddings; a hit when the first maximum is the gold (ties with the gold count as "
        "hits, as in the official code). Meta-task, IND, OOD and overall scores are unweighted means over "
        "datasets, as in the MMEB paper.", "",
        "Models: " + ", ".join(_model_label(m, metadata.get(m, {})) for m in view.models) + ".",
    ] + _rendering(view.models, metadata)


def _rendering(models: Sequence[str], metadata: Mapping[str, dict]) -> list[str]:
    """The input rendering each model was scored with: one line when it is the same for all, else a
    table (eval.rendering_from: model scores each with its own)."""
    rendering = {m: metadata.get(m, {}).get("rendering") for m in models}
    if not all(rendering.values()):
        return []
    keys = list(next(iter(rendering.values())))
    if all(r == rendering[models[0]] for r in rendering.values()):
        return ["", "Input rendering: " + ", ".join(f"`{k}` {rendering[models[0]][k]}" for k in keys) + "."]
    return ["", "Input rendering per model (`eval.rendering_from: model`):", ""] + _table(
        ["setting"] + list(models), [[f"`{k}`"] + [f"{rendering[m].get(k)}" for m in models] for k in keys])


def _recipe(recipe: Mapping | None) -> list[str]:
    """The profile the params follow and each setting that differs from it."""
    if not recipe:
        return []
    lines = ["", "## Recipe", "",
             f"Profile `{recipe['profile']}` (version {recipe['version']}: {recipe['source']}; "
             "`python -m pipelines.profiles apply <profile>` switches)."]
    if recipe["differs"]:
        lines += ["", f"{len(recipe['differs'])} setting(s) differ from it:", ""]
        lines += _table(["setting", "this run", "profile"],
                        [[f"`{k}`", f"`{have}`", f"`{want}`"] for k, have, want in recipe["differs"]])
    else:
        lines += ["", "Every setting it covers has its value."]
    if recipe["notes"]:
        lines += ["", "What params cannot set, and the profile's recipe does:", ""]
        lines += [f"- {note}" for note in recipe["notes"]]
    return lines


def _model_label(model: str, metadata: Mapping) -> str:
    return f"`{model}` ({metadata.get('path', '?')}, fingerprint `{str(metadata.get('fingerprint', '?'))[:12]}`)"


def _summary(view: _View) -> list[str]:
    """The groups that hold a dataset (overall, IND/OOD, meta-tasks), and the rows normalize rejected."""
    models, aggs = view.models, view.aggs
    getters = {"Overall": lambda a: a["overall"], **{k: (lambda a, k=k: a.get(k)) for k in mmeb.DISTRIBUTIONS},
               **{label: (lambda a, t=task: a["meta"].get(t)) for task, label in META_LABELS.items()}}
    rows = []
    for label, n in _group_sizes([view.first[d] for d in view.datasets]).items():  # groups with a dataset, in order
        vals = {m: getters[label](aggs[m]) for m in models}
        rows.append([f"{label} ({n})"] + [_fmt(vals[m]) for m in models] + view.delta_cols(lambda m: vals[m]))
    lines = ["", "## Summary", ""]
    lines += _table(["group (#datasets)"] + models + view.delta_header, rows,
                    "l" + "r" * (len(models) + len(view.delta_header)))
    rejected = _rows([view.first[d] for d in view.datasets])["rejected"]
    if rejected:
        lines += ["", f"{rejected} eval rows were rejected by the normalize stage (reasons in `data/rejects/`, "
                      "counts in `metrics/etl.json`): each dataset's Precision@1 is over the rows it kept "
                      "(\"#queries\": kept of source rows)."]
    return lines


def _per_dataset(view: _View) -> list[str]:
    models = view.models
    rows = []
    for d in view.datasets:
        r0 = view.first[d]
        cands = str(r0.candidates_min) if r0.candidates_min == r0.candidates_max else \
            f"{r0.candidates_min}–{r0.candidates_max}"
        vals = {m: view.precision(m, d) for m in models}
        queries = str(r0.n_queries) if not r0.source_rows or r0.source_rows == r0.n_queries else \
            f"{r0.n_queries} of {r0.source_rows}"
        rows.append([d, r0.meta_task, r0.distribution] + [_fmt(vals[m]) for m in models]
                    + view.delta_cols(lambda m: vals[m]) + [queries, cands])
    return ["", "## Per dataset", ""] + _table(
        ["dataset", "meta-task", "IND/OOD"] + models + view.delta_header + ["#queries", "#candidates"],
        rows, "lll" + "r" * (len(models) + len(view.delta_header) + 2))


def _secondary_metrics(view: _View) -> list[str]:
    rows = [[m] + [_fmt(aggregate(view.evals[m], k)["overall"]) for k in ("precision_at_1", "hit_at_5", "mrr",
                                                                           "ndcg_at_5")]
            for m in view.models]
    return ["", "## Secondary metrics (MMEB-V2 style, mean over datasets)", ""] + _table(
        ["model", "hit@1", "hit@5", "MRR", "NDCG@5"], rows, "lrrrr")


def _encoding_work(view: _View) -> list[str]:
    """Per dataset, the naive encodings against the distinct items actually encoded."""
    datasets, first = view.datasets, view.first
    rows = []
    for d in datasets:
        r0 = first[d]
        rows.append([d, str(r0.encodings_naive), str(r0.distinct_queries), str(r0.distinct_candidates),
                     str(r0.encodings_dedup), f"{r0.encodings_naive / r0.encodings_dedup:.1f}x"])
    naive = sum(first[d].encodings_naive for d in datasets)
    dedup = sum(first[d].encodings_dedup for d in datasets)
    rows.append(["**total**", str(naive), str(sum(first[d].distinct_queries for d in datasets)),
                 str(sum(first[d].distinct_candidates for d in datasets)), str(dedup), f"{naive / dedup:.1f}x"])
    return ["", "## Encoding work", "",
            "Each distinct (side text, image) item of a dataset is encoded once, whether it is a query, a "
            "candidate or both (the official code deduplicates queries and candidates apart); the naive count "
            "encodes every row's query and all its candidates. A warm embedding cache (`.cache/embeddings/`) skips even those.", ""] + _table(
        ["dataset", "naive", "distinct queries", "distinct candidates", "encoded", "saving"], rows, "lrrrrr")


def _published_comparison(view: _View) -> list[str]:
    """Ours next to the published columns on the real MMEB datasets evaluated, with means over them
    (all, IND, OOD); without one, the published overall numbers for scale."""
    lines = ["", "## Published numbers", ""]
    real = [d for d in view.datasets if d in PUBLISHED_P1]
    if not real:
        return lines + [
            "No real MMEB dataset was evaluated (only synthetic or other datasets), so there is nothing "
            "to compare per dataset. For scale, the published overall Precision@1 on the 36 MMEB "
            "datasets: " + ", ".join(f"{m} {PUBLISHED_OVERALL[m]:.1f}" for m in REPORT_MODELS) + "."]
    models, by_model = view.models, view.by_model
    rows = []
    for d in real:
        pub = published(d)
        rows.append([d] + [_fmt(view.precision(m, d)) for m in models] + [_fmt(pub[p]) for p in REPORT_MODELS])
    sub = [view.first[d] for d in real]
    for label, pick in [("mean (these datasets)", lambda r: True)] + [
            (f"mean {k}", lambda r, k=k: r.distribution == k) for k in mmeb.DISTRIBUTIONS]:
        chosen = [r.dataset for r in sub if pick(r)]
        if not chosen:
            continue
        ours = [_fmt(_mean([by_model[m][d].precision_at_1 for d in chosen if d in by_model[m]])) for m in models]
        theirs = [_fmt(_mean([published(d)[p] for d in chosen])) for p in REPORT_MODELS]
        rows.append([f"**{label}**"] + ours + theirs)
    lines += _table(["dataset"] + [f"ours: {m}" for m in models] + list(REPORT_MODELS), rows,
                    "l" + "r" * (len(models) + len(REPORT_MODELS)))
    if len(real) == len(PUBLISHED_P1):
        lines += ["", "Published overall as printed: " +
                  ", ".join(f"{m} {PUBLISHED_OVERALL[m]:.1f}" for m in REPORT_MODELS) + "."]
    return lines


def _sources_and_notes() -> list[str]:
    return ["", "Sources: " + "; ".join(f"{m}: {PUBLISHED_SOURCES[m]}" for m in REPORT_MODELS) +
            " (transcribed in `trainer/eval/report.py`).", "", "Notes:", ""] + [
        f"- {n}" for n in PUBLISHED_NOTES]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
