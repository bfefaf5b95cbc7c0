"""MMEB-V2 videos through `videos=` (eval.video_input native) or as the mean of their frames, on the
synthetic Syn-VideoCLS with a tiny Qwen2-VL and a family without video input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.download import download
from pipelines.normalize import normalize
from tests.support.encoders import HashEncoder
from tests.support.eval_sets import eval_params
from tests.support.params import section
from trainer.backbone.families import build_tiny
from trainer.embed import DEFAULT_COLLATION, EmbeddingModel
from trainer.eval import evaluate as evaluation
from trainer.eval import evaluate_v2
from trainer.eval.protocol import ImageLoader, encode_items


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    download(section("data", benchmark="v2", train_subsets=["Syn-ShapeCLS"], eval_subsets=["Syn-ShapeCLS"]),
             section("synthetic", train_rows=6, eval_rows=4, eval_candidates=4, image_size=32), out=root / "data/raw")
    normalize(root / "data/raw", root / "data/normalized", root / "data/rejects", root / "metrics/etl.json",
              section("normalize", workers=1, frames_per_video=4))
    return root


def model_of(family: str) -> EmbeddingModel:
    collation = dict(DEFAULT_COLLATION, image_max_pixels=1024)
    return EmbeddingModel(build_tiny(family), collation=collation, fingerprint=family, path=None)


def test_native_video_is_one_item_and_not_the_frame_mean(root):
    pool = evaluate_v2.load_v2_pool(root / evaluate_v2.V2_ROOT)
    assert pool.native is not None and [vs.task.name for vs in pool.native.sets] == [vs.task.name for vs in pool.sets]
    frames_pool, native = pool, pool.native
    names = [vs.task.name for vs in pool.sets]
    frames = pool.sets[names.index("Syn-VideoCLS")]
    native_set = native.sets[names.index("Syn-VideoCLS")]
    visdoc, visdoc_native = pool.sets[names.index("Syn-ViDoRe")], native.sets[names.index("Syn-ViDoRe")]
    assert [frames_pool.items[i] for s in visdoc.corpus_sides for i in s] == \
        [native.items[i] for s in visdoc_native.corpus_sides for i in s]  # no video: the same items
    assert all(len(s) == 1 for s in native_set.query_sides)
    assert all(len(native.items[s[0]]["video"]) == 4 for s in native_set.query_sides)
    assert all(len(s) == 4 for s in frames.query_sides)
    model = model_of("qwen2_vl")
    images = ImageLoader(root / "data/normalized/images", 1024)
    videos, _ = encode_items(model, native.items, native.keys, batch_size=4, load_images=images)
    each, _ = encode_items(model, frames_pool.items, frames_pool.keys, batch_size=4, load_images=images)
    q = native_set.query_sides[0][0]
    assert "<|video_1|>" in native.items[q]["raw"]
    mean = evaluate_v2._side_vectors(each, frames.query_sides[:1])[0]
    assert np.abs(videos[q] - mean).max() > 1e-3
    assert np.allclose(np.linalg.norm(videos, axis=1), 1, atol=1e-5)


def test_the_mode_per_model_is_chosen_and_recorded(root):
    assert evaluate_v2.video_input_of(model_of("qwen2_5_vl"), "native") == "native"
    assert evaluate_v2.video_input_of(model_of("qwen2_vl"), "frames_mean") == "frames_mean"
    assert evaluate_v2.video_input_of(model_of("smolvlm"), "native") == "frames_as_images"
    assert evaluate_v2.video_input_of(model_of("llava"), "native") == "frames_mean"  # no video input
    assert evaluate_v2.video_input_of(HashEncoder(name="h"), "native") == "frames_mean"
    with pytest.raises(ValueError, match="video_input"):
        evaluate_v2.video_input_of(HashEncoder(name="h"), "videos")
    for m in ("base", "embedder"):
        (root / "models" / m).mkdir(parents=True, exist_ok=True)
    models = {"base": model_of("qwen2_vl"), "embedder": HashEncoder(name="embedder")}
    evaluation.evaluate(eval_params(cache=False), root=root, load_model=lambda name, path, params: models[name])
    v2 = json.loads((root / "metrics/eval.json").read_text())["v2"]
    assert v2["base"]["video_input"] == "native" and v2["embedder"]["video_input"] == "frames_mean"
    assert 0 <= v2["base"]["datasets"]["Syn-VideoCLS"]["hit@1"] <= 1
    assert "base native, embedder frames_mean" in (root / "reports/eval.md").read_text()
