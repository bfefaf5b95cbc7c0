"""What a run records per step besides its weights: dvclive metrics, the ids log, the progress bar.

    progress = Progress(metrics_dir, ids_log, start_step=0, history=None, steps=..., dist=...)
    progress.record(step, batch, loss, grad_norm, learning_rate)   # every step, on every rank
    progress.summarize(); progress.close()

dvclive writes one tsv per metric (`METRICS`) under ``<metrics_dir>/plots/metrics`` and, at the end,
``metrics.json`` with `run_summary`'s aggregates of the whole history. A resumed run continues the
history its checkpoint saved (`metrics_history`), since git restores metrics/train/ with a checkout
of another run but nothing restores models/checkpoints.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import IO, Any, Mapping

import torch
from tqdm import tqdm

from trainer.distributed import DistInfo
from trainer.train import fsdp

METRICS = ("loss", "learning_rate", "grad_norm", "pairs_per_s", "images_per_s", "quarantined", "padded_negatives",
           "padding")
COUNTS = ("quarantined", "padded_negatives")  # per step, all ranks; metrics.json holds the run's totals


def metrics_history(metrics_dir: Path) -> dict[str, str]:
    """dvclive's per-step tsv files under ``metrics_dir``, by file name: each checkpoint keeps the history
    it continues, since git restores metrics/train/ with a checkout of another run but nothing restores
    models/checkpoints, so the workspace's history can be another run's."""
    return {tsv.name: tsv.read_text(encoding="utf-8")
            for tsv in sorted((metrics_dir / "plots" / "metrics").glob("*.tsv"))}


def _restore_metrics(metrics_dir: Path, history: Mapping[str, str]) -> None:
    """Replace the tsv files under ``metrics_dir`` by a checkpoint's `metrics_history`."""
    plots = metrics_dir / "plots" / "metrics"
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    for name, text in history.items():
        (plots / name).write_text(text, encoding="utf-8")


def _trim_metrics(metrics_dir: Path, start_step: int) -> None:
    """Drop metric rows logged at steps >= start_step (by a run killed after its last checkpoint)."""
    for tsv in (metrics_dir / "plots" / "metrics").glob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        header = lines[0].rstrip("\r\n").split("\t")
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) < start_step]
        tsv.write_text("".join(kept), encoding="utf-8")


def run_summary(metrics_dir: Path) -> dict[str, float]:
    """`metrics.json`'s values for `dvc metrics diff` / `dvc exp show`, from the whole history in
    dvclive's tsv files (a resumed run's earlier steps included), instead of the last step's: loss and
    grad norm are means over the last tenth of the steps (one batch's loss is noise), pairs/s and
    images/s medians over all steps (a checkpoint save slows the step after it), `padding` (the
    share of the model's token positions that were padding) the mean over all steps, the counts
    (`COUNTS`: samples quarantined as undecodable or refused by the collator, negative slots padded)
    summed over the run, learning rate the last. Only metrics present are summarised."""
    series = {}
    for tsv in sorted((metrics_dir / "plots" / "metrics").glob("*.tsv")):
        with tsv.open(encoding="utf-8", newline="") as f:
            series[tsv.stem] = [float(row[tsv.stem]) for row in csv.DictReader(f, delimiter="\t")]
    out = {}
    for name, values in series.items():
        if not values:
            continue
        tail = values[-max(1, math.ceil(len(values) / 10)):]
        if name in ("loss", "grad_norm"):
            out[name] = sum(tail) / len(tail)
        elif name == "padding":
            out[name] = sum(values) / len(values)
        elif name.endswith("_per_s"):
            out[name] = statistics.median(values)
        elif name in COUNTS:
            out[name] = int(sum(values))
        else:
            out[name] = values[-1]
    return out


def open_live(metrics_dir: Path, start_step: int, history: Mapping[str, str] | None = None):
    """A dvclive Live under ``metrics_dir`` that never writes dvc.yaml nor creates experiments;
    fresh runs start a clean history, resumed runs continue at ``start_step`` the checkpoint's
    ``history`` (`metrics_history`), or the workspace's for a checkpoint without one."""
    from dvclive import Live

    if start_step == 0:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    elif history is not None:
        _restore_metrics(metrics_dir, history)
    else:
        _trim_metrics(metrics_dir, start_step)
    live = Live(str(metrics_dir), resume=start_step > 0, save_dvc_exp=False, dvcyaml=None, report=None)
    live.step = start_step
    return live


def open_ids_log(path: Path | None, start_step: int, rank: int, world: int) -> IO[str] | None:
    """The ids log (JSON lines ``{"step", "rank", "ids"}``; ``<path>.rank<r>`` per rank under
    torchrun), keeping what an interrupted run logged before ``start_step``; None without a path."""
    if path is None:
        return None
    path = Path(path) if world == 1 else Path(f"{path}.rank{rank}")
    kept = []
    if start_step > 0 and path.exists():  # keep what the interrupted run logged before its checkpoint
        kept = [ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if json.loads(ln)["step"] < start_step]
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w", encoding="utf-8")
    f.writelines(kept)
    return f


class Progress:
    """A run's per-step records from ``start_step``: dvclive's `METRICS` (rank 0), the ids log, the
    progress bar. `record` is a collective under torchrun (the counts are summed over the ranks)."""

    def __init__(self, metrics_dir: Path, ids_log: Path | None, *, start_step: int,
                 history: Mapping[str, str] | None, steps: int, dist: DistInfo):
        self.metrics_dir, self.dist = metrics_dir, dist
        self.live = open_live(metrics_dir, start_step, history) if dist.rank == 0 else None
        self.ids_log = open_ids_log(ids_log, start_step, dist.rank, dist.world_size)
        self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", disable=dist.rank != 0)
        self.tick = time.perf_counter()

    def record(self, step: int, batch: Mapping[str, Any], loss: float, grad_norm: Any, learning_rate: float) -> None:
        """Log one step: its loss, learning rate, gradient norm, throughput since the last step and
        counts (all ranks'), and this rank's record ids."""
        counts = torch.tensor([batch["pairs"], batch["images"], batch["quarantined"], batch["padded_negatives"],
                               batch.get("tokens", 0), batch.get("positions", 0)],
                              dtype=torch.float64, device=self.dist.device)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(counts)
        now = time.perf_counter()
        elapsed, self.tick = max(now - self.tick, 1e-9), now
        if self.ids_log is not None:
            self.ids_log.write(json.dumps({"step": step, "rank": self.dist.rank, "ids": batch["ids"]}) + "\n")
            self.ids_log.flush()
        if self.live is not None:
            self.live.log_metric("loss", loss)
            self.live.log_metric("learning_rate", learning_rate)
            self.live.log_metric("grad_norm", fsdp.grad_norm_value(grad_norm))
            self.live.log_metric("pairs_per_s", float(counts[0]) / elapsed)
            self.live.log_metric("images_per_s", float(counts[1]) / elapsed)
            self.live.log_metric("quarantined", int(counts[2]))
            self.live.log_metric("padded_negatives", int(counts[3]))
            if counts[5] > 0:  # padding: what sub-batches by kind and pad_to_multiple_of change
                self.live.log_metric("padding", 1.0 - float(counts[4]) / float(counts[5]))
            self.live.next_step()
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")

    def summarize(self, rejected_checkpoints: int = 0, extra: dict | None = None) -> None:
        """After the last step: metrics.json gets `run_summary` of the whole history, ``extra``'s
        entries, and ``rejected_checkpoints`` when the resume fell back past checkpoints that did
        not verify."""
        if self.live is not None:
            self.live.summary.update(run_summary(self.metrics_dir))
            self.live.summary.update(extra or {})
            if rejected_checkpoints:
                self.live.summary["rejected_checkpoints"] = rejected_checkpoints

    def close(self) -> None:
        self.bar.close()
        if self.ids_log is not None:
            self.ids_log.close()
        if self.live is not None:
            self.live.end()
