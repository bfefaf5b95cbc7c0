"""Resuming a run: which checkpoints are resumed (the fingerprint), a rerun after completion, the
metrics history a resume continues, and exact resume after a real SIGKILL of the stage."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from dataclasses import replace

import numpy as np
import pytest

from pipelines.errors import IntegrityError
from tests.support.faults import overwrite
from tests.support.train_workspace import merged_weights, params, paths_in, stage_cmd
from trainer import provenance
from trainer.train import checkpoint as C
from trainer.train.recipe import run_fingerprint, train


def test_a_checkpoint_is_not_resumed_across_a_change_of_the_base_weights_dtype(workspace):
    """train.fsdp is left out of the fingerprint (speed only), except where it changes the weights:
    a LoRA run under bf16 keeps its base in bf16 with DDP and in float32 with FSDP."""
    paths, index = paths_in(workspace), workspace / "data/shards/train/index.json"
    lora_bf16 = params(precision="bf16")
    sharded = replace(lora_bf16, fsdp=True)
    assert run_fingerprint(lora_bf16, paths, index, 2) != run_fingerprint(sharded, paths, index, 2)
    assert run_fingerprint(lora_bf16, paths, index, 1) == run_fingerprint(sharded, paths, index, 1)
    full = params(precision="bf16", lora_rank=0)
    assert run_fingerprint(full, paths, index, 2) == run_fingerprint(replace(full, fsdp=True), paths, index, 2)


def test_rerun_after_completion_resumes_at_the_end_and_is_byte_identical(workspace):
    train(params(), paths_in(workspace))
    first = (workspace / "models/embedder/merged/model.safetensors").read_bytes()
    first_lineage = (workspace / "models/embedder/lineage.json").read_bytes()
    summary = train(params(), paths_in(workspace))
    assert summary["resumed_from"] == 6
    assert (workspace / "models/embedder/merged/model.safetensors").read_bytes() == first
    assert (workspace / "models/embedder/lineage.json").read_bytes() == first_lineage


def test_a_resume_continues_the_checkpoints_metrics_history_not_the_workspaces(workspace):
    """git restores metrics/train/ with a checkout of another run (it is git-tracked) but nothing restores
    models/checkpoints: after a LoRA run, `git checkout` of the baseline and the same LoRA run again, the
    rerun resumed the LoRA checkpoint and summarised the baseline's loss curve as the LoRA run's."""
    p = params(steps=4, save_every=2)
    train(p, paths_in(workspace))
    plots = workspace / "metrics/train/plots/metrics"
    curve = (plots / "loss.tsv").read_text()
    summary = json.loads((workspace / "metrics/train/metrics.json").read_text())
    for tsv in plots.glob("*.tsv"):  # another run's history, as a checkout of its commit leaves it
        name = tsv.stem
        tsv.write_text(f"timestamp\tstep\t{name}\n" + "".join(f"0\t{i}\t99.0\n" for i in range(4)))
    assert train(p, paths_in(workspace))["resumed_from"] == 4
    assert (plots / "loss.tsv").read_text() == curve
    assert json.loads((workspace / "metrics/train/metrics.json").read_text()) == summary


def test_stale_checkpoint_of_other_params_is_not_resumed(workspace, caplog):
    train(params(steps=3), paths_in(workspace))
    summary = train(params(steps=3, learning_rate=0.001), paths_in(workspace))
    assert summary["resumed_from"] == 0
    assert "different params" in caplog.text
    fingerprints = {json.loads((p / "state.json").read_text())["fingerprint"]
                    for p in C.list_checkpoints(workspace / "models/checkpoints")}
    assert len(fingerprints) == 1


def test_a_checkpoint_of_other_code_or_other_data_slots_is_not_resumed(workspace, caplog, monkeypatch):
    """A rerun after a code change (DVC reruns train when a code dep changes) or with another number
    of data slots (num_workers sets a fresh run's data order) trains afresh: resuming the finished
    checkpoint would export the old run's weights under the new code or params."""
    first = train(params(steps=3), paths_in(workspace))
    assert train(params(steps=3), paths_in(workspace))["resumed_from"] == 3  # same: resumed
    assert train(params(steps=3, num_workers=1), paths_in(workspace))["resumed_from"] == 3
    assert train(params(steps=3, num_workers=2), paths_in(workspace))["resumed_from"] == 0
    real = provenance.source_digest
    monkeypatch.setattr(provenance, "source_digest", lambda m, *a: "edited" + real(m, *a))
    again = train(params(steps=3, num_workers=2), paths_in(workspace))
    assert again["resumed_from"] == 0 and "different params" in caplog.text
    lineage = json.loads((workspace / "models/embedder/lineage.json").read_text())
    assert lineage["code_digest"].startswith("edited") and np.isfinite(first["final_loss"])


@pytest.mark.slow
def test_sigkill_then_rerun_ends_with_the_same_weights(workspace, tmp_path):
    p = params(steps=24, save_every=5, lora_dropout=0.1, num_workers=2)
    # reference: one uninterrupted run of the stage
    ref = tmp_path / "ref"
    shutil.copytree(workspace, ref)
    cmd, env = stage_cmd(ref, p)
    subprocess.run(cmd, cwd=ref, env=env, check=True, capture_output=True)

    cmd, env = stage_cmd(workspace, p)
    proc = subprocess.Popen(cmd, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        rng = random.Random(0)
        saved = rng.choice([1, 2])  # after the first or second checkpoint (steps 5, 10; the run has 24) ...
        while len(C.list_checkpoints(workspace / "models/checkpoints")) < saved:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))  # ... at a random moment: mid-step, mid-save or between
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


@pytest.mark.parametrize("fault", ["overwrite", "truncate"])
def test_a_checkpoint_that_does_not_verify_is_passed_over_and_training_ends_as_uninterrupted(workspace, caplog,
                                                                                            fault):
    """Bytes overwritten inside the final checkpoint's weights (same size) used to be resumed and
    exported as a different model; a truncated one stopped the run with an error naming no file.
    Now the run falls back to the newest checkpoint that verifies, says so in the log and in
    metrics.json, trains the steps again and exports the weights of an uninterrupted run."""
    first = train(params(), paths_in(workspace))
    weights = merged_weights(workspace)
    bad = workspace / "models/checkpoints/step-000006/trainable.safetensors"
    recorded = json.loads((bad.parent / "digests.json").read_text())["files"]["trainable.safetensors"]
    data = bytearray(bad.read_bytes())
    if fault == "overwrite":
        start = len(data) // 3
        data[start:start + 64 * 1024] = bytes(64 * 1024)
    else:
        data = data[: len(data) // 2]
    bad.write_bytes(bytes(data))

    again = train(params(), paths_in(workspace))
    assert again["resumed_from"] == 3 and len(again["rejected_checkpoints"]) == 1
    assert again["final_loss"] == pytest.approx(first["final_loss"], abs=1e-5)
    assert str(bad) in caplog.text and recorded["sha256"] in caplog.text and "falling back" in caplog.text
    assert json.loads((workspace / "metrics/train/metrics.json").read_text())["rejected_checkpoints"] == 1
    resumed = merged_weights(workspace)
    assert max(float((resumed[k] - weights[k]).abs().max()) for k in weights) < 1e-6
    assert C.latest_checkpoint(workspace / "models/checkpoints", json.loads(
        (bad.parent / "state.json").read_text())["fingerprint"]).name == "step-000006"  # rewritten, verifies


def test_no_checkpoint_verifies_then_training_starts_afresh(workspace, caplog):
    train(params(steps=3), paths_in(workspace))
    (workspace / "models/checkpoints/step-000003/optimizer.safetensors").write_bytes(b"\0" * 16)
    assert train(params(steps=3), paths_in(workspace))["resumed_from"] == 0
    assert "optimizer.safetensors: truncated" in caplog.text


def test_a_base_model_whose_bytes_changed_is_not_trained(workspace):
    weights = workspace / "models/base/model.safetensors"
    overwrite(weights, 4096)
    with pytest.raises(IntegrityError, match="models/base/model.safetensors: contents changed") as e:
        train(params(steps=3), paths_in(workspace))
    assert e.value.found != e.value.expected and not (workspace / "models/embedder").exists()
