"""benchmarks/eval_v2.py: the pipeline's V2 path and VLM2Vec's per-dataset path score alike, the
pipeline encodes no more, and the counts add up."""

from __future__ import annotations

from tests.support.scripts import script_module


def test_pipeline_and_naive_paths_agree_and_the_counts_add_up(tmp_path):
    with script_module("benchmarks/eval_v2.py", "eval_v2_benchmark_under_test") as bench:
        out = bench.main(["--model", "hash", "--frames", "2", "--batch-size", "8", "--repeat", "1", "--work", str(tmp_path),
                          "--results", str(tmp_path / "RESULTS.md")])
    assert sorted(out["runs"]) == ["image", "video", "visdoc"]  # every synthetic family's modality
    for modality, runs in out["runs"].items():
        pipeline, naive = runs.values()
        assert pipeline["scores"] == naive["scores"]  # a batch-independent encoder: the same vectors
        assert 0 < pipeline["encodings"] <= naive["encodings"]
        assert pipeline["wall"] > 0 and naive["wall"] > 0
    rows = {r["dataset"]: r for r in out["synthetic"]}
    video = rows["Syn-VideoCLS"]
    assert video["naive"] == 2 * video["queries"] + video["candidates"]  # 2 frames a video, labels as text
    assert video["distinct"] == video["naive"]  # no repeated video or label inside the set
    videos = [r for r in out["synthetic"] if r["modality"] == "video"]
    assert len(videos) == 6
    # the pool encodes an item of several sets once: Syn-VideoRET's and Syn-MomentRET's candidates share
    # the prompt and, where a shape does the same action, the frames
    assert out["runs"]["video"]["pipeline (shared pool)"]["encodings"] < sum(r["distinct"] for r in videos)
    real = out["real"]
    assert sum(r["datasets"] for r in real.values()) == 78
    assert {m: r["datasets"] for m, r in real.items()} == {"image": 36, "video": 18, "visdoc": 24}
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| Syn-ViDoRe | visdoc |" in text and "--model hash --frames 2" in text
