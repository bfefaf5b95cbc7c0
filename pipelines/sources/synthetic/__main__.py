"""CLI of the synthetic MMEB generator: `python -m pipelines.sources.synthetic OUT_DIR [--seed 0] ...`;
the sizes are checked by the params contract (`pipelines.params.Synthetic`); prints the summary as JSON."""

from __future__ import annotations

import argparse
import json
import logging

from pipelines.params import ParamsError, Synthetic
from pipelines.sources.synthetic import __doc__ as package_doc
from pipelines.sources.synthetic.hub_layout import generate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.sources.synthetic", description=package_doc.split("\n\n")[0]
    )
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-rows", type=int, default=240)
    p.add_argument("--eval-rows", type=int, default=60)
    p.add_argument("--eval-candidates", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    try:
        params = Synthetic.parse(
            {"seed": args.seed, "train_rows": args.train_rows, "eval_rows": args.eval_rows,
             "eval_candidates": args.eval_candidates, "image_size": args.image_size}
        )
    except ParamsError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = generate(args.out_dir, **params.to_dict())
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
