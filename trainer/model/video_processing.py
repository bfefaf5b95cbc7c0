"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL video preprocessing without torchvision: a video's frames -> the
tensors of `videos=`.

transformers' `Qwen2VLVideoProcessor` needs torchvision, which this project does not install, so
the processors are built without one (`trainer.backbone.families`). `QwenVideoProcessor` computes
what it returns from a video's ordered frames (PIL images, as the image store gives them):

* every frame is resized to ONE size, `smart_resize` of the first frame's size with the image
  processor's patch * merge factor and min/max pixels (VLM2Vec-V2 passes frames through the image
  processor's `videos=` path, so the image processor's bounds are the ones its checkpoints saw),
  PIL bicubic on the uint8 frame as the PIL image backend resizes;
* rescale and normalise with the image processor's mean and std;
* a frame count that is not a multiple of `temporal_patch_size` is padded by repeating the last
  frame (transformers' `patchify`); `temporal_patch_size` consecutive frames form one temporal patch;
* patches in transformers' order: (t, h / merge, w / merge, merge, merge), each row
  (channel, temporal, patch, patch).

It returns `pixel_values_videos` (float32 [t*h*w, C*T*P*P]) and `video_grid_thw` (int64 [videos, 3]),
and for Qwen2.5-VL `second_per_grid_ts` (float32 [videos]) = temporal_patch_size / fps. Frames carry
no timing here, so fps is `VLM2VEC_FPS`, the 2.0 that VLM2Vec-V2's Qwen2.5-VL processor assumes when
none is given (transformers 5 would assume 24 for frames without metadata). A video of
`temporal_patch_size` copies of one image gives exactly that image's `pixel_values` (the image path
repeats an image over the temporal patch), and its `<|video_pad|>` expands to t*h*w / merge**2 tokens.

Qwen3-VL takes the same tensors (its processor is Qwen2-VL's image processor), but its text splits a
video by temporal patch: each patch's h*w / merge**2 tokens sit between their own `<|vision_start|>`
and `<|vision_end|>`, after the patch's time in seconds (`timestamped_text`), and its M-RoPE gives every
patch a grid of its own (`trainer.model.positions`). The times are those qwen-vl-utils gives a list
of frames: indices 0..n-1 of the list padded to a multiple of the temporal patch, at the same `fps`
(its `sample_fps` default is 2 as well; transformers' processor would assume 24 without metadata).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from trainer.model.image_processing import QwenImageProcessor, supports

# the families that take `videos=`, and the token a video takes in their text (VLM2Vec's VLM_VIDEO_TOKENS)
VIDEO_TOKENS = {"qwen2_vl": "<|video_pad|>", "qwen2_5_vl": "<|video_pad|>", "qwen3_vl": "<|video_pad|>"}
# the families whose text gives every temporal patch of a video its own timestamp and vision markers
# (Qwen3-VL: "<0.2 seconds><|vision_start|>" + the patch's tokens + "<|vision_end|>", one per patch)
TIMESTAMP_FAMILIES = ("qwen3_vl",)
# frames per second VLM2Vec-V2's Qwen2.5-VL processor assumes (`videos_kwargs` default fps 2.0)
VLM2VEC_FPS = 2.0


class QwenVideoProcessor:
    """Frames of several videos -> `pixel_values_videos`, `video_grid_thw` (+ `second_per_grid_ts`).

    Built from the Qwen2-VL / Qwen2.5-VL image processor whose bounds and statistics it shares
    (a transformers one, or the `QwenImageProcessor` wrapping one); `seconds_per_grid` says whether to
    return Qwen2.5-VL's `second_per_grid_ts`."""

    def __init__(self, image_processor, *, seconds_per_grid: bool, fps: float = VLM2VEC_FPS):
        reference = getattr(image_processor, "reference", image_processor)
        if not supports(reference):
            raise ValueError(f"{type(reference).__name__} with these settings cannot be reproduced for video")
        self.images = QwenImageProcessor(reference)
        self.patch, self.merge, self.temporal = self.images.patch, self.images.merge, self.images.temporal
        self.seconds_per_grid = bool(seconds_per_grid)
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = float(fps)

    def grid(self, frames: int, width: int, height: int) -> tuple[int, int, int]:
        """(t, h, w) patch grid of a video of `frames` frames of `width` x `height`."""
        w, h = self.images.target_size(width, height)
        return -(-frames // self.temporal), h // self.patch, w // self.patch

    def tokens(self, grid: Sequence[int]) -> int:
        """The number of video tokens a video of patch grid (t, h, w) takes in the text."""
        t, h, w = (int(x) for x in grid)
        return t * h * w // self.merge ** 2

    def timestamps(self, frames: int) -> list[float]:
        """Seconds of each temporal patch of a video of `frames` frames, as Qwen3-VL's processor
        computes them (its `_calculate_timestamps`, each patch the mean time of its first and last
        frame) from the metadata qwen-vl-utils gives a list of frames: the list padded to a multiple
        of `temporal_patch_size` by repeating the last frame, then indices 0..n-1 of the padded list
        at `fps`."""
        if frames < 1:
            raise ValueError("a video needs at least one frame")
        index = range(frames + -frames % self.temporal)
        seconds = [i / self.fps for i in index]
        return [(seconds[i] + seconds[i + self.temporal - 1]) / 2 for i in range(0, len(seconds), self.temporal)]

    def timestamped_text(self, grid: Sequence[int], frames: int, token: str, start: str, end: str) -> str:
        """Qwen3-VL's text for one video (its processor's `replace_video_token`): for every temporal
        patch, its time as "<{seconds:.1f} seconds>", then `start`, the patch's tokens, `end`."""
        t, h, w = (int(x) for x in grid)
        stamps = self.timestamps(frames)
        if len(stamps) != t:
            raise ValueError(f"a video of {frames} frames has {len(stamps)} temporal patches, its grid {t}")
        per_patch = h * w // self.merge ** 2
        return "".join(f"<{s:.1f} seconds>{start}{token * per_patch}{end}" for s in stamps)

    def __call__(self, videos: Sequence[Sequence[Image.Image]]) -> dict[str, torch.Tensor]:
        if not videos or any(len(frames) == 0 for frames in videos):
            raise ValueError("every video needs at least one frame")
        parts, grids = [], []
        for frames in videos:
            pixels, grid = self._video(frames)
            parts.append(pixels)
            grids.append(grid)
        out = {"pixel_values_videos": torch.cat(parts), "video_grid_thw": torch.tensor(grids, dtype=torch.int64)}
        if self.seconds_per_grid:
            out["second_per_grid_ts"] = torch.full((len(grids),), self.temporal / self.fps, dtype=torch.float32)
        return out

    def _video(self, frames: Sequence[Image.Image]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        first = frames[0]
        w, h = self.images.target_size(first.width, first.height)
        stack = np.stack([np.asarray(self._resized(frame, w, h)) for frame in frames])  # [F, H, W, 3] uint8
        if pad := -len(frames) % self.temporal:  # the last frame repeated, as transformers pads
            stack = np.concatenate([stack, np.repeat(stack[-1:], pad, axis=0)])
        p, m, tp = self.patch, self.merge, self.temporal
        gt, gh, gw = stack.shape[0] // tp, h // p, w // p
        with warnings.catch_warnings():  # a read-only view is only read here
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(stack)
        # (t, T, h/m, m, P, w/m, m, P, C) -> (t, h/m, w/m, m, m, C, T, P, P): transformers' patch order
        x = x.view(gt, tp, gh // m, m, p, gw // m, m, p, 3).permute(0, 2, 5, 3, 6, 8, 1, 4, 7)
        x = x.reshape(gt * gh * gw, 3, tp * p * p).float()
        x.mul_(self.images.scale).add_(self.images.offset)
        return x.view(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)

    def _resized(self, frame: Image.Image, width: int, height: int) -> Image.Image:
        frame = self.images._rgb(frame)
        if frame.size != (width, height):
            frame = frame.resize((width, height), Image.Resampling.BICUBIC)
        return frame
