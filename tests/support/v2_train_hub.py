"""VLM2Vec-V2's three training repos in their Hub layout, tiny, for the `hub` download of
``data.v2_train_sets``: the synthetic stand-ins (`pipelines.sources.synthetic.train_v2`) with
LLaVA-Hound's frame folders packed into ``train_300k/chunk_0.tar.gz`` (plus hostile members, as
`tests.support.v2_hub.HOSTILE` and ``LINKS``) and a README no selection needs."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipelines.sources.synthetic.train_v2 import write_train_v2
from pipelines.v2_train import FRAME_FOLDER, SOURCES
from tests.support.v2_hub import HOSTILE, write_tar

LINKS = {"syn_v00000/passwd": "/etc/passwd"}
SIZES = {"docs": 1, "pages": 3, "videos": 4, "size": 24}  # 3 pages per page set, 4 videos


def write_v2_train_repos(root: Path) -> dict[str, Path]:
    """{repo id: folder} of the three repos under ``root``."""
    write_train_v2(root, **SIZES)
    hound = root / SOURCES["llavahound"].folder
    frames = hound / FRAME_FOLDER
    members = {p.relative_to(frames).as_posix(): p.read_bytes() for p in sorted(frames.rglob("*")) if p.is_file()}
    shutil.rmtree(frames)
    write_tar(frames / "chunk_0.tar.gz", {**members, **HOSTILE}, LINKS)
    for source in SOURCES.values():
        (root / source.folder / "README.md").write_text(f"{source.repo}\n")
    return {source.repo: root / source.folder for source in SOURCES.values()}
