"""Tiny encoders for the trainer tests, and the torchrun worker of tests/trainer/test_distributed.py.

Run by the test as
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/support/ddp_worker.py --out DIR
Each rank wraps the same tiny LoRA encoder (2-layer Qwen2 text model, peft LoRA with dropout 0.1)
in DDP, takes its half of a fixed global batch, runs one contrastive step for every case in
:data:`CASES` (plain / GradCache x without / with hard negatives) and writes the loss and the
LoRA gradients to ``DIR/<case>.rank<r>.safetensors``. The test recomputes the same step in ONE
process on the global batch (:func:`single_process_step`) and compares.

Dropout stays on: every rank seeds its RNG with ``DROPOUT_SEED + rank`` before the step, and the
single-process reference replays the same forwards (same chunks, same order, same seeds), so the
masks are identical and the comparison is exact up to float rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script by torchrun: make `trainer` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.train.gradcache import gradcache_step  # noqa: E402
from trainer.train.losses import info_nce, loss_scale  # noqa: E402

VOCAB, PAD = 64, 0
GLOBAL_BATCH, WORLD, HARD_NEGATIVES = 8, 2, 2
DROPOUT_SEED, TEMPERATURE = 1234, 0.05
# case name -> (GradCache chunk size or 0, hard negatives per query); "masked" cases pass NEGATIVE_MASK
CASES = {"plain": (0, 0), "plain_negs": (0, HARD_NEGATIVES), "gc": (3, 0), "gc_negs": (3, HARD_NEGATIVES),
         "gc_negs_masked": (3, HARD_NEGATIVES)}
# padded negative slots (False) of the global batch, different on the two ranks' halves
NEGATIVE_MASK = torch.tensor([[True, True], [True, False], [False, False], [True, True],
                              [True, True], [True, True], [True, False], [True, True]])


def loss_of(case: str, mask_rows: slice = slice(None), **kw):
    """info_nce as `case` uses it, with its rows of NEGATIVE_MASK for a masked case."""
    if case.endswith("_masked"):
        kw["negative_mask"] = NEGATIVE_MASK[mask_rows]
    return partial(info_nce, temperature=TEMPERATURE, **kw)


# ---------------------------------------------------------------- tiny encoders
class TinyMLPEncoder(nn.Module):
    """Fast encoder for unit tests: inputs ``{"x": [b, F]}`` -> L2-normalised ``[b, D]``, with dropout."""

    def __init__(self, in_dim: int = 12, hidden: int = 32, out_dim: int = 16, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim), nn.Dropout(dropout)
        )

    def forward(self, inputs: dict) -> torch.Tensor:
        return F.normalize(self.net(inputs["x"]), dim=-1)


def build_lora_text_encoder(seed: int = 0, lora_dropout: float = 0.1) -> nn.Module:
    """A 2-layer Qwen2 text model (hidden 32) with peft LoRA (r=4) on all projections.

    lora_B is re-initialised from ``seed`` (peft starts it at zero, which would make every
    lora_A gradient zero and the comparisons weaker).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=None, eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
    )
    base = Qwen2Model(cfg)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=lora_dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(base, lora)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.train()
    return model


def embed_last_token(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Last non-pad hidden state (right padding), L2-normalised: ``[b, D]``."""
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    last = inputs["attention_mask"].sum(dim=1) - 1
    h = out.last_hidden_state[torch.arange(last.shape[0]), last]
    return F.normalize(h, dim=-1)


def token_sequences(n: int, seed: int, min_len: int = 3, max_len: int = 9) -> list[list[int]]:
    """``n`` random token sequences of varying length (ids 1..VOCAB-1, 0 is padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(1, VOCAB, (k,), generator=g).tolist() for k in lengths]


def collate(seqs: list[list[int]]) -> dict:
    """Right-pad to the longest sequence of this chunk (as a real collator does per sub-batch)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def chunked(seqs: list, chunk_size: int) -> list[dict]:
    """Collated chunks of ``chunk_size`` rows (the last one may be smaller); one chunk if 0."""
    size = chunk_size or len(seqs)
    return [collate(seqs[i : i + size]) for i in range(0, len(seqs), size)]


def global_batch(k: int) -> tuple[list, list, list]:
    """Queries, targets and query-major flattened negatives (``k`` per query) of the global batch."""
    return (
        token_sequences(GLOBAL_BATCH, seed=11),
        token_sequences(GLOBAL_BATCH, seed=12),
        token_sequences(GLOBAL_BATCH * k, seed=13) if k else [],
    )


def rank_slice(rows: list, rank: int, per_query: int = 1) -> list:
    per_rank = GLOBAL_BATCH // WORLD
    return rows[rank * per_rank * per_query : (rank + 1) * per_rank * per_query]


def plain_step(embed_fn, q_chunks, t_chunks, loss_fn, n_chunks=None) -> torch.Tensor:
    """The no-cache reference: forward every chunk with grad (in GradCache's order), one backward."""
    q = torch.cat([embed_fn(c) for c in q_chunks])
    t = torch.cat([embed_fn(c) for c in t_chunks])
    negs = None
    if n_chunks:
        n = torch.cat([embed_fn(c) for c in n_chunks])
        negs = n.view(q.shape[0], -1, n.shape[-1])
    loss = loss_fn(q, t, negs)
    loss.backward()
    return loss.detach()


def lora_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def single_process_step(case: str, cross_device: bool = True) -> tuple[float, dict[str, torch.Tensor]]:
    """One process, the whole global batch: the result every DDP rank must reproduce.

    Rank r's forwards are replayed in r's order under r's seed, then the embeddings of all ranks
    are concatenated in rank order and the loss is taken over the global batch without gathering.
    ``cross_device=False`` gives the negative control: the mean of per-rank losses that see only
    their own rank's targets and negatives (what training without the gather would optimise).
    """
    chunk, k = CASES[case]
    model = build_lora_text_encoder()
    embed = partial(embed_last_token, model)
    queries, targets, negatives = global_batch(k)
    parts = {"q": [], "t": [], "n": []}
    for r in range(WORLD):
        torch.manual_seed(DROPOUT_SEED + r)
        for key, rows, per in (("q", queries, 1), ("t", targets, 1), ("n", negatives, k)):
            if rows:
                parts[key] += [embed(c) for c in chunked(rank_slice(rows, r, per), chunk)]
    q, t = torch.cat(parts["q"]), torch.cat(parts["t"])
    negs = torch.cat(parts["n"]).view(GLOBAL_BATCH, k, -1) if k else None
    if cross_device:
        loss = loss_of(case, gather=False)(q, t, negs)
    else:
        per_rank = GLOBAL_BATCH // WORLD
        losses = [
            loss_of(case, s, gather=False)(q[s], t[s], None if negs is None else negs[s])
            for s in (slice(r * per_rank, (r + 1) * per_rank) for r in range(WORLD))
        ]
        loss = torch.stack(losses).mean()
    loss.backward()
    return loss.item(), lora_grads(model)


# ---------------------------------------------------------------- torchrun entry point
def main() -> None:
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainer.distributed import all_gather_object, barrier, cleanup, init_from_env, is_main
    from trainer.train.losses import gather_with_grad

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = init_from_env()
    assert info.world_size == WORLD, f"run with --nproc_per_node {WORLD}"
    try:
        for case, (chunk, k) in CASES.items():
            model = build_lora_text_encoder()
            ddp = DDP(model)
            embed = partial(embed_last_token, ddp)
            queries, targets, negatives = global_batch(k)
            q_chunks = chunked(rank_slice(queries, info.rank), chunk)
            t_chunks = chunked(rank_slice(targets, info.rank), chunk)
            n_chunks = chunked(rank_slice(negatives, info.rank, k), chunk) if k else None
            per_rank = GLOBAL_BATCH // WORLD
            loss_fn = loss_of(case, slice(info.rank * per_rank, (info.rank + 1) * per_rank))
            torch.manual_seed(DROPOUT_SEED + info.rank)
            if chunk:
                loss = gradcache_step(embed, q_chunks, t_chunks, loss_fn, n_chunks, no_sync=ddp.no_sync)
            else:
                loss = plain_step(embed, q_chunks, t_chunks, loss_fn, n_chunks)
            tensors = {f"grad.{n}": g for n, g in lora_grads(model).items()}
            tensors["loss_scaled"] = loss.reshape(1)
            tensors["loss"] = (loss / loss_scale()).reshape(1)
            save_file(tensors, str(args.out / f"{case}.rank{info.rank}.safetensors"))

        # helpers of trainer.distributed / trainer.train.losses under a real process group
        meta = {"ranks": all_gather_object(info.rank), "is_main": all_gather_object(is_main())}
        try:
            gather_with_grad(torch.zeros(2 + info.rank, 3))
            meta["unequal_shapes"] = "no error"
        except ValueError as exc:
            meta["unequal_shapes"] = str(exc)
        x = torch.full((2, 3), float(info.rank), requires_grad=True)
        gathered = gather_with_grad(x)
        gathered.sum().backward()
        meta["gathered"] = gathered.detach().tolist()
        meta["local_grad"] = x.grad.tolist()
        try:  # a rank with one chunk more would deadlock the DDP forwards; must raise on both ranks
            rows = torch.randn(4, 12)
            chunks = [{"x": rows[:2]}, {"x": rows[2:]}][: 1 + info.rank]
            gradcache_step(TinyMLPEncoder(), chunks, chunks, partial(info_nce))
            meta["unequal_chunks"] = "no error"
        except ValueError as exc:
            meta["unequal_chunks"] = str(exc)
        (args.out / f"meta.rank{info.rank}.json").write_text(json.dumps(meta))
        barrier()
    finally:
        cleanup()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
