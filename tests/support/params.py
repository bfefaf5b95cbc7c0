"""Complete params for tests: the repository's params.yaml with some keys overridden.

    section("shard", max_samples=7)            # a checked `pipelines.params.Shard`
    write_params(tmp_path / "params.yaml", normalize={"workers": 1})   # a whole file for a stage

Every stage checks the whole params file and no key has a default in code, so a test states only
what it changes and takes every other value from params.yaml.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from pipelines import params as contract

REPO = Path(__file__).resolve().parents[2]


def document(**sections: dict) -> dict:
    """params.yaml as a dict, each named section updated with its overrides."""
    doc = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for name, overrides in sections.items():
        doc[name] = {**doc[name], **copy.deepcopy(overrides)}
    return doc


def section(name: str, /, **overrides):
    """The checked section `name` of params.yaml with `overrides`; `train` references resolved
    against params.yaml's train section (without the checks across sections)."""
    doc = document(**{name: overrides})
    parsed = {cls.NAME: cls.parse(doc[cls.NAME]) for cls in contract.SECTIONS}
    return contract.resolve(parsed)[name]


def write_params(path: str | Path, **sections: dict) -> Path:
    """A whole params file at `path`: params.yaml with the overrides of `sections`."""
    path = Path(path)
    path.write_text(yaml.safe_dump(document(**sections), sort_keys=False), encoding="utf-8")
    return path
