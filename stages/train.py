"""DVC stage `train`: models/base + data/shards/train -> models/embedder (+ models/checkpoints, metrics/train).

    python -m stages.train                                   # what dvc.yaml runs (params.yaml `train`)
    torchrun --nproc_per_node 8 -m stages.train              # DDP over 8 GPUs, same outputs

Resumes from the newest checkpoint in models/checkpoints made with the same params, base model,
shards, training code and number of data slots (`trainer.train.recipe.run_fingerprint`; a run killed
at any moment and re-run ends with the same weights); checkpoints of other params are removed with a
warning. Set VLM2VEC_TRAIN_IDS_LOG=<file> (or --ids-log) to log the record ids of every step (JSON
lines; debugging and the resume test). See trainer/train/recipe.py for the recipe and the outputs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stages.common import cli, finish, start
from trainer.train.paths import TrainPaths
from trainer.train.recipe import train

IDS_LOG_ENV = "VLM2VEC_TRAIN_IDS_LOG"


def _ids_log_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ids-log", type=Path, default=os.environ.get(IDS_LOG_ENV) or None,
                        help=f"JSON lines of every step's record ids (default: ${IDS_LOG_ENV}, else none)")


def main(argv: list[str] | None = None) -> int:
    defaults = TrainPaths()
    layout = {"base": defaults.base, "shards": defaults.shards, "out": defaults.out,
              "checkpoints": defaults.checkpoints, "metrics": defaults.metrics}
    args, params = start(__doc__, argv, paths=layout, extra=_ids_log_option)
    paths = TrainPaths(base=args.base, shards=args.shards, out=args.out, checkpoints=args.checkpoints,
                       metrics=args.metrics, ids_log=args.ids_log)
    return finish("train", lambda: train(params.train, paths), writing=[paths.out, paths.checkpoints, paths.metrics])


if __name__ == "__main__":
    cli(main)
