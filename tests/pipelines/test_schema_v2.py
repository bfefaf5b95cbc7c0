"""The MMEB-V2 parquet schemas of pipelines/schema.py: queries, corpus, graded relevance, videos."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.v2_inputs import PLACEHOLDERS, video_candidate, visdoc_query


def frame(i: int) -> dict:
    return {"sha256": f"{i:064x}", "path": f"video7020/frame_{i:04d}.jpg", "width": 32, "height": 24}


def test_v1_record_schema_is_untouched():
    assert schema.RECORD_SCHEMA.names == ["id", "dataset", "split", "meta_task", "distribution", "instruction",
                                          "query", "target", "negatives"]
    assert "video" not in schema.SIDE.names


def test_v2_queries_and_corpus_round_trip(tmp_path):
    query = {
        "id": "MSR-VTT/test/0", "dataset": "MSR-VTT", "split": "test", "modality": "video", "meta_task": "V-RET",
        "eval_type": "global", "query_id": "0",
        "query": {"raw": visdoc_query("vidore", "q", PLACEHOLDERS), "image": None, "video": None,
                  "frames_available": None},
        "candidates": [], "relevant": [{"candidate_id": "video7020", "grade": 1.0}],
    }
    corpus = {"dataset": "MSR-VTT", "candidate_id": "video7020",
              "candidate": {"raw": video_candidate(PLACEHOLDERS), "image": None,
                            "video": [frame(i) for i in (0, 9, 18)], "frames_available": 64}}
    pq.write_table(pa.Table.from_pylist([query], schema.V2_QUERY_SCHEMA), tmp_path / "queries.parquet")
    pq.write_table(pa.Table.from_pylist([corpus], schema.V2_CORPUS_SCHEMA), tmp_path / "corpus.parquet")
    assert pq.read_table(tmp_path / "queries.parquet").to_pylist() == [query]
    back = pq.read_table(tmp_path / "corpus.parquet").to_pylist()[0]
    assert back["candidate"]["raw"] == f"{schema.VIDEO_TOKEN} Understand the content of the provided video."
    assert [f["path"] for f in back["candidate"]["video"]] == [frame(i)["path"] for i in (0, 9, 18)]
