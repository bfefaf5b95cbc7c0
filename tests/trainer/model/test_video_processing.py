"""trainer.model.video_processing: Qwen2-VL's `videos=` tensors without torchvision."""

import numpy as np
import pytest
import torch

from tests.support.images import noise
from trainer.model.video_processing import VLM2VEC_FPS, QwenVideoProcessor


def reference_patchify(frames, processor, width, height):
    """transformers' `Qwen2VLVideoProcessor` pipeline written out on float tensors: frames resized
    by the image processor's PIL rule, (x / 255 - mean) / std channel first, the last frame repeated to
    a multiple of T, then its `patchify` view and permute verbatim."""
    ip = processor.images
    arr = np.stack([np.asarray(f.convert("RGB").resize((width, height), 3)) for f in frames]).astype(np.float64)
    mean, std = np.array(ip.image_mean), np.array(ip.image_std)
    videos = torch.from_numpy(((arr / 255 - mean) / std).transpose(0, 3, 1, 2)).float()[None]  # [1, F, C, H, W]
    t_patch, p, m = processor.temporal, processor.patch, processor.merge
    if pad := -videos.shape[1] % t_patch:
        videos = torch.cat((videos, videos[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
    b, f, c, h, w = videos.shape
    gt, gh, gw = f // t_patch, h // p, w // p
    patches = videos.reshape(b, gt, t_patch, c, gh // m, m, p, gw // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return patches.reshape(b, gt * gh * gw, c * t_patch * p * p)[0], (gt, gh, gw)


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_distinct_frames_match_transformers_layout(qwen_backbone, count):
    vp = QwenVideoProcessor(qwen_backbone.processor.image_processor, seconds_per_grid=False)
    frames = [noise(40, 24, seed=i) for i in range(count)]
    out = vp([frames])
    w, h = vp.images.target_size(40, 24)
    want, grid = reference_patchify(frames, vp, w, h)
    assert out["video_grid_thw"].tolist() == [list(grid)] and grid[0] == -(-count // 2)
    torch.testing.assert_close(out["pixel_values_videos"], want, rtol=0, atol=2e-6)


def test_identical_frames_equal_the_image_path(qwen_backbone):
    """A video of temporal_patch_size copies of an image is that image (the image path repeats it)."""
    reference = qwen_backbone.processor.image_processor
    vp = QwenVideoProcessor(reference, seconds_per_grid=False)
    image = noise(52, 37, seed=5)
    got = vp([[image] * vp.temporal])
    want = reference([image], return_tensors="pt")
    assert got["video_grid_thw"].tolist() == want["image_grid_thw"].tolist()
    torch.testing.assert_close(got["pixel_values_videos"], want["pixel_values"], rtol=0, atol=2e-6)


def test_every_frame_takes_the_first_frames_size_and_tokens_count(qwen_backbone):
    vp = QwenVideoProcessor(qwen_backbone.processor.image_processor, seconds_per_grid=False)
    out = vp([[noise(64, 32, seed=1), noise(20, 50, seed=2), noise(64, 32, seed=3)], [noise(32, 32, seed=4)]])
    t, h, w = out["video_grid_thw"][0].tolist()
    assert (t, h, w) == vp.grid(3, 64, 32) and t == 2
    assert out["video_grid_thw"][1].tolist() == [1, 4, 4]
    assert out["pixel_values_videos"].shape[0] == t * h * w + 16
    assert vp.tokens((t, h, w)) == t * h * w // vp.merge ** 2


def test_seconds_per_grid_for_qwen2_5():
    from trainer.backbone.families import build_tiny

    ip = build_tiny("qwen2_5_vl").processor.image_processor
    out = QwenVideoProcessor(ip, seconds_per_grid=True)([[noise(32, 32)] * 4, [noise(32, 32)] * 2])
    assert out["second_per_grid_ts"].tolist() == [2 / VLM2VEC_FPS] * 2 == [1.0, 1.0]
    assert "second_per_grid_ts" not in QwenVideoProcessor(ip, seconds_per_grid=False)([[noise(32, 32)]])
    with pytest.raises(ValueError, match="at least one frame"):
        QwenVideoProcessor(ip, seconds_per_grid=True)([[]])
