"""InfoNCE with in-batch (cross-device) negatives and optional explicit hard negatives.

The math (VLM2Vec, Jiang et al. 2024, Eq. 1; ``DistributedContrastiveLoss`` in their code):

    global batch  Q = [q_1 .. q_N],  T = [t_1 .. t_N]   (N = sum of the per-rank batches)
    candidates    C = [t_1 .. t_N ; n_1,1 .. n_1,K ; .. ; n_N,1 .. n_N,K]     (N + N*K rows)
    logits        s_ij = <q_i, c_j> / tau
    loss          L = (1/N) * sum_i  -log( exp(s_ii) / sum_j exp(s_ij) )

so every query sees its own target as the positive and every other target *and every hard negative
of the global batch* as negatives. With L2-normalised inputs <q, c> is the cosine similarity.
A ``negative_mask`` drops padding from the candidates (logit -inf): the loader fills K slots for a
record with fewer negatives by repeating its own or borrowing the batch's targets, and a borrowed
target in the candidates would count the positive of the pair it belongs to as a negative too.

Loss scaling under DDP (read this if you write a training loop)
-------------------------------------------------------------
Every rank gathers the embeddings of all ranks and computes the same global L, but gradients flow
only through its own (local) rows: :func:`gather_with_grad` uses a plain ``all_gather`` and puts the
grad-carrying local tensor back into its slot. The sum over ranks of these partial gradients is the
full dL/dtheta; DDP *averages* gradients over ranks, so :func:`info_nce` returns ``W * L``
(``W`` = world size) and after DDP's all-reduce every rank holds exactly dL/dtheta, the gradient a
single process would get on the whole global batch. The logged value must be the unscaled L:
``loss.item() / loss_scale()`` (``loss_scale()`` is 1 in one process, or when ``gather=False`` /
``scale_by_world_size=False``). With ``gather=False`` each rank uses only its local in-batch
negatives and no scaling is applied (DDP's average of per-rank losses is then already right).

:func:`in_batch_order` puts a side's embeddings back in batch order when the stream collated its rows
in another order (``train.sub_batches: kind``), before the loss pairs query i with target i.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer import distributed

__all__ = ["gather_with_grad", "info_nce", "loss_scale"]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph of the local part.

    Returns ``cat([x_0, .., x_{W-1}])`` in rank order where the slot of this rank is ``x`` itself
    (so gradients reach this rank's parameters) and the other slots are constants. Identity when
    no process group with more than one rank is active. All ranks must pass the same shape; a
    mismatch raises ``ValueError`` on every rank (shapes are exchanged first, so no rank hangs).
    """
    if not distributed.is_distributed():
        return x
    world = dist.get_world_size()
    x = x.contiguous()
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        raise ValueError(
            "gather_with_grad needs equal shapes on every rank, got "
            + ", ".join(str(tuple(s.tolist())) for s in shapes)
        )
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def loss_scale(*, gather: bool = True, scale_by_world_size: bool = True) -> int:
    """The factor :func:`info_nce` applied to L with these flags: world size under DDP, else 1."""
    return distributed.world_size() if (gather and scale_by_world_size) else 1


def info_nce(
    query: torch.Tensor,
    target: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    temperature: float = 0.02,
    gather: bool = True,
    scale_by_world_size: bool = True,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over the global batch (see the module docstring for the formula and the scaling).

    Args:
        query: ``[B, D]`` query embeddings of this rank (L2-normalised by the caller).
        target: ``[B, D]`` their positive targets, row i belongs to query i.
        negatives: ``[B, K, D]`` explicit hard negatives, K per query, or None.
        temperature: tau > 0; logits are cosine / tau (VLM2Vec: 0.02).
        gather: gather queries, targets and negatives from all ranks (cross-device negatives).
        scale_by_world_size: multiply by the world size when gathering under DDP (see above).
        negative_mask: ``[B, K]`` bool, False for a padded negative slot (left out of every query's
            candidates); None keeps all.

    Returns a scalar: ``loss_scale(...) * L`` where L is the mean cross-entropy over the global
    batch. Half-precision inputs are promoted to float32 for the logits (tau = 0.02 multiplies
    rounding errors by 50); float32/float64 inputs keep their dtype.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query.ndim != 2 or target.ndim != 2:
        raise ValueError(f"query and target must be [B, D], got {tuple(query.shape)} and {tuple(target.shape)}")
    if query.shape != target.shape:
        raise ValueError(f"query {tuple(query.shape)} and target {tuple(target.shape)} differ in shape")
    if query.shape[0] == 0:
        raise ValueError("empty batch")
    if negatives is not None and (
        negatives.ndim != 3 or negatives.shape[0] != query.shape[0] or negatives.shape[2] != query.shape[1]
    ):
        raise ValueError(
            f"negatives must be [B={query.shape[0]}, K, D={query.shape[1]}], got {tuple(negatives.shape)}"
        )

    if negative_mask is not None and (negatives is None or tuple(negative_mask.shape) != tuple(negatives.shape[:2])):
        raise ValueError(f"negative_mask must be [B, K] like the negatives, got {tuple(negative_mask.shape)}")
    if gather:
        query = gather_with_grad(query)
        target = gather_with_grad(target)
        if negatives is not None:
            negatives = gather_with_grad(negatives)
        if negative_mask is not None:
            negative_mask = gather_with_grad(negative_mask.to(torch.uint8)).bool()
    candidates = target
    if negatives is not None and negatives.shape[1] > 0:
        candidates = torch.cat([target, negatives.reshape(-1, negatives.shape[-1])], dim=0)

    if query.dtype in (torch.float16, torch.bfloat16):
        query, candidates = query.float(), candidates.float()
    logits = query @ candidates.T / temperature
    if negative_mask is not None:
        keep = torch.cat([torch.ones(target.shape[0], dtype=torch.bool, device=logits.device),
                          negative_mask.to(logits.device).reshape(-1)])
        logits = logits.masked_fill(~keep, float("-inf"))
    labels = torch.arange(query.shape[0], device=query.device)
    loss = F.cross_entropy(logits, labels)
    scale = loss_scale(gather=gather, scale_by_world_size=scale_by_world_size)
    return loss * scale if scale != 1 else loss


def in_batch_order(embeddings: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """A side's embeddings, its chunks' rows concatenated, put back in batch order: ``order[j]`` is
    the batch row of embedded row j (a batch's ``order``; None: already in batch order). An index
    operation, so gradients flow back to the chunk rows."""
    if order is None:
        return embeddings
    return embeddings[torch.argsort(order.to(embeddings.device))]
