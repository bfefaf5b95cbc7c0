"""The training loop and the `train` stage: outputs, LoRA/full/GradCache wiring, exact resume after a
real SIGKILL, and a learning check (a tiny backbone learns to match shapes to captions)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from tests.trainer.train.test_stream import make_side, write_test_shards
from trainer.train import checkpoint as C
from trainer import provenance
from trainer.train.recipe import TrainPaths, dvc_lock_hashes, run_summary, train, validate_params

ROOT = Path(__file__).resolve().parents[3]

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20),
           "purple": (140, 40, 170), "orange": (240, 130, 20), "black": (10, 10, 10), "cyan": (20, 200, 210)}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = [(c, s) for c in COLOURS for s in SHAPES]
INSTRUCTION = "Represent the given image"

BASE_PARAMS = dict(
    seed=0, steps=6, batch_size=8, gc_chunk_size=0, learning_rate=0.002, warmup_steps=2, weight_decay=0.0,
    temperature=0.05, hard_negatives=0, lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_targets="default",
    dora=False, max_text_tokens=32, image_max_pixels=1024, instructions=True, mixture="proportional",
    homogeneous_batch=0, shuffle_buffer=16, num_workers=0, save_every=3, precision="fp32",
)


def render(colour: str, shape: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A shape of a colour on a light background, with jittered position and size."""
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    r = int(rng.integers(7, 11))
    cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    draw, fill = ImageDraw.Draw(img), COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def _png(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def shape_record(dataset: str, i: int):
    rng = np.random.default_rng([1, i])
    colour, shape = CAPTIONS[i % len(CAPTIONS)]
    return ({"query": make_side("", _png(render(colour, shape, rng)), "query.png", INSTRUCTION),
             "target": make_side(f"a {colour} {shape}"), "negatives": [make_side(f"a {colour} {s}")
                                                                         for s in SHAPES if s != shape]}, {})


@pytest.fixture(scope="module")
def workspace_template(tmp_path_factory):
    """models/base (tiny Qwen2-VL) + data/shards/train (480 shape/caption pairs in 2 datasets)."""
    from trainer.backbone.families import build_tiny, save_backbone

    root = tmp_path_factory.mktemp("ws")
    save_backbone(build_tiny("qwen2_vl", seed=0, image_size=32, hidden_size=64, layers=2), root / "models/base")
    write_test_shards(root / "data/shards/train", {"Syn-ShapesA": 240, "Syn-ShapesB": 240}, per_shard=60,
                      make_record=shape_record)
    return root


@pytest.fixture
def workspace(workspace_template, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace_template, ws)
    return ws


def paths_in(ws: Path, **kw) -> TrainPaths:
    return TrainPaths(base=ws / "models/base", shards=ws / "data/shards/train", out=ws / "models/embedder",
                      checkpoints=ws / "models/checkpoints", metrics=ws / "metrics/train", **kw)


def merged_weights(ws: Path) -> dict[str, torch.Tensor]:
    return load_file(ws / "models/embedder/merged/model.safetensors")


# --- fast wiring tests ------------------------------------------------------------------------


def test_validate_params():
    assert validate_params(BASE_PARAMS)["max_grad_norm"] == 1.0
    with pytest.raises(ValueError, match="unknown \\['lora_rnak'\\]"):
        validate_params({**BASE_PARAMS, "lora_rnak": 8})
    with pytest.raises(ValueError, match="missing \\['steps'\\]"):
        validate_params({k: v for k, v in BASE_PARAMS.items() if k != "steps"})
    with pytest.raises(ValueError, match="precision is fp32 or bf16"):
        validate_params({**BASE_PARAMS, "precision": "fp16"})
    with pytest.raises(ValueError, match="precision bf16 for lora_dtype bf16"):
        validate_params({**BASE_PARAMS, "lora_dtype": "bf16"})


@pytest.mark.parametrize("override,message", [
    ({"image_max_pixels": 0}, "image_max_pixels an integer > 0 or null"),  # crashed inside PIL mid-batch
    ({"image_max_pixels": -5}, "image_max_pixels"),  # quarantined every sample, then blamed the shards
    ({"instructions": "false"}, "instructions is true or false"),  # bool("false") is True: no ablation
    ({"dora": "no"}, "dora is true or false"),
    ({"steps": 2.7}, "steps an integer"), ({"batch_size": True}, "batch_size an integer"),
    ({"learning_rate": "fast"}, "learning_rate > 0"), ({"max_text_tokens": 0}, "max_text_tokens"),
    ({"batch_size": 1}, "batch_size >= 2 or hard_negatives > 0"),  # loss log(1) = 0: trains nothing
    # refused by the data stream only after stale checkpoints had been deleted
    ({"batch_size": 8, "homogeneous_batch": 3}, "homogeneous_batch dividing batch_size"),
])
def test_params_that_would_fail_later_or_silently_are_refused(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_params({**BASE_PARAMS, **override})


def test_params_as_dvc_exp_writes_them_are_accepted():
    # `-S train.learning_rate=1e-3` puts 1e-3 into params.yaml, which PyYAML reads as a string
    p = validate_params({**BASE_PARAMS, "learning_rate": "1e-3", "image_max_pixels": None,
                         "batch_size": 1, "hard_negatives": 1})
    assert float(p["learning_rate"]) == 0.001


@pytest.mark.parametrize("precision,lora_rank,lora_dtype,fsdp,world,frozen,trainable", [
    ("fp32", 4, "fp32", False, 1, torch.float32, torch.float32),
    ("bf16", 4, "fp32", False, 1, torch.bfloat16, torch.float32),   # VLM2Vec's bf16 base, fp32 adapters
    ("bf16", 4, "bf16", False, 1, torch.bfloat16, torch.bfloat16),  # the GPU benchmark's setting
    ("bf16", 4, "fp32", True, 2, torch.float32, torch.float32),     # FSDP2: one dtype per unit
    ("bf16", 0, "fp32", False, 1, None, torch.float32),             # full fine-tuning: fp32 master weights
])
def test_weight_dtypes_follow_precision_and_lora_not_the_checkpoint(tmp_path, precision, lora_rank, lora_dtype,
                                                                     fsdp, world, frozen, trainable):
    from trainer.backbone.families import build_tiny, load_backbone, save_backbone
    from trainer.train.recipe import apply_lora, base_dtype

    tiny = build_tiny("qwen2_vl", seed=0, image_size=32, hidden_size=64, layers=2)
    tiny.model.to(torch.bfloat16)  # stored in bf16, as Hub checkpoints are
    save_backbone(tiny, tmp_path / "base")
    p = validate_params({**BASE_PARAMS, "precision": precision, "lora_rank": lora_rank, "lora_dtype": lora_dtype,
                         "fsdp": fsdp})
    model = apply_lora(load_backbone(str(tmp_path / "base"), torch_dtype=base_dtype(p, world)), p).model
    assert {q.dtype for q in model.parameters() if q.requires_grad} == {trainable}
    assert {q.dtype for q in model.parameters() if not q.requires_grad} == ({frozen} if frozen else set())


def test_a_checkpoint_is_not_resumed_across_a_change_of_the_base_weights_dtype(workspace):
    """train.fsdp is left out of the fingerprint (speed only), except where it changes the weights:
    a LoRA run under bf16 keeps its base in bf16 with DDP and in float32 with FSDP."""
    from trainer.train.recipe import run_fingerprint

    paths, index = paths_in(workspace), workspace / "data/shards/train/index.json"
    lora_bf16 = validate_params({**BASE_PARAMS, "precision": "bf16"})
    assert run_fingerprint(lora_bf16, paths, index, 2) != run_fingerprint({**lora_bf16, "fsdp": True}, paths, index, 2)
    assert run_fingerprint(lora_bf16, paths, index, 1) == run_fingerprint({**lora_bf16, "fsdp": True}, paths, index, 1)
    full = validate_params({**BASE_PARAMS, "precision": "bf16", "lora_rank": 0})
    assert run_fingerprint(full, paths, index, 2) == run_fingerprint({**full, "fsdp": True}, paths, index, 2)


def test_lora_run_writes_adapter_merged_lineage_metrics_checkpoints(workspace):
    summary = train(BASE_PARAMS, paths_in(workspace))
    out = workspace / "models/embedder"
    assert summary["mode"] == "lora" and summary["resumed_from"] == 0
    adapter_cfg = json.loads((out / "adapter/adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8
    assert (out / "adapter/adapter_model.safetensors").is_file()
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["train"]["lora_rank"] == 4 and lineage["final_loss"] == pytest.approx(summary["final_loss"])
    assert lineage["collation"] == {"max_text_tokens": 32, "image_max_pixels": 1024, "instructions": True}
    assert set(lineage["dvc_lock"]) == {"shards", "base_model"}
    assert lineage["shards"] == str(workspace / "data/shards/train")
    assert lineage["shard_index_sha256"] == C.hash_tree(workspace / "data/shards/train/index.json")
    # the code that trained: its last commit (not HEAD), uncommitted edits, its digest
    assert {"git_commit", "code_dirty", "code_digest"} <= set(lineage)
    assert lineage["code_digest"] == provenance.source_digest("trainer.train.recipe")
    # merged = base + trained LoRA: the language model's projections moved, the vision tower did not
    base = load_file(workspace / "models/base/model.safetensors")
    merged = merged_weights(workspace)
    assert set(base) == set(merged)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all("visual" not in k and "_proj" in k for k in changed)
    # the merged folder is a loadable backbone
    from trainer.backbone.families import load_backbone
    assert load_backbone(str(out / "merged")).family == "qwen2_vl"
    # dvclive history: one row per step for every metric
    for name in ("loss", "learning_rate", "grad_norm", "pairs_per_s", "images_per_s", "quarantined",
                 "padded_negatives"):
        rows = (workspace / f"metrics/train/plots/metrics/{name}.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["step"] + [str(s) for s in range(6)], name
    # the learning rate logged at a step is the one its update used: linear warm-up from 0 over 2
    # steps, then linear decay to 0 at step 6
    rates = [float(r.split("\t")[-1]) for r in
             (workspace / "metrics/train/plots/metrics/learning_rate.tsv").read_text().splitlines()[1:]]
    assert rates == pytest.approx([0.0, 0.001, 0.002, 0.0015, 0.001, 0.0005])
    summary_file = json.loads((workspace / "metrics/train/metrics.json").read_text())
    assert summary_file["step"] == 5
    assert {k: v for k, v in summary_file.items() if k != "step"} == pytest.approx(
        run_summary(workspace / "metrics/train"))
    assert [p.name for p in C.list_checkpoints(workspace / "models/checkpoints")] == ["step-000003", "step-000006"]
    assert not (workspace / "dvc.yaml").exists()


def test_lineage_takes_dvc_lock_hashes_only_for_the_paths_the_run_read(tmp_path):
    """`stages.train --shards/--base` may point elsewhere: dvc.lock's hashes describe only its own
    output paths, so they are recorded only when the run read those."""
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "shard": {"outs": [{"path": "data/shards/train", "md5": "aaa.dir"}]},
        "backbone": {"outs": [{"path": "models/base", "md5": "bbb.dir"}]}}}))
    lock = tmp_path / "dvc.lock"
    locked = TrainPaths(base=tmp_path / "models/base", shards=tmp_path / "data/shards/train")
    assert dvc_lock_hashes(locked, lock) == {"shards": "aaa.dir", "base_model": "bbb.dir"}
    other = replace(locked, shards=tmp_path / "subset/shards")
    assert dvc_lock_hashes(other, lock) == {"shards": None, "base_model": "bbb.dir"}
    assert dvc_lock_hashes(locked, tmp_path / "missing.lock") == {"shards": None, "base_model": None}


def test_quarantined_samples_and_padded_negatives_are_counted_in_the_metrics(workspace):
    """Bad samples are replaced (logged one by one); metrics.json adds them up over the run, with the
    negative slots that had to be padded, so `dvc metrics diff` shows data problems."""
    shards = workspace / "data/shards/bad"
    write_test_shards(shards, {"Syn-ShapesA": 24}, per_shard=12, make_record=shape_record,
                      corrupt={f"Syn-ShapesA/original/{i}" for i in (3, 10, 17)})
    params = {**BASE_PARAMS, "hard_negatives": len(SHAPES), "save_every": 100}  # one more than each record has
    train(params, replace(paths_in(workspace), shards=shards))
    per_step = {name: [int(float(r.split("\t")[-1])) for r in
                       (workspace / f"metrics/train/plots/metrics/{name}.tsv").read_text().splitlines()[1:]]
                for name in ("quarantined", "padded_negatives")}
    totals = json.loads((workspace / "metrics/train/metrics.json").read_text())
    assert totals["padded_negatives"] == sum(per_step["padded_negatives"]) == 6 * 8  # one per pair
    assert totals["quarantined"] == sum(per_step["quarantined"]) >= 3  # 48 draws over 24 samples: each bad one


@pytest.mark.parametrize("gc_chunk_size", [0, 4])
def test_padded_negative_slots_are_masked_out_of_the_training_loss(workspace, tmp_path, monkeypatch, gc_chunk_size):
    """Each record has 2 hard negatives and the run asks for 3: the third slot repeats one of the
    record's own, and the loss the loop optimises must leave it out (the batch's `negative_mask`),
    in the plain step and under GradCache alike."""
    from trainer.train import recipe as loop
    from trainer.train.losses import info_nce

    calls = []

    def spy(query, target, negatives=None, **kw):
        calls.append((negatives, kw.get("negative_mask")))
        return info_nce(query, target, negatives, **kw)

    monkeypatch.setattr(loop, "info_nce", spy)
    params = {**BASE_PARAMS, "steps": 2, "save_every": 100, "hard_negatives": len(SHAPES),
              "gc_chunk_size": gc_chunk_size}
    train(params, paths_in(workspace))
    assert len(calls) == 2
    for negatives, mask in calls:
        assert mask is not None, "the loop dropped the batch's negative mask"
        assert tuple(mask.shape) == tuple(negatives.shape[:2]) == (8, len(SHAPES))
        assert mask[:, :2].all() and not mask[:, 2].any()  # one padded slot per pair, the last
    # and the mask changes the loss: the padded slot duplicates a real negative
    negatives, mask = calls[-1]
    q, t = torch.nn.functional.normalize(torch.randn(8, negatives.shape[-1]), dim=-1), negatives[:, 0].detach()
    assert info_nce(q, t, negatives.detach(), negative_mask=mask) != info_nce(q, t, negatives.detach())


def test_a_failed_export_leaves_no_model_copy_behind(workspace, monkeypatch):
    """An export that dies (disk full) removes its temporary copy; one killed before that (another
    pid) is removed by the next export."""
    from trainer.train import recipe as loop

    stale = workspace / "models" / ".embedder.tmp-99999999"
    (stale / "merged").mkdir(parents=True)
    real = loop.save_backbone

    def disk_full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop, "save_backbone", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train({**BASE_PARAMS, "steps": 2}, paths_in(workspace))
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["base", "checkpoints"]
    monkeypatch.setattr(loop, "save_backbone", real)
    assert train({**BASE_PARAMS, "steps": 2}, paths_in(workspace))["resumed_from"] == 2
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["base", "checkpoints", "embedder"]


def test_rerun_after_completion_resumes_at_the_end_and_is_byte_identical(workspace):
    train(BASE_PARAMS, paths_in(workspace))
    first = (workspace / "models/embedder/merged/model.safetensors").read_bytes()
    first_lineage = (workspace / "models/embedder/lineage.json").read_bytes()
    summary = train(BASE_PARAMS, paths_in(workspace))
    assert summary["resumed_from"] == 6
    assert (workspace / "models/embedder/merged/model.safetensors").read_bytes() == first
    assert (workspace / "models/embedder/lineage.json").read_bytes() == first_lineage


def test_a_resume_continues_the_checkpoints_metrics_history_not_the_workspaces(workspace):
    """git restores metrics/train/ with a checkout of another run (it is git-tracked) but nothing restores
    models/checkpoints: after a LoRA run, `git checkout` of the baseline and the same LoRA run again, the
    rerun resumed the LoRA checkpoint and summarised the baseline's loss curve as the LoRA run's."""
    params = {**BASE_PARAMS, "steps": 4, "save_every": 2}
    train(params, paths_in(workspace))
    plots = workspace / "metrics/train/plots/metrics"
    curve = (plots / "loss.tsv").read_text()
    summary = json.loads((workspace / "metrics/train/metrics.json").read_text())
    for tsv in plots.glob("*.tsv"):  # another run's history, as a checkout of its commit leaves it
        name = tsv.stem
        tsv.write_text(f"timestamp\tstep\t{name}\n" + "".join(f"0\t{i}\t99.0\n" for i in range(4)))
    assert train(params, paths_in(workspace))["resumed_from"] == 4
    assert (plots / "loss.tsv").read_text() == curve
    assert json.loads((workspace / "metrics/train/metrics.json").read_text()) == summary


def test_lora_rank_and_full_finetuning_give_different_models(workspace, tmp_path):
    params = {**BASE_PARAMS, "steps": 2, "save_every": 100}
    results = {}
    for rank in (4, 8, 0):
        ws = tmp_path / f"r{rank}"
        shutil.copytree(workspace, ws)
        train({**params, "lora_rank": rank}, paths_in(ws))
        results[rank] = merged_weights(ws)
        assert (ws / "models/embedder/adapter").exists() == (rank > 0)
    assert any(not torch.equal(results[4][k], results[8][k]) for k in results[4])
    ws = tmp_path / "dora"
    shutil.copytree(workspace, ws)
    train({**params, "dora": True}, paths_in(ws))
    assert json.loads((ws / "models/embedder/adapter/adapter_config.json").read_text())["use_dora"] is True
    assert any(not torch.equal(merged_weights(ws)[k], results[4][k]) for k in results[4])
    full_changed = {k for k in results[0] if not torch.equal(results[0][k], results[4][k])}
    assert any("visual" in k for k in full_changed)  # full fine-tuning also trains the vision tower


def test_stale_checkpoint_of_other_params_is_not_resumed(workspace, caplog):
    train({**BASE_PARAMS, "steps": 3}, paths_in(workspace))
    summary = train({**BASE_PARAMS, "steps": 3, "learning_rate": 0.001}, paths_in(workspace))
    assert summary["resumed_from"] == 0
    assert "different params" in caplog.text
    fingerprints = {json.loads((p / "state.json").read_text())["fingerprint"]
                    for p in C.list_checkpoints(workspace / "models/checkpoints")}
    assert len(fingerprints) == 1


def test_a_checkpoint_of_other_code_or_other_data_slots_is_not_resumed(workspace, caplog, monkeypatch):
    """A rerun after a code change (DVC reruns train when a code dep changes) or with another number
    of data slots (num_workers sets a fresh run's data order) trains afresh: resuming the finished
    checkpoint would export the old run's weights under the new code or params."""
    first = train({**BASE_PARAMS, "steps": 3}, paths_in(workspace))
    assert train({**BASE_PARAMS, "steps": 3}, paths_in(workspace))["resumed_from"] == 3  # same: resumed
    assert train({**BASE_PARAMS, "steps": 3, "num_workers": 1}, paths_in(workspace))["resumed_from"] == 3
    assert train({**BASE_PARAMS, "steps": 3, "num_workers": 2}, paths_in(workspace))["resumed_from"] == 0
    real = provenance.source_digest
    monkeypatch.setattr(provenance, "source_digest", lambda m, *a: "edited" + real(m, *a))
    again = train({**BASE_PARAMS, "steps": 3, "num_workers": 2}, paths_in(workspace))
    assert again["resumed_from"] == 0 and "different params" in caplog.text
    lineage = json.loads((workspace / "models/embedder/lineage.json").read_text())
    assert lineage["code_digest"].startswith("edited") and np.isfinite(first["final_loss"])


def test_gradcache_and_hard_negatives_match_the_plain_step(workspace, tmp_path):
    """Without dropout GradCache gives the plain step's gradient, so the weights agree to rounding."""
    params = {**BASE_PARAMS, "steps": 3, "save_every": 100, "hard_negatives": 1}
    weights = {}
    for chunk in (0, 3):
        ws = tmp_path / f"gc{chunk}"
        shutil.copytree(workspace, ws)
        train({**params, "gc_chunk_size": chunk}, paths_in(ws))
        weights[chunk] = merged_weights(ws)
    diff = max(float((weights[0][k] - weights[3][k]).abs().max()) for k in weights[0])
    assert diff < 1e-4


def test_bf16_autocast_with_gradcache_and_homogeneous_batches_trains(workspace):
    params = {**BASE_PARAMS, "steps": 2, "save_every": 100, "precision": "bf16", "gc_chunk_size": 4,
              "homogeneous_batch": 4, "mixture": {"Syn-ShapesA": 1, "Syn-ShapesB": 1}}
    summary = train(params, paths_in(workspace, ids_log=workspace / "ids.jsonl"))
    assert np.isfinite(summary["final_loss"])
    for row in map(json.loads, (workspace / "ids.jsonl").read_text().splitlines()):
        runs = [{i.split("/")[0] for i in row["ids"][k:k + 4]} for k in (0, 4)]
        assert all(len(r) == 1 for r in runs)  # each sub-batch of 4 from one dataset
    base, merged = load_file(workspace / "models/base/model.safetensors"), merged_weights(workspace)
    # LoRA under bf16 trains on bf16 base weights; the merged copy is in the base's stored dtype (fp32),
    # its frozen weights exactly the base's, its LoRA-targeted projections changed
    assert all(merged[k].dtype == base[k].dtype == torch.float32 for k in base)
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)


def test_batched_vision_attention_and_compiled_blocks_train_the_same_weights(workspace, tmp_path, monkeypatch):
    """train.batched_vision_attention and train.compile change speed only: full fine-tuning (gradients
    through the vision tower too) ends with the weights of the stock eager run, and resumes from its
    checkpoints (the switches are not in the fingerprint)."""
    import trainer.train.recipe as loop
    from trainer.model import acceleration

    compiled = []

    def compile_on_cpu(model):  # inductor would spend minutes compiling C++ here; aot_eager traces the same graphs
        compiled.append(acceleration.compile_blocks(model, backend="aot_eager"))
        return compiled[-1]

    monkeypatch.setattr(loop, "compile_blocks", compile_on_cpu)
    params = {**BASE_PARAMS, "steps": 2, "save_every": 100, "lora_rank": 0}
    weights = {}
    for fast in (False, True):
        ws = tmp_path / f"fast{fast}"
        shutil.copytree(workspace, ws)
        train({**params, "batched_vision_attention": fast, "compile": fast}, paths_in(ws))
        weights[fast] = merged_weights(ws)
    assert compiled == [4]  # 2 decoder layers + 2 vision blocks, in the fast run only
    assert all(torch.allclose(weights[True][k], weights[False][k], rtol=1e-4, atol=1e-6) for k in weights[False])
    summary = train({**params, "batched_vision_attention": True}, paths_in(tmp_path / "fastFalse"))
    assert summary["resumed_from"] == 2
    with pytest.raises(ValueError, match="compile is true, false or one of blocks, region, cuda-graphs"):
        validate_params({**BASE_PARAMS, "compile": "yes"})


def test_language_model_region_and_cuda_graph_steps_train_the_same_weights(workspace, tmp_path, monkeypatch):
    """train.compile region / cuda-graphs with train.pad_to_multiple_of: the language model compiled as
    one region, every step marked as a new CUDA-graph step (cuda-graphs only), lengths padded to the
    multiple, and the weights of the eager unpadded run."""
    import trainer.train.recipe as loop
    from trainer.model import acceleration
    from trainer.model.inputs import Collator

    compiled, marks, lengths = [], [], set()
    monkeypatch.setattr(loop, "compile_language_model", lambda m, cuda_graphs: compiled.append(
        (cuda_graphs, acceleration.compile_language_model(m, cuda_graphs=cuda_graphs, backend="aot_eager"))))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    original = Collator._pad_length

    def pad_length(self, enc):
        out = original(self, enc)
        lengths.add((self.pad_to_multiple_of, out["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(Collator, "_pad_length", pad_length)
    params = {**BASE_PARAMS, "steps": 3, "save_every": 100, "num_workers": 0}
    weights = {}
    for scope, multiple in ((False, 1), ("region", 8), ("cuda-graphs", 8)):
        ws = tmp_path / f"compile-{scope}"
        shutil.copytree(workspace, ws)
        train({**params, "compile": scope, "pad_to_multiple_of": multiple}, paths_in(ws))
        weights[scope] = merged_weights(ws)
    torch._dynamo.reset()
    assert compiled == [(False, 2), (True, 2)]  # the 2 vision blocks one by one, the language model as a region
    assert len(marks) == params["steps"]  # cuda-graphs only, once per step
    padded = {n for m, n in lengths if m == 8}
    assert padded and all(n % 8 == 0 for n in padded) and any(n % 8 for m, n in lengths if m == 1)
    for scope in ("region", "cuda-graphs"):
        assert all(torch.allclose(weights[scope][k], weights[False][k], rtol=1e-4, atol=1e-6) for k in weights[False])


def test_compile_settings_that_cannot_work_are_refused_before_training():
    from trainer.train.recipe import compile_model, compile_scope

    assert [compile_scope({"compile": v}) for v in (False, True, "blocks", "region", "cuda-graphs")] == [
        None, "blocks", "blocks", "region", "cuda-graphs"]
    with pytest.raises(ValueError, match="gc_chunk_size 0 for compile cuda-graphs"):
        validate_params({**BASE_PARAMS, "compile": "cuda-graphs", "gc_chunk_size": 4})
    validate_params({**BASE_PARAMS, "compile": "region", "gc_chunk_size": 4})
    with pytest.raises(ValueError, match="pad_to_multiple_of an integer >= 1"):
        validate_params({**BASE_PARAMS, "pad_to_multiple_of": 0})
    model = torch.nn.Linear(2, 2)  # refused before anything is compiled
    with pytest.raises(ValueError, match="cuda-graphs runs in one process only"):
        compile_model(model, "cuda-graphs", world=2, sharded=False)
    with pytest.raises(ValueError, match="region is not supported with train.fsdp"):
        compile_model(model, "region", world=2, sharded=True)


def test_cuda_graphs_over_unrounded_lengths_are_warned_about(caplog):
    """One CUDA graph is recorded and kept per padded shape: without pad_to_multiple_of, a real run's
    hundreds of lengths would each get one, so the trainer says so (and compiles nothing until the
    first step)."""
    from trainer.backbone.families import build_tiny
    from trainer.train.recipe import compile_model

    warned = {}
    for multiple in (1, 64):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trainer.train.recipe"):
            compile_model(build_tiny("qwen2_vl", seed=0).model, "cuda-graphs", world=1, sharded=False,
                          pad_to_multiple_of=multiple)
        warned[multiple] = "records a CUDA graph for every distinct padded length" in caplog.text
    assert warned == {1: True, 64: False}


@pytest.mark.slow
def test_compiled_gradcache_lora_steps_stay_compiled_and_equal_eager(workspace, tmp_path, monkeypatch, caplog):
    """LoRA + GradCache + hard negatives: the compiled blocks see many variants (vision and decoder
    blocks share transformers' layer __call__; grad and no-grad passes; new shapes). None may fall
    back to eager for hitting torch's recompile limit, and the weights equal the eager run's."""
    import torch._dynamo
    import trainer.train.recipe as loop
    from trainer.model import acceleration

    monkeypatch.setattr(loop, "compile_blocks", lambda m: acceleration.compile_blocks(m, backend="aot_eager"))
    params = {**BASE_PARAMS, "steps": 5, "save_every": 100, "gc_chunk_size": 3, "hard_negatives": 1}
    weights = {}
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        for fast in (False, True):
            ws = tmp_path / f"compile{fast}"
            shutil.copytree(workspace, ws)
            train({**params, "compile": fast}, paths_in(ws))
            weights[fast] = merged_weights(ws)
    torch._dynamo.reset()
    assert "recompile_limit" not in caplog.text and "cache_size_limit" not in caplog.text
    assert all(torch.allclose(weights[True][k], weights[False][k], rtol=1e-4, atol=1e-6) for k in weights[False])


# --- exact resume after SIGKILL -----------------------------------------------------------------


def _stage_cmd(ws: Path, params: dict) -> tuple[list[str], dict]:
    (ws / "params.yaml").write_text(yaml.safe_dump({"train": params}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "VLM2VEC_TRAIN_IDS_LOG": str(ws / "ids.jsonl"), "DVCLIVE_LOGLEVEL": "ERROR"}
    return [sys.executable, "-m", "stages.train", "--params", "params.yaml"], env


@pytest.mark.slow
def test_sigkill_then_rerun_ends_with_the_same_weights(workspace, tmp_path):
    params = {**BASE_PARAMS, "steps": 24, "save_every": 5, "lora_dropout": 0.1, "num_workers": 2}
    # reference: one uninterrupted run of the stage
    ref = tmp_path / "ref"
    shutil.copytree(workspace, ref)
    cmd, env = _stage_cmd(ref, params)
    subprocess.run(cmd, cwd=ref, env=env, check=True, capture_output=True)

    cmd, env = _stage_cmd(workspace, params)
    proc = subprocess.Popen(cmd, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not C.list_checkpoints(workspace / "models/checkpoints"):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (workspace / "models/embedder").exists()
    killed_at = C.step_of(C.list_checkpoints(workspace / "models/checkpoints")[-1])
    assert killed_at < 24

    rerun = subprocess.run(cmd, cwd=workspace, env=env, check=True, capture_output=True, text=True)
    assert f"resumed from checkpoint models/checkpoints/step-{killed_at:06d} (step {killed_at})" in rerun.stderr
    resumed_w, ref_w = merged_weights(workspace), merged_weights(ref)
    assert max(float((resumed_w[k] - ref_w[k]).abs().max()) for k in ref_w) < 1e-6
    # same pairs in the same steps: nothing skipped, nothing repeated
    ids = lambda ws: [json.loads(x) for x in (ws / "ids.jsonl").read_text().splitlines()]  # noqa: E731
    assert ids(workspace) == ids(ref) and [r["step"] for r in ids(ref)] == list(range(24))
    loss_rows = (workspace / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in loss_rows[1:]] == [str(s) for s in range(24)]


# --- learning check ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_backbone_learns_to_retrieve_held_out_captions(workspace):
    from trainer.backbone.families import load_backbone
    from trainer.model.inputs import Collator
    from trainer.model.embedder import Embedder

    params = {**BASE_PARAMS, "steps": 150, "batch_size": 16, "lora_rank": 0, "learning_rate": 0.001,
              "warmup_steps": 10, "save_every": 1000}
    start = time.monotonic()
    train(params, paths_in(workspace))
    elapsed = time.monotonic() - start

    rng = np.random.default_rng(12345)  # held-out renderings
    images = [render(c, s, rng) for c, s in CAPTIONS]
    queries = [make_side("", _png(im), "query.png", INSTRUCTION) for im in images]
    targets = [make_side(f"a {c} {s}") for c, s in CAPTIONS]

    def accuracy(model_dir):
        backbone = load_backbone(str(model_dir))
        collator = Collator(backbone, max_text_tokens=32, image_max_pixels=1024)
        embedder = Embedder(backbone).eval()
        with torch.no_grad():
            q = embedder(collator(queries, images))
            t = embedder(collator(targets, [None] * len(targets)))
        return float(((q @ t.T).argmax(1) == torch.arange(len(CAPTIONS))).float().mean())

    chance = 1 / len(CAPTIONS)
    trained, base = accuracy(workspace / "models/embedder/merged"), accuracy(workspace / "models/base")
    print(f"held-out in-batch accuracy: trained {trained:.3f}, base {base:.3f}, chance {chance:.3f}, "
          f"training {elapsed:.1f} s")
    assert trained >= 5 * chance
    assert trained > base


# --- DDP ----------------------------------------------------------------------------------------


def _torchrun(ws: Path, params: dict) -> None:
    _, env = _stage_cmd(ws, params)
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "stages.train", "--params", "params.yaml"]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_torchrun_two_ranks_split_the_global_batch(workspace):
    _torchrun(workspace, {**BASE_PARAMS, "steps": 4, "save_every": 2})
    logs = [[json.loads(x) for x in (workspace / f"ids.jsonl.rank{r}").read_text().splitlines()] for r in (0, 1)]
    for step in range(4):
        a, b = logs[0][step], logs[1][step]
        assert a["step"] == b["step"] == step and len(a["ids"]) == len(b["ids"]) == 4
    all_ids = [i for log in logs for row in log for i in row["ids"]]
    assert len(set(all_ids)) == len(all_ids)  # 32 of 480 pairs: the ranks read disjoint shard parts
    state = json.loads((C.list_checkpoints(workspace / "models/checkpoints")[-1] / "state.json").read_text())
    assert state["stream"]["world_size"] == 2 and sorted(state["stream"]["slots"]) == ["0", "1"]
    assert len(state["rng"]) == 2
    lineage = json.loads((workspace / "models/embedder/lineage.json").read_text())
    assert lineage["world_size"] == 2 and lineage["steps"] == 4
    # the logged loss is the global batch's L, not the W * L each rank backpropagates: step 0 (LoRA B = 0,
    # the base model) recomputed in this process over both ranks' pairs, in rank order
    from trainer.backbone.families import load_backbone
    from trainer.model.inputs import Collator
    from trainer.train.losses import info_nce
    from trainer.model.embedder import Embedder

    backbone = load_backbone(str(workspace / "models/base"))
    collate = Collator(backbone, max_text_tokens=32, image_max_pixels=1024)
    pairs = []
    for record_id in logs[0][0]["ids"] + logs[1][0]["ids"]:
        dataset, _, i = record_id.split("/")
        sides, _ = shape_record(dataset, int(i))
        colour, shape = CAPTIONS[int(i) % len(CAPTIONS)]
        pairs.append((sides, render(colour, shape, np.random.default_rng([1, int(i)]))))
    embedder = Embedder(backbone).eval()
    with torch.no_grad():
        q = embedder(collate([s["query"] for s, _ in pairs], [im for _, im in pairs]))
        t = embedder(collate([s["target"] for s, _ in pairs], [None] * len(pairs)))
    want = info_nce(q, t, temperature=BASE_PARAMS["temperature"]).item()
    logged = (workspace / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()[1].split("\t")
    assert logged[0] == "0" and float(logged[-1]) == pytest.approx(want, rel=1e-3)

    # the stage re-run in one process resumes from the final checkpoint and trains nothing: the 2 ranks
    # trained every step, and the lineage says so (it said 1, changing models/embedder's bytes)
    weights = merged_weights(workspace)
    summary = train({**BASE_PARAMS, "steps": 4, "save_every": 2}, paths_in(workspace))
    assert summary["resumed_from"] == 4 and summary["world_size"] == 2
    assert json.loads((workspace / "models/embedder/lineage.json").read_text())["world_size"] == 2
    assert all(torch.equal(weights[k], v) for k, v in merged_weights(workspace).items())
    # from the step-2 checkpoint, one process trains steps 2-3: the lineage lists both world sizes
    shutil.rmtree(C.list_checkpoints(workspace / "models/checkpoints")[-1])
    summary = train({**BASE_PARAMS, "steps": 4, "save_every": 2}, paths_in(workspace))
    assert summary["resumed_from"] == 2 and summary["world_size"] == [[0, 2], [2, 1]]
    assert json.loads((workspace / "models/embedder/lineage.json").read_text())["world_size"] == [[0, 2], [2, 1]]


def mixed_record(dataset: str, i: int):
    """Shape images with captions in one dataset, text-only queries (image targets) in the other, so
    that with homogeneous sub-batches one rank can embed images where the other embeds none."""
    if dataset.endswith("Text"):
        rng = np.random.default_rng([2, i])
        colour, shape = CAPTIONS[i % len(CAPTIONS)]
        return ({"query": make_side(f"a {colour} {shape}", instruction="Find the image"),
                 "target": make_side("", _png(render(colour, shape, rng)), "target.png"),
                 "negatives": []}, {})
    return shape_record(dataset, i)


@pytest.mark.slow
def test_fsdp_trains_the_ddp_weights_and_resumes_across_fsdp_and_ddp(workspace_template, tmp_path):
    """Full fine-tuning on 2 ranks: FSDP ends with DDP's weights (same batches per rank, gradients
    averaged alike), also when one rank's chunk has images and the other's has none (homogeneous
    sub-batches from an image-query and a text-query dataset, GradCache chunks); an FSDP checkpoint
    resumes under FSDP and under DDP to the same weights."""
    template = tmp_path / "template"
    shutil.copytree(workspace_template / "models", template / "models")
    write_test_shards(template / "data/shards/train", {"Syn-ShapesA": 120, "Syn-ShapesText": 120}, per_shard=60,
                      make_record=mixed_record)
    params = {**BASE_PARAMS, "steps": 4, "save_every": 2, "lora_rank": 0, "homogeneous_batch": 4,
              "gc_chunk_size": 2, "mixture": {"Syn-ShapesA": 1, "Syn-ShapesText": 1}}
    runs = {}
    for name, fsdp in (("ddp", False), ("fsdp", True)):
        ws = tmp_path / name
        shutil.copytree(template, ws)
        _torchrun(ws, {**params, "fsdp": fsdp})
        runs[name] = merged_weights(ws)
    # the ranks did see different modalities in one step: rank 0 images and rank 1 text-only, or back
    logs = [[json.loads(x) for x in (tmp_path / "fsdp" / f"ids.jsonl.rank{r}").read_text().splitlines()]
            for r in (0, 1)]
    kinds = [[{i.split("/")[0] for i in row["ids"]} for row in log] for log in logs]
    assert any(a != b for a, b in zip(*kinds))
    base = load_file(template / "models/base/model.safetensors")

    def assert_same(a, b):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)

    assert any(not torch.equal(runs["fsdp"][k], base[k]) for k in base if "visual" in k)  # vision trained
    assert_same(runs["fsdp"], runs["ddp"])
    state = json.loads((C.list_checkpoints(tmp_path / "fsdp/models/checkpoints")[-1] / "state.json").read_text())
    assert state["step"] == 4
    # drop the last checkpoint and the output; resume from step 2: FSDP's under FSDP and DDP, and DDP's
    # under FSDP (DDP's checkpoint has no AdamW state for parameters that never got a gradient)
    for source, resume_fsdp in (("fsdp", True), ("fsdp", False), ("ddp", True)):
        ws = tmp_path / f"resume-{source}-{resume_fsdp}"
        shutil.copytree(tmp_path / source, ws)
        shutil.rmtree(ws / "models/embedder")
        shutil.rmtree(C.list_checkpoints(ws / "models/checkpoints")[-1])
        _torchrun(ws, {**params, "fsdp": resume_fsdp})
        assert json.loads((ws / "models/embedder/lineage.json").read_text())["steps"] == 4
        assert_same(merged_weights(ws), runs["fsdp"])
    for name, fsdp in (("lora-ddp", False), ("lora-fsdp", True)):  # LoRA under FSDP: frozen and trainable
        ws = tmp_path / name                                       # parameters share the units
        shutil.copytree(template, ws)
        _torchrun(ws, {**params, "lora_rank": 4, "fsdp": fsdp})
        runs[name] = merged_weights(ws)
        assert (ws / "models/embedder/adapter/adapter_model.safetensors").exists()
    assert_same(runs["lora-fsdp"], runs["lora-ddp"])
    assert any(not torch.equal(runs["lora-fsdp"][k], base[k]) for k in base)
    ws = tmp_path / "lora-fsdp-resume"  # a LoRA FSDP checkpoint (trainable tensors only) resumes exactly
    shutil.copytree(tmp_path / "lora-fsdp", ws)
    shutil.rmtree(ws / "models/embedder")
    shutil.rmtree(C.list_checkpoints(ws / "models/checkpoints")[-1])
    _torchrun(ws, {**params, "lora_rank": 4, "fsdp": True})
    assert_same(merged_weights(ws), runs["lora-fsdp"])
    # bf16 under FSDP: autocast compute, float32 weights, gradients and optimizer state
    ws = tmp_path / "fsdp-bf16"
    shutil.copytree(template, ws)
    _torchrun(ws, {**params, "fsdp": True, "precision": "bf16"})
    bf16 = merged_weights(ws)
    assert all(bf16[k].dtype == base[k].dtype == torch.float32 for k in base)
    assert np.isfinite(json.loads((ws / "models/embedder/lineage.json").read_text())["final_loss"])
    update = torch.cat([(bf16[k] - base[k]).flatten() for k in base])
    reference = torch.cat([(runs["fsdp"][k] - base[k]).flatten() for k in base])
    assert float(torch.nn.functional.cosine_similarity(update, reference, dim=0)) > 0.9  # the same steps, rounded


def test_run_summary_is_stable_aggregates_of_the_whole_history(tmp_path):
    """metrics.json for `dvc metrics diff`: loss and grad norm averaged over the last tenth of the
    steps, throughput the median step (a slow checkpoint step does not move it), the last learning rate."""
    plots = tmp_path / "plots" / "metrics"
    plots.mkdir(parents=True)
    values = {"loss": [5.0] * 18 + [1.0, 3.0], "grad_norm": [9.0] * 18 + [0.5, 1.5],
              "pairs_per_s": [100.0] * 19 + [1.0], "learning_rate": [0.1 * (20 - i) for i in range(20)]}
    for name, column in values.items():
        rows = ["step\t" + name] + [f"{i}\t{v}" for i, v in enumerate(column)]
        (plots / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    assert run_summary(tmp_path) == pytest.approx(
        {"loss": 2.0, "grad_norm": 1.0, "pairs_per_s": 100.0, "learning_rate": 0.1})


def test_weight_decay_spares_biases_and_norm_weights_as_hf_trainer():
    """HF Trainer (VLM2Vec) decays weights only: biases and LayerNorm/RMSNorm weights get none."""
    from trainer.backbone.families import build_tiny
    from trainer.train.recipe import optimizer_groups, trainable_parameters

    model = build_tiny("qwen2_vl").model
    names = {id(q): n for n, q in model.named_parameters()}
    decay, spared = optimizer_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    from torch import nn
    from transformers.trainer_pt_utils import get_parameter_names

    # HF Trainer's own rule (Trainer.get_decay_parameter_names) as the reference
    hf_decay = set(get_parameter_names(model, [nn.LayerNorm], [r"bias", r"layernorm", r"rmsnorm",
                                                              r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    assert {names[id(q)] for q in decay["params"]} == hf_decay
    assert {names[id(q)] for q in spared["params"]} == {n for n, _ in model.named_parameters()} - hf_decay
    assert any(n.endswith("q_proj.weight") for n in (names[id(q)] for q in decay["params"]))
    assert len(decay["params"]) + len(spared["params"]) == len(trainable_parameters(model))
    (only,) = optimizer_groups(model, 0.0)  # no decay: one group, as before
    assert only["params"] == trainable_parameters(model)
