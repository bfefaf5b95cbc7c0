"""Last-token pooling (VLM2Vec's `--pooling last` / `eos`): the final hidden state of each row's last
real token, whatever side the batch was padded on."""

from __future__ import annotations

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of the last position whose mask is 1 in each row (left, right or no padding).

    Works for any mask shape, including masks with holes: it is the highest attended position.
    Rows with no attended position raise a ValueError (there is nothing to pool).
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.to(torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a row of the batch has no attended token")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, D] -> [B, D]: each row's hidden state at its last attended position."""
    if hidden.shape[:2] != attention_mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and mask {tuple(attention_mask.shape)} disagree")
    index = last_token_index(attention_mask)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
