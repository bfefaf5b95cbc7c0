"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL multimodal rotary positions (M-RoPE), computed by the Collator.

Given `input_ids` and `image_grid_thw`, transformers' Qwen2-VL computes the 3-D position of every
token (`get_rope_index`: text tokens count up on all three axes; an image's tokens take
(start + t, start + row, start + column) on its merged patch grid, and the text after it resumes at
start + max(rows, columns)) inside the model's forward, one row at a time, with several
device-to-host reads per row (`.tolist()`, `.item()`, boolean indexing). On a GPU each read waits for
every kernel queued before it, so a batch of 32 image queries stalls the device about 250 times per
forward, and the GPU idles while the CPU walks the rows.

`mrope_position_ids` computes the same positions from the Collator's CPU tensors, in the DataLoader
workers; passed as `position_ids`, the model skips its own computation. Like transformers, it gives
positions only to batches with images (a text-only batch keeps the model's default positions), so
the model's output is unchanged (tests/trainer/model/test_positions.py compares both with the model's own).
Qwen3-VL places images the same way; its video text is one run per temporal patch (timestamps between),
so the Collator passes its video grids split into one (1, h, w) grid per patch, as its `get_rope_index`
splits them.

`sequential_position_ids` is the other scheme, VLM2Vec's: it writes a bare `<|image_pad|>` (no
`<|vision_start|>`), and its copy of Qwen2-VL's `get_rope_index` finds images only after a
`<|vision_start|>`, so every token of a VLM2Vec Qwen checkpoint's input, image tokens included, had
the 1-D position of a text token (t = h = w = its index among the row's real tokens; padding 1).
transformers 5 finds images through `mm_token_type_ids` instead and would give them grid positions,
so these must be passed explicitly.
"""

from __future__ import annotations

from typing import Sequence

import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
SCHEMES = ("grid", "sequential")  # transformers' M-RoPE grid | VLM2Vec's 1-D positions for every token


def sequential_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 [3, B, L]: each real token's index among its row's real tokens on all three axes, 1 at
    padding (VLM2Vec's `get_rope_index` when it finds no `<|vision_start|>`)."""
    mask = attention_mask.long()
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous()


def mrope_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None,
                       image_token_id: int, merge_size: int, has_image: torch.Tensor | None = None, *,
                       video_token_id: int | None = None, video_grid_thw: torch.Tensor | None = None,
                       video_intervals: Sequence[float] | None = None) -> torch.Tensor:
    """int64 [3, B, L] positions (temporal, height, width) of a Qwen2-VL batch, 0 at padding.

    Image tokens are the runs of `image_token_id`; the i-th run takes the i-th row of
    `image_grid_thw` (images in batch order, as the processor lays them out), whose merged grid
    (t, h / merge_size, w / merge_size) must hold exactly the run's tokens. Video tokens are the runs
    of `video_token_id` with the rows of `video_grid_thw` alike; a video's temporal position is
    start + floor(t * interval), its interval `video_intervals[i]` (Qwen2.5-VL: tokens_per_second *
    second_per_grid_ts; Qwen2-VL and by default: 1). Text after an image or a video resumes at
    start + max(h, w) / merge_size, as transformers' `get_rope_index` does. In a row that `has_image`
    (bool [B]) marks False the image token is a plain text token (a kept stray placeholder)."""
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    batch, length = input_ids.shape
    out = torch.zeros(3, batch, length, dtype=torch.int64)
    images = _Grids("image", image_grid_thw, None)
    videos = _Grids("video", video_grid_thw, video_intervals)
    mask = attention_mask.bool()
    for b in range(batch):
        ids = input_ids[b][mask[b]].tolist()
        kinds = {image_token_id: images} if has_image is None or bool(has_image[b]) else {}
        if video_token_id is not None:
            kinds[video_token_id] = videos
        parts = _row_positions(ids, kinds, merge_size, b)
        if parts:
            out[:, b, mask[b]] = torch.cat(parts, dim=1)
    images.check_used()
    videos.check_used()
    return out


class _Grids:
    """The grids of one modality, handed out in batch order, with each one's temporal interval."""

    def __init__(self, kind: str, grid_thw: torch.Tensor | None, intervals: Sequence[float] | None):
        self.kind = kind
        self.grids = [tuple(int(x) for x in g) for g in grid_thw.tolist()] if grid_thw is not None else []
        self.intervals = [float(x) for x in intervals] if intervals is not None else [1.0] * len(self.grids)
        if len(self.intervals) != len(self.grids):
            raise ValueError(f"{len(self.intervals)} {kind} intervals for {len(self.grids)} grids")
        self.used = 0

    def take(self, row: int) -> tuple[tuple[int, int, int], float]:
        if self.used >= len(self.grids):
            raise ValueError(f"row {row}: {self.kind} tokens left over after all {len(self.grids)} "
                             f"{self.kind}_grid_thw rows")
        self.used += 1
        return self.grids[self.used - 1], self.intervals[self.used - 1]

    def check_used(self) -> None:
        if self.used != len(self.grids):
            raise ValueError(f"{len(self.grids)} {self.kind} grids but {self.used} {self.kind}s in the token runs")


def _row_positions(ids: list[int], kinds: dict[int, _Grids], merge_size: int, row: int) -> list[torch.Tensor]:
    """[3, n] position blocks of one row's real tokens: text runs count up, each vision run takes grids."""
    parts, pos, i = [], 0, 0
    while i < len(ids):
        j = i
        grids = kinds.get(ids[i])
        while j < len(ids) and kinds.get(ids[j]) is grids:
            j += 1
        if grids is None:
            parts.append(torch.arange(pos, pos + j - i).expand(3, -1))
            pos += j - i
        else:
            covered = 0
            while covered < j - i:  # a run may hold several images back to back
                (t, h, w), interval = grids.take(row)
                h, w = h // merge_size, w // merge_size
                tt, hh, ww = torch.meshgrid((torch.arange(t) * interval).long(), torch.arange(h), torch.arange(w),
                                            indexing="ij")
                parts.append(torch.stack([tt, hh, ww]).reshape(3, -1) + pos)
                pos += max(h, w)
                covered += t * h * w
            if covered != j - i:
                raise ValueError(f"row {row}: a {grids.kind}-token run of {j - i} tokens does not match its grids")
        i = j
    return parts
