"""Tests for pipelines/sources/synthetic/visdoc.py: the synthetic ViDoRe set in the BEIR layout."""

from __future__ import annotations

import hashlib
import io
import random

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.sources.synthetic.visdoc import plan_pages, plan_queries, write_visdoc


def read(out, config):
    return pq.read_table(out / config / "test-00000-of-00001.parquet").to_pylist()


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_beir_layout_graded_qrels_and_one_answering_page(tmp_path):
    counts = write_visdoc(tmp_path / "a", seed=3, docs=3, pages=2, asked_docs=2, size=64)
    out = tmp_path / "a"
    queries, corpus, qrels = read(out, "queries"), read(out, "corpus"), read(out, "qrels")
    assert counts == {"queries": 4, "corpus": 6, "qrels": 8}
    assert [sorted(r) for r in (queries[0], corpus[0], qrels[0])] == [
        ["query", "query-id"], ["corpus-id", "image"], ["corpus-id", "query-id", "score"]]
    ids = {c["corpus-id"] for c in corpus}
    assert all(r["corpus-id"] in ids for r in qrels)
    for q in queries:
        grades = sorted(r["score"] for r in qrels if r["query-id"] == q["query-id"])
        assert grades == [1, 2]  # the answering page and the other page of its report
    page = Image.open(io.BytesIO(corpus[0]["image"]["bytes"]))
    assert page.format == "PNG" and page.size == (64, 83)
    assert "configs:" in (out / "README.md").read_text()


def test_the_query_names_an_item_printed_only_on_its_page():
    rng = random.Random(0)
    pages = plan_pages(rng, docs=4, pages=3)
    items = [item for p in pages for item, _ in p.items]
    assert len(items) == len(set(items)) == 36
    for _, text, answer in plan_queries(rng, pages, asked_docs=3):
        named = [p for p in pages if any(item in text for item, _ in p.items)]
        assert named == [answer] and answer.topic in text


def test_deterministic_bytes_and_limits(tmp_path):
    write_visdoc(tmp_path / "a", seed=1, size=48)
    write_visdoc(tmp_path / "b", seed=1, size=48)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    write_visdoc(tmp_path / "c", seed=2, size=48)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    with pytest.raises(ValueError, match="at most"):
        write_visdoc(tmp_path / "d", docs=9)
    with pytest.raises(ValueError, match="asked_docs"):
        write_visdoc(tmp_path / "d", docs=2, asked_docs=3)


def test_hugging_face_datasets_reads_the_three_configs(tmp_path):
    from datasets import load_dataset

    write_visdoc(tmp_path / "Syn-ViDoRe", seed=0, docs=2, pages=2, asked_docs=1, size=48)
    corpus = load_dataset(str(tmp_path / "Syn-ViDoRe"), "corpus", split="test", cache_dir=str(tmp_path / "cache"))
    assert corpus.features["image"].__class__.__name__ == "Image"
    assert corpus[0]["image"].size == (48, 62)
    qrels = load_dataset(str(tmp_path / "Syn-ViDoRe"), "qrels", split="test", cache_dir=str(tmp_path / "cache"))
    assert qrels.column_names == ["query-id", "corpus-id", "score"] and len(qrels) == 4  # 2 queries x 2 pages
