"""The evaluate stage end to end: fake models, the DDP run, dvc plots, and the real tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.mmeb import MMEB_EVAL, resolve_subsets
from pipelines.profiles import differences_in, load_profile
from stages import evaluate as stage
from tests.support.encoders import BatchSensitiveEncoder, CountingEncoder, HashEncoder, OverlapEncoder
from tests.support.eval_sets import build_tiny_eval, eval_params, record_side, reference_scores, write_records
from tests.support.params import write_params
from trainer import provenance
from trainer.eval import evaluate as evaluation
from trainer.eval import report
from trainer.eval.cache import EmbeddingCache, namespaces
from trainer.eval.protocol import ImageLoader, aggregate, list_datasets, load_eval_set

ROOT = Path(__file__).resolve().parents[3]
DVC = Path(sys.executable).with_name("dvc")


def make_root(tmp: Path) -> Path:
    """A project-like folder: data/normalized/{eval,images} (3 tiny datasets + a small real-named CIRR)
    and empty models/base, models/embedder folders."""
    root = tmp / "proj"
    data = root / "data" / "normalized"
    paths = build_tiny_eval(tmp / "build")
    shutil.copytree(paths["eval"], data / "eval")
    shutil.copytree(paths["images"], data / "images")
    # a dataset with a real MMEB name, to get the published columns
    labels = ["red", "blue", "green", "black", "white"]
    rows = [(record_side(f"a {labels[i % 5]} car", None, "Find: "),
             [record_side(labels[(i + k) % 5]) for k in range(3)]) for i in range(7)]
    write_records(data / "eval", "CIRR", "retrieval", "IND", rows)
    for m in ("base", "embedder"):
        (root / "models" / m).mkdir(parents=True)
    return root


class Loader:
    """Fake model loader: base knows nothing, embedder matches words and colours."""

    def __init__(self, kinds=None):
        self.kinds = kinds or {"base": HashEncoder, "embedder": OverlapEncoder}
        self.encoders = {}

    def __call__(self, name, path, params):
        self.encoders[name] = self.kinds[name](name=name)
        return self.encoders[name]


PARAMS = eval_params()


def read_outputs(root: Path) -> dict[str, bytes]:
    plots = sorted((root / evaluation.PLOTS_DIR).glob("*.json"))
    files = [evaluation.METRICS_FILE, evaluation.REPORT_FILE, evaluation.LEADERBOARD_FILE] + [
        p.relative_to(root) for p in plots]
    return {str(f): (root / f).read_bytes() for f in files}


def test_stage_end_to_end_with_fake_models(tmp_path):
    root = make_root(tmp_path)
    loader = Loader()
    evals = evaluation.evaluate(PARAMS, root=root, load_model=loader)
    metrics = json.loads((root / evaluation.METRICS_FILE).read_text())
    images = ImageLoader(root / evaluation.IMAGES_ROOT, 40)

    def vector_of(enc):
        def f(s):
            img = images([s["image"]["sha256"]])[s["image"]["sha256"]] if s["image"] else None
            return enc.vector(s, img)
        return f

    datasets = ["CIRR", "Tiny-CLS", "Tiny-RET", "Tiny-VQA"]
    board = json.loads((root / evaluation.LEADERBOARD_FILE).read_text())
    for model in ("base", "embedder"):  # the leaderboard submission file, as report_score_v2.py writes it
        sub = json.loads((root / evaluation.SUBMISSION_DIR / f"{model}.json").read_text())
        assert list(sub) == ["metadata", "metrics"] and list(sub["metrics"]) == ["image", "video", "visdoc"]
        assert sub["metadata"]["model_name"] == model and sub["metadata"]["data_source"] == "Self-Reported"
        image = sub["metrics"]["image"]
        assert len(image) == 36 and image["CIRR"] == board["models"][model]["metrics"]["image"]["CIRR"]
        assert image["ImageNet-1K"] == "FILE_N/A" and "Tiny-CLS" not in image  # not scored; not MMEB's
        assert set(sub["metrics"]["video"].values()) == set(sub["metrics"]["visdoc"].values()) == {"DIR_N/A"}
        assert "MMLongBench-page-fixed" in sub["metrics"]["visdoc"]
    for model in ("base", "embedder"):
        enc = loader.encoders[model]
        per = {d: reference_scores(root / evaluation.EVAL_ROOT, d, vector_of(enc)) for d in datasets}
        assert metrics[model]["dataset"] == {d: round(per[d]["precision_at_1"], 4) for d in datasets}
        # aggregates by hand: CLS, RET, CIRR are IND; VQA is OOD
        p = {d: per[d]["precision_at_1"] for d in datasets}
        assert metrics[model]["overall"] == pytest.approx(sum(p.values()) / 4, abs=1e-4)
        assert metrics[model]["IND"] == pytest.approx((p["CIRR"] + p["Tiny-CLS"] + p["Tiny-RET"]) / 3, abs=1e-4)
        assert metrics[model]["OOD"] == pytest.approx(p["Tiny-VQA"], abs=1e-4)
        assert metrics[model]["meta"]["retrieval"] == pytest.approx((p["CIRR"] + p["Tiny-RET"]) / 2, abs=1e-4)
        assert metrics[model]["mrr"] == pytest.approx(np.mean([per[d]["mrr"] for d in datasets]), abs=1e-4)
        # every distinct item encoded exactly once, far fewer than the naive count
        enc_counts = metrics[model]["encodings"]
        es = {d: load_eval_set(root / evaluation.EVAL_ROOT, d) for d in datasets}
        assert enc_counts["naive"] == sum(e.n_queries + e.cand_item.size for e in es.values())
        assert enc.encoded == enc_counts["deduplicated"] == sum(len(e.items) for e in es.values())
        assert enc_counts["deduplicated"] < enc_counts["naive"] / 2
    assert metrics["embedder"]["overall"] > metrics["base"]["overall"]  # the planted signal is found
    assert metrics["embedder"]["delta_vs_base"]["overall"] == pytest.approx(
        metrics["embedder"]["overall"] - metrics["base"]["overall"], abs=2e-4)
    assert "delta_vs_base" not in metrics["base"]
    assert [r.dataset for r in evals["embedder"]] == datasets

    # leaderboard: per-dataset scores + meta-task/IND/OOD/Overall, V2 fields as fractions
    board = json.loads((root / evaluation.LEADERBOARD_FILE).read_text())["models"]["embedder"]
    assert board["scores"]["Overall"] == metrics["embedder"]["overall"]
    assert set(board["scores"]) == set(datasets) | {"Classification", "VQA", "Retrieval", "IND", "OOD", "Overall"}
    assert board["metrics"]["image"]["CIRR"]["hit@1"] == pytest.approx(metrics["embedder"]["dataset"]["CIRR"] / 100)
    # plot files, one per model
    rows = json.loads((root / evaluation.PLOTS_DIR / "base.json").read_text())
    assert [(r["dataset"], r["model"]) for r in rows] == [(d, "base") for d in datasets]
    # the report: per-dataset table with the published columns for the real-named dataset only
    md = (root / evaluation.REPORT_FILE).read_text()
    cirr = next(line for line in md.splitlines() if line.startswith("| CIRR | retrieval | IND"))
    assert f"{metrics['embedder']['dataset']['CIRR']:.2f}" in cirr
    pub_line = next(line for line in md.splitlines() if line.startswith("| CIRR |") and "49.90" in line)
    assert "12.60" in pub_line  # CLIP's published CIRR
    assert "Tiny-CLS" not in [l.split("|")[1].strip() for l in md.split("## Published numbers")[1].splitlines()
                              if l.startswith("|")]

    # re-run: the warm cache encodes nothing and every output is byte-identical
    before = read_outputs(root)
    loader2 = Loader()
    evaluation.evaluate(PARAMS, root=root, load_model=loader2)
    assert all(e.encoded == 0 for e in loader2.encoders.values())
    assert read_outputs(root) == before


@pytest.mark.parametrize("models", [["base", "embedder"], ["base"]])
def test_dvc_plots_render_the_per_model_files(tmp_path, models):
    """The project's own dvc.yaml plot entry over the files the stage writes: one plot per scored
    model, and no error when `eval.models` scores only some of them."""
    evals = {m: [report_result(d, p) for d, p in [("Syn-CIRR", 10.0 + k), ("Syn-ShapeCLS", 30.0 + k)]]
             for k, m in enumerate(models)}
    entry = next(e for e in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
                 if str(evaluation.PLOTS_DIR) in e)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(DVC), "init", "-q"], cwd=repo, check=True, env=env)
    evaluation.write_outputs(evals, {m: {} for m in models}, repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [entry]}))
    out = json.loads(subprocess.run([str(DVC), "plots", "show", "--json"], cwd=repo, env=env, check=True,
                                    capture_output=True, text=True).stdout)
    assert not out.get("errors"), out["errors"]
    plots = {Path(name).stem: p[0] for name, p in out["data"].items()}
    assert sorted(plots) == sorted(models)
    for k, m in enumerate(models):
        values = plots[m]["content"]["data"]["values"]
        assert {(v["dataset"], v["model"], v["precision_at_1"]) for v in values} == {
            ("Syn-CIRR", m, 10.0 + k), ("Syn-ShapeCLS", m, 30.0 + k)}
        enc = plots[m]["content"]["encoding"]
        assert enc["x"]["field"] == "precision_at_1" and enc["y"]["field"] == "dataset"


def report_result(dataset, p):
    from trainer.eval.protocol import DatasetResult

    return DatasetResult(dataset, "retrieval", "IND", 10, 4, 4, 40, 10, 20, 50, 30, int(p / 10), p, p, p, p)


def test_published_table_matches_the_papers_aggregates():
    """The transcribed per-dataset table reproduces the papers' printed means (a transcription check)."""
    by_model = {m: [report_result(d, row[j]) for d, row in report.PUBLISHED_P1.items()]
                for j, m in enumerate(report.PUBLISHED_MODELS)}
    for m in by_model:
        for r in by_model[m]:
            r.meta_task, r.distribution = MMEB_EVAL[r.dataset].meta_task, MMEB_EVAL[r.dataset].distribution
    assert len(report.PUBLISHED_P1) == 36 and set(report.PUBLISHED_P1) == set(MMEB_EVAL)
    for m in report.PUBLISHED_MODELS:
        tol = 0.5 if m == "UniIR" else 0.051  # UniIR's printed overall disagrees (see PUBLISHED_NOTES)
        assert aggregate(by_model[m])["overall"] == pytest.approx(report.PUBLISHED_OVERALL[m], abs=tol), m
    # paper-v1 Table 2: CLS, VQA, RET, VG, IND, OOD
    table2 = {"CLIP": (42.8, 9.1, 53.0, 51.8, 37.1, 38.7), "OpenCLIP": (47.8, 10.9, 52.3, 53.3, 39.3, 40.2),
              "VLM2Vec (LLaVA-1.6)": (61.2, 49.9, 67.4, 86.1, 67.5, 57.1)}
    for m, want in table2.items():
        agg = aggregate(by_model[m])
        got = tuple(agg["meta"][t] for t in ("classification", "vqa", "retrieval", "grounding")) + (agg["IND"], agg["OOD"])
        assert got == pytest.approx(want, abs=0.051), m


def test_stage_errors_are_clear(tmp_path):
    root = make_root(tmp_path)
    shutil.rmtree(root / "models" / "embedder")
    with pytest.raises(FileNotFoundError, match="models/embedder"):
        evaluation.evaluate(PARAMS, root=root, load_model=Loader())
    with pytest.raises(ValueError, match="unknown subsets"):
        evaluation.evaluate(eval_params(models=["base"], datasets=["Nope"]), root=root, load_model=Loader())
    # a repeated dataset: the params contract refuses it (tests/pipelines/test_params.py); the
    # datasets are selected with the same check at run time
    some = sorted(p.name for p in (root / evaluation.EVAL_ROOT).iterdir())[0]
    with pytest.raises(ValueError, match=f"more than once: \\['{some}'\\]"):
        resolve_subsets([some, some], list_datasets(root / evaluation.EVAL_ROOT))


def test_metrics_do_not_depend_on_earlier_runs_cache(tmp_path):
    """With a batch-sensitive model (padding moves vectors in their last bits, as a real model's do),
    the same params give byte-identical outputs on a fresh clone and in a workspace whose cache was
    filled by runs at another batch size or over other datasets."""
    kinds = {"base": BatchSensitiveEncoder, "embedder": BatchSensitiveEncoder}
    params = eval_params(batch_size=3)
    fresh = make_root(tmp_path / "fresh")
    evaluation.evaluate(params, root=fresh, load_model=Loader(kinds))
    used = make_root(tmp_path / "used")
    evaluation.evaluate(replace(params, batch_size=5), root=used, load_model=Loader(kinds))
    evaluation.evaluate(replace(params, datasets=["Tiny-VQA"]), root=used, load_model=Loader(kinds))
    evaluation.evaluate(params, root=used, load_model=Loader(kinds))
    assert read_outputs(used) == read_outputs(fresh)


def cached_vectors(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """{(model fingerprint, item key): vector} of every verified vector in root's embedding cache."""
    out = {}
    for ns in namespaces(root / ".cache" / "embeddings"):
        index = json.loads((ns.path / "index.json").read_text())
        cache = EmbeddingCache(root / ".cache" / "embeddings", index["fingerprint"], index["settings"])
        keys = [k for part in index["parts"].values() for k in part["keys"]]
        out.update({(index["fingerprint"], k): v for k, v in cache.lookup(keys).items()})
    return out


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    """Two gloo ranks (torchrun) produce byte-identical outputs to one process, batch effects included."""
    single = make_root(tmp_path / "single")
    multi = make_root(tmp_path / "multi")
    kinds = {"base": BatchSensitiveEncoder, "embedder": BatchSensitiveEncoder}
    params = eval_params(batch_size=3, cache=True, cache_dir=".cache/embeddings")
    evaluation.evaluate(params, root=single, load_model=Loader(kinds))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "support" / "eval_ddp_worker.py"), "--root", str(multi), "--batch-size", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_outputs(multi) == read_outputs(single)
    counts = [json.loads((multi / f"encoded-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(c["base"] > 0 for c in counts)  # both ranks did real work
    total = sum(len(load_eval_set(multi / evaluation.EVAL_ROOT, d).items)
                for d in ["CIRR", "Tiny-CLS", "Tiny-RET", "Tiny-VQA"])
    assert total <= counts[0]["base"] + counts[1]["base"] <= total + 4  # at most one padding item per dataset
    # every vector, not only the metrics it gave: Tiny-VQA's 7 batches need a padding batch on rank 1,
    # which re-encodes an item alone; its vector must be the one from the item's real batch
    vectors = cached_vectors(multi)
    assert len(vectors) == 2 * total and vectors.keys() == cached_vectors(single).keys()
    assert all(np.array_equal(v, cached_vectors(single)[k]) for k, v in vectors.items())


@pytest.mark.slow
def test_stage_main_with_the_real_tiny_model(tmp_path, monkeypatch, capsys):
    """`python -m stages.evaluate` (main) on real tiny Qwen2-VL folders written by save_backbone."""
    from trainer.backbone.families import build_tiny, save_backbone, train_family_tokenizer
    from trainer.embed import EmbeddingModel
    from trainer.eval.cache import EmbeddingCache

    root = make_root(tmp_path)
    tokenizer = train_family_tokenizer("qwen2_vl")
    for m, seed in (("base", 0), ("embedder", 1)):
        shutil.rmtree(root / "models" / m)
        save_backbone(build_tiny("qwen2_vl", seed=seed, tokenizer=tokenizer), root / "models" / m)
    params = replace(PARAMS, batch_size=8, datasets=["Tiny-CLS", "Tiny-RET"])
    write_params(root / "params.yaml", eval=params.to_dict())  # every stage checks the whole file
    monkeypatch.chdir(root)
    assert stage.main(["--params", "params.yaml"]) == 0
    metrics = json.loads((root / evaluation.METRICS_FILE).read_text())
    assert set(metrics) == {"base", "embedder"}
    meta = json.loads((root / evaluation.SUBMISSION_DIR / "embedder.json").read_text())["metadata"]
    assert (meta["model_backbone"], meta["embedding_dimension"], meta["max_length_tokens"]) == ("tiny-qwen2-vl", 64, 256)
    assert meta["model_size"].endswith("K parameters")
    recipe = (root / evaluation.REPORT_FILE).read_text().split("## Recipe")[1].split("## Summary")[0]
    assert f"Profile `default` (version {load_profile('default').version}" in recipe  # the report names the profile and what differs from it
    assert "| `eval.image_max_pixels` | `40` | `train` |" in recipe and "| `eval.precision`" not in recipe
    assert metrics["base"]["encodings"]["deduplicated"] < metrics["base"]["encodings"]["naive"]
    assert 0.0 <= metrics["embedder"]["overall"] <= 100.0
    assert metrics["base"]["dataset"] != metrics["embedder"]["dataset"] or \
        metrics["base"]["mrr"] != metrics["embedder"]["mrr"]  # two different models were scored
    before = read_outputs(root)
    # unchanged models: everything comes from the cache, outputs are byte-identical
    wrapped = {}

    def loader(name, path, p):
        wrapped[name] = CountingEncoder(evaluation.load_embedding_model(name, path, p))
        return wrapped[name]

    recipe = differences_in(root / "params.yaml")
    evaluation.evaluate(params, root=Path("."), load_model=loader, recipe=recipe)
    assert [w.encoded for w in wrapped.values()] == [0, 0]
    assert read_outputs(root) == before
    # edited encoding code (pooling, collation, image loading): nothing comes from the old cache
    real = provenance.source_digest
    monkeypatch.setattr(provenance, "source_digest", lambda m, *a: "edited" + real(m, *a))
    evaluation.evaluate(params, root=Path("."), load_model=loader, recipe=recipe)
    assert all(w.encoded > 0 for w in wrapped.values())
    monkeypatch.setattr(provenance, "source_digest", real)
    # the cached vectors are the model's own: compare some against direct one-item encoding
    model = EmbeddingModel.load(root / "models" / "embedder", image_max_pixels=40)
    es = load_eval_set(root / evaluation.EVAL_ROOT, "Tiny-RET")
    cache = EmbeddingCache(root / ".cache" / "embeddings", model.fingerprint,
                           evaluation.cache_settings(40, params.batch_size))
    keys = evaluation.cache_keys(es)
    cached = dict(zip(es.keys, (cache.lookup(keys)[k] for k in keys)))
    assert len(cached) == len(es.keys)
    images = ImageLoader(root / evaluation.IMAGES_ROOT, 40)
    for i in (0, len(es.items) - 1):  # a text query and an image candidate
        it = es.items[i]
        img = images([it["image"]["sha256"]])[it["image"]["sha256"]] if it["image"] else None
        direct = model.encode([it], [img], batch_size=1)[0]
        np.testing.assert_allclose(cached[es.keys[i]], direct, atol=1e-4)
    # weights whose bytes changed after they were written are not scored: one message names the file
    weights = root / "models" / "embedder" / "model.safetensors"
    recorded = json.loads((weights.parent / "digests.json").read_text())["files"][weights.name]["sha256"]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    weights.write_bytes(bytes(data))
    assert stage.main(["--params", "params.yaml"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == "evaluate: FAILED" and recorded in err[-1]
    assert "models/embedder/model.safetensors: contents changed" in err[-1]
    assert read_outputs(root) == before


def test_cache_budget_drops_other_models_vectors_and_keeps_this_runs(tmp_path):
    root = make_root(tmp_path)
    evaluation.evaluate(PARAMS, root=root, load_model=Loader())
    cache_root = root / ".cache" / "embeddings"
    fingerprints = {n.path.parent.name for n in namespaces(cache_root)}
    assert len(fingerprints) == 2
    only_embedder = replace(PARAMS, models=["embedder"], cache_max_gb=0)
    loader = Loader()
    evaluation.evaluate(only_embedder, root=root, load_model=loader)
    kept = namespaces(cache_root)
    assert len(kept) == 1 and kept[0].path.parent.name == loader.encoders["embedder"].fingerprint
    again = Loader()
    evaluation.evaluate(only_embedder, root=root, load_model=again)
    assert again.encoders["embedder"].encoded == 0  # this run's vectors survived the budget of 0
    evaluation.evaluate(replace(PARAMS, cache_max_gb=None), root=root, load_model=Loader())  # null: no limit
    assert len(namespaces(cache_root)) == 2


def test_rows_rejected_by_normalize_are_reported_not_hidden(tmp_path, caplog):
    """Precision@1 is over the rows normalize kept; metrics/etl.json's source counts make the rejected
    ones visible (leaderboard num_data, eval.md's "#queries", eval.json rows.rejected), and a stale
    etl.json (other counts than the records) is refused."""
    root = make_root(tmp_path)
    counts = {d: load_eval_set(root / evaluation.EVAL_ROOT, d).n_queries
              for d in ("CIRR", "Tiny-CLS", "Tiny-RET", "Tiny-VQA")}
    etl = {"datasets": {f"eval/{d}": {"rows_in": n + (3 if d == "CIRR" else 0), "accepted": n,
                                        "rejected": 3 if d == "CIRR" else 0} for d, n in counts.items()}}
    (root / "metrics").mkdir()
    (root / evaluation.ETL_FILE).write_text(json.dumps(etl))
    with caplog.at_level("WARNING"):
        evaluation.evaluate(PARAMS, root=root, load_model=Loader())
    assert "eval/CIRR: 3 of 10 source rows were rejected" in caplog.text
    board = json.loads((root / evaluation.LEADERBOARD_FILE).read_text())["models"]["embedder"]
    assert board["metrics"]["image"]["CIRR"] == dict(board["metrics"]["image"]["CIRR"], num_pred=7, num_data=10)
    assert board["metrics"]["image"]["Tiny-VQA"]["num_data"] == counts["Tiny-VQA"]
    assert board["num_datasets"] == {"Overall": 4, "IND": 3, "OOD": 1, "Classification": 1, "VQA": 1, "Retrieval": 2}
    metrics = json.loads((root / evaluation.METRICS_FILE).read_text())
    assert metrics["base"]["rows"] == {"scored": sum(counts.values()), "rejected": 3}
    md = (root / evaluation.REPORT_FILE).read_text()
    assert "3 eval rows were rejected" in md
    assert next(line for line in md.splitlines() if line.startswith("| CIRR | retrieval")).endswith("| 7 of 10 | 3 |")

    etl["datasets"]["eval/Tiny-CLS"]["accepted"] += 1  # from another run
    (root / evaluation.ETL_FILE).write_text(json.dumps(etl))
    with pytest.raises(ValueError, match="eval/Tiny-CLS.*from another run"):
        evaluation.evaluate(PARAMS, root=root, load_model=Loader())
    (root / evaluation.ETL_FILE).unlink()  # hand-made data without the file: scored, counts unknown
    evaluation.evaluate(PARAMS, root=root, load_model=Loader())
    board = json.loads((root / evaluation.LEADERBOARD_FILE).read_text())["models"]["embedder"]
    assert board["metrics"]["image"]["CIRR"]["num_data"] == 7
    assert json.loads((root / evaluation.METRICS_FILE).read_text())["base"]["rows"]["rejected"] == 0


class SizeRecorder(HashEncoder):
    """A stand-in with an EmbeddingModel's `collation`: records the largest image it was given."""

    def __init__(self, collation: dict | None, name: str):
        super().__init__(name=name)
        if collation is not None:
            self.collation = collation
        self.largest = 0

    def vector(self, s, img):
        if img is not None:
            self.largest = max(self.largest, img.width * img.height)
        return super().vector(s, img)


def test_each_model_is_scored_with_its_own_rendering(tmp_path):
    """eval.rendering_from: model: a model that carries its rendering (a released checkpoint's
    lineage) gets its own image pre-scale and cache settings, the report lists each model's."""
    root = make_root(tmp_path)
    own = {"image_max_pixels": 20, "positions": "sequential", "stray_image_token": "keep",
           "image_resize": "collator", "image_square": None, "small_image_side": None}
    encoders = {"base": SizeRecorder(None, "base"), "embedder": SizeRecorder(own, "embedder")}
    params = eval_params(rendering_from="model", image_max_pixels=400, cache=False)
    evaluation.evaluate(params, root=root, load_model=lambda name, path, p: encoders[name])
    assert 0 < encoders["embedder"].largest <= 20 < encoders["base"].largest <= 400
    board = json.loads((root / evaluation.LEADERBOARD_FILE).read_text())
    # keys the lineage lacks had their defaults then
    lineage_time = {"prompt": "vlm2vec", "video_max_pixels": None}
    assert board["models"]["embedder"]["metadata"]["rendering"] == {**own, **lineage_time}
    assert board["models"]["base"]["metadata"]["rendering"]["positions"] == "grid"  # the params'
    text = (root / evaluation.REPORT_FILE).read_text()
    assert "Input rendering per model" in text
    assert "| `positions` | grid | sequential |" in text
