"""Qwen2-VL / Qwen2.5-VL multimodal rotary positions (M-RoPE), computed by the Collator.

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

`sequential_position_ids` is the other scheme, VLM2Vec's: it writes a bare `<|image_pad|>` (no
`<|vision_start|>`), and its copy of Qwen2-VL's `get_rope_index` finds images only after a
`<|vision_start|>`, so every token of a VLM2Vec Qwen checkpoint's input, image tokens included, had
the 1-D position of a text token (t = h = w = its index among the row's real tokens; padding 1).
transformers 5 finds images through `mm_token_type_ids` instead and would give them grid positions,
so these must be passed explicitly.
"""

from __future__ import annotations

import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
SCHEMES = ("grid", "sequential")  # transformers' M-RoPE grid | VLM2Vec's 1-D positions for every token


def sequential_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 [3, B, L]: each real token's index among its row's real tokens on all three axes, 1 at
    padding (VLM2Vec's `get_rope_index` when it finds no `<|vision_start|>`)."""
    mask = attention_mask.long()
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return pos.unsqueeze(0).expand(3, -1, -1).contiguous()


def mrope_position_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor,
                       image_token_id: int, merge_size: int, has_image: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [3, B, L] positions (temporal, height, width) of a Qwen2-VL batch, 0 at padding.

    Image tokens are the runs of `image_token_id`; the i-th run takes the i-th row of
    `image_grid_thw` (images in batch order, as the processor lays them out), whose merged grid
    (t, h / merge_size, w / merge_size) must hold exactly the run's tokens. In a row that `has_image`
    (bool [B]) marks False the image token is a plain text token (a kept stray placeholder)."""
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    batch, length = input_ids.shape
    out = torch.zeros(3, batch, length, dtype=torch.int64)
    grids = [tuple(int(x) for x in g) for g in image_grid_thw.tolist()] if image_grid_thw is not None else []
    next_grid = 0
    mask = attention_mask.bool()
    for b in range(batch):
        ids = input_ids[b][mask[b]].tolist()
        image_id = image_token_id if has_image is None or bool(has_image[b]) else None
        parts, pos, i = [], 0, 0
        while i < len(ids):
            j = i
            is_image = ids[i] == image_id
            while j < len(ids) and (ids[j] == image_id) == is_image:
                j += 1
            if not is_image:
                parts.append(torch.arange(pos, pos + j - i).expand(3, -1))
                pos += j - i
            else:
                covered = 0
                while covered < j - i:  # a run may hold several images back to back
                    if next_grid >= len(grids):
                        raise ValueError(f"row {b}: image tokens left over after all {len(grids)} image_grid_thw rows")
                    t, h, w = grids[next_grid]
                    next_grid += 1
                    h, w = h // merge_size, w // merge_size
                    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
                    parts.append(torch.stack([tt, hh, ww]).reshape(3, -1) + pos)
                    pos += max(h, w)
                    covered += t * h * w
                if covered != j - i:
                    raise ValueError(f"row {b}: an image-token run of {j - i} tokens does not match its grids")
            i = j
        if parts:
            out[:, b, mask[b]] = torch.cat(parts, dim=1)
    if next_grid != len(grids):
        raise ValueError(f"{len(grids)} image grids but {next_grid} images in the token runs")
    return out
