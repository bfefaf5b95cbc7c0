"""trainer.model.image_processing: transformers' Qwen2-VL image tensors, computed in torch."""

import copy
import dataclasses
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipelines.images import max_pixels_size, snapped_size
from pipelines.shard import fitted_size
from tests.support.images import noise
from tests.support.sides import side
from trainer.model import image_processing as IP
from trainer.model.inputs import Collator


def real_sized(backbone, max_pixels=1003520, patch=14):
    """The backbone's processor configured like Qwen2-VL-2B's (patch 14, merge 2) at `max_pixels`."""
    processor = copy.deepcopy(backbone.processor)
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    processor.image_processor.patch_size = patch
    return processor


SIZES = [(1157, 866), (640, 480), (1148, 868), (30, 20), (2000, 90), (57, 3000), (56, 56), (29, 27)]


@pytest.mark.parametrize("patch", [14, 8])
def test_same_tensors_as_transformers(qwen_backbone, patch):
    processor = real_sized(qwen_backbone, patch=patch)
    reference = processor.image_processor
    fast = IP.QwenImageProcessor(reference)
    for i, (w, h) in enumerate(SIZES):
        images = [noise(w, h, seed=i), noise(h // 2 + 5, w // 3 + 7, seed=i + 100)]  # two sizes in one call
        want = reference(images, return_tensors="pt")
        got = fast(images, return_tensors="pt")
        assert torch.equal(got["image_grid_thw"], want["image_grid_thw"]), (w, h)
        assert got["pixel_values"].dtype == torch.float32
        assert got["pixel_values"].shape == want["pixel_values"].shape, (w, h)
        torch.testing.assert_close(got["pixel_values"], want["pixel_values"], rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_convert_like_transformers(qwen_backbone, mode):
    reference = real_sized(qwen_backbone).image_processor
    image = noise(150, 100, mode, seed=3)
    want = reference([image], return_tensors="pt")["pixel_values"]
    got = IP.QwenImageProcessor(reference)([image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


try:  # transformers 5: the PIL backend's module imports without torchvision
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:  # transformers 4.x
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize


def test_target_size_is_transformers_smart_resize(qwen_backbone):
    """(width, height) in, transformers' (height, width) rule applied with the processor's bounds."""
    rng = random.Random(0)
    reference = copy.deepcopy(qwen_backbone.processor.image_processor)
    for _ in range(2000):
        h, w = rng.randint(1, 4000), rng.randint(1, 4000)
        if max(h, w) / min(h, w) > 200:
            continue
        patch, low, high = rng.choice([8, 14, 16]), rng.choice([56 * 56, 256]), rng.choice([4096, 1003520])
        reference.size = {"shortest_edge": low, "longest_edge": high}
        reference.patch_size = patch
        fast = IP.QwenImageProcessor(reference)
        assert fast.target_size(w, h) == smart_resize(h, w, 2 * patch, low, high)[::-1]
    with pytest.raises(ValueError, match="aspect ratio"):
        fast.target_size(3000, 10)


def test_snapped_shard_sizes_are_fixed_points():
    """Images the shard stage stored with image_size_multiple = patch x merge are not resized again."""
    rng = random.Random(1)
    for _ in range(3000):
        w, h = rng.randint(60, 5000), rng.randint(60, 5000)
        if max(w, h) / min(w, h) > 20:
            continue
        max_pixels, multiple = rng.choice([(1003520, 28), (4096, 16), (200704, 28), (None, 28)])
        sw, sh = fitted_size(w, h, 1344, max_pixels, multiple)
        assert sw % multiple == 0 and sh % multiple == 0
        assert max(sw, sh) <= 1344 and (max_pixels is None or sw * sh <= max_pixels)
        assert smart_resize(sh, sw, multiple, 56 * 56 if sw * sh >= 56 * 56 else 1, max_pixels or 10**8) == (sh, sw)
        # and snapping moves a side by less than one multiple from the unsnapped size (unless a side
        # shorter than one multiple had to be raised to it)
        uw, uh = fitted_size(w, h, 1344, max_pixels)
        if min(uw, uh) >= multiple:
            assert abs(sw - uw) < multiple and abs(sh - uh) < multiple


def test_snapped_size_rules():
    assert snapped_size(1157, 866, 28) == (1148, 868)  # nearest multiples
    assert snapped_size(1000, 1000, 28, max_pixels=1003520) == (980, 980)  # 1008x1008 would exceed the cap
    assert snapped_size(1000, 1000, 28) == (1008, 1008)
    assert snapped_size(1350, 10, 28, max_side=1344) == (1344, 28)  # at least one multiple; side cap kept
    assert snapped_size(56, 84, 28) == (56, 84)
    assert snapped_size(300, 10, 16, max_pixels=4096) == (256, 16)  # a raised short side shortens the long one
    with pytest.raises(ValueError):
        snapped_size(10, 10, 0)
    with pytest.raises(ValueError, match="no size on a grid"):
        snapped_size(100, 100, 28, max_pixels=700)
    assert max_pixels_size(*snapped_size(1157, 866, 28, max_pixels=1003520), 1003520) == (1148, 868)


def test_collator_batches_equal_with_either_processor(qwen_backbone):
    processor = real_sized(qwen_backbone, max_pixels=20000)
    small = dataclasses.replace(qwen_backbone, processor=processor)
    sides = [side(raw) for raw in ("<|image_1|>\nRepresent the given image.\n", "a caption with no image\n",
                                   "<|image_1|>\nWhat is in the photo?\n")]
    images = [noise(300, 200, seed=1), None, noise(97, 131, "RGBA", seed=2)]
    fast = Collator(small, max_text_tokens=32, image_max_pixels=20000)
    slow = Collator(small, max_text_tokens=32, image_max_pixels=20000, torch_images=False)
    assert isinstance(fast.processor.image_processor, IP.QwenImageProcessor)
    assert not isinstance(slow.processor.image_processor, IP.QwenImageProcessor)
    assert processor.image_processor is small.processor.image_processor  # the backbone's own is untouched
    got, want = fast(sides, images), slow(sides, images)
    assert set(got) == set(want)
    for key in want:
        if want[key].is_floating_point():
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=2e-6)
        else:
            assert torch.equal(got[key], want[key]), key
    again = pickle.loads(pickle.dumps(fast))(sides, images)  # DataLoader workers get a pickled copy
    assert torch.equal(again["pixel_values"], got["pixel_values"])


def test_unreproduced_settings_and_inputs_go_to_transformers(qwen_backbone):
    processor = real_sized(qwen_backbone)
    for change in ({"do_normalize": False}, {"resample": Image.Resampling.BILINEAR}, {"do_convert_rgb": False}):
        other = copy.deepcopy(processor)
        for key, value in change.items():
            setattr(other.image_processor, key, value)
        assert IP.install(other) is other, change  # not reproduced: transformers' processor stays
    assert IP._is_bicubic(3) and IP._is_bicubic(Image.Resampling.BICUBIC)
    assert not IP._is_bicubic(Image.Resampling.BILINEAR) and not IP._is_bicubic(None)

    class InterpolationMode:  # torchvision's enum, whose values are strings
        value = "bicubic"

    assert IP._is_bicubic(InterpolationMode())
    fast = IP.install(processor)
    assert fast is not processor and isinstance(fast.image_processor, IP.QwenImageProcessor)
    assert IP.install(fast) is fast
    assert fast.image_processor.merge_size == processor.image_processor.merge_size  # attributes delegated

    calls = []
    reference = processor.image_processor

    class Recording:
        def __getattr__(self, name):
            return getattr(reference, name)

        def __call__(self, images, **kwargs):
            calls.append(kwargs)
            return reference(images, **kwargs)

    wrapped = IP.QwenImageProcessor.__new__(IP.QwenImageProcessor)
    wrapped.__dict__.update(IP.QwenImageProcessor(reference).__dict__, reference=Recording())
    array = np.asarray(noise(60, 40))
    out = wrapped([array], return_tensors="pt")  # numpy input: transformers handles it
    assert out["pixel_values"].shape[0] == out["image_grid_thw"].prod()
    wrapped([noise(60, 40)], return_tensors="pt", size={"shortest_edge": 56 * 56, "longest_edge": 4096})
    assert len(calls) == 2  # a call-time override: transformers handles it
    wrapped([noise(60, 40)], return_tensors="pt")
    assert len(calls) == 2  # the plain call is ours


class _Images(Dataset):
    def __init__(self, fast):
        self.fast = fast

    def __len__(self):
        return 2

    def __getitem__(self, i):
        out = self.fast([noise(200, 150, seed=i)], return_tensors="pt")
        return out["pixel_values"], out["pixel_values"].is_shared()


def test_worker_output_is_allocated_in_shared_memory(qwen_backbone):
    fast = IP.QwenImageProcessor(real_sized(qwen_backbone).image_processor)
    assert not fast([noise(200, 150)])["pixel_values"].is_shared()  # main process: ordinary memory
    loader = DataLoader(_Images(fast), batch_size=None, num_workers=1)
    for i, (pixels, shared_in_worker) in enumerate(loader):
        assert shared_in_worker
        want = real_sized(qwen_backbone).image_processor([noise(200, 150, seed=i)], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixels, want, rtol=0, atol=2e-6)


def test_the_collator_caps_the_processors_max_pixels_at_image_max_pixels(qwen_backbone):
    """A Qwen2-VL-2B-like processor (max_pixels 12845056) rounds an image the collator scaled to the
    cap to the NEAREST grid size: 1344 x 1344 at 1003520 px became 1008 x 1008 (1296 tokens) where
    the training shards hold 980 x 980 (1225). With the processor's max_pixels lowered to the cap,
    every image reaches the model at <= the cap, a pre-scaled shard image unchanged, and the
    backbone's own processor is left as it was."""
    import dataclasses as dc

    cap = 1003520
    real = dc.replace(qwen_backbone, processor=real_sized(qwen_backbone, max_pixels=12845056))
    for torch_images in (True, False):
        collate = Collator(real, image_max_pixels=cap, torch_images=torch_images)
        grid = collate([{"raw": "<|image_1|>\nx\n"}], [noise(1344, 1344)])["image_grid_thw"]
        assert grid.tolist() == [[1, 70, 70]]  # 980 / 14
    assert IP._size_bounds(real.processor.image_processor) == (56 * 56, 12845056)  # untouched
    collate = Collator(real, image_max_pixels=cap)
    rng = random.Random(3)
    for _ in range(40):
        w, h = rng.randint(200, 4000), rng.randint(200, 4000)
        if max(w, h) / min(w, h) > 8:
            continue
        t, gh, gw = collate([{"raw": "<|image_1|>\nx\n"}], [noise(w, h)])["image_grid_thw"][0].tolist()
        assert gh * gw * 14 * 14 <= cap, (w, h, gh, gw)
        sw, sh = fitted_size(w, h, 100000, cap, 28)  # the shard stage's pre-scaled size is kept as is
        assert collate([{"raw": "<|image_1|>\nx\n"}], [noise(sw, sh)])["image_grid_thw"][0].tolist() == \
            [1, sh // 14, sw // 14]
    # a processor whose own max_pixels is below the cap keeps it
    small = dc.replace(qwen_backbone, processor=real_sized(qwen_backbone, max_pixels=200704))
    assert IP.cap_max_pixels(small.processor, cap) == (small.processor, 200704)
