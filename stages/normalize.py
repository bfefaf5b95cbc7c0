"""DVC stage `normalize`: data/raw (MMEB Hub layout) -> data/normalized + data/rejects + metrics/etl.json.

    python -m stages.normalize [--raw data/raw] [--out data/normalized] [--rejects data/rejects]
                               [--metrics metrics/etl.json] [--params params.yaml]

Reads params section `normalize` (workers, max_pixels, max_reject_fraction,
max_dataset_reject_fraction, rows_per_part, batch_rows). Exits non-zero — after writing the metrics
and rejects, so they can be inspected — when a dataset failed, when rejected/rows_in exceeds
normalize.max_reject_fraction in all or normalize.max_dataset_reject_fraction in any one dataset;
the message names the worst datasets. See pipelines/normalize.py for the record/reject contract.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.imagestore import without_pandas
from pipelines.normalize import failure_message, run
from stages.common import check_keys, load_params, setup_logging

PARAMS = ("workers", "max_pixels", "max_reject_fraction", "max_dataset_reject_fraction", "rows_per_part", "batch_rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/normalized")
    parser.add_argument("--rejects", default="data/rejects")
    parser.add_argument("--metrics", default="metrics/etl.json")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    log = setup_logging("normalize")
    params = load_params("normalize", path=args.params)
    check_keys("normalize", params, PARAMS)
    metrics = run(args.raw, args.out, args.rejects, args.metrics, params)
    total = metrics["total"]
    log.info("%d rows in, %d accepted, %d rejected (%.2f%%), %d images stored, %d converted",
             total["rows_in"], total["accepted"], total["rejected"], 100 * total["reject_fraction"],
             total["images_stored"], total["converted"])
    problem = failure_message(metrics, float(params["max_reject_fraction"]),
                              max_dataset_reject_fraction=float(params.get("max_dataset_reject_fraction", 1.0)))
    if problem:
        log.error("normalize failed (see %s and %s):\n%s", args.metrics, args.rejects, problem)
        print(f"normalize: FAILED\n{problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    without_pandas()  # a stage process: pyarrow would import pandas (0.4 s) for nothing
    sys.exit(main())
