"""MMEB-V2 through the data stages and evaluate: download -> normalize -> evaluate with
`data.benchmark: v2` on the synthetic stand-ins of every loader family, stand-in encoders for the
models."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import mmeb_v2
from pipelines.download import download
from pipelines.normalize import normalize
from pipelines.schema import V2_CORPUS_SCHEMA, V2_QUERY_SCHEMA
from tests.support.encoders import CountingEncoder, HashEncoder, OverlapEncoder
from tests.support.eval_sets import eval_params
from tests.support.params import section
from trainer.eval import evaluate as evaluation
from trainer.eval import evaluate_v2
from trainer.eval.metrics import SCORE_KEYS

TINY = {"train_subsets": ["Syn-ShapeCLS"], "eval_subsets": ["Syn-ShapeCLS"]}
TINY_SYN = {"train_rows": 6, "eval_rows": 4, "eval_candidates": 4, "image_size": 32}


class Loader:
    def __init__(self):
        self.encoders = {}

    def __call__(self, name, path, params):
        inner = (HashEncoder if name == "base" else OverlapEncoder)(name=name)
        self.encoders[name] = CountingEncoder(inner)
        return self.encoders[name]


def build(root: Path, frames: int = 4) -> dict:
    download(section("data", benchmark="v2", **TINY), section("synthetic", **TINY_SYN), out=root / "data/raw")
    return normalize(root / "data/raw", root / "data/normalized", root / "data/rejects", root / "metrics/etl.json",
                     section("normalize", workers=1, frames_per_video=frames))


def test_v2_end_to_end(tmp_path):
    root = tmp_path / "proj"
    etl = build(root)
    out = root / "data/normalized/eval_v2"
    every = sorted(mmeb_v2.SYNTHETIC)  # the default download writes every stand-in
    assert sorted(p.name for p in out.iterdir()) == every + ["datasets.json"]
    assert json.loads((out / "datasets.json").read_text()) == {"datasets": every}
    assert all(etl["v2"][n]["queries"] == etl["v2"][n]["expected"] == mmeb_v2.SYNTHETIC[n].num_data for n in every)
    queries = pq.read_table(out / "Syn-VideoCLS/queries.parquet")
    assert queries.schema.equals(V2_QUERY_SCHEMA)
    assert pq.read_schema(out / "Syn-ViDoRe/corpus.parquet").equals(V2_CORPUS_SCHEMA)
    videos = queries.column("query").to_pylist()
    assert {len(v["video"]) for v in videos} == {4}  # frames_per_video
    assert etl["v2"]["Syn-VideoCLS"]["short_videos"] == 0 and etl["v2"]["Syn-VideoCLS"]["eval_type"] == "global"
    assert etl["v2"]["Syn-ViDoRe"]["queries"] == 9 and etl["v2"]["Syn-ViDoRe"]["expected"] == 9
    doc = json.loads((out / "Syn-ViDoRe/dataset.json").read_text())
    assert doc["eval_type"] == "global" and doc["modality"] == "visdoc"
    rel = pq.read_table(out / "Syn-ViDoRe/queries.parquet").column("relevant").to_pylist()
    assert {r["grade"] for q in rel for r in q} == {1.0, 2.0}

    for m in ("base", "embedder"):
        (root / "models" / m).mkdir(parents=True)
    loader = Loader()
    evaluation.evaluate(eval_params(), root=root, load_model=loader)
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert "Syn-ShapeCLS" in json.dumps({k: v for k, v in metrics.items() if k != "v2"})  # V1 scored beside
    v2 = metrics["v2"]["embedder"]
    assert sorted(v2["datasets"]) == every
    for name in every:
        entry = v2["datasets"][name]
        assert list(entry)[:len(SCORE_KEYS)] == list(SCORE_KEYS)
        assert all(0 <= entry[k] <= 1 for k in SCORE_KEYS)
        assert entry["num_pred"] == entry["num_data"] == mmeb_v2.SYNTHETIC[name].num_data
    check_synthetic_aggregate(v2)
    assert v2["aggregate"]["overall"]["tasks"] == 0  # synthetic sets never pass for official tasks
    # the word-matching stand-in finds the page naming the query's item; the random one does not
    assert v2["datasets"]["Syn-ViDoRe"]["ndcg_linear@5"] > metrics["v2"]["base"]["datasets"]["Syn-ViDoRe"]["ndcg_linear@5"]
    report = (root / "reports/eval.md").read_text()
    assert "## MMEB-V2" in report and "| Syn-ViDoRe | visdoc | VDRv1 | global |" in report
    for name in every:
        t = mmeb_v2.SYNTHETIC[name]
        assert f"| {name} | {t.modality} | {t.meta_task} | {t.eval_type} |" in report
    for group in ("overall (10/10)", "image (3/3)", "video (6/6)", "visdoc (1/1)", "V-MRET (2/2)", "I-GD (1/1)"):
        assert f"| synthetic {group} |" in report
    plot = json.loads((root / evaluate_v2.PLOTS_DIR / "embedder.json").read_text())
    assert sorted(r["meta_task"] for r in plot) == sorted(
        f"{m} (synthetic)" for m in {t.meta_task for t in mmeb_v2.SYNTHETIC.values()})
    board = json.loads((root / evaluate_v2.LEADERBOARD_FILE).read_text())["embedder"]
    assert board["metrics"]["visdoc"]["ViDoRe_arxivqa"] == "FILE_N/A"
    # the leaderboard is report_score_v2.py's document: official task keys only, no stand-in
    assert not [k for m in board["metrics"].values() for k in m if k.startswith("Syn-")]

    # a warm cache serves every vector; a changed dataset (its version) re-encodes
    first = (root / "metrics/eval.json").read_bytes()
    loader = Loader()
    evaluation.evaluate(eval_params(), root=root, load_model=loader)
    assert (root / "metrics/eval.json").read_bytes() == first
    assert loader.encoders["embedder"].encoded == 0
    build(root, frames=3)
    loader = Loader()
    evaluation.evaluate(eval_params(), root=root, load_model=loader)
    assert loader.encoders["embedder"].encoded > 0


def check_synthetic_aggregate(v2: dict) -> None:
    """Every stand-in counted once in its meta-task and modality, each group the plain mean of its
    tasks' headline metric, overall the mean over all stand-ins (not of the modality means)."""
    agg, tasks = v2["synthetic_aggregate"], mmeb_v2.SYNTHETIC.values()
    headline = {t.name: v2["datasets"][t.name][t.headline_metric] for t in tasks}
    for level, of in (("meta", lambda t: t.meta_task), ("modality", lambda t: t.modality)):
        for group, entry in agg[level].items():
            names = [t.name for t in tasks if of(t) == group]
            assert (entry["tasks"], entry["expected"], entry["missing"]) == (len(names), len(names), [])
            assert entry["score"] == (pytest.approx(sum(headline[n] for n in names) / len(names)) if names else None)
    assert agg["modality"]["video"]["tasks"] == 6 and agg["meta"]["V-QA"]["tasks"] == 1
    assert agg["overall"]["tasks"] == 10 and agg["overall"]["score"] == pytest.approx(sum(headline.values()) / 10)


def test_a_short_dataset_after_normalize_fails_the_stage(tmp_path):
    """A video whose frames vanish between download and normalize is rejected, counted, and leaves
    the dataset short of its expected queries: normalize fails naming it, after writing its metrics."""
    root = tmp_path / "proj"
    download(section("data", benchmark="v2", **TINY), section("synthetic", **TINY_SYN), out=root / "data/raw")
    frames = root / "data/raw/MMEB-V2/video-tasks/frames/video_cls/Syn-VideoCLS/syn00002"
    for f in frames.iterdir():
        f.unlink()
    from pipelines.errors import StageFailed

    with pytest.raises(StageFailed, match=r"Syn-VideoCLS: 13 queries of the 14 expected"):
        normalize(root / "data/raw", root / "data/normalized", root / "data/rejects", root / "metrics/etl.json",
                  section("normalize", workers=1))
    etl = json.loads((root / "metrics/etl.json").read_text())
    assert etl["v2"]["Syn-VideoCLS"]["rejected_by_reason"] == {"queries/frames_empty": 1}
    assert pq.read_table(root / "data/rejects/eval_v2/Syn-VideoCLS.parquet").column("id").to_pylist() == ["syn00002"]


def _tree(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_v1_records_are_the_same_with_and_without_v2(tmp_path):
    """The V2 path adds eval_v2/ and V2 images; V1's records, rejects and counts stay byte for byte,
    and a v1 run leaves eval_v2/ without datasets (its datasets.json says so) and metrics/etl.json
    without a v2 entry."""
    runs = {}
    for benchmark in ("v1", "v2"):
        root = tmp_path / benchmark
        download(section("data", benchmark=benchmark, **TINY), section("synthetic", **TINY_SYN),
                 out=root / "data/raw")
        runs[benchmark] = normalize(root / "data/raw", root / "data/normalized", root / "data/rejects",
                                    root / "metrics/etl.json", section("normalize", workers=1))
    for part in ("train", "eval"):
        v1 = _tree(tmp_path / "v1/data/normalized" / part)
        assert v1 and v1 == _tree(tmp_path / "v2/data/normalized" / part)
    assert _tree(tmp_path / "v1/data/rejects") == {k: v for k, v in _tree(tmp_path / "v2/data/rejects").items()
                                                   if not k.startswith("eval_v2/")}
    assert [p.name for p in (tmp_path / "v1/data/normalized/eval_v2").iterdir()] == ["datasets.json"]
    assert json.loads((tmp_path / "v1/data/normalized/eval_v2/datasets.json").read_text()) == {"datasets": []}
    assert "v2" not in runs["v1"] and runs["v1"]["datasets"] == runs["v2"]["datasets"]
    images = {b: _tree(tmp_path / b / "data/normalized/images") for b in runs}
    assert runs["v1"]["total"]["images_stored"] < runs["v2"]["total"]["images_stored"]
    assert set(images["v1"]) <= set(images["v2"])


@pytest.mark.parametrize("family, rendering", [
    ("qwen2_vl", {}),
    ("qwen3_vl", {"prompt": "qwen3-vl-embedding"}),
    ("qwen2_vl", {"prompt": "gme", "stray_image_token": "keep"}),
])
def test_v2_with_the_real_tiny_model(tmp_path, family, rendering):
    """The real embedder (a tiny Qwen2-VL or Qwen3-VL, in VLM2Vec's string or a chat input) encodes
    V2's pages, frames and labels, and V1's records beside them."""
    import shutil

    from trainer.backbone.families import build_tiny, save_backbone, train_family_tokenizer

    root = tmp_path / "proj"
    build(root, frames=2)
    tokenizer = train_family_tokenizer(family)
    save_backbone(build_tiny(family, seed=0, tokenizer=tokenizer), root / "models/base")
    evaluation.evaluate(eval_params(models=["base"], batch_size=8, **rendering), root=root)
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert metrics["base"]["overall"] >= 0 and "Syn-ShapeCLS" in json.dumps(metrics["base"])
    board = json.loads((root / evaluation.LEADERBOARD_FILE).read_text())
    assert board["models"]["base"]["metadata"]["rendering"]["prompt"] == rendering.get("prompt", "vlm2vec")
    v2 = json.loads((root / "metrics/eval.json").read_text())["v2"]["base"]
    assert sorted(v2["datasets"]) == sorted(mmeb_v2.SYNTHETIC)  # every loader family through the real model
    assert 0 <= v2["synthetic_aggregate"]["overall"]["score"] <= 1
    check_synthetic_aggregate(v2)
    shutil.rmtree(root / ".cache")


def test_v2_only_scores_v2_and_clears_the_v1_outputs(tmp_path):
    """data.benchmark v2: no V1 dataset is scored, V1 outputs of an earlier run are gone, the DVC
    outputs exist; without V2 data the stage says what to run."""
    root = tmp_path / "proj"
    for m in ("base", "embedder"):
        (root / "models" / m).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no MMEB-V2 dataset"):
        evaluation.evaluate(eval_params(), root=root, load_model=Loader(), score_v1=False)
    build(root)
    evaluation.evaluate(eval_params(), root=root, load_model=Loader())  # both: V1 outputs written
    assert list((root / evaluation.PLOTS_DIR).glob("*.json"))
    loader = Loader()
    evaluation.evaluate(eval_params(), root=root, load_model=loader, score_v1=False)
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert list(metrics) == ["v2"] and sorted(metrics["v2"]) == ["base", "embedder"]
    assert json.loads((root / evaluation.LEADERBOARD_FILE).read_text()) == {"models": {}}
    assert not list((root / evaluation.PLOTS_DIR).glob("*.json"))
    report = (root / "reports/eval.md").read_text()
    assert "## MMEB-V2" in report and "Syn-ShapeCLS" not in report
    assert loader.encoders["embedder"].encoded == 0  # every V2 vector came from the cache of the run before
