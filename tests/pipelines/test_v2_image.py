"""MMEB-V2's image tasks in normalize_v2 (pipelines/sources/v2_image.py): hand-written rows of registry
tasks in MMEB-eval's columns (VLM2Vec's exact strings, candidate ids, rejects) and the synthetic
image stand-ins (pipelines/sources/synthetic/image_v2.py) through normalize_v2 and evaluate_v2."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import imagestore, mmeb_v2
from pipelines.normalize_v2 import normalize_v2
from pipelines.sources.synthetic.image_v2 import CLS, T2I, VG, write_image_v2
from tests.support.encoders import OverlapEncoder
from tests.support.params import section
from trainer.eval import evaluate_v2
from trainer.eval.protocol import ImageLoader

VQA = "<|image_1|>\nRepresent the given image with the following question: "
WEBQA_TGT = "<|image_1|>\nRepresent the given Wikipedia image with related text information: "
MATCH = "<|image_1|>\nSelect the portion of the image that follows the language expressions: "


def row(qry_inst="", qry_text="", qry_img_path="", tgt_inst="", tgt_text=(), tgt_img_path=()):
    return {"qry_inst": qry_inst, "qry_text": qry_text, "qry_img_path": qry_img_path, "tgt_inst": tgt_inst,
            "tgt_text": list(tgt_text), "tgt_img_path": list(tgt_img_path)}


def annotate(root, name, rows, in_config=True):
    folder = root / name / (name if in_config else "")  # the Hub repo's config folder, or the repo itself
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "test-00000-of-00001.parquet")


def images(root, *names):
    for i, name in enumerate(names):
        path = root / "image-tasks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (20 * i, 100, 50)).save(buf, "PNG")
        path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2image")
    root = tmp / "raw" / "MMEB-V2"
    images(root, "ok/q.jpg", "coco/q.jpg", "web/a.jpg", "web/b.jpg", "ref/q.jpg", "ref/a.jpg", "cirr/q.jpg",
           "cirr/b.jpg", "cirr/c.jpg")
    (root / "image-tasks/ok/broken.jpg").write_bytes(b"not an image")
    annotate(root, "OK-VQA", [row(VQA, "What is it?", "ok/q.jpg", "", ["cat", "dog"], ["", ""]),
                              row(VQA, "Where?", "ok/missing.jpg", "", ["here"], [""]),
                              row(VQA, "When?", "ok/broken.jpg", "", ["now"], [""]),
                              row(VQA, "Who?", "ok/q.jpg", "", [], [])])
    annotate(root, "MSCOCO_i2t", [row("<|image_1|>\nFind an image caption describing the given everyday image.", "",
                                      "coco/q.jpg", "", ["A dog runs.", "A cat sits."], ["", ""])], in_config=False)
    annotate(root, "WebQA", [row("<|image_1|>\nFind a Wikipedia image that answers this question: ", "Where?", "",
                                 WEBQA_TGT, ["Eiffel", "Louvre"], ["web/a.jpg", "web/b.jpg"]),
                             row("x", "y", "", WEBQA_TGT, ["Eiffel", "Louvre"], ["web/a.jpg"])])
    annotate(root, "VisDial", [row("Represent the given dialogue about an image, which is used for image retrieval:",
                                   "Q:a\nA:b", "", "<|image_1|>\nRepresent the given image.", ["", ""],
                                   ["web/b.jpg", "web/a.jpg"])])
    annotate(root, "RefCOCO-Matching", [row(MATCH, "the left dog", "ref/q.jpg", MATCH, ['"the left dog"', "the cat"],
                                            ["ref/a.jpg", "ref/a.jpg"])])
    annotate(root, "CIRR", [row("<|image_1|>\nGiven an image, find a similar everyday image with the described "
                                "changes: ", "make it red", "cirr/q.jpg", "<|image_1|>\nRepresent the given image.",
                                ["", ""], ["cirr/b.jpg", "cirr/c.jpg"])])
    counts = normalize_v2(tmp / "raw", tmp / "norm", tmp / "rejects", section("normalize", workers=1,
                                                                              frames_per_video=8))
    out = tmp / "norm" / "eval_v2"

    def read(name, table="queries"):
        return pq.read_table(out / name / f"{table}.parquet").to_pylist()

    return counts, read


def corpus(read, name):
    return {c["candidate_id"]: (c["candidate"]["raw"], (c["candidate"]["image"] or {}).get("path"))
            for c in read(name, "corpus")}


def test_text_candidate_families(normalized):
    counts, read = normalized
    ok = read("OK-VQA")
    assert len(ok) == 1 and ok[0]["eval_type"] == "local"
    assert ok[0]["query"]["raw"] == "<|image_1|>\nRepresent the given image with the following question: What is it?\n"
    assert ok[0]["query"]["image"]["path"] == "image-tasks/ok/q.jpg"
    assert ok[0]["candidates"] == ["cat", "dog"] and ok[0]["relevant"] == [{"candidate_id": "cat", "grade": 1.0}]
    assert corpus(read, "OK-VQA") == {"cat": ("cat", None), "dog": ("dog", None)}
    assert counts["OK-VQA"]["rejected_by_reason"] == {"queries/image_missing": 1, "queries/image_undecodable": 1,
                                                      "queries/no_candidates": 1}
    assert counts["OK-VQA"]["queries"] == 1 < counts["OK-VQA"]["expected"] == 1000
    coco = read("MSCOCO_i2t")[0]
    assert coco["query"]["raw"] == "<|image_1|>\nFind an image caption describing the given everyday image.\n"
    assert coco["candidates"] == ["A dog runs.", "A cat sits."]


def test_image_candidate_families(normalized):
    counts, read = normalized
    web = read("WebQA")
    assert web[0]["query"]["raw"] == "<|image_1|>\nFind a Wikipedia image that answers this question:  Where?\n"
    assert web[0]["query"]["image"] is None and web[0]["candidates"] == ["web/a.jpg", "web/b.jpg"]
    assert corpus(read, "WebQA")["web/b.jpg"] == (
        "<|image_1|>\nRepresent the given Wikipedia image with related text information:  Louvre\n",
        "image-tasks/web/b.jpg")
    assert counts["WebQA"]["rejected_by_reason"] == {"queries/candidate_lists_unequal": 1}
    visdial = read("VisDial")[0]
    assert visdial["query"]["raw"].endswith(": Q:a\nA:b\n\n") and visdial["relevant"][0]["candidate_id"] == "web/b.jpg"
    assert set(corpus(read, "VisDial").values()) == {("<|image_1|>\nRepresent the given image.\n",
                                                      "image-tasks/web/b.jpg"),
                                                     ("<|image_1|>\nRepresent the given image.\n",
                                                      "image-tasks/web/a.jpg")}
    ref = read("RefCOCO-Matching")[0]
    assert ref["query"]["raw"] == ("<|image_1|>\nSelect the portion of the image that follows the language "
                                   "expressions: the left dog\n")
    assert ref["candidates"] == ["ref/a.jpg:the left dog", "ref/a.jpg:the cat"]  # one image, two objects
    assert corpus(read, "RefCOCO-Matching")["ref/a.jpg:the left dog"][0] == (
        "<|image_1|>\nSelect the portion of the image that follows the language expressions:  \"the left dog\"\n")
    cirr = read("CIRR")[0]
    assert cirr["candidates"] == ["cirr/b.jpg:", "cirr/c.jpg:"]
    assert corpus(read, "CIRR")["cirr/b.jpg:"][0] == "<|image_1|>\nRepresent the given image."  # no newline


def test_synthetic_image_sets_through_evaluate(tmp_path):
    raw = tmp_path / "raw"
    assert write_image_v2(raw / "MMEB-V2", seed=0) == {CLS: 8, T2I: 8, VG: 8}
    counts = normalize_v2(raw, tmp_path / "norm", tmp_path / "rejects", section("normalize", workers=1,
                                                                                frames_per_video=8))
    for name in (CLS, T2I, VG):
        assert counts[name]["queries"] == counts[name]["expected"] == mmeb_v2.SYNTHETIC[name].num_data
    out = tmp_path / "norm" / "eval_v2"
    cls = pq.read_table(out / CLS / "queries.parquet").to_pylist()[1]
    assert cls["query"]["raw"] == "<|image_1|>\nRepresent the given image for classification\n"
    assert cls["relevant"][0]["candidate_id"] == "green" and len(cls["candidates"]) == 4
    vg = pq.read_table(out / VG / "queries.parquet").to_pylist()[0]
    assert [c.split(":")[0] for c in vg["candidates"]] == ["Syn-ImageVG/0_0.jpg", "Syn-ImageVG/0_1.jpg"]
    imagestore.merge(tmp_path / "norm" / "images")
    pool = evaluate_v2.load_v2_pool(out, [CLS, T2I, VG])
    scores = evaluate_v2.score_v2("m", OverlapEncoder(), pool, batch_size=8,
                                  images=ImageLoader(tmp_path / "norm" / "images"), cache=None)
    assert {n: s["num_pred"] for n, s in scores.items()} == {CLS: 8, T2I: 8, VG: 8}
    assert evaluate_v2.summary(scores, {})["synthetic_aggregate"]["modality"]["image"]["tasks"] == 3
