"""benchmarks/gpu.py: its --tiny run end to end on CPU (slow), and the pieces that decide what its
figures mean (ratios, correctness comparison, input shapes, batched vision attention)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_full_size_inputs_match_the_requirement(gpu):
    """336x336 at patch 14, merge 2 -> grid (1, 24, 24), 144 image tokens, patches of 3*2*14*14."""
    sizes = gpu.FULL
    gen = torch.Generator().manual_seed(0)
    q = gpu.make_queries(2, sizes, "cpu", torch.bfloat16, gen, mm_types=True)
    t = gpu.make_targets(2, sizes, "cpu", gen, mm_types=True)
    assert q["input_ids"].shape == (2, 144 + 30)
    assert q["image_grid_thw"].tolist() == [[1, 24, 24], [1, 24, 24]]
    assert q["pixel_values"].shape == (2 * 576, 1176) and q["pixel_values"].dtype == torch.bfloat16
    assert int((q["input_ids"] == 151655).sum(dim=1).min()) == 144
    assert int((q["input_ids"] == 151655).sum()) == 288  # no image token among the text tokens
    assert torch.equal(q["mm_token_type_ids"], (q["input_ids"] == 151655).int())
    assert t["input_ids"].shape == (2, 24) and int(t["mm_token_type_ids"].sum()) == 0
    assert int(t["input_ids"].max()) < 151643  # text ids stay below the special tokens


def test_ratios_pair_rows_with_the_right_baselines(gpu):
    rows = [
        dict(case="A", batch=32, unit="pairs/s", status="ok", throughput=50.0),
        dict(case="B", batch=32, unit="pairs/s", status="ok", throughput=80.0),
        dict(case="A", batch=128, unit="pairs/s", status="oom"),
        dict(case="C", batch=32, unit="pairs/s", status="ok", throughput=200.0),
        dict(case="C", batch=128, unit="pairs/s", status="ok", throughput=300.0),
        dict(case="D", batch=1024, chunk=32, unit="pairs/s", status="ok", throughput=120.0),
        dict(case="E:plain", batch=128, unit="queries/s", status="ok", throughput=140.0),
        dict(case="E:ours", batch=128, unit="queries/s", status="ok", throughput=210.0),
        dict(case="E:vision", batch=128, unit="images/s", status="ok", throughput=300.0),
        dict(case="E:vision+bva", batch=128, unit="images/s", status="ok", throughput=600.0),
        dict(case="E:lm", batch=128, unit="queries/s", status="ok", throughput=400.0),
    ]
    got = {(r["case"], r["batch"], r["vs"]): r["ratio"] for r in gpu.ratios(rows)}
    assert got[("C", 32, "A@32")] == 4.0 and got[("C", 32, "B@32")] == 2.5
    assert got[("D", 1024, "A@32")] == 2.4 and got[("D", 1024, "B@32")] == 1.5  # against the chunk's batch
    assert got[("E:ours", 128, "E:plain")] == 1.5
    assert got[("E:vision+bva", 128, "E:vision")] == 2.0
    assert not any(k[0] == "C" and k[1] == 128 for k in got)  # A@128 was OOM, B@128 absent: no ratio
    assert not any(k[0] == "E:lm" for k in got)


def test_compare_flags_divergence_nan_and_shape(gpu):
    ref = torch.randn(4, 8)
    assert gpu.compare("same", ref.clone(), ref, 1e-4)["passed"]
    assert not gpu.compare("off", ref + 0.1 * ref.norm() / math.sqrt(ref.numel()), ref, 1e-2)["passed"]
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert not gpu.compare("nan", nan, ref, 1.0)["passed"]
    assert not gpu.compare("shape", ref[:3], ref, 1.0)["passed"]


def test_batched_vision_attention_equals_loop_and_falls_back_for_unequal_images(gpu):
    torch.manual_seed(0)
    model = gpu.build_model(gpu.TINY, torch.device("cpu"), torch.float32)
    visual = model.model.visual
    gen = torch.Generator().manual_seed(1)
    equal = gpu.make_queries(3, gpu.TINY, "cpu", torch.float32, gen, mm_types=False)
    # two images of different sizes: 4x4 and 2x4 patches
    pv = torch.randn(16 + 8, gpu.TINY.patch_dim, generator=gen)
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        calls.append(q.shape[0])
        return sdpa(q, *args, **kwargs)

    with torch.no_grad():
        ref_eq = visual(equal["pixel_values"], grid_thw=equal["image_grid_thw"]).pooler_output
        ref_un = visual(pv, grid_thw=grid).pooler_output
        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            with gpu.batched_vision_attention(model):
                out_eq = visual(equal["pixel_values"], grid_thw=equal["image_grid_thw"]).pooler_output
                batched_calls = list(calls)
                out_un = visual(pv, grid_thw=grid).pooler_output
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
    assert batched_calls == [3] * gpu.TINY.vision["depth"]  # one call over the 3 images per layer
    assert gpu.rel_err(out_eq, ref_eq) < 1e-5
    assert gpu.rel_err(out_un, ref_un) < 1e-5
    cls = gpu._vision_attention_class(model)
    assert cls.forward.__name__ == "forward" and "batched" not in cls.forward.__qualname__  # restored


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--ckpt"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    checks = {c["check"]: c for c in data["checks"]}
    assert len(checks) >= 10 and all(c["passed"] for c in checks.values()), checks
    assert {"C vs B: loss", "C vs B: LoRA gradients", "D vs chunked C: LoRA gradients"} <= set(checks)
    rows = {r["case"]: r for r in data["rows"]}
    for case in ("A", "B", "C", "C+bva", "C+ckpt", "D", "E:plain", "E:ours", "E:ours+bva", "E:vision", "E:lm"):
        assert rows[case]["status"] == "ok", rows[case]
        assert rows[case]["throughput"] > 0 and len(rows[case]["steps_s"]) >= 1
    assert rows["D"]["batch"] == 16 and rows["D"]["chunk"] == 4
    # the plain and our steps compute the same loss on the same batch when the dropout is 0
    assert rows["B"]["loss"] == pytest.approx(rows["C"]["loss"], rel=1e-4)
    vs = {(r["case"], r["vs"]) for r in data["ratios"]}
    assert {("C", "A@4"), ("C", "B@4"), ("D", "B@4"), ("E:ours", "E:plain")} <= vs
    assert data["meta"]["tiny"] and data["meta"]["mm_token_type_ids"] in (True, False)
    assert "case" in proc.stdout and "checks: " in proc.stdout
