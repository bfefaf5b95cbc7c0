"""The trained model as ``models/embedder``: ``adapter/`` (LoRA), ``merged/``, ``lineage.json``, ``digests.json``.

    export(backbone, embedder, p, paths, summary, code_digest)    # rank 0, after the last step

The folder is built aside and put in place whole (`pipelines.files.atomic_dir`): a run that dies
while exporting leaves the previous ``models/embedder`` or none, never a partial one. lineage.json
says what made the weights: the base model and shards read (with the hashes dvc.lock records for
them), the training code (`code_lineage`), the train params, the collation settings an encoder of
this model must use, and the run's summary. digests.json holds the sha256 of every file
(`pipelines.digests`; merged/ has its own, which this one covers), verified by every loader.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipelines import digests
from pipelines.files import atomic_dir, json_text
from pipelines.params import RENDERING, Train
from trainer import provenance
from trainer.backbone.families import Backbone, load_backbone, save_backbone
from trainer.model.embedder import Embedder
from trainer.train.checkpoint import hash_tree
from trainer.train.paths import TrainPaths

log = logging.getLogger(__name__)

CODE = "trainer.train.recipe"  # the module whose project sources (transitively) are the training code


def export(backbone: Backbone, embedder: Embedder, p: Train, paths: TrainPaths, summary: Mapping[str, Any],
           code_digest: str) -> None:
    """Write ``paths.out`` (adapter/, merged/, lineage.json) through a temporary sibling folder.

    LoRA: the saved adapter is merged into a fresh copy of the base weights in the dtype the base
    checkpoint stores, so a run that kept them in bf16 (`trainer.train.build.base_dtype`) does not
    round a float32 base into a bf16 merged copy."""
    with atomic_dir(paths.out) as tmp:
        _write_export(backbone, embedder, p, paths, summary, code_digest, tmp)
    log.info("wrote %s (%s, final loss %.4f)", paths.out, summary["mode"], summary["final_loss"])


def _write_export(backbone: Backbone, embedder: Embedder, p: Train, paths: TrainPaths,
                  summary: Mapping[str, Any], code_digest: str, tmp: Path) -> None:
    """adapter/ (LoRA), merged/ and lineage.json into `tmp`."""
    model = embedder.model
    embedder.eval()
    if summary["mode"] == "lora":
        from peft import PeftModel

        model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
        stored = load_backbone(str(paths.base), torch_dtype="auto").model
        model = PeftModel.from_pretrained(stored, str(tmp / "adapter")).merge_and_unload()
    merged = replace(backbone, model=model.cpu().eval())
    save_backbone(merged, tmp / "merged")
    lineage = {
        "base_model": str(paths.base), "base_model_info": backbone.info, "shards": str(paths.shards),
        "shard_index_sha256": hash_tree(Path(paths.shards) / "index.json"),
        **code_lineage(code_digest), "dvc_lock": dvc_lock_hashes(paths),
        "train": p.to_dict(),
        "collation": {"max_text_tokens": p.max_text_tokens, "image_max_pixels": p.image_max_pixels,
                      "instructions": p.instructions, **{k: getattr(p, k) for k in RENDERING}},
        **{k: summary[k] for k in ("steps", "final_loss", "mode", "trainable_parameters", "world_size")},
    }
    (tmp / "lineage.json").write_text(json_text(lineage, sort_keys=True, default=str), encoding="utf-8")
    digests.record(tmp)  # adapter/, lineage.json and merged/'s own digests.json


def code_lineage(code_digest: str) -> dict[str, Any]:
    """git_commit: the last commit that changed the training code (not HEAD, so committing other
    things leaves models/embedder's bytes unchanged); code_dirty: uncommitted edits to it;
    code_digest: `provenance.source_digest` of it, as the run's fingerprint took it at its start."""
    files = provenance.source_files(CODE)
    return {"git_commit": provenance.git_commit(files), "code_dirty": provenance.dirty(files),
            "code_digest": code_digest}


def dvc_lock_hashes(paths: TrainPaths, lock_file: Path = Path("dvc.lock")) -> dict[str, str | None]:
    """The md5 dvc.lock records for the shards and the base model this run read: None for one that
    dvc.lock does not lock at that path (not locked yet, or `--shards` / `--base` pointed elsewhere)."""
    used = {"shards": ("shard", paths.shards), "base_model": ("backbone", paths.base)}
    out: dict[str, str | None] = {name: None for name in used}
    if not lock_file.is_file():
        return out
    root = lock_file.resolve().parent
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    stages = lock.get("stages") or {}
    for name, (stage, path) in used.items():
        for entry in (stages.get(stage) or {}).get("outs") or []:
            if (root / str(entry.get("path", ""))).resolve() == Path(path).resolve():
                out[name] = entry.get("md5") or entry.get("hash")
    return out
