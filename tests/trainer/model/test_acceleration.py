"""trainer.model.acceleration: batched vision attention and regional compilation change speed, never results."""

import pytest
import torch
from PIL import Image

from tests.support.sides import SIDES, side
from trainer.model.acceleration import (batch_vision_attention, compile_blocks, compile_language_model, language_model,
                                  repeated_blocks, unbatch_vision_attention)
from trainer.model import acceleration
from trainer.backbone.families import build_tiny
from trainer.model.inputs import Collator
from trainer.train.losses import info_nce
from trainer.model.embedder import Embedder

PATCH_DIM = 3 * 2 * 8 * 8  # channels x temporal patch x patch 8 x 8 (build_tiny's vision towers)


class _SdpaSpy:
    """Counts the batch dimension of every scaled_dot_product_attention call."""

    def __init__(self):
        self.calls = []
        self._sdpa = torch.nn.functional.scaled_dot_product_attention

    def __enter__(self):
        def spy(q, *args, **kwargs):
            self.calls.append(q.shape[0])
            return self._sdpa(q, *args, **kwargs)

        torch.nn.functional.scaled_dot_product_attention = spy
        return self

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self._sdpa


def _vision(visual, pixels, grid):
    """The tower's merged output, with Qwen3-VL's deepstack features (its earlier blocks' merged
    outputs, which enter the language model too) after it."""
    out = visual(pixels, grid_thw=grid)
    return torch.cat([out.pooler_output, *(getattr(out, "deepstack_features", None) or [])])


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def tower(request):
    """A tiny backbone of each family whose vision tower batch_vision_attention patches."""
    return build_tiny(request.param, seed=0)


def _pixels(grid, seed=0):
    n = int(torch.tensor(grid).prod(dim=1).sum())
    return torch.randn(n, PATCH_DIM, generator=torch.Generator().manual_seed(seed)), torch.tensor(grid)


@pytest.mark.parametrize("grid, batched_calls", [
    ([[1, 4, 4]] * 3, [3]),                       # three same-size images: one call of 3 per layer
    ([[2, 4, 4], [1, 4, 4]], [3]),                # a 2-frame clip + an image: 3 slices of 16 patches
    ([[1, 4, 4], [1, 2, 4], [1, 4, 2]], [3]),     # different sizes: padded to 16 patches, one call of 3
    ([[1, 8, 8], [1, 2, 2], [1, 2, 2]], [1, 1, 1]),  # padding 4 to 64 would cost 1.5x MAX_PADDED_COST: the loop
])
def test_batched_vision_attention_matches_the_loop(tower, grid, batched_calls):
    qwen = tower
    visual = qwen.model.model.visual
    depth = len(visual.blocks)
    pixels, grid_thw = _pixels(grid)
    with torch.no_grad():
        with _SdpaSpy() as loop:
            ref = _vision(visual, pixels, grid_thw)
        assert batch_vision_attention(qwen.model) == depth
        try:
            with _SdpaSpy() as batched:
                out = _vision(visual, pixels, grid_thw)
        finally:
            unbatch_vision_attention(qwen.model)
    assert batched.calls == batched_calls * depth
    assert len(loop.calls) == sum(t for t, _, _ in grid) * depth
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid", [[[1, 4, 4]] * 2, [[1, 4, 4], [1, 2, 4], [1, 4, 2]]])
def test_batched_vision_attention_gives_the_loops_gradients(tower, grid):
    """Full fine-tuning back-propagates through the vision tower: same parameter gradients, for
    same-size images and for images padded to the largest (no gradient leaks from the padding)."""
    qwen = tower
    visual = qwen.model.model.visual
    pixels, grid = _pixels(grid, seed=1)
    grads = []
    for batched in (False, True):
        visual.zero_grad(set_to_none=True)
        if batched:
            batch_vision_attention(qwen.model)
        try:
            _vision(visual, pixels, grid).square().sum().backward()
        finally:
            unbatch_vision_attention(qwen.model)
        grads.append({n: p.grad.clone() for n, p in visual.named_parameters() if p.grad is not None})
    visual.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and any("attn.qkv" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def _new_layouts():
    """20 batches of image counts and sizes the warm-up never saw: same-size (5-12 images), padded
    (4-12 sequences of 16 and 8 patches) and the stock loop (one 64-patch image and 2-7 of 4)."""
    uniform = [[[1, 4, 4]] * n for n in range(5, 13)]
    padded = [[[1, 4, 4], [1, 4, 2]] * k for k in range(2, 7)] + [[[1, 6, 4], [1, 4, 4], [1, 4, 2]]]
    loop = [[[1, 8, 8]] + [[1, 2, 2]] * k for k in range(2, 8)]
    return uniform + padded + loop


def test_compiled_vision_blocks_do_not_recompile_for_each_image_count_and_size(qwen):
    """The batched layout reaches the compiled blocks as tensor shapes and the stock loop is never
    traced: once every size has varied (torch then compiles it as dynamic), 20 batches of new image
    counts and sizes (same-size, padded, or the loop) compile at most 3 more graphs instead of one
    or more each, and give the eager tower's output."""
    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):  # a dynamo backend that runs the captured graph as it is
        graphs.append(gm)
        return gm.forward

    model = build_tiny("qwen2_vl", seed=0).model
    visual = model.model.visual
    warmup = [[[1, 4, 4]] * 2, [[1, 4, 4]] * 3, [[1, 4, 4], [1, 2, 4], [1, 4, 2]], [[1, 6, 4], [1, 2, 4]],
              [[1, 8, 8], [1, 2, 2], [1, 2, 2]], [[1, 8, 8], [1, 2, 2], [1, 2, 2], [1, 2, 2]]]
    new = _new_layouts()
    with torch.no_grad():
        expected = [_vision(visual, *_pixels(g, seed=i)) for i, g in enumerate(new)]
        batch_vision_attention(model)
        compile_blocks(visual, backend=counting)
        try:
            for i, g in enumerate(warmup):
                _vision(visual, *_pixels(g, seed=i))
            after_warmup = len(graphs)
            outputs = [_vision(visual, *_pixels(g, seed=i)) for i, g in enumerate(new)]
        finally:
            unbatch_vision_attention(model)
            torch._dynamo.reset()
    assert after_warmup > 0 and len(graphs) - after_warmup <= 3, (after_warmup, len(graphs))
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_install_is_idempotent_reversible_and_limited_to_full_attention_towers(qwen):
    visual = qwen.model.model.visual
    depth = len(visual.blocks)
    assert batch_vision_attention(qwen.model) == depth
    assert batch_vision_attention(qwen.model) == depth  # no second set of hooks
    assert len(visual._forward_pre_hooks) == 1
    unbatch_vision_attention(qwen.model)
    assert "forward" not in visual.blocks[0].attn.__dict__ and not visual._forward_pre_hooks
    # Qwen2.5-VL's window attention and towers of other families are left as they are
    for family in ("qwen2_5_vl", "llava"):
        assert batch_vision_attention(build_tiny(family).model) == 0
    assert batch_vision_attention(build_tiny("qwen3_vl").model) == 2  # Qwen3-VL's tower is (its 2 blocks)


def test_peft_wrapped_model_is_patched_through_the_wrapper(qwen):
    from peft import LoraConfig, get_peft_model

    model = build_tiny("qwen2_vl", seed=0).model
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert batch_vision_attention(wrapped) == len(model.model.visual.blocks)


def test_repeated_blocks_are_the_outermost_layer_lists(qwen):
    blocks = repeated_blocks(qwen.model)
    text = qwen.model.model.language_model.layers
    vision = qwen.model.model.visual.blocks
    assert len(blocks) == len(text) + len(vision)
    assert {id(b) for b in blocks} == {id(b) for b in [*text, *vision]}


def _noise_image(seed):
    """A 32x32 image of random pixels (a flat colour makes every patch alike, and attention blind to
    position: a wrong rotary embedding would go unnoticed)."""
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy())


def _collated(backbone):
    images = [_noise_image(0), None, _noise_image(1), None]
    return Collator(backbone, max_text_tokens=64, image_max_pixels=4096)(SIDES, images)


@pytest.mark.parametrize("family, scope", [("qwen2_vl", "blocks"), ("qwen2_vl", "region"), ("qwen3_vl", "region")])
def test_compiled_and_batched_embedder_gives_eager_loss_and_gradients(family, scope):
    """The whole fast path (batched vision attention + every repeated block compiled, or the language
    model as one region and the vision blocks one by one) on a full fine-tuning step: the loss and
    every parameter's gradient of the eager step, in float32 (Qwen3-VL's region also takes the
    deepstack features); the region compiles without a graph break."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    results = []
    for fast in (False, True):
        backbone = build_tiny(family, seed=0)
        for p in backbone.model.parameters():
            p.requires_grad_(True)
        if fast:
            assert batch_vision_attention(backbone.model) > 0
            if scope == "blocks":
                assert compile_blocks(backbone.model, backend="aot_eager") == len(repeated_blocks(backbone.model))
            else:
                lm, vision = language_model(backbone.model), backbone.model.model.visual
                assert compile_language_model(backbone.model, backend="aot_eager") == len(vision.blocks)
                compiled = {m for m in backbone.model.modules() if m._compiled_call_impl is not None}
                assert compiled == {lm, *vision.blocks}  # the decoder layers only inside the region
        embedder = Embedder(backbone).train()
        batch = _collated(backbone)
        q, t = embedder(batch), embedder({k: v for k, v in batch.items()})
        loss = info_nce(q, t.roll(1, dims=0), temperature=0.05)
        loss.backward()
        with torch.no_grad():  # the vision tower's own output (its share of the embedding is small here)
            vision = _vision(backbone.model.model.visual, batch["pixel_values"], batch["image_grid_thw"])
        results.append((loss.detach(), vision, {n: p.grad for n, p in backbone.model.named_parameters()
                                                if p.grad is not None}))
    torch._dynamo.reset()
    if scope == "region":  # Qwen3-VL's deepstack writes too (scatter_deepstack)
        assert not any(counters["graph_break"].values()), dict(counters["graph_break"])
    (loss_ref, vision_ref, g_ref), (loss_fast, vision_fast, g_fast) = results
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vision_fast, vision_ref, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_ref.keys() and any("visual" in n for n in g_ref)
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def _lora_embedder(family="qwen2_vl", dropout=0.1):
    from peft import LoraConfig, get_peft_model

    backbone = build_tiny(family, seed=0)
    model = get_peft_model(backbone.model, LoraConfig(r=4, lora_dropout=dropout, target_modules=backbone.lora_targets))
    return backbone, model, Embedder(backbone).train()


def _image_chunks(backbone, n_chunks=2, size=2):
    collate = Collator(backbone, max_text_tokens=64, image_max_pixels=4096)
    queries = [collate([SIDES[0]] * size, [_noise_image(10 * c + i) for i in range(size)]) for c in range(n_chunks)]
    targets = [collate([SIDES[1], SIDES[3]][:size], [None] * size) for _ in range(n_chunks)]
    return queries, targets


def _video_chunks(backbone, n_chunks=2):
    """Chunks of one image row and one video row (2 frames) each: both feature calls per chunk."""
    collate = Collator(backbone, max_text_tokens=64, image_max_pixels=4096)
    video_side = {"raw": "<|video_1|>\nDescribe the video.", "image": None, "video": [{}, {}]}
    queries = [collate([SIDES[0], video_side], [_noise_image(10 * c), [_noise_image(10 * c + f) for f in (1, 2)]])
               for c in range(n_chunks)]
    targets = [collate([SIDES[1], SIDES[3]], [None, None]) for _ in range(n_chunks)]
    return queries, targets


@pytest.mark.parametrize("chunks, tower_calls", [(_image_chunks, (4, 2)), (_video_chunks, (8, 4))])
def test_gradcache_reuses_frozen_image_features_with_the_same_gradients(chunks, tower_calls):
    """LoRA on the language model (dropout on): GradCache with the image (and video) features of its
    no-grad pass replayed gives bit-identical LoRA gradients and runs the vision tower once per chunk
    and kind of input."""
    from functools import partial

    from trainer.model.acceleration import frozen_image_features
    from trainer.train.gradcache import gradcache_step

    results = []
    for reuse in (False, True):
        backbone, model, embedder = _lora_embedder()
        queries, targets = chunks(backbone)
        if chunks is _video_chunks:
            assert all("pixel_values_videos" in q and "pixel_values" in q for q in queries)
        calls = []
        model.get_base_model().model.visual.register_forward_hook(lambda *a: calls.append(1))
        features = frozen_image_features(model) if reuse else None
        assert (features is not None) == reuse
        torch.manual_seed(5)
        loss = gradcache_step(embedder, queries, targets, partial(info_nce, temperature=0.05), features=features)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss, grads, len(calls)))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert (calls_a, calls_b) == tower_calls  # each tower call of the 2 chunks: twice without reuse, once with
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    assert any(float(g.abs().sum()) > 0 for g in grads_a.values())


def test_image_features_are_not_reused_when_the_vision_path_trains_or_draws_random_numbers():
    from trainer.model.acceleration import frozen_image_features

    full = build_tiny("qwen2_vl", seed=0)
    for p in full.model.parameters():
        p.requires_grad_(True)
    assert frozen_image_features(full.model) is None  # full fine-tuning trains the vision tower
    _, llava, _ = _lora_embedder("llava")
    assert frozen_image_features(llava) is not None  # vision tower + projector frozen
    _, noisy, _ = _lora_embedder("llava")
    noisy.get_base_model().model.vision_tower.encoder.layers[0].dropout = torch.nn.Dropout(0.1)
    assert frozen_image_features(noisy) is None
    _, functional, _ = _lora_embedder("llava")  # CLIP applies attention dropout as a function
    functional.get_base_model().model.vision_tower.config.attention_dropout = 0.1
    assert frozen_image_features(functional) is None


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "smolvlm"])
def test_trains_vision_tells_ddp_when_text_only_batches_leave_trained_parameters_unused(family):
    """DDP without find_unused_parameters fails on the step after a text-only chunk when LoRA reaches
    the vision tower (e.g. lora_targets all-linear): the trainer asks `trains_vision`."""
    from peft import LoraConfig, get_peft_model

    from trainer.model.acceleration import trains_vision

    _, language_only, _ = _lora_embedder(family)
    assert not trains_vision(language_only)
    everywhere = get_peft_model(build_tiny(family, seed=0).model, LoraConfig(r=4, target_modules="all-linear"))
    assert trains_vision(everywhere)
    assert trains_vision(torch.nn.Linear(2, 2))  # unknown layout: assume it may


def test_image_feature_replay_refuses_other_chunks():
    from trainer.model.acceleration import frozen_image_features

    backbone, model, embedder = _lora_embedder(dropout=0.0)
    queries, _ = _image_chunks(backbone, n_chunks=1)
    other, _ = _image_chunks(backbone, n_chunks=1, size=1)
    features = frozen_image_features(model)
    with torch.no_grad(), features.record():
        embedder(queries[0])
    with pytest.raises(RuntimeError, match="same order"), features.replay():
        embedder(other[0])
    with torch.no_grad(), features.record():
        embedder(queries[0])
    with pytest.raises(RuntimeError, match="used 0 of 1"), features.replay():
        pass


def test_scatter_deepstack_gives_transformers_sums_and_leaves_other_models_alone():
    """Qwen3-VL's deepstack features written by a fixed-shape scatter: the embeddings of the stock
    boolean-mask write, bit for bit (every other position adds an exact 0)."""
    from trainer.model.acceleration import scatter_deepstack

    backbone = build_tiny("qwen3_vl", seed=0)
    batch = _collated(backbone)
    embedder = Embedder(backbone).eval()
    with torch.no_grad():
        stock = embedder(batch)
        assert scatter_deepstack(backbone.model)
        assert torch.equal(embedder(batch), stock)
    assert not scatter_deepstack(build_tiny("qwen2_vl").model)


def test_image_feature_replay_records_only_the_outermost_of_nested_calls():
    """Qwen3-VL's `get_video_features` calls its `get_image_features`: the pair is one record, and
    its replay runs neither."""
    from trainer.model.acceleration import ImageFeatureCache

    class Inner(torch.nn.Module):
        calls = 0

        def get_image_features(self, pixel_values):
            Inner.calls += 1
            return pixel_values * 2

        def get_video_features(self, pixel_values):
            return self.get_image_features(pixel_values) + 1

    inner = Inner()
    cache = ImageFeatureCache(inner)
    video, image = torch.ones(3, 2), torch.zeros(2, 2)
    with cache.record():
        recorded = [inner.get_video_features(video), inner.get_image_features(image)]
    assert [key[0] for key, _ in cache.records] == ["get_video_features", "get_image_features"]
    with cache.replay():
        replayed = [inner.get_video_features(video), inner.get_image_features(image)]
    assert Inner.calls == 2 and all(a is b for a, b in zip(replayed, recorded))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava_next", "idefics3", "paligemma"])
def test_language_model_is_the_decoder_stack_of_every_vlm_family(family):
    backbone = build_tiny(family, seed=0)
    lm = language_model(backbone.model)
    layers = [m for _, blocks in acceleration.repeated_block_lists(backbone.model) for m in blocks
              if any(m is x for x in lm.modules())]
    assert len(layers) == backbone.model.config.get_text_config().num_hidden_layers


def test_a_dual_encoder_has_no_language_model_region():
    backbone = build_tiny("clip", seed=0)
    assert language_model(backbone.model) is None
    with pytest.raises(ValueError, match="no language model to compile as one region.*compile: blocks"):
        compile_language_model(backbone.model, backend="aot_eager")


@pytest.mark.slow
def test_cuda_graph_region_under_inductor_gives_eager_lora_gradients_across_shapes():
    """The trainer's `compile: cuda-graphs` path with inductor itself (mode reduce-overhead; on a CPU
    no graph is recorded, the compiled code and the step marks are the same): a LoRA step on two
    batches of different lengths, each twice, gives the eager loss and LoRA gradients."""
    from peft import LoraConfig, get_peft_model

    torch._dynamo.reset()
    batches = None
    results = {}
    for region in (False, True):
        backbone = build_tiny("qwen2_vl", seed=0)
        model = get_peft_model(backbone.model, LoraConfig(r=4, lora_dropout=0.0, target_modules=backbone.lora_targets))
        if region:
            compile_language_model(model, cuda_graphs=True)
        embedder = Embedder(backbone).train()
        collate = Collator(backbone, max_text_tokens=64, image_max_pixels=4096, pad_to_multiple_of=8)
        if batches is None:
            batches = [(collate([SIDES[0]] * 2, [_noise_image(i), _noise_image(i + 1)]),
                        collate([[SIDES[1], SIDES[3]], [SIDES[3], SIDES[3]]][i], [None] * 2)) for i in range(2)]
            assert len({b[1]["input_ids"].shape for b in batches}) == 2  # the targets differ in length
        runs = []
        for queries, targets in batches + batches:
            torch.compiler.cudagraph_mark_step_begin()
            model.zero_grad(set_to_none=True)
            loss = info_nce(embedder(queries), embedder(targets), temperature=0.05)
            loss.backward()
            runs.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        results[region] = runs
    torch._dynamo.reset()
    for (loss, grads), (loss_ref, grads_ref) in zip(results[True], results[False]):
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_language_model_region_compiles_twice_then_serves_every_padded_length():
    """`compile_region` leaves torch's automatic dynamic shapes on: the first length compiles a static
    graph, the second one shape-generic graph, and every later length (longer, shorter, past all
    earlier ones) reuses it. With static shapes each padded length of a real run would compile the
    whole decoder stack again (about 3 minutes each for the 2B model on an H200, RESULTS.md run 6)."""
    from peft import LoraConfig, get_peft_model

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    backbone = build_tiny("qwen2_vl", seed=0)
    model = get_peft_model(backbone.model, LoraConfig(r=4, lora_dropout=0.0, target_modules=backbone.lora_targets))
    compile_language_model(model, backend=counting_backend)
    embedder = Embedder(backbone).train()
    collate = Collator(backbone, max_text_tokens=256, pad_to_multiple_of=8)
    words = "a red circle on a blue square next to a green triangle under the yellow sun ".split()
    lengths, counts = [], []
    try:
        for n in (2, 6, 14, 27, 3, 44, 60):
            texts = [side(" ".join(words * 4)[: 4 * n] + "\n"), side("a red circle\n")] * 2
            batch = collate(texts, [None] * 4)
            info_nce(embedder(batch), embedder(batch), temperature=0.05).backward()
            lengths.append(batch["input_ids"].shape[1])
            counts.append(len(graphs))
    finally:
        torch._dynamo.reset()
    assert len(set(lengths)) == 6 and lengths[4] == lengths[0]  # six padded lengths, the first one again
    assert counts[:2] == [1, 2] and counts[-1] == 2, (lengths, counts)
