"""DVC stage `mine`: models/embedder + data/normalized/train -> data/mined/<dataset>.parquet, metrics/mine.json.

    python -m stages.mine                 # params: mine; eval.batch_size/precision/image_max_pixels/cache*

Round one's embedder embeds every train query and target once (evaluation's batches and embedding
cache), retrieves each query's nearest pool targets exactly, drops likely false negatives (the
positive and its exact duplicates, other positives of the same query, scores above
mine.max_score_ratio x the positive's) and keeps mine.top_k per record. `trainer.mine` says how;
docs/mining.md what the outputs hold.
"""

from __future__ import annotations

from pathlib import Path

from stages.common import cli, finish, start
from trainer.mine import EncodeSettings, MinePaths, mine

DEFAULTS = MinePaths()
PATHS = {"records": DEFAULTS.records, "images": DEFAULTS.images, "model": DEFAULTS.model, "base": DEFAULTS.base,
         "out": DEFAULTS.out, "metrics": DEFAULTS.metrics}


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, paths=PATHS)
    e = params.eval
    settings = EncodeSettings(batch_size=e.batch_size, image_max_pixels=e.image_max_pixels, precision=e.precision,
                              cache=e.cache, cache_dir=Path(e.cache_dir))
    paths = MinePaths(**{name: getattr(args, name) for name in PATHS})
    return finish("mine", lambda: mine(params.mine, settings, paths))


if __name__ == "__main__":
    cli(main)
