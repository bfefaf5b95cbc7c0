"""The synthetic video families (pipelines/sources/synthetic/video_families.py) through normalize_v2
and evaluate_v2: rows, exact inputs, relevant ids, determinism, and scores from a stand-in encoder."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from pipelines import imagestore, mmeb_v2
from pipelines.errors import StageFailed
from pipelines.normalize_v2 import normalize_v2
from pipelines.schema import V2_CORPUS_SCHEMA, V2_QUERY_SCHEMA
from pipelines.sources.synthetic import video_families as vf
from tests.support.encoders import HashEncoder, OverlapEncoder
from tests.support.params import section
from trainer.eval import evaluate_v2
from trainer.eval.protocol import ImageLoader

SMALL = {"frames": 4, "size": 16}  # a tiny set; the sets' default sizes are the registry's counts
QA_PREFIX = ("<|video_1|> Given a video and a question, select the most accurate answer from the provided "
             "candidates. Return only the exact text of your chosen answer. Question:  ")


def build(tmp_path, frames_per_video=8, **sizes):
    raw = tmp_path / "raw"
    for writer in vf.WRITERS.values():
        writer(raw / "MMEB-V2", seed=0, **sizes)
    counts = normalize_v2(raw, tmp_path / "norm", tmp_path / "rejects",
                          section("normalize", workers=1, frames_per_video=frames_per_video))
    return counts, tmp_path / "norm" / "eval_v2"


def rows(out, name, table="queries"):
    return pq.read_table(out / name / f"{table}.parquet").to_pylist()


def test_default_sizes_are_the_registry_counts(tmp_path):
    counts, out = build(tmp_path, **SMALL)
    for name in vf.WRITERS:
        task = mmeb_v2.SYNTHETIC[name]
        assert counts[name]["queries"] == counts[name]["expected"] == task.num_data
        assert counts[name]["rejected"] == 0 and counts[name]["eval_type"] == task.eval_type
        assert pq.read_schema(out / name / "queries.parquet").equals(V2_QUERY_SCHEMA)
        assert pq.read_schema(out / name / "corpus.parquet").equals(V2_CORPUS_SCHEMA)
        assert json.loads((out / name / "dataset.json").read_text())["meta_task"] == task.meta_task


def test_inputs_and_relevance_per_family(tmp_path):
    counts, out = build(tmp_path, **SMALL)
    ret = rows(out, vf.RET)
    assert ret[0]["query"]["raw"].startswith("Find a video that contains the following visual content: a ")
    assert ret[0]["query"]["video"] is None and ret[0]["candidates"] == []
    assert [q["relevant"][0]["candidate_id"] for q in ret] == [f"video{v}" for v in range(7)]
    corpus = rows(out, vf.RET, "corpus")
    assert corpus[0]["candidate"]["raw"] == "<|video_1|> Understand the content of the provided video."
    assert [len(c["candidate"]["video"]) for c in corpus] == [4] * 7  # a folder of 4 frames: all kept
    assert counts[vf.RET]["short_videos"] == 7

    qa = rows(out, vf.QA)[0]
    options = qa["candidates"]
    assert qa["query"]["raw"] == QA_PREFIX + vf.QUESTION + "\n" + "\n".join(options)
    gold = next(o for o in options if o.endswith(" Moving left."))  # video 0 moves left
    assert [o[:3] for o in options] == ["A. ", "B. ", "C. ", "D. "]
    assert qa["relevant"] == [{"candidate_id": gold, "grade": 1.0}]
    texts = {c["candidate_id"]: c["candidate"]["raw"] for c in rows(out, vf.QA, "corpus")}
    assert texts[gold] == "Moving left"  # Video-MME's option strip

    mc = rows(out, vf.MC)[0]
    assert mc["query"]["raw"] == ("<|video_1|> What actions or object interactions are being performed by the "
                                  "person in the video?")
    assert mc["candidates"] == list(vf.MC_LABELS.values()) and mc["relevant"][0]["candidate_id"] == vf.MC_LABELS[
        "moving_left"]

    moment = rows(out, vf.MOMENT)[0]
    folder = "video-tasks/frames/video_mret/Syn-MomentRET/moment0"
    assert moment["query"]["raw"].startswith("<|video_1|> Find the clip that corresponds to the described scene "
                                             "in the given video: the ")
    assert moment["candidates"] == [f"{folder}/negative_0", f"{folder}/negative_1", f"{folder}/positive"]
    assert moment["relevant"] == [{"candidate_id": f"{folder}/positive", "grade": 1.0}]
    assert moment["query"]["frames_available"] == 12 and len(moment["query"]["video"]) == 8

    seeker = rows(out, vf.SEEKER)
    clips = [f"video-tasks/frames/video_mret/Syn-MomentSeeker/video_frames/clips_ms0_{k}" for k in ("pos", "neg")]
    assert [q["query"]["raw"].split(":")[0] for q in seeker] == [
        "<|video_1|> Find the clip that corresponds to the given sentence and video segment",
        "<|image_1|> Select the video clip that aligns with the given text and image",
        "Find the clip that corresponds to the given text"]
    assert seeker[0]["candidates"] == clips and seeker[0]["relevant"] == [{"candidate_id": clips[0], "grade": 1.0}]
    assert len(seeker[0]["query"]["video"]) == 4 and seeker[1]["query"]["image"]["path"].endswith("/query_ms1.jpg")


def test_same_seed_same_bytes(tmp_path):
    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    for run in ("a", "b"):
        for writer in vf.WRITERS.values():
            writer(tmp_path / run, seed=3, videos=2, frames=3, size=16)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


@pytest.mark.parametrize("name", [vf.RET, vf.QA])
def test_evaluate_v2_scores_the_family(tmp_path, name):
    _, out = build(tmp_path, frames=9, size=32)
    imagestore.merge(tmp_path / "norm" / "images")
    pool = evaluate_v2.load_v2_pool(out, [name])
    images = ImageLoader(tmp_path / "norm" / "images")
    scores = {m.fingerprint: evaluate_v2.score_v2(m.fingerprint, m, pool, batch_size=8, images=images,
                                                  cache=None)[name] for m in (HashEncoder(), OverlapEncoder())}
    for s in scores.values():
        assert s["num_pred"] == s["num_data"] == mmeb_v2.SYNTHETIC[name].num_data
        assert 0 <= s["hit@1"] <= s["hit@5"] <= 1
    if name == vf.QA:  # four options a query: hit@5 is certain
        assert all(s["hit@5"] == 1.0 for s in scores.values())
    summary = evaluate_v2.summary({name: scores["fake-overlap-32"]}, {})
    meta = mmeb_v2.SYNTHETIC[name].meta_task
    assert summary["synthetic_aggregate"]["meta"][meta]["tasks"] == 1 and summary["aggregate"]["overall"]["tasks"] == 0


def test_download_inventory_counts_the_families(tmp_path):
    from pipelines.download_v2 import inventory

    for writer in vf.WRITERS.values():
        writer(tmp_path, seed=0, **SMALL)
    found = inventory(tmp_path, {vf.QA: 6})
    assert {n: (d["found"], d["expected"]) for n, d in found.items()} == {
        n: (mmeb_v2.SYNTHETIC[n].num_data,) * 2 for n in vf.WRITERS}
    (tmp_path / vf.RET / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(StageFailed, match=f"MMEB-V2 dataset {vf.RET}: no test-"):
        inventory(tmp_path)
