"""benchmarks/gpu_train.py: the trainer's loop under each train.compile setting, on CPU with the tiny
base (the device machine runs the same code on a Qwen2-VL-2B-shaped model)."""

import json

import pytest
import torch
from PIL import Image

from benchmarks import gpu_train
from trainer.backbone.families import load_backbone
from trainer.embed import make_side
from trainer.model.inputs import Collator


@pytest.mark.slow
def test_compiled_variants_of_the_loop_train_what_eager_trains(workspace, tmp_path):
    out = tmp_path / "gpu_train.json"
    swapped = [(gpu_train.live, "open_live"), (gpu_train.recipe, "export"), (gpu_train.build, "compile_blocks"),
               (gpu_train.build, "compile_language_model")]
    trainer_functions = {(module, name): getattr(module, name) for module, name in swapped}
    code = gpu_train.main(["--tiny", "--base", str(workspace / "models/base"), "--shards",
                           str(workspace / "data/shards/train"), "--variants",
                           "eager,region,cuda-graphs,eager-one-batch", "--steps", "4", "--skip", "1",
                           "--workers", "0", "--multiple", "8", "--out", str(out)])
    assert code == 0
    # the stand-ins (dvclive's recorder, the export capture, aot_eager) were for those runs only
    assert all(getattr(module, name) is f for (module, name), f in trainer_functions.items())
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert [r["status"] for r in results.values()] == ["ok"] * 4
    assert results["eager"]["graphs"] == 0 and results["eager"]["steps"] == 4
    # params.yaml's sub-batches by kind, except where the variant (or cuda-graphs) keeps one batch
    assert {n: r["sub_batches"] for n, r in results.items()} == {
        "eager": "kind", "region": "kind", "cuda-graphs": "none", "eager-one-batch": "none"}
    assert results["eager-one-batch"]["loss_rel_max"] < 1e-5
    for name in ("region", "cuda-graphs"):
        r = results[name]
        assert r["graphs"] > 0 and r["pad_to_multiple_of"] == 8 and r["pairs_per_s"] > 0
        assert r["loss_rel_max"] < 1e-4 and r["weights_rel"] < 1e-4, r
    assert all(loss is not None for loss in results["eager"]["losses"])


def test_a_failing_variant_is_recorded_and_the_run_goes_on(workspace, tmp_path, monkeypatch):
    out = tmp_path / "gpu_train.json"

    def broken(*args, **kwargs):
        raise RuntimeError("no graph today")

    monkeypatch.setattr(gpu_train.recipe, "train", broken)
    code = gpu_train.main(["--tiny", "--base", str(workspace / "models/base"), "--shards",
                           str(workspace / "data/shards/train"), "--variants", "eager,blocks", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert code == 1 and [r["status"] for r in results] == ["error: RuntimeError: no graph today"] * 2


def test_the_2b_shape_keeps_the_base_tokenizer_and_reaches_the_model_at_the_benchmark_resolution(
        workspace, tmp_path, monkeypatch):
    # the 2B sizes shrunk so that the test builds in a second; the plumbing is the same
    monkeypatch.setattr(gpu_train, "TEXT_2B", dict(gpu_train.TEXT_2B, hidden_size=64, num_attention_heads=4,
                                                   intermediate_size=128,
                                                   rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                                                        mrope_section=[2, 3, 3])))
    monkeypatch.setattr(gpu_train, "VISION_2B", dict(gpu_train.VISION_2B, depth=2, embed_dim=32, num_heads=2,
                                                     hidden_size=64))
    folder = gpu_train.scaled_base(workspace / "models/base", tmp_path / "base2b", layers=3, image_pixels=336 * 336,
                                   device=torch.device("cpu"))
    base, scaled = load_backbone(str(workspace / "models/base")), load_backbone(str(folder))
    text, vision = scaled.model.config.text_config, scaled.model.config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, vision.patch_size, vision.depth) == (3, 64, 14, 2)
    assert scaled.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    assert next(scaled.model.parameters()).dtype == torch.float32  # load_backbone's default; train loads bf16
    batch = Collator(scaled)([make_side("a red circle", "Represent the given image", has_image=True)] * 2,
                             [Image.new("RGB", (64, 48), "red"), Image.new("RGB", (40, 64), "blue")])
    image_id = scaled.model.config.image_token_id
    per_row = (batch["input_ids"] == image_id).sum(dim=1).tolist()
    assert all(abs(n - 144) <= 20 for n in per_row), per_row  # about 336x336 pixels each, aspect kept
    with torch.no_grad():
        scaled.model(**{k: v for k, v in batch.items() if k != "position_ids"})


def test_the_plain_loops_train_the_trainers_batches_to_the_same_losses(workspace, tmp_path):
    out = tmp_path / "gpu_train.json"
    code = gpu_train.main(["--tiny", "--base", str(workspace / "models/base"), "--shards",
                           str(workspace / "data/shards/train"), "--variants", "eager,plain,gc-eager,gc-plain",
                           "--steps", "3", "--skip", "1", "--gc-steps", "2", "--workers", "0", "--out", str(out)])
    assert code == 0
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert [r["status"] for r in results.values()] == ["ok"] * 4
    plain, gc_plain = results["plain"], results["gc-plain"]
    assert plain["batches_of"] == "eager" and gc_plain["batches_of"] == "gc-eager"
    assert (plain["batch"], plain["gc_chunk"], gc_plain["batch"], gc_plain["gc_chunk"]) == (4, 0, 8, 4)
    # the same pairs, weights, LoRA init, optimizer and schedule: the plain loop trains what the trainer trains
    assert plain["loss_rel_max"] < 1e-4 and gc_plain["loss_rel_max"] < 1e-4, (plain, gc_plain)
    for name in ("eager", "gc-eager"):
        r = results[name]
        assert r["vs_plain"] > 0 and 0 <= r["loader_share"] < 1 and r["loader_wait_s"] >= 0
    assert results["gc-eager"]["vs_plain"] == round(results["gc-eager"]["pairs_per_s"] / gc_plain["pairs_per_s"], 3)


def test_shard_pairs_reads_every_pair_with_its_images(workspace):
    from benchmarks.plain_train import ShardPairs

    pairs = ShardPairs(workspace / "data/shards/train")
    index = json.loads((workspace / "data/shards/train/index.json").read_text())
    assert len(pairs) == sum(s["samples"] for s in index["shards"]) == len(pairs.index_of)
    record, images = pairs[0]
    assert images["query"].mode == "RGB" and record["query"]["image"] is not None
    assert (images["target"] is None) == (record["target"].get("image") is None)


def test_shard_pairs_refuse_video_pairs_naming_their_datasets(tmp_path):
    """The plain loop gives the processor pictures as images: shards with video pairs (the default
    run's V2 stand-ins) are refused up front, not trained with their frames lost."""
    from benchmarks.plain_train import ShardPairs
    from pipelines.shard import write_shards
    from tests.support.params import section
    from tests.support.v2_train import VIDEO_CAPTION, build_v2_train

    train_dir, store = build_v2_train(tmp_path / "data", rows=4, frames=2)
    write_shards(train_dir, store, tmp_path / "shards",
                 section("shard", workers=1, image_max_pixels=1024, image_size_multiple=16, max_rows_per_dataset=None,
                         shuffle=True, seed=0, max_samples=4, max_bytes=1 << 20, image_max_side=1000))
    with pytest.raises(ValueError, match=f"video pairs in .*{VIDEO_CAPTION}.*v2_train_sets"):
        ShardPairs(tmp_path / "shards")
