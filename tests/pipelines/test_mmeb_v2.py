"""Tests for pipelines/mmeb_v2.py: the 78-task MMEB-V2 registry and its published scores."""

from __future__ import annotations

import pytest

from pipelines import mmeb, mmeb_v2, mmeb_v2_published

META_SIZES = {
    "I-CLS": 10, "I-QA": 10, "I-RET": 12, "I-GD": 4,
    "V-CLS": 5, "V-QA": 5, "V-RET": 5, "V-MRET": 3,
    "VDRv1": 10, "VDRv2": 4, "VR": 6, "OOD": 4,
}


def test_counts_per_modality_and_meta_task():
    assert len(mmeb_v2.TASKS) == 78
    assert [len(mmeb_v2.tasks(m)) for m in mmeb_v2.MODALITIES] == [36, 18, 24]
    sizes = {meta: len(mmeb_v2.tasks(meta_task=meta)) for metas in mmeb_v2.META_TASKS.values() for meta in metas}
    assert sizes == META_SIZES
    for t in mmeb_v2.TASKS.values():
        assert t.meta_task in mmeb_v2.META_TASKS[t.modality]
        assert t.eval_type in mmeb_v2.EVAL_TYPES


def test_image_tasks_are_v1_eval_with_its_meta_tasks():
    v1_meta = {"classification": "I-CLS", "vqa": "I-QA", "retrieval": "I-RET", "grounding": "I-GD"}
    image = mmeb_v2.tasks("image")
    assert {t.name for t in image} == set(mmeb.MMEB_EVAL)
    for t in image:
        assert t.meta_task == v1_meta[mmeb.MMEB_EVAL[t.name].meta_task]
        assert (t.eval_type, t.num_data, t.hub_repo, t.hub_config, t.hub_split) == (
            "local", 1000, "ziyjiang/MMEB_Test_Instruct", t.name, "test")


def test_known_facts_of_single_tasks():
    k700 = mmeb_v2.lookup("K700")
    assert (k700.loader_name, k700.eval_type, k700.root) == ("Kinetics-700", "global", "video-tasks/frames/video_cls/K700")
    assert mmeb_v2.lookup("SmthSmthV2").eval_type == "local"
    assert mmeb_v2.lookup("MomentSeeker").num_data == 1602  # the deduplicated set, not 1,800
    assert mmeb_v2.lookup("Video-MME").num_data == 2700  # questions, not the paper's 900 videos
    yc = mmeb_v2.lookup("YouCook2")
    assert (yc.hub_repo, yc.hub_split) == ("lmms-lab/YouCook2", "val")
    assert mmeb_v2.lookup("MVBench").hub_split == "train"
    assert mmeb_v2.lookup("NExTQA").hub_config == "MC"
    assert mmeb_v2.lookup("MSR-VTT").hub_config == "test_1k"
    assert all(t.hub_split == "train" for t in mmeb_v2.tasks(meta_task="VR"))
    assert all(t.eval_type == "global" for t in mmeb_v2.tasks("visdoc"))
    assert sum(t.num_data for t in mmeb_v2.tasks("visdoc")) == 12_590  # sum of the 24 score files' num_data
    assert sum(t.num_data for t in mmeb_v2.tasks("video")) == 34_940


def test_headline_metrics():
    assert mmeb_v2.lookup("ImageNet-1K").headline_metric == "hit@1"
    assert mmeb_v2.lookup("MSR-VTT").headline_metric == "hit@1"
    assert mmeb_v2.lookup("ViDoRe_arxivqa").headline_metric == "ndcg_linear@5"


def test_page_fixed_sets_use_the_fixed_data_and_scores():
    for name in ("ViDoSeek-page", "MMLongBench-page"):
        t = mmeb_v2.lookup(name)
        assert t.hub_repo.endswith("-page-fixed")
        assert t.score_version == mmeb_v2.PAGE_FIXED_SCORES
        assert mmeb_v2.leaderboard_key(name) == f"{name}-fixed"
        assert mmeb_v2.lookup(f"{name}-fixed") is t
    # the fix moved VLM2Vec-V2.0's ViDoSeek-page NDCG@5 from about 0.21 to about 0.80
    assert mmeb_v2.lookup("ViDoSeek-page").published["VLM2Vec-V2.0"] == pytest.approx(0.802972, abs=1e-6)
    old = mmeb_v2_published.HEADLINE["v2.0.1"]["ViDoSeek-page"][0]
    assert old == pytest.approx(0.20885, abs=1e-5)


def test_published_scores_cover_every_task_and_give_the_papers_averages():
    for t in mmeb_v2.TASKS.values():
        scores = t.published
        assert set(scores) == set(mmeb_v2_published.MODELS)
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert set(mmeb_v2_published.HEADLINE["v2.0.1"]) == set(mmeb_v2.TASKS)

    def mean(tasks):
        return 100 * sum(mmeb_v2_published.HEADLINE["v2.0.1"][t.name][0] for t in tasks) / len(tasks)

    # VLM2Vec-V2.0 per modality in v2.0.1 (the paper: image 64.9, video 34.6; visdoc 64.8 here,
    # the paper's 65.4 is the v2.0.0 files' mean)
    assert mean(mmeb_v2.tasks("image")) == pytest.approx(64.9, abs=0.05)
    assert mean(mmeb_v2.tasks("video")) == pytest.approx(34.6, abs=0.1)
    assert mean(mmeb_v2.tasks("visdoc")) == pytest.approx(64.76, abs=0.01)


def test_lookup_and_tasks_refuse_unknown_names():
    with pytest.raises(KeyError, match="unknown MMEB-V2 task"):
        mmeb_v2.lookup("Kinetics-700")
    with pytest.raises(KeyError, match="unknown modality"):
        mmeb_v2.tasks("audio")
