"""EmbeddingModel's faster no-grad options: `encode(prefetch=True)` and `accelerate(compile=...)` give
the embeddings of the plain `encode`."""

import threading

import numpy as np
import pytest
from PIL import Image

from trainer.backbone.families import build_tiny, save_backbone
from trainer.embed import EmbeddingModel, make_side, prefetched


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "base"
    save_backbone(build_tiny("qwen2_vl", seed=0), path)
    return path


def sides_and_images():
    """Rows of mixed kinds and image sizes, so that batches pad."""
    sides, images = [], []
    for i, (w, h) in enumerate([(48, 40), (32, 64), (64, 64), (40, 24), (56, 32), (24, 48)]):
        sides.append(make_side("word " * (i + 1), "Represent the given image", has_image=True))
        images.append(Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90)))
        sides.append(make_side("a caption of " + "some length " * i))
        images.append(None)
    return sides, images


def test_prefetch_collates_in_a_thread_and_gives_the_same_embeddings(base_dir):
    model = EmbeddingModel.load(base_dir, image_max_pixels=4096)
    sides, images = sides_and_images()
    threads = set()
    collate = model.collator.__call__

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return collate(*args, **kwargs)

    plain = model.encode(sides, images, batch_size=5)
    model.collator = type("Spy", (), {"__call__": staticmethod(spy), "truncated": 0, "max_text_tokens": 256})()
    fast = model.encode(sides, images, batch_size=5, prefetch=True)
    np.testing.assert_array_equal(plain, fast)
    assert threads and all(name.startswith("collate") for name in threads)
    assert list(prefetched([lambda: 1, lambda: 2, lambda: 3])) == [1, 2, 3] and list(prefetched([])) == []


def test_compiled_encoder_gives_the_same_embeddings(base_dir):
    sides, images = sides_and_images()
    reference = EmbeddingModel.load(base_dir, image_max_pixels=4096).encode(sides, images, batch_size=4)
    model = EmbeddingModel.load(base_dir, image_max_pixels=4096)
    model.accelerate("region", pad_to_multiple_of=16, backend="aot_eager")  # the vision blocks one by one too
    assert model.collator.pad_to_multiple_of == 16 and not model.cuda_graphs
    fast = model.encode(sides, images, batch_size=4, prefetch=True)
    np.testing.assert_allclose(fast, reference, atol=2e-5)
    with pytest.raises(ValueError, match="compile must be"):
        model.accelerate("everything")
