"""Checkpoints: exact round trip of weights/optimizer/scheduler/RNG, atomicity, pruning, fingerprints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainer.train import checkpoint as C


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter must not be saved
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3) * max(0.0, 1 - s / 20))
    return model, opt, sched


def _step(model, opt, sched):
    x = torch.randn(5, 4)  # draws from the global RNG, like dropout
    loss = model(x).pow(2).mean() + random.random() * 0 + float(np.random.rand()) * 0
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _save(root, step, model, opt, sched, fp="fp", keep=2):
    return C.save_checkpoint(root, step, model=model, optimizer=opt, scheduler=sched, fingerprint=fp,
                             stream={"step": step}, rng_per_rank=[C.capture_rng()], extra={"loss": 1.5}, keep=keep)


def test_resume_continues_bit_exactly(tmp_path):
    model, opt, sched = _setup()
    for _ in range(4):
        _step(model, opt, sched)
    path = _save(tmp_path, 4, model, opt, sched)
    for _ in range(5):
        _step(model, opt, sched)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    model2, opt2, sched2 = _setup(seed=99)  # different init: everything must come from the checkpoint
    with torch.no_grad():
        model2[0].bias.copy_(model[0].bias)  # frozen: the base model's job, not the checkpoint's
    state = C.load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 4 and state["stream"] == {"step": 4} and state["extra"] == {"loss": 1.5}
    C.restore_rng(state["rng"])
    for _ in range(5):
        _step(model2, opt2, sched2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws


def test_cuda_rng_states_of_more_gpus_than_this_node_has_restore_the_ones_it_has(monkeypatch):
    """A checkpoint written on an 8-GPU node (one CUDA RNG state per visible GPU) resumed on a 2-GPU
    node: torch.cuda.set_rng_state_all would index a generator that does not exist."""
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state))
    state = C.capture_rng()
    state["torch_cuda"] = [torch.full((4,), d, dtype=torch.uint8) for d in range(8)]
    C.restore_rng(state)
    assert sorted(restored) == [0, 1] and all(int(restored[d][0]) == d for d in (0, 1))


def test_files_are_safetensors_and_json_only(tmp_path):
    model, opt, sched = _setup()
    _step(model, opt, sched)
    path = _save(tmp_path, 1, model, opt, sched)
    assert sorted(p.name for p in path.iterdir()) == [
        "digests.json", "optimizer.safetensors", "rng.safetensors", "state.json", "trainable.safetensors"]
    weights = load_file(path / "trainable.safetensors")
    assert sorted(weights) == ["0.weight", "2.bias", "2.weight"]  # the frozen 0.bias is not saved
    assert sorted(load_file(path / "optimizer.safetensors")) == sorted(
        f"state.{i}.{k}" for i in range(3) for k in ("step", "exp_avg", "exp_avg_sq"))
    json.loads((path / "state.json").read_text())


def test_keeps_newest_and_ignores_partial_writes(tmp_path):
    model, opt, sched = _setup()
    for step in (2, 4, 6):
        _save(tmp_path, step, model, opt, sched)
    assert [p.name for p in C.list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    # a run killed mid-write leaves a temp folder (`pipelines.files.temporary`, its pid gone), or a step
    # folder without state.json: both ignored
    killed = 99999999  # above any pid_max: no such process
    (tmp_path / f".step-000008.tmp-{killed}").mkdir()
    (tmp_path / f".step-000008.tmp-{killed}" / "trainable.safetensors").write_bytes(b"partial")
    (tmp_path / f".step-000012.tmp-{killed}").mkdir()
    (tmp_path / "step-000010").mkdir()
    assert C.latest_checkpoint(tmp_path, "fp").name == "step-000006"
    _save(tmp_path, 8, model, opt, sched)
    assert not (tmp_path / f".step-000008.tmp-{killed}").exists()
    assert not (tmp_path / f".step-000012.tmp-{killed}").exists()  # a killed save of another step
    assert C.latest_checkpoint(tmp_path, "fp").name == "step-000008"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000006", "step-000008", "step-000010"]


@pytest.mark.parametrize("fault", ["overwrite", "truncate", "no digests"])
def test_a_checkpoint_that_does_not_verify_is_passed_over_for_an_older_one(tmp_path, caplog, fault):
    model, opt, sched = _setup()
    for step in (2, 4):
        _save(tmp_path, step, model, opt, sched)
    newest = tmp_path / "step-000004" / "trainable.safetensors"
    recorded = json.loads((tmp_path / "step-000004" / "digests.json").read_text())["files"]
    if fault == "overwrite":  # same size, other bytes
        data = bytearray(newest.read_bytes())
        data[-8:] = bytes(8) if data[-8:] != bytes(8) else b"\xff" * 8
        newest.write_bytes(bytes(data))
    elif fault == "truncate":
        newest.write_bytes(newest.read_bytes()[:20])
    else:
        (tmp_path / "step-000004" / "digests.json").unlink()
    rejected = []
    assert C.latest_checkpoint(tmp_path, "fp", rejected).name == "step-000002"
    assert len(rejected) == 1 and rejected[0].startswith("step-000004: ")
    if fault != "no digests":
        assert f"{newest}" in caplog.text and recorded["trainable.safetensors"]["sha256"] in caplog.text
    assert "falling back" in caplog.text
    (tmp_path / "step-000002" / "state.json").write_text("{")  # and none verifies: start afresh
    assert C.latest_checkpoint(tmp_path, "fp") is None


def test_mismatched_fingerprint_is_not_resumed(tmp_path, caplog):
    model, opt, sched = _setup()
    _save(tmp_path, 3, model, opt, sched, fp="other-run")
    assert C.latest_checkpoint(tmp_path, "this-run") is None
    assert "different params" in caplog.text
    (tmp_path / ".step-000004.tmp-99999999").mkdir()  # and a killed writer's temporary
    (tmp_path / "other").mkdir()
    C.remove_checkpoints(tmp_path)
    assert C.list_checkpoints(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["other"]


def test_load_rejects_a_different_model(tmp_path):
    model, opt, sched = _setup()
    path = _save(tmp_path, 1, model, opt, sched)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 3))
    opt2 = torch.optim.AdamW(other.parameters())
    with pytest.raises(ValueError, match="does not fit|shape"):
        C.load_checkpoint(path, model=other, optimizer=opt2,
                          scheduler=torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))


def test_fingerprint(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    index = tmp_path / "index.json"
    index.write_text("{}")
    params = {"seed": 0, "lora_rank": 16, "save_every": 100, "num_workers": 2}
    fp = C.fingerprint(params, base, index)
    assert fp == C.fingerprint({**params, "save_every": 7, "num_workers": 0}, base, index)
    assert fp != C.fingerprint({**params, "lora_rank": 8}, base, index)
    (base / "model.safetensors").write_bytes(b"weightz")
    assert fp != C.fingerprint(params, base, index)
    (base / "model.safetensors").write_bytes(b"weights")
    assert fp == C.fingerprint(params, base, index)
    index.write_text('{"x": 1}')
    assert fp != C.fingerprint(params, base, index)
    index.write_text("{}")
    assert C.fingerprint(params, base, index, code="a") not in (fp, C.fingerprint(params, base, index, code="b"))


def test_every_param_that_changes_the_math_changes_the_fingerprint(tmp_path):
    """Every `train` key of params.yaml is in the fingerprint but the speed and bookkeeping switches: a
    checkpoint of another temperature, step count or number of hard negatives is never resumed."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    index = tmp_path / "index.json"
    index.write_text("{}")
    params = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())["train"]
    fp = C.fingerprint(params, base, index)
    speed_only = {"save_every", "num_workers", "batched_vision_attention", "compile", "fsdp", "pad_to_multiple_of",
                  "sub_batches"}
    assert set(C.NOT_IN_FINGERPRINT) == speed_only

    def other(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value + 1
        return {"A": 1} if isinstance(value, dict) or value == "proportional" else f"{value}x"

    for key, value in params.items():
        changed = C.fingerprint({**params, key: other(value)}, base, index)
        assert (changed == fp) == (key in speed_only), key
    # the base model's file names count, not only their bytes
    (base / "model.safetensors").rename(base / "other.safetensors")
    assert C.fingerprint(params, base, index) != fp
