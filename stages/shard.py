"""DVC stage `shard`: data/normalized/train + data/normalized/images -> data/shards/train.

    python -m stages.shard                # params: shard (and train.image_max_pixels, its resolution)
    python -m stages.shard --mined data/mined --out data/shards/mined     # stage shard_mined

With --mined (the mine stage's output) every record's mined negatives come first among its
negatives, the source's own after them (`pipelines.mined`): round two's shards.

Writes `data/shards/train/<dataset>/<dataset>-NNNNNN.tar` and `data/shards/train/index.json`
(`pipelines.shard`: the sample layout and the determinism guarantees). The output folder is cleared
first, so a run killed midway and restarted ends with the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.imagestore import without_pandas
from pipelines.shard import shard
from stages.common import cli, finish, start

PATHS = {"normalized": Path("data/normalized/train"), "images": Path("data/normalized/images"),
         "out": Path("data/shards/train")}


def _mined_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mined", type=Path, default=None, help="join the mined negatives of this folder")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, paths=PATHS, extra=_mined_option)
    return finish("shard", lambda: shard(args.normalized, args.images, args.out, params.shard, args.mined),
                  writing=[args.out])


if __name__ == "__main__":
    without_pandas()  # a stage process: pyarrow would import pandas for nothing
    cli(main)
