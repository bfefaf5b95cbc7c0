"""Tests for pipelines/sources/beir.py: reading a BEIR visual-document set and counting bad input."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import StageFailed
from pipelines.sources.beir import read_beir, require_queries
from pipelines.sources.synthetic.visdoc import write_visdoc
from tests.support.images import image_bytes


def write(folder, config, rows: dict):
    path = folder / config / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


@pytest.fixture
def bad_set(tmp_path):
    png = image_bytes(fmt="PNG")
    page = {"bytes": png, "path": "p.png"}
    write(tmp_path, "corpus", {
        "corpus-id": [1, 2, 3, 3, 4, 5],
        "image": [page, page, page, page, {"bytes": b"not an image", "path": "x"}, {"bytes": None, "path": "y"}],
    })
    write(tmp_path, "queries", {
        "query-id": [1, 2, 2, 3, 4, 5, 6],
        "query": ["q1", "q2", "q2 again", "q3", "q4", "q5", "q6"],
        "language": ["en", "en", "en", "en", "en", "en", "fr"],
    })
    write(tmp_path, "qrels", {
        "query-id": [1, 1, 1, 1, 2, 4, 5, 7, 6],
        "corpus-id": [1, 2, 1, 5, 3, 9, 4, 1, 2],
        "score": [2, 1, 1, 0, 1, 1, 1, 1, 1],
    })
    return tmp_path


def test_bad_rows_are_rejected_with_their_reason_and_counted(bad_set):
    stored = []
    docset = read_beir(bad_set, store=stored.append)
    assert docset.queries == [("1", "q1"), ("2", "q2"), ("6", "q6")]
    assert docset.relevant["1"] == [("1", 2), ("2", 1)]  # the highest grade of a repeated pair, score 0 dropped
    assert list(docset.pages) == ["1", "2", "3"] and len(stored) == 3
    reasons = {(r.table, r.id): r.reason for r in docset.rejects}
    assert reasons == {
        ("corpus", "3"): "duplicate_corpus_id", ("corpus", "4"): "image_undecodable", ("corpus", "5"): "image_missing",
        ("queries", "2"): "duplicate_query_id", ("queries", "3"): "no_positive", ("queries", "4"): "no_positive",
        ("queries", "5"): "no_positive", ("qrels", "4/9"): "qrel_absent_corpus_id",
        ("qrels", "5/4"): "qrel_rejected_page", ("qrels", "7/1"): "qrel_unknown_query",
    }
    counts = docset.counts()
    assert counts["rows_in"] == {"corpus": 6, "queries": 7, "qrels": 9}
    assert counts["rejected_by_reason"]["queries/no_positive"] == 3 and counts["id_type"] == "int"


def test_id_type_is_int_only_when_every_corpus_id_is(bad_set):
    assert read_beir(bad_set).id_type == "int"
    write(bad_set, "qrels", {"query-id": [1], "corpus-id": ["1"], "score": [1]})  # one string label
    assert read_beir(bad_set).id_type == "str"
    write(bad_set, "qrels", {"query-id": ["q1"], "corpus-id": [1], "score": [1]})  # query ids do not count
    write(bad_set, "queries", {"query-id": ["q1"], "query": ["x"], "language": ["en"]})
    assert read_beir(bad_set).id_type == "int"
    write(bad_set, "corpus", {"corpus-id": ["a.png"], "image": [{"bytes": image_bytes(fmt="PNG"), "path": "a"}]})
    assert read_beir(bad_set).id_type == "str"  # VisRAG's file names


def test_a_language_filter_counts_what_it_leaves_out(bad_set):
    docset = read_beir(bad_set, language="en")
    assert [q for q, _ in docset.queries] == ["1", "2"] and docset.filtered_language == 1


def test_a_short_dataset_fails_the_stage_naming_it(tmp_path):
    require_queries("ViDoRe_docvqa", 451, 451)
    with pytest.raises(StageFailed, match="ViDoRe_docvqa: 139 queries of the 451 expected"):
        require_queries("ViDoRe_docvqa", 139, 451)
    with pytest.raises(FileNotFoundError, match="not a BEIR set"):
        read_beir(tmp_path)


def test_the_synthetic_set_reads_clean(tmp_path):
    counts = write_visdoc(tmp_path / "s", seed=0, size=48)
    docset = read_beir(tmp_path / "s")
    assert docset.rejects == [] and len(docset.queries) == counts["queries"] and len(docset.pages) == counts["corpus"]
    assert sum(len(v) for v in docset.relevant.values()) == counts["qrels"]
