"""benchmarks/gpu_encode.py: the encoder paths against the plain forward, on CPU with the tiny base
(the device machine runs the same code on a Qwen2-VL-2B-shaped model)."""

import json

from benchmarks import gpu_encode


def test_every_path_gives_the_plain_embeddings_at_every_shape_class(workspace, tmp_path, monkeypatch):
    out = tmp_path / "gpu_encode.json"
    # compiling is EmbeddingModel.accelerate's, tested with the encoder (tests/trainer/test_embed_acceleration.py);
    # here the rows after it, at CPU speed without the minutes of tracing
    compiled = []
    monkeypatch.setattr(gpu_encode.EmbeddingModel, "accelerate",
                        lambda self, scope, **kw: compiled.append((scope, kw)))
    code = gpu_encode.main(["--tiny", "--base", str(workspace / "models/base"), "--items", "5", "--batch", "3",
                            "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["cls"] for r in ok} == set(gpu_encode.CLASSES)
    assert all(r["status"] == "ok" for r in rows)  # v2-video too: videos= through every path
    for r in ok:
        assert r["items"] == (10 if r["cls"] == "v1-text" else 5) and r["items_per_s"] > 0
        if r["path"] != "plain":  # fp32 on CPU: the same embeddings to float rounding
            assert r["cos_min"] > 0.9999 and r["max_abs"] < 1e-4, r
    assert compiled == [("region", dict(pad_to_multiple_of=64, backend="aot_eager"))]
    rows = [r for r in ok if r["path"] == "ours+region"]
    assert len(rows) == 4 and all(r["compile_s"] is not None and r["cos_min"] > 0.9999 for r in rows)


def test_items_have_the_shapes_of_their_class():
    pages = gpu_encode.make_items("v2-page", 3, max_pixels=1003520)
    images = gpu_encode.make_items("v1-image", 20, max_pixels=1003520)
    texts = gpu_encode.make_items("v1-text", 5, max_pixels=1003520)
    assert all(0.85e6 < p.image.width * p.image.height <= 1003520 and p.image.height > p.image.width for p in pages)
    areas = [i.image.width * i.image.height for i in images]
    assert min(areas) >= 0.14 * 1003520 and max(areas) <= 1003520 and len({i.side["raw"] for i in images}) == 20
    assert all(i.side["image"]["width"] == i.image.width for i in images + pages)
    assert all(i.image is None and 2 <= len(i.side["raw"].split()) <= 30 for i in texts)
    assert gpu_encode.make_items("v1-text", 5, 1003520)[0].side == texts[0].side  # seeded
    videos = gpu_encode.make_items("v2-video", 2, 1003520, frames=8, frame_side=336)
    assert all(len(v.image) == len(v.jpeg) == len(v.side["video"]) == 8 for v in videos)
    assert all(f.size == (336, 336) for v in videos for f in v.image)
    assert videos[0].side["raw"].count("<|video_1|>") == 1 and videos[0].side["video"] != videos[1].side["video"]
