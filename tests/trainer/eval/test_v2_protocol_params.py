"""The V2 protocol's params through evaluate (eval.v2_ties, eval.v2_labels, normalize.vidore_prompt),
the V2 images' pre-scale rule, and the pool that encodes an item shared by datasets once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.download import download
from pipelines.normalize import normalize
from tests.support.encoders import CountingEncoder, HashEncoder, OverlapEncoder
from tests.support.eval_sets import eval_params
from tests.support.params import section
from trainer.eval import evaluate as evaluation
from trainer.eval import evaluate_v2

TINY = {"train_subsets": ["Syn-ShapeCLS"], "eval_subsets": ["Syn-ShapeCLS"]}
# a graded global set and a video set are what the protocol's params act on
TINY_SYN = {"train_rows": 6, "eval_rows": 4, "eval_candidates": 4, "image_size": 32,
            "v2_sets": ["Syn-ViDoRe", "Syn-VideoCLS"]}
V2 = Path("data/normalized/eval_v2")


class SizeRecorder(OverlapEncoder):
    """Records the size of every image it is given."""

    def __init__(self, name="overlap"):
        super().__init__(name=name)
        self.sizes = set()

    def encode(self, sides, images, batch_size=8):
        self.sizes |= {im.size for im in images if im is not None}
        return super().encode(sides, images, batch_size)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A project with V2's synthetic sets normalized (V1 left out: data.benchmark v2) and two model
    folders; copied by each test that writes."""
    root = tmp_path_factory.mktemp("v2params") / "proj"
    download(section("data", benchmark="v2", **TINY), section("synthetic", **TINY_SYN), out=root / "data/raw")
    normalize(root / "data/raw", root / "data/normalized", root / "data/rejects", root / "metrics/etl.json",
              section("normalize", workers=1, frames_per_video=3))
    for m in ("base", "embedder"):
        (root / "models" / m).mkdir(parents=True)
    return root


def _copy(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(built, root)
    return root


def test_protocol_choices_are_recorded_and_change_the_scores(built, tmp_path):
    root = _copy(built, tmp_path)
    evaluation.evaluate(eval_params(cache=False), root=root, load_model=lambda n, p, e: HashEncoder(name=n),
                        score_v1=False)
    default = json.loads((root / "metrics/eval.json").read_text())["v2"]["base"]
    assert default["protocol"] == {"ties": "strict", "labels": "correct", "vidore_prompt": "current"}
    evaluation.evaluate(eval_params(cache=False, v2_ties="argsort", v2_labels="official"), root=root,
                        load_model=lambda n, p, e: HashEncoder(name=n), score_v1=False)
    official = json.loads((root / "metrics/eval.json").read_text())["v2"]["base"]
    assert official["protocol"] == {"ties": "argsort", "labels": "official", "vidore_prompt": "current"}
    assert "ties `argsort`, labels `official`, ViDoRe prompt `current`" in (root / "reports/eval.md").read_text()
    # binary labels and no exact ties (video classification): the two computations agree
    assert official["datasets"]["Syn-VideoCLS"]["hit@1"] == default["datasets"]["Syn-VideoCLS"]["hit@1"]
    for entry in official["datasets"].values():
        assert len(entry["version"]) == 16


def test_official_labels_can_move_a_grade_on_graded_pages():
    """`Protocol.labels` reaches the metrics: on a graded query whose set() order differs from the
    listed order, official NDCG differs from the correct one."""
    from trainer.eval.metrics import Relevance

    from pipelines import mmeb_v2

    task = mmeb_v2.SYNTHETIC["Syn-ViDoRe"]
    ids = [f"p{i}" for i in range(6)]
    # find relevant ids whose set() order reverses the listed order (string hashing varies per process)
    pair = next((a, b) for a in ids for b in ids if a != b and list({a, b}) == [b, a])
    emb = np.eye(7, dtype=np.float32)
    emb[6] = emb[ids.index(pair[0])] * 2 + emb[ids.index(pair[1])]  # the query: first pair[0], then pair[1]
    vs = evaluate_v2.V2Set(task, "0" * 16, 1, [[6]], ids, [[i] for i in range(6)], [[]],
                           [Relevance(pair, (2.0, 1.0))])
    correct = evaluate_v2.score_set(vs, emb, evaluate_v2.Protocol("strict", "correct"))
    official = evaluate_v2.score_set(vs, emb, evaluate_v2.Protocol("strict", "official"))
    assert correct["ndcg_linear@5"] == pytest.approx(1.0)
    assert official["ndcg_linear@5"] < 1.0


@pytest.mark.parametrize("corpus_ids, id_type", [([7, 8, 9], "int"), (["7", "8", "9"], "str")])
def test_integer_corpus_ids_are_scored_as_integers(tmp_path, corpus_ids, id_type):
    """A BEIR set with integer corpus ids: normalize records id_type "int" in dataset.json and evaluate
    gives the ids back as integers, so official NDCG follows VLM2Vec's int set() order: {7, 8} iterates
    as [8, 7] (8 hashes to slot 0 of an 8-slot table), which gives grade 2 to page 8 and 1 to page 7,
    whatever PYTHONHASHSEED. String ids keep strings."""
    from pipelines.normalize_v2 import normalize_v2
    from tests.support.images import seeded_png

    raw = tmp_path / "raw" / "MMEB-V2" / "Syn-ViDoRe"
    for config, table in (
            ("corpus", {"corpus-id": corpus_ids, "image": [{"bytes": seeded_png(i), "path": f"{i}.png"} for i in range(3)]}),
            ("queries", {"query-id": [1], "query": ["which page?"]}),
            ("qrels", {"query-id": [1, 1], "corpus-id": corpus_ids[:2], "score": [2, 1]})):
        (raw / config).mkdir(parents=True)
        pq.write_table(pa.table(table), raw / config / "test-00000-of-00001.parquet")
    normalize_v2(tmp_path / "raw", tmp_path / "norm", tmp_path / "rejects", section("normalize", workers=1))
    assert json.loads((tmp_path / "norm" / V2.name / "Syn-ViDoRe/dataset.json").read_text())["id_type"] == id_type
    vs = evaluate_v2.load_v2_pool(tmp_path / "norm" / V2.name).sets[0]
    assert vs.corpus_ids == corpus_ids and vs.relevances[0].ids == tuple(corpus_ids[:2])

    emb = np.zeros((4, 3), dtype=np.float32)
    for page, side in enumerate(vs.corpus_sides):
        emb[side[0], page] = 1.0
    emb[vs.query_sides[0][0]] = [2.0, 1.0, 0.0]  # ranks 7 (grade 2), then 8 (grade 1), then 9
    official = evaluate_v2.score_set(vs, emb, evaluate_v2.Protocol("strict", "official"))
    correct = evaluate_v2.score_set(vs, emb, evaluate_v2.Protocol("strict", "correct"))
    assert correct["ndcg_linear@5"] == pytest.approx(1.0)
    if id_type == "int":  # DCG 1/log2(2) + 2/log2(3) over IDCG 2/log2(2) + 1/log2(3)
        assert official["ndcg_linear@5"] == pytest.approx((1 + 2 / np.log2(3)) / (2 + 1 / np.log2(3)))


def test_vidore_prompt_launch_is_written_and_recorded(built, tmp_path):
    root = _copy(built, tmp_path)
    normalize(root / "data/raw", root / "data/normalized", root / "data/rejects", root / "metrics/etl.json",
              section("normalize", workers=1, frames_per_video=3, vidore_prompt="launch"))
    info = json.loads((root / V2 / "Syn-ViDoRe/dataset.json").read_text())
    assert info["vidore_prompt"] == "launch"
    assert "vidore_prompt" not in json.loads((root / V2 / "Syn-VideoCLS/dataset.json").read_text())
    raws = [q["raw"] for q in pq.read_table(root / V2 / "Syn-ViDoRe/queries.parquet").column("query").to_pylist()]
    assert all(r.startswith(" ") for r in raws)  # the launch's empty prompt
    evaluation.evaluate(eval_params(cache=False), root=root, load_model=lambda n, p, e: HashEncoder(name=n),
                        score_v1=False)
    assert json.loads((root / "metrics/eval.json").read_text())["v2"]["base"]["protocol"]["vidore_prompt"] == "launch"


@pytest.mark.parametrize("resize", ["collator", "processor"])
def test_v2_images_follow_the_v1_pre_scale_rule(built, tmp_path, resize):
    """image_resize collator: the loader scales pages and frames to image_max_pixels; processor: the
    processor resizes, so the encoder gets the stored images (96 x 125 pages, 48 px frames)."""
    root = _copy(built, tmp_path)
    recorders = {}

    def load(name, path, params):
        recorders[name] = SizeRecorder(name)
        return recorders[name]

    evaluation.evaluate(eval_params(cache=False, image_max_pixels=40, image_resize=resize), root=root,
                        load_model=load, score_v1=False)
    sizes = recorders["base"].sizes
    if resize == "collator":
        assert max(w * h for w, h in sizes) <= 40
    else:
        assert sizes == {(96, 125), (48, 48)}


def test_an_item_shared_by_two_datasets_is_encoded_once(built, tmp_path):
    """Two V2 datasets with the same pages (Syn-ViDoRe's folder under a registry ViDoRe name): the
    pool holds each page once, the encoder sees each once, and both datasets score the same. A page
    changed in one dataset is encoded again on a warm cache; nothing else is."""
    root = _copy(built, tmp_path)
    twin = root / V2 / "ViDoRe_arxivqa"
    shutil.copytree(root / V2 / "Syn-ViDoRe", twin)
    info = json.loads((twin / "dataset.json").read_text())
    (twin / "dataset.json").write_text(json.dumps({**info, "dataset": "ViDoRe_arxivqa"}))
    (root / V2 / "Syn-VideoCLS").rename(root / "video-aside")

    empty = evaluate_v2.load_v2_pool(tmp_path / "absent")
    assert empty.sets == [] and empty.items == []
    pool = evaluate_v2.load_v2_pool(root / V2)
    assert [vs.task.name for vs in pool.sets] == ["Syn-ViDoRe", "ViDoRe_arxivqa"]
    assert pool.sets[0].item_indices() == pool.sets[1].item_indices() == list(range(len(pool.items)))

    counters = {}

    def load(name, path, params):
        counters[name] = CountingEncoder(OverlapEncoder(name=name))
        return counters[name]

    evaluation.evaluate(eval_params(), root=root, load_model=load, score_v1=False)
    assert counters["embedder"].encoded == len(pool.items)
    scores = json.loads((root / "metrics/eval.json").read_text())["v2"]["embedder"]["datasets"]
    assert scores["Syn-ViDoRe"]["ndcg_linear@5"] == scores["ViDoRe_arxivqa"]["ndcg_linear@5"]

    corpus = pq.read_table(twin / "corpus.parquet")
    rows = corpus.to_pylist()
    rows[0]["candidate"]["raw"] = rows[0]["candidate"]["raw"] + " changed"
    pq.write_table(type(corpus).from_pylist(rows, schema=corpus.schema), twin / "corpus.parquet")
    evaluation.evaluate(eval_params(), root=root, load_model=load, score_v1=False)
    assert counters["embedder"].encoded > 0  # the changed page's batch
    assert counters["embedder"].encoded <= eval_params().batch_size


def test_the_v2_plots_render_one_bar_per_meta_task_through_dvc(built, tmp_path):
    """reports/plots/v2_meta/<model>.json under the project's own dvc.yaml plot entry: one plot per
    model, a bar per meta-task in %; a run without V2 leaves the folder empty."""
    import os
    import subprocess
    import sys

    import yaml

    root = _copy(built, tmp_path)
    evaluation.evaluate(eval_params(cache=False), root=root, load_model=lambda n, p, e: HashEncoder(name=n),
                        score_v1=False)
    metrics = json.loads((root / "metrics/eval.json").read_text())["v2"]
    repo_root = Path(__file__).resolve().parents[3]
    entry = next(e for e in yaml.safe_load((repo_root / "dvc.yaml").read_text())["plots"]
                 if str(evaluate_v2.PLOTS_DIR) in e)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=root, check=True, env=env)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": [entry]}))
    out = json.loads(subprocess.run([*dvc, "plots", "show", "--json"], cwd=root, env=env, check=True,
                                    capture_output=True, text=True).stdout)
    assert not out.get("errors"), out["errors"]
    plots = {Path(name).stem: p[0] for name, p in out["data"].items()}
    assert sorted(plots) == ["base", "embedder"]
    values = plots["embedder"]["content"]["data"]["values"]
    synthetic = metrics["embedder"]["synthetic_aggregate"]["meta"]
    assert {(v["meta_task"], v["score"]) for v in values} == {
        (f"{meta} (synthetic)", round(100 * group["score"], 4)) for meta, group in synthetic.items() if group["tasks"]}
    assert len(values) == 2  # VDRv1 and V-CLS
    enc = plots["embedder"]["content"]["encoding"]
    assert enc["x"]["field"] == "score" and enc["y"]["field"] == "meta_task"

    shutil.rmtree(root / V2)  # the V2 datasets gone (data.benchmark v1): V1 scored, no V2 plot left behind
    evaluation.evaluate(eval_params(cache=False), root=root, load_model=lambda n, p, e: HashEncoder(name=n))
    assert (root / evaluate_v2.PLOTS_DIR).is_dir() and not list((root / evaluate_v2.PLOTS_DIR).iterdir())
    assert "v2" not in json.loads((root / "metrics/eval.json").read_text())
