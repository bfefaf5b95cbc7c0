"""Loading a script of benchmarks/ (not a package) as a module for its tests."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def script_module(relative_path: str, name: str):
    """The script at REPO/relative_path imported as module `name`, registered in sys.modules while
    in use (dataclasses resolve string annotations through it) and removed after."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
