"""On-disk embedding cache keyed by (model fingerprint, item content hash).

Layout (git-ignored, not a DVC output; the root is configurable, default `.cache/embeddings`):

    <root>/<fingerprint>/<settings digest>/index.json
    <root>/<fingerprint>/<settings digest>/part-<sha256[:24]>.safetensors

* `<fingerprint>` is the model's fingerprint (hashed when it is not a plain file name), so a changed
  model never sees another model's vectors. `<settings digest>` hashes the encode-time settings that
  change a vector without changing the model (e.g. `image_max_pixels`).
* A part holds one float32 tensor `embeddings` [rows, dim]; its safetensors metadata repeats the
  item keys and the fingerprint. safetensors is a plain tensor container: nothing is executed on load
  (never pickle).
* `index.json` maps every part to its byte length, sha256 and keys. A part is trusted only when its
  length, checksum, header keys and tensor shape all match the index, and all values are finite; a
  truncated, corrupt or missing part is logged, dropped from the index, deleted, and its items are
  reported missing, so the caller recomputes them. A corrupt index is discarded the same way.
* Files are written to a temporary name and renamed, so an interrupted run leaves either the old or
  the new state. One writer per namespace at a time (rank 0 of the evaluate stage).
* Every retrained model or encoding-code change starts a new namespace. `prune(root, max_bytes, keep)`
  deletes whole namespaces, least recently used first (a namespace's folder time is touched whenever
  it is opened), until the cache fits `max_bytes`; the namespaces in `keep` (this run's) stay.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from pipelines import files

log = logging.getLogger(__name__)

FORMAT = "vlm2vec-embedding-cache/1"
INDEX_FILE = "index.json"
TENSOR = "embeddings"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SETTINGS_NAME = re.compile(r"^[0-9a-f]{16}$")  # settings_digest's output


def settings_digest(settings: dict[str, Any] | None) -> str:
    """A short stable digest of JSON-serialisable encode settings (key order does not matter)."""
    blob = json.dumps(settings or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _dir_name(fingerprint: str) -> str:
    if _SAFE_NAME.match(fingerprint):
        return fingerprint
    return "fp-" + hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    """Vectors of one (model fingerprint, settings) namespace.

    `lookup(keys)` returns only vectors that passed verification; `put(keys, vectors)` stores a new
    part. `stats` counts hits, misses, parts written and parts rejected as corrupt.
    """

    def __init__(self, root: str | Path, fingerprint: str, settings: dict[str, Any] | None = None):
        if not fingerprint:
            raise ValueError("an embedding cache needs a non-empty model fingerprint")
        self.fingerprint = fingerprint
        self.settings = dict(settings or {})
        self.dir = Path(root) / _dir_name(fingerprint) / settings_digest(self.settings)
        self.stats = {"hits": 0, "misses": 0, "parts_written": 0, "parts_rejected": 0}
        self._parts: dict[str, dict[str, Any]] | None = None  # loaded lazily
        self._where: dict[str, tuple[str, int]] = {}

    # --- index ----------------------------------------------------------------------------
    def _load_index(self) -> None:
        if self._parts is not None:
            return
        self._parts = {}
        path = self.dir / INDEX_FILE
        if self.dir.is_dir():
            os.utime(self.dir)  # last used: what `prune` orders by
        if path.exists():
            try:
                index = json.loads(path.read_text(encoding="utf-8"))
                if index.get("format") != FORMAT or index.get("fingerprint") != self.fingerprint:
                    raise ValueError(f"format/fingerprint mismatch: {index.get('format')!r}")
                parts = index["parts"]
                for name, entry in parts.items():
                    if not (isinstance(entry.get("keys"), list) and int(entry["rows"]) == len(entry["keys"])
                            and int(entry["bytes"]) >= 0 and isinstance(entry["sha256"], str)
                            and int(entry.get("seq", 0)) >= 0):
                        raise ValueError(f"malformed entry for {name}")
                self._parts = parts
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("embedding cache index %s is unreadable (%s): discarding the cache", path, e)
                for part in self.dir.glob("part-*.safetensors"):
                    part.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
                self.stats["parts_rejected"] += 1
        self._where = {}
        for name in sorted(self._parts, key=lambda n: (int(self._parts[n].get("seq", 0)), n)):  # write order
            for row, key in enumerate(self._parts[name]["keys"]):
                self._where[key] = (name, row)  # a later part's vector wins, as within one process

    def _write_index(self) -> None:
        assert self._parts is not None
        index = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "parts": {name: self._parts[name] for name in sorted(self._parts)},
        }
        files.write_json(self.dir / INDEX_FILE, index, indent=1, sort_keys=True, fsync=True)

    def _drop_part(self, name: str, reason: str) -> None:
        assert self._parts is not None
        log.warning("embedding cache part %s rejected (%s): its %d item(s) will be recomputed",
                    self.dir / name, reason, len(self._parts[name]["keys"]))
        for key in self._parts.pop(name)["keys"]:
            if self._where.get(key, ("",))[0] == name:
                del self._where[key]
        (self.dir / name).unlink(missing_ok=True)
        self.stats["parts_rejected"] += 1
        self._write_index()

    def _read_part(self, name: str) -> np.ndarray | None:
        """The verified [rows, dim] array of one part, or None (after dropping it) if it fails."""
        assert self._parts is not None
        entry = self._parts[name]
        try:
            data = (self.dir / name).read_bytes()
        except OSError as e:
            self._drop_part(name, f"unreadable: {e}")
            return None
        if len(data) != int(entry["bytes"]):
            self._drop_part(name, f"length {len(data)} != {entry['bytes']} (truncated?)")
            return None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            self._drop_part(name, "sha256 mismatch (corrupt)")
            return None
        try:
            header = _metadata(data)
            array = st_load(data)[TENSOR]
        except (SafetensorError, KeyError, ValueError) as e:
            self._drop_part(name, f"not a valid part: {e}")
            return None
        if header.get("fingerprint") != self.fingerprint or json.loads(header.get("keys", "null")) != entry["keys"]:
            self._drop_part(name, "header keys/fingerprint differ from the index")
            return None
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != len(entry["keys"]):
            self._drop_part(name, f"tensor {array.dtype}{list(array.shape)} does not match the index")
            return None
        if not np.isfinite(array).all():
            self._drop_part(name, "non-finite values")
            return None
        return array

    # --- public API -----------------------------------------------------------------------
    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Return {key: vector} for the keys whose vectors are stored and verified; others are absent."""
        self._load_index()
        by_part: dict[str, list[str]] = defaultdict(list)
        for key in dict.fromkeys(keys):
            if key in self._where:
                by_part[self._where[key][0]].append(key)
        found: dict[str, np.ndarray] = {}
        for name in sorted(by_part):
            array = self._read_part(name)
            if array is None:
                continue
            for key in by_part[name]:
                found[key] = array[self._where[key][1]]
        self.stats["hits"] += len(found)
        self.stats["misses"] += len(set(keys)) - len(found)
        return found

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors [len(keys), dim] under keys (a new part; later puts win for repeated keys,
        also after the cache is reopened: parts are numbered in write order)."""
        keys = list(keys)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys but vectors of shape {vectors.shape}")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys in one cache put")
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to cache non-finite embeddings")
        if not keys:
            return
        self._load_index()
        assert self._parts is not None
        data = st_save({TENSOR: vectors},
                       metadata={"format": FORMAT, "fingerprint": self.fingerprint, "keys": json.dumps(keys)})
        digest = hashlib.sha256(data).hexdigest()
        name = f"part-{digest[:24]}.safetensors"
        files.write_bytes(self.dir / name, data, fsync=True)
        seq = 1 + max((int(e.get("seq", 0)) for e in self._parts.values()), default=0)
        self._parts[name] = {"bytes": len(data), "sha256": digest, "rows": len(keys),
                             "dim": int(vectors.shape[1]), "keys": keys, "seq": seq}
        for row, key in enumerate(keys):
            self._where[key] = (name, row)
        self._write_index()
        self.stats["parts_written"] += 1

    def __len__(self) -> int:
        self._load_index()
        return len(self._where)

    def parts(self) -> list[Path]:
        self._load_index()
        assert self._parts is not None
        return [self.dir / name for name in sorted(self._parts)]


@dataclass(frozen=True)
class Namespace:
    """One `<fingerprint>/<settings digest>/` folder of a cache root."""

    path: Path
    bytes: int
    last_used: float  # the folder's modification time (touched on every open)


def namespaces(root: str | Path) -> list[Namespace]:
    """The namespaces under `root`, least recently used first. Only folders shaped like a namespace
    (a settings-digest name holding an index or parts) count; links are never followed."""
    found = []
    root = Path(root)
    if not root.is_dir():
        return found
    for model_dir in sorted(root.iterdir()):
        if model_dir.is_symlink() or not model_dir.is_dir():
            continue
        for ns in sorted(model_dir.iterdir()):
            if ns.is_symlink() or not ns.is_dir() or not _SETTINGS_NAME.match(ns.name):
                continue
            files = [f for f in ns.iterdir() if f.is_file() and not f.is_symlink()]
            if not any(f.name == INDEX_FILE or f.name.startswith("part-") for f in files):
                continue
            found.append(Namespace(ns, sum(f.stat().st_size for f in files), ns.stat().st_mtime))
    return sorted(found, key=lambda n: (n.last_used, str(n.path)))


def prune(root: str | Path, max_bytes: int, keep: Iterable[str | Path] = ()) -> list[Namespace]:
    """Delete whole namespaces, least recently used first, until those left under `root` hold at most
    `max_bytes`; never one in `keep`. Returns what was deleted (logged). The kept namespaces alone
    may exceed the budget: that is logged, not an error."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    keep = {Path(k).resolve() for k in keep}
    present = namespaces(root)
    total = sum(n.bytes for n in present)
    removed = []
    for ns in present:
        if total <= max_bytes:
            break
        if ns.path.resolve() in keep:
            continue
        shutil.rmtree(ns.path)
        total -= ns.bytes
        removed.append(ns)
        try:
            ns.path.parent.rmdir()  # the model's folder, once its last namespace is gone
        except OSError:
            pass
    if removed:
        log.info("embedding cache %s: removed %d least recently used namespace(s), %.1f MB; %.1f MB left",
                 root, len(removed), sum(n.bytes for n in removed) / 1e6, total / 1e6)
    if total > max_bytes:
        log.warning("embedding cache %s holds %.1f MB in the namespaces in use, over its %.1f MB budget",
                    root, total / 1e6, max_bytes / 1e6)
    return removed


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (header = 8-byte little-endian length + JSON)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length beyond the end of the file")
    header = json.loads(data[8:8 + n])
    return dict(header.get("__metadata__") or {})
