"""Shared by the stage entry points: params loading and logging set-up."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

PARAMS_FILE = Path(os.environ.get("VLM2VEC_PARAMS", "params.yaml"))


def load_params(*sections: str, path: str | Path | None = None) -> dict[str, Any]:
    """Return the requested top-level sections of params.yaml (a dict of dicts).

    With one section, return that section's dict directly.
    """
    path = Path(path or PARAMS_FILE)
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    missing = [s for s in sections if s not in params]
    if missing:
        raise KeyError(f"{path}: missing params section(s) {missing}")
    if len(sections) == 1:
        return dict(params[sections[0]])
    return {s: dict(params[s]) for s in sections}


def check_keys(section: str, params: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ValueError naming the keys of params section `section` that its stage does not read: a
    typo (`dvc exp run -S eval.dataset=[...]`) would otherwise run with the default, unnoticed."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"params {section}: unknown key(s) {unknown}; known: {sorted(known)}")


def setup_logging(name: str) -> logging.Logger:
    logging.basicConfig(
        level=os.environ.get("LOGLEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(name)
