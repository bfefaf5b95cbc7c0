"""DVC stage `normalize`: data/raw (MMEB Hub layout) -> data/normalized + data/rejects + metrics/etl.json.

    python -m stages.normalize [--raw data/raw] [--out data/normalized] [--rejects data/rejects]
                               [--metrics metrics/etl.json] [--params params.yaml]

Every source row becomes a unified record or a reject with its reason (`pipelines.normalize`; the
record contract: docs/records.md). Exits with 1, after writing the metrics and rejects so they can be
inspected, when a dataset failed or more rows were rejected than normalize.max_reject_fraction in all
or normalize.max_dataset_reject_fraction in one dataset; the message names the worst datasets.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.imagestore import without_pandas
from pipelines.normalize import normalize
from stages.common import cli, finish, start

PATHS = {"raw": Path("data/raw"), "out": Path("data/normalized"), "rejects": Path("data/rejects"),
         "metrics": Path("metrics/etl.json")}


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, paths=PATHS)
    return finish("normalize", lambda: normalize(args.raw, args.out, args.rejects, args.metrics, params.normalize),
                  writing=[args.out, args.rejects, args.metrics])


if __name__ == "__main__":
    without_pandas()  # a stage process: pyarrow would import pandas for nothing
    cli(main)
