"""MMEB-V2's sets for the download stage (``data.benchmark: v2 | both``): fetched or generated into
``data/raw/MMEB-V2/`` and counted against what a complete set holds.

    root, expected, info = source_folder(data, synthetic, scratch, hub_cache)  # data.source's folder
    datasets = inventory(root, expected)               # {name: counts}; StageFailed when short

The layout (the Hub annotation repos beside VLM2Vec's frame folders)::

    MMEB-V2/<dataset>/                          the Hub repo: BEIR configs (visual documents) or the
                                                annotation split (video), e.g. Syn-ViDoRe/, Syn-VideoCLS/
    MMEB-V2/video-tasks/frames/<root>/<video>/  extracted frames, <root> the registry's frame root

``data.source: synthetic`` writes the stand-ins ``synthetic.v2_sets`` names (every loader family's by
default; `pipelines.sources.synthetic.v2`); ``local`` takes ``data.local_dir/MMEB-V2`` as it is; ``hub``
fetches the ``data.v2_datasets`` tasks' repos and archives (`pipelines.sources.hub_v2`). The manifest
records per dataset the queries expected (the registry's ``num_data``; for a synthetic set the
generator's count) and the queries found. A dataset with fewer queries than expected, a video whose frame
folder is missing or empty (video classification; the other families' images and frames are checked row
by row in normalize), a folder the registry does not know, or a loader family not wired yet fail the
stage, naming every one at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq

from pipelines import mmeb_v2
from pipelines.errors import StageFailed
from pipelines.frames import list_frames
from pipelines.params import Data, Synthetic
from pipelines.sources.v2_rows import annotation_count

log = logging.getLogger(__name__)

FOLDER = mmeb_v2.RAW_FOLDER
LAYOUT_FOLDERS = mmeb_v2.LAYOUT_FOLDERS
BEIR_PARSERS = mmeb_v2.BEIR_PARSERS
ANNOTATED_VIDEO_PARSERS = mmeb_v2.ANNOTATED_VIDEO_PARSERS
ROW_PARSERS = mmeb_v2.ROW_PARSERS


def selected_tasks(data: Data) -> list[mmeb_v2.V2Task]:
    """The registry tasks ``data.v2_datasets`` selects (``all``: the 78); StageFailed naming the
    names the registry does not know (checked here, as the V1 subsets are against the repos)."""
    if data.v2_datasets == "all":
        return mmeb_v2.tasks()
    unknown = [n for n in data.v2_datasets if n not in mmeb_v2.TASKS]
    if unknown:
        raise StageFailed(f"data.v2_datasets {unknown}: not MMEB-V2 tasks; known: {', '.join(mmeb_v2.TASKS)}")
    return [mmeb_v2.TASKS[name] for name in data.v2_datasets]


def source_folder(data: Data, synthetic: Synthetic, scratch: Path,
                  hub_cache: Path | None = None) -> tuple[Path, dict[str, int], dict]:
    """The MMEB-V2 folder of ``data.source``, the queries each synthetic set was written with ({} for
    other sources: the registry's counts apply) and what the manifest records of the source (the
    Hub's repos, commits and refused archive members; {} otherwise)."""
    if data.source == "synthetic":
        from pipelines.sources.synthetic.v2 import write_v2

        root = Path(scratch) / FOLDER
        root.mkdir(parents=True)
        return root, write_v2(root, synthetic.seed, synthetic.v2_sets), {}
    if data.source == "local":
        root = Path(data.local_dir) / FOLDER
        if not root.is_dir():
            raise StageFailed(f"data.benchmark {data.benchmark} with data.source local: {root} does not exist "
                              f"(MMEB-V2's sets go there in the layout of docs/mmeb-v2.md)")
        return root, {}, {}
    from pipelines.sources import hub_v2

    Path(scratch).mkdir(parents=True, exist_ok=True)
    root, info = hub_v2.fetch(selected_tasks(data), data.v2_revisions or {}, Path(hub_cache), scratch)
    return root, {}, info


def _rows(folder: Path, pattern: str, columns: list[str]) -> dict[str, list]:
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {pattern} under {folder}")
    out: dict[str, list] = {c: [] for c in columns}
    for f in files:
        table = pq.read_table(f, columns=columns)
        for c in columns:
            out[c] += table.column(c).to_pylist()
    return out


def count_dataset(root: Path, task: mmeb_v2.V2Task) -> tuple[int, list[str]]:
    """(queries found, problems) of one dataset folder under ``root``."""
    folder = root / task.name
    try:
        if task.parser in BEIR_PARSERS:
            ids = _rows(folder, f"queries/{task.hub_split}-*.parquet", ["query-id"])["query-id"]
            return len(set(map(str, ids))), []
        if task.parser in ANNOTATED_VIDEO_PARSERS:
            ids = _rows(folder, f"{task.hub_split}-*.parquet", ["video_id"])["video_id"]
            frame_root = root / task.root
            bad = [v for v in ids if not (frame_root / str(v)).is_dir() or not list_frames(frame_root / str(v))]
            problems = [f"MMEB-V2 dataset {task.name}: {len(bad)} video(s) without frames, e.g. "
                        f"{frame_root / str(bad[0])} is missing or empty"] if bad else []
            return len(ids), problems
        if task.parser in ROW_PARSERS:  # images and frame folders are checked row by row in normalize
            return annotation_count(root, task), []
    except (FileNotFoundError, KeyError) as e:
        return 0, [f"MMEB-V2 dataset {task.name}: {e}"]
    except StageFailed as e:
        return 0, [str(e)]
    return 0, [f"MMEB-V2 dataset {task.name}: loader family {task.parser!r} is not wired into the pipeline yet"]


def inventory(root: Path, expected: dict[str, int] | None = None) -> dict[str, dict]:
    """Every dataset folder under ``root`` counted: {name: modality, meta_task, eval_type, expected,
    found}. ``expected`` overrides the registry's count (synthetic sets). Raises StageFailed naming
    every short dataset, missing frame folder and unknown folder."""
    root = Path(root)
    expected = expected or {}
    out, problems = {}, []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in LAYOUT_FOLDERS):
        try:
            task = mmeb_v2.known(folder.name)
        except KeyError:
            problems.append(f"{folder}: not an MMEB-V2 task (pipelines/mmeb_v2.py) nor a synthetic stand-in")
            continue
        found, issues = count_dataset(root, task)
        want = expected.get(task.name, task.num_data)
        if found < want and not issues:
            issues.append(f"MMEB-V2 dataset {task.name}: {found} queries of the {want} expected "
                          f"({want - found} missing); the download or the data is incomplete")
        problems += issues
        out[task.name] = {"modality": task.modality, "meta_task": task.meta_task, "eval_type": task.eval_type,
                          "expected": want, "found": found}
    if not out and not problems:
        problems.append(f"{root} holds no MMEB-V2 dataset")
    if problems:
        raise StageFailed("\n".join(problems))
    log.info("MMEB-V2: %s", ", ".join(f"{n} ({d['found']} queries)" for n, d in out.items()))
    return out


def files_of(root: Path) -> dict[str, Path]:
    """{path under MMEB-V2/: file} of every file below ``root``, sorted."""
    root = Path(root)
    return {f"{FOLDER}/{p.relative_to(root).as_posix()}": p for p in sorted(root.rglob("*")) if p.is_file()}
