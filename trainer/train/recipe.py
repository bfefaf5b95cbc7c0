"""The contrastive training recipe (VLM2Vec): LoRA or full fine-tuning, InfoNCE over in-batch
(cross-device) negatives, optional GradCache, exact resume from checkpoints.

    summary = train(params.train, TrainPaths(base=..., shards=..., out=..., checkpoints=..., metrics=...))

`train` reads top to bottom: set up the model (`trainer.train.build`), resume from the newest
checkpoint of this run (`resume`), open the data stream at that position (`open_stream`), run the
steps (`run_steps`; the step itself is `trainer.train.step.Step`), export (`trainer.train.export`).

One step = one global batch of ``batch_size`` pairs (split evenly over the ranks): embed queries and
targets (and ``hard_negatives`` explicit negatives per query), loss = `info_nce` at ``temperature``,
backward (in GradCache chunks of ``gc_chunk_size`` when > 0), clip the gradient norm to
``max_grad_norm`` (HF Trainer's default 1.0, which VLM2Vec ran with), AdamW step (``weight_decay``
spares biases and normalisation weights, as HF Trainer: `trainer.train.build.optimizer_groups`),
linear warmup / decay schedule. Under ``torchrun`` the model is wrapped in DDP, or with
``fsdp: true`` sharded with FSDP2 (`trainer.train.fsdp`: weights, gradients and AdamW state split
over the ranks, for full fine-tuning of backbones whose replicas do not fit); `info_nce` scales the
loss so that the gradient average over ranks equals the single-process gradient of the global batch
under both.

Speed switches that leave the result unchanged (`trainer.model.acceleration`): ``batched_vision_attention``
(Qwen2-VL's vision tower attends over all images in one call per layer), ``compile``
(`Train.compile_scope`: ``blocks`` or ``true``, ``torch.compile`` of each decoder layer and vision
block; ``region``, the language model as one compiled region; ``cuda-graphs``, that region replayed
as CUDA graphs, one process without GradCache) and ``pad_to_multiple_of`` (padded lengths rounded
up, so that compiled code and graphs see a few shapes); and, always when GradCache runs with a
frozen vision tower, its no-grad pass's image features are reused by the pass with grad.

Exact resume: every ``save_every`` steps (and after the last step) a checkpoint stores the trainable
weights, optimizer, scheduler, the RNG of every rank, the data-stream position and the dvclive
history so far (`trainer.train.checkpoint`, `trainer.train.live.metrics_history`); a re-run with the
same params, base model and shards continues from the newest one and ends with the same weights as an
uninterrupted run. The global RNG is only drawn from by the model (dropout): the DataLoader has its
own generator, and the RNG is restored after the loader has started.

Outputs (rank 0): ``out/adapter/`` (peft adapter, safetensors; LoRA only), ``out/merged/`` (a
`save_backbone` folder: LoRA merged into the base, or the fully fine-tuned model) and
``out/lineage.json``; dvclive metrics under ``metrics`` (`trainer.train.live.METRICS` per step: loss,
learning_rate, grad_norm, pairs_per_s, images_per_s, quarantined, padded_negatives, padding) and its
``metrics.json`` of run aggregates (`trainer.train.live.run_summary`).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipelines.params import RENDERING, Train
from trainer import distributed, provenance
from trainer.backbone.families import load_backbone
from trainer.distributed import DistInfo
from trainer.model.embedder import Embedder
from trainer.model.inputs import Collator
from trainer.train import checkpoint as ckpt
from trainer.train import fsdp
from trainer.train.build import Model, apply_lora, base_dtype, build_model
from trainer.train.clusters import ClusterStream, MinedBatching
from trainer.train.export import CODE, export
from trainer.train.live import Progress, metrics_history
from trainer.train.paths import TrainPaths
from trainer.train.step import Step, make_step
from trainer.train.stream import (ContrastiveStream, StreamConfig, StreamPosition, check_shard_resolution,
                                  make_loader, read_shards)

log = logging.getLogger(__name__)


@dataclass
class Start:
    """Where a run starts (`resume`): step 0, or the state of a checkpoint of this run."""

    step: int = 0
    rng: dict | None = None  # this rank's RNG state at `step`; None: seed it
    position: StreamPosition | None = None  # the data stream's; None: from the start
    loss: float | None = None  # the last step's
    history: dict | None = None  # dvclive's tsv files (`metrics_history`)
    world_sizes: list = field(default_factory=list)  # [first step, world size] of each stretch of steps
    rejected: list = field(default_factory=list)  # "<checkpoint>: <reason>" of newer ones that did not verify


def train(p: Train, paths: TrainPaths = TrainPaths(), batching: MinedBatching | None = None) -> dict[str, Any]:
    """Run (or resume) training per `p`; return a summary dict (rank 0 writes the outputs).
    ``batching``: batches of mined clusters (`trainer.train.clusters`) instead of the stream's."""
    check_shard_resolution(paths.shards, p.image_max_pixels)  # before any work: a params mistake
    dist = distributed.init_from_env()
    random.seed(p.seed)
    np.random.seed(p.seed)
    torch.manual_seed(p.seed)
    model = build_model(p, base=paths.base, shards=paths.shards, dist=dist)

    code_digest = provenance.source_digest(CODE)  # once per run: the fingerprint's and the lineage's
    fingerprint = run_fingerprint(p, paths, paths.shards / "index.json", dist.world_size, code=code_digest,
                                  batching=batching)
    start = resume(model, p, paths, dist, fingerprint)
    batches, position, stream = open_stream(model, p, paths, dist, start, batching)
    if start.rng is not None:
        ckpt.restore_rng(start.rng)
    else:
        torch.manual_seed(p.seed + dist.rank)  # dropout masks differ across ranks

    step = make_step(model, p, dist)
    extra = {"mined_batches": stream.summary(p.steps)} if isinstance(stream, ClusterStream) else {}
    last_loss = run_steps(step, p, paths, dist, start, batches, position, fingerprint, extra)
    summary = {"steps": p.steps, "final_loss": last_loss, "mode": model.mode,
               "trainable_parameters": model.n_trainable, "resumed_from": start.step,
               "rejected_checkpoints": start.rejected,
               # the world size that trained the steps (a run resumed from its final checkpoint by another
               # number of processes trained none of them); [[first step, world size], ...] when it changed
               "world_size": start.world_sizes[0][1] if len(start.world_sizes) == 1 else start.world_sizes}
    finish(model, p, paths, dist, summary, code_digest)
    del step, model, batches, stream  # DDP's reducer holds the process group: free it first
    distributed.cleanup()
    return summary


def run_fingerprint(p: Train, paths: TrainPaths, shard_index: Path, world: int = 1,
                    code: str | None = None, batching: MinedBatching | None = None) -> str:
    """The checkpoint fingerprint of this run (`trainer.train.checkpoint.fingerprint`): the params that
    change the result, the number of data slots (``max(1, num_workers)``, which sets the data order
    of a fresh run), the base weights' dtype (`base_dtype`: FSDP keeps float32 where DDP keeps a
    LoRA run's base in bf16), the base model, the shard index and the training code (`code`, its
    `provenance.source_digest`, computed here when not given) and mined batches' settings when on."""
    params = {**p.to_dict(), "data_slots": max(1, p.num_workers), "base_dtype": str(base_dtype(p, world)),
              **(batching.to_dict() if batching else {})}
    code = provenance.source_digest(CODE) if code is None else code
    return ckpt.fingerprint(params, paths.base, shard_index, code=code)


def resume(model: Model, p: Train, paths: TrainPaths, dist: DistInfo, fingerprint: str) -> Start:
    """Load the newest checkpoint of this run (`fingerprint`) into the model, optimizer and scheduler
    and return where it left off; without one, remove the checkpoints of other runs and start at 0."""
    rejected: list[str] = []
    found = agreed_checkpoint(ckpt.latest_checkpoint(paths.checkpoints, fingerprint, rejected))
    if found is None and ckpt.list_checkpoints(paths.checkpoints):
        distributed.barrier()
        if dist.rank == 0:
            log.warning("removing stale checkpoints under %s", paths.checkpoints)
            ckpt.remove_checkpoints(paths.checkpoints)
    if found is None:
        return Start(world_sizes=[[0, dist.world_size]], rejected=rejected)
    loaders = {}
    if model.sharded:
        loaders = dict(load_model=partial(fsdp.load_trainable_state, model.embedder),
                       load_optimizer=partial(fsdp.load_optimizer_state, model.embedder, model.optimizer))
    state = ckpt.load_checkpoint(found, model=model.embedder, optimizer=model.optimizer, scheduler=model.scheduler,
                                 rank=dist.rank, **loaders)
    position = StreamPosition.from_dict(state["stream"])
    start = Start(step=int(state["step"]), rng=state["rng"], position=position, loss=state["extra"].get("loss"),
                  history=state["extra"].get("metrics"),
                  world_sizes=state["extra"].get("world_sizes") or [[0, position.world_size]], rejected=rejected)
    if position.world_size != dist.world_size:
        if start.step < p.steps:  # steps left to train
            start.world_sizes.append([start.step, dist.world_size])
            log.warning("checkpoint was written by %d ranks, this run has %d: the data order after resume "
                        "differs from an uninterrupted run; every dataset continues at a fresh epoch (the "
                        "rest of the current one is skipped) instead of replaying epoch 0 from its start",
                        position.world_size, dist.world_size)
        start.position = position.fresh_epochs(dist.world_size, position.slots_per_rank)
    if start.rng is None:
        log.warning("checkpoint has no RNG state for rank %d; reseeding", dist.rank)
    return start


def agreed_checkpoint(found: Path | None) -> Path | None:
    """The checkpoint every rank chose (each verified it on its own file system); a RuntimeError
    naming each rank's choice when they differ (a copy that verifies on one node and not another)."""
    chosen = distributed.all_gather_object(None if found is None else found.name)
    if len(set(chosen)) > 1:
        raise RuntimeError(f"ranks found different checkpoints to resume from (by rank: {chosen}); "
                           "the warnings above name the files that did not verify")
    return found


def open_stream(model: Model, p: Train, paths: TrainPaths, dist: DistInfo, start: Start,
                batching: MinedBatching | None = None
                ) -> tuple[Iterator[dict], StreamPosition, ContrastiveStream]:
    """This rank's batches from ``start``'s position, collated for the model in DataLoader workers,
    and the stream position that the loop advances and checkpoints. A fresh run has
    ``max(1, num_workers)`` data slots per rank; a resumed one keeps its checkpoint's. With
    ``batching`` the batches are mined clusters' (`ClusterStream`). Also the stream itself."""
    num_workers = p.num_workers
    slots_per_rank = start.position.slots_per_rank if start.position else max(1, num_workers)
    if num_workers > 0 and slots_per_rank % num_workers:
        log.warning("num_workers=%d does not divide the checkpoint's %d data slots; using %d workers",
                    num_workers, slots_per_rank, slots_per_rank)
        num_workers = slots_per_rank
    shards = read_shards(paths.shards)
    collator = Collator(model.backbone, max_text_tokens=p.max_text_tokens, image_max_pixels=p.image_max_pixels,
                        instructions=p.instructions, pad_to_multiple_of=p.pad_to_multiple_of,
                        **{k: getattr(p, k) for k in RENDERING})
    config = StreamConfig.from_params(p, world_size=dist.world_size, rank=dist.rank, slots_per_rank=slots_per_rank)
    if config.sub_batches != p.sub_batches:
        log.info("train.sub_batches %s is not used with this compile / fsdp setting: one batch per side",
                 p.sub_batches)
    if batching is None:
        stream = ContrastiveStream(shards, config, collator, mixture=p.mixture, position=start.position)
    else:
        stream = ClusterStream(shards, config, collator, mined_root=batching.mined,
                               cluster_size=batching.cluster_size, mixture=p.mixture, position=start.position)
    batches = iter(make_loader(stream, num_workers, seed=p.seed, pin_memory=dist.device.type == "cuda"))
    return batches, stream.position, stream


def run_steps(step: Step, p: Train, paths: TrainPaths, dist: DistInfo, start: Start, batches: Iterator[dict],
              position: StreamPosition, fingerprint: str, extra: dict | None = None) -> float | None:
    """Train steps ``start.step`` to ``p.steps - 1``, recording each (`Progress`) and checkpointing
    every ``save_every`` steps and after the last; return the last step's loss. ``extra``: more
    entries for metrics.json."""
    progress = Progress(paths.metrics, paths.ids_log, start_step=start.step, history=start.history,
                        steps=p.steps, dist=dist)
    last_loss = start.loss
    try:
        for i in range(start.step, p.steps):
            batch = next(batches)
            if batch["step"] != i:
                raise RuntimeError(f"data stream at step {batch['step']}, training at {i}")
            result = step(batch)
            position.update(batch)
            progress.record(i, batch, result.loss, result.grad_norm, result.learning_rate)
            if not math.isfinite(result.loss):
                raise FloatingPointError(f"loss is {result.loss} at step {i}")
            last_loss = result.loss
            done = i + 1
            if done % p.save_every == 0 or done == p.steps:
                save(paths, done, step.model, fingerprint, position, last_loss, dist.rank, start.world_sizes)
        progress.summarize(rejected_checkpoints=len(start.rejected), extra=extra)
    finally:
        progress.close()
    return last_loss


def save(paths: TrainPaths, step: int, model: Model, fingerprint: str, position: StreamPosition,
         loss: float, rank: int, world_sizes: list) -> None:
    """Gather the per-rank stream positions and RNG states (and under FSDP the unsharded weights and
    optimizer state); rank 0 writes the checkpoint of `step`, with the dvclive history so far and the
    run's `world_sizes`."""
    states = {}
    if model.sharded:
        states = dict(model_state=fsdp.full_trainable_state(model.embedder),
                      optimizer_state=fsdp.full_optimizer_state(model.embedder, model.optimizer))
    gathered = distributed.all_gather_object({"position": position.to_dict(), "rng": ckpt.capture_rng()})
    if rank == 0:
        merged = StreamPosition.from_dict(gathered[0]["position"])
        for g in gathered[1:]:
            merged.merge(StreamPosition.from_dict(g["position"]))
        ckpt.save_checkpoint(paths.checkpoints, step, model=model.embedder, optimizer=model.optimizer,
                             scheduler=model.scheduler, fingerprint=fingerprint, stream=merged.to_dict(),
                             rng_per_rank=[g["rng"] for g in gathered],
                             extra={"loss": loss, "metrics": metrics_history(paths.metrics),
                                    "world_sizes": world_sizes},
                             **states)
    distributed.barrier()


def finish(model: Model, p: Train, paths: TrainPaths, dist: DistInfo, summary: dict[str, Any],
           code_digest: str) -> None:
    """Rank 0 exports ``paths.out`` (under FSDP an unsharded copy, from the weights gathered on every
    rank); every rank waits for it."""
    backbone, embedder = model.backbone, model.embedder
    if model.sharded:
        full = fsdp.full_model_state(embedder)
        if dist.rank == 0:
            backbone = apply_lora(load_backbone(str(paths.base)), p)
            embedder = Embedder(backbone)
            embedder.load_state_dict(full)
    if dist.rank == 0:
        export(backbone, embedder, p, paths, summary, code_digest)
    distributed.barrier()
