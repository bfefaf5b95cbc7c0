"""benchmarks/flops.py: the per-pair FLOPs solved from shallow models are the deep model's count."""

from __future__ import annotations

import pytest

from tests.support.scripts import script_module


@pytest.fixture(scope="module")
def flops():
    with script_module("benchmarks/flops.py", "flops_under_test") as module:
        yield module


def test_solved_terms_give_the_direct_count_of_a_deeper_model(flops):
    g = flops._gpu_bench()
    sizes = g.TINY
    counts = flops.per_pair(sizes)
    layers, blocks = 3, 4  # not among the shallow models the terms were solved from
    direct = flops.step_flops(sizes, layers, blocks)
    for case in ("B", "C"):
        c = counts[case]
        per_layer = c["language_model"] / sizes.text["num_hidden_layers"]
        per_block = c["vision"] / sizes.vision["depth"]
        assert c["rest"] + layers * per_layer + blocks * per_block == pytest.approx(direct[case] / 2, rel=1e-12)
        assert c["total"] == pytest.approx(c["rest"] + c["language_model"] + c["vision"])
        assert per_layer > 0 and per_block > 0
    # B differs from C by the LM head's logits at every position of queries and targets (forward only:
    # the loss reads one hidden state per row, nothing flows back through the logits)
    tokens = sizes.image_tokens + sizes.query_text + sizes.target_text
    head = 2 * tokens * sizes.text["hidden_size"] * sizes.text["vocab_size"]
    assert counts["B"]["total"] - counts["C"]["total"] == pytest.approx(head, rel=1e-9)
    assert counts["B"]["language_model"] == counts["C"]["language_model"]


def test_a_vision_block_counts_its_projections_and_its_attention(flops):
    """One vision block per image, forward only (the tower is frozen): qkv, proj and the MLP at
    2 FLOPs per multiply-add on every patch, plus attention's two products over the image's patches
    (QK^T and AV: 4 * patches^2 * width). Attention was once missed: the counter sees no products in
    the CPU kernels of scaled_dot_product_attention."""
    g = flops._gpu_bench()
    sizes = g.TINY
    width, ratio = sizes.vision["embed_dim"], sizes.vision["mlp_ratio"]
    patches = (sizes.image_side // sizes.vision["patch_size"]) ** 2
    per_block = flops.per_pair(sizes)["C"]["vision"] / sizes.vision["depth"]
    linear = 2 * patches * (4 * width * width + 2 * ratio * width * width)
    assert per_block == pytest.approx(linear + 4 * patches * patches * width, rel=1e-9)
