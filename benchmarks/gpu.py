"""GPU benchmark of the trainer step and the evaluation encoder against the plain transformers + peft path.

    python benchmarks/gpu.py --cases A,B,C,D,E          # the full-size run, on a CUDA device
    python benchmarks/gpu.py --tiny                     # tiny config on CPU in float32 (tests)

Model: Qwen2-VL-2B-shaped, random weights, built from a `Qwen2VLConfig` directly on the device (bf16,
sdpa; text hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936; vision depth
32, width 1280, 16 heads, patch 14, merge 2). LoRA r=8 on the language model's projections
(`trainer.backbone.families.LORA_TARGETS["qwen2_vl"]`); lora_B is drawn at random (seeded) instead of peft's
zeros so that adapters contribute and nothing is timed on zeros. Inputs are built as tensors on the
device: a query is one 336x336 image (grid (1, 24, 24) -> 144 `<|image_pad|>` tokens) followed by 30
text tokens; a target is 24 text tokens; no padding. Only the step is timed (inputs already on the
card, optimizer excluded): warm-up steps, then the median of `--steps` timed steps, each bracketed by
`torch.cuda.synchronize`; peak = `torch.cuda.max_memory_allocated` after a reset per case (weights
and the case's inputs included).

Cases (`--cases`):
  A  plain step, peft defaults (fp32 adapters, LoRA dropout 0.1): `model(**inputs,
     output_hidden_states=True)` -> hidden_states[-1] at the last token -> L2 norm -> info_nce -> backward.
  B  the same plain step with OUR LoRA settings (bf16 adapters, dropout 0): the fair baseline.
  C  our step: `trainer.model.embedder.Embedder` (inner model, last-token pooling, no LM-head logits) +
     info_nce + backward, bf16 adapters, dropout 0. Variants, each its own row:
       C+bva     batched vision attention: the vision tower's per-image attention loop replaced by
                 one sdpa call over all images when they have equal patch counts
                 (`trainer.model.acceleration`, what `train.batched_vision_attention` does; checked against
                 the loop before it is timed);
       C+ckpt    gradient checkpointing on (non-reentrant), `--ckpt`;
       C+fast    batched vision attention + `torch.compile` of each repeated block (decoder layers,
                 vision blocks: trainer.model.acceleration, what `train.compile` does), `--compile`, at
                 the first batch only and after E (compilation is the least certain part);
       C+fa2     flash_attention_2, only when `flash_attn` is importable;
       C+fast+pos  C+fast with the queries' M-RoPE positions precomputed on the CPU as the
                 trainer's Collator does (`trainer.model.positions`), so the model skips its per-row
                 `get_rope_index` and its ~8 device syncs per row; checked against C+fast's loss.
  D  GradCache (`trainer.train.gradcache.gradcache_step` over the Embedder): a global batch of
     `--gc-batch` (1024) pairs in chunks of `--gc-chunk` (32 or 64). With `--compile` also D+fast
     (batched vision attention + compiled blocks) and D+fast+feat (the same with the no-grad pass's
     image features reused, `trainer.model.acceleration.frozen_image_features`, and, with transformers 5,
     the queries' M-RoPE positions precomputed as the Collator does: what the trainer does),
     at each chunk size of `--gc-feat-chunks` (e.g. 32,64: larger chunks use the GPU better, at
     more memory; a chunk size without a plain-step row is compared with the smallest batch's).
  E  no-grad encoding of `--encode-batch` (128) queries with the base model (no adapters): plain
     (`model(**inputs, output_hidden_states=True)` under no_grad) vs ours (Embedder under
     inference_mode; and with batched vision attention), plus the vision tower alone and the
     language model alone (its inputs captured from one inner forward).

Before timing, the script checks on one small batch that C computes what B computes: the losses, the
embeddings and the LoRA gradients agree within the dtype's tolerance (same weights, adapters and
inputs), that GradCache gives the same loss, and that batched vision attention gives the same vision
output. A failed check is recorded in the JSON and printed; the run still times everything.

`--profile` (with `--compile`) writes `profile_C_fast.txt` next to the JSON: torch.profiler's operators of
three C+fast steps by device time, headed by the share of the wall time the device was busy (the
leading 30 operators also go into the JSON's meta). Under the profiler the host is slower, so compare
its device time with the unprofiled step time, not with its own wall time.

`--lm-region` (with `--compile`) compiles the language model as one region instead of layer by layer,
static shapes: on CUDA first with inductor's CUDA graphs (`mode="reduce-overhead"`, which blocks
compiled one by one cannot use), then without them if that fits in the budget; each is checked
against the eager step and timed in paired rounds with B (rows `C+lm+graphs+pos:paired-lm+graphs`,
`C+lm+pos:paired-lm`).

`--paired ROUNDS` (with `--compile`) times B, C+fast and C+fast+pos one step each in turn on one
batch, the order reversed every round, and reports each against B in the same round (rows
`<case>:paired`): the ratio the goal asks for, measured under the same conditions, where separate
cases minutes apart can differ by the card's state; B is timed once more at the end of the run
(`B:end`, its ratio to B shows the drift over the run, e.g. around the GradCache rows). Every row
also records the card's clocks, power, temperature and throttle reasons (`nvidia-smi`) right after
it ran, and for every timed step the Python garbage collector's pause within it (`gc_s`; `gc_full`
counts full collections: `GcPauses`). `--gc-freeze` times the paired rounds once more after
`gc.freeze()` (rows `<case>:paired+frozen`), the remedy if those pauses show.

Results: a table (pairs/s or queries/s, step s, peak GiB, ratio vs A and vs B at the same batch;
D against A and B at the chunk's batch) printed last, and JSON written to $OUT/gpu_bench.json when
OUT is set (the device tool brings back files under $OUT), else benchmarks/_work/gpu_bench.json. The
JSON is rewritten after every case, so a run cut short keeps what it measured. `--budget-min`
(default 8) skips the remaining cases once the run has used that much wall time.

Imports only torch, transformers, peft and project modules that need neither webdataset nor dvc
(trainer.model.acceleration, trainer.backbone.families, trainer.model.embedder, trainer.train.losses, trainer.train.gradcache,
trainer.model.pooling, trainer.model.positions), so it runs with the device machine's stock Python.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.model.acceleration import (batch_vision_attention, compile_blocks, compile_region,  # noqa: E402
                                  frozen_image_features, language_model, unbatch_vision_attention)
from trainer.backbone.families import LORA_TARGETS  # noqa: E402
from trainer.train.gradcache import gradcache_step  # noqa: E402
from trainer.train.losses import info_nce  # noqa: E402
from trainer.model.embedder import Embedder, unwrap  # noqa: E402
from trainer.model.pooling import last_token_pool  # noqa: E402
from trainer.model.positions import mrope_position_ids  # noqa: E402

log = logging.getLogger("gpu_bench")

GIB = 1024 ** 3
ALL_CASES = ("A", "B", "C", "D", "E")


# --------------------------------------------------------------------------------------------------
# sizes

@dataclass(frozen=True)
class Sizes:
    """Model and input shapes of one run."""

    text: dict
    vision: dict
    special: dict            # image/video/vision_start/vision_end token ids
    image_side: int          # square images of image_side x image_side pixels
    query_text: int          # text tokens after the image tokens of a query
    target_text: int         # text tokens of a target
    batches: tuple           # per-step batches of the A/B/C cases
    check_batch: int         # batch of the correctness check
    gc_batch: int            # D: global batch
    gc_chunk: int            # D: chunk size
    encode_batch: int        # E: queries per encoding call
    warmup: int
    steps: int
    gc_steps: int

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_side // self.vision["patch_size"]

    @property
    def patches(self) -> int:
        return self.grid * self.grid

    @property
    def image_tokens(self) -> int:
        return self.patches // self.vision["spatial_merge_size"] ** 2

    @property
    def patch_dim(self) -> int:
        v = self.vision
        return v.get("in_channels", 3) * v["temporal_patch_size"] * v["patch_size"] ** 2


FULL = Sizes(
    text=dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
              intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
              tie_word_embeddings=True,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536, in_channels=3,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    special=dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                 vision_end_token_id=151653, text_high=151643),
    image_side=336, query_text=30, target_text=24, batches=(32, 128), check_batch=4,
    gc_batch=1024, gc_chunk=32, encode_batch=128, warmup=2, steps=8, gc_steps=2,
)

TINY = Sizes(
    text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              intermediate_size=128, vocab_size=512, max_position_embeddings=1024, rms_norm_eps=1e-6,
              tie_word_embeddings=True, bos_token_id=504, eos_token_id=505,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}),
    vision=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, hidden_size=64, in_channels=3,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    special=dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503,
                 text_high=500),
    image_side=56, query_text=6, target_text=5, batches=(4,), check_batch=4,
    gc_batch=16, gc_chunk=4, encode_batch=8, warmup=1, steps=2, gc_steps=1,
)


@dataclass(frozen=True)
class Lora:
    """LoRA settings of one case."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    fp32_adapters: bool = False   # peft's default autocast_adapter_dtype=True upcasts bf16 adapters

    def label(self) -> str:
        return f"r={self.rank} dropout={self.dropout} adapters={'fp32' if self.fp32_adapters else 'model dtype'}"


# --------------------------------------------------------------------------------------------------
# model, adapters, inputs

def build_model(sizes: Sizes, device: torch.device, dtype: torch.dtype, attn: str = "sdpa", seed: int = 0):
    """A random Qwen2-VL (ForConditionalGeneration) of `sizes`, created directly on `device` in `dtype`."""
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig
    sp = {k: v for k, v in sizes.special.items() if k != "text_high"}
    text = dict(model_type="qwen2_vl_text", **sizes.text)
    cfg = Qwen2VLConfig(text_config=text, vision_config=dict(sizes.vision), tie_word_embeddings=True, **sp)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype, attn_implementation=attn)
    wrong = {str(p.dtype) for p in model.parameters() if p.dtype != dtype}
    if wrong or next(model.parameters()).device.type != device.type:
        raise RuntimeError(f"from_config gave parameters in {wrong or 'the right dtype'} on "
                           f"{next(model.parameters()).device}; wanted {dtype} on {device}")
    model.eval()  # (not model.to(dtype): that would also cast the float32 rotary inv_freq buffers)
    return model


def add_lora(model, lora: Lora, seed: int = 1):
    """`model` wrapped by peft with `lora` on the language model's projections; lora_B drawn at random."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=LORA_TARGETS["qwen2_vl"])
    peft_model = get_peft_model(model, cfg, autocast_adapter_dtype=lora.fp32_adapters)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    n_lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if n_lora == 0:
        raise RuntimeError("LoRA found no target module: LORA_TARGETS['qwen2_vl'] matched nothing")
    return peft_model


def needs_mm_token_type_ids(model) -> bool:
    """True when the inner model's forward takes `mm_token_type_ids` (transformers >= 5.2x requires it
    whenever images are passed)."""
    return "mm_token_type_ids" in inspect.signature(unwrap(model).model.forward).parameters


def make_queries(n: int, sizes: Sizes, device, dtype, gen: torch.Generator, mm_types: bool) -> dict:
    """n queries: one image (image tokens first, as MMEB's `<|image_1|>\\n...` renders) + text tokens."""
    sp = sizes.special
    length = sizes.image_tokens + sizes.query_text
    ids = torch.randint(0, sp["text_high"], (n, length), generator=gen, device=device)
    ids[:, :sizes.image_tokens] = sp["image_token_id"]
    out = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(n * sizes.patches, sizes.patch_dim, generator=gen, device=device).to(dtype),
        image_grid_thw=torch.tensor([[1, sizes.grid, sizes.grid]] * n, device=device),
    )
    if mm_types:
        out["mm_token_type_ids"] = (ids == sp["image_token_id"]).to(torch.int32)
    return out


def make_targets(n: int, sizes: Sizes, device, gen: torch.Generator, mm_types: bool) -> dict:
    """n text-only targets."""
    ids = torch.randint(0, sizes.special["text_high"], (n, sizes.target_text), generator=gen, device=device)
    out = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if mm_types:
        out["mm_token_type_ids"] = torch.zeros_like(ids, dtype=torch.int32)
    return out


def pair_batch(n: int, sizes: Sizes, device, dtype, mm_types: bool) -> tuple[dict, dict]:
    """(queries, targets) of the timed training cases at batch `n`: the same batch for every case
    timed at `n` (seeded by `n`), so their losses and gradients are comparable."""
    gen = torch.Generator(device=device).manual_seed(1000 + n)
    return make_queries(n, sizes, device, dtype, gen, mm_types), make_targets(n, sizes, device, gen, mm_types)


# --------------------------------------------------------------------------------------------------
# the two ways to embed

def plain_embed(model, inputs: dict) -> torch.Tensor:
    """The plain transformers path: full forward with LM-head logits, last layer's hidden state
    (`hidden_states[-1]`, i.e. after the final norm) at the last attended token, L2-normalised."""
    out = model(**inputs, output_hidden_states=True)
    return F.normalize(last_token_pool(out.hidden_states[-1], inputs["attention_mask"]), dim=-1)


def our_embedder(model) -> Embedder:
    return Embedder(SimpleNamespace(model=model, family="qwen2_vl", kind="vlm"))


def contrastive_step(embed, queries: dict, targets: dict, temperature: float) -> torch.Tensor:
    """Embed queries and targets (two forwards), InfoNCE, backward; the detached loss."""
    loss = info_nce(embed(queries), embed(targets), temperature=temperature)
    loss.backward()
    return loss.detach()


# --------------------------------------------------------------------------------------------------
# batched vision attention and regional compilation (trainer.model.acceleration), as context managers

@contextlib.contextmanager
def batched_vision_attention(model):
    """Within the block, the vision tower runs trainer.model.acceleration's batched attention."""
    if batch_vision_attention(model) == 0:
        raise RuntimeError("batched vision attention: no Qwen2-VL vision tower patched")
    try:
        yield
    finally:
        unbatch_vision_attention(model)


@contextlib.contextmanager
def gradient_checkpointing(model):
    base = unwrap(model)
    # transformers >= 5.2x renamed gradient_checkpointing_* to activation_checkpointing_*
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        disable = base.activation_checkpointing_disable
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        disable = base.gradient_checkpointing_disable
    try:
        yield
    finally:
        disable()
        # transformers' enable also hooks every input-embedding module, the vision tower's patch
        # embedding included (its output then requires grad: the frozen tower is stored and
        # back-propagated), and its disable removes those hooks only for models loaded with
        # transformers' own peft integration: remove them here, or every later case pays for them
        if hasattr(base, "disable_input_require_grads"):
            base.disable_input_require_grads()


@contextlib.contextmanager
def fast_path(model, backend: str, options: dict | None = None):
    """Within the block: batched vision attention + regional compilation of the repeated blocks
    (trainer.model.acceleration), as `train.batched_vision_attention` and `train.compile` set them up.
    `options`: inductor's (e.g. cpp_wrapper). Yields {block: its compiled call}, for the cases that
    switch the compiled calls off and on."""
    with batched_vision_attention(model):
        compile_blocks(model, backend=backend, **({"options": options} if options else {}))
        compiled = {m: m._compiled_call_impl for m in model.modules()
                    if getattr(m, "_compiled_call_impl", None) is not None}
        try:
            yield compiled
        finally:
            for m in compiled:
                m._compiled_call_impl = None


@contextlib.contextmanager
def attention_implementation(model, impl: str):
    base = unwrap(model)
    before = base.config._attn_implementation
    base.set_attn_implementation(impl)
    try:
        yield
    finally:
        base.set_attn_implementation(before)


# --------------------------------------------------------------------------------------------------
# timing

class Bench:
    """Times cases on one device and collects their rows (and writes the JSON after each)."""

    def __init__(self, device: torch.device, out_path: Path, meta: dict, budget_s: float):
        self.device = device
        self.cuda = device.type == "cuda"
        self.out_path = out_path
        self.meta = meta
        self.rows: list[dict] = []
        self.checks: list[dict] = []
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.budget_s

    def fits(self, seconds: float) -> bool:
        """Whether a case expected to take `seconds` ends within the budget if started now."""
        return time.perf_counter() - self.start + seconds <= self.budget_s

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def measure(self, case: str, label: str, batch: int, unit: str, step, *, warmup: int, steps: int,
                before_step=None, extra: dict | None = None) -> dict:
        """Run `step()` warmup + steps times; the row holds the median step time and the peak memory.

        `unit` names the throughput ("pairs/s" or "queries/s"): batch / median step seconds. An
        out-of-memory error is recorded as status "oom" (and the memory freed), any other error as
        "error: ..."; neither stops the run.
        """
        row = dict(case=case, label=label, batch=batch, unit=unit, status="skipped (time budget)",
                   **(extra or {}))
        if self.over_budget():
            log.warning("%s b=%d: skipped, %.0f s budget used", case, batch, self.budget_s)
            return self._add(row)
        log.info("%s b=%d: %s (%d warm-up + %d timed steps)", case, batch, label, warmup, steps)
        self.free()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        times, value, error, pauses = [], None, None, GcPauses()
        gc_s, gc_full = [], 0  # per timed step: seconds in the garbage collector; full collections
        try:
            with pauses:
                for i in range(warmup + steps):
                    if before_step is not None:
                        before_step()
                    self.sync()
                    pauses.step()
                    full = pauses.full
                    t0 = time.perf_counter()
                    value = step()
                    self.sync()
                    dt = time.perf_counter() - t0
                    if i >= warmup:
                        times.append(dt)
                        gc_s.append(pauses.step())
                        gc_full += pauses.full - full
                    log.info("  %s b=%d step %d/%d: %.3f s%s", case, batch, i + 1, warmup + steps, dt,
                             " (warm-up)" if i < warmup else "")
        except torch.OutOfMemoryError as exc:
            error = "oom"
            log.warning("  %s b=%d: out of memory (%s)", case, batch, str(exc).splitlines()[0][:160])
        except Exception as exc:  # noqa: BLE001 - a broken case is reported, the others still run
            error = error_status(exc)
            log.exception("  %s b=%d failed", case, batch)
        if before_step is not None:
            before_step()
        if self.cuda:
            row["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 2)
        row["gpu_state"] = gpu_state(self.device)
        if error is None:
            med = statistics.median(times)
            row.update(status="ok", step_s=round(med, 4), steps_s=[round(t, 4) for t in times],
                       throughput=round(batch / med, 2), gc_s=gc_s, gc_full=gc_full)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                row["loss"] = float(value)
            log.info("  %s b=%d: %.2f %s, median step %.3f s, peak %s GiB", case, batch, row["throughput"],
                     unit, med, row.get("peak_gib", "-"))
        else:
            row["status"] = error
        self.free()
        return self._add(row)

    def _add(self, row: dict) -> dict:
        self.rows.append(row)
        self.write()
        return row

    def write(self) -> None:
        payload = dict(meta=self.meta, checks=self.checks, rows=self.rows, ratios=ratios(self.rows),
                       elapsed_s=round(time.perf_counter() - self.start, 1))
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.out_path)


def error_status(exc: BaseException) -> str:
    """A row's status for a case that raised: the exception's type and its message's first line."""
    message = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"error: {type(exc).__name__}: {message}"


def ratios(rows: list[dict]) -> list[dict]:
    """Throughput of each ok training row over the A and B rows at the same batch (D: at its chunk
    size, the per-step batch the plain step would use), and of each encoding row over plain encoding."""
    ok = [r for r in rows if r["status"] == "ok"]
    base = {(r["case"], r["batch"]): r["throughput"] for r in ok if r["case"] in ("A", "B")}
    enc = {(r["case"], r["batch"]): r["throughput"] for r in ok if r["case"] in ("E:plain", "E:vision",
                                                                                 "E:vision-mixed")}
    out = []
    for r in ok:
        if r["case"].endswith(":warmup"):
            continue
        tag = r["case"].partition(":")[2]
        if tag.startswith("paired"):  # against B in the same rounds (paired_case)
            if "paired_ratio" in r:
                out.append(dict(case=r["case"], batch=r["batch"], vs=f"B:{tag}@{r['batch']}", ratio=r["paired_ratio"]))
            continue
        if r["case"].startswith("E"):
            ref = {"E:vision+bva": "E:vision", "E:vision-mixed+bva": "E:vision-mixed"}.get(
                r["case"], "E:plain" if r["case"].startswith("E:ours") else None)
            if ref and (ref, r["batch"]) in enc:
                out.append(dict(case=r["case"], batch=r["batch"], vs=ref,
                                ratio=round(r["throughput"] / enc[(ref, r["batch"])], 3)))
            continue
        ref_batch = r.get("chunk", r["batch"])
        if "chunk" in r and not any((ref, ref_batch) in base for ref in ("A", "B")):
            # a chunk size the plain step was not timed at: the goal's reference, the smallest batch
            ref_batch = min((b for (_, b) in base), default=ref_batch)
        for ref in ("A", "B"):
            if (ref, ref_batch) in base and (r["case"], r["batch"]) != (ref, ref_batch):
                out.append(dict(case=r["case"], batch=r["batch"], vs=f"{ref}@{ref_batch}",
                                ratio=round(r["throughput"] / base[(ref, ref_batch)], 3)))
    return out


# --------------------------------------------------------------------------------------------------
# correctness

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (inf when either holds NaN/inf)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, tol: float) -> dict:
    """A check row: relative error of `ours` against `reference` and whether it is within `tol`."""
    if ours.shape != reference.shape:
        return dict(check=name, passed=False, error=f"shape {tuple(ours.shape)} vs {tuple(reference.shape)}")
    err = rel_err(ours, reference)
    return dict(check=name, rel_err=err, tol=tol, passed=bool(err <= tol))


def lora_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten() for _, p in sorted(model.named_parameters())
                      if p.requires_grad and p.grad is not None])


def correctness_checks(model, queries: dict, targets: dict, temperature: float, tol: float) -> list[dict]:
    """C against B on one batch (same weights, adapters, inputs): embeddings, loss, LoRA gradients;
    C with gradient checkpointing against C; GradCache (chunks of half the batch) against the same
    chunks embedded with grad; batched vision attention against the per-image loop. Needs a model
    whose LoRA dropout is 0."""
    emb = our_embedder(model)
    out = []
    model.zero_grad(set_to_none=True)
    q_ref, t_ref = plain_embed(model, queries), plain_embed(model, targets)
    loss_ref = info_nce(q_ref, t_ref, temperature=temperature)
    loss_ref.backward()
    g_ref = lora_grads(model)
    model.zero_grad(set_to_none=True)
    q, t = emb(queries), emb(targets)
    loss = info_nce(q, t, temperature=temperature)
    loss.backward()
    g = lora_grads(model)
    model.zero_grad(set_to_none=True)
    out += [compare("C vs B: query embeddings", q, q_ref, tol), compare("C vs B: target embeddings", t, t_ref, tol),
            compare("C vs B: loss", loss, loss_ref, tol), compare("C vs B: LoRA gradients", g, g_ref, 5 * tol)]

    with gradient_checkpointing(model):
        loss_ck = info_nce(emb(queries), emb(targets), temperature=temperature)
        loss_ck.backward()
    g_ck = lora_grads(model)
    model.zero_grad(set_to_none=True)
    out += [compare("C+ckpt vs C: loss", loss_ck.detach(), loss.detach(), tol),
            compare("C+ckpt vs C: LoRA gradients", g_ck, g, 5 * tol)]

    # GradCache against the same chunks embedded with grad and one backward (the reference the
    # gradcache module defines: same kernels and shapes, so no rounding from a different split)
    half = max(1, queries["input_ids"].shape[0] // 2)
    q_chunks, t_chunks = split_queries(queries, half), split_rows(targets, half)
    loss_chunked = info_nce(torch.cat([emb(c) for c in q_chunks]), torch.cat([emb(c) for c in t_chunks]),
                            temperature=temperature)
    loss_chunked.backward()
    g_chunked = lora_grads(model)
    model.zero_grad(set_to_none=True)
    loss_gc = gradcache_step(emb, q_chunks, t_chunks, partial(info_nce, temperature=temperature))
    g_gc = lora_grads(model)
    model.zero_grad(set_to_none=True)
    out += [compare("D vs chunked C: loss", loss_gc, loss_chunked.detach(), tol),
            compare("D vs chunked C: LoRA gradients", g_gc, g_chunked, 5 * tol)]
    # the same GradCache step with the no-grad pass's image features reused (frozen vision tower)
    loss_feat = gradcache_step(emb, q_chunks, t_chunks, partial(info_nce, temperature=temperature),
                               features=frozen_image_features(model))
    g_feat = lora_grads(model)
    model.zero_grad(set_to_none=True)
    out += [compare("D+feat vs D: loss", loss_feat, loss_gc, 0.0),
            compare("D+feat vs D: LoRA gradients", g_feat, g_gc, 0.0)]

    visual = unwrap(model).model.visual
    with torch.no_grad():
        v_ref = visual(queries["pixel_values"], grid_thw=queries["image_grid_thw"]).pooler_output
        try:
            with batched_vision_attention(model):
                v = visual(queries["pixel_values"], grid_thw=queries["image_grid_thw"]).pooler_output
            out.append(compare("batched vision attention vs loop: vision output", v, v_ref, tol))
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            out.append(dict(check="batched vision attention vs loop: vision output", passed=False,
                            error=f"{type(exc).__name__}: {exc}"))
    return out


def split_rows(inputs: dict, size: int) -> list[dict]:
    """Row chunks of a text-only batch (every tensor is [B, ...])."""
    n = inputs["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, n, size)]


def split_queries(inputs: dict, size: int) -> list[dict]:
    """Row chunks of an image batch: pixel_values are the patches of all images, cut per image."""
    n = inputs["input_ids"].shape[0]
    per_image = int(inputs["image_grid_thw"][0].prod())
    chunks = []
    for i in range(0, n, size):
        rows = {k: v[i:i + size] for k, v in inputs.items() if k != "pixel_values"}
        m = rows["input_ids"].shape[0]
        rows["pixel_values"] = inputs["pixel_values"][i * per_image:(i + m) * per_image]
        chunks.append(rows)
    return chunks


# --------------------------------------------------------------------------------------------------
# cases

def train_cases(bench: Bench, model, label_lora: str, case: str, embed, sizes: Sizes, device, dtype,
                mm: bool, temperature: float, batches, context=contextlib.nullcontext, extra=None) -> None:
    for batch in batches:
        try:
            queries, targets = pair_batch(batch, sizes, device, dtype, mm)
        except torch.OutOfMemoryError:
            bench._add(dict(case=case, label=label_lora, batch=batch, unit="pairs/s", status="oom (inputs)"))
            bench.free()
            continue
        try:
            with context():
                bench.measure(case, label_lora, batch, "pairs/s",
                              lambda: contrastive_step(embed, queries, targets, temperature),
                              warmup=sizes.warmup, steps=sizes.steps,
                              before_step=lambda: model.zero_grad(set_to_none=True), extra=extra)
        except Exception as exc:  # noqa: BLE001 - a context that cannot be entered (e.g. compile setup)
            log.exception("%s b=%d: could not set up", case, batch)
            bench._add(dict(case=case, label=label_lora, batch=batch, unit="pairs/s",
                            status=f"error: {type(exc).__name__}: {exc}"[:300]))
        del queries, targets
        bench.free()


def with_positions(queries: dict, sizes: Sizes) -> dict:
    """`queries` plus the M-RoPE `position_ids` the Collator computes on the CPU (trainer.model.positions)."""
    pos = mrope_position_ids(queries["input_ids"].cpu(), queries["attention_mask"].cpu(),
                             queries["image_grid_thw"].cpu(), sizes.special["image_token_id"],
                             sizes.vision["spatial_merge_size"])
    return {**queries, "position_ids": pos.to(queries["input_ids"].device)}


def positions_case(bench: Bench, model, label: str, case: str, embed, sizes: Sizes, device, dtype, mm: bool,
                   temperature: float) -> None:
    """`case`: the step at the first batch with the queries' positions precomputed, as the trainer's
    Collator delivers them (the model then skips its per-row get_rope_index and its device syncs);
    checked first against the same step without them on the same batch."""
    batch = sizes.batches[0]
    queries, targets = pair_batch(batch, sizes, device, dtype, mm)
    positioned = with_positions(queries, sizes)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    model.zero_grad(set_to_none=True)
    loss_ref = contrastive_step(embed, queries, targets, temperature)
    model.zero_grad(set_to_none=True)
    loss_pos = contrastive_step(embed, positioned, targets, temperature)
    bench.checks.append(compare(f"{case} vs without positions: loss (batch {batch})", loss_pos, loss_ref, tol))
    log.info("  %-55s %s", bench.checks[-1]["check"], "PASS" if bench.checks[-1]["passed"] else "FAIL")
    bench.measure(case, label + ", M-RoPE positions precomputed", batch, "pairs/s",
                  lambda: contrastive_step(embed, positioned, targets, temperature),
                  warmup=sizes.warmup, steps=sizes.steps, before_step=lambda: model.zero_grad(set_to_none=True))
    del queries, targets, positioned
    bench.free()


def paired_case(bench: Bench, model, embed, compiled: dict, sizes: Sizes, device, dtype, mm: bool,
                temperature: float, rounds: int, frozen: bool = False) -> None:
    """The goal's ratio measured under the same conditions: B (the plain step, eager, per-image vision
    attention), C+fast and C+fast+pos (with the Collator's positions: the trainer's step) timed one
    step each in turn, `rounds` rounds after `sizes.warmup` untimed ones, the order reversed every
    round so that a drift of the card's or the host's speed falls on all alike. Between steps the
    compiled blocks are switched off and on (`compiled`: block -> its compiled call, nothing is
    recompiled) and batched vision attention with them. Rows `<case>:paired` hold each variant's
    step times; a variant's `paired_ratio` is the median over rounds of B's step time over its own in
    the same round (with the spread), next to the ratio of the medians. `host_s`: per step, the time
    until the step returned to Python, before the final sync: close to the step's time when the
    host's launching (or a sync inside the step) bounds it, well under it when the device does.

    `frozen`: the same rounds after `gc.collect(); gc.freeze()` (rows `<case>:paired+frozen`): every
    object alive then (the model's, the compiler's) moves to the permanent generation, which full
    collections no longer walk; `gc.unfreeze()` afterwards. Whether the collector's pauses make the
    step times bimodal shows as the difference between the two sets of rows."""
    tag = "paired+frozen" if frozen else "paired"
    batch = sizes.batches[0]
    queries, targets = pair_batch(batch, sizes, device, dtype, mm)
    positioned = with_positions(queries, sizes) if mm else None

    def eager() -> None:
        for block in compiled:
            block._compiled_call_impl = None
        unbatch_vision_attention(model)

    def fast() -> None:
        for block, impl in compiled.items():
            block._compiled_call_impl = impl
        batch_vision_attention(model)

    plain = partial(plain_embed, model)
    variants = {"B": (eager, lambda: contrastive_step(plain, queries, targets, temperature)),
                "C+fast": (fast, lambda: contrastive_step(embed, queries, targets, temperature))}
    if positioned is not None:
        variants["C+fast+pos"] = (fast, lambda: contrastive_step(embed, positioned, targets, temperature))
    label = "paired rounds, one step of each in turn (order reversed every round)" + (
        ", after gc.freeze()" if frozen else "")
    try:
        paired_rounds(bench, model, variants, tag=tag, label=label, batch=batch, warmup=sizes.warmup,
                      rounds=rounds, frozen=frozen)
    finally:
        fast()  # the state the caller's fast_path expects to undo
    del queries, targets, positioned
    bench.free()


def lm_region_case(bench: Bench, model, embed, compiled: dict, sizes: Sizes, device, dtype, mm: bool,
                   temperature: float, rounds: int, backend: str, graphs: bool, options: dict | None = None,
                   expect_s: float = 0.0) -> None:
    """The language model compiled as one region instead of layer by layer: one compiled call per
    pass instead of one per layer (the step is bound by the host's launches, RESULTS.md runs 4-5),
    and with `graphs` inductor's CUDA graphs over it (`mode="reduce-overhead"`), which per-layer
    compilation cannot use (a layer's graph output is overwritten by the next layer's replay,
    pytorch/pytorch#152887). This is the trainer's `compile_region` (`train.compile: region` /
    `cuda-graphs`), with static shapes (`dynamic=False`): this case has one shape, as the trainer's
    `pad_to_multiple_of` keeps a run to a few. The vision blocks stay compiled one by one, as in C+fast. `options`
    (inductor's, e.g. cpp_wrapper) apply to the variant without graphs.

    Checked against the eager step (loss, LoRA gradients) on the timed batch and on a second batch of
    the same shape (with graphs: on replays, so a graph that ignored its new inputs fails), and once
    more on the second batch after the timed rounds, in which eager B steps ran in between. Timed in
    paired rounds against B (rows `<case>:paired-lm` or `:paired-lm+graphs`). The meta records the
    first call's time (compilation included) and, with graphs, how many graphs inductor declined to
    capture (`cudagraph_skips`: a "graphs" row without capture would be plain compiled code). Skipped,
    with a row saying so, when a case expected to take `expect_s` would not end within the budget."""
    name = "C+lm+graphs+pos" if graphs else "C+lm+pos"
    tag = "paired-lm+graphs" if graphs else "paired-lm"
    batch = sizes.batches[0]
    if not bench.fits(expect_s):
        log.warning("%s: skipped, it would not fit in the time budget", name)
        bench._add(dict(case=f"{name}:{tag}", label="language model as one region", batch=batch, unit="pairs/s",
                        status="skipped (time budget)"))
        return
    if not mm:
        bench._add(dict(case=f"{name}:{tag}", label="needs mm_token_type_ids (transformers 5)", batch=batch,
                        unit="pairs/s", status="skipped"))
        return
    from torch._dynamo.utils import counters

    lm = language_model(model)
    layers = {m for m in compiled if any(m is x for x in lm.modules())}
    cuda_graphs = graphs and backend == "inductor" and device.type == "cuda"
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    region_impl = None

    def eager() -> None:
        lm._compiled_call_impl = None
        for block in compiled:
            block._compiled_call_impl = None
        unbatch_vision_attention(model)

    def region() -> None:
        for block, impl in compiled.items():
            block._compiled_call_impl = None if block in layers else impl
        lm._compiled_call_impl = region_impl
        batch_vision_attention(model)

    def step(queries, targets) -> torch.Tensor:
        if cuda_graphs:  # a new step: the previous step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return contrastive_step(embed, queries, targets, temperature)

    def check(what: str, queries, targets, reference: tuple) -> None:
        model.zero_grad(set_to_none=True)
        loss = step(queries, targets)
        bench.checks.extend([compare(f"{name} vs C: loss ({what})", loss, reference[0], tol),
                             compare(f"{name} vs C: LoRA gradients ({what})", lora_grads(model), reference[1], 5 * tol)])
        for c in bench.checks[-2:]:
            log.info("  %-55s %s %s", c["check"], "PASS" if c["passed"] else "FAIL",
                     f"rel_err={c['rel_err']:.2e}" if "rel_err" in c else "")

    def reference(queries, targets) -> tuple:
        model.zero_grad(set_to_none=True)
        loss = contrastive_step(embed, queries, targets, temperature)
        return loss, lora_grads(model)

    skips0 = counters["inductor"]["cudagraph_skips"]
    try:
        queries, targets = pair_batch(batch, sizes, device, dtype, mm)
        positioned = with_positions(queries, sizes)
        gen = torch.Generator(device=device).manual_seed(2000 + batch)  # a second batch of the same shape
        other = (with_positions(make_queries(batch, sizes, device, dtype, gen, mm), sizes),
                 make_targets(batch, sizes, device, gen, mm))
        eager()
        ref, ref_other = reference(positioned, targets), reference(*other)
        # the trainer's region (train.compile: region / cuda-graphs), static: this case has one shape
        compile_region(lm, cuda_graphs=cuda_graphs, backend=backend, dynamic=False,
                       options=None if cuda_graphs else options)
        region_impl = lm._compiled_call_impl
        region()
        for i in range(3 if cuda_graphs else 1):  # graphs: checked on replays (1st call warms up, 2nd records)
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step(positioned, targets)
            bench.sync()
            if i == 0:
                bench.meta[f"{name}_first_step_s"] = round(time.perf_counter() - t0, 1)
                log.info("%s: first step (compilation included) %.1f s", name, bench.meta[f"{name}_first_step_s"])
        check(f"batch {batch}", positioned, targets, ref)
        check(f"batch {batch}, another draw", *other, ref_other)
        bench.meta[f"{name}_cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skips0
        bench.write()
        plain = partial(plain_embed, model)
        variants = {"B": (eager, lambda: contrastive_step(plain, queries, targets, temperature)),
                    name: (region, lambda: step(positioned, targets))}
        label = ("language model compiled as one region" + (", CUDA graphs" if cuda_graphs else "")
                 + (", C++ wrapper" if options and not cuda_graphs else "")
                 + ", vision blocks compiled, batched vision attention, M-RoPE positions precomputed; paired with B")
        paired_rounds(bench, model, variants, tag=tag, label=label, batch=batch, warmup=max(sizes.warmup, 3),
                      rounds=rounds)
        region()  # after eager B steps in between: the region still computes the eager step's result
        check(f"batch {batch}, another draw, after the rounds", *other, ref_other)
        bench.meta[f"{name}_cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skips0
        bench.write()
    except Exception as exc:  # noqa: BLE001 - recorded; the remaining cases still run
        log.exception("%s failed", name)
        bench.checks.append(dict(check=f"{name} vs C", passed=False, error=f"{type(exc).__name__}: {exc}"[:300]))
        bench._add(dict(case=f"{name}:{tag}", label="language model as one region", batch=batch, unit="pairs/s",
                        status=error_status(exc)))
    finally:
        lm._compiled_call_impl = None
        for block, impl in compiled.items():  # the state the caller's fast_path expects to undo
            block._compiled_call_impl = impl
        batch_vision_attention(model)
        model.zero_grad(set_to_none=True)
        if cuda_graphs:  # give the graphs' memory pool back, so that later rows' peaks are their own
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees
            reset_cudagraph_trees()
    bench.free()


def paired_rounds(bench: Bench, model, variants: dict, *, tag: str, label: str, batch: int, warmup: int,
                  rounds: int, frozen: bool = False) -> None:
    """`variants` (name -> (setup, step); "B" first, the reference) one step each in turn, `rounds`
    rounds after `warmup` untimed ones, the order reversed every round; rows `<name>:<tag>` (see
    `paired_case`). The caller restores its model's state afterwards."""
    if bench.over_budget():
        for name in variants:
            bench._add(dict(case=f"{name}:{tag}", label=label, batch=batch, unit="pairs/s",
                            status="skipped (time budget)"))
        return
    log.info("%s rounds at batch %d: %s, %d warm-up + %d rounds", tag, batch, ", ".join(variants), warmup, rounds)
    if frozen:
        gc.collect()
        gc.freeze()
    times: dict[str, list[float]] = {name: [] for name in variants}
    gc_s: dict[str, list[float]] = {name: [] for name in variants}
    host_s: dict[str, list[float]] = {name: [] for name in variants}  # until the step returned, before the sync
    error, pauses = None, GcPauses()
    try:
        for r in range(warmup + rounds):
            for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                setup, step = variants[name]
                setup()
                model.zero_grad(set_to_none=True)
                bench.sync()
                pauses.step()
                t0 = time.perf_counter()
                with pauses:
                    step()
                    queued = time.perf_counter() - t0
                    bench.sync()
                if r >= warmup:
                    times[name].append(time.perf_counter() - t0)
                    host_s[name].append(queued)
                    gc_s[name].append(pauses.step())
            if r >= warmup:
                log.info("  round %d: %s", r - warmup + 1, ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    except Exception as exc:  # noqa: BLE001 - reported in the rows; the run goes on
        error = error_status(exc)
        log.exception("%s rounds failed", tag)
    finally:
        model.zero_grad(set_to_none=True)
        if frozen:
            gc.unfreeze()
    state = gpu_state(bench.device)
    for name, ts in times.items():
        row = dict(case=f"{name}:{tag}", label=label, batch=batch, unit="pairs/s", status=error or "ok",
                   gpu_state=state)
        if error is None:
            med = statistics.median(ts)
            row.update(step_s=round(med, 4), steps_s=[round(t, 4) for t in ts], throughput=round(batch / med, 2),
                       gc_s=gc_s[name], host_s=[round(t, 4) for t in host_s[name]])
            if name != "B":
                per_round = [b / t for b, t in zip(times["B"], ts)]
                row.update(paired_ratio=round(statistics.median(per_round), 3),
                           paired_ratio_range=[round(min(per_round), 3), round(max(per_round), 3)],
                           ratio_of_medians=round(statistics.median(times["B"]) / med, 3))
                log.info("  %s (%s): %.2fx B (median of %d rounds, range %.2f-%.2f)", name, tag, row["paired_ratio"],
                         len(per_round), *row["paired_ratio_range"])
        bench._add(row)


def gpu_state(device) -> dict | None:
    """The card's clocks, power and temperature as `nvidia-smi` reports them now (None off CUDA or
    without nvidia-smi): run-to-run differences of a card's speed show up here, not in the code."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    fields = ("clocks.sm", "clocks.max.sm", "clocks.mem", "power.draw", "temperature.gpu",
              "clocks_event_reasons.active", "utilization.gpu")
    try:
        index = torch.device(device).index or 0
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        values = [v.strip() for v in out.stdout.strip().split(",")]
        return dict(zip(fields, values)) if out.returncode == 0 and len(values) == len(fields) else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class GcPauses:
    """Seconds the Python garbage collector ran, per timed step (`gc.callbacks`): a full collection
    over a big model's and the compiler's objects could take tens of milliseconds. Recorded since run
    3's step times were bimodal (0.24-0.25 s and 0.29-0.30 s); runs 4-5 found no full collection in
    any timed step (the host's launch time varies instead, RESULTS.md). `step()` returns the pause
    since the last call; `full` counts generation-2 collections."""

    def __init__(self):
        self.pause, self.full, self._t0 = 0.0, 0, None

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.pause += time.perf_counter() - self._t0
            self.full += info.get("generation") == 2
            self._t0 = None

    def step(self) -> float:
        pause, self.pause = self.pause, 0.0
        return round(pause, 4)


def _device_us(e) -> float:
    return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)


def kernel_seconds(events) -> float:
    """Seconds the device ran kernels (and copies) among profiler `events`, as torch's own table totals
    them: only the device-side events. An operator's row (aten::mm) carries the time of the kernels it
    launched as its own device time too, so summing every row counts each kernel twice (the profiles
    of the H100 runs up to 2026-11-26 did: "320 ms of kernels per step" were 160)."""
    return sum(_device_us(e) for e in device_events(events)) / 1e6


def device_events(events) -> list:
    """The device-side events (kernels, copies) among profiler `events`, without user annotations."""
    from torch.autograd import DeviceType

    device_types = {getattr(DeviceType, n) for n in ("CUDA", "PrivateUse1", "MTIA", "XPU") if hasattr(DeviceType, n)}
    return [e for e in events if e.device_type in device_types and not getattr(e, "is_user_annotation", False)]


def profile_step(bench: Bench, model, name: str, embed, sizes: Sizes, device, dtype, mm: bool, temperature: float,
                 context=contextlib.nullcontext, steps: int = 3) -> Path | None:
    """torch.profiler over `steps` training steps at the first batch (after one untimed step): the
    operators by device time (CPU time on CPU) to `profile_<name>.txt` next to the JSON, headed by
    how busy the device was (its kernels' time over the steps' wall time). Where the remaining time
    of a step goes, for the next optimisation."""
    from torch.profiler import ProfilerActivity, profile

    batch = sizes.batches[0]
    queries, targets = pair_batch(batch, sizes, device, dtype, mm)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with context():
            model.zero_grad(set_to_none=True)
            contrastive_step(embed, queries, targets, temperature)
            bench.sync()
            with profile(activities=activities) as prof:
                t0 = time.perf_counter()
                for _ in range(steps):
                    model.zero_grad(set_to_none=True)
                    contrastive_step(embed, queries, targets, temperature)
                bench.sync()
                wall = time.perf_counter() - t0
    except Exception:  # noqa: BLE001 - a profile is an extra; the timings stand without it
        log.exception("profile %s failed", name)
        return None
    try:
        events = prof.key_averages()
        busy = kernel_seconds(events)
        launches = sum(e.count for e in device_events(events)) / steps
        head = (f"profile {name}: batch {batch}, {steps} steps, {wall / steps * 1000:.1f} ms per step; "
                + (f"device kernels {busy / steps * 1000:.1f} ms per step ({launches:.0f} of them), "
                   f"busy {busy / wall:.0%} of the wall time" if cuda else "CPU only"))
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        # "+" is not in the file names the device machine hands back
        path = bench.out_path.with_name(f"profile_{name.replace('+', '_')}.txt")
        text = head + "\n\n" + events.table(sort_by=sort, row_limit=45, max_name_column_width=70) + "\n"
        if cuda:  # where the host's time goes: the step is bound by it when the device is idle part of it
            text += "\nby host (self CPU) time:\n" + events.table(sort_by="self_cpu_time_total", row_limit=30,
                                                                  max_name_column_width=70) + "\n"
        path.write_text(text)
        # the leading operators also go into the JSON, which is what gets kept in benchmarks/results/
        key = (lambda e: _device_us(e)) if cuda else (lambda e: float(e.self_cpu_time_total))
        top = sorted(events, key=key, reverse=True)[:30]
        bench.meta[f"profile_{name}"] = dict(
            head=head, ms_per_step_wall=round(wall / steps * 1000, 2),
            ms_per_step_device=round(busy / steps * 1000, 2) if cuda else None,
            kernels_per_step=round(launches, 1) if cuda else None,
            top_host=[dict(op=e.key[:100], calls_per_step=round(e.count / steps, 1),
                           ms_per_step=round(e.self_cpu_time_total / steps / 1000, 3))
                      for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]],
            top=[dict(op=e.key[:100], calls_per_step=round(e.count / steps, 1),
                      ms_per_step=round(key(e) / steps / 1000, 3)) for e in top])
        bench.write()
    except Exception:  # noqa: BLE001 - a profiler API difference must not cost the run's timings
        log.exception("profile %s: could not write the table", name)
        return None
    log.info("%s -> %s", head, path)
    del queries, targets
    bench.free()
    return path


def gradcache_case(bench: Bench, model, sizes: Sizes, device, dtype, mm: bool, temperature: float,
                   case: str = "D", features=None, positions: bool = False) -> None:
    emb = our_embedder(model)
    chunk, total = sizes.gc_chunk, sizes.gc_batch
    if total % chunk:
        raise ValueError(f"--gc-batch {total} is not a multiple of --gc-chunk {chunk}")
    gen = torch.Generator(device=device).manual_seed(7)
    q_chunks = [make_queries(chunk, sizes, device, dtype, gen, mm) for _ in range(total // chunk)]
    if positions:
        q_chunks = [with_positions(q, sizes) for q in q_chunks]
    t_chunks = [make_targets(chunk, sizes, device, gen, mm) for _ in range(total // chunk)]
    loss_fn = partial(info_nce, temperature=temperature)
    label = f"GradCache {total} in chunks of {chunk}, Embedder, model-dtype adapters, dropout 0" + (
        ", image features reused" if features is not None else "") + (", positions precomputed" if positions else "")
    reset = lambda: model.zero_grad(set_to_none=True)  # noqa: E731
    # warm-up on two chunks per side (same kernels and shapes as the full step, a fraction of the time)
    bench.measure(f"{case}:warmup", label, 2 * chunk, "pairs/s",
                  lambda: gradcache_step(emb, q_chunks[:2], t_chunks[:2], loss_fn, features=features),
                  warmup=1, steps=1, before_step=reset, extra=dict(chunk=chunk))
    bench.measure(case, label, total, "pairs/s",
                  lambda: gradcache_step(emb, q_chunks, t_chunks, loss_fn, features=features),
                  warmup=0, steps=sizes.gc_steps, before_step=reset, extra=dict(chunk=chunk))
    del q_chunks, t_chunks
    bench.free()


def encode_cases(bench: Bench, model, sizes: Sizes, device, dtype, mm: bool) -> None:
    """E: no-grad encoding of queries with the base model (eval mode, no adapters)."""
    model.eval()
    batch = sizes.encode_batch
    gen = torch.Generator(device=device).manual_seed(11)
    queries = make_queries(batch, sizes, device, dtype, gen, mm)
    emb = our_embedder(model)
    inner = model.model
    kw = dict(warmup=sizes.warmup, steps=sizes.steps)

    def plain():
        with torch.no_grad():
            return plain_embed(model, queries)

    def ours():
        with torch.inference_mode():
            return emb(queries)

    def ours_bva():
        with torch.inference_mode(), batched_vision_attention(model):
            return emb(queries)

    def vision():
        with torch.inference_mode():
            return inner.visual(queries["pixel_values"], grid_thw=queries["image_grid_thw"]).pooler_output

    def vision_bva():
        with torch.inference_mode(), batched_vision_attention(model):
            return inner.visual(queries["pixel_values"], grid_thw=queries["image_grid_thw"]).pooler_output

    # the batched vision attention must give the loop's output on this very batch before it is timed
    check = vision_check(bench, f"E: batched vision attention vs loop on the {batch} encoded images", vision_bva,
                         vision, dtype)
    bench.free()

    bench.measure("E:plain", "no_grad model(**inputs, output_hidden_states=True)", batch, "queries/s", plain, **kw)
    bench.measure("E:ours", "inference_mode Embedder", batch, "queries/s", ours, **kw)
    if check["passed"]:
        bench.measure("E:ours+bva", "inference_mode Embedder, batched vision attention", batch, "queries/s",
                      ours_bva, **kw)
    bench.measure("E:vision", "vision tower alone (per-image attention loop)", batch, "images/s", vision, **kw)
    if check["passed"]:
        bench.measure("E:vision+bva", "vision tower alone, batched vision attention", batch, "images/s",
                      vision_bva, **kw)

    mixed_cases(bench, model, sizes, device, dtype, batch, gen, kw)

    captured: dict = {}

    def grab(_module, args, kwargs):
        captured.update(kwargs)
        raise _Captured

    handle = inner.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            emb(queries)
    except _Captured:
        pass
    finally:
        handle.remove()

    def lm():
        with torch.inference_mode():
            return inner.language_model(**captured).last_hidden_state

    if captured:
        bench.measure("E:lm", "language model alone (inputs_embeds captured)", batch, "queries/s", lm, **kw)
    captured.clear()
    del queries
    bench.free()


def vision_check(bench: Bench, name: str, ours, loop, dtype) -> dict:
    """`ours()` against `loop()` (vision features), recorded in the bench's checks; a raise is a failed check."""
    try:
        check = compare(name, ours(), loop(), 2e-2 if dtype != torch.float32 else 1e-4)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        check = dict(check=name, passed=False, error=f"{type(exc).__name__}: {exc}")
    bench.checks.append(check)
    log.info("  %-55s %s", check["check"], "PASS" if check["passed"] else f"FAIL {check}")
    return check


def mixed_grid(batch: int, sizes: Sizes) -> list[list[int]] | None:
    """Image grids of two sizes, as real MMEB batches have (aspect ratios differ): every other image
    keeps the full grid, the others are about 3/4 as wide (even, for the 2x2 merge); None when the
    grid is too small to have a second size."""
    short = (sizes.grid * 3 // 4) // 2 * 2
    if short < 2 or short == sizes.grid:
        return None
    return [[1, sizes.grid, sizes.grid if i % 2 == 0 else short] for i in range(batch)]


def mixed_cases(bench: Bench, model, sizes: Sizes, device, dtype, batch: int, gen, kw: dict) -> None:
    """E:vision-mixed (transformers' per-image loop) and E:vision-mixed+bva (one attention call per
    layer, the smaller images padded to the larger and masked) on images of two sizes, after a check
    that both give the same features."""
    grid = mixed_grid(batch, sizes)
    if grid is None:
        return
    grid_thw = torch.tensor(grid, device=device)
    pixels = torch.randn(int(grid_thw.prod(dim=1).sum()), sizes.patch_dim, generator=gen, device=device).to(dtype)
    visual = model.model.visual

    def loop():
        with torch.inference_mode():
            return visual(pixels, grid_thw=grid_thw).pooler_output

    def padded():
        with torch.inference_mode(), batched_vision_attention(model):
            return visual(pixels, grid_thw=grid_thw).pooler_output

    check = vision_check(bench, f"E: padded vision attention vs loop on {batch} images of two sizes", padded, loop,
                         dtype)
    bench.measure("E:vision-mixed", "vision tower alone, two image sizes (per-image attention loop)", batch,
                  "images/s", loop, **kw)
    if check["passed"]:
        bench.measure("E:vision-mixed+bva", "vision tower alone, two image sizes, padded batched attention", batch,
                      "images/s", padded, **kw)
    del pixels
    bench.free()


class _Captured(Exception):
    """Stops the inner forward once the language model's inputs are captured."""


# --------------------------------------------------------------------------------------------------
# report

def table(rows: list[dict], rats: list[dict]) -> str:
    by = {(r["case"], r["batch"], r["vs"][0]): r["ratio"] for r in rats}
    enc = {(r["case"], r["batch"]): r["ratio"] for r in rats if r["vs"].startswith("E:")}
    lines = [f"{'case':<18} {'batch':>5} {'throughput':>18} {'step s':>8} {'peak GiB':>9} {'vs A':>6} {'vs B':>6}"
             f"  label / status"]
    for r in rows:
        if r["case"].endswith(":warmup"):  # GradCache's compile/warm-up passes, not results
            continue
        if r["status"] != "ok":
            lines.append(f"{r['case']:<18} {r['batch']:>5} {'-':>18} {'-':>8} {r.get('peak_gib', '-'):>9} "
                         f"{'-':>6} {'-':>6}  {r['status']}")
            continue
        va = by.get((r["case"], r["batch"], "A"), "")
        vb = by.get((r["case"], r["batch"], "B"), enc.get((r["case"], r["batch"]), ""))
        thr = f"{r['throughput']:.2f} {r['unit']}"
        lines.append(f"{r['case']:<18} {r['batch']:>5} {thr:>18} {r['step_s']:>8.3f} {r.get('peak_gib', '-'):>9} "
                     f"{va!s:>6} {vb!s:>6}  {r['label']}")
    lines.append("(E rows: the 'vs B' column is the ratio to E:plain, or to E:vision for E:vision+bva; "
                 "D is compared with A and B at its chunk size; :paired rows with B:paired, the median of "
                 "the per-round ratios)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny config on CPU in float32, few steps (tests)")
    p.add_argument("--cases", default=",".join(ALL_CASES), help="comma list of A,B,C,D,E")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per case")
    p.add_argument("--batches", default=None, help="per-step batches of A/B/C, comma list (default 32,128)")
    p.add_argument("--gc-chunk", type=int, default=None, help="GradCache chunk size (default 32)")
    p.add_argument("--gc-batch", type=int, default=None, help="GradCache global batch (default 1024)")
    p.add_argument("--gc-feat-chunks", default=None,
                   help="with --compile: chunk sizes of D+fast+feat, comma list (default: --gc-chunk)")
    p.add_argument("--gc-steps", type=int, default=None, help="timed GradCache steps (default 2)")
    p.add_argument("--encode-batch", type=int, default=None, help="E: queries per call (default 128)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.02)
    p.add_argument("--ckpt", action="store_true", help="also time C with gradient checkpointing")
    p.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                   help="with --compile: B, C+fast and C+fast+pos one step each in turn for ROUNDS rounds "
                        "(the goal's ratio under the same conditions; rows <case>:paired)")
    p.add_argument("--backend", default=None, choices=("inductor", "aot_eager"),
                   help="torch.compile backend of --compile (default: inductor on CUDA, aot_eager on CPU)")
    p.add_argument("--cpp-wrapper", action="store_true",
                   help="inductor's C++ wrapper for the compiled blocks: the kernels are launched from C++ "
                        "instead of generated Python (less host time per launch)")
    p.add_argument("--lm-region", action="store_true",
                   help="with --compile: the language model compiled as one region (and, on CUDA, with CUDA "
                        "graphs), each paired with B (rows <case>:paired-lm, :paired-lm+graphs)")
    p.add_argument("--gc-freeze", action="store_true",
                   help="with --paired: the paired rounds again after gc.freeze() (rows <case>:paired+frozen)")
    p.add_argument("--compile", action="store_true",
                   help="also time C+fast, C+fast+pos and D+fast(+feat): batched vision attention + "
                        "torch.compile'd decoder layers and vision blocks")
    p.add_argument("--no-bva", action="store_true", help="skip the batched-vision-attention variant of C")
    p.add_argument("--profile", action="store_true",
                   help="with --compile: torch.profiler table of the C+fast step (profile_C_fast.txt by the JSON)")
    p.add_argument("--budget-min", type=float, default=8.0, help="skip cases once this much wall time is used")
    p.add_argument("--device", default=None, help="default: cuda when available (never for --tiny)")
    p.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_bench.json or benchmarks/_work/)")
    args = p.parse_args(argv)
    args.cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in args.cases if c not in ALL_CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; known: {','.join(ALL_CASES)}")
    # options that would otherwise be ignored without a word, or fail after the eager cases
    needs = [("--paired", args.paired > 0, args.compile, "--compile"), ("--lm-region", args.lm_region, args.compile, "--compile"),
             ("--cpp-wrapper", args.cpp_wrapper, args.compile, "--compile"),
             ("--gc-freeze", args.gc_freeze, args.paired > 0, "--paired ROUNDS"),
             ("--cpp-wrapper", args.cpp_wrapper, args.backend != "aot_eager", "the inductor backend")]
    for option, given, ok, what in needs:
        if given and not ok:
            p.error(f"{option} needs {what}")
    return args


def resolve_sizes(args) -> Sizes:
    sizes = TINY if args.tiny else FULL
    upd = {}
    for name in ("steps", "warmup", "gc_chunk", "gc_batch", "gc_steps", "encode_batch"):
        if getattr(args, name) is not None:
            upd[name] = getattr(args, name)
    if args.batches:
        upd["batches"] = tuple(int(b) for b in args.batches.split(","))
    sizes = replace(sizes, **upd)
    if sizes.gc_batch % sizes.gc_chunk:
        raise SystemExit(f"--gc-batch {sizes.gc_batch} is not a multiple of --gc-chunk {sizes.gc_chunk}")
    for chunk in feat_chunks(args, sizes):
        if sizes.gc_batch % chunk:
            raise SystemExit(f"--gc-batch {sizes.gc_batch} is not a multiple of --gc-feat-chunks' {chunk}")
    return sizes


def feat_chunks(args, sizes: Sizes) -> list[int]:
    """Chunk sizes of the D+fast+feat case (the first one named D+fast+feat, others D+fast+feat/<chunk>)."""
    if not args.gc_feat_chunks:
        return [sizes.gc_chunk]
    return [int(c) for c in args.gc_feat_chunks.split(",") if c.strip()]


def out_path(args) -> Path:
    if args.out:
        return Path(args.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_bench.json"
    return REPO / "benchmarks" / "_work" / "gpu_bench.json"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    sizes = resolve_sizes(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.float32 if args.tiny else torch.bfloat16
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if device.type == "cpu":
        torch.set_num_threads(1 if args.tiny else max(1, os.cpu_count() or 1))

    import peft
    import transformers
    meta = dict(
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), tiny=args.tiny, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        dtype=str(dtype), torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
        python=platform.python_version(), sizes=asdict(sizes), image_tokens=sizes.image_tokens,
        query_tokens=sizes.image_tokens + sizes.query_text, target_tokens=sizes.target_text,
        lora_rank=args.lora_rank, temperature=args.temperature,
        flash_attn_importable=importlib.util.find_spec("flash_attn") is not None,
    )
    bench = Bench(device, out_path(args), meta, budget_s=args.budget_min * 60)
    log.info("device %s (%s), dtype %s, torch %s, transformers %s, peft %s", device, meta["device_name"], dtype,
             torch.__version__, transformers.__version__, peft.__version__)

    t0 = time.perf_counter()
    base = build_model(sizes, device, dtype)
    mm = needs_mm_token_type_ids(base)
    meta.update(parameters=sum(p.numel() for p in base.parameters()), mm_token_type_ids=mm,
                build_s=round(time.perf_counter() - t0, 1), attn_implementation=base.config._attn_implementation)
    log.info("built %.2fB-parameter model in %.1f s (mm_token_type_ids %s)", meta["parameters"] / 1e9,
             meta["build_s"], "required" if mm else "not taken")

    defaults = Lora(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.1, fp32_adapters=True)
    ours = Lora(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.0, fp32_adapters=False)
    common = dict(sizes=sizes, device=device, dtype=dtype, mm=mm, temperature=args.temperature)

    if "A" in args.cases:
        model = add_lora(base, defaults)
        model.train()
        train_cases(bench, model, f"plain step, peft defaults ({defaults.label()})", "A",
                    partial(plain_embed, model), batches=sizes.batches, **common)
        base = model.unload()
        del model
        bench.free()

    needs_ours = any(c in args.cases for c in "BCD")
    if needs_ours:
        model = add_lora(base, ours)
        model.train()
        gen = torch.Generator(device=device).manual_seed(3)
        cq = make_queries(sizes.check_batch, sizes, device, dtype, gen, mm)
        ct = make_targets(sizes.check_batch, sizes, device, gen, mm)
        log.info("correctness checks on a batch of %d (tolerance %.0e relative)", sizes.check_batch, tol)
        try:
            bench.checks = correctness_checks(model, cq, ct, args.temperature, tol)
        except Exception as exc:  # noqa: BLE001 - reported; timing still runs
            log.exception("correctness checks failed to run")
            bench.checks = [dict(check="correctness checks", passed=False, error=f"{type(exc).__name__}: {exc}")]
        for c in bench.checks:
            log.info("  %-55s %s %s", c["check"], "PASS" if c["passed"] else "FAIL",
                     f"rel_err={c['rel_err']:.2e}" if "rel_err" in c else c.get("error", ""))
        del cq, ct
        model.zero_grad(set_to_none=True)
        bench.write()
        leaked = sum(getattr(h, "__name__", "") == "make_inputs_require_grads"
                     for m in model.modules() for h in m._forward_hooks.values())
        bench.checks.append(dict(check="no input-require-grads hook left after the checks",
                                 passed=leaked == 0, hooks=leaked))
        bva_ok = any(c["check"].startswith("batched vision") and c["passed"] for c in bench.checks)

        if "B" in args.cases:
            train_cases(bench, model, f"plain step ({ours.label()})", "B", partial(plain_embed, model),
                        batches=sizes.batches, **common)
        if "C" in args.cases:
            emb = our_embedder(model)
            label = f"Embedder step ({ours.label()})"
            train_cases(bench, model, label, "C", emb, batches=sizes.batches, **common)
            if not args.no_bva and bva_ok:
                train_cases(bench, model, label + ", batched vision attention", "C+bva", emb,
                            batches=sizes.batches, context=lambda: batched_vision_attention(model), **common)
            if args.ckpt:
                train_cases(bench, model, label + ", gradient checkpointing", "C+ckpt", emb,
                            batches=sizes.batches, context=lambda: gradient_checkpointing(model), **common)
            if meta["flash_attn_importable"] and device.type == "cuda":
                train_cases(bench, model, label + ", flash_attention_2", "C+fa2", emb, batches=sizes.batches,
                            context=lambda: attention_implementation(model, "flash_attention_2"), **common)
        if "D" in args.cases:
            try:
                gradcache_case(bench, model, **common)
            except torch.OutOfMemoryError:
                bench._add(dict(case="D", label="GradCache", batch=sizes.gc_batch, unit="pairs/s",
                                status="oom (inputs)", chunk=sizes.gc_chunk))
                bench.free()
        base = model.unload()
        del model
        bench.free()

    if "E" in args.cases:
        encode_cases(bench, base, **{k: v for k, v in common.items() if k != "temperature"})

    if args.compile:
        # last, because compilation is the slowest and least certain part of the run
        backend = args.backend or ("aot_eager" if device.type == "cpu" else "inductor")
        options = {"cpp_wrapper": True} if args.cpp_wrapper else None
        if options and backend != "inductor":
            raise SystemExit("--cpp-wrapper is an option of the inductor backend (--backend inductor)")
        bench.meta.update(compile_backend=backend, compile_options=options)
        model = add_lora(base, ours)
        model.train()
        emb = our_embedder(model)
        label = f"Embedder step ({ours.label()}), batched vision attention + compiled blocks ({backend}{', C++ wrapper' if options else ''})"
        # the compiled step must compute the eager step's loss and gradients on the timed batch shape
        b = sizes.batches[0]
        q, t = pair_batch(b, sizes, device, dtype, mm)
        model.zero_grad(set_to_none=True)
        loss_ref = contrastive_step(emb, q, t, args.temperature)
        g_ref = lora_grads(model)
        model.zero_grad(set_to_none=True)
        with fast_path(model, backend, options) as compiled:
            try:
                t0 = time.perf_counter()
                loss_fast = contrastive_step(emb, q, t, args.temperature)
                g_fast = lora_grads(model)
                log.info("first compiled step (compilation included): %.1f s", time.perf_counter() - t0)
                bench.checks += [compare(f"C+fast vs C: loss (batch {b})", loss_fast, loss_ref, tol),
                                 compare(f"C+fast vs C: LoRA gradients (batch {b})", g_fast, g_ref, 5 * tol)]
            except Exception as exc:  # noqa: BLE001 - reported as a failed check; timing still tried
                log.exception("compiled step failed")
                bench.checks.append(dict(check="C+fast vs C", passed=False, error=f"{type(exc).__name__}: {exc}"))
            for c in bench.checks[-2:]:
                log.info("  %-55s %s %s", c["check"], "PASS" if c["passed"] else "FAIL",
                         f"rel_err={c['rel_err']:.2e}" if "rel_err" in c else c.get("error", ""))
            model.zero_grad(set_to_none=True)
            del q, t, g_ref
            bench.free()
            if "C" in args.cases:
                train_cases(bench, model, label, "C+fast", emb, batches=sizes.batches[:1], **common)
                if mm:  # transformers 5 (mm_token_type_ids): the model's own positions are the reference
                    try:
                        positions_case(bench, model, label, "C+fast+pos", emb, **common)
                    except Exception as exc:  # noqa: BLE001 - recorded; the remaining cases still run
                        log.exception("C+fast+pos failed")
                        bench._add(dict(case="C+fast+pos", label=label, batch=sizes.batches[0], unit="pairs/s",
                                        status=f"error: {type(exc).__name__}: {exc}"[:300]))
                        bench.free()
                if args.paired > 0:
                    paired_case(bench, model, emb, compiled, rounds=args.paired, **common)
                    if args.gc_freeze:
                        paired_case(bench, model, emb, compiled, rounds=args.paired, frozen=True, **common)
                if args.lm_region:
                    # CUDA graphs first: they are what the run is for; the variant without them only
                    # if it fits in the budget after as long again as the first took
                    graph_variants = (True, False) if device.type == "cuda" and backend == "inductor" else (False,)
                    took = 0.0
                    for graphs in graph_variants:
                        t0 = time.perf_counter()
                        lm_region_case(bench, model, emb, compiled, rounds=max(args.paired, 3), backend=backend,
                                       graphs=graphs, options=options, expect_s=took, **common)
                        took = time.perf_counter() - t0
                if args.profile:
                    profile_step(bench, model, "C+fast", emb, **common)
            if "D" in args.cases:
                try:
                    gradcache_case(bench, model, case="D+fast", **common)
                    for chunk in feat_chunks(args, sizes):
                        case = "D+fast+feat" if chunk == sizes.gc_chunk else f"D+fast+feat/{chunk}"
                        gradcache_case(bench, model, case=case, features=frozen_image_features(model),
                                       positions=mm, **{**common, "sizes": replace(sizes, gc_chunk=chunk)})
                        bench.free()
                except torch.OutOfMemoryError:
                    bench._add(dict(case="D+fast", label="GradCache", batch=sizes.gc_batch, unit="pairs/s",
                                    status="oom (inputs)", chunk=sizes.gc_chunk))
        if args.paired > 0 and "B" in args.cases:  # B once more, eager, after everything: how far it drifted
            train_cases(bench, model, f"plain step ({ours.label()}), again at the end of the run", "B:end",
                        partial(plain_embed, model), batches=sizes.batches[:1], **common)
        base = model.unload()
        del model
        bench.free()

    bench.write()
    rats = ratios(bench.rows)
    failed = [c for c in bench.checks if not c["passed"]]
    print()
    print(f"GPU benchmark: {meta['device_name']}, {dtype}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}; {meta['parameters'] / 1e9:.2f}B parameters; "
          f"queries {meta['query_tokens']} tokens ({sizes.image_tokens} image), targets {sizes.target_text}")
    print(table(bench.rows, rats))
    print(f"checks: {len(bench.checks) - len(failed)}/{len(bench.checks)} passed"
          + ("" if not failed else "; FAILED: " + "; ".join(c["check"] for c in failed)))
    print(f"JSON: {bench.out_path}  ({time.perf_counter() - bench.start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
