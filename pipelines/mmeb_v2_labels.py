"""The label lists of MMEB-V2's video classification tasks, verbatim and in order.

Copied from ``VIDEOCLS_LABEL_MAPPING`` in ``src/data/eval_dataset/video_classification_utils.py`` of
TIGER-AI-Lab/VLM2Vec (Apache-2.0) at commit 6e1e1d4 into ``mmeb_v2_labels.json`` next to this
module. A global task (K700, HMDB51, UCF101, Breakfast) ranks every query against its whole list;
SmthSmthV2 is local (each row lists its own candidates), its list is kept for completeness. The
strings are the candidates exactly as encoded: K700 and HMDB51 with underscores, UCF101 in
CamelCase, SSv2 sentences with "something". The order is the candidate order of the global pool,
which only VLM2Vec's unstable tie order depends on.
"""

from __future__ import annotations

import json
from pathlib import Path

_DATA = json.loads((Path(__file__).with_name("mmeb_v2_labels.json")).read_text(encoding="utf-8"))

# keyed by the loader's dataset_name (K700's is Kinetics-700)
LABELS: dict[str, tuple[str, ...]] = {name: tuple(labels) for name, labels in _DATA["labels"].items()}
