"""Stage `evaluate`: MMEB Precision@1 of models/<name> on the normalized eval records.

    python -m stages.evaluate                                      # one process
    torchrun --nproc_per_node 2 -m stages.evaluate                 # items split across ranks

Reads params `eval` (models, batch_size, datasets, image_max_pixels, the input rendering, cache,
cache_dir, cache_max_gb, precision, MMEB-V2's v2_ties, v2_labels and video_input; `pipelines.params.Eval`
says what each takes), `recipe`: reports/eval.md names its profile and lists every setting that differs from it
(`pipelines.profiles.differences`), and `data.benchmark` (v2: MMEB-V2's datasets only,
`trainer.eval.evaluate_v2`). Writes metrics/eval.json, reports/eval.md, reports/leaderboard.json,
reports/plots/per_dataset/<model>.json and, with MMEB-V2, reports/plots/v2_meta/<model>.json (rank 0
only; byte-deterministic for the same embeddings). Reads metrics/etl.json for each dataset's source rows:
Precision@1 is over the rows normalize accepted, and the reports say how many it rejected. The work
is `trainer.eval.evaluate.evaluate`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipelines.params import params_path
from pipelines.profiles import differences_in
from stages.common import cli, finish, start
from trainer import distributed
from trainer.eval.evaluate import METRICS_FILE, REPORT_FILE, evaluate


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the embedding cache")


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, extra=options)
    section = replace(params.eval, cache=False) if args.no_cache else params.eval
    distributed.init_from_env()
    try:
        recipe = differences_in(params_path(args.params))
        return finish("evaluate", lambda: evaluate(section, recipe=recipe, score_v1=params.data.benchmark != "v2"),
                      writing=[METRICS_FILE.parent, REPORT_FILE.parent, section.cache_dir])
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    cli(main)
