"""The train stage under torchrun on 2 CPU ranks: the global batch split over the ranks, the logged
loss, resume with another world size, and FSDP against DDP (weights, resume across the two, LoRA,
bf16)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.support.shards import write_test_shards
from tests.support.train_workspace import (CAPTIONS, BASE_PARAMS, merged_weights, mixed_record, params, paths_in,
                                           render, shape_record, torchrun)
from trainer.train import checkpoint as C
from trainer.train.recipe import train


@pytest.mark.slow
def test_torchrun_two_ranks_split_the_global_batch(workspace):
    torchrun(workspace, params(steps=4, save_every=2))
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
    from trainer.model.embedder import Embedder
    from trainer.model.inputs import Collator
    from trainer.train.losses import info_nce

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
    want = info_nce(q, t, temperature=BASE_PARAMS.temperature).item()
    logged = (workspace / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()[1].split("\t")
    assert logged[0] == "0" and float(logged[-1]) == pytest.approx(want, rel=1e-3)

    # the stage re-run in one process resumes from the final checkpoint and trains nothing: the 2 ranks
    # trained every step, and the lineage says so (it said 1, changing models/embedder's bytes)
    weights = merged_weights(workspace)
    summary = train(params(steps=4, save_every=2), paths_in(workspace))
    assert summary["resumed_from"] == 4 and summary["world_size"] == 2
    assert json.loads((workspace / "models/embedder/lineage.json").read_text())["world_size"] == 2
    assert all(torch.equal(weights[k], v) for k, v in merged_weights(workspace).items())
    # from the step-2 checkpoint, one process trains steps 2-3: the lineage lists both world sizes
    shutil.rmtree(C.list_checkpoints(workspace / "models/checkpoints")[-1])
    summary = train(params(steps=4, save_every=2), paths_in(workspace))
    assert summary["resumed_from"] == 2 and summary["world_size"] == [[0, 2], [2, 1]]
    assert json.loads((workspace / "models/embedder/lineage.json").read_text())["world_size"] == [[0, 2], [2, 1]]


def torchrun_copy(template, ws, p) -> dict:
    """The stage on 2 ranks in a copy of `template` at `ws`; its merged weights."""
    shutil.copytree(template, ws)
    torchrun(ws, p)
    return merged_weights(ws)


def datasets_per_step(ws) -> list[list[set[str]]]:
    """Per rank, per step: the datasets of the rank's pairs (its ids log)."""
    logs = [[json.loads(x) for x in (ws / f"ids.jsonl.rank{r}").read_text().splitlines()] for r in (0, 1)]
    return [[{i.split("/")[0] for i in row["ids"]} for row in log] for log in logs]


@pytest.mark.slow
def test_ddp_ranks_with_different_sub_batch_counts_train_the_one_batch_weights(workspace_template, tmp_path):
    """Without GradCache, sub-batches by kind give each rank as many forwards per side as its rows have
    kinds: one rank embeds image and text queries apart while the other embeds text queries only. DDP
    (LoRA: no unused-parameter search) still sees one forward per backward and trains the weights of
    one padded batch per side."""
    template = tmp_path / "template"
    shutil.copytree(workspace_template / "models", template / "models")
    write_test_shards(template / "data/shards/train", {"Syn-ShapesA": 60, "Syn-ShapesText": 60}, per_shard=30,
                      make_record=mixed_record)
    mixed = params(steps=4, save_every=4, mixture={"Syn-ShapesA": 1, "Syn-ShapesText": 1})  # drawn per row
    runs = {name: torchrun_copy(template, tmp_path / name, replace(mixed, sub_batches=name))
            for name in ("kind", "none")}
    kinds = [[len(step) for step in rank] for rank in datasets_per_step(tmp_path / "kind")]
    assert any(a != b for a, b in zip(*kinds)), kinds  # a step where the ranks' query chunk counts differ
    for k in runs["none"]:
        torch.testing.assert_close(runs["kind"][k], runs["none"][k], rtol=1e-4, atol=1e-5, msg=k)


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
    full = params(steps=4, save_every=2, lora_rank=0, homogeneous_batch=4, gc_chunk_size=2,
                  mixture={"Syn-ShapesA": 1, "Syn-ShapesText": 1})
    runs = {name: torchrun_copy(template, tmp_path / name, replace(full, fsdp=fsdp))
            for name, fsdp in (("ddp", False), ("fsdp", True))}
    # the ranks did see different modalities in one step: rank 0 images and rank 1 text-only, or back
    kinds = datasets_per_step(tmp_path / "fsdp")
    assert any(a != b for a, b in zip(*kinds))
    base = load_file(template / "models/base/model.safetensors")

    def assert_same(a, b):  # FSDP reduces gradients in another order than DDP: float rounding, which
        for k in a:         # AdamW's normalized update turns into ~1e-6 on near-zero gradients (an lr step: 5e-4)
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)

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
        torchrun(ws, replace(full, fsdp=resume_fsdp))
        assert json.loads((ws / "models/embedder/lineage.json").read_text())["steps"] == 4
        assert_same(merged_weights(ws), runs["fsdp"])
    for name, fsdp in (("lora-ddp", False), ("lora-fsdp", True)):  # LoRA under FSDP: frozen and trainable
        ws = tmp_path / name                                       # parameters share the units
        shutil.copytree(template, ws)
        torchrun(ws, replace(full, lora_rank=4, fsdp=fsdp))
        runs[name] = merged_weights(ws)
        assert (ws / "models/embedder/adapter/adapter_model.safetensors").exists()
    assert_same(runs["lora-fsdp"], runs["lora-ddp"])
    assert any(not torch.equal(runs["lora-fsdp"][k], base[k]) for k in base)
    ws = tmp_path / "lora-fsdp-resume"  # a LoRA FSDP checkpoint (trainable tensors only) resumes exactly
    shutil.copytree(tmp_path / "lora-fsdp", ws)
    shutil.rmtree(ws / "models/embedder")
    shutil.rmtree(C.list_checkpoints(ws / "models/checkpoints")[-1])
    torchrun(ws, replace(full, lora_rank=4, fsdp=True))
    assert_same(merged_weights(ws), runs["lora-fsdp"])
    # bf16 under FSDP: autocast compute, float32 weights, gradients and optimizer state
    ws = tmp_path / "fsdp-bf16"
    shutil.copytree(template, ws)
    torchrun(ws, replace(full, fsdp=True, precision="bf16"))
    bf16 = merged_weights(ws)
    assert all(bf16[k].dtype == base[k].dtype == torch.float32 for k in base)
    assert np.isfinite(json.loads((ws / "models/embedder/lineage.json").read_text())["final_loss"])
    update = torch.cat([(bf16[k] - base[k]).flatten() for k in base])
    reference = torch.cat([(runs["fsdp"][k] - base[k]).flatten() for k in base])
    assert float(torch.nn.functional.cosine_similarity(update, reference, dim=0)) > 0.9  # the same steps, rounded
