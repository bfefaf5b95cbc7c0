"""Stray `<|image_1|>` placeholders counted per dataset, with the rule in force, in metrics/eval.json."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pipelines.schema import IMAGE_TOKEN
from tests.support.encoders import CountingEncoder, HashEncoder, OverlapEncoder
from tests.support.eval_sets import build_tiny_eval, eval_params, record_side, write_records
from trainer.eval import evaluate as evaluation
from trainer.eval import report, stray
from trainer.eval.protocol import load_eval_set


def stray_side(text: str) -> dict:
    side = record_side(text)
    return {**side, "raw": f"{IMAGE_TOKEN}\n{text}"}


def write_webqa(eval_root, n: int = 4) -> None:
    """Rows 0 and 2 have a stray query; row 1 has a stray negative (twice: two slots, one item)."""
    rows = []
    for i in range(n):
        query = stray_side(f"who is {i}") if i % 2 == 0 else record_side(f"who is {i}")
        cands = [record_side(f"answer {i}"), record_side(f"other {i}")]
        if i == 1:
            cands += [stray_side("a photo"), stray_side("a photo")]
        rows.append((query, cands))
    write_records(eval_root, "WebQA", "retrieval", "IND", rows)


def ruled(encoder, rule: str, kind: str = "vlm"):
    encoder.collator = SimpleNamespace(stray_image_token=rule, format=SimpleNamespace(kind=kind))
    return encoder


def test_counts_rows_and_slots_with_a_stray_placeholder(tmp_path):
    write_webqa(tmp_path)
    es = load_eval_set(tmp_path, "WebQA")
    assert stray.counts([es], "keep") == {"rule": "keep", "dataset": {"WebQA": {"queries": 2, "candidates": 2}}}
    assert not stray.is_stray(record_side("x", image="ab" * 32) | {"raw": f"{IMAGE_TOKEN}\nx"})  # has its image
    assert stray.rule_of(ruled(HashEncoder(), "keep")) == "keep"
    assert stray.rule_of(ruled(HashEncoder(), "keep", kind="dual")) == "strip"  # its text holds no image token
    assert stray.rule_of(HashEncoder()) is None
    assert stray.rule_of(CountingEncoder(ruled(HashEncoder(), "keep"))) == "keep"  # a wrapper answers for it


def test_eval_json_reports_them_per_model_beside_the_existing_keys(tmp_path):
    root = tmp_path / "proj"
    paths = build_tiny_eval(tmp_path / "build")
    eval_root = root / "data/normalized/eval"
    import shutil
    shutil.copytree(paths["eval"], eval_root)
    shutil.copytree(paths["images"], root / "data/normalized/images")
    write_webqa(eval_root)
    for m in ("base", "embedder"):
        (root / "models" / m).mkdir(parents=True)
    kinds = {"base": lambda name: ruled(HashEncoder(name=name), "strip"),
             "embedder": lambda name: ruled(OverlapEncoder(name=name), "keep")}
    evals = evaluation.evaluate(eval_params(), root=root, load_model=lambda name, path, p: kinds[name](name))
    metrics = json.loads((root / evaluation.METRICS_FILE).read_text())
    assert metrics["embedder"]["stray_image_token"] == {"rule": "keep",
                                                        "dataset": {"WebQA": {"queries": 2, "candidates": 2}}}
    assert metrics["base"]["stray_image_token"]["rule"] == "strip"
    without = {m: {k: v for k, v in e.items() if k != "stray_image_token"} for m, e in metrics.items()}
    assert without == json.loads(json.dumps(report.metrics_document(evals)))  # the other keys as before
