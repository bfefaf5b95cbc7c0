"""benchmarks/eval_projection.py: the MMEB evaluation time from measured throughput and item counts."""

import json

import pytest

from benchmarks import eval_projection
from trainer.eval.protocol import load_eval_set
from tests.support.eval_sets import build_tiny_eval


def encode_json(path, rows):
    path.write_text(json.dumps(dict(meta=dict(device="test card"), rows=rows)))
    return path


ROWS = [dict(cls="v1-image", path="plain", items_per_s=10.0, status="ok"),
        dict(cls="v1-image", path="ours", items_per_s=20.0, status="ok"),
        dict(cls="v1-image", path="evaluate", items_per_s=16.0, status="ok"),
        dict(cls="v1-image", path="ours+region", items_per_s=25.0, compile_s=30.0, status="ok"),
        dict(cls="v1-text", path="plain", items_per_s=100.0, status="ok"),
        dict(cls="v1-text", path="ours", items_per_s=200.0, status="ok"),
        dict(cls="v2-page", path="ours", items_per_s=5.0, status="ok"),
        dict(cls="v2-video", path="ours", items_per_s=4.0, status="ok"),
        dict(cls="v2-video", path="evaluate", status="not applicable (prebuilt video tensors: no collation)")]


def test_projection_adds_each_class_items_over_its_throughput(tmp_path):
    items = tmp_path / "items.json"
    items.write_text(json.dumps(dict(
        v1={"A": dict(queries={"class": "v1-image", "count": 100},
                      candidates={"class": "v1-text", "low": 200, "high": 400, "basis": "unknown"})},
        v2={"B": dict(queries={"class": "v1-text", "count": 40},
                      candidates={"class": "v2-video", "low": 80, "high": 80, "basis": "known"})})))
    out = tmp_path / "projection.json"
    assert eval_projection.main(["--encode", str(encode_json(tmp_path / "e.json", ROWS)), "--items", str(items),
                                 "--path", "evaluate", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    # evaluate where measured, else the fastest of the project's paths of the class (never plain)
    assert r["path_by_class"] == {"v1-image": "evaluate", "v1-text": "ours", "v2-page": "ours", "v2-video": "ours"}
    assert r["v1"]["low"]["total_s"] == pytest.approx(100 / 16 + 200 / 200, abs=0.1)
    assert r["v1"]["high"]["total_s"] == pytest.approx(100 / 16 + 400 / 200, abs=0.1)
    assert r["v2"]["low"]["total_s"] == r["v2"]["high"]["total_s"] == pytest.approx(40 / 200 + 80 / 4, abs=0.1)
    best = eval_projection.rates(json.loads((tmp_path / "e.json").read_text()), "best")
    assert best[0]["v1-image"] == 25.0 and best[2] == 30.0  # the compiled path, its compilation paid once


def test_the_shipped_items_cover_mmeb_and_counting_reads_normalized_records(tmp_path):
    table = json.loads(eval_projection.ITEMS.read_text())
    assert len(table["v1"]) == 36 and len(table["v2"]) == 78
    for entry in [*table["v1"].values(), *table["v2"].values()]:
        low, high = eval_projection.dataset_items(entry)
        assert all(0 < low[c] <= high[c] for c in low) and entry["candidates"]["basis"]
    eval_root = build_tiny_eval(tmp_path)["eval"]
    counted = eval_projection.counted_items(eval_root)
    for name, entry in counted.items():
        es = load_eval_set(eval_root, name)
        assert sum(entry["counted"].values()) == es.dedup_encodings
    assert counted["Tiny-CLS"]["counted"] == {"v1-image": load_eval_set(eval_root, "Tiny-CLS").distinct_queries,
                                              "v1-text": 4}
