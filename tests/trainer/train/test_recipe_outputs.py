"""What a training run writes and trains: models/embedder (adapter, merged, lineage), the metrics,
the checkpoints; LoRA, DoRA and full fine-tuning, GradCache and hard negatives, bf16; and a learning
check (a tiny backbone learns to match shapes to captions)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.support.images import encode
from tests.support.shards import make_side, write_test_shards
from tests.support.train_workspace import (CAPTIONS, INSTRUCTION, SHAPES, merged_weights, params, paths_in, render,
                                           shape_record)
from trainer import provenance
from trainer.train import checkpoint as C
from trainer.train.export import dvc_lock_hashes
from trainer.train.live import run_summary
from trainer.train.paths import TrainPaths
from trainer.train.recipe import train


def test_lora_run_writes_adapter_merged_lineage_metrics_checkpoints(workspace):
    summary = train(params(), paths_in(workspace))
    out = workspace / "models/embedder"
    assert summary["mode"] == "lora" and summary["resumed_from"] == 0
    adapter_cfg = json.loads((out / "adapter/adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8
    assert (out / "adapter/adapter_model.safetensors").is_file()
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["train"]["lora_rank"] == 4 and lineage["final_loss"] == pytest.approx(summary["final_loss"])
    assert lineage["train"] == params().to_dict()
    assert lineage["collation"] == {"max_text_tokens": 32, "image_max_pixels": 1024, "instructions": True,
                                    "positions": "grid", "stray_image_token": "strip", "image_resize": "collator",
                                    "image_square": None, "small_image_side": None, "prompt": "vlm2vec",
                                    "video_max_pixels": None}
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
                 "padded_negatives", "padding"):
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
    p = params(hard_negatives=len(SHAPES), save_every=100)  # one more than each record has
    train(p, replace(paths_in(workspace), shards=shards))
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
    from trainer.train import step as step_module
    from trainer.train.losses import info_nce

    calls = []

    def spy(query, target, negatives=None, **kw):
        calls.append((negatives, kw.get("negative_mask")))
        return info_nce(query, target, negatives, **kw)

    monkeypatch.setattr(step_module, "info_nce", spy)
    train(params(steps=2, save_every=100, hard_negatives=len(SHAPES), gc_chunk_size=gc_chunk_size),
          paths_in(workspace))
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
    from trainer.train import export

    stale = workspace / "models" / ".embedder.tmp-99999999"
    (stale / "merged").mkdir(parents=True)
    real = export.save_backbone

    def disk_full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_backbone", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(params(steps=2), paths_in(workspace))
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["base", "checkpoints"]
    monkeypatch.setattr(export, "save_backbone", real)
    assert train(params(steps=2), paths_in(workspace))["resumed_from"] == 2
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["base", "checkpoints", "embedder"]


def test_lora_rank_and_full_finetuning_give_different_models(workspace, tmp_path):
    results = {}
    for rank in (4, 8, 0):
        ws = tmp_path / f"r{rank}"
        shutil.copytree(workspace, ws)
        train(params(steps=2, save_every=100, lora_rank=rank), paths_in(ws))
        results[rank] = merged_weights(ws)
        assert (ws / "models/embedder/adapter").exists() == (rank > 0)
    assert any(not torch.equal(results[4][k], results[8][k]) for k in results[4])
    ws = tmp_path / "dora"
    shutil.copytree(workspace, ws)
    train(params(steps=2, save_every=100, dora=True), paths_in(ws))
    assert json.loads((ws / "models/embedder/adapter/adapter_config.json").read_text())["use_dora"] is True
    assert any(not torch.equal(merged_weights(ws)[k], results[4][k]) for k in results[4])
    full_changed = {k for k in results[0] if not torch.equal(results[0][k], results[4][k])}
    assert any("visual" in k for k in full_changed)  # full fine-tuning also trains the vision tower


def test_gradcache_and_hard_negatives_match_the_plain_step(workspace, tmp_path):
    """Without dropout GradCache gives the plain step's gradient, so the weights agree to rounding."""
    weights = {}
    for chunk in (0, 3):
        ws = tmp_path / f"gc{chunk}"
        shutil.copytree(workspace, ws)
        train(params(steps=3, save_every=100, hard_negatives=1, gc_chunk_size=chunk), paths_in(ws))
        weights[chunk] = merged_weights(ws)
    diff = max(float((weights[0][k] - weights[3][k]).abs().max()) for k in weights[0])
    assert diff < 1e-4


def test_bf16_autocast_with_gradcache_and_homogeneous_batches_trains(workspace):
    p = params(steps=2, save_every=100, precision="bf16", gc_chunk_size=4, homogeneous_batch=4,
               mixture={"Syn-ShapesA": 1, "Syn-ShapesB": 1})
    summary = train(p, paths_in(workspace, ids_log=workspace / "ids.jsonl"))
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


@pytest.mark.slow
def test_tiny_backbone_learns_to_retrieve_held_out_captions(workspace):
    from trainer.backbone.families import load_backbone
    from trainer.model.embedder import Embedder
    from trainer.model.inputs import Collator

    p = params(steps=150, batch_size=16, lora_rank=0, learning_rate=0.001, warmup_steps=10, save_every=1000)
    start = time.monotonic()
    train(p, paths_in(workspace))
    elapsed = time.monotonic() - start

    rng = np.random.default_rng(12345)  # held-out renderings
    images = [render(c, s, rng) for c, s in CAPTIONS]
    queries = [make_side("", encode(im), "query.png", INSTRUCTION) for im in images]
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
