"""Streaming MMEB-V2 training pairs: video sides decode to frames, reach a Qwen2-VL batch as
`pixel_values_videos`, and render exactly as evaluation renders the same side."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.shard import write_shards
from tests.support.params import section
from tests.support.v2_train import DOC, V1, VIDEO_CAPTION, VIDEO_RETRIEVAL, build_v2_train, frame_colour, v2_side
from trainer.eval.evaluate_v2 import _Items
from trainer.model.inputs import Collator, render_text
from trainer.train import stream as D


@pytest.fixture(scope="module")
def v2_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2stream")
    train, store = build_v2_train(root, frames=2)
    params = section("shard", workers=1, image_max_pixels=1024, image_size_multiple=28, max_rows_per_dataset=None,
                     shuffle=False, seed=0, max_samples=100, max_bytes=1 << 20, image_max_side=1000)
    write_shards(train, store, root / "shards", params)
    return D.read_shards(root / "shards")


def first_raw(shards, dataset) -> dict:
    part = D._Part(next(s for s in shards if s.dataset == dataset))
    return next(D._read_part(part))


def test_a_video_side_decodes_to_its_frames_in_order(v2_shards):
    record, images = D.decode_sample(first_raw(v2_shards, VIDEO_RETRIEVAL))
    assert images["query"] is None
    frames = images["target"]
    assert isinstance(frames, list) and len(frames) == 2 and all(f.size == (28, 28) for f in frames)
    assert [f.getpixel((0, 0)) for f in frames] == [frame_colour(VIDEO_RETRIEVAL, 0, f) for f in (0, 1)]
    _, images = D.decode_sample(first_raw(v2_shards, DOC))
    assert images["query"].size == (28, 28) and images["target"] is None
    raw = first_raw(v2_shards, VIDEO_CAPTION)
    del raw["query.f01.png"]
    with pytest.raises(D.BadSample, match="query.f01.png"):
        D.decode_sample(raw)


def test_a_mixed_batch_gives_qwen2_vl_images_and_videos(qwen, v2_shards):
    collator = Collator(qwen, max_text_tokens=32, image_max_pixels=1024)
    ds = D.ContrastiveStream(v2_shards, D.StreamConfig(seed=0, global_batch=8, homogeneous_batch=2,
                                                       gc_chunk_size=4), collator)
    seen, videos = set(), 0
    for step in range(6):
        batch = ds.make_batch(step, {}, D.StreamPosition())
        seen.update(batch["datasets"])
        for side, video_dataset in (("query", VIDEO_CAPTION), ("target", VIDEO_RETRIEVAL)):
            for c, chunk in enumerate(batch[side]):
                expected = batch["datasets"][4 * c:4 * c + 4].count(video_dataset)  # its video rows
                assert ("pixel_values_videos" in chunk) == bool(expected)
                if expected:
                    videos += expected
                    # 2 frames: one temporal patch; 28 px frames -> 32 px on the tiny model's 16 px grid
                    assert chunk["video_grid_thw"].tolist() == [[1, 4, 4]] * expected
                    token = collator.tokenizer.convert_tokens_to_ids("<|video_pad|>")
                    assert int((chunk["input_ids"] == token).sum()) == 4 * expected  # 4x4 patches / merge 2x2
    assert seen == {DOC, V1, VIDEO_CAPTION, VIDEO_RETRIEVAL} and videos > 0
    assert batch["images"] == sum(2 if d in (VIDEO_CAPTION, VIDEO_RETRIEVAL) else 1 for d in batch["datasets"])


@pytest.mark.parametrize("instructions", [True, False])
def test_training_renders_a_v2_side_as_evaluation_does(qwen, v2_shards, instructions):
    """Evaluation's V2 items (`trainer.eval.evaluate_v2`, native video) and the training loader's sides
    give the Collator the same text and the same tensors."""
    collator = Collator(qwen, max_text_tokens=32, image_max_pixels=1024, instructions=instructions)
    for dataset, name in ((VIDEO_CAPTION, "query"), (VIDEO_RETRIEVAL, "target"), (DOC, "query"),
                          (VIDEO_RETRIEVAL, "query")):
        record, images = D.decode_sample(first_raw(v2_shards, dataset))
        side, visual = record[name], images[name]
        items = _Items()
        item = items.items[items.side(json.loads(json.dumps(side)), native=True)[0]]
        frames = len(visual) if isinstance(visual, list) else 0
        texts = [render_text(s, qwen, instructions=instructions, has_image=visual is not None, has_video=frames)
                 for s in (side, item)]
        assert texts[0] == texts[1]
        if not instructions and dataset == VIDEO_RETRIEVAL and name == "target":
            assert texts[0] == "<|video_pad|>\nUnderstand the content of the provided video:\n"
        train_batch, eval_batch = collator([side], [visual]), collator([item], [visual])
        assert train_batch.keys() == eval_batch.keys()
        assert all(torch.equal(train_batch[k], eval_batch[k]) for k in train_batch)


def test_families_without_video_refuse_a_video_row_clearly(v2_shards):
    from trainer.backbone.families import build_tiny

    collator = Collator(build_tiny("llava", image_size=32), max_text_tokens=32)
    record, images = D.decode_sample(first_raw(v2_shards, VIDEO_CAPTION))
    with pytest.raises(ValueError, match="takes no video input"):
        collator.validate([record["query"]], [images["query"]])
    ok = v2_side("a text side")
    collator.validate([ok], [None])


def test_mined_batches_draw_unmined_v2_records_at_random(qwen, v2_shards, tmp_path, caplog):
    """Round two's mined batches (`trainer.train.clusters`): the mine stage skips V2 datasets, so they
    have no kNN graph; their records are fallback records, read by id with their frames."""
    from trainer.train.clusters import ClusterStream

    collator = Collator(qwen, max_text_tokens=32, image_max_pixels=1024)
    ds = ClusterStream(v2_shards, D.StreamConfig(seed=0, global_batch=8), collator, mined_root=tmp_path,
                       cluster_size=2)
    counts = ds.summary(4)["datasets"]
    assert counts[VIDEO_CAPTION]["no_neighbours"] == counts[VIDEO_CAPTION]["records"] == 4
    assert f"every record of {VIDEO_RETRIEVAL} is drawn at random" in caplog.text
    batches = [ds.make_batch(step, {}, None) for step in range(4)]
    assert any("pixel_values_videos" in b["query"][0] or "pixel_values_videos" in b["target"][0] for b in batches)


def test_a_video_hard_negative_is_sharded_decoded_and_collated(qwen):
    """VLM2Vec-V2's pairs come without negatives, but a V2 record may hold some: a video negative's
    frames are members `neg0.fNN`, decode to frames and are collated as a video row."""
    import hashlib

    from pipelines.imagestore import StoredImage
    from pipelines.shard import build_sample
    from tests.support.images import image_bytes

    store = {}
    for colour in ((10, 20, 30), (40, 50, 60)):
        data = image_bytes(colour, size=(32, 32), fmt="PNG")
        store[hashlib.sha256(data).hexdigest()] = StoredImage(hashlib.sha256(data).hexdigest(), data, 32, 32, "PNG")
    frames = [{"sha256": sha, "path": f"f{i}.png", "width": 32, "height": 32} for i, sha in enumerate(store)]
    record = {"id": "Syn-V2/train/0", "dataset": "Syn-V2", "split": "train", "modality": "video",
              "meta_task": "retrieval", "query": v2_side("Find a video of two colours"),
              "target": v2_side("<|video_1|> two colours", video=frames),
              "negatives": [v2_side("<|video_1|> the same colours reversed", video=frames[::-1])]}
    sample = build_sample(record, store, max_side=1000, max_pixels=1024, multiple=16)
    members = {name.partition(".")[2]: data for name, data in sample.members}
    assert sorted(members) == ["json", "neg0.f00.png", "neg0.f01.png", "target.f00.png", "target.f01.png"]
    record, images = D.decode_sample(members, 1024, negatives=1)
    assert [f.getpixel((0, 0)) for f in images["neg0"]] == [(40, 50, 60), (10, 20, 30)]
    collator = Collator(qwen, max_text_tokens=32, image_max_pixels=1024)
    ds = D.ContrastiveStream([D.Shard("unused.tar", "Syn-V2", 1)], D.StreamConfig(seed=0, global_batch=1,
                                                                                  hard_negatives=1), collator)
    batch = ds.collate([record], [images])
    assert batch["negative_mask"].tolist() == [[True]] and batch["images"] == 4
    assert batch["negatives"][0]["video_grid_thw"].tolist() == [[1, 4, 4]]  # 32 px, patch 8: 4 x 4
