"""The model a run trains and what updates it: base weights' dtype, LoRA, FSDP or DDP, torch.compile,
AdamW with HF Trainer's parameter groups and the linear schedule.

    model = build_model(p, base=..., shards=..., dist=distributed.init_from_env())
    model.encoder(query, target, *negatives)   # one forward of the PairEncoder (DDP-wrapped or not)

`build_model` draws from the global RNG (new LoRA weights), so it runs right after the seeding, as
the first thing of a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pipelines.params import Train
from trainer.backbone.families import Backbone, load_backbone
from trainer.distributed import DistInfo
from trainer.model.acceleration import (batch_vision_attention, compile_blocks, compile_language_model,
                                        frozen_image_features, trains_vision)
from trainer.model.embedder import Embedder
from trainer.train import fsdp
from trainer.train.stream import shard_grid_mismatch

log = logging.getLogger(__name__)


def base_dtype(p: Train, world: int) -> torch.dtype:
    """The dtype the base weights are loaded in, whatever the checkpoint stores.

    float32, except for LoRA under ``precision: bf16`` without FSDP: the frozen base weights are then
    kept in bf16 (half the memory, no per-step casts under autocast), as VLM2Vec loads its backbones.
    Trainable weights stay float32 master weights (full fine-tuning; FSDP2 shards one dtype per
    unit), and so do LoRA adapters unless ``lora_dtype: bf16``."""
    lora_bf16 = p.precision == "bf16" and p.lora_rank > 0 and not (p.fsdp and world > 1)
    return torch.bfloat16 if lora_bf16 else torch.float32


def apply_lora(backbone: Backbone, p: Train) -> Backbone:
    """The backbone with peft LoRA (or DoRA) injected per the params; unchanged for lora_rank 0
    (every parameter trainable). Adapters are float32 (peft's upcast of adapters on bf16 weights)
    unless ``lora_dtype: bf16``, which keeps them in the base weights' dtype."""
    if p.lora_rank == 0:
        for param in backbone.model.parameters():
            param.requires_grad_(True)
        return backbone
    from peft import LoraConfig, get_peft_model

    targets = backbone.lora_targets if p.lora_targets == "default" else list(p.lora_targets)
    config = LoraConfig(r=p.lora_rank, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                        target_modules=targets, use_dora=p.dora, bias="none")
    model = get_peft_model(backbone.model, config, autocast_adapter_dtype=p.lora_dtype == "fp32")
    return replace(backbone, model=model)


class PairEncoder(torch.nn.Module):
    """``forward(*inputs) -> tuple of [b, D] embeddings``: one module call embeds queries, targets
    and negatives, so DDP sees one forward per backward."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, *inputs: dict) -> tuple[torch.Tensor, ...]:
        return tuple(self.embedder(x) for x in inputs)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [q for q in model.parameters() if q.requires_grad]


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups as HF Trainer (VLM2Vec) builds them: weight decay on the trainable
    weights, none on biases and normalisation weights (LayerNorm, RMSNorm, ...). One group when
    `weight_decay` is 0, where the split changes nothing."""
    if not weight_decay:
        return [{"params": trainable_parameters(model), "weight_decay": 0.0}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, q in module.named_parameters(recurse=False):
            if q.requires_grad and id(q) not in seen:  # a tied weight is listed by each of its modules
                seen.add(id(q))
                (no_decay if is_norm or name == "bias" else decay).append(q)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


def compile_model(model: torch.nn.Module, scope: str | None, *, world: int, sharded: bool,
                  pad_to_multiple_of: int = 1) -> None:
    """Apply ``train.compile`` (`Train.compile_scope`) to `model` (already wrapped by peft, sharded
    by FSDP when `sharded`). Raises ValueError for combinations not supported: a region under FSDP
    (its per-layer hooks), CUDA graphs with more than one process (not verified with DDP's gradient
    hooks), or a model without a language model. Warns about CUDA graphs over unrounded lengths
    (`pad_to_multiple_of` 1): the compiled region serves every length after its second, but a graph
    is recorded, and its memory kept, for every distinct padded shape."""
    if scope is None:
        return
    if scope == "blocks":
        compile_blocks(model)
        return
    if sharded:
        raise ValueError(f"train.compile: {scope} is not supported with train.fsdp; use compile: blocks")
    if scope == "cuda-graphs" and world > 1:
        raise ValueError("train.compile: cuda-graphs runs in one process only (not verified under DDP); "
                         "use compile: region or blocks with torchrun")
    cuda_graphs = scope == "cuda-graphs"
    if cuda_graphs and pad_to_multiple_of == 1:
        log.warning("train.compile: cuda-graphs with pad_to_multiple_of 1 records a CUDA graph for every distinct "
                    "padded length (hundreds in a real run, each kept in memory); set train.pad_to_multiple_of, "
                    "e.g. 64")
    if cuda_graphs and not torch.cuda.is_available():
        log.warning("train.compile: cuda-graphs without CUDA: the region is compiled, no graph is recorded")
    compile_language_model(model, cuda_graphs=cuda_graphs)


@dataclass
class Model:
    """What a run trains (`build_model`)."""

    backbone: Backbone  # with LoRA injected: the tokenizer and processor for the Collator, the export's base
    embedder: Embedder
    encoder: torch.nn.Module  # the PairEncoder, wrapped in DDP under torchrun without FSDP
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[torch.nn.Parameter]
    n_trainable: int  # their number of weights
    mode: str  # "lora" or "full"
    sharded: bool  # FSDP over the ranks
    image_features: Any  # GradCache's reuse of a frozen vision tower's features, or None


def build_model(p: Train, *, base: Path, shards: Path, dist: DistInfo) -> Model:
    """The base model in `base_dtype` with LoRA (or every weight trainable), on this rank's device,
    sharded with FSDP or wrapped in DDP under torchrun, compiled per ``compile``; AdamW over its
    trainable parameters with the linear warm-up / decay schedule."""
    world = dist.world_size
    backbone = load_backbone(str(base), torch_dtype=base_dtype(p, world))
    if (mismatch := shard_grid_mismatch(shards, backbone.image_processor)) and dist.rank == 0:
        log.warning("%s", mismatch)
    backbone = apply_lora(backbone, p)
    embedder = Embedder(backbone).to(dist.device)
    embedder.train()
    if p.batched_vision_attention and batch_vision_attention(embedder.model):
        log.info("batched vision attention: one attention call per vision layer")
    mode = "lora" if p.lora_rank > 0 else "full"
    sharded = p.fsdp and world > 1
    if sharded:
        fsdp.shard_model(embedder)
    elif p.fsdp:
        log.info("train.fsdp: one process, nothing to shard")
    elif mode == "full" and world > 1:
        log.warning("full fine-tuning under DDP replicates weights, gradients and AdamW state on every rank; "
                    "for backbones that do not fit, set train.fsdp: true")
    compile_model(embedder.model, p.compile_scope, world=world, sharded=sharded,
                  pad_to_multiple_of=p.pad_to_multiple_of)
    image_features = frozen_image_features(embedder.model) if p.gc_chunk_size > 0 else None
    if image_features is not None:
        log.info("GradCache: frozen image features of the no-grad pass are reused (vision tower runs once)")
    trainable = trainable_parameters(embedder)
    n_trainable = sum(q.numel() for q in trainable)
    log.info("%s fine-tuning: %d trainable parameters of %d", mode, n_trainable,
             sum(q.numel() for q in embedder.parameters()))
    encoder = _wrap(PairEncoder(embedder), backbone, mode, dist, sharded)
    optimizer = torch.optim.AdamW(optimizer_groups(embedder, p.weight_decay), lr=p.learning_rate)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, p.warmup_steps, p.steps)
    return Model(backbone=backbone, embedder=embedder, encoder=encoder, optimizer=optimizer, scheduler=scheduler,
                 trainable=trainable, n_trainable=n_trainable, mode=mode, sharded=sharded,
                 image_features=image_features)


def _wrap(encoder: PairEncoder, backbone: Backbone, mode: str, dist: DistInfo,
          sharded: bool) -> torch.nn.Module:
    """`encoder` in DDP under torchrun without FSDP; as it is otherwise."""
    if dist.world_size == 1 or sharded:
        return encoder
    from torch.nn.parallel import DistributedDataParallel as DDP

    # a trained vision path (full fine-tuning, dual encoders, LoRA targets in the vision tower) gets
    # no gradient from a text-only batch, e.g. GradCache's last chunk of targets
    find_unused = mode == "full" or backbone.kind == "dual" or trains_vision(encoder.embedder.model)
    device = dist.device
    return DDP(encoder, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused)
