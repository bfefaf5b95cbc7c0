"""Training checkpoints: atomic, pickle-free, and refused when they belong to another run.

A checkpoint is a folder ``<root>/step-NNNNNN/``:

    trainable.safetensors   the parameters that require grad (LoRA adapters, or every weight for full
                            fine-tuning), by their module names
    optimizer.safetensors   every tensor of the optimizer state, as ``state.<param index>.<name>``
    rng.safetensors         torch CPU (and CUDA) generator states, as ``rank<r>.cpu`` / ``rank<r>.cuda<d>``
    state.json              step, fingerprint, optimizer param groups and non-tensor state, scheduler
                            state, python/numpy RNG states per rank, the data-stream position, extras
    digests.json            sha256 and size of each file above (`pipelines.digests`)

It is written through `pipelines.files.atomic_dir` with ``fsync=True``: into a temporary sibling
``<root>/.step-NNNNNN.tmp-<pid>/``, every file and folder fsync'ed, then renamed into place and the
parent folder fsync'ed, so a folder named ``step-*`` is always complete: a SIGKILL at any moment
leaves either the previous checkpoints or the new one, never a half-written one (a temporary left by
a killed writer is ignored, and removed by the next save). Only the newest ``keep`` checkpoints are
kept.

The fingerprint (`fingerprint`) hashes the training params that change the math (everything in the
``train`` section but the speed and bookkeeping switches in ``NOT_IN_FINGERPRINT``), the content of
the base model folder and the shard index; `latest_checkpoint` only returns a checkpoint whose
fingerprint matches, and a mismatch is logged as a warning (the caller starts fresh and removes the
stale checkpoints).

Bytes that change after the save (a bad disk, a truncated copy) are caught by the digests:
`latest_checkpoint` verifies each candidate, newest first, and falls back past one that does not
verify to the newest one that does, naming the file and both digests in a warning (a checkpoint
without digests, older than them, does not verify). `load_checkpoint` reads only a verified folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipelines import digests, files

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
NAME_RE = re.compile(r"step-(\d{6,})")
# change speed or bookkeeping, never the result (beyond float rounding); num_workers sets the data
# order of a fresh run through the number of data slots, which the loop fingerprints instead
NOT_IN_FINGERPRINT = ("save_every", "num_workers", "batched_vision_attention", "compile", "fsdp",
                      "pad_to_multiple_of", "sub_batches")
FORMAT = "vlm2vec-checkpoint/1"


# --- fingerprint ------------------------------------------------------------------------------
def hash_tree(path: str | Path) -> str:
    """sha256 over the relative names and contents of every file under ``path`` (sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def fingerprint(train_params: Mapping[str, Any], base_model: str | Path, shard_index: str | Path,
                code: str | None = None) -> str:
    """Identity of a training run: the params that change the result + base model + shard index +
    `code`, a digest of the training code (`trainer.provenance.source_digest`): a checkpoint of
    other code is not resumed."""
    params = {k: v for k, v in sorted(train_params.items()) if k not in NOT_IN_FINGERPRINT}
    doc = {"params": params, "base_model": hash_tree(base_model), "shard_index": hash_tree(shard_index),
           "code": code}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# --- RNG --------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's python, numpy and torch RNG states (JSON parts + tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_cpu"])
    if state.get("torch_cuda") is not None and torch.cuda.is_available():
        # one state per GPU the writer saw: a node with fewer visible GPUs restores the ones it has
        for device, cuda_state in enumerate(state["torch_cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# --- trainable weights and optimizer ------------------------------------------------------------
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by name (detached contiguous CPU copies)."""
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def check_trainable_names(names: Iterable[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError unless the saved tensors are exactly the model's trainable parameters."""
    names = set(names)
    if names != set(tensors):
        missing, extra = sorted(names - set(tensors)), sorted(set(tensors) - names)
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")


def load_trainable(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into ``model``; the name sets must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    check_trainable_names(params, tensors)
    with torch.no_grad():
        for n, p in params.items():
            if p.shape != tensors[n].shape:
                raise ValueError(f"checkpoint {n}: shape {tuple(tensors[n].shape)}, model {tuple(p.shape)}")
            p.copy_(tensors[n].to(p.device, p.dtype))


def split_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer ``state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `split_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in rest["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- checkpoint folders -----------------------------------------------------------------------
def step_of(path: Path) -> int:
    m = NAME_RE.fullmatch(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint folder name")
    return int(m.group(1))


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` (those holding state.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=step_of)


def _temporaries(root: Path) -> list[Path]:
    """The temporary checkpoint folders under ``root`` (`pipelines.files.temporary` of a ``step-*``)."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if (name := files.final_name(p)) and NAME_RE.match(name)]


def save_checkpoint(root: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, fingerprint: str, stream: Mapping[str, Any],
                    rng_per_rank: list[Mapping[str, Any]], extra: Mapping[str, Any] | None = None,
                    keep: int = 2, model_state: Mapping[str, torch.Tensor] | None = None,
                    optimizer_state: Mapping[str, Any] | None = None) -> Path:
    """Atomically write the checkpoint of ``step`` (see the module docstring); return its folder.

    ``rng_per_rank``: `capture_rng()` of every rank, in rank order. Older checkpoints beyond the newest
    ``keep`` and the temporaries of killed writers are removed afterwards. ``model_state`` /
    ``optimizer_state``: the trainable tensors and the ``optimizer.state_dict()``-shaped state when the
    caller gathered them (FSDP: `trainer.train.fsdp.full_trainable_state` / `full_optimizer_state`); by
    default they are read from ``model`` and ``optimizer``.
    """
    root = Path(root)
    final = root / f"step-{step:06d}"
    with files.atomic_dir(final, fsync=True) as tmp:
        save_file(dict(model_state) if model_state is not None else trainable_state(model),
                  tmp / "trainable.safetensors")
        opt_tensors, opt_rest = split_optimizer_state(optimizer_state if optimizer_state is not None
                                                      else optimizer.state_dict())
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        rng_tensors, rng_json = _rng_files(rng_per_rank)
        save_file(rng_tensors, tmp / "rng.safetensors")
        state = {
            "format": FORMAT, "step": step, "fingerprint": fingerprint, "optimizer": opt_rest,
            "scheduler": scheduler.state_dict(), "rng": rng_json, "stream": dict(stream), "extra": dict(extra or {}),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, sort_keys=True), encoding="utf-8")
        digests.record(tmp)
    for name in {files.final_name(p) for p in _temporaries(root)}:
        files.remove_stale(root / name)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return final


def _rng_files(rng_per_rank: list[Mapping[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """`capture_rng()` of every rank as rng.safetensors' tensors and state.json's entries."""
    rng_tensors: dict[str, torch.Tensor] = {}
    rng_json = []
    for r, rng in enumerate(rng_per_rank):
        rng_tensors[f"rank{r}.cpu"] = rng["torch_cpu"].contiguous()
        for d, t in enumerate(rng.get("torch_cuda") or []):
            rng_tensors[f"rank{r}.cuda{d}"] = t.contiguous()
        rng_json.append({"python": rng["python"], "numpy": rng["numpy"],
                         "cuda_devices": len(rng.get("torch_cuda") or [])})
    return rng_tensors, rng_json


def latest_checkpoint(root: str | Path, fingerprint: str, rejected: list[str] | None = None) -> Path | None:
    """The newest complete checkpoint under ``root`` made with ``fingerprint`` whose files verify
    against their digests; None if there is none.

    Checkpoints with another fingerprint (other params, base model or shards) are never returned; a
    warning names them. An unreadable state.json, or a checkpoint whose files do not verify, is
    skipped with a warning naming the file (and the expected and found digests) and appended to
    ``rejected`` as ``"<name>: <reason>"``; the next older one is tried."""
    for path in reversed(list_checkpoints(root)):
        try:
            state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _reject(path, f"unreadable {STATE_FILE}: {exc}", rejected)
            continue
        if state.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s was made with different params, base model, base weights' dtype (LoRA "
                        "under bf16 keeps them in bf16 except under FSDP), training code, data slots or shards "
                        "(fingerprint %s..., this run %s...); not resuming from it",
                        path, str(state.get("fingerprint"))[:12], fingerprint[:12])
            return None
        try:
            digests.verify(path, required=True)
        except (digests.IntegrityError, OSError) as exc:
            _reject(path, str(exc), rejected)
            continue
        return path
    return None


def _reject(path: Path, reason: str, rejected: list[str] | None) -> None:
    log.warning("checkpoint %s does not verify, falling back to an older one: %s", path, reason)
    if rejected is not None:
        rejected.append(f"{path.name}: {reason}")


def remove_checkpoints(root: str | Path) -> None:
    """Delete every checkpoint (complete or temporary) under ``root``."""
    root = Path(root)
    if not root.is_dir():
        return
    temporaries = set(_temporaries(root))
    for p in list(root.iterdir()):
        if p.is_dir() and (NAME_RE.fullmatch(p.name) or p in temporaries):
            shutil.rmtree(p)


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, rank: int = 0, load_model=None, load_optimizer=None) -> dict[str, Any]:
    """Restore weights, optimizer and scheduler from ``path``; return the state dict with ``rng`` set
    to this rank's RNG state (or None when the checkpoint has no entry for ``rank``).
    ``load_model(tensors)`` / ``load_optimizer(state_dict)`` replace the default loading into ``model``
    and ``optimizer`` (FSDP: `trainer.train.fsdp.load_trainable_state` / `load_optimizer_state`).

    The RNG is returned, not restored, so the caller restores it at the right moment (after building
    anything that draws random numbers, e.g. the DataLoader iterator)."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    (load_model or partial(load_trainable, model))(load_file(path / "trainable.safetensors"))
    (load_optimizer or optimizer.load_state_dict)(
        join_optimizer_state(load_file(path / "optimizer.safetensors"), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    rng = None
    if rank < len(state["rng"]):
        tensors = load_file(path / "rng.safetensors")
        entry = state["rng"][rank]
        rng = {"python": entry["python"], "numpy": entry["numpy"], "torch_cpu": tensors[f"rank{rank}.cpu"]}
        if entry["cuda_devices"]:
            rng["torch_cuda"] = [tensors[f"rank{rank}.cuda{d}"] for d in range(entry["cuda_devices"])]
    state["rng"] = rng
    log.info("resumed from checkpoint %s (step %d)", path, state["step"])
    return state
