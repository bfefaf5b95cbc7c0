"""Training on a mixture of V1 image pairs, MMEB-V2 page pairs and video pairs with the tiny Qwen2-VL:
LoRA and full fine-tuning, GradCache chunks, hard negatives, exact resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from pipelines.shard import write_shards
from tests.support.params import section
from tests.support.train_workspace import merged_weights, params, paths_in
from tests.support.v2_train import DOC, V1, VIDEO_CAPTION, VIDEO_RETRIEVAL, build_v2_train
from trainer.train.recipe import train

MIXED = dict(batch_size=8, homogeneous_batch=2, steps=3, save_every=3)


@pytest.fixture(scope="module")
def v2_template(workspace_template, tmp_path_factory):
    """The tiny Qwen2-VL base of the training workspace + shards of the V1 + V2 mixture (4 datasets)."""
    root = tmp_path_factory.mktemp("v2ws")
    shutil.copytree(workspace_template / "models/base", root / "models/base")
    train_dir, store = build_v2_train(root / "data", rows=6, frames=2)
    write_shards(train_dir, store, root / "data/shards/train",
                 section("shard", workers=1, image_max_pixels=1024, image_size_multiple=16, max_rows_per_dataset=None,
                         shuffle=True, seed=0, max_samples=4, max_bytes=1 << 20, image_max_side=1000))
    return root


@pytest.fixture
def v2_workspace(v2_template, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(v2_template / "models", ws / "models")
    shutil.copytree(v2_template / "data/shards", ws / "data/shards")
    return ws


def trained_datasets(ws) -> set[str]:
    return {i.split("/")[0] for line in (ws / "ids.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]}


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_mixture_of_image_page_and_video_pairs_trains(v2_workspace, mode):
    base = load_file(v2_workspace / "models/base/model.safetensors")
    p = params(**MIXED, **({"lora_rank": 0, "learning_rate": 1e-3} if mode == "full" else {}))
    summary = train(p, paths_in(v2_workspace, ids_log=v2_workspace / "ids.jsonl"))
    assert summary["mode"] == mode and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert trained_datasets(v2_workspace) == {DOC, V1, VIDEO_CAPTION, VIDEO_RETRIEVAL}
    merged = merged_weights(v2_workspace)
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert any("visual" in k for k in changed) == (mode == "full") and changed


def test_gradcache_with_hard_negatives_matches_one_pass_and_resumes_exactly(v2_workspace):
    """V2 pairs carry no hard negatives (VLM2Vec-V2 trains without them): their slots are padded with
    other pairs' targets, videos included, and masked out. GradCache chunks give the one-pass loss, and
    a run resumed from its middle checkpoint ends with the weights of the uninterrupted run."""
    one_pass = train(params(**MIXED, hard_negatives=1), paths_in(v2_workspace))
    p = params(**{**MIXED, "steps": 4, "save_every": 2}, hard_negatives=1, gc_chunk_size=2)
    chunked = train(replace(p, steps=3, save_every=3), paths_in(v2_workspace))
    assert chunked["final_loss"] == pytest.approx(one_pass["final_loss"], abs=1e-4)
    run = json.loads((v2_workspace / "metrics/train/metrics.json").read_text())
    assert run["padded_negatives"] == 3 * 8  # no record here has a negative of its own

    uninterrupted = train(p, paths_in(v2_workspace))
    weights = merged_weights(v2_workspace)
    shutil.rmtree(v2_workspace / "models/checkpoints/step-000004")
    resumed = train(p, paths_in(v2_workspace))
    assert resumed["resumed_from"] == 2 and resumed["final_loss"] == pytest.approx(uninterrupted["final_loss"], abs=1e-6)
    again = merged_weights(v2_workspace)
    assert max(float((again[k] - weights[k]).abs().max()) for k in weights) < 1e-6




@pytest.mark.parametrize("extra", [{}, {"hard_negatives": 1}, {"hard_negatives": 1, "gc_chunk_size": 3}],
                         ids=["one-pass", "one-pass-negatives", "gradcache"])
def test_sub_batches_by_kind_train_what_one_padded_batch_trains(v2_workspace, extra):
    """Text, image, page and video rows embedded apart (`train.sub_batches: kind`, video rows no
    longer padding the others) give the loss and weights of one padded batch per side, up to float
    rounding, with and without GradCache (whose loss then sees sorted rows put back in order)."""
    settings = {**MIXED, "batch_size": 6, "homogeneous_batch": 1, **extra}  # every batch mixes kinds
    def padding() -> float:  # metrics.json: the mean share of token positions that were padding
        return json.loads((v2_workspace / "metrics/train/metrics.json").read_text())["padding"]

    together = train(params(**settings, sub_batches="none"), paths_in(v2_workspace))
    weights, padded_together = merged_weights(v2_workspace), padding()
    shutil.rmtree(v2_workspace / "models/checkpoints")  # sub_batches is not fingerprinted: it would resume
    apart = train(params(**settings, sub_batches="kind"), paths_in(v2_workspace))
    assert apart["final_loss"] == pytest.approx(together["final_loss"], rel=1e-5)
    again = merged_weights(v2_workspace)
    assert max(float((again[k] - weights[k]).abs().max()) for k in weights) < 1e-5
    assert 0 <= padding() < 0.7 * padded_together and padded_together > 0.3  # video rows padded the others
def test_qwen3_vl_trains_the_mixture_and_gradcache_gives_the_one_pass_loss(v2_workspace):
    """A tiny Qwen3-VL base (deepstack vision features, timestamped video text, per-patch video
    grids) through the same recipe: image, page and video pairs train, and GradCache chunks, which
    replay the vision features of their no-grad pass, give the one-pass loss."""
    from trainer.backbone.families import build_tiny, save_backbone

    shutil.rmtree(v2_workspace / "models/base")
    save_backbone(build_tiny("qwen3_vl", seed=0), v2_workspace / "models/base")
    one_pass = train(params(**MIXED, hard_negatives=1), paths_in(v2_workspace, ids_log=v2_workspace / "ids.jsonl"))
    assert trained_datasets(v2_workspace) == {DOC, V1, VIDEO_CAPTION, VIDEO_RETRIEVAL}
    shutil.rmtree(v2_workspace / "models/checkpoints")  # else the chunked run resumes the one-pass run's end
    chunked = train(params(**MIXED, hard_negatives=1, gc_chunk_size=2), paths_in(v2_workspace))
    assert torch.isfinite(torch.tensor(one_pass["final_loss"]))
    assert chunked["final_loss"] == pytest.approx(one_pass["final_loss"], abs=1e-4)


def test_training_in_the_qwen3_vl_embedding_chat_format_records_it_for_scoring(v2_workspace):
    """prompt: qwen3-vl-embedding trains on the chat strings (V2 pairs split at their instruction),
    its lineage records the style, and the embedding API loads the embedder with it."""
    from trainer.backbone.families import build_tiny, save_backbone
    from trainer.embed import EmbeddingModel

    shutil.rmtree(v2_workspace / "models/base")
    save_backbone(build_tiny("qwen3_vl", seed=0), v2_workspace / "models/base")
    chat = train(params(**MIXED, prompt="qwen3-vl-embedding"), paths_in(v2_workspace))
    lineage = json.loads((v2_workspace / "models/embedder/lineage.json").read_text())
    assert lineage["collation"]["prompt"] == "qwen3-vl-embedding"
    assert EmbeddingModel.load(v2_workspace / "models/embedder").collator.prompt == "qwen3-vl-embedding"
    shutil.rmtree(v2_workspace / "models/checkpoints")
    plain = train(params(**MIXED), paths_in(v2_workspace))
    assert chat["final_loss"] != pytest.approx(plain["final_loss"], abs=1e-4)  # other strings, other losses
