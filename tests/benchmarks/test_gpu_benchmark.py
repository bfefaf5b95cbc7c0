"""benchmarks/gpu.py: its --tiny run end to end on CPU (slow), and the pieces that decide what its
figures mean (ratios, correctness comparison, input shapes). Batched vision attention and compiled
blocks themselves are tested in test_acceleration.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.scripts import script_module

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    with script_module("benchmarks/gpu.py", "gpu_bench_under_test") as module:
        yield module


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
        dict(case="D+fast+feat/64", batch=1024, chunk=64, unit="pairs/s", status="ok", throughput=160.0),
        dict(case="E:plain", batch=128, unit="queries/s", status="ok", throughput=140.0),
        dict(case="E:ours", batch=128, unit="queries/s", status="ok", throughput=210.0),
        dict(case="E:vision", batch=128, unit="images/s", status="ok", throughput=300.0),
        dict(case="E:vision+bva", batch=128, unit="images/s", status="ok", throughput=600.0),
        dict(case="E:vision-mixed", batch=128, unit="images/s", status="ok", throughput=250.0),
        dict(case="E:vision-mixed+bva", batch=128, unit="images/s", status="ok", throughput=375.0),
        dict(case="E:lm", batch=128, unit="queries/s", status="ok", throughput=400.0),
    ]
    got = {(r["case"], r["batch"], r["vs"]): r["ratio"] for r in gpu.ratios(rows)}
    assert got[("C", 32, "A@32")] == 4.0 and got[("C", 32, "B@32")] == 2.5
    assert got[("D", 1024, "A@32")] == 2.4 and got[("D", 1024, "B@32")] == 1.5  # against the chunk's batch
    assert got[("D+fast+feat/64", 1024, "B@32")] == 2.0  # no plain row at 64: the smallest batch's
    assert got[("E:ours", 128, "E:plain")] == 1.5
    assert got[("E:vision+bva", 128, "E:vision")] == 2.0
    assert got[("E:vision-mixed+bva", 128, "E:vision-mixed")] == 1.5
    assert not any(k[0] == "C" and k[1] == 128 for k in got)  # A@128 was OOM, B@128 absent: no ratio
    assert not any(k[0] == "E:lm" for k in got)


def test_mixed_grid_alternates_two_sizes_that_the_merge_accepts(gpu):
    grid = gpu.mixed_grid(4, gpu.FULL)  # 24 x 24 patches and 24 x 18
    assert grid == [[1, 24, 24], [1, 24, 18]] * 2
    assert gpu.mixed_grid(4, gpu.replace(gpu.FULL, image_side=28)) is None  # 2 x 2: no smaller even size


def test_compare_flags_divergence_nan_and_shape(gpu):
    ref = torch.randn(4, 8)
    assert gpu.compare("same", ref.clone(), ref, 1e-4)["passed"]
    assert not gpu.compare("off", ref + 0.1 * ref.norm() / math.sqrt(ref.numel()), ref, 1e-2)["passed"]
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert not gpu.compare("nan", nan, ref, 1.0)["passed"]
    assert not gpu.compare("shape", ref[:3], ref, 1.0)["passed"]


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--ckpt", "--compile", "--paired", "3",
                                                 "--gc-freeze", "--lm-region", "--gc-feat-chunks", "4,8", "--profile"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # a hang guard, not a speed limit
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    checks = {c["check"]: c for c in data["checks"]}
    assert len(checks) >= 10 and all(c["passed"] for c in checks.values()), checks
    assert {"C vs B: loss", "C vs B: LoRA gradients", "D vs chunked C: LoRA gradients",
            "C+fast vs C: loss (batch 4)", "C+fast vs C: LoRA gradients (batch 4)",
            "no input-require-grads hook left after the checks", "D+feat vs D: LoRA gradients",
            "C+fast+pos vs without positions: loss (batch 4)"} <= set(checks)
    assert any(c.startswith("E: padded vision attention vs loop on") for c in checks)
    rows = {r["case"]: r for r in data["rows"]}
    for case in ("A", "B", "C", "C+bva", "C+ckpt", "D", "E:plain", "E:ours", "E:ours+bva", "E:vision", "E:lm",
                 "E:vision-mixed", "E:vision-mixed+bva", "C+fast", "C+fast+pos", "D+fast", "D+fast+feat",
                 "D+fast+feat/8"):
        assert rows[case]["status"] == "ok", rows[case]
        assert rows[case]["throughput"] > 0 and len(rows[case]["steps_s"]) >= 1
    assert rows["D"]["batch"] == 16 and rows["D"]["chunk"] == 4
    assert rows["D+fast+feat/8"]["batch"] == 16 and rows["D+fast+feat/8"]["chunk"] == 8
    # the plain and our steps compute the same loss on the same batch when the dropout is 0
    assert rows["B"]["loss"] == pytest.approx(rows["C"]["loss"], rel=1e-4)
    vs = {(r["case"], r["vs"]) for r in data["ratios"]}
    assert {("C", "A@4"), ("C", "B@4"), ("D", "B@4"), ("E:ours", "E:plain")} <= vs
    assert data["meta"]["tiny"] and data["meta"]["mm_token_type_ids"] in (True, False)
    assert "case" in proc.stdout and "checks: " in proc.stdout
    assert ":warmup" not in proc.stdout  # warm-up passes are not results
    profile = (tmp_path / "profile_C_fast.txt").read_text()
    assert profile.startswith("profile C+fast: batch 4, 3 steps") and "Self CPU" in profile
    kept = data["meta"]["profile_C+fast"]  # the leading operators are kept in the JSON too
    assert kept["head"] == profile.splitlines()[0] and 1 <= len(kept["top"]) <= 30
    assert all(t["ms_per_step"] >= 0 and t["calls_per_step"] > 0 for t in kept["top"])
    assert kept["top_host"] and all(t["calls_per_step"] > 0 for t in kept["top_host"])
    # paired rounds: B, C+fast and C+fast+pos one step each per round, ratios per round against B
    paired = {c: rows[f"{c}:paired"] for c in ("B", "C+fast", "C+fast+pos")}
    assert all(r["status"] == "ok" and len(r["steps_s"]) == 3 for r in paired.values()), paired
    for case in ("C+fast", "C+fast+pos"):
        r = paired[case]
        low, high = r["paired_ratio_range"]
        assert low <= r["paired_ratio"] <= high
        per_round = sorted(b / t for b, t in zip(paired["B"]["steps_s"], r["steps_s"]))
        assert r["paired_ratio"] == pytest.approx(per_round[1], rel=0.02)  # the median of 3 rounds
        assert (case + ":paired", "B:paired@4") in vs
        assert len(r["host_s"]) == 3 and all(0 < h <= t for h, t in zip(r["host_s"], r["steps_s"]))
    # --gc-freeze: the same rounds again after gc.freeze(), each against B in its own rounds
    frozen = {c: rows[f"{c}:paired+frozen"] for c in ("B", "C+fast", "C+fast+pos")}
    assert all(r["status"] == "ok" and len(r["steps_s"]) == 3 for r in frozen.values()), frozen
    assert frozen["B"]["steps_s"] != paired["B"]["steps_s"]  # measured anew, not copied
    assert {("C+fast:paired+frozen", "B:paired+frozen@4"), ("C+fast+pos:paired+frozen", "B:paired+frozen@4")} <= vs
    # --lm-region: the language model compiled as one region, checked against eager, paired with B
    for what in ("batch 4", "batch 4, another draw", "batch 4, another draw, after the rounds"):
        assert checks[f"C+lm+pos vs C: loss ({what})"]["passed"], what
        assert checks[f"C+lm+pos vs C: LoRA gradients ({what})"]["passed"], what
    assert data["meta"]["C+lm+pos_cudagraph_skips"] == 0
    region = {c: rows[f"{c}:paired-lm"] for c in ("B", "C+lm+pos")}
    assert all(r["status"] == "ok" and len(r["steps_s"]) == 3 for r in region.values()), region
    assert ("C+lm+pos:paired-lm", "B:paired-lm@4") in vs and data["meta"]["C+lm+pos_first_step_s"] > 0
    assert "C+lm+graphs+pos:paired-lm+graphs" not in rows  # CUDA graphs only on CUDA
    assert all("gpu_state" in r for r in data["rows"] if not r["case"].endswith(":warmup") and r["status"] == "ok")
    assert rows["B:end"]["status"] == "ok" and ("B:end", "B@4") in vs  # the baseline again, for its drift
    # every timed step records the garbage collector's pause within it (never longer than the step)
    timed = [r for r in data["rows"] if r["status"] == "ok" and "steps_s" in r]
    assert timed and all(len(r["gc_s"]) == len(r["steps_s"]) for r in timed)
    assert all(0 <= g <= t for r in timed for g, t in zip(r["gc_s"], r["steps_s"]))


def test_gc_pauses_are_counted_per_step(gpu):
    import gc

    pauses = gpu.GcPauses()
    with pauses:
        gc.collect()  # a full collection inside the window
        first = pauses.step()
        assert pauses.step() == 0.0  # nothing since the last call
    assert first > 0 and pauses.full == 1
    gc.collect()  # after the window: not seen
    assert pauses.step() == 0.0 and pauses.full == 1 and pauses._callback not in gc.callbacks


def test_language_model_is_found_under_peft_or_none(gpu):
    model = gpu.add_lora(gpu.build_model(gpu.TINY, torch.device("cpu"), torch.float32), gpu.Lora())
    lm = gpu.language_model(model)
    assert type(lm).__name__ == "Qwen2VLTextModel" and len(lm.layers) == gpu.TINY.text["num_hidden_layers"]
    assert gpu.language_model(torch.nn.Linear(2, 2)) is None  # the trainer's, which compile_language_model refuses


def test_bench_fits_a_case_only_within_its_budget(gpu, tmp_path):
    bench = gpu.Bench(torch.device("cpu"), tmp_path / "b.json", {}, budget_s=60.0)
    assert bench.fits(0.0) and bench.fits(50.0) and not bench.fits(61.0)
    bench.start -= 30.0  # half the budget used
    assert bench.fits(29.0) and not bench.fits(31.0) and not bench.over_budget()


def test_lm_region_that_would_not_fit_leaves_a_skipped_row(gpu, tmp_path):
    bench = gpu.Bench(torch.device("cpu"), tmp_path / "b.json", {}, budget_s=60.0)
    gpu.lm_region_case(bench, None, None, {}, gpu.TINY, torch.device("cpu"), torch.float32, True, temperature=0.02,
                       rounds=3, backend="inductor", graphs=False, expect_s=120.0)
    assert [(r["case"], r["status"]) for r in bench.rows] == [("C+lm+pos:paired-lm", "skipped (time budget)")]


def test_kernel_seconds_counts_each_kernel_once(gpu):
    """An operator's row carries its kernels' device time as its own too: the busy fraction must sum
    the device-side events alone, as torch's own table total does (not the 2x the old header had)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(device_type, us, **kw):
        return SimpleNamespace(device_type=device_type, self_device_time_total=us, **kw)

    events = [event(DeviceType.CPU, 300.0),  # aten::mm, holding its kernels' 300 us
              event(DeviceType.CUDA, 200.0), event(DeviceType.CUDA, 100.0),  # the two kernels
              event(DeviceType.CPU, 0.0),
              event(DeviceType.CUDA, 50.0, is_user_annotation=True)]  # a record_function range on the GPU track
    assert gpu.kernel_seconds(events) == pytest.approx(300e-6)
    assert gpu.kernel_seconds([event(DeviceType.CPU, 300.0)]) == 0.0
    assert len(gpu.device_events(events)) == 2


@pytest.mark.parametrize("argv, message", [
    (["--lm-region"], "--lm-region needs --compile"),
    (["--paired", "3"], "--paired needs --compile"),
    (["--compile", "--gc-freeze"], "--gc-freeze needs --paired"),
    (["--compile", "--cpp-wrapper", "--backend", "aot_eager"], "--cpp-wrapper needs the inductor backend"),
])
def test_options_that_would_be_ignored_are_refused_up_front(gpu, argv, message, capsys):
    with pytest.raises(SystemExit):
        gpu.parse_args(argv)
    assert message in capsys.readouterr().err
