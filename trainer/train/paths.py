"""Where a training run reads and writes: the train stage's files, the DVC layout by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainPaths:
    base: Path = Path("models/base")  # the base model (stage backbone)
    shards: Path = Path("data/shards/train")  # the train shards and their index.json (stage shard)
    out: Path = Path("models/embedder")  # the exported embedder
    checkpoints: Path = Path("models/checkpoints")  # checkpoints of this run, for exact resume
    metrics: Path = Path("metrics/train")  # dvclive's metrics and plots
    ids_log: Path | None = None  # debug: JSON lines {"step", "rank", "ids"} of the pairs of every step
