"""DVC stage `train`: models/base + data/shards/train -> models/embedder (+ models/checkpoints, metrics/train).

    python -m stages.train                                   # what dvc.yaml runs (params.yaml `train`)
    torchrun --nproc_per_node 8 -m stages.train              # DDP over 8 GPUs, same outputs

Resumes from the newest checkpoint in models/checkpoints made with the same params, base model,
shards, training code and number of data slots (`trainer.train.recipe.run_fingerprint`; a run killed at any
moment and re-run ends with the same weights); checkpoints of other params are removed with a warning. Set VLM2VEC_TRAIN_IDS_LOG=<file> to log the record ids of every step
(JSON lines; debugging and the resume test). See trainer/train/recipe.py for the recipe and the outputs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stages.common import load_params, setup_logging
from trainer.train.recipe import TrainPaths, train


def main(argv: list[str] | None = None) -> dict:
    defaults = TrainPaths()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=defaults.base)
    parser.add_argument("--shards", type=Path, default=defaults.shards)
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--checkpoints", type=Path, default=defaults.checkpoints)
    parser.add_argument("--metrics", type=Path, default=defaults.metrics)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    parser.add_argument("--ids-log", type=Path, default=os.environ.get("VLM2VEC_TRAIN_IDS_LOG") or None)
    args = parser.parse_args(argv)
    setup_logging("stages.train")
    params = load_params("train", path=args.params)
    paths = TrainPaths(base=args.base, shards=args.shards, out=args.out, checkpoints=args.checkpoints,
                       metrics=args.metrics, ids_log=args.ids_log)
    return train(params, paths)


if __name__ == "__main__":
    main()
