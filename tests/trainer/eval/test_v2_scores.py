"""trainer.eval.v2_scores: MMEB-V2 score files, aggregation and the leaderboard JSON."""

from __future__ import annotations

import json

import pytest

from pipelines import mmeb_v2
from trainer.eval.metrics import SCORE_KEYS
from trainer.eval.v2_scores import aggregate, leaderboard, score_file


def entry(headline: float, num: int = 10) -> dict:
    return score_file({k: headline for k in SCORE_KEYS} | {"mrr": headline}, num, num)


def test_score_file_has_the_official_keys_in_order():
    e = entry(0.5, 7)
    assert list(e) == [*SCORE_KEYS, "num_pred", "num_data"]  # the uncapped mrr stays out of the file
    assert (e["num_pred"], e["num_data"]) == (7, 7)
    with pytest.raises(ValueError, match="metrics lack"):
        score_file({"hit@1": 1.0}, 1, 1)


def test_aggregate_uses_each_modalitys_headline_metric_and_plain_means():
    scores = {t.name: entry(1.0 if t.modality == "image" else 0.5) for t in mmeb_v2.TASKS.values()}
    visdoc = dict(scores["ViDoRe_arxivqa"])
    visdoc["hit@1"], visdoc["ndcg_linear@5"] = 0.0, 0.25  # the headline is NDCG@5, not hit@1
    scores["ViDoRe_arxivqa"] = visdoc
    out = aggregate(scores)
    assert out["task"]["ViDoRe_arxivqa"] == 0.25
    assert out["modality"]["image"]["score"] == 1.0
    assert out["modality"]["visdoc"]["score"] == pytest.approx((23 * 0.5 + 0.25) / 24)
    assert out["meta"]["VDRv1"]["score"] == pytest.approx((9 * 0.5 + 0.25) / 10)
    # overall: the mean over the 78 tasks, not over the three modality means
    assert out["overall"]["score"] == pytest.approx((36 * 1.0 + 18 * 0.5 + 23 * 0.5 + 0.25) / 78)
    assert out["overall"]["tasks"] == 78 and out["overall"]["missing"] == []


def test_aggregate_reports_a_partial_run():
    out = aggregate({"K700": entry(0.4), "MSVD": entry(0.6)})
    assert out["modality"]["video"] == {"score": 0.5, "tasks": 2, "expected": 18,
                                        "missing": [t.name for t in mmeb_v2.tasks("video") if t.name not in ("K700", "MSVD")]}
    assert out["modality"]["image"]["score"] is None and out["overall"]["tasks"] == 2
    assert out["meta"]["V-CLS"]["tasks"] == 1
    with pytest.raises(KeyError, match="not MMEB-V2 tasks"):
        aggregate({"MomentSeeker_1k8": entry(0.1)})


def test_leaderboard_json_in_report_score_v2s_layout():
    board = leaderboard({"model_name": "m"}, {"ImageNet-1K": entry(0.8), "ViDoSeek-page": entry(0.7)},
                        generated="2026-12-07T00:00:00")
    assert board["metadata"] == {"model_name": "m", "report_generated_date": "2026-12-07T00:00:00"}
    assert list(board["metrics"]) == ["image", "video", "visdoc"]
    assert board["metrics"]["image"]["ImageNet-1K"]["hit@1"] == 0.8
    assert board["metrics"]["image"]["N24News"] == "FILE_N/A"
    assert board["metrics"]["visdoc"]["ViDoSeek-page-fixed"]["num_data"] == 10
    assert "ViDoSeek-page" not in board["metrics"]["visdoc"]
    assert [len(board["metrics"][m]) for m in ("image", "video", "visdoc")] == [36, 18, 24]
    json.dumps(board)


def test_aggregating_the_published_v2_0_1_scores_gives_vlm2vec_v2s_averages():
    from pipelines import mmeb_v2_published

    scores = {t.name: {t.headline_metric: mmeb_v2_published.HEADLINE["v2.0.1"][t.name][0]}
              for t in mmeb_v2.TASKS.values()}
    out = aggregate(scores)
    assert 100 * out["overall"]["score"] == pytest.approx(57.89, abs=0.005)  # paper (v2.0.0 files): 58.0
    assert 100 * out["meta"]["I-CLS"]["score"] == pytest.approx(62.9, abs=0.05)
    assert 100 * out["meta"]["VR"]["score"] == pytest.approx(79.3, abs=0.05)
