"""One training step: embed, InfoNCE, backward (or GradCache), clip, AdamW, schedule.

    step = make_step(model, p, dist)
    result = step(batch)            # a batch of `trainer.train.stream.ContrastiveStream`

The step embeds the batch's queries and targets (and ``hard_negatives`` explicit negatives per
query) in one call of the encoder (each side in its chunks: one, or one per input kind with
``sub_batches: kind``, the rows then put back in batch order), takes `info_nce` at ``temperature``
over the global batch (padded negative slots masked out), backpropagates, in GradCache chunks of
``gc_chunk_size`` when > 0 (`trainer.train.gradcache`), clips the gradient norm to
``max_grad_norm``, steps AdamW and the learning-rate schedule. Under bf16 the forward runs in
autocast; under DDP or FSDP GradCache syncs gradients on its last chunk only.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, NamedTuple

import torch

from pipelines.params import Train
from trainer.distributed import DistInfo
from trainer.train import fsdp
from trainer.train.build import Model
from trainer.train.gradcache import gradcache_step
from trainer.train.losses import in_batch_order, info_nce, loss_scale


class StepResult(NamedTuple):
    loss: float  # the global batch's loss, as one process would compute it
    grad_norm: torch.Tensor  # before clipping
    learning_rate: float  # the rate this step's update used


@dataclass(frozen=True, eq=False)
class Step:
    """`__call__(batch)`: one optimizer step of `model` on a batch; the settings are the run's."""

    model: Model
    device: torch.device
    autocast: AbstractContextManager  # bf16 autocast, or a no-op
    loss_fn: Callable[..., torch.Tensor]  # info_nce at the run's temperature
    gc_chunk_size: int
    no_sync: Callable[[], AbstractContextManager] | None  # skips the gradient sync of GradCache's chunks
    max_grad_norm: float
    cuda_graphs: bool  # compile: cuda-graphs, whose replays are marked per step
    scale: int  # `loss_scale`: the factor info_nce applied for DDP's gradient averaging

    def __call__(self, batch: Mapping[str, Any]) -> StepResult:
        query = [to_device(c, self.device) for c in batch["query"]]
        target = [to_device(c, self.device) for c in batch["target"]]
        negatives = [to_device(c, self.device) for c in batch["negatives"]] if batch["negatives"] else None
        loss_fn = (partial(self.loss_fn, negative_mask=batch["negative_mask"].to(self.device)) if negatives
                   else self.loss_fn)
        if self.cuda_graphs:  # a new step: the last step's graph outputs (all consumed) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if self.gc_chunk_size > 0:
            loss = gradcache_step(self.embed, query, target, loss_fn, negatives, no_sync=self.no_sync,
                                  features=self.model.image_features, order=batch.get("order"))
        else:
            loss = self.forward_backward(query, target, negatives, loss_fn, batch.get("order"))
        model = self.model
        grad_norm = torch.nn.utils.clip_grad_norm_(model.trainable, self.max_grad_norm)
        learning_rate = model.scheduler.get_last_lr()[0]  # the rate this step's update uses
        model.optimizer.step()
        model.scheduler.step()
        model.optimizer.zero_grad(set_to_none=True)
        return StepResult(float(loss.detach()) / self.scale, grad_norm, learning_rate)

    def forward_backward(self, query: list[dict], target: list[dict], negatives: list[dict] | None,
                         loss_fn: Callable[..., torch.Tensor], order: Mapping | None = None) -> torch.Tensor:
        """The whole batch in one forward of the encoder and one backward (no GradCache); the loss.
        Each side's chunks are embedded, concatenated and put back in batch order (`order`)."""
        sides = [("query", query), ("target", target)] + ([("negatives", negatives)] if negatives else [])
        with self.autocast:
            embs = iter(self.model.encoder(*(chunk for _, chunks in sides for chunk in chunks)))
        rows = {name: in_batch_order(torch.cat([next(embs) for _ in chunks]), (order or {}).get(name))
                for name, chunks in sides}
        q, t = rows["query"], rows["target"]
        negs = rows["negatives"].view(q.shape[0], -1, q.shape[-1]) if negatives else None
        loss = loss_fn(q, t, negs)
        loss.backward()
        return loss

    def embed(self, x: dict) -> torch.Tensor:
        """One GradCache chunk's embeddings."""
        with self.autocast:
            return self.model.encoder(x)[0]


def make_step(model: Model, p: Train, dist: DistInfo) -> Step:
    """The step of a run of `p` on `model`."""
    device = dist.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if p.precision == "bf16" else nullcontext()
    no_sync = (partial(fsdp.no_gradient_sync, model.embedder) if model.sharded
               else model.encoder.no_sync if dist.world_size > 1 else None)
    return Step(model=model, device=device, autocast=autocast, loss_fn=partial(info_nce, temperature=p.temperature),
                gc_chunk_size=p.gc_chunk_size, no_sync=no_sync, max_grad_norm=p.max_grad_norm,
                cuda_graphs=p.compile_scope == "cuda-graphs", scale=loss_scale())


def to_device(chunk: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in chunk.items()}
