import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import imagestore
from pipelines.errors import Rejected
from pipelines.normalize import QUIRKS, DatasetNormalizer, DatasetTask, discover, failure_message, run, train_split_of
from pipelines.prompts import compose
from pipelines.schema import RECORD_SCHEMA, REJECT_SCHEMA
from stages import normalize as stage
from tests.support import params as test_params
from tests.support.params import section
from tests.support.fixtures_mmeb import (COUNTRY211_LABELS, EVAL_ROWS, TRAIN_ROWS, TRAIN_SCHEMA, eval_row, train_row,
                                         write_parquet, write_raw, write_zip)
from tests.support.images import cmyk_jpeg, jpeg_for, png_header_bomb, truncated_jpeg

# params.yaml's, in one process, without the per-dataset reject limit unless a test sets it
PARAMS = dict(workers=1, max_dataset_reject_fraction=1.0)


def normalize(tmp_path, raw, name="run", **overrides):
    params = section("normalize", **{**PARAMS, **overrides})
    out = tmp_path / name
    metrics = run(raw, out / "normalized", out / "rejects", out / "etl.json", params)
    return out, metrics


def records(out, kind, dataset):
    files = sorted((out / "normalized" / kind / dataset).glob("part-*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def rejects(out, kind, dataset):
    path = out / "rejects" / kind / f"{dataset}.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    raw = write_raw(tmp / "raw")
    out, metrics = normalize(tmp, raw)
    return raw, out, metrics


# --- the clean real-format fixture --------------------------------------------------------------

def test_train_records_follow_the_contract(clean):
    raw, out, metrics = clean
    (n24,) = records(out, "train", "N24News")
    assert n24["id"] == "N24News/original/0"
    assert (n24["dataset"], n24["split"], n24["meta_task"], n24["distribution"]) == (
        "N24News", "original", "classification", "IND")
    assert n24["instruction"] == n24["query"]["instruction"] == (
        "Represent the given news image with the following caption for domain classification: ")
    assert n24["query"]["raw"] == TRAIN_ROWS["N24News"][0]["qry"]
    assert n24["target"]["text"] == "Theater" and n24["target"]["image"] is None
    assert [n["text"] for n in n24["negatives"]] == ["Global Business"]
    (inet,) = records(out, "train", "ImageNet_1K")
    assert inet["negatives"] == []  # neg_text and neg_image_path empty
    (visdial,) = records(out, "train", "VisDial")
    assert visdial["query"]["image"] is None and not visdial["query"]["has_image_token"]
    assert visdial["negatives"][0]["image"]["path"] == "images/VisDial/Train/VisDial_image_61616.jpg"
    (coco,) = records(out, "train", "MSCOCO")
    assert coco["target"]["image"]["path"] == "images/MSCOCO/Train/558840_object_hot dog.jpg"
    for rec in records(out, "train", "OK-VQA") + [n24, inet, visdial, coco]:
        for side in [rec["query"], rec["target"], *rec["negatives"]]:
            assert compose(side["template"], side["instruction"], side["text"]) == side["raw"]
    assert pq.read_schema(out / "normalized" / "train" / "N24News" / "part-00000.parquet").equals(
        RECORD_SCHEMA)


def test_eval_candidates_keep_source_order_gold_first(clean):
    raw, out, _ = clean
    for dataset, rows in EVAL_ROWS.items():
        (rec,) = records(out, "eval", dataset)
        cands = [rec["target"]] + rec["negatives"]
        assert [c["raw"] for c in cands] == rows[0]["tgt_text"]
        assert [c["image"]["path"] if c["image"] else "" for c in cands] == rows[0]["tgt_img_path"]
        assert rec["split"] == "test" and rec["id"] == f"{dataset}/test/0"
    (country,) = records(out, "eval", "Country211")
    assert country["distribution"] == "OOD" and country["target"]["text"] == "Fiji"


def test_image_refs_point_into_the_store(clean):
    raw, out, metrics = clean
    store = imagestore.ImageStore(out / "normalized" / "images")
    refs = [side["image"] for kind in ("train", "eval")
            for d in (TRAIN_ROWS if kind == "train" else EVAL_ROWS)
            for rec in records(out, kind, d)
            for side in [rec["query"], rec["target"], *rec["negatives"]] if side["image"]]
    got = store.get_many(r["sha256"] for r in refs)
    for r in refs:
        img = got[r["sha256"]]
        assert hashlib.sha256(img.bytes).hexdigest() == r["sha256"]
        assert (img.width, img.height) == (r["width"], r["height"])
    assert metrics["total"]["images_stored"] == len({r["sha256"] for r in refs}) == len(list(store))
    assert not (out / "normalized" / "images" / imagestore.STAGING).exists()


def test_images_of_rejected_rows_are_not_stored(tmp_path):
    q = "<|image_1|>\nFind a caption for the image\n"
    rows = [train_row(q, f"images/MSCOCO_i2t/Train/q{i}.jpg", "<|image_1|>\nthe picture", f"images/MSCOCO_i2t/Train/t{i}.jpg")
            for i in range(4)]
    rows.append(train_row(q, "images/MSCOCO_i2t/Train/q1.jpg", "a caption"))  # q1 again, its row now accepted
    raw = write_raw(tmp_path / "raw", {"MSCOCO_i2t": rows}, {}, omit={"images/MSCOCO_i2t/Train/t1.jpg",
                                                                  "images/MSCOCO_i2t/Train/t2.jpg"})
    out, metrics = normalize(tmp_path, raw, max_reject_fraction=1.0)
    accepted = records(out, "train", "MSCOCO_i2t")
    assert [r["id"] for r in accepted] == ["MSCOCO_i2t/original/0", "MSCOCO_i2t/original/3", "MSCOCO_i2t/original/4"]
    stored = {img.sha256 for img in imagestore.ImageStore(out / "normalized" / "images")}
    referenced = {s["image"]["sha256"] for r in accepted for s in (r["query"], r["target"]) if s["image"]}
    assert stored == referenced and len(stored) == 5  # q0 t0 q3 t3 q1; q2 (its row rejected) is not kept
    assert metrics["total"]["images_stored"] == 5 == metrics["datasets"]["train/MSCOCO_i2t"]["images"]


def test_a_non_utf8_or_imageless_hard_negative_is_dropped_and_only_its_drop_is_counted(tmp_path):
    """Decoding the negative's text is part of the negative: it costs the negative, not the pair;
    and a dropped negative leaves no quirk counts of its own (image_without_token here)."""
    raw = write_raw(tmp_path / "raw", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, {})
    neg = pa.Array.from_buffers(pa.string(), 3, pa.array([b"fine negative", b"\xff\xfe bad", b"x"],
                                                         pa.binary()).buffers())
    cols = {c: pa.array([""] * 3) for c in TRAIN_SCHEMA.names if c != "neg_text"}
    cols.update(qry=pa.array(["<|image_1|>\nq\n"] * 3), qry_image_path=pa.array(["images/ChartQA/Train/c.jpg"] * 3),
                pos_text=pa.array(["a", "b", "c"]), neg_image_path=pa.array(["", "", "images/ChartQA/Train/gone.jpg"]))
    (raw / "MMEB-train" / "ChartQA").mkdir()
    pq.write_table(pa.table({"neg_text": neg, **cols}).select(TRAIN_SCHEMA.names),
                   raw / "MMEB-train" / "ChartQA" / "original-00000-of-00001.parquet")
    write_zip(raw / "MMEB-train" / "images_zip" / "ChartQA.zip", {"ChartQA/Train/c.jpg": jpeg_for("c")})
    out, metrics = normalize(tmp_path, raw, max_reject_fraction=1.0)
    kept = records(out, "train", "ChartQA")
    assert [len(r["negatives"]) for r in kept] == [1, 0, 0] and not rejects(out, "train", "ChartQA")
    chart = metrics["datasets"]["train/ChartQA"]
    assert chart["negative_dropped"] == 2 and chart["image_without_token"] == 0  # "x" + gone.jpg: dropped


def test_webqa_stray_token_is_kept_and_counted(clean):
    raw, out, metrics = clean
    for kind in ("train", "eval"):
        (rec,) = records(out, kind, "WebQA")
        q = rec["query"]
        assert q["has_image_token"] and q["image"] is None and q["raw"].startswith("<|image_1|>\n")
        assert metrics["datasets"][f"{kind}/WebQA"]["stray_image_token"] == 1
    assert metrics["total"]["stray_image_token"] == 2
    # VisDial's hard negative is an image without any text: kept, counted
    assert metrics["datasets"]["train/VisDial"]["image_without_token"] == 1


def test_a_query_that_lost_its_image_is_rejected_where_queries_have_images(tmp_path):
    """The stray token is WebQA/EDIS's quirk (text queries); in an image-query dataset a query with
    the token but no image path is a broken row, not a text-only query to train on or score."""
    country = "<|image_1|>\nIdentify the country depicted in the image\n"
    evals = {"Country211": EVAL_ROWS["Country211"] + [eval_row(country, "", COUNTRY211_LABELS,
                                                               [""] * len(COUNTRY211_LABELS))]}
    imagenet = TRAIN_ROWS["ImageNet_1K"][0]
    train = {"ImageNet_1K": [imagenet, train_row(imagenet["qry"], "", "tench, Tinca tinca")]}
    out, metrics = normalize(tmp_path, write_raw(tmp_path / "raw", train, evals), max_reject_fraction=1.0)
    for kind, dataset, bad_id in [("eval", "Country211", "Country211/test/1"),
                                  ("train", "ImageNet_1K", "ImageNet_1K/original/1")]:
        assert [r["query"]["image"] is not None for r in records(out, kind, dataset)] == [True]
        (rej,) = rejects(out, kind, dataset)
        assert (rej["id"], rej["reason"]) == (bad_id, "image_token_without_image")
        assert metrics["datasets"][f"{kind}/{dataset}"]["stray_image_token"] == 0


@pytest.mark.parametrize("prefix", ["images/", "MMEB-train/images/"])
def test_train_zips_whose_members_carry_the_row_paths_folders_normalize_alike(clean, tmp_path, prefix):
    """MMEB-train's zips unpack into images/ (members <Subset>/Train/<file>, the fixture's default);
    members named like the row path, or like it under one root folder that holds the whole archive
    (a zip of a folder), resolve to the same records."""
    raw, out, metrics = clean
    other = write_raw(tmp_path / "raw", train_zip_prefix=prefix)
    out2, metrics2 = normalize(tmp_path, other)
    assert metrics2["total"] == metrics["total"]
    assert file_digests(out2 / "normalized") == file_digests(out / "normalized")


def test_clean_metrics_balance(clean):
    raw, out, metrics = clean
    on_disk = json.loads((out / "etl.json").read_text())
    assert on_disk == metrics
    t = metrics["total"]
    n_rows = sum(len(r) for r in TRAIN_ROWS.values()) + sum(len(r) for r in EVAL_ROWS.values())
    assert t["rows_in"] == t["accepted"] == n_rows and t["rejected"] == 0
    assert t["composition_mismatches"] == 0
    assert set(metrics["datasets"]) == {f"train/{d}" for d in TRAIN_ROWS} | {f"eval/{d}" for d in EVAL_ROWS}
    assert (out / "rejects").is_dir() and not list((out / "rejects").rglob("*"))[2:]  # train/, eval/
    assert not list((out / "rejects").rglob("*.parquet"))
    assert failure_message(metrics, 0.0) is None


# --- bad input: every case is a reject with a reason, never a crash --------------------------

OK_PATH = "images/OK-VQA/Train/OK-VQA_image_0.jpg"
BAD_TRAIN = [  # (row, expected reason)
    (train_row("<|image_1|>\nRepresent the given image with the following question: q?\n",
               "images/OK-VQA/Train/missing.jpg", "a"), "image_missing"),
    (train_row("<|image_1|>\nq\n", "images/OK-VQA/Train/truncated.jpg", "a"), "image_truncated"),
    (train_row("<|image_1|>\nq\n", "images/OK-VQA/Train/zero.jpg", "a"), "image_empty"),
    (train_row("<|image_1|>\nq\n", "images/OK-VQA/Train/text.jpg", "a"), "image_undecodable"),
    (train_row("<|image_1|>\nq\n", "images/OK-VQA/Train/bomb.png", "a"), "image_too_large"),
    (train_row("<|image_1|>\nq\n", "images/OK-VQA/Train/../../../escape.jpg", "a"), "image_unsafe_member"),
    (train_row("", "", "a"), "empty_query"),
    (train_row("<|image_1|>\n", "", "a"), "empty_query"),  # a token and nothing else, no image
    (train_row("<|image_1|>\nq\n", OK_PATH, " \n"), "empty_target"),
    (train_row("<|image_1|>\nq\n", OK_PATH, "<|image_1|>\nRepresent the given image\n"),
     "image_token_without_image"),
]
# hard negatives that would be rejects: dropped and counted, the pair is kept
DROPPED_NEGATIVES = [
    train_row("<|image_1|>\nq\n", OK_PATH, "a", neg_text="\n"),
    train_row("<|image_1|>\nq\n", OK_PATH, "a", neg_image_path="images/OK-VQA/Train/missing.jpg"),
    train_row("<|image_1|>\nq\n", OK_PATH, "a", neg_text="<|image_1|>\nRepresent the given image\n"),
]
BAD_MEMBERS = {
    "images/OK-VQA/Train/truncated.jpg": truncated_jpeg(),
    "images/OK-VQA/Train/zero.jpg": b"",
    "images/OK-VQA/Train/text.jpg": b"<html>not an image</html>",
    "images/OK-VQA/Train/bomb.png": png_header_bomb(30_000, 30_000),
    "images/OK-VQA/Train/../../../escape.jpg": b"x",
    "images/OK-VQA/Train/cmyk.jpg": cmyk_jpeg(),
}
BAD_EVAL = [
    (eval_row("<|image_1|>\nIdentify the country depicted in the image\n", "Country211/fiji_0.jpg",
              ["Fiji", "Colombia"], [""]), "candidate_length_mismatch"),
    (eval_row("<|image_1|>\nIdentify the country depicted in the image\n", "Country211/fiji_0.jpg",
              [], []), "no_candidates"),
    (eval_row("<|image_1|>\nIdentify the country depicted in the image\n", "Country211/fiji_0.jpg",
              ["Fiji", " "], ["", ""]), "empty_candidate"),
    (eval_row("Find me an everyday image that matches the given caption: a dog\n", "",
              ["<|image_1|>\nRepresent the given image.\n"] * 3,
              ["MSCOCO_t2i/gold_0.jpg", "MSCOCO_t2i/other_1.jpg", "MSCOCO_t2i/gone.jpg"]), "image_missing"),
]


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dirty")
    good_ok = TRAIN_ROWS["OK-VQA"]
    extra_ok = [train_row("<|image_1|>\nq\n", "images/OK-VQA/Train/cmyk.jpg", "a")]  # converted
    train = {**TRAIN_ROWS, "OK-VQA": good_ok + [r for r, _ in BAD_TRAIN] + extra_ok + DROPPED_NEGATIVES}
    evals = {**EVAL_ROWS,
             "Country211": EVAL_ROWS["Country211"] + [r for r, _ in BAD_EVAL[:3]],
             "MSCOCO_t2i": EVAL_ROWS["MSCOCO_t2i"] + [BAD_EVAL[3][0]]}
    raw = write_raw(tmp / "raw", train, evals, members=BAD_MEMBERS,
                    omit={"images/OK-VQA/Train/missing.jpg", "MSCOCO_t2i/gone.jpg"})
    # a dataset whose parquet lacks a column, and one with invalid UTF-8
    write_parquet(raw / "MMEB-train" / "A-OKVQA" / "original-00000-of-00001.parquet",
                  [{"qry": "q", "qry_image_path": ""}] * 2,
                  pa.schema([("qry", pa.string()), ("qry_image_path", pa.string())]))
    values = [b"<|image_1|>\nRepresent the given image with the following question: ok?\n", b"\xff\xfe bad"]
    qry = pa.Array.from_buffers(pa.string(), 2, pa.array(values, pa.binary()).buffers())
    cols = {c: pa.array([""] * 2) for c in TRAIN_SCHEMA.names if c != "qry"}
    cols["qry_image_path"] = pa.array([OK_PATH.replace("OK-VQA", "ChartQA")] * 2)
    cols["pos_text"] = pa.array(["a", "b"])
    table = pa.table({"qry": qry, **cols}).select(TRAIN_SCHEMA.names)
    (raw / "MMEB-train" / "ChartQA").mkdir()
    pq.write_table(table, raw / "MMEB-train" / "ChartQA" / "original-00000-of-00001.parquet")
    write_zip(raw / "MMEB-train" / "images_zip" / "ChartQA.zip",
              {OK_PATH.replace("OK-VQA", "ChartQA"): jpeg_for("chart")})
    out, metrics = normalize(tmp, raw, image_reject_pixels=1_000_000)
    return raw, out, metrics


def test_each_bad_train_row_is_rejected_with_its_reason(dirty):
    raw, out, metrics = dirty
    rej = {r["id"]: r for r in rejects(out, "train", "OK-VQA")}
    for i, (row, reason) in enumerate(BAD_TRAIN, start=1):
        r = rej[f"OK-VQA/original/{i}"]
        assert r["reason"] == reason, (i, r)
        assert json.loads(r["row"]) == row  # the source row, verbatim
    assert len(rej) == len(BAD_TRAIN)
    ok = records(out, "train", "OK-VQA")
    assert [r["id"] for r in ok] == ["OK-VQA/original/0"] + [f"OK-VQA/original/{len(BAD_TRAIN) + 1 + i}"
                                                             for i in range(1 + len(DROPPED_NEGATIVES))]
    assert pq.read_schema(out / "rejects" / "train" / "OK-VQA.parquet").equals(REJECT_SCHEMA)


def test_reject_details_name_the_side_and_path(dirty):
    raw, out, _ = dirty
    rej = {r["id"]: r for r in rejects(out, "train", "OK-VQA")}
    assert "query image 'images/OK-VQA/Train/missing.jpg'" in rej["OK-VQA/original/1"]["detail"]
    assert "900000000 pixels" in rej["OK-VQA/original/5"]["detail"]  # refused from the header


def test_bad_eval_rows_are_rejected(dirty):
    raw, out, metrics = dirty
    rej = {r["id"]: r for r in rejects(out, "eval", "Country211") + rejects(out, "eval", "MSCOCO_t2i")}
    for i, (row, reason) in enumerate(BAD_EVAL[:3], start=1):
        assert rej[f"Country211/test/{i}"]["reason"] == reason
        assert json.loads(rej[f"Country211/test/{i}"]["row"]) == row
    bad_cand = rej["MSCOCO_t2i/test/1"]
    assert bad_cand["reason"] == "image_missing"
    assert "candidate 2" in bad_cand["detail"] and "MSCOCO_t2i/gone.jpg" in bad_cand["detail"]
    assert [r["id"] for r in records(out, "eval", "MSCOCO_t2i")] == ["MSCOCO_t2i/test/0"]


def test_schema_and_utf8_problems_are_rejects(dirty):
    raw, out, metrics = dirty
    rej = rejects(out, "train", "A-OKVQA")
    assert [r["reason"] for r in rej] == ["bad_schema", "bad_schema"]
    assert "missing columns" in rej[0]["detail"] and json.loads(rej[0]["row"])["qry"] == "q"
    rej = rejects(out, "train", "ChartQA")
    assert [(r["id"], r["reason"]) for r in rej] == [("ChartQA/original/1", "text_not_utf8")]
    assert "qry" in rej[0]["detail"] and "\\xff" in json.loads(rej[0]["row"])["qry"]
    assert [r["id"] for r in records(out, "train", "ChartQA")] == ["ChartQA/original/0"]


def test_dirty_metrics_balance_and_count_reasons(dirty):
    raw, out, metrics = dirty
    for key, s in [*metrics["datasets"].items(), ("total", metrics["total"])]:
        assert s["rows_in"] == s["accepted"] + s["rejected"], key
        assert s["rejected"] == sum(s["rejected_by_reason"].values()), key
    ok = metrics["datasets"]["train/OK-VQA"]
    assert ok["rejected_by_reason"] == dict(Counter(reason for _, reason in BAD_TRAIN))
    assert ok["negative_dropped"] == len(DROPPED_NEGATIVES) == metrics["total"]["negative_dropped"]
    kept = records(out, "train", "OK-VQA")[-len(DROPPED_NEGATIVES):]
    assert all(r["negatives"] == [] and r["target"]["text"] == "a" for r in kept)
    assert ok["converted"] == 1
    (cmyk,) = [r for r in records(out, "train", "OK-VQA") if r["query"]["image"]["path"].endswith("cmyk.jpg")]
    store = imagestore.ImageStore(out / "normalized" / "images")
    assert store.get(cmyk["query"]["image"]["sha256"]).format == "JPEG"
    assert metrics["total"]["rejected"] == len(BAD_TRAIN) + len(BAD_EVAL) + 2 + 1
    # the total is the sum of the datasets, count by count
    datasets = metrics["datasets"].values()
    for count in ("rows_in", "accepted", "rejected", "converted", *QUIRKS):
        assert metrics["total"][count] == sum(s[count] for s in datasets), count
    assert metrics["total"]["rejected_by_reason"] == dict(sum((Counter(s["rejected_by_reason"]) for s in datasets),
                                                              Counter()))


def test_pil_settings_are_not_leaked_to_the_caller(dirty):
    from PIL import Image
    assert Image.MAX_IMAGE_PIXELS != 1_000_000  # the dirty run used max_pixels=1_000_000 in-process


def test_instruction_fallbacks_and_composition_mismatches_are_counted(tmp_path, monkeypatch):
    raw = write_raw(tmp_path / "raw", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, {})
    task = discover(raw, tmp_path / "n", tmp_path / "r", section("normalize", **PARAMS))[0]
    from pipelines import normalize as nz
    from pipelines.images import ImageSource
    norm = DatasetNormalizer(task, ImageSource(raw, "train", "OK-VQA"),
                             imagestore.ImageStoreWriter(tmp_path / "n" / "images", "t"))
    quirks = Counter()
    norm.side("<|image_1|>\nRepresent the given image with the following question: what?", OK_PATH,
              "query", "query", quirks)
    assert quirks == Counter()  # a known instruction, composed back exactly
    side = norm.side("Say what you see: a dog", "", "query", "query", quirks)  # no known instruction
    assert (side["instruction"], side["text"]) == ("Say what you see: ", "a dog")
    assert quirks == Counter(instruction_fallback=1)
    monkeypatch.setattr(nz, "compose", lambda template, instruction, text: "not the raw string")
    norm.side("a dog", "", "target", "target", quirks)
    assert quirks == Counter(instruction_fallback=1, composition_mismatches=1)


def test_duplicate_ids_are_rejected(tmp_path):
    raw = write_raw(tmp_path / "raw", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, {})
    task = discover(raw, tmp_path / "n", tmp_path / "r", section("normalize", **PARAMS))[0]
    from pipelines.images import ImageSource
    norm = DatasetNormalizer(task, ImageSource(raw, "train", "OK-VQA"),
                             imagestore.ImageStoreWriter(tmp_path / "n" / "images", "t"))
    values = {k: v.encode() for k, v in TRAIN_ROWS["OK-VQA"][0].items()}
    rec, _ = norm.record(0, values)
    assert rec["id"] == "OK-VQA/original/0"
    with pytest.raises(Rejected) as e:
        norm.record(0, values)
    assert e.value.reason == "duplicate_id"


# --- the stage: failure policy, determinism, restarts, parts ---------------------------------

def write_params(tmp_path, **normalize_params):
    return test_params.write_params(tmp_path / "params.yaml", normalize={**PARAMS, **normalize_params})


def test_stage_fails_above_max_reject_fraction_after_writing_outputs(tmp_path, capsys):
    rows = TRAIN_ROWS["OK-VQA"] + [train_row("", "", "a")] * 3
    raw = write_raw(tmp_path / "raw", {"OK-VQA": rows, "N24News": TRAIN_ROWS["N24News"]}, {})
    args = ["--raw", str(raw), "--out", str(tmp_path / "n"), "--rejects", str(tmp_path / "r"),
            "--metrics", str(tmp_path / "etl.json")]
    assert stage.main(args + ["--params", str(write_params(tmp_path, max_reject_fraction=0.5))]) == 1
    err = capsys.readouterr().err
    assert "train/OK-VQA: 3/4 rejected (empty_query 3)" in err and "N24News" not in err
    metrics = json.loads((tmp_path / "etl.json").read_text())
    assert metrics["total"]["rejected"] == 3
    assert len(rejects(tmp_path, "train", "OK-VQA")) == 0  # (reading helper expects out/rejects)
    assert len(pq.read_table(tmp_path / "r" / "train" / "OK-VQA.parquet")) == 3
    assert stage.main(args + ["--params", str(write_params(tmp_path, max_reject_fraction=0.7))]) == 0


def test_stage_fails_when_one_eval_dataset_loses_its_queries_to_a_shared_bad_candidate(tmp_path, capsys):
    """One truncated image in an eval candidate pool rejects every query whose list holds it; the
    total reject fraction (train rows included) hides it, the per-dataset limit does not."""
    pool = [f"MSCOCO_t2i/pool_{j}.jpg" for j in range(4)]
    evals = {"MSCOCO_t2i": [eval_row(f"<|image_1|>\nFind me an image: caption {i}\n", "",
                                     [f"<|image_1|>\nRepresent the given image.\n"] * 4,
                                     pool[i % 4:] + pool[:i % 4]) for i in range(6)]}
    train = {"OK-VQA": TRAIN_ROWS["OK-VQA"] * 1}
    raw = write_raw(tmp_path / "raw", train, evals, members={pool[2]: truncated_jpeg()})
    args = ["--raw", str(raw), "--out", str(tmp_path / "n"), "--rejects", str(tmp_path / "r"),
            "--metrics", str(tmp_path / "etl.json")]
    lenient_total = write_params(tmp_path, max_reject_fraction=1.0, max_dataset_reject_fraction=0.2)
    assert stage.main(args + ["--params", str(lenient_total)]) == 1
    err = capsys.readouterr().err
    assert "eval/MSCOCO_t2i: 6/6 rows rejected" in err and "max_dataset_reject_fraction" in err
    assert stage.main(args + ["--params", str(write_params(tmp_path, max_reject_fraction=1.0,
                                                           max_dataset_reject_fraction=1.0))]) == 0


def test_stage_fails_on_a_dataset_without_rows(tmp_path, capsys):
    """An empty source parquet writes no part files, so evaluate's `datasets: all` would average over
    the others without a word (and train would skip it): the stage fails, naming it."""
    raw = write_raw(tmp_path / "raw", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, {**EVAL_ROWS, "OK-VQA": []})
    args = ["--raw", str(raw), "--out", str(tmp_path / "n"), "--rejects", str(tmp_path / "r"),
            "--metrics", str(tmp_path / "etl.json"), "--params", str(write_params(tmp_path))]
    assert stage.main(args) == 1
    assert "eval/OK-VQA: its source parquet holds no rows" in capsys.readouterr().err
    assert json.loads((tmp_path / "etl.json").read_text())["datasets"]["eval/OK-VQA"]["rows_in"] == 0


def test_workers_and_restarts_give_identical_bytes(tmp_path):
    rows = [train_row(f"<|image_1|>\nRepresent the given image with the following question: q{i}?\n",
                      f"images/OK-VQA/Train/img_{i % 7}.jpg", f"answer {i}", "", f"neg {i}")
            for i in range(23)]
    train = {**TRAIN_ROWS, "OK-VQA": rows + [train_row("", "", "x")]}
    raw = write_raw(tmp_path / "raw", train, EVAL_ROWS)
    one, m1 = normalize(tmp_path, raw, "one", workers=1, rows_per_part=5, batch_rows=4)
    two, m2 = normalize(tmp_path, raw, "two", workers=2, rows_per_part=5, batch_rows=4)
    assert m1 == m2
    d1 = file_digests(one)
    assert d1 == file_digests(two)
    assert [p for p in d1 if p.startswith("normalized/train/OK-VQA/")] == [
        f"normalized/train/OK-VQA/part-{i:05d}.parquet" for i in range(5)]
    ids = [r["id"] for r in records(one, "train", "OK-VQA")]
    assert ids == [f"OK-VQA/original/{i}" for i in range(23)]
    assert [len(pq.read_table(one / "normalized/train/OK-VQA" / f"part-{i:05d}.parquet"))
            for i in range(5)] == [5, 5, 5, 5, 3]
    # a killed run leaves staging, temporary parts and stale datasets behind: a rerun is identical
    stale = one / "normalized"
    (stale / "images" / imagestore.STAGING / "train-OK-VQA").mkdir(parents=True)
    (stale / "images" / imagestore.STAGING / "train-OK-VQA" / "00-00000.parquet").write_bytes(b"junk")
    (stale / "train" / "OK-VQA" / "part-00009.parquet.tmp").write_bytes(b"junk")
    (stale / "train" / "Gone").mkdir()
    (stale / "train" / "Gone" / "part-00000.parquet").write_bytes(b"junk")
    (one / "rejects" / "eval").mkdir(parents=True, exist_ok=True)
    (one / "rejects" / "eval" / "Old.parquet").write_bytes(b"junk")
    _, m3 = normalize(tmp_path, raw, "one", workers=1, rows_per_part=5, batch_rows=4)
    assert file_digests(one) == d1 and m3 == m1


def test_unknown_dataset_is_a_clear_error(tmp_path):
    raw = write_raw(tmp_path / "raw", {"NotInMMEB": TRAIN_ROWS["OK-VQA"]}, {})
    with pytest.raises(ValueError, match="NotInMMEB"):
        normalize(tmp_path, raw)


def test_train_split_comes_from_the_manifest_or_the_layout(tmp_path):
    raw = write_raw(tmp_path / "a", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, {}, train_split="diverse_instruction")
    assert train_split_of(raw) == "diverse_instruction"
    (raw / "manifest.json").write_text(json.dumps({"split": "original", "repos": {
        "MMEB-train": {"split": "diverse_instruction"}}}))  # stages/download.py's layout
    assert train_split_of(raw) == "diverse_instruction"
    (raw / "manifest.json").write_text("{}")
    assert train_split_of(raw) == "diverse_instruction"  # the only split present
    write_parquet(raw / "MMEB-train" / "OK-VQA" / "original-00000-of-00001.parquet",
                  TRAIN_ROWS["OK-VQA"], TRAIN_SCHEMA)
    with pytest.raises(ValueError, match="splits"):
        train_split_of(raw)
    _, metrics = normalize(tmp_path, write_raw(tmp_path / "b", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, {},
                                               train_split="diverse_instruction"))
    assert metrics["datasets"]["train/OK-VQA"]["accepted"] == 1


def test_unreadable_parquet_fails_the_stage_with_its_name(tmp_path):
    raw = write_raw(tmp_path / "raw", {"OK-VQA": TRAIN_ROWS["OK-VQA"]}, EVAL_ROWS)
    target = raw / "MMEB-eval" / "WebQA" / "test-00000-of-00001.parquet"
    data = target.read_bytes()
    target.write_bytes(data[:4] + b"\0" * 64 + data[68:])  # corrupt the first pages, footer intact
    footerless = raw / "MMEB-eval" / "OK-VQA" / "test-00000-of-00001.parquet"
    footerless.write_bytes(footerless.read_bytes()[:-20])  # a truncated download
    out, metrics = normalize(tmp_path, raw)
    assert {"eval/WebQA", "eval/OK-VQA"} <= set(metrics["errors"])
    message = failure_message(metrics, 1.0)
    assert "eval/WebQA failed" in message and "eval/OK-VQA failed" in message
    assert metrics["datasets"]["train/OK-VQA"]["accepted"] == 1


def test_synthetic_source_normalizes_cleanly(tmp_path):
    synthetic = pytest.importorskip("pipelines.sources.synthetic")
    synthetic.generate(tmp_path / "raw", seed=0, train_rows=6, eval_rows=4, eval_candidates=4,
                       image_size=32)
    (tmp_path / "raw" / "manifest.json").write_text(json.dumps({"split": "original"}))  # as download writes
    out, metrics = normalize(tmp_path, tmp_path / "raw", workers=1)
    t = metrics["total"]
    assert t["rows_in"] > 0 and t["rejected"] == 0 and t["composition_mismatches"] == 0
    assert "errors" not in metrics


def test_workers_stop_when_their_parent_is_gone(monkeypatch):
    import queue

    from pipelines import normalize as nz
    from pipelines import workers
    q = queue.Queue()
    monkeypatch.setattr(nz, "_PROGRESS", q)
    monkeypatch.setattr(workers, "_PARENT", os.getppid())
    nz._report(3)
    assert q.get_nowait() == 3
    monkeypatch.setattr(workers, "_PARENT", -1)  # as if the spawning process had died
    with pytest.raises(workers.ParentGone):
        nz._report(3)
