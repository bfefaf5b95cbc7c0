"""GradCache gives the gradients of the uncached step, with dropout on (RNG replay)."""

import contextlib
from functools import partial

import pytest
import torch

from tests.support.ddp_worker import (
    TinyMLPEncoder,
    build_lora_text_encoder,
    chunked,
    embed_last_token,
    plain_step,
    token_sequences,
)
from trainer.train import gradcache
from trainer.train.gradcache import gradcache_step
from trainer.train.losses import info_nce

TOL = 1e-5


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


def _mlp_chunks(rows, chunk_size):
    size = chunk_size or rows.shape[0]
    return [{"x": rows[i : i + size]} for i in range(0, rows.shape[0], size)]


def _run_both(make_model, embed, chunks_of, batch, chunk_size, k, seed=7):
    """(loss, grads) of GradCache and of the plain step on identical models, inputs and RNG seed."""
    queries, targets, negatives = batch
    loss_fn = partial(info_nce, temperature=0.05)
    results = []
    for use_cache in (True, False):
        model = make_model()
        embed_fn = partial(embed, model)
        q, t = chunks_of(queries, chunk_size), chunks_of(targets, chunk_size)
        n = chunks_of(negatives, chunk_size) if k else None
        torch.manual_seed(seed)
        step = gradcache_step if use_cache else plain_step
        loss = step(embed_fn, q, t, loss_fn, n)
        results.append((loss, _grads(model), torch.rand(3)))
    return results


def _mlp_batch(b, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 12, generator=g), torch.randn(b, 12, generator=g), torch.randn(b * k, 12, generator=g)


def _mlp_model():
    torch.manual_seed(0)
    return TinyMLPEncoder(dropout=0.3).train()


def _mlp_embed(model, inputs):
    return model(inputs)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [0, 2])
def test_mlp_with_dropout_matches_plain_step(chunk_size, k):
    (gc_loss, gc_grads, gc_rng), (loss, grads, rng) = _run_both(
        _mlp_model, _mlp_embed, _mlp_chunks, _mlp_batch(8, k), chunk_size, k
    )
    assert gc_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert _max_diff(gc_grads, grads) < TOL
    assert all(g.abs().max() > 0 for g in grads.values())
    # the global RNG ends where the plain step leaves it
    assert torch.equal(gc_rng, rng)


def test_without_dropout_matches_one_forward_of_the_whole_batch():
    queries, targets, _ = _mlp_batch(8, 0)
    loss_fn = partial(info_nce, temperature=0.05)
    model_a, model_b = _mlp_model().eval(), _mlp_model().eval()
    gradcache_step(model_a, _mlp_chunks(queries, 3), _mlp_chunks(targets, 3), loss_fn)
    plain_step(model_b, [{"x": queries}], [{"x": targets}], loss_fn)
    assert _max_diff(_grads(model_a), _grads(model_b)) < TOL


def test_negative_control_without_rng_replay_gradients_differ(monkeypatch):
    batch = _mlp_batch(8, 0)
    _, (_, reference, _) = _run_both(_mlp_model, _mlp_embed, _mlp_chunks, batch, 3, 0)
    monkeypatch.setattr(gradcache.RngState, "restore", lambda self: None)
    (_, no_replay, _), _ = _run_both(_mlp_model, _mlp_embed, _mlp_chunks, batch, 3, 0)
    assert _max_diff(no_replay, reference) > 1e-2


def test_gradients_accumulate_into_existing_grad():
    queries, targets, _ = _mlp_batch(6, 0)
    loss_fn = partial(info_nce, temperature=0.05)
    model = _mlp_model().eval()
    gradcache_step(model, _mlp_chunks(queries, 4), _mlp_chunks(targets, 4), loss_fn)
    once = _grads(model)
    gradcache_step(model, _mlp_chunks(queries, 4), _mlp_chunks(targets, 4), loss_fn)
    twice = _grads(model)
    assert _max_diff(twice, {n: 2 * g for n, g in once.items()}) < TOL


def test_no_sync_wraps_every_chunk_but_the_last():
    queries, targets, negatives = _mlp_batch(5, 1)
    calls, active = [], []
    model = _mlp_model()

    @contextlib.contextmanager
    def no_sync():
        active.append(True)
        yield
        active.pop()

    def embed(inputs):
        calls.append((torch.is_grad_enabled(), bool(active)))
        return model(inputs)

    gradcache_step(embed, _mlp_chunks(queries, 2), _mlp_chunks(targets, 2), partial(info_nce), _mlp_chunks(negatives, 2),
                   no_sync=no_sync)
    n_chunks = 3 + 3 + 3
    first_pass, replay = calls[:n_chunks], calls[n_chunks:]
    assert first_pass == [(False, False)] * n_chunks
    assert replay == [(True, True)] * (n_chunks - 1) + [(True, False)]


@pytest.mark.parametrize(
    "q_rows, t_rows, n_rows, match",
    [(4, 3, 0, "differ in shape"), (4, 4, 6, "not a multiple"), (0, 4, 0, "at least one")],
)
def test_bad_input_raises(q_rows, t_rows, n_rows, match):
    model = _mlp_model()
    q = _mlp_chunks(torch.randn(q_rows, 12), 2) if q_rows else []
    t = _mlp_chunks(torch.randn(t_rows, 12), 2)
    n = _mlp_chunks(torch.randn(n_rows, 12), 2) if n_rows else None
    with pytest.raises(ValueError, match=match):
        gradcache_step(model, q, t, partial(info_nce), n)


# ------------------------------------------------ a transformers model with peft LoRA dropout 0.1
def _lora_batch(b, k):
    return token_sequences(b, seed=1), token_sequences(b, seed=2), token_sequences(b * k, seed=3)


@pytest.mark.parametrize("chunk_size, k", [(3, 0), (2, 2), (7, 1)])
def test_lora_text_model_with_dropout_matches_plain_step(chunk_size, k):
    (gc_loss, gc_grads, _), (loss, grads, _) = _run_both(
        build_lora_text_encoder, embed_last_token, chunked, _lora_batch(7, k), chunk_size, k
    )
    assert gc_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert len(grads) == 28 and all(g.abs().max() > 0 for g in grads.values())
    assert _max_diff(gc_grads, grads) < TOL


def test_lora_text_model_negative_control(monkeypatch):
    batch = _lora_batch(7, 0)
    _, (_, reference, _) = _run_both(build_lora_text_encoder, embed_last_token, chunked, batch, 3, 0)
    monkeypatch.setattr(gradcache.RngState, "restore", lambda self: None)
    (_, no_replay, _), _ = _run_both(build_lora_text_encoder, embed_last_token, chunked, batch, 3, 0)
    assert _max_diff(no_replay, reference) > 1e-2


# ------------------------------------------------ the project's Embedder on tiny Qwen2-VL + LoRA dropout
def _qwen2_vl_embedder():
    from peft import LoraConfig, get_peft_model

    from trainer.backbone.families import build_tiny
    from trainer.model.inputs import Collator
    from trainer.model.embedder import Embedder

    backbone = build_tiny("qwen2_vl", seed=0)
    backbone.model = get_peft_model(
        backbone.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=backbone.lora_targets)
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    embedder = Embedder(backbone).train()
    return embedder, Collator(backbone, max_text_tokens=32, image_max_pixels=32 * 32)


def _qwen2_vl_rows(b):
    from PIL import Image

    from pipelines.schema import IMAGE_TOKEN

    colours = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    queries, targets = [], []
    for i in range(b):
        image = Image.new("RGB", (32, 32), (37 * i % 256, 91 * i % 256, 53 * i % 256))
        if i % 3 == 2:  # a text-only query now and then: mixed chunks
            image = None
        raw = (f"{IMAGE_TOKEN}\nRepresent the given image with the following question: what colour?"
               if image is not None else f"Find the {colours[i]} square.")
        queries.append(({"raw": raw, "text": raw}, image))
        text = f"A {colours[i]} square" + " on a plain background" * (i % 3)
        targets.append(({"raw": text, "text": text}, None))
    return queries, targets


@pytest.mark.slow
def test_real_embedder_qwen2_vl_lora_dropout_matches_plain_step():
    """The project's Embedder + Collator on tiny Qwen2-VL, LoRA dropout 0.1, chunks 3 for batch 7."""
    queries, targets = _qwen2_vl_rows(7)
    loss_fn = partial(info_nce, temperature=0.02)
    results = {}
    for mode in ("gradcache", "plain", "no_replay"):
        embedder, collate = _qwen2_vl_embedder()

        def chunks(rows, size=3):
            return [collate([s for s, _ in rows[i : i + size]], [im for _, im in rows[i : i + size]])
                    for i in range(0, len(rows), size)]

        q, t = chunks(queries), chunks(targets)
        torch.manual_seed(5)
        if mode == "plain":
            loss = plain_step(embedder, q, t, loss_fn)
        else:
            with pytest.MonkeyPatch.context() as mp:
                if mode == "no_replay":
                    mp.setattr(gradcache.RngState, "restore", lambda self: None)
                loss = gradcache_step(embedder, q, t, loss_fn)
        results[mode] = (loss, _grads(embedder))
    (gc_loss, gc_grads), (loss, grads) = results["gradcache"], results["plain"]
    assert len(grads) > 0 and all(g.abs().max() > 0 for g in grads.values())
    assert gc_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert _max_diff(gc_grads, grads) < TOL
    assert _max_diff(results["no_replay"][1], grads) > 1e-3
