"""DVC stage `shard`: data/normalized/train + data/normalized/images -> data/shards/train.

    python -m stages.shard                # what dvc.yaml runs; params from params.yaml `shard`

Writes `data/shards/train/<dataset>/<dataset>-NNNNNN.tar` and `data/shards/train/index.json`
(see pipelines/shard.py for the sample layout and the determinism guarantees). The output folder is
cleared first, so a run killed midway and restarted ends with the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipelines.imagestore import without_pandas
from pipelines.shard import ShardParams, write_shards
from stages.common import load_params, setup_logging

NORMALIZED_TRAIN = Path("data/normalized/train")
IMAGES = Path("data/normalized/images")
OUT = Path("data/shards/train")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normalized", type=Path, default=NORMALIZED_TRAIN)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--params", type=Path, default=None, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    log = setup_logging("stages.shard")
    params = ShardParams.from_params(load_params("shard", path=args.params))
    if args.out.exists():
        log.info("clearing %s", args.out)
        shutil.rmtree(args.out)
    return write_shards(args.normalized, args.images, args.out, params)


if __name__ == "__main__":
    without_pandas()  # a stage process: pyarrow would import pandas (0.4 s) for nothing
    main()
