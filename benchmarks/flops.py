"""Floating-point work of one training step of benchmarks/gpu.py's model, counted, not estimated.

    python benchmarks/flops.py            # the Qwen2-VL-2B shape of the GPU benchmark (CPU, ~1 minute)
    python benchmarks/flops.py --tiny     # the tiny shape (tests)

`torch.utils.flop_counter.FlopCounterMode` counts the matrix products (attention's included: the
model runs transformers' eager attention, whose products the counter sees) of a whole
contrastive step (forward, InfoNCE, backward) of case B (the plain transformers + peft step, with its
LM-head logits) and case C (our Embedder), at the benchmark's widths and inputs (queries of one
image plus text, text targets, LoRA r=8) on the CPU in float32. Running all 28 decoder layers and 32
vision blocks on a CPU would take long, so the model is built at three small depths (1 layer and 1
block, 2 and 1, 1 and 2): every layer of a stack does the same work on the same shapes, so the step
is `rest + layers * per_layer + blocks * per_block` exactly, and the three counts give the three
terms. The result, per pair, divides a measured step's pairs/s into the work the card did per
second (what the GPU benchmark's throughput means against the card's matrix rate).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


def _gpu_bench():
    """benchmarks/gpu.py as a module (its model, inputs and steps are what is counted)."""
    name = "gpu_bench_for_flops"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "gpu.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def step_flops(sizes, layers: int, blocks: int, batch: int = 2) -> dict[str, int]:
    """FLOPs of one step of B and of C at `batch` pairs, with `layers` decoder layers and `blocks`
    vision blocks (all widths as in `sizes`)."""
    g = _gpu_bench()
    sizes = replace(sizes, text={**sizes.text, "num_hidden_layers": layers},
                    vision={**sizes.vision, "depth": blocks})
    # eager attention: torch's FLOP counter has no formula for the CPU kernels behind
    # scaled_dot_product_attention and would count its matrix products as 0
    model = g.add_lora(g.build_model(sizes, torch.device("cpu"), torch.float32, attn="eager"),
                       g.Lora(rank=8, alpha=16, dropout=0.0, fp32_adapters=False))
    model.train()
    queries, targets = g.pair_batch(batch, sizes, "cpu", torch.float32, g.needs_mm_token_type_ids(model))
    out = {}
    for case, embed in (("B", partial(g.plain_embed, model)), ("C", g.our_embedder(model))):
        model.zero_grad(set_to_none=True)
        counter = FlopCounterMode(display=False)
        with counter:
            g.contrastive_step(embed, queries, targets, 0.02)
        out[case] = int(counter.get_total_flops())
    return out


def per_pair(sizes, batch: int = 2) -> dict[str, dict[str, float]]:
    """{case: {total, language_model, vision, rest}} FLOPs per pair at the full depths of `sizes`:
    solved from three shallow counts (see the module docstring)."""
    layers, blocks = sizes.text["num_hidden_layers"], sizes.vision["depth"]
    c11, c21, c12 = (step_flops(sizes, l, b, batch) for l, b in ((1, 1), (2, 1), (1, 2)))
    out = {}
    for case in ("B", "C"):
        per_layer, per_block = c21[case] - c11[case], c12[case] - c11[case]
        rest = c11[case] - per_layer - per_block
        out[case] = {"language_model": layers * per_layer / batch, "vision": blocks * per_block / batch,
                     "rest": rest / batch}
        out[case]["total"] = sum(out[case].values())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the GPU benchmark's tiny shape (tests)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    g = _gpu_bench()
    sizes = g.TINY if args.tiny else g.FULL
    counts = per_pair(sizes)
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    print(f"FLOPs per pair of one training step ({sizes.text['num_hidden_layers']} decoder layers, "
          f"{sizes.vision['depth']} vision blocks, {sizes.image_tokens} image + {sizes.query_text} text tokens "
          f"per query, {sizes.target_text} per target; forward + backward)")
    print(f"{'case':<6} {'total GFLOP':>12} {'language model':>15} {'vision':>10} {'rest':>10}")
    for case, c in counts.items():
        print(f"{case:<6} {c['total'] / 1e9:>12.5g} {c['language_model'] / 1e9:>15.5g} "
              f"{c['vision'] / 1e9:>10.5g} {c['rest'] / 1e9:>10.5g}")
    print("(B = plain step, its 'rest' holds the LM-head logits; C = our Embedder step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
