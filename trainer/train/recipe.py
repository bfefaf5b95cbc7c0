"""The contrastive training loop (VLM2Vec recipe): LoRA or full fine-tuning, InfoNCE over in-batch
(cross-device) negatives, optional GradCache, exact resume from checkpoints.

    summary = train(params["train"], TrainPaths(base=..., shards=..., out=..., checkpoints=..., metrics=...))

One step = one global batch of ``batch_size`` pairs (split evenly over the ranks): embed queries and
targets (and ``hard_negatives`` explicit negatives per query), loss = `info_nce` at ``temperature``,
backward (in GradCache chunks of ``gc_chunk_size`` when > 0), clip the gradient norm to
``max_grad_norm`` (HF Trainer's default 1.0, which VLM2Vec ran with), AdamW step (``weight_decay``
spares biases and normalisation weights, as HF Trainer: `optimizer_groups`), linear warmup / decay
schedule. Under ``torchrun`` the model is wrapped in DDP, or with ``fsdp: true`` sharded with
FSDP2 (`trainer.train.fsdp`: weights, gradients and AdamW state split over the ranks, for full
fine-tuning of backbones whose replicas do not fit); `info_nce` scales the loss so that the
gradient average over ranks equals the single-process gradient of the global batch under both.

Speed switches that leave the result unchanged (`trainer.model.acceleration`): ``batched_vision_attention``
(Qwen2-VL's vision tower attends over all images in one call per layer), ``compile``
(`COMPILE_SCOPES`: ``blocks`` or ``true``, ``torch.compile`` of each decoder layer and vision block;
``region``, the language model as one compiled region; ``cuda-graphs``, that region replayed as CUDA
graphs, one process without GradCache) and ``pad_to_multiple_of`` (padded lengths rounded up, so that
compiled code and graphs see a few shapes); and, always when GradCache runs with a frozen vision
tower, its no-grad pass's image features are reused by the pass with grad.

Exact resume: every ``save_every`` steps (and after the last step) a checkpoint stores the trainable
weights, optimizer, scheduler, the RNG of every rank, the data-stream position and the dvclive
history so far (`trainer.train.checkpoint`, `metrics_history`); a re-run with the same params, base model and shards continues from the
newest one and ends with the same weights as an uninterrupted run. The global RNG is only drawn from
by the model (dropout): the DataLoader has its own generator, and the RNG is restored after the
loader has started.

Outputs (rank 0): ``out/adapter/`` (peft adapter, safetensors; LoRA only), ``out/merged/`` (a
`save_backbone` folder: LoRA merged into the base, or the fully fine-tuned model) and
``out/lineage.json``; dvclive metrics under ``metrics`` (`METRICS` per step: loss, learning_rate,
grad_norm, pairs_per_s, images_per_s, quarantined, padded_negatives) and its ``metrics.json`` of run
aggregates (`run_summary`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import shutil
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from tqdm import tqdm

from trainer import distributed, provenance
from trainer.train import checkpoint as ckpt
from trainer.train import fsdp
from trainer.backbone.families import Backbone, load_backbone, save_backbone
from trainer.model.acceleration import (batch_vision_attention, compile_blocks, compile_language_model, frozen_image_features,
                                  trains_vision)
from trainer.train.stream import (ContrastiveStream, StreamConfig, StreamPosition, check_shard_resolution, make_loader,
                          read_shards, shard_grid_mismatch)
from trainer.train.gradcache import gradcache_step
from trainer.model.inputs import Collator
from trainer.train.losses import info_nce, loss_scale
from trainer.model.embedder import Embedder

log = logging.getLogger(__name__)

REQUIRED = ("seed", "steps", "batch_size", "gc_chunk_size", "learning_rate", "warmup_steps", "weight_decay",
            "temperature", "hard_negatives", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "dora",
            "max_text_tokens", "image_max_pixels", "instructions", "mixture", "homogeneous_batch",
            "shuffle_buffer", "num_workers", "save_every", "precision")
OPTIONAL = {"max_grad_norm": 1.0, "batched_vision_attention": True, "compile": False, "fsdp": False,
            "lora_dtype": "fp32", "pad_to_multiple_of": 1}
# train.compile's values besides false (true means blocks): what `torch.compile` covers (`compile_scope`)
COMPILE_SCOPES = ("blocks", "region", "cuda-graphs")
METRICS = ("loss", "learning_rate", "grad_norm", "pairs_per_s", "images_per_s", "quarantined", "padded_negatives")
COUNTS = ("quarantined", "padded_negatives")  # per step, all ranks; metrics.json holds the run's totals


def validate_params(train: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train`` params section checked and completed with OPTIONAL defaults.

    Raises ValueError naming missing or unknown keys and out-of-range values."""
    missing = [k for k in REQUIRED if k not in train]
    unknown = sorted(set(train) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise ValueError(f"train params: missing {missing}, unknown {unknown}")
    p = {**OPTIONAL, **train}

    def integer(key, low):  # YAML ints only: 2.7 would be truncated, true would count as 1
        v = p[key]
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def number(key, low, strict=False):  # `dvc exp run -S k=1e-3` writes 1e-3, which PyYAML reads as a string
        try:
            v = float(p[key]) if not isinstance(p[key], bool) else math.nan
        except (TypeError, ValueError):
            return False
        return v > low if strict else v >= low

    def flag(key):
        return isinstance(p[key], bool)

    checks = [
        (integer("steps", 1), "steps an integer >= 1"), (integer("batch_size", 1), "batch_size an integer >= 1"),
        (integer("gc_chunk_size", 0), "gc_chunk_size an integer >= 0"),
        (number("learning_rate", 0, strict=True), "learning_rate > 0"),
        (integer("warmup_steps", 0), "warmup_steps an integer >= 0"),
        (number("weight_decay", 0), "weight_decay >= 0"), (number("temperature", 0, strict=True), "temperature > 0"),
        (integer("hard_negatives", 0), "hard_negatives an integer >= 0"),
        (integer("lora_rank", 0), "lora_rank an integer >= 0"), (number("lora_alpha", 0, strict=True), "lora_alpha > 0"),
        (number("lora_dropout", 0) and float(p["lora_dropout"]) < 1, "0 <= lora_dropout < 1"),
        (integer("max_text_tokens", 1), "max_text_tokens an integer >= 1"),
        (p["image_max_pixels"] is None or integer("image_max_pixels", 1), "image_max_pixels an integer > 0 or null"),
        (integer("homogeneous_batch", 0), "homogeneous_batch an integer >= 0"),
        (integer("shuffle_buffer", 0), "shuffle_buffer an integer >= 0"), (integer("seed", 0), "seed an integer >= 0"),
        (integer("save_every", 1), "save_every an integer >= 1"), (integer("num_workers", 0), "num_workers an integer >= 0"),
        (p["precision"] in ("fp32", "bf16"), "precision is fp32 or bf16"),
        (p["lora_dtype"] in ("fp32", "bf16"), "lora_dtype is fp32 or bf16"),
        (p["lora_dtype"] == "fp32" or p["precision"] == "bf16", "precision bf16 for lora_dtype bf16"),
        (number("max_grad_norm", 0, strict=True), "max_grad_norm > 0"),
        (integer("pad_to_multiple_of", 1), "pad_to_multiple_of an integer >= 1"),
        (isinstance(p["compile"], bool) or p["compile"] in COMPILE_SCOPES,
         f"compile is true, false or one of {', '.join(COMPILE_SCOPES)}"),
        (p["compile"] != "cuda-graphs" or p["gc_chunk_size"] == 0,
         "gc_chunk_size 0 for compile cuda-graphs (GradCache keeps each chunk's embeddings while the next chunk's "
         "replay would overwrite them; use compile: region)"),
    ] + [(flag(k), f"{k} is true or false") for k in ("instructions", "dora", "batched_vision_attention", "fsdp")]
    if integer("batch_size", 1) and integer("hard_negatives", 0):
        checks.append((p["batch_size"] >= 2 or p["hard_negatives"] > 0,
                       "batch_size >= 2 or hard_negatives > 0 (one pair alone has no negative: its loss is 0)"))
    if integer("batch_size", 1) and integer("homogeneous_batch", 1):  # before any checkpoint is judged stale
        checks.append((p["batch_size"] % p["homogeneous_batch"] == 0, "homogeneous_batch dividing batch_size"))
    bad = [what for ok, what in checks if not ok]
    if bad:
        raise ValueError(f"train params out of range: need {', '.join(bad)}")
    return p


def compile_scope(p: Mapping[str, Any]) -> str | None:
    """What ``train.compile`` compiles: None (nothing), or one of `COMPILE_SCOPES` (true means blocks)."""
    value = p["compile"]
    return ("blocks" if value else None) if isinstance(value, bool) else value


def compile_model(model: torch.nn.Module, scope: str | None, *, world: int, sharded: bool,
                  pad_to_multiple_of: int = 1) -> None:
    """Apply ``train.compile`` to `model` (already wrapped by peft, sharded by FSDP when `sharded`).
    Raises ValueError for combinations not supported: a region under FSDP (its per-layer hooks), CUDA
    graphs with more than one process (not verified with DDP's gradient hooks), or a model without a
    language model. Warns about CUDA graphs over unrounded lengths (`pad_to_multiple_of` 1): the
    compiled region serves every length after its second, but a graph is recorded, and its memory
    kept, for every distinct padded shape."""
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


@dataclass(frozen=True)
class TrainPaths:
    base: Path = Path("models/base")
    shards: Path = Path("data/shards/train")
    out: Path = Path("models/embedder")
    checkpoints: Path = Path("models/checkpoints")
    metrics: Path = Path("metrics/train")
    ids_log: Path | None = None  # debug: JSON lines {"step", "rank", "ids"} of the pairs of every step


# --- model ------------------------------------------------------------------------------------
def base_dtype(p: Mapping[str, Any], world: int) -> torch.dtype:
    """The dtype the base weights are loaded in, whatever the checkpoint stores.

    float32, except for LoRA under ``precision: bf16`` without FSDP: the frozen base weights are then
    kept in bf16 (half the memory, no per-step casts under autocast), as VLM2Vec loads its backbones.
    Trainable weights stay float32 master weights (full fine-tuning; FSDP2 shards one dtype per
    unit), and so do LoRA adapters unless ``lora_dtype: bf16``."""
    lora_bf16 = p["precision"] == "bf16" and int(p["lora_rank"]) > 0 and not (p["fsdp"] and world > 1)
    return torch.bfloat16 if lora_bf16 else torch.float32


def apply_lora(backbone: Backbone, p: Mapping[str, Any]) -> Backbone:
    """The backbone with peft LoRA (or DoRA) injected per the params; unchanged for lora_rank 0
    (every parameter trainable). Adapters are float32 (peft's upcast of adapters on bf16 weights)
    unless ``lora_dtype: bf16``, which keeps them in the base weights' dtype."""
    if int(p["lora_rank"]) == 0:
        for param in backbone.model.parameters():
            param.requires_grad_(True)
        return backbone
    from peft import LoraConfig, get_peft_model

    targets = backbone.lora_targets if p["lora_targets"] == "default" else p["lora_targets"]
    config = LoraConfig(r=int(p["lora_rank"]), lora_alpha=float(p["lora_alpha"]),
                        lora_dropout=float(p["lora_dropout"]), target_modules=targets,
                        use_dora=bool(p["dora"]), bias="none")
    model = get_peft_model(backbone.model, config, autocast_adapter_dtype=p.get("lora_dtype", "fp32") == "fp32")
    return replace(backbone, model=model)


class PairEncoder(torch.nn.Module):
    """``forward(*inputs) -> tuple of [b, D] embeddings``: one module call embeds queries, targets
    and negatives, so DDP sees one forward per backward."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, *inputs: dict) -> tuple[torch.Tensor, ...]:
        return tuple(self.embedder(x) for x in inputs)


def _to_device(chunk: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in chunk.items()}


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


# --- lineage ----------------------------------------------------------------------------------
CODE = "trainer.train.recipe"  # the module whose project sources (transitively) are the training code


def run_fingerprint(p: Mapping[str, Any], paths: TrainPaths, shard_index: Path, world: int = 1,
                    code: str | None = None) -> str:
    """The checkpoint fingerprint of this run (`trainer.train.checkpoint.fingerprint`): the params that
    change the result, the number of data slots (``max(1, num_workers)``, which sets the data order
    of a fresh run), the base weights' dtype (`base_dtype`: FSDP keeps float32 where DDP keeps a
    LoRA run's base in bf16), the base model, the shard index and the training code (`code`, its
    `provenance.source_digest`, computed here when not given)."""
    params = {**p, "data_slots": max(1, int(p["num_workers"])), "base_dtype": str(base_dtype(p, world))}
    code = provenance.source_digest(CODE) if code is None else code
    return ckpt.fingerprint(params, paths.base, shard_index, code=code)


def code_lineage(code_digest: str) -> dict[str, Any]:
    """git_commit: the last commit that changed the training code (not HEAD, so committing other
    things leaves models/embedder's bytes unchanged); code_dirty: uncommitted edits to it;
    code_digest: `provenance.source_digest` of it, as the run's fingerprint took it at its start."""
    files = provenance.source_files(CODE)
    return {"git_commit": provenance.git_commit(files), "code_dirty": provenance.dirty(files),
            "code_digest": code_digest}


def dvc_lock_hashes(paths: TrainPaths, lock_file: Path = Path("dvc.lock")) -> dict[str, str | None]:
    """The md5 dvc.lock records for the shards and the base model this run read: None for one that
    dvc.lock does not lock at that path (not locked yet, or `--shards` / `--base` pointed elsewhere)."""
    used = {"shards": ("shard", paths.shards), "base_model": ("backbone", paths.base)}
    out: dict[str, str | None] = {name: None for name in used}
    if not lock_file.is_file():
        return out
    root = lock_file.resolve().parent
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    stages = lock.get("stages") or {}
    for name, (stage, path) in used.items():
        for entry in (stages.get(stage) or {}).get("outs") or []:
            if (root / str(entry.get("path", ""))).resolve() == Path(path).resolve():
                out[name] = entry.get("md5") or entry.get("hash")
    return out


# --- dvclive ----------------------------------------------------------------------------------
def metrics_history(metrics_dir: Path) -> dict[str, str]:
    """dvclive's per-step tsv files under ``metrics_dir``, by file name: each checkpoint keeps the history
    it continues, since git restores metrics/train/ with a checkout of another run but nothing restores
    models/checkpoints, so the workspace's history can be another run's."""
    return {tsv.name: tsv.read_text(encoding="utf-8")
            for tsv in sorted((metrics_dir / "plots" / "metrics").glob("*.tsv"))}


def _restore_metrics(metrics_dir: Path, history: Mapping[str, str]) -> None:
    """Replace the tsv files under ``metrics_dir`` by a checkpoint's `metrics_history`."""
    plots = metrics_dir / "plots" / "metrics"
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    for name, text in history.items():
        (plots / name).write_text(text, encoding="utf-8")


def _trim_metrics(metrics_dir: Path, start_step: int) -> None:
    """Drop metric rows logged at steps >= start_step (by a run killed after its last checkpoint)."""
    for tsv in (metrics_dir / "plots" / "metrics").glob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        header = lines[0].rstrip("\r\n").split("\t")
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < start_step]
        tsv.write_text("".join(kept), encoding="utf-8")


def run_summary(metrics_dir: Path) -> dict[str, float]:
    """`metrics.json`'s values for `dvc metrics diff` / `dvc exp show`, from the whole history in
    dvclive's tsv files (a resumed run's earlier steps included), instead of the last step's: loss and
    grad norm are means over the last tenth of the steps (one batch's loss is noise), pairs/s and
    images/s medians over all steps (a checkpoint save slows the step after it), the counts
    (`COUNTS`: samples quarantined as undecodable or refused by the collator, negative slots padded) summed over the run,
    learning rate the last. Only metrics present are summarised."""
    series = {}
    for tsv in sorted((metrics_dir / "plots" / "metrics").glob("*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as f:
            series[tsv.stem] = [float(row[tsv.stem]) for row in csv.DictReader(f, delimiter="\t")]
    out = {}
    for name, values in series.items():
        if not values:
            continue
        tail = values[-max(1, math.ceil(len(values) / 10)):]
        if name in ("loss", "grad_norm"):
            out[name] = sum(tail) / len(tail)
        elif name.endswith("_per_s"):
            out[name] = statistics.median(values)
        elif name in COUNTS:
            out[name] = int(sum(values))
        else:
            out[name] = values[-1]
    return out


def open_live(metrics_dir: Path, start_step: int, history: Mapping[str, str] | None = None):
    """A dvclive Live under ``metrics_dir`` that never writes dvc.yaml nor creates experiments;
    fresh runs start a clean history, resumed runs continue at ``start_step`` the checkpoint's
    ``history`` (`metrics_history`), or the workspace's for a checkpoint without one."""
    from dvclive import Live

    if start_step == 0:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    elif history is not None:
        _restore_metrics(metrics_dir, history)
    else:
        _trim_metrics(metrics_dir, start_step)
    live = Live(str(metrics_dir), resume=start_step > 0, save_dvc_exp=False, dvcyaml=None, report=None)
    live.step = start_step
    return live


# --- the loop ---------------------------------------------------------------------------------
def train(train_params: Mapping[str, Any], paths: TrainPaths = TrainPaths()) -> dict[str, Any]:
    """Run (or resume) training per ``train_params``; return a summary dict (rank 0 writes outputs)."""
    p = validate_params(train_params)
    check_shard_resolution(paths.shards, p["image_max_pixels"])  # before any work: a params mistake
    dist_info = distributed.init_from_env()
    rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
    seed = int(p["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    backbone = load_backbone(str(paths.base), torch_dtype=base_dtype(p, world))
    if (mismatch := shard_grid_mismatch(paths.shards, backbone.image_processor)) and rank == 0:
        log.warning("%s", mismatch)
    backbone = apply_lora(backbone, p)
    embedder = Embedder(backbone).to(device)
    embedder.train()
    if p["batched_vision_attention"] and batch_vision_attention(embedder.model):
        log.info("batched vision attention: one attention call per vision layer")
    mode = "lora" if int(p["lora_rank"]) > 0 else "full"
    use_fsdp = bool(p["fsdp"]) and world > 1
    if use_fsdp:
        fsdp.shard_model(embedder)
    elif p["fsdp"]:
        log.info("train.fsdp: one process, nothing to shard")
    elif mode == "full" and world > 1:
        log.warning("full fine-tuning under DDP replicates weights, gradients and AdamW state on every rank; "
                    "for backbones that do not fit, set train.fsdp: true")
    scope = compile_scope(p)
    compile_model(embedder.model, scope, world=world, sharded=use_fsdp, pad_to_multiple_of=int(p["pad_to_multiple_of"]))
    image_features = frozen_image_features(embedder.model) if int(p["gc_chunk_size"]) > 0 else None
    if image_features is not None:
        log.info("GradCache: frozen image features of the no-grad pass are reused (vision tower runs once)")
    params = trainable_parameters(embedder)
    n_trainable = sum(q.numel() for q in params)
    log.info("%s fine-tuning: %d trainable parameters of %d", mode, n_trainable,
             sum(q.numel() for q in embedder.parameters()))

    encoder: torch.nn.Module = PairEncoder(embedder)
    if world > 1 and not use_fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # a trained vision path (full fine-tuning, dual encoders, LoRA targets in the vision tower) gets
        # no gradient from a text-only batch, e.g. GradCache's last chunk of targets
        find_unused = mode == "full" or backbone.kind == "dual" or trains_vision(embedder.model)
        encoder = DDP(encoder, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=find_unused)

    optimizer = torch.optim.AdamW(optimizer_groups(embedder, float(p["weight_decay"])), lr=float(p["learning_rate"]))
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(p["warmup_steps"]), int(p["steps"]))

    # resume or start fresh
    shard_index = paths.shards / "index.json"
    code_digest = provenance.source_digest(CODE)  # once per run: the fingerprint's and the lineage's
    fp = run_fingerprint(p, paths, shard_index, world, code=code_digest)
    found = ckpt.latest_checkpoint(paths.checkpoints, fp)
    if found is None and ckpt.list_checkpoints(paths.checkpoints):
        distributed.barrier()
        if rank == 0:
            log.warning("removing stale checkpoints under %s", paths.checkpoints)
            ckpt.remove_checkpoints(paths.checkpoints)
    num_workers = int(p["num_workers"])
    start_step, rng_state, position, last_loss, history = 0, None, None, None, None
    world_sizes = [[0, world]]  # [first step, world size] of each stretch of steps, for the lineage
    if found is not None:
        loaders = {}
        if use_fsdp:
            loaders = dict(load_model=partial(fsdp.load_trainable_state, embedder),
                           load_optimizer=partial(fsdp.load_optimizer_state, embedder, optimizer))
        state = ckpt.load_checkpoint(found, model=embedder, optimizer=optimizer, scheduler=scheduler, rank=rank,
                                     **loaders)
        start_step, rng_state = int(state["step"]), state["rng"]
        position = StreamPosition.from_dict(state["stream"])
        last_loss, history = state["extra"].get("loss"), state["extra"].get("metrics")
        world_sizes = state["extra"].get("world_sizes") or [[0, position.world_size]]
        if position.world_size != world:
            if start_step < int(p["steps"]):  # steps left to train
                world_sizes.append([start_step, world])
                log.warning("checkpoint was written by %d ranks, this run has %d: the data order after resume "
                            "differs from an uninterrupted run; every dataset continues at a fresh epoch (the "
                            "rest of the current one is skipped) instead of replaying epoch 0 from its start",
                            position.world_size, world)
            position = position.fresh_epochs(world, position.slots_per_rank)
        if rng_state is None:
            log.warning("checkpoint has no RNG state for rank %d; reseeding", rank)
    slots_per_rank = position.slots_per_rank if position else max(1, num_workers)
    if num_workers > 0 and slots_per_rank % num_workers:
        log.warning("num_workers=%d does not divide the checkpoint's %d data slots; using %d workers",
                    num_workers, slots_per_rank, slots_per_rank)
        num_workers = slots_per_rank

    shards = read_shards(paths.shards)
    collator = Collator(backbone, max_text_tokens=int(p["max_text_tokens"]),
                        image_max_pixels=p["image_max_pixels"], instructions=bool(p["instructions"]),
                        pad_to_multiple_of=int(p["pad_to_multiple_of"]))
    stream_config = StreamConfig.from_params(p, world_size=world, rank=rank, slots_per_rank=slots_per_rank)
    stream = ContrastiveStream(shards, stream_config, collator, mixture=p["mixture"], position=position)
    position = stream.position
    batches = iter(make_loader(stream, num_workers, seed=seed, pin_memory=device.type == "cuda"))

    if rng_state is not None:
        ckpt.restore_rng(rng_state)
    else:
        torch.manual_seed(seed + rank)  # dropout masks differ across ranks

    steps, save_every = int(p["steps"]), int(p["save_every"])
    temperature, chunk = float(p["temperature"]), int(p["gc_chunk_size"])
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if p["precision"] == "bf16"
                else nullcontext())
    loss_fn = partial(info_nce, temperature=temperature)
    scale = loss_scale()
    no_sync = (partial(fsdp.no_gradient_sync, embedder) if use_fsdp else encoder.no_sync if world > 1 else None)

    live = open_live(paths.metrics, start_step, history) if rank == 0 else None
    ids_log = _open_ids_log(paths.ids_log, start_step, rank, world)
    bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", disable=rank != 0)
    tick = time.perf_counter()
    try:
        for step in range(start_step, steps):
            batch = next(batches)
            if batch["step"] != step:
                raise RuntimeError(f"data stream at step {batch['step']}, training at {step}")
            query = [_to_device(c, device) for c in batch["query"]]
            target = [_to_device(c, device) for c in batch["target"]]
            negatives = [_to_device(c, device) for c in batch["negatives"]] if batch["negatives"] else None
            step_loss = partial(loss_fn, negative_mask=batch["negative_mask"].to(device)) if negatives else loss_fn
            if scope == "cuda-graphs":  # a new step: the last step's graph outputs (all consumed) may be overwritten
                torch.compiler.cudagraph_mark_step_begin()

            def embed(x):
                with autocast:
                    return encoder(x)[0]

            if chunk > 0:
                loss = gradcache_step(embed, query, target, step_loss, negatives, no_sync=no_sync,
                                      features=image_features)
            else:
                with autocast:
                    embs = encoder(query[0], target[0], *(negatives or []))
                negs = None
                if negatives:
                    negs = embs[2].view(embs[0].shape[0], -1, embs[2].shape[-1])
                loss = step_loss(embs[0], embs[1], negs)
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float(p["max_grad_norm"]))
            learning_rate = scheduler.get_last_lr()[0]  # the rate this step's update uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            position.update(batch)

            loss_value = float(loss.detach()) / scale
            counts = torch.tensor([batch["pairs"], batch["images"], batch["quarantined"], batch["padded_negatives"]],
                                  dtype=torch.float64, device=device)
            if world > 1:
                torch.distributed.all_reduce(counts)
            now = time.perf_counter()
            elapsed, tick = max(now - tick, 1e-9), now
            if ids_log is not None:
                ids_log.write(json.dumps({"step": step, "rank": rank, "ids": batch["ids"]}) + "\n")
                ids_log.flush()
            if live is not None:
                live.log_metric("loss", loss_value)
                live.log_metric("learning_rate", learning_rate)
                live.log_metric("grad_norm", fsdp.grad_norm_value(grad_norm))
                live.log_metric("pairs_per_s", float(counts[0]) / elapsed)
                live.log_metric("images_per_s", float(counts[1]) / elapsed)
                live.log_metric("quarantined", int(counts[2]))
                live.log_metric("padded_negatives", int(counts[3]))
                live.next_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step}")
            last_loss = loss_value
            done = step + 1
            if done % save_every == 0 or done == steps:
                _save(paths.checkpoints, done, embedder, optimizer, scheduler, fp, position, last_loss, rank,
                      world_sizes=world_sizes,
                      sharded=use_fsdp, metrics_dir=paths.metrics)
        if live is not None:
            live.summary.update(run_summary(paths.metrics))
    finally:
        bar.close()
        if ids_log is not None:
            ids_log.close()
        if live is not None:
            live.end()

    summary = {"steps": steps, "final_loss": last_loss, "mode": mode, "trainable_parameters": n_trainable,
               "resumed_from": start_step,
               # the world size that trained the steps (a run resumed from its final checkpoint by another
               # number of processes trained none of them); [[first step, world size], ...] when it changed
               "world_size": world_sizes[0][1] if len(world_sizes) == 1 else world_sizes}
    if use_fsdp:  # gather the unsharded weights (every rank), then export an unsharded copy on rank 0
        full = fsdp.full_model_state(embedder)
        if rank == 0:
            backbone = apply_lora(load_backbone(str(paths.base)), p)
            embedder = Embedder(backbone)
            embedder.load_state_dict(full)
    if rank == 0:
        export(backbone, embedder, p, paths, summary, code_digest)
    distributed.barrier()
    del encoder, no_sync, embedder, optimizer, batches  # DDP's reducer holds the process group: free it first
    distributed.cleanup()
    return summary


def _open_ids_log(path: Path | None, start_step: int, rank: int, world: int):
    if path is None:
        return None
    path = Path(path) if world == 1 else Path(f"{path}.rank{rank}")
    kept = []
    if start_step > 0 and path.exists():  # keep what the interrupted run logged before its checkpoint
        kept = [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if json.loads(ln)["step"] < start_step]
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", encoding="utf-8")
    f.writelines(kept)
    return f


def _save(root: Path, step: int, model, optimizer, scheduler, fp: str, position: StreamPosition,
          loss: float, rank: int, sharded: bool = False, metrics_dir: Path | None = None,
          world_sizes: list | None = None) -> None:
    """Gather the per-rank stream positions and RNG states (and under FSDP the unsharded weights and
    optimizer state); rank 0 writes the checkpoint, with the dvclive history under ``metrics_dir``
    and the run's ``world_sizes`` so far."""
    states = {}
    if sharded:
        states = dict(model_state=fsdp.full_trainable_state(model),
                      optimizer_state=fsdp.full_optimizer_state(model, optimizer))
    gathered = distributed.all_gather_object({"position": position.to_dict(), "rng": ckpt.capture_rng()})
    if rank == 0:
        merged = StreamPosition.from_dict(gathered[0]["position"])
        for g in gathered[1:]:
            merged.merge(StreamPosition.from_dict(g["position"]))
        ckpt.save_checkpoint(root, step, model=model, optimizer=optimizer, scheduler=scheduler, fingerprint=fp,
                             stream=merged.to_dict(), rng_per_rank=[g["rng"] for g in gathered],
                             extra={"loss": loss, **({"metrics": metrics_history(metrics_dir)} if metrics_dir else {}),
                                    **({"world_sizes": world_sizes} if world_sizes else {})},
                             **states)
    distributed.barrier()


def export(backbone: Backbone, embedder: Embedder, p: Mapping[str, Any], paths: TrainPaths,
           summary: Mapping[str, Any], code_digest: str) -> None:
    """Write ``paths.out`` (adapter/, merged/, lineage.json) via a temporary sibling folder.

    LoRA: the saved adapter is merged into a fresh copy of the base weights in the dtype the base
    checkpoint stores, so a run that kept them in bf16 (``base_dtype``) does not round a float32
    base into a bf16 merged copy."""
    out = Path(paths.out)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by an export that died (a full model copy each)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        _write_export(backbone, embedder, p, paths, summary, code_digest, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("wrote %s (%s, final loss %.4f)", out, summary["mode"], summary["final_loss"])


def _write_export(backbone: Backbone, embedder: Embedder, p: Mapping[str, Any], paths: TrainPaths,
                  summary: Mapping[str, Any], code_digest: str, tmp: Path) -> None:
    """adapter/ (LoRA), merged/ and lineage.json into `tmp`."""
    model = embedder.model
    embedder.eval()
    if summary["mode"] == "lora":
        from peft import PeftModel

        model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
        stored = load_backbone(str(paths.base), torch_dtype="auto").model
        model = PeftModel.from_pretrained(stored, str(tmp / "adapter")).merge_and_unload()
    merged = replace(backbone, model=model.cpu().eval())
    save_backbone(merged, tmp / "merged")
    lineage = {
        "base_model": str(paths.base), "base_model_info": backbone.info, "shards": str(paths.shards),
        "shard_index_sha256": ckpt.hash_tree(Path(paths.shards) / "index.json"),
        **code_lineage(code_digest), "dvc_lock": dvc_lock_hashes(paths),
        "train": dict(p),
        "collation": {"max_text_tokens": int(p["max_text_tokens"]), "image_max_pixels": p["image_max_pixels"],
                      "instructions": bool(p["instructions"])},
        **{k: summary[k] for k in ("steps", "final_loss", "mode", "trainable_parameters", "world_size")},
    }
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str) + "\n",
                                      encoding="utf-8")
