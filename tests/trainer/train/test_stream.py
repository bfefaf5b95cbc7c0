"""Streaming loader: coverage, determinism across worker counts, exact resume, mixture, quarantine."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import IntegrityError
from pipelines.images import max_pixels_size
from tests.support.images import encode, image_bytes
from tests.support.shards import make_side, write_test_shards
from trainer.model.inputs import input_kind, input_size
from trainer.train import losses as L
from trainer.train import stream as D

# --- the stream under test, with a collator that records what it was given ----------------------


class RecordingCollator:
    """Picklable stand-in for trainer.model.inputs.Collator: tensors that identify what it was given."""

    def __call__(self, sides, images):
        return {
            "text_hash": torch.tensor([int(hashlib.md5(s["text"].encode()).hexdigest()[:8], 16) for s in sides]),
            "has_image": torch.tensor([im is not None for im in images]),
            "pixel_sum": torch.tensor([sum(im.getpixel((0, 0))) if im is not None else -1 for im in images]),
        }


def stream(shards, *, batch=4, world=1, rank=0, slots=2, position=None, mixture="proportional", **kw):
    cfg = D.StreamConfig(seed=kw.pop("seed", 0), global_batch=batch, world_size=world, rank=rank,
                         slots_per_rank=slots, **kw)
    return D.ContrastiveStream(shards, cfg, RecordingCollator(), mixture=mixture, position=position)


def take(ds, steps, workers=0):
    it = iter(D.make_loader(ds, workers))
    return [next(it) for _ in range(steps)]


# --- tests ------------------------------------------------------------------------------------


def test_read_shards_and_errors(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 25, "B": 5}, per_shard=10)
    assert [(Path(s.path).name, s.samples) for s in shards] == [
        ("A-000000.tar", 10), ("A-000001.tar", 10), ("A-000002.tar", 5), ("B-000000.tar", 5)]
    with pytest.raises(FileNotFoundError, match="shard stage"):
        D.read_shards(tmp_path / "nowhere")
    Path(shards[-1].path).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        D.read_shards(tmp_path)


def test_a_shard_whose_bytes_changed_is_refused_naming_it(tmp_path):
    """A tar the shard stage wrote and something changed since (a bad copy, a stray write) stops
    the run before training on it, naming the tar and the index's and the file's sha256."""
    shards = write_test_shards(tmp_path, {"A": 12}, per_shard=6)
    index = json.loads((tmp_path / "index.json").read_text())["shards"]
    tar = Path(shards[1].path)
    data = bytearray(tar.read_bytes())
    data[700:708] = b"XXXXXXXX"  # inside the first member: same size
    tar.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="A-000001.tar: contents changed") as e:
        D.read_shards(tmp_path)
    assert e.value.expected == index[1]["sha256"] != e.value.found
    tar.write_bytes(bytes(data[:1024]))
    with pytest.raises(IntegrityError, match=r"truncated or extended \(1024 bytes"):
        D.read_shards(tmp_path)


def test_mixture_probs():
    shards = [D.Shard("a0", "A", 30), D.Shard("a1", "A", 30), D.Shard("b", "B", 20), D.Shard("c", "C", 0)]
    assert D.mixture_probs(shards, "proportional") == {"A": 0.75, "B": 0.25}
    assert D.mixture_probs(shards, {"A": 1, "B": 3}) == {"A": 0.25, "B": 0.75}
    assert D.mixture_probs(shards, {"B": 2}) == {"B": 1.0}
    with pytest.raises(ValueError, match="not in the shards"):
        D.mixture_probs(shards, {"Z": 1})
    with pytest.raises(ValueError, match="without samples"):
        D.mixture_probs(shards, {"C": 1})
    with pytest.raises(ValueError, match="weight 0"):  # datasets without samples only
        D.mixture_probs([D.Shard("c", "C", 0)], "proportional")
    # weights that are not > 0 and mixtures that are neither: tests/pipelines/test_params.py


def test_batch_plan_mixture_and_homogeneous_runs():
    counts = Counter()
    for step in range(400):
        plan = D.batch_plan(7, step, ["A", "B"], [0.75, 0.25], 16, homogeneous_batch=4)
        assert plan == D.batch_plan(7, step, ["A", "B"], [0.75, 0.25], 16, homogeneous_batch=4)
        assert len(plan) == 16
        for r in range(4):
            assert len(set(plan[4 * r:4 * r + 4])) == 1  # one dataset per sub-batch
        counts.update(plan)
    assert 0.70 < counts["A"] / sum(counts.values()) < 0.80
    assert D.batch_plan(7, 1, ["A", "B"], [0.5, 0.5], 64) != D.batch_plan(8, 1, ["A", "B"], [0.5, 0.5], 64)


@pytest.mark.parametrize("total,per_shard,num_slots", [
    (21, 7, 4), (36, 4, 4),  # fewer and more shards than slots
    (21, 20, 4), (42, 40, 8), (9, 4, 8),  # a short last shard, fewer shards than slots
    (29, 7, 4), (61, 6, 8),  # a short last shard, more shards than slots (the shard stage's 1000s + rest)
])
def test_slots_partition_each_epoch(tmp_path, caplog, total, per_shard, num_slots):
    shards = write_test_shards(tmp_path, {"A": total}, per_shard=per_shard)
    for epoch in (0, 1):
        seen, lengths = [], []
        for slot in range(num_slots):
            s = D.DatasetStream("A", shards, seed=3, slot=slot, num_slots=num_slots, window=5, epoch=epoch)
            lengths.append(sum(p.samples for p in s.parts(epoch)))
            ids = [json.loads(next(s)["json"])["id"] for _ in range(lengths[-1])]
            assert s.epoch == epoch
            seen += ids
        assert min(lengths) > 0  # no slot is left without data
        # shares differ by at most one sample, whatever the shard sizes; a slot reads few tars
        assert max(lengths) - min(lengths) <= 1, lengths
        parts = [D.DatasetStream("A", shards, seed=3, slot=k, num_slots=num_slots, window=5).parts(epoch)
                 for k in range(num_slots)]
        assert sum(len(p) for p in parts) <= len(shards) + num_slots - 1  # each shard cut at most at slot edges
        # a slot's stream resumed inside its range continues exactly
        whole = D.DatasetStream("A", shards, seed=3, slot=1, num_slots=num_slots, window=1, epoch=epoch)
        ids = [json.loads(next(whole)["json"])["id"] for _ in range(lengths[1])]
        resumed = D.DatasetStream("A", shards, seed=3, slot=1, num_slots=num_slots, window=1, epoch=epoch,
                                  offset=lengths[1] // 2)
        assert [json.loads(next(resumed)["json"])["id"] for _ in range(lengths[1] - lengths[1] // 2)] \
            == ids[lengths[1] // 2:]
        assert sorted(seen) == sorted(f"A/original/{i}" for i in range(total))  # each sample once
    assert "reads the whole dataset" not in caplog.text


def test_tiny_dataset_slot_resamples(tmp_path, caplog):
    shards = write_test_shards(tmp_path, {"A": 2}, per_shard=1)
    s = D.DatasetStream("A", shards, seed=0, slot=0, num_slots=4, window=1)  # slots 1 and 3 get one each
    ids = {json.loads(next(s)["json"])["id"] for _ in range(4)}
    assert ids == {"A/original/0", "A/original/1"}
    assert "reads the whole dataset" in caplog.text


def test_resume_on_another_world_size_starts_a_fresh_epoch(tmp_path):
    """A checkpoint of 2 ranks resumed by 1: the new slot layout cannot continue the old slots'
    ranges, so each dataset starts the next epoch instead of replaying epoch 0 from its start (which
    re-trained on the run's first samples right away)."""
    shards = write_test_shards(tmp_path, {"A": 400, "B": 200}, per_shard=50)
    first, positions = [], []
    for rank in range(2):
        batches = take(stream(shards, batch=8, world=2, rank=rank, slots=2, shuffle_buffer=8), 3)
        first += [i for b in batches for i in b["ids"]]
        positions.append(D.StreamPosition(slots_per_rank=2, world_size=2))
        for b in batches:
            positions[-1].update(b)
    positions[0].merge(positions[1])  # what the checkpoint holds
    moved = positions[0].fresh_epochs(world_size=1, slots_per_rank=2)
    assert moved.step == 3 and sorted(moved.slots) == [0, 1]
    assert all(v == [1, 0] for slot in moved.slots.values() for v in slot.values())
    resumed = take(stream(shards, batch=8, world=1, rank=0, slots=2, shuffle_buffer=8, position=moved), 3)
    assert [b["step"] for b in resumed] == [3, 4, 5]
    again = [i for b in resumed for i in b["ids"]]
    assert len(set(again) & set(first)) <= 4, sorted(set(again) & set(first))  # chance overlap only
    # a plain restart (the old behaviour) replays them
    replay = take(stream(shards, batch=8, world=1, rank=0, slots=2, shuffle_buffer=8,
                         position=D.StreamPosition(step=3, slots_per_rank=2, world_size=1)), 3)
    assert len({i for b in replay for i in b["ids"]} & set(first)) > 4


def test_fresh_epochs_start_after_the_latest_epoch_any_slot_reached():
    """Slots cross an epoch boundary at different steps: whatever their order in the checkpoint, each
    dataset restarts after the furthest one, so no slot of the new layout replays an epoch another
    old slot already finished."""
    old = D.StreamPosition(step=9, slots_per_rank=2, world_size=2, slots={
        0: {"A": [3, 5], "B": [0, 7]}, 1: {"A": [2, 9]}, 2: {"A": [3, 0], "B": [1, 2]}, 3: {"A": [1, 4]}})
    moved = old.fresh_epochs(world_size=1, slots_per_rank=3)
    assert (moved.step, moved.world_size, moved.slots_per_rank) == (9, 1, 3)
    assert moved.slots == {k: {"A": [4, 0], "B": [2, 0]} for k in range(3)}


def test_each_shuffle_window_has_its_own_permutation(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 48}, per_shard=48)
    s = D.DatasetStream("A", shards, seed=0, slot=0, num_slots=1, window=8)
    order = [int(json.loads(next(s)["json"])["id"].split("/")[-1]) for _ in range(48)]
    windows = [tuple(i - w for i in order[w:w + 8]) for w in range(0, 48, 8)]
    assert all(sorted(p) == list(range(8)) for p in windows)  # a window emits its own samples
    assert len(set(windows)) > 1  # not one permutation repeated: each window index seeds its own


def test_world_ranks_see_disjoint_samples_in_first_epoch(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 40}, per_shard=10)
    ids = []
    for rank in range(2):
        for b in take(stream(shards, batch=4, world=2, rank=rank, slots=2, shuffle_buffer=4), 10):
            assert b["pairs"] == 2 and b["query"][0]["has_image"].all()
            ids += b["ids"]
    assert sorted(ids) == sorted(f"A/original/{i}" for i in range(40))


def test_same_batches_with_0_1_2_workers(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 30, "B": 12}, per_shard=5)
    runs = [take(stream(shards, batch=6, slots=2, shuffle_buffer=8), 9, workers=w) for w in (0, 1, 2)]
    for other in runs[1:]:
        assert [b["ids"] for b in other] == [b["ids"] for b in runs[0]]
        assert all(torch.equal(x["query"][0]["pixel_sum"], y["query"][0]["pixel_sum"]) for x, y in zip(other, runs[0]))
    assert [b["step"] for b in runs[0]] == list(range(9))
    # shuffled: not the tar order, and the epochs roll over (30+12 samples, 54 drawn)
    flat = [i for b in runs[0] for i in b["ids"]]
    assert flat[:6] != sorted(flat[:6], key=lambda x: int(x.split("/")[-1]))
    assert len(flat) == 54 and len(set(flat)) < 54


def test_workers_must_divide_slots(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 10})
    with pytest.raises(Exception, match="do not divide"):
        take(stream(shards, slots=3), 1, workers=2)


def test_resume_from_any_step_is_exact_and_decodes_only_the_batch(tmp_path, monkeypatch):
    shards = write_test_shards(tmp_path, {"A": 23, "B": 17}, per_shard=6)
    kw = dict(batch=4, slots=2, shuffle_buffer=10, homogeneous_batch=2)
    full = take(stream(shards, **kw), 30)
    for cut in (1, 7, 16):  # 16 steps * 2 pairs per slot crosses an epoch of dataset B in each slot
        pos = D.StreamPosition(slots_per_rank=2)
        for b in full[:cut]:
            pos.update(b)
        pos = D.StreamPosition.from_dict(json.loads(json.dumps(pos.to_dict())))  # through JSON
        calls = []
        real = D.decode_image
        monkeypatch.setattr(D, "decode_image", lambda *a: calls.append(1) or real(*a))
        it = iter(D.make_loader(stream(shards, position=pos, **kw), 0))
        first = next(it)
        assert len(calls) == first["images"]  # skipping decodes nothing
        resumed = [first] + [next(it) for _ in range(len(full) - cut - 1)]
        monkeypatch.setattr(D, "decode_image", real)
        assert [b["ids"] for b in resumed] == [b["ids"] for b in full[cut:]]
        assert [b["position"] for b in resumed] == [b["position"] for b in full[cut:]]


def test_position_update_rejects_gaps():
    pos = D.StreamPosition()
    pos.update({"step": 0, "slot": 0, "position": {"A": [0, 2]}})
    with pytest.raises(ValueError, match="out of order"):
        pos.update({"step": 2, "slot": 0, "position": {"A": [0, 4]}})


def test_corrupt_image_is_quarantined_and_resume_stays_exact(tmp_path, caplog):
    shards = write_test_shards(tmp_path, {"A": 12}, per_shard=12, corrupt={"A/original/3"})
    full = take(stream(shards, batch=2, slots=1, shuffle_buffer=0), 5)  # 10 of the 11 good samples
    ids = [i for b in full for i in b["ids"]]
    assert "A/original/3" not in ids
    assert sum(b["quarantined"] for b in full) == 1
    assert "quarantined sample A__original__3" in caplog.text
    assert ids == [f"A/original/{i}" for i in range(11) if i != 3]  # shuffle_buffer 0: tar order
    pos = D.StreamPosition(slots_per_rank=1)
    for b in full[:1]:
        pos.update(b)
    resumed = take(stream(shards, batch=2, slots=1, shuffle_buffer=0, position=pos), 4)
    assert [b["ids"] for b in resumed] == [b["ids"] for b in full[1:]]


def test_a_bad_negative_costs_its_pair_only_when_hard_negatives_use_it(tmp_path, monkeypatch):
    def text_pair_with_image_negatives(dataset, i):
        negs = [make_side(f"neg {i}.{j}", image_bytes((i, j, 7), fmt="PNG"), f"neg{j}.png") for j in range(3)]
        return {"query": make_side(f"q{i}"), "target": make_side(f"t{i}"), "negatives": negs}, {}

    shards = write_test_shards(tmp_path, {"A": 4}, per_shard=4, make_record=text_pair_with_image_negatives,
                               corrupt={"A/original/1"})  # its negatives' image bytes are garbage
    calls = []
    real = D.decode_image
    monkeypatch.setattr(D, "decode_image", lambda *a: calls.append(1) or real(*a))
    unused = take(stream(shards, batch=4, slots=1, shuffle_buffer=0), 1)[0]
    assert sorted(unused["ids"]) == [f"A/original/{i}" for i in range(4)] and unused["quarantined"] == 0
    assert calls == []  # hard_negatives 0: no negative is decoded
    used = take(stream(shards, batch=4, slots=1, shuffle_buffer=0, hard_negatives=2), 1)[0]
    assert "A/original/1" not in used["ids"] and used["quarantined"] == 1
    assert len(calls) == 2 * 4 + 1  # two negatives of each of the batch's 4 records, one of the bad record


def test_a_record_the_collator_cannot_take_is_quarantined_not_fatal(tmp_path, caplog):
    from trainer.backbone.families import build_tiny
    from trainer.model.inputs import Collator

    def record(dataset, i):
        size = {2: (300, 1)}.get(i, (24, 16))  # Qwen's processor refuses an aspect ratio over 200
        text = "two <|image_1|> placeholders" if i == 4 else f"q{i}"
        return {"query": make_side(text, image_bytes((i, 9, 9), size, fmt="PNG"), "query.png"),
                "target": make_side(f"t{i}"), "negatives": []}, {}

    shards = write_test_shards(tmp_path, {"A": 8}, per_shard=8, make_record=record)
    cfg = D.StreamConfig(seed=0, global_batch=6, slots_per_rank=1, shuffle_buffer=0)
    collator = Collator(build_tiny("qwen2_vl", seed=0), image_max_pixels=4096)
    (b,) = take(D.ContrastiveStream(shards, cfg, collator), 1)
    assert b["ids"] == [f"A/original/{i}" for i in (0, 1, 3, 5, 6, 7)] and b["quarantined"] == 2
    assert "aspect ratio" in caplog.text and "2 image placeholders" in caplog.text


def test_a_text_holding_the_image_token_is_quarantined_not_fatal(tmp_path, caplog):
    from trainer.backbone.families import build_tiny
    from trainer.model.inputs import Collator

    def record(dataset, i):
        target = "a sign reading <|image_pad|>" if i == 1 else f"t{i}"  # Qwen's own image token, literally
        return {"query": make_side(f"q{i}"), "target": make_side(target), "negatives": []}, {}

    shards = write_test_shards(tmp_path, {"A": 5}, per_shard=5, make_record=record)
    cfg = D.StreamConfig(seed=0, global_batch=4, slots_per_rank=1, shuffle_buffer=0)
    (b,) = take(D.ContrastiveStream(shards, cfg, Collator(build_tiny("qwen2_vl", seed=0))), 1)
    assert b["ids"] == [f"A/original/{i}" for i in (0, 2, 3, 4)] and b["quarantined"] == 1
    assert "image token" in caplog.text


def test_all_corrupt_raises(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 3}, per_shard=3, corrupt={f"A/original/{i}" for i in range(3)})
    with pytest.raises(ValueError, match="corrupt"):
        take(stream(shards, batch=1, slots=1), 1)


def test_index_count_mismatch_is_an_error(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 10}, per_shard=5)
    bad = [D.Shard(s.path, s.dataset, s.samples + 1) for s in shards]
    with pytest.raises(ValueError, match="index.json says"):
        take(stream(bad, batch=11, slots=1, shuffle_buffer=0), 1)


def _record_with_negatives(dataset, i):
    negs = [make_side(f"neg {i}.{j}", image_bytes((j, j, j), fmt="PNG"), f"neg{j}.png") for j in range(i % 3)]
    return {"query": make_side(f"q{i}", None, None),
            "target": make_side(f"t{i}", image_bytes((i, 0, 0), fmt="PNG"), "target.png"), "negatives": negs}, {}


def test_hard_negatives_and_gradcache_chunks(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 6}, per_shard=6, make_record=_record_with_negatives)
    (b,) = take(stream(shards, batch=6, slots=1, shuffle_buffer=0, hard_negatives=2, gc_chunk_size=4), 1)
    assert [len(c["text_hash"]) for c in b["query"]] == [4, 2] == [len(c["text_hash"]) for c in b["target"]]
    negs = torch.cat([c["text_hash"] for c in b["negatives"]])
    assert [len(c["text_hash"]) for c in b["negatives"]] == [8, 4]
    h = lambda t: int(hashlib.md5(t.encode()).hexdigest()[:8], 16)  # noqa: E731
    # record i has i % 3 negatives: 0 -> other pairs' targets, 1 -> repeated, 2 -> both
    assert negs.tolist() == [h("t1"), h("t2"), h("neg 1.0"), h("neg 1.0"), h("neg 2.0"), h("neg 2.1"),
                             h("t4"), h("t5"), h("neg 4.0"), h("neg 4.0"), h("neg 5.0"), h("neg 5.1")]
    assert b["padded_negatives"] == 4 + 2
    # the padding is masked out of the loss: borrowed targets and repeats; real negatives kept
    assert b["negative_mask"].tolist() == [[False, False], [True, False], [True, True]] * 2
    assert b["images"] == 6 + 2 + 2 + 2 + 2 + 4  # targets + image negatives (padding targets included)


def test_hard_negatives_with_a_single_pair_per_rank(tmp_path):
    """One pair per rank (global batch = world size, e.g. a 7B model under FSDP) and a record without
    negatives: the slot is padded with the pair's own target, masked out, instead of failing."""
    shards = write_test_shards(tmp_path, {"A": 3}, per_shard=3, make_record=_record_with_negatives)
    batches = take(stream(shards, batch=1, slots=1, shuffle_buffer=0, hard_negatives=2), 3)
    h = lambda t: int(hashlib.md5(t.encode()).hexdigest()[:8], 16)  # noqa: E731
    first = batches[0]  # record 0 has no negatives
    assert torch.cat([c["text_hash"] for c in first["negatives"]]).tolist() == [h("t0"), h("t0")]
    assert first["negative_mask"].tolist() == [[False, False]]
    assert batches[1]["negative_mask"].tolist() == [[True, False]]  # one real negative, repeated


def test_large_jpeg_is_decoded_at_reduced_scale_close_to_full_decode():
    from trainer.model.inputs import resize_to_max_pixels

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((1600, 1200), Image.BICUBIC)
    data = encode(base, "JPEG", quality=90)
    full, drafted = D.decode_image(data), D.decode_image(data, max_pixels=4096)
    assert full.size == (1600, 1200)
    # decoded at 1/8 DCT scale (200x150, the smallest that keeps >= 4096 pixels), then given the size
    # the Collator gives the full image
    assert drafted.size == resize_to_max_pixels(full, 4096).size == (73, 55)
    a, b = (np.asarray(resize_to_max_pixels(im, 4096), dtype=np.float32) for im in (full, drafted))
    assert a.shape == b.shape and np.abs(a - b).mean() < 4  # same picture, different downscaling filter
    for size in [(1211, 969), (1023, 767), (641, 479), (3001, 97)]:  # the drafted size rounds up
        resized = encode(base.resize(size), "JPEG", quality=90)
        for max_pixels in (4096, 40000):
            assert D.decode_image(resized, max_pixels).size == max_pixels_size(*size, max_pixels)
    assert D.decode_image(encode(base), max_pixels=4096).size == (1600, 1200)  # only JPEG has draft


def test_config_validation(tmp_path):
    shards = write_test_shards(tmp_path, {"A": 4})
    with pytest.raises(ValueError, match="multiple of the world size"):
        stream(shards, batch=3, world=2)
    with pytest.raises(ValueError, match="bad rank"):
        stream(shards, batch=4, world=2, rank=2)
    with pytest.raises(ValueError, match="slots_per_rank"):
        stream(shards, batch=4, slots=0)
    # homogeneous_batch dividing batch_size is the params contract's: tests/pipelines/test_params.py


# --- sub-batches by input kind ----------------------------------------------------------------


def test_side_chunks_sort_rows_by_kind_then_size_and_keep_the_gradcache_chunk_count():
    small, large = Image.new("RGB", (4, 4)), Image.new("RGB", (8, 4))
    video = [Image.new("RGB", (4, 4))] * 2
    images = [video, None, large, None, video, small, None]  # kinds 2 0 1 0 2 1 0
    sides = [{"raw": "x" * n} for n in (5, 9, 1, 3, 2, 1, 6)]
    assert [input_kind(i) for i in images] == [2, 0, 1, 0, 2, 1, 0]
    assert [input_size(s, i) for s, i in zip(sides, images)][:3] == [(32, 5), (0, 9), (32, 1)]
    assert D.side_chunks(sides, images, 0, "none") == [[0, 1, 2, 3, 4, 5, 6]]
    assert D.side_chunks(sides, images, 3, "none") == [[0, 1, 2], [3, 4, 5], [6]]
    # one chunk per kind; inside a kind by pixels, then text length
    assert D.side_chunks(sides, images, 0, "kind") == [[3, 6, 1], [5, 2], [4, 0]]
    assert D.side_chunks(sides, images, 3, "kind") == [[3, 6, 1], [5, 2, 4], [0]]  # as many chunks as unsorted
    assert D.side_chunks(sides[:2], [small, small], 0, "kind") == [[0, 1]]


@pytest.mark.parametrize("chunk", [0, 4])
def test_sub_batches_by_kind_hold_one_kind_each_and_their_order_restores_the_batch(tmp_path, chunk):
    """Text queries, image targets, negatives of both kinds (a record's own image negatives, other
    pairs' image targets, text ones): each side's rows come back in batch order through `order`,
    equal to the rows of the unsorted batch; without GradCache every chunk holds one kind."""
    def record(dataset, i):
        rec, extra = _record_with_negatives(dataset, i)
        if i % 2:  # odd queries carry an image
            rec["query"] = make_side(f"q{i}", image_bytes((0, i, 0), fmt="PNG"), "query.png")
        rec["negatives"] = rec["negatives"] + [make_side(f"text neg {i}", None, None)]
        return rec, extra

    shards = write_test_shards(tmp_path, {"A": 6}, per_shard=6, make_record=record)
    settings = dict(batch=6, slots=1, shuffle_buffer=0, hard_negatives=2, gc_chunk_size=chunk)
    (plain,) = take(stream(shards, **settings), 1)
    (kind,) = take(stream(shards, sub_batches="kind", **settings), 1)
    assert plain["order"] is None and kind["ids"] == plain["ids"]
    for side in ("query", "target", "negatives"):
        order = kind["order"][side]
        assert sorted(order.tolist()) == list(range(len(order)))
        for key in ("text_hash", "has_image", "pixel_sum"):
            rows = L.in_batch_order(torch.cat([c[key] for c in kind[side]]), order)
            assert torch.equal(rows, torch.cat([c[key] for c in plain[side]])), (side, key)
        if chunk:  # GradCache: the chunk count is the unsorted one, the same on every rank
            assert len(kind[side]) == len(plain[side])
        else:
            assert all(len(set(c["has_image"].tolist())) == 1 for c in kind[side])
    assert [len(c["text_hash"]) for c in kind["query"]] == ([3, 3] if not chunk else [4, 2])
    assert torch.equal(kind["negative_mask"], plain["negative_mask"])
