"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive loss couples every example of the batch, so the batch cannot simply be split into
gradient-accumulation steps without losing in-batch negatives. GradCache splits the *encoder*
work instead; with f the encoder, e_c = f(x_c; theta) the embeddings of chunk c and L(e_1..e_m)
the loss on all of them:

    dL/dtheta = sum_c  (dL/de_c)^T  de_c/dtheta

1. embed every chunk under ``torch.no_grad`` (activation memory of one chunk), recording the
   CPU and CUDA random-number state before each chunk;
2. compute L on the concatenated embeddings, made leaves that require grad, and backward to get
   the cached gradients g_c = dL/de_c (memory of the embeddings only);
3. re-embed each chunk with grad, with the RNG state of step 1 restored so that dropout masks
   (LoRA dropout!) are the same ones that produced the embeddings L was computed on, and call
   ``e_c.backward(g_c)``; the parameter gradients accumulate to exactly dL/dtheta.

Under DDP the per-chunk backward runs inside ``no_sync`` except for the very last chunk, whose
backward all-reduces the gradients accumulated over all chunks. When the vision tower is frozen
(LoRA on the language model), ``features`` (`trainer.model.acceleration.frozen_image_features`) lets step 3
reuse the image features of step 1 instead of running the tower again; the result is bit-identical.

What "equal to a plain step" means: with dropout active, the masks depend on how the batch is
split (each forward draws masks for its own rows), so the reference is the same chunks forwarded
*with* grad in the same order followed by one backward of the same loss. Without dropout the
result also equals one forward of the whole batch (up to float rounding and padding effects).
After the call the global RNG is in the state the no-grad pass left it in, i.e. the state such a
plain step would leave it in.

Usage in a training loop (``model`` possibly DDP-wrapped; chunks collated per sub-batch of sides):

    loss = gradcache_step(model, q_chunks, t_chunks, partial(info_nce, temperature=tau), n_chunks,
                          no_sync=model.no_sync if distributed.is_distributed() else None)
    optimizer.step(); optimizer.zero_grad()
    log(loss.item() / loss_scale())        # the single-process global-batch loss
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer import distributed
from trainer.train.losses import in_batch_order

log = logging.getLogger(__name__)

__all__ = ["RngState", "gradcache_step"]

Inputs = dict
ORDER_KEYS = {"query": "query", "target": "target", "negative": "negatives"}  # group -> key of a batch's order


@dataclass
class RngState:
    """The CPU generator state and, if CUDA has been initialised, every CUDA device's state."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _embed_no_grad(embed_fn: Callable[[Inputs], torch.Tensor], chunks: list[Inputs], name: str):
    embeddings, states = [], []
    for i, chunk in enumerate(chunks):
        states.append(RngState.capture())
        with torch.no_grad():
            emb = embed_fn(chunk)
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
            raise ValueError(f"embed_fn must return a [b, D] tensor; {name} chunk {i} gave {getattr(emb, 'shape', type(emb))}")
        embeddings.append(emb.detach())
    return embeddings, states


def gradcache_step(
    embed_fn: Callable[[Inputs], torch.Tensor],
    query_inputs: list[Inputs],
    target_inputs: list[Inputs],
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    negative_inputs: list[Inputs] | None = None,
    *,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    features=None,
    order: dict[str, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """One GradCache forward/backward; parameter ``.grad`` receives dL/dtheta (accumulated, not zeroed).

    Args:
        embed_fn: maps one collated chunk to ``[b, D]`` embeddings (e.g. the DDP-wrapped Embedder).
        query_inputs / target_inputs: the batch's queries and targets, already split into collated
            chunks (any sizes, need not be equal); the concatenated chunks give ``[B, D]`` each.
        loss_fn: ``loss_fn(q [B, D], t [B, D], negs [B, K, D] or None) -> scalar``, e.g.
            ``functools.partial(info_nce, temperature=0.02)``. It may gather across ranks; it runs once.
        negative_inputs: chunks of the flattened hard negatives, query-major (rows ``i*K .. i*K+K-1``
            are the negatives of query i), ``B*K`` rows in all; or None.
        no_sync: DDP's ``model.no_sync`` (a context-manager factory) to skip gradient all-reduce on
            every chunk but the last; None in one process.
        features: an `trainer.model.acceleration.ImageFeatureCache` (``record()`` / ``replay()`` context
            managers): the image features of the no-grad pass are reused by the pass with grad
            instead of running a frozen vision tower again; None runs it twice.
        order: None when the chunks hold the rows in batch order; else per group ("query",
            "target", "negatives") the batch row of each row of the concatenated chunks (a batch's
            ``order``, `trainer.train.losses.in_batch_order`): the loss sees the rows in batch order.

    Under DDP every rank must pass the same number of query, target and negative chunks (each
    forward and the final sync are collectives); the counts are compared first and a mismatch
    raises ``ValueError`` on every rank instead of deadlocking.

    Returns the loss value (detached), exactly what ``loss_fn`` returned.
    """
    if not query_inputs or not target_inputs:
        raise ValueError("gradcache_step needs at least one query chunk and one target chunk")
    groups = [("query", query_inputs), ("target", target_inputs)]
    if negative_inputs:
        groups.append(("negative", negative_inputs))
    _check_chunk_counts(groups)

    # 1) no-grad pass, RNG state recorded per chunk
    with features.record() if features is not None else contextlib.nullcontext():
        cached = {name: _embed_no_grad(embed_fn, chunks, name) for name, chunks in groups}
    rng_after_first_pass = RngState.capture()

    # 2) loss on the embeddings, gradient w.r.t. the embeddings
    leaves = {name: torch.cat(embs).requires_grad_() for name, (embs, _) in cached.items()}
    with torch.enable_grad():
        rows = {name: in_batch_order(leaf, (order or {}).get(ORDER_KEYS[name])) for name, leaf in leaves.items()}
        q, t = rows["query"], rows["target"]
        if q.shape != t.shape:
            raise ValueError(f"queries {tuple(q.shape)} and targets {tuple(t.shape)} differ in shape")
        negs = None
        if "negative" in rows:
            n = rows["negative"]
            if n.shape[0] % q.shape[0] != 0:
                raise ValueError(f"{n.shape[0]} negatives is not a multiple of {q.shape[0]} queries")
            negs = n.view(q.shape[0], n.shape[0] // q.shape[0], n.shape[1])
        loss = loss_fn(q, t, negs)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        loss.backward()
    grads = {name: leaf.grad for name, leaf in leaves.items()}

    # 3) re-embed with grad under the recorded RNG states, backward the cached gradients
    work = [
        (chunk, state, grad_part)
        for name, chunks in groups
        for chunk, state, grad_part in zip(
            chunks, cached[name][1], grads[name].split([e.shape[0] for e in cached[name][0]]), strict=True
        )
    ]
    with features.replay() if features is not None else contextlib.nullcontext():
        _backward_chunks(embed_fn, work, no_sync)
    rng_after_first_pass.restore()
    return loss.detach()


def _check_chunk_counts(groups: list[tuple[str, list[Inputs]]]) -> None:
    """Under DDP: raise ValueError on every rank unless all ranks pass the same chunk counts (each
    forward and the final gradient sync are collectives: unequal counts would deadlock)."""
    if distributed.is_distributed():
        counts = tuple(len(chunks) for _, chunks in groups) + (0,) * (3 - len(groups))
        all_counts = distributed.all_gather_object(counts)
        if any(tuple(c) != counts for c in all_counts):
            raise ValueError(f"ranks pass different (query, target, negative) chunk counts: {all_counts}")


def _backward_chunks(embed_fn: Callable[[Inputs], torch.Tensor],
                     work: list[tuple[Inputs, RngState, torch.Tensor]],
                     no_sync: Callable[[], contextlib.AbstractContextManager] | None) -> None:
    """Step 3: each (chunk, RNG state, cached gradient) re-embedded with grad under its RNG state and
    backpropagated; gradients are synchronised on the last chunk only (`no_sync` on the others)."""
    for i, (chunk, state, grad_part) in enumerate(work):
        last = i == len(work) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        with ctx:
            state.restore()
            with torch.enable_grad():
                emb = embed_fn(chunk)
            if emb.shape != grad_part.shape:
                raise RuntimeError(
                    f"chunk {i} re-embedded to {tuple(emb.shape)} but gave {tuple(grad_part.shape)} in the "
                    "no-grad pass: embed_fn must be deterministic given the RNG state"
                )
            emb.backward(grad_part)

