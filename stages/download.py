"""DVC stage `download`: MMEB-train and MMEB-eval in their Hub layout -> data/raw/.

    python -m stages.download        # params: data, synthetic (params.yaml, or $VLM2VEC_PARAMS)

data.source picks the bytes: synthetic (the embedded miniature MMEB), local (data.local_dir in the
Hub layout) or hub (the Hugging Face Hub, through .cache/hub or $VLM2VEC_HUB_CACHE). Writes
data/raw/MMEB-train/, data/raw/MMEB-eval/ and data/raw/manifest.json (`pipelines.download`).
"""

from __future__ import annotations

from pipelines.download import RAW, download
from stages.common import cli, finish, start


def main(argv: list[str] | None = None) -> int:
    args, params = start(__doc__, argv, paths={"out": RAW})
    return finish("download", lambda: download(params.data, params.synthetic, out=args.out),
                  writing=[args.out])


if __name__ == "__main__":
    cli(main)
