"""Tests for pipelines/shard.py and stages/shard.py on small hand-made normalized data."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines import shard as shards
from pipelines.imagestore import ImageStoreWriter, StoredImage, merge
from pipelines.schema import IMAGE_TOKEN, RECORD_SCHEMA, sample_key
from pipelines.shard import build_index, output_params, read_index, row_order, selected_rows, write_shards
from stages import shard as shard_stage
from tests.support.images import drawn_image, encode
from tests.support.params import section, write_params

MAX_SIDE = 48  # images with a longer side are downscaled in these tests


def make_image(width: int, height: int, fmt: str, seed: int) -> StoredImage:
    data = drawn_image(width, height, fmt, seed)
    return StoredImage(hashlib.sha256(data).hexdigest(), data, width, height, fmt)


def side(text: str, image: StoredImage | None, instruction: str = "", path: str = "") -> dict:
    token = f"{IMAGE_TOKEN}\n" if image else ""
    raw = f"{token}{instruction} {text}".strip() if instruction else f"{token}{text}"
    return {
        "raw": raw, "instruction": instruction, "text": text, "has_image_token": image is not None,
        "template": raw.replace(instruction, "{instruction}", 1).replace(text, "{text}", 1)
        if instruction else raw.replace(text, "{text}", 1),
        "image": None if image is None else
        {"sha256": image.sha256, "path": path, "width": image.width, "height": image.height},
    }


def build_normalized(root: Path, rows: dict[str, int]) -> tuple[Path, Path, dict[str, list[dict]], dict]:
    """Write normalized train records (two parts per dataset) and an image store under root.

    Every 5th row has a query image larger than MAX_SIDE (one of them PNG); even rows have one or two
    image negatives; one image is shared by all datasets (stored once)."""
    train, store = root / "normalized" / "train", root / "normalized" / "images"
    writer = ImageStoreWriter(store, "w0")
    shared = make_image(20, 16, "PNG", 999)
    writer.add(shared)
    images = {shared.sha256: shared}
    records: dict[str, list[dict]] = {}
    for d, (dataset, n) in enumerate(sorted(rows.items())):
        recs = []
        for i in range(n):
            seed = d * 1000 + i
            if i % 5 == 0:
                q = make_image(80, 30, "PNG" if i % 10 == 0 else "JPEG", seed)  # > MAX_SIDE
            else:
                q = make_image(24 + i % 9, 16 + i % 7, "JPEG", seed)
            negs, used = [], [q]
            if i % 2 == 0:
                neg_img = make_image(16, 16, "JPEG", seed + 500)
                negs.append(side(f"negative {i}", neg_img))
                negs.append(side(f"negative text {i}", shared if i % 4 == 0 else None))
                used.append(neg_img)
            for im in used:
                images[im.sha256] = im
                writer.add(im)
            recs.append({
                "id": f"{dataset}/original/{i}", "dataset": dataset, "split": "original",
                "meta_task": "retrieval", "distribution": "IND",
                "instruction": "Find the image.",
                "query": side(f"query {i} ünïcode", q, "Find the image.", f"images/{dataset}/Train/{i}.jpg"),
                "target": side(f"label {i % 3}", None),
                "negatives": negs,
            })
        records[dataset] = recs
        out = train / dataset
        out.mkdir(parents=True)
        half = n // 2
        for p, chunk in enumerate([recs[:half], recs[half:]]):
            pq.write_table(pa.Table.from_pylist(chunk, schema=RECORD_SCHEMA), out / f"part-{p:05d}.parquet")
    writer.close()
    merge(store)
    return train, store, records, images


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    return build_normalized(tmp_path_factory.mktemp("norm"), {"Syn-A": 23, "Syn-B": 11})


def shard_params(**kw):
    """A shard section: params.yaml's, with no pre-scaling, grid, cap or shuffle unless given."""
    return section("shard", **{"workers": 1, "image_max_pixels": None, "image_size_multiple": None,
                               "max_rows_per_dataset": None, "shuffle": False, "seed": 0, **kw})


def shard_urls(out_root, datasets=None) -> list[str]:
    """Absolute tar paths from the index, in index order, optionally only some datasets."""
    index = read_index(out_root)
    keep = None if datasets is None else set(datasets)
    return [str(Path(out_root) / s["path"]) for s in index["shards"] if keep is None or s["dataset"] in keep]


PARAMS = shard_params(max_samples=7, max_bytes=1 << 20, image_max_side=MAX_SIDE)


@pytest.fixture(scope="module")
def sharded(normalized, tmp_path_factory):
    train, store, _, _ = normalized
    out = tmp_path_factory.mktemp("shards") / "train"
    index = write_shards(train, store, out, PARAMS)
    return out, index


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def strip_members(sample_doc: dict) -> dict:
    """The JSON document with the shard-only image keys removed (what the record holds)."""
    doc = json.loads(json.dumps(sample_doc))
    for s in [doc["query"], doc["target"], *doc["negatives"]]:
        if s and s["image"]:
            s["image"].pop("member")
            s["image"].pop("member_sha256")
    return doc


def test_webdataset_reads_back_the_records(normalized, sharded):
    _, _, records, images = normalized
    out, index = sharded
    urls = shard_urls(out)
    assert len(urls) == index["total"]["shards"]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    expected = [r for d in sorted(records) for r in records[d]]
    assert [s["__key__"] for s in samples] == [sample_key(r["id"]) for r in expected]
    resized = 0
    for sample, record in zip(samples, expected):
        doc = json.loads(sample["json"])
        members = {k for k in sample if not k.startswith("__") and k != "json"}
        want_members = set()
        for stem, rec_side, doc_side in zip(
                ["query", "target"] + [f"neg{i}" for i in range(len(record["negatives"]))],
                [record["query"], record["target"], *record["negatives"]],
                [doc["query"], doc["target"], *doc["negatives"]]):
            if rec_side["image"] is None:
                assert doc_side["image"] is None
                continue
            ref, got = rec_side["image"], doc_side["image"]
            data = sample[got["member"]]
            assert got["member"].startswith(stem + ".")
            want_members.add(got["member"])
            assert hashlib.sha256(data).hexdigest() == got["member_sha256"]
            assert got["sha256"] == ref["sha256"]
            with Image.open(io.BytesIO(data)) as im:
                assert im.size == (got["width"], got["height"])
            if max(ref["width"], ref["height"]) > MAX_SIDE:
                resized += 1
                assert max(got["width"], got["height"]) == MAX_SIDE
                assert abs(got["width"] / got["height"] - ref["width"] / ref["height"]) < 0.05
                assert data != images[ref["sha256"]].bytes
            else:
                assert data == images[ref["sha256"]].bytes  # stored bytes unchanged
                assert (got["width"], got["height"]) == (ref["width"], ref["height"])
        assert members == want_members
        if not any(max(s["image"]["width"], s["image"]["height"]) > MAX_SIDE
                   for s in [record["query"], *record["negatives"]] if s["image"]):
            assert strip_members(doc) == record
    assert resized == sum(d["resized_images"] for d in index["datasets"].values()) > 0


def test_extension_follows_stored_format(normalized, sharded):
    _, _, records, images = normalized
    out, _ = sharded
    by_id = {r["id"]: r for rs in records.values() for r in rs}
    for sample in wds.WebDataset(shard_urls(out), shardshuffle=False):
        doc = json.loads(sample["json"])
        fmt = images[by_id[doc["id"]]["query"]["image"]["sha256"]].format
        assert doc["query"]["image"]["member"] == {"JPEG": "query.jpg", "PNG": "query.png"}[fmt]


def test_index_matches_the_tars(normalized, sharded):
    _, _, records, _ = normalized
    out, index = sharded
    assert read_index(out) == index
    assert index["params"] == output_params(PARAMS)
    for d, recs in records.items():
        entry = index["datasets"][d]
        assert entry["samples"] == len(recs)
        assert entry["meta_task"] == "retrieval" and entry["split"] == "original"
        assert entry["shards"] == -(-len(recs) // PARAMS.max_samples)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tar")) == \
        sorted(s["path"] for s in index["shards"])
    for s in index["shards"]:
        tar = out / s["path"]
        assert s["path"] == f"{s['dataset']}/{s['dataset']}-{int(tar.stem.rsplit('-', 1)[1]):06d}.tar"
        assert tar.stat().st_size == s["bytes"] <= PARAMS.max_bytes
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == s["sha256"]
        with tarfile.open(tar) as tf:
            assert len({m.name.split(".")[0] for m in tf.getmembers()}) == s["samples"] <= PARAMS.max_samples
    assert index["total"]["samples"] == sum(len(r) for r in records.values())
    assert not list(out.rglob("*.tmp")) and not (out / ".work").exists()


def test_tar_headers_are_fixed_and_ordered(sharded):
    out, index = sharded
    with tarfile.open(out / index["shards"][0]["path"]) as tf:
        members = tf.getmembers()
        assert tf.pax_headers == {}
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) == (0, 0, 0, "", "", 0o444,
                                                                                tarfile.REGTYPE)
    names = [m.name for m in members]
    by_key: dict[str, list[str]] = {}
    for n in names:
        by_key.setdefault(n.split(".")[0], []).append(n)
    for key, group in by_key.items():
        assert group[0] == f"{key}.json" and group[1:] == sorted(group[1:])
        # members of a sample are adjacent
        first = names.index(group[0])
        assert names[first:first + len(group)] == group


def test_byte_identical_reruns_and_workers(normalized, sharded, tmp_path, monkeypatch):
    train, store, _, _ = normalized
    out, _ = sharded
    again = tmp_path / "again"
    write_shards(train, store, again, PARAMS)
    parallel = tmp_path / "parallel"
    # the workers finish in whatever order: here the last submitted first (the small dataset would)
    monkeypatch.setattr(shards, "as_completed", lambda futures: list(futures)[::-1])
    write_shards(train, store, parallel, replace(PARAMS, workers=2))
    assert tree_bytes(again) == tree_bytes(out) == tree_bytes(parallel)


def test_max_bytes_bounds_tars_and_oversize_sample_gets_own_shard(normalized, tmp_path, caplog):
    train, store, records, _ = normalized
    # small enough that several tars are needed
    params = shard_params(max_samples=1000, max_bytes=3 * 10240, image_max_side=10_000)
    with caplog.at_level(logging.WARNING, logger="pipelines.shard"):
        index = write_shards(train, store, tmp_path / "s", params)
    shards_ = index["shards"]
    assert sum(s["samples"] for s in shards_) == sum(len(r) for r in records.values())
    assert len(shards_) > 2
    oversize = [s for s in shards_ if s["oversize"]]
    for s in shards_:
        size = (tmp_path / "s" / s["path"]).stat().st_size
        assert size == s["bytes"]
        if s["oversize"]:
            assert s["samples"] == 1 and size > params.max_bytes
        else:
            assert size <= params.max_bytes
    assert len(oversize) == sum(d["oversize_shards"] for d in index["datasets"].values())
    assert len([r for r in caplog.records if "gets its own shard" in r.getMessage()]) == len(oversize)
    # greedy packing: a tar closes only when the next sample would not fit
    urls = [str(tmp_path / "s" / s["path"]) for s in shards_]
    assert len(list(wds.WebDataset(urls, shardshuffle=False))) == index["total"]["samples"]


def test_oversize_sample_is_logged(tmp_path, caplog):
    train, store, _, _ = build_normalized(tmp_path, {"Syn-C": 3})
    noise = Image.frombytes("RGB", (300, 200), bytes(hashlib.shake_256(b"x").digest(300 * 200 * 3)))
    data = encode(noise)  # incompressible: ~180 kB
    big = StoredImage(hashlib.sha256(data).hexdigest(), data, 300, 200, "PNG")
    writer = ImageStoreWriter(store, "w1")
    writer.add(big)
    writer.close()
    merge(store)
    rec = pq.read_table(train / "Syn-C" / "part-00001.parquet").to_pylist()
    rec[0]["query"]["image"] = {"sha256": big.sha256, "path": "big.png", "width": 300, "height": 200}
    pq.write_table(pa.Table.from_pylist(rec, schema=RECORD_SCHEMA), train / "Syn-C" / "part-00001.parquet")
    params = shard_params(max_samples=10, max_bytes=4 * 10240, image_max_side=10_000)
    with caplog.at_level(logging.WARNING, logger="pipelines.shard"):
        index = write_shards(train, store, tmp_path / "s", params)
    assert [s["samples"] for s in index["shards"]] == [1, 1, 1]  # row 1 alone, rows 0 and 2 around it
    assert [s["oversize"] for s in index["shards"]] == [False, True, False]
    assert "Syn-C__original__1 alone takes" in caplog.text


def test_fit_image_downscales_keeping_aspect_and_format():
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "png")]:
        img = make_image(100, 41, fmt, 3)
        fitted = shards.fit_image(img, 40)
        assert fitted.resized and fitted.ext == ext and (fitted.width, fitted.height) == (40, 16)
        with Image.open(io.BytesIO(fitted.bytes)) as im:
            assert im.size == (40, 16)
        same = shards.fit_image(img, 100)
        assert not same.resized and same.bytes == img.bytes and same.ext == shards.extension(fmt)
    assert shards.downscaled_size(3000, 1, 1344) == (1344, 1)
    with pytest.raises(ValueError, match="member extension"):
        shards.extension("X.Y")


def test_pixel_cap_prescales_to_the_collators_size_so_training_resizes_nothing():
    from trainer.model.inputs import resize_to_max_pixels

    img = make_image(100, 41, "JPEG", 4)  # 4100 px
    fitted = shards.fit_image(img, 1344, max_pixels=1000)
    assert fitted.resized and fitted.width * fitted.height <= 1000
    with Image.open(io.BytesIO(img.bytes)) as original:
        expected = resize_to_max_pixels(original, 1000).size  # what training would make of the original
    assert (fitted.width, fitted.height) == expected
    with Image.open(io.BytesIO(fitted.bytes)) as member:
        assert member.size == expected
        assert resize_to_max_pixels(member, 1000).size == member.size  # nothing left to resize
    assert not shards.fit_image(img, 1344, max_pixels=4100).resized  # fits exactly: bytes kept
    # an elongated image: the pixel cap first, then the side cap
    assert shards.fitted_size(3000, 10, 1344, 20000) == (1344, 4)
    assert shards.fitted_size(3000, 10, 1344, None) == (1344, 4)
    assert shards.fitted_size(300, 100, 1344, None) == (300, 100)


def test_pixel_cap_is_recorded_and_training_refuses_smaller_shards(normalized, tmp_path):
    from trainer.train.stream import check_shard_resolution

    train, store, _, _ = normalized
    params = shard_params(max_samples=10, max_bytes=10**9, image_max_side=1344, image_max_pixels=1000)
    index = write_shards(train, store, tmp_path / "s", params)
    assert index["params"]["max_image_pixels"] == 1000
    checked = 0
    for sample in wds.WebDataset(shard_urls(tmp_path / "s"), shardshuffle=False):
        for key, value in sample.items():
            if key.endswith(("jpg", "png", "webp")):
                with Image.open(io.BytesIO(value)) as im:
                    assert im.width * im.height <= 1000
                checked += 1
    assert checked > 0
    check_shard_resolution(tmp_path / "s", 1000)
    check_shard_resolution(tmp_path / "s", 500)  # training below the shards' resolution is fine
    for too_large in (1001, None):
        with pytest.raises(ValueError, match=r"\(shard.image_max_pixels\) but train.image_max_pixels is " + str(too_large)):
            check_shard_resolution(tmp_path / "s", too_large)


def test_training_refuses_shards_whose_side_cap_cuts_elongated_images_below_its_resolution(normalized, tmp_path):
    """README's real-MMEB command (1003520 pixels, 28 px grid) with the default shard.image_max_side
    1344: a 1000x4000 infographic was stored at 336x1344 (576 image tokens) while evaluation gives it
    476x1988 (1207 tokens, its processor's max_pixels capped too); every image more elongated than
    1.8:1 trained below train.image_max_pixels."""
    from trainer.train.stream import check_shard_resolution

    assert shards.fitted_size(1000, 4000, 1344, 1003520, 28) == (336, 1344)
    assert shards.fitted_size(1000, 4000, 14168, 1003520, 28) == (476, 1988)  # Qwen2-VL's own size at 1003520
    train, store, _, _ = normalized
    for side, pixels, refused in ((1344, 1003520, True), (14168, 1003520, False), (1344, 4096, False),
                                  (1344, None, False)):
        out = tmp_path / f"s{side}-{pixels}"
        write_shards(train, store, out, shard_params(max_samples=10, max_bytes=10**9, image_max_side=side, image_max_pixels=pixels))
        train_pixels = pixels or 1003520  # unscaled shards: training caps them itself
        if refused or pixels is None:
            with pytest.raises(ValueError, match="shard.image_max_side: 14168 .* up to 200:1"):
                check_shard_resolution(out, train_pixels)
        else:
            check_shard_resolution(out, train_pixels)
        check_shard_resolution(out, 4096)  # at the default resolution 1344 px keeps every ratio up to 441:1


def test_size_grid_stores_the_processors_size_so_it_resizes_nothing(normalized, tmp_path):
    from trainer.backbone.families import build_tiny
    from trainer.train.stream import shard_grid_mismatch
    from trainer.model.image_processing import QwenImageProcessor

    img = make_image(100, 41, "JPEG", 5)
    snapped = shards.fit_image(img, 1344, max_pixels=4096, multiple=16)
    assert snapped.resized and (snapped.width, snapped.height) == (96, 32)  # 41 -> 48 would break the cap
    with Image.open(io.BytesIO(snapped.bytes)) as member:
        assert member.size == (96, 32)
    on_grid = make_image(96, 48, "PNG", 6)
    kept = shards.fit_image(on_grid, 1344, max_pixels=4608, multiple=16)
    assert not kept.resized and kept.bytes == on_grid.bytes  # already a fixed point: bytes kept

    train, store, _, _ = normalized
    params = shard_params(max_samples=10, max_bytes=10**9, image_max_side=1344, image_max_pixels=4096,
                          image_size_multiple=16)
    index = write_shards(train, store, tmp_path / "s", params)
    assert index["params"]["image_size_multiple"] == 16
    qwen = build_tiny("qwen2_vl", image_size=32)  # patch 8 x merge 2 = 16
    processor = QwenImageProcessor(qwen.image_processor)
    processor.max_pixels = 4096
    checked = 0
    for sample in wds.WebDataset(shard_urls(tmp_path / "s"), shardshuffle=False):
        for key, value in sample.items():
            if key.endswith(("jpg", "png", "webp")):
                with Image.open(io.BytesIO(value)) as im:
                    assert im.width % 16 == 0 and im.height % 16 == 0 and im.width * im.height <= 4096
                    assert processor.target_size(im.width, im.height) == im.size
                checked += 1
    assert checked > 0
    assert shard_grid_mismatch(tmp_path / "s", qwen.image_processor) is None
    qwen.image_processor.patch_size = 14  # a backbone on another grid: a warning naming the param
    assert "shard.image_size_multiple: 28" in shard_grid_mismatch(tmp_path / "s", qwen.image_processor)
    clip = build_tiny("clip", image_size=32)
    assert "shard.image_size_multiple: null" in shard_grid_mismatch(tmp_path / "s", clip.image_processor)


def test_missing_image_is_a_clear_error(normalized, tmp_path):
    train, _, _, _ = normalized
    empty_store = tmp_path / "store"
    empty_store.mkdir()
    with pytest.raises(KeyError, match=r"image\(s\) referenced by the records are not in"):
        write_shards(train, empty_store, tmp_path / "out", PARAMS)


def test_bad_inputs_are_refused(normalized, tmp_path):
    train, store, _, _ = normalized
    bad = tmp_path / "train" / "Syn-X"
    bad.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"]}), bad / "part-00000.parquet")
    with pytest.raises(ValueError, match="schema differs"):
        write_shards(tmp_path / "train", store, tmp_path / "out", PARAMS)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(FileExistsError):
        write_shards(train, store, busy, PARAMS)


def test_wrong_dataset_or_duplicate_id_is_refused(tmp_path):
    train, store, records, _ = build_normalized(tmp_path, {"Syn-D": 4})
    recs = records["Syn-D"]
    dup = recs[:2] + [recs[0]]
    pq.write_table(pa.Table.from_pylist(dup, schema=RECORD_SCHEMA), train / "Syn-D" / "part-00001.parquet")
    with pytest.raises(ValueError, match="duplicate record id"):
        write_shards(train, store, tmp_path / "o1", PARAMS)
    wrong = [{**recs[0], "dataset": "Other"}]
    pq.write_table(pa.Table.from_pylist(wrong, schema=RECORD_SCHEMA), train / "Syn-D" / "part-00001.parquet")
    with pytest.raises(ValueError, match="says dataset 'Other'"):
        write_shards(train, store, tmp_path / "o2", PARAMS)


def test_stage_clears_output_and_restarts_to_same_bytes(normalized, sharded, tmp_path):
    train, store, _, _ = normalized
    out, _ = sharded
    params_file = write_params(tmp_path / "params.yaml", shard=PARAMS.to_dict(), train={"image_max_pixels": None})
    target = tmp_path / "data" / "shards" / "train"
    # leftovers of a run killed midway: a partial tar, a stale finished tar and an old work dir
    (target / "Syn-A").mkdir(parents=True)
    (target / "Syn-A" / "Syn-A-000001.tar.tmp").write_bytes(b"partial")
    (target / "Syn-A" / "Syn-A-000009.tar").write_bytes(b"stale")
    (target / ".work").mkdir()
    shard_stage.main(["--normalized", str(train), "--images", str(store), "--out", str(target),
                      "--params", str(params_file)])
    assert tree_bytes(target) == tree_bytes(out)


def test_build_index_totals():
    r = shards.DatasetShards("D", "vqa", "IND", "original", samples=3, images=4, resized_images=1,
                             shards=[shards.ShardInfo("D/D-000000.tar", "D", 3, 20480, "ab", False)])
    index = build_index(PARAMS, [r])
    assert index["datasets"]["D"]["bytes"] == 20480 and index["total"] == {
        "datasets": 1, "samples": 3, "shards": 1, "bytes": 20480}


def test_max_rows_per_dataset_draws_a_seeded_random_subset_in_file_order(normalized, sharded, tmp_path):
    """The paper's "at most 50K per dataset, randomly selected": a capped dataset keeps that many of
    its records, drawn at random (not the first ones), seeded, in file order, with only their images;
    smaller datasets keep all; workers do not change the bytes; another seed draws others."""
    train, store, records, _ = normalized
    _, full = sharded
    sizes = {d: len(r) for d, r in records.items()}
    cap = min(n for n in sizes.values() if n > 2) - 1
    params = replace(PARAMS, max_rows_per_dataset=cap)
    index = write_shards(train, store, tmp_path / "capped", params)
    urls = shard_urls(tmp_path / "capped")
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    kept = {}
    for d, recs in records.items():
        kept[d] = [sample_key(r["id"]) for r in recs if sample_key(r["id"]) in set(keys)]
        assert index["datasets"][d]["samples"] == len(kept[d]) == min(sizes[d], cap)
        assert index["datasets"][d]["source_rows"] == sizes[d] == full["datasets"][d]["source_rows"]
        assert [k for k in keys if k in set(kept[d])] == kept[d]  # file order
    capped = [d for d in records if sizes[d] > cap]
    assert capped and all(kept[d] != [sample_key(r["id"]) for r in records[d][:cap]]  # not the first rows
                          for d in capped)
    images = sum(d["images"] for d in index["datasets"].values())
    assert images < sum(d["images"] for d in full["datasets"].values())
    parallel = replace(params, workers=2)
    write_shards(train, store, tmp_path / "parallel", parallel)
    assert tree_bytes(tmp_path / "parallel") == tree_bytes(tmp_path / "capped")
    other = replace(params, seed=1)
    assert selected_rows(other, capped[0], sizes[capped[0]]) != selected_rows(params, capped[0], sizes[capped[0]])
    assert selected_rows(PARAMS, capped[0], sizes[capped[0]]) is None  # no cap: everything


def test_shuffle_writes_each_datasets_records_in_a_seeded_random_order(normalized, sharded, tmp_path):
    """shard.shuffle: the same records (and member bytes) as file order, in a seeded random order per
    dataset, the same with 1 or 2 workers; with max_rows_per_dataset the order covers the drawn rows."""
    train, store, records, _ = normalized
    out, _ = sharded

    def samples(root):
        return {s["__key__"]: s for s in wds.WebDataset(shard_urls(root), shardshuffle=False, empty_check=False)}

    params = replace(PARAMS, shuffle=True)
    index = write_shards(train, store, tmp_path / "shuffled", params)
    plain, shuffled = samples(out), samples(tmp_path / "shuffled")
    assert set(shuffled) == set(plain) and all(shuffled[k]["json"] == plain[k]["json"] for k in plain)
    for d, recs in records.items():
        file_order = [sample_key(r["id"]) for r in recs]
        got = [k for k in shuffled if k in set(file_order)]
        assert sorted(got) == sorted(file_order) and got != file_order
        assert got == [file_order[i] for i in row_order(params, d, len(recs), None)]
    assert index["params"]["shuffle"] is True
    write_shards(train, store, tmp_path / "parallel", replace(params, workers=2))
    assert tree_bytes(tmp_path / "parallel") == tree_bytes(tmp_path / "shuffled")
    other = replace(params, seed=7)
    assert row_order(other, "Syn-A", 23, None) != row_order(params, "Syn-A", 23, None)
    capped = replace(params, max_rows_per_dataset=5)
    chosen = selected_rows(capped, "Syn-A", 23)
    assert sorted(row_order(capped, "Syn-A", 23, chosen)) == sorted(chosen)
    assert row_order(PARAMS, "Syn-A", 23, None) is None


# sha256 over (relative path, bytes) of every file the shard stage wrote for the `normalized` fixture,
# as pipelines/shard.py wrote them before it took MMEB-V2 training pairs: V1 shards must not change
V1_TREE_DIGESTS = {
    "plain": "72af547a3c3ad0868e08716c7f3bd5c7159a362cd4f09eddede26c061e5b419e",
    "scaled": "f219c1177b7fc1ae0ecbba624ccc7bc3c770cfd86c4c1a39db5788373a70f71b",
}


@pytest.mark.parametrize("name", sorted(V1_TREE_DIGESTS))
def test_v1_shard_bytes_are_pinned(normalized, sharded, tmp_path, name):
    train, store, _, _ = normalized
    out = sharded[0]
    if name == "scaled":  # pre-scaled, on the 28 grid, shuffled
        out = tmp_path / "scaled"
        write_shards(train, store, out, shard_params(max_samples=7, max_bytes=1 << 20, image_max_side=MAX_SIDE,
                                                     image_max_pixels=900, image_size_multiple=28, shuffle=True,
                                                     seed=3))
    h = hashlib.sha256()
    for path, data in tree_bytes(out).items():
        h.update(path.encode() + b"\0" + data)
    assert h.hexdigest() == V1_TREE_DIGESTS[name]
