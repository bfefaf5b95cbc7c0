"""Setting up the model a run trains (`trainer.train.build`): the weights' dtypes, AdamW's parameter
groups, and the speed switches (batched vision attention, torch.compile's scopes), which must train
the weights of the stock eager run."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from tests.support.train_workspace import merged_weights, params, paths_in
from trainer.train import build
from trainer.train.build import compile_model, optimizer_groups, trainable_parameters
from trainer.train.recipe import train


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
    from trainer.train.build import apply_lora, base_dtype

    tiny = build_tiny("qwen2_vl", seed=0, image_size=32, hidden_size=64, layers=2)
    tiny.model.to(torch.bfloat16)  # stored in bf16, as Hub checkpoints are
    save_backbone(tiny, tmp_path / "base")
    p = params(precision=precision, lora_rank=lora_rank, lora_dtype=lora_dtype, fsdp=fsdp)
    model = apply_lora(load_backbone(str(tmp_path / "base"), torch_dtype=base_dtype(p, world)), p).model
    assert {q.dtype for q in model.parameters() if q.requires_grad} == {trainable}
    assert {q.dtype for q in model.parameters() if not q.requires_grad} == ({frozen} if frozen else set())


def test_weight_decay_spares_biases_and_norm_weights_as_hf_trainer():
    """HF Trainer (VLM2Vec) decays weights only: biases and LayerNorm/RMSNorm weights get none."""
    from torch import nn
    from transformers.trainer_pt_utils import get_parameter_names

    from trainer.backbone.families import build_tiny

    model = build_tiny("qwen2_vl").model
    names = {id(q): n for n, q in model.named_parameters()}
    decay, spared = optimizer_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    # HF Trainer's own rule (Trainer.get_decay_parameter_names) as the reference
    hf_decay = set(get_parameter_names(model, [nn.LayerNorm], [r"bias", r"layernorm", r"rmsnorm",
                                                              r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    assert {names[id(q)] for q in decay["params"]} == hf_decay
    assert {names[id(q)] for q in spared["params"]} == {n for n, _ in model.named_parameters()} - hf_decay
    assert any(n.endswith("q_proj.weight") for n in (names[id(q)] for q in decay["params"]))
    assert len(decay["params"]) + len(spared["params"]) == len(trainable_parameters(model))
    (only,) = optimizer_groups(model, 0.0)  # no decay: one group, as before
    assert only["params"] == trainable_parameters(model)


def test_batched_vision_attention_and_compiled_blocks_train_the_same_weights(workspace, tmp_path, monkeypatch):
    """train.batched_vision_attention and train.compile change speed only: full fine-tuning (gradients
    through the vision tower too) ends with the weights of the stock eager run, and resumes from its
    checkpoints (the switches are not in the fingerprint)."""
    from trainer.model import acceleration

    compiled = []

    def compile_on_cpu(model):  # inductor would spend minutes compiling C++ here; aot_eager traces the same graphs
        compiled.append(acceleration.compile_blocks(model, backend="aot_eager"))
        return compiled[-1]

    monkeypatch.setattr(build, "compile_blocks", compile_on_cpu)
    weights = {}
    for fast in (False, True):
        ws = tmp_path / f"fast{fast}"
        shutil.copytree(workspace, ws)
        train(params(steps=2, save_every=100, lora_rank=0, batched_vision_attention=fast, compile=fast), paths_in(ws))
        weights[fast] = merged_weights(ws)
    assert compiled == [4]  # 2 decoder layers + 2 vision blocks, in the fast run only
    assert all(torch.allclose(weights[True][k], weights[False][k], rtol=1e-4, atol=1e-6) for k in weights[False])
    summary = train(params(steps=2, save_every=100, lora_rank=0, batched_vision_attention=True),
                    paths_in(tmp_path / "fastFalse"))
    assert summary["resumed_from"] == 2


def test_language_model_region_and_cuda_graph_steps_train_the_same_weights(workspace, tmp_path, monkeypatch):
    """train.compile region / cuda-graphs with train.pad_to_multiple_of: the language model compiled as
    one region, every step marked as a new CUDA-graph step (cuda-graphs only), lengths padded to the
    multiple, and the weights of the eager unpadded run."""
    from trainer.model import acceleration
    from trainer.model.inputs import Collator

    compiled, marks, lengths = [], [], set()
    monkeypatch.setattr(build, "compile_language_model", lambda m, cuda_graphs: compiled.append(
        (cuda_graphs, acceleration.compile_language_model(m, cuda_graphs=cuda_graphs, backend="aot_eager"))))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    original = Collator._pad_length

    def pad_length(self, enc):
        out = original(self, enc)
        lengths.add((self.pad_to_multiple_of, out["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(Collator, "_pad_length", pad_length)
    steps = 3
    weights = {}
    for scope, multiple in ((False, 1), ("region", 8), ("cuda-graphs", 8)):
        ws = tmp_path / f"compile-{scope}"
        shutil.copytree(workspace, ws)
        train(params(steps=steps, save_every=100, num_workers=0, compile=scope, pad_to_multiple_of=multiple),
              paths_in(ws))
        weights[scope] = merged_weights(ws)
    torch._dynamo.reset()
    assert compiled == [(False, 2), (True, 2)]  # the 2 vision blocks one by one, the language model as a region
    assert len(marks) == steps  # cuda-graphs only, once per step
    padded = {n for m, n in lengths if m == 8}
    assert padded and all(n % 8 == 0 for n in padded) and any(n % 8 for m, n in lengths if m == 1)
    for scope in ("region", "cuda-graphs"):
        assert all(torch.allclose(weights[scope][k], weights[False][k], rtol=1e-4, atol=1e-6) for k in weights[False])


def test_compile_settings_that_cannot_work_are_refused_before_training():
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

    warned = {}
    for multiple in (1, 64):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trainer.train.build"):
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

    from trainer.model import acceleration

    monkeypatch.setattr(build, "compile_blocks", lambda m: acceleration.compile_blocks(m, backend="aot_eager"))
    weights = {}
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        for fast in (False, True):
            ws = tmp_path / f"compile{fast}"
            shutil.copytree(workspace, ws)
            train(params(steps=5, save_every=100, gc_chunk_size=3, hard_negatives=1, compile=fast), paths_in(ws))
            weights[fast] = merged_weights(ws)
    torch._dynamo.reset()
    assert "recompile_limit" not in caplog.text and "cache_size_limit" not in caplog.text
    assert all(torch.allclose(weights[True][k], weights[False][k], rtol=1e-4, atol=1e-6) for k in weights[False])
