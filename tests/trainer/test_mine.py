"""Hard-negative mining (trainer.mine): retrieval order, the false-negative filter and its reasons,
the random control, the accounted bad inputs, the embedder/base check and byte-determinism."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.errors import StageFailed
from pipelines.params import ParamsError
from tests.support.encoders import CountingEncoder
from tests.support.eval_sets import record_side, write_records
from tests.support.params import section
from trainer.mine import EncodeSettings, MinePaths, filter_candidates, mine

# query "alpha" scores its candidates: A 1.0 (its positive), A2 0.99 (the positive of another "alpha"
# record), B 0.97 (above 0.95 x 1.0), C 0.5, E 0.3, D 0.2; every other query scores every target 0
SCORES = {"A": 1.0, "A2": 0.99, "B": 0.97, "C": 0.5, "E": 0.3, "D": 0.2}
ROWS = [("alpha", "A"), ("beta", "B"), ("gamma", "C"), ("alpha", "A2"), ("delta", "A"), ("eps", "E"), ("zeta", "D")]


class PlantedEncoder:
    """Queries and targets as planted unit vectors: "alpha" is e0, a target t is SCORES[t] e0 + ... e1,
    any other query e2."""

    fingerprint = "planted"

    def encode(self, sides, images, batch_size=8):
        out = []
        for s in sides:
            text = s["text"]
            if text in SCORES:
                out.append([SCORES[text], math.sqrt(max(0.0, 1 - SCORES[text] ** 2)), 0.0])
            else:
                out.append([1.0, 0.0, 0.0] if text == "alpha" else [0.0, 0.0, 1.0])
        return np.array(out, np.float32)


def write_layout(root: Path, rows=ROWS, dataset: str = "Syn-A", base_info: dict | None = None) -> MinePaths:
    records = root / "train"
    write_records(records, dataset, "retrieval", "IND",
                  [(record_side(q), [record_side(t) if t is not None else record_side("")]) for q, t in rows])
    (root / "images").mkdir(exist_ok=True)
    for folder, info in ((root / "base", {"name": "tiny"}), (root / "embedder" / "merged", base_info or {"name": "tiny"})):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "backbone.json").write_text(json.dumps({"family": "qwen2_vl", "info": info}))
    return MinePaths(records=records, images=root / "images", model=root / "embedder", base=root / "base",
                     out=root / "mined", metrics=root / "mine.json")


def settings(root: Path, cache: bool = True) -> EncodeSettings:
    return EncodeSettings(batch_size=4, image_max_pixels=None, precision="fp32", cache=cache,
                          cache_dir=root / "cache")


def run(root: Path, paths: MinePaths, encoder=None, **params) -> tuple[dict, list[dict]]:
    encoder = encoder or PlantedEncoder()
    report = mine(section("mine", **params), settings(root), paths, load=lambda path, s: encoder)
    return report, pq.read_table(paths.out / "Syn-A.parquet").to_pylist()


def test_filter_drops_the_positive_listed_positives_and_near_ties_in_rank_order():
    params = section("mine", top_k=2, max_score_ratio=0.95)
    ranked = [(0, 1.0), (1, 0.99), (2, 0.97), (3, 0.5), (4, 0.3), (5, 0.2)]
    choice = filter_candidates(ranked, positive=0, listed={1}, positive_score=1.0, params=params)
    assert choice.kept == [(3, 0.5), (4, 0.3)]  # top_k reached: 5 is never looked at
    assert choice.dropped == [(0, 1.0, "positive"), (1, 0.99, "listed_positive"), (2, 0.97, "score_ratio")]
    loose = filter_candidates(ranked, 0, {1}, 1.0, replace(params, max_score_ratio=1.5))
    assert loose.kept == [(2, 0.97), (3, 0.5)]
    off = filter_candidates(ranked, 0, {1}, 1.0, replace(params, max_score_ratio=None))  # null: the rule is off
    assert off.kept == loose.kept and [d[2] for d in off.dropped] == ["positive", "listed_positive"]


def test_mined_negatives_and_metrics(tmp_path):
    paths = write_layout(tmp_path)
    report, rows = run(tmp_path, paths, top_k=2, max_score_ratio=0.95)
    r0 = rows[0]
    # pool: A (named by record 0, also record 4's target), B, C, A2, E, D
    assert r0["negative_ids"] == ["Syn-A/test/2", "Syn-A/test/5"]  # C, E
    assert r0["negative_scores"] == pytest.approx([0.5, 0.3], abs=1e-6)
    assert r0["dropped_ids"] == ["Syn-A/test/0", "Syn-A/test/3", "Syn-A/test/1"]
    assert r0["dropped_reasons"] == ["positive", "listed_positive", "score_ratio"]
    assert r0["positive_score"] == pytest.approx(1.0) and r0["status"] == "ok"
    # A2's record: A (ranked first) is listed for it, then its own positive, then B above 0.95 x 0.99
    assert rows[3]["dropped_reasons"] == ["listed_positive", "positive", "score_ratio"]
    entry = report["datasets"]["Syn-A"]
    assert entry["queries"] == 7 and entry["candidates"] == 6 and entry["kept"] == 14
    assert entry["dropped"]["listed_positive"] == 2 and entry["status"]["ok"] == 7
    assert json.loads(paths.metrics.read_text()) == report
    _, shallow = run(tmp_path, paths, top_k=2, depth=2)  # alpha's best two are its positives: nothing else is seen
    assert shallow[0]["status"] == "all_filtered" and shallow[0]["dropped_reasons"] == ["positive", "listed_positive"]


def test_depth_below_top_k_is_refused():
    with pytest.raises(ParamsError, match="depth 2 must be at least top_k 3"):
        section("mine", top_k=3, depth=2)


def test_a_small_pool_all_filtered_queries_and_records_without_target_are_accounted(tmp_path, caplog):
    paths = write_layout(tmp_path, rows=ROWS + [("eta", None)])
    report, rows = run(tmp_path, paths, top_k=10, max_score_ratio=0.01)
    entry = report["datasets"]["Syn-A"]
    assert entry["short_pool"] and "fewer than mine.top_k=10" in caplog.text
    assert [r["status"] for r in rows[:2]] == ["all_filtered", "short"]  # alpha: everything is above 0.01
    assert rows[0]["negative_ids"] == [] and len(rows[0]["dropped_ids"]) == 6
    assert rows[-1]["status"] == "no_target" and math.isnan(rows[-1]["positive_score"])
    assert entry["status"] == {"ok": 0, "short": 5, "all_filtered": 2, "no_target": 1}
    assert entry["queries"] == 8 and "1 records without a target" in caplog.text


def test_random_negatives_are_seeded_and_never_positives(tmp_path):
    paths = write_layout(tmp_path)
    _, rows = run(tmp_path, paths, top_k=3, negatives="random", seed=1)
    _, again = run(tmp_path, paths, top_k=3, negatives="random", seed=1)
    _, other = run(tmp_path, paths, top_k=3, negatives="random", seed=2)
    assert rows == again and rows != other
    for row in rows:
        assert len(row["negative_ids"]) == 3 and row["dropped_ids"] == []
    assert not {"Syn-A/test/0", "Syn-A/test/3"} & set(rows[0]["negative_ids"])  # A and A2 are alpha's


def test_outputs_are_byte_identical_and_a_rerun_encodes_nothing(tmp_path):
    paths = write_layout(tmp_path)
    counting = CountingEncoder(PlantedEncoder())
    run(tmp_path, paths, counting, top_k=2)
    first = {p.name: p.read_bytes() for p in [*paths.out.iterdir(), paths.metrics]}
    assert counting.encoded == 12  # 6 distinct queries, 6 distinct targets: each item once
    run(tmp_path, paths, counting, top_k=2)
    assert counting.encoded == 12  # the embedding cache served every item
    assert {p.name: p.read_bytes() for p in [*paths.out.iterdir(), paths.metrics]} == first


def test_an_embedder_of_another_base_is_refused(tmp_path):
    paths = write_layout(tmp_path, base_info={"name": "tiny", "seed": 7})
    with pytest.raises(StageFailed, match=r"does not match the base model .*info.seed"):
        run(tmp_path, paths)
    (paths.model / "merged" / "backbone.json").unlink()
    with pytest.raises(StageFailed, match="run the train stage"):
        run(tmp_path, paths)


def test_mmeb_v2_training_pairs_are_skipped_and_counted(tmp_path, caplog):
    """Datasets of MMEB-V2 page and video pairs are left unmined, each with its reason in the metrics."""
    import shutil

    from tests.support.v2_train import DOC, VIDEO_CAPTION, VIDEO_RETRIEVAL, build_v2_train

    paths = write_layout(tmp_path)
    v2_train, _ = build_v2_train(tmp_path / "v2", v1=False)
    for d in (DOC, VIDEO_CAPTION, VIDEO_RETRIEVAL):
        shutil.copytree(v2_train / d, paths.records / d)
    report, rows = run(tmp_path, paths, top_k=2)
    assert report["skipped"] == {d: "v2_train_schema" for d in (DOC, VIDEO_CAPTION, VIDEO_RETRIEVAL)}
    assert report["total"]["skipped"] == 3 and list(report["datasets"]) == ["Syn-A"] and len(rows) == 7
    assert sorted(p.name for p in paths.out.iterdir()) == ["Syn-A.parquet"]
    assert f"{VIDEO_CAPTION}: MMEB-V2 training pairs (video / visual documents) are not mined" in caplog.text
