"""DVC stage `retrain`: round two, training on the shards with mined negatives.

    python -m stages.retrain      # params: retrain (start, steps, hard_negatives, batching, cluster_size),
                                  # every other key train's

models/base (retrain.start: base) or round one's models/embedder (retrain.start: embedder) +
data/shards/mined -> models/embedder_round2 (+ models/checkpoints_round2, metrics/train_round2). The
recipe is train's (`trainer.train.recipe.train`) with retrain.steps steps and retrain.hard_negatives
explicit negatives per query, the first of each record's negatives: the mined ones (docs/mining.md).
retrain.batching mined_clusters draws each batch from clusters of the mine stage's kNN graph
(data/mined; `trainer.train.clusters`) and counts them in metrics/train_round2/metrics.json under `mined_batches`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stages.common import cli, finish, start
from trainer.train.clusters import MinedBatching
from trainer.train.paths import TrainPaths
from trainer.train.recipe import train

STARTS = {"base": Path("models/base"), "embedder": Path("models/embedder/merged")}
MINED = Path("data/mined")
PATHS = {"shards": Path("data/shards/mined"), "out": Path("models/embedder_round2"),
         "checkpoints": Path("models/checkpoints_round2"), "metrics": Path("metrics/train_round2")}


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, paths=PATHS)
    r = params.retrain
    recipe = replace(params.train, steps=r.steps, hard_negatives=r.hard_negatives)
    paths = TrainPaths(base=STARTS[r.start], **{name: getattr(args, name) for name in PATHS})
    batching = MinedBatching(MINED, r.cluster_size) if r.batching == "mined_clusters" else None
    return finish("retrain", lambda: train(recipe, paths, batching))


if __name__ == "__main__":
    cli(main)
