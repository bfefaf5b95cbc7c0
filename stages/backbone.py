"""DVC stage `backbone`: the base model -> models/base.

    python -m stages.backbone            # params: backbone

tiny-<family> (the default tiny-qwen2-vl) is built offline from a config, with a tokenizer trained
on the normalized train texts and a short generative warm-up; a Hub id (Qwen/Qwen2-VL-2B-Instruct)
is fetched at backbone.revision (`trainer.backbone.build`).
"""

from __future__ import annotations

from pathlib import Path

from stages.common import cli, finish, start
from trainer.backbone.build import IMAGES_DIR, OUT, TRAIN_DIR, build

PATHS = {"train_dir": TRAIN_DIR, "images_dir": IMAGES_DIR, "out": OUT}


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, paths=PATHS)
    return finish("backbone", lambda: build(params.backbone, train_dir=args.train_dir, images_dir=args.images_dir,
                                            out=Path(args.out)), writing=[args.out])


if __name__ == "__main__":
    cli(main)
