"""Sharding MMEB-V2 training pairs (V2_TRAIN_SCHEMA): page images and video frames as members, beside V1
datasets whose bytes do not change."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.schema import holds_v2_pairs
from pipelines.shard import MINED_SKIP_V2, write_shards
from tests.support.params import section
from tests.support.v2_train import DOC, V1, VIDEO_CAPTION, VIDEO_RETRIEVAL, build_v2_train


def shard_params(**kw):
    return section("shard", **{"workers": 1, "image_max_pixels": 1024, "image_size_multiple": 28,
                               "max_rows_per_dataset": None, "shuffle": False, "seed": 0, "max_samples": 3,
                               "max_bytes": 1 << 20, "image_max_side": 1000, **kw})


@pytest.fixture(scope="module")
def v2_normalized(tmp_path_factory):
    return build_v2_train(tmp_path_factory.mktemp("v2norm"), frames=3)


@pytest.fixture(scope="module")
def v2_sharded(v2_normalized, tmp_path_factory):
    out = tmp_path_factory.mktemp("v2shards") / "train"
    return out, write_shards(*v2_normalized, out, shard_params())


def samples(out, dataset) -> list[dict[str, bytes]]:
    """Every sample of a dataset's tars: member suffix -> bytes, in tar order."""
    by_key: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((out / dataset).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                by_key.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return list(by_key.values())


def test_video_frames_are_members_in_order_and_the_json_names_them(v2_normalized, v2_sharded):
    out, index = v2_sharded
    store_rows = pq.read_table(v2_normalized[0] / VIDEO_CAPTION / "pairs-00000.parquet").to_pylist()
    for sample, record in zip(samples(out, VIDEO_CAPTION), store_rows):
        doc = json.loads(sample["json"])
        assert doc["modality"] == "video" and doc["target"]["video"] is None
        video = doc["query"]["video"]
        assert [f["member"] for f in video] == ["query.f00.png", "query.f01.png", "query.f02.png"]
        assert [f["sha256"] for f in video] == [f["sha256"] for f in record["query"]["video"]]
        assert sorted(sample) == ["json", *(f["member"] for f in video)]
        for frame in video:  # 28 x 28 frames fit the cap and the grid: stored bytes unchanged
            assert hashlib.sha256(sample[frame["member"]]).hexdigest() == frame["member_sha256"] == frame["sha256"]
    entry = index["datasets"][VIDEO_CAPTION]
    assert (entry["modality"], entry["videos"], entry["images"]) == ("video", 4, 12)
    assert json.loads(samples(out, VIDEO_RETRIEVAL)[0]["json"])["target"]["video"][2]["member"] == "target.f02.png"


def test_pages_are_fitted_like_images_and_v1_entries_keep_their_keys(v2_sharded):
    out, index = v2_sharded
    for sample in samples(out, DOC):
        ref = json.loads(sample["json"])["query"]["image"]
        data = sample[ref["member"]]
        with Image.open(io.BytesIO(data)) as img:  # 56 x 84 pre-scaled to <= 1024 px on the 28 grid
            assert img.size == (ref["width"], ref["height"]) == (28, 28)
        assert hashlib.sha256(data).hexdigest() == ref["member_sha256"] != ref["sha256"]
    assert index["datasets"][DOC]["resized_images"] == 4 and index["datasets"][DOC]["modality"] == "visdoc"
    assert "modality" not in index["datasets"][V1] and "videos" not in index["datasets"][V1]
    assert index["total"]["samples"] == 16 and all(s["samples"] <= 3 for s in index["shards"])


def test_v2_shards_are_byte_deterministic_whatever_the_workers(v2_normalized, v2_sharded, tmp_path):
    out, _ = v2_sharded
    again = tmp_path / "again"
    write_shards(*v2_normalized, again, shard_params(workers=2, shuffle=False))
    tree = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert tree == {p.relative_to(again): p.read_bytes() for p in sorted(again.rglob("*")) if p.is_file()}


def test_with_mined_negatives_v2_datasets_are_skipped_and_counted(v2_normalized, tmp_path, caplog):
    """The mine stage skips V2 datasets (no data/mined/<dataset>.parquet): the mined shard instance
    keeps their records as they are and says why in the index, where a V1 dataset without a mined
    file is still an error."""
    train, store = v2_normalized
    mined = tmp_path / "mined"
    mined.mkdir()
    pq.write_table(pa.table({"id": [f"{V1}/original/{i}" for i in range(4)],
                             "negative_ids": [[f"{V1}/original/{(i + 1) % 4}"] for i in range(4)]}),
                   mined / f"{V1}.parquet")
    index = write_shards(train, store, tmp_path / "out", shard_params(), mined=mined)
    assert index["datasets"][V1]["mined"] == 4
    for dataset in (DOC, VIDEO_CAPTION, VIDEO_RETRIEVAL):
        assert index["datasets"][dataset]["mined_skipped"] == MINED_SKIP_V2
        assert "mined" not in index["datasets"][dataset]
    assert f"{DOC}: no mined negatives" in caplog.text
    (mined / f"{V1}.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="no mined negatives for train dataset Syn-V1"):
        write_shards(train, store, tmp_path / "out2", shard_params(), mined=mined)


def test_a_dataset_mixing_both_schemas_is_refused(v2_normalized, tmp_path):
    """The file names say which schema a dataset holds (`holds_v2_pairs`); a file whose schema is the
    other one, or a folder with both names, is refused naming it."""
    train, store = v2_normalized
    assert holds_v2_pairs(train / DOC) and not holds_v2_pairs(train / V1)
    mixed = tmp_path / "train"
    (mixed / DOC).mkdir(parents=True)
    (mixed / DOC / "part-00000.parquet").write_bytes((train / DOC / "pairs-00000.parquet").read_bytes())
    (mixed / DOC / "part-00001.parquet").write_bytes((train / V1 / "part-00000.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"part-00000.parquet: holds V2_TRAIN_SCHEMA records, but its name says "
                                         r"RECORD_SCHEMA \(part-\*\)"):
        write_shards(mixed, store, tmp_path / "out", shard_params())
    (mixed / DOC / "part-00000.parquet").rename(mixed / DOC / "pairs-00000.parquet")  # named for its schema
    with pytest.raises(ValueError, match="holds both"):
        write_shards(mixed, store, tmp_path / "out2", shard_params())
