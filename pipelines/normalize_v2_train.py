"""VLM2Vec-V2's training sources for the normalize stage: data/raw/V2-train ->
data/normalized/train/<set>/pairs-NNNNN.parquet (`pipelines.schema.V2_TRAIN_SCHEMA`).

    counts = normalize_v2_train(raw_root, out_root, rejects_root, params.normalize)   # {} without V2-train

The sets normalized are those the download's manifest lists under ``v2_train`` (every set whose files
are there when the manifest does not say). Pages and frames go to the image store (out_root/images,
staged for the stage's merge); rows refused go to data/rejects/train/<set>.parquet
(`pipelines.schema.REJECT_SCHEMA`) and are counted by reason in metrics/etl.json (``v2_train``).
`problems` names a set that came with fewer rows than the download expected, kept no pair, or refused
more than ``normalize.max_dataset_reject_fraction`` of its rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipelines.errors import StageFailed
from pipelines.imagestore import ImageStoreWriter
from pipelines.normalize_v2 import write_table
from pipelines.params import Normalize
from pipelines.schema import REJECT_SCHEMA, V2_TRAIN_SCHEMA
from pipelines.sources.v2_train import read_set
from pipelines.v2_train import RAW_FOLDER, SETS, SOURCES

log = logging.getLogger(__name__)

OUT = "train"  # under data/normalized and data/rejects, beside MMEB-train's datasets


def listed(raw_root: Path) -> dict[str, int | None]:
    """{set: rows expected} of the manifest's ``v2_train`` entry; without one, every set whose repo
    folder exists, expecting nothing."""
    manifest = Path(raw_root) / "manifest.json"
    entry = json.loads(manifest.read_text(encoding="utf-8")).get("v2_train") if manifest.is_file() else None
    if entry is not None:
        return {name: d["expected"] for name, d in entry["datasets"].items()}
    root = Path(raw_root) / RAW_FOLDER
    return {name: None for name, s in SETS.items() if (root / SOURCES[s.source].folder).is_dir()}


def write_parts(folder: Path, rows: list[dict], rows_per_part: int) -> int:
    """The rows as pairs-00000.parquet, ... of ``rows_per_part`` rows each; the number of parts."""
    parts = max(1, -(-len(rows) // rows_per_part))
    for p in range(parts):
        write_table(folder / f"pairs-{p:05d}.parquet", rows[p * rows_per_part:(p + 1) * rows_per_part], V2_TRAIN_SCHEMA)
    return parts


def normalize_v2_train(raw_root: Path, out_root: Path, rejects_root: Path, params: Normalize) -> dict:
    """Write every listed set under out_root/train/<set>/, its images staged in out_root/images;
    return {set: counts} ({} when data/raw has no V2-train folder)."""
    root = Path(raw_root) / RAW_FOLDER
    if not root.is_dir():
        return {}
    counts = {}
    writer = ImageStoreWriter(Path(out_root) / "images", "v2train")
    try:
        for name, expected in sorted(listed(Path(raw_root)).items()):
            if name not in SETS:
                raise StageFailed(f"V2 training set {name!r} in the manifest is not one of {', '.join(SETS)}")
            spec = SETS[name]
            pairs = read_set(root, spec, params, writer.add)
            write_parts(Path(out_root) / OUT / name, pairs.rows, params.rows_per_part)
            if pairs.rejects:
                write_table(Path(rejects_root) / OUT / f"{name}.parquet", pairs.rejects, REJECT_SCHEMA)
            counts[name] = {**pairs.counts(), "expected": expected, "modality": spec.modality,
                            "meta_task": spec.meta_task}
            log.info("V2 training set %s: %d rows, %d pairs, %d rejected", name, pairs.rows_in, len(pairs.rows),
                     len(pairs.rejects))
    finally:
        writer.close()
    return counts


def problems(counts: dict, max_dataset_reject_fraction: float) -> list[str]:
    """Why the stage must fail for a V2 training set (named), [] when none."""
    out = []
    for name, c in sorted(counts.items()):
        why = c["rejected_by_reason"]
        if c["expected"] is not None and c["rows_in"] < c["expected"]:
            out.append(f"V2 training set {name}: {c['rows_in']} rows of the {c['expected']} expected")
        elif not c["pairs"]:
            out.append(f"V2 training set {name}: no pair kept of {c['rows_in']} rows (rejected: {why})")
        elif c["rejected"] > max_dataset_reject_fraction * c["rows_in"]:
            out.append(f"V2 training set {name}: {c['rejected']}/{c['rows_in']} rows rejected > "
                       f"normalize.max_dataset_reject_fraction {max_dataset_reject_fraction:.2%} ({why})")
    return out
