"""The MMEB leaderboard's submission file of one model, as VLM2Vec's `experiments/report_score_v2.py`
writes it (TIGER-AI-Lab/VLM2Vec 6e1e1d4):

    {"metadata": {"model_name", "model_backbone", "model_size", "embedding_dimension",
                  "max_length_tokens", "model_release_date", "data_source", "url",
                  "report_generated_date"},
     "metrics": {"image": {dataset: score dict, or "FILE_N/A" when not scored},
                 "video": {dataset: "DIR_N/A"}, "visdoc": {dataset: "DIR_N/A"}}}

Datasets are MMEB-V2's, by modality, in its order (the image list is MMEB-V1's 36); a score dict
holds the fields of V2's `<dataset>_score.json` that this project computes (hit@1, hit@5,
ndcg_linear@5, mrr as fractions, num_pred, num_data); the leaderboard reads hit@1 for images.
Datasets outside the lists (the synthetic miniature's) are not part of the file. Unlike the script,
`report_generated_date`, `model_release_date` and `url` are null (the file is a deterministic stage
output): fill them in when submitting. Two visdoc names carry the script's "-fixed" suffix.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from trainer.eval.protocol import DatasetResult

MODALITY_DATASETS = {
    "image": [
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
        "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
        "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
        "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO",
        "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"],
    "video": [
        "K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast", "MVBench", "Video-MME", "NExTQA", "EgoSchema",
        "ActivityNetQA", "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2", "QVHighlight", "Charades-STA",
        "MomentSeeker"],
    "visdoc": [
        "ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
        "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe_syntheticDocQA_energy",
        "ViDoRe_syntheticDocQA_government_reports", "ViDoRe_syntheticDocQA_healthcare_industry",
        "ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_biomedical_lectures_v2_multilingual",
        "ViDoRe_economics_reports_v2_multilingual", "ViDoRe_esg_reports_v2_multilingual", "VisRAG_ArxivQA",
        "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA",
        "ViDoSeek-page", "ViDoSeek-doc", "MMLongBench-page", "MMLongBench-doc"],
}
FIXED = ("MMLongBench-page", "ViDoSeek-page")  # written as "<name>-fixed", as the script does
NOT_SCORED, NO_MODALITY = "FILE_N/A", "DIR_N/A"  # the script's markers


def score_fields(r: DatasetResult) -> dict[str, Any]:
    """One dataset's fields of V2's score file: fractions, the queries scored and the source rows."""
    return {"hit@1": round(r.precision_at_1 / 100, 6), "hit@5": round(r.hit_at_5 / 100, 6),
            "ndcg_linear@5": round(r.ndcg_at_5 / 100, 6), "mrr": round(r.mrr / 100, 6),
            "num_pred": r.n_queries, "num_data": r.n_queries if r.source_rows is None else r.source_rows}


def model_size(parameters: int | None) -> str | None:
    """'2.2B parameters', '688K parameters' (the script's wording)."""
    if not parameters:
        return None
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if parameters >= scale:
            return f"{parameters / scale:.1f}".removesuffix(".0") + f"{unit} parameters"
    return f"{parameters} parameters"


def model_facts(model) -> dict[str, Any]:
    """What the metadata block says about a loaded model (`trainer.embed.EmbeddingModel`); None for
    what an encoder does not tell."""
    backbone = getattr(model, "backbone", None)
    info = dict(getattr(backbone, "info", None) or {})
    try:
        dim = int(model.dim)
    except (AttributeError, TypeError, ValueError):
        dim = None
    return {"model_backbone": info.get("name"), "model_size": model_size(info.get("parameters")),
            "embedding_dimension": dim,
            "max_length_tokens": (getattr(model, "collation", None) or {}).get("max_text_tokens")}


def submission(model: str, results: Sequence[DatasetResult], facts: Mapping[str, Any]) -> dict:
    """The submission document of `model` (module docstring)."""
    by_name = {r.dataset: r for r in results}
    metrics = {}
    for modality, datasets in MODALITY_DATASETS.items():
        scores = {}
        for name in datasets:
            key = f"{name}-fixed" if name in FIXED else name
            if modality != "image":
                scores[key] = NO_MODALITY
            else:
                scores[key] = score_fields(by_name[name]) if name in by_name else NOT_SCORED
        metrics[modality] = scores
    metadata = {"model_name": model, "model_backbone": facts.get("model_backbone"),
                "model_size": facts.get("model_size"), "embedding_dimension": facts.get("embedding_dimension"),
                "max_length_tokens": facts.get("max_length_tokens"), "model_release_date": None,
                "data_source": "Self-Reported", "url": None, "report_generated_date": None}
    return {"metadata": metadata, "metrics": metrics}
