"""MMEB-V2's synthetic stand-ins written together, as the download stage places them under
``data/raw/MMEB-V2/`` (``data.source: synthetic``, ``data.benchmark: v2 | both``).

    expected = write_v2(root, seed=0, names="all")     # {name: queries written}

One writer per stand-in of `pipelines.mmeb_v2.SYNTHETIC`, each at its default size (the registry's
``num_data``): `Syn-ViDoRe` (`visdoc`), `Syn-VideoCLS` (`video`), the video families
(`video_families`) and the image sets (`image_v2`). Every set has its own random stream and its own
folders, so a set's bytes do not depend on which others are written (``synthetic.v2_sets`` trims them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipelines import mmeb_v2
from pipelines.errors import StageFailed
from pipelines.sources.synthetic import image_v2, video, video_families, visdoc


def _visdoc(root: Path, seed: int) -> int:
    return visdoc.write_visdoc(root / visdoc.NAME, seed=seed)["queries"]


def _video_cls(root: Path, seed: int) -> int:
    return video.write_video_cls(root, seed=seed)["videos"]


def _family(name: str) -> Callable[[Path, int], int]:
    return lambda root, seed: video_families.WRITERS[name](root, seed=seed)["queries"]


def _image(name: str) -> Callable[[Path, int], int]:
    return lambda root, seed: image_v2.write_image_v2(root, seed=seed, names=(name,))[name]


WRITERS: dict[str, Callable[[Path, int], int]] = {  # name -> writer(root, seed) -> queries written
    visdoc.NAME: _visdoc, video.NAME: _video_cls,
    **{name: _family(name) for name in video_families.WRITERS},
    **{name: _image(name) for name in (image_v2.CLS, image_v2.T2I, image_v2.VG)},
}
assert set(WRITERS) == set(mmeb_v2.SYNTHETIC), "every synthetic V2 stand-in needs a writer"


def write_v2(root: Path, seed: int, names) -> dict[str, int]:
    """Write the stand-ins ``names`` (``"all"``: every one, in the registry's order) under ``root``;
    {name: queries written}, the count the download's inventory expects. StageFailed naming the names
    that are not stand-ins."""
    chosen = list(mmeb_v2.SYNTHETIC) if names == "all" else list(names)
    if unknown := [n for n in chosen if n not in WRITERS]:  # checked here, as the V1 subsets are
        raise StageFailed(f"synthetic.v2_sets {unknown}: not synthetic MMEB-V2 stand-ins; known: "
                          f"{', '.join(mmeb_v2.SYNTHETIC)}")
    return {name: WRITERS[name](Path(root), seed) for name in chosen}
