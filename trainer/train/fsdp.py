"""Fully sharded data parallel training (FSDP2, `torch.distributed.fsdp.fully_shard`).

With ``train.fsdp: true`` under torchrun, each repeated block of the language model (its decoder
layers: `trainer.model.acceleration.repeated_block_lists`, vision towers excluded) becomes its own FSDP
unit and the Embedder the root unit, which holds the rest (embeddings, vision tower, norms). A rank
keeps 1/world of the weights, gradients and AdamW state and gathers one decoder layer at a time;
the vision tower (0.6 B parameters for Qwen2-VL) is gathered whole during a forward. This is what
makes full fine-tuning of 2B-7B backbones fit; LoRA runs work too (FSDP2 shards frozen and
trainable parameters alike) but gain little over DDP.

Every rank must run the same collectives in the same order. A VLM only runs its vision tower for a
batch with images, so vision blocks as units of their own would make a rank with a text-only chunk
skip all-gathers that a rank with images waits on. Inside the root unit the vision tower costs no
collective of its own, and the root's reduce-scatter includes zeros for parameters a rank did not
use (`set_reduce_scatter_unused_params`), so its size is the same on every rank. One difference from
DDP follows: a parameter no rank used in a step gets a zero gradient instead of none, so AdamW still
applies its momentum and weight decay to it (DDP and one process skip it).

Gradients are averaged over ranks by the reduce-scatter, as DDP's all-reduce does, so `info_nce`'s
loss scaling gives the single-process gradient of the global batch under both.

Checkpoints keep the single-process format (`trainer.train.checkpoint`): the trainable parameters and the
optimizer state are gathered unsharded to rank 0 (`torch.distributed.checkpoint.state_dict`), so a
run can resume under FSDP, DDP or one process alike. Gathering costs rank 0 host memory of the full
trainable state plus two AdamW moments; sharded (DCP) checkpoints would avoid that and are not built.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Mapping

import torch
import torch.distributed as dist

from trainer.model.acceleration import repeated_block_lists
from trainer.train.checkpoint import check_trainable_names

log = logging.getLogger(__name__)

_FULL = dict(full_state_dict=True, cpu_offload=True)


def language_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of ``model`` outside its vision tower (decoder layers; for CLIP/SigLIP the
    text encoder's layers)."""
    return [block for name, blocks in repeated_block_lists(model)
            if not any(part.startswith(("vis", "image")) for part in name.split("."))
            for block in blocks]


def shard_model(embedder: torch.nn.Module) -> int:
    """`fully_shard` every language-model block of ``embedder.model`` and then ``embedder`` itself
    (in place); the number of blocks sharded. Needs an initialised process group.

    Weights stay in their dtype (float32) and ``train.precision: bf16`` computes under autocast, as
    without FSDP. FSDP2's own mixed precision (gathering bf16 weights, half the all-gather bytes)
    is not used: torch 2.13 refuses its reduce-scatter when the zero gradients of unused parameters
    (float32) meet bf16 gradients ("expects uniform gradient dtype")."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not hasattr(FSDPModule, "set_reduce_scatter_unused_params"):
        raise RuntimeError(f"train.fsdp needs FSDPModule.set_reduce_scatter_unused_params, which torch "
                           f"{torch.__version__} lacks; use a newer torch or DDP (train.fsdp: false)")
    blocks = language_blocks(embedder.model)
    for block in blocks:
        fully_shard(block)
    fully_shard(embedder)
    embedder.set_reduce_scatter_unused_params(True)
    log.info("FSDP: %d language-model blocks + root sharded over %d ranks", len(blocks), dist.get_world_size())
    return len(blocks)


@contextlib.contextmanager
def no_gradient_sync(embedder: torch.nn.Module):
    """FSDP's equivalent of DDP's ``no_sync``: accumulate unsharded gradients, no reduce-scatter
    (GradCache's chunks before the last)."""
    embedder.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        embedder.set_requires_gradient_sync(True)


def grad_norm_value(norm: torch.Tensor) -> float:
    """`clip_grad_norm_`'s result as a float (a DTensor when the gradients are sharded)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if callable(full) else norm)


# --- state dicts (collectives: every rank calls them) -------------------------------------------

def full_trainable_state(embedder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, unsharded, on CPU, by the names `trainer.train.checkpoint` uses;
    rank 0 gets them, other ranks an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    names = set(_trainable_names(embedder))
    # frozen weights (a LoRA run's whole backbone) are never gathered, only dropped from the result
    full = get_model_state_dict(embedder, options=StateDictOptions(**_FULL, ignore_frozen_params=True))
    return {n: t.contiguous() for n, t in full.items() if n in names}


def full_model_state(embedder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded, on CPU (rank 0; other ranks an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(embedder, options=StateDictOptions(**_FULL))


def _trainable_names(embedder: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters in the order the optimizer holds them (`trainable_parameters`)."""
    return [n for n, p in embedder.named_parameters() if p.requires_grad]


def full_optimizer_state(embedder: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state unsharded, keyed by parameter index as ``optimizer.state_dict()`` is on one
    process (rank 0; other ranks an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(embedder, optimizer, options=StateDictOptions(**_FULL))
    if not by_name:
        return {}
    index = {n: i for i, n in enumerate(_trainable_names(embedder))}
    state = {index[n]: dict(entry) for n, entry in by_name["state"].items()}
    groups = [dict(g, params=[index[n] for n in g["params"]]) for g in by_name["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_trainable_state(embedder: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load full (unsharded) trainable tensors into the sharded ``embedder``; every rank passes them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    check_trainable_names(_trainable_names(embedder), tensors)
    set_model_state_dict(embedder, dict(tensors), options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(embedder: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: Mapping[str, Any]) -> None:
    """Load an index-keyed full optimizer state (as `full_optimizer_state` or one process saves it).

    Not strict: a checkpoint of one process or DDP has no AdamW state for a parameter that never got
    a gradient there (the unused LM head, a vision tower idle on text-only steps); as in the run that
    wrote it, such a parameter starts its state at its first gradient."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _trainable_names(embedder)
    by_name = {"state": {names[int(i)]: entry for i, entry in state["state"].items()},
               "param_groups": [dict(g, params=[names[int(i)] for i in g["params"]]) for g in state["param_groups"]]}
    set_optimizer_state_dict(embedder, optimizer, by_name, options=StateDictOptions(full_state_dict=True, strict=False))
