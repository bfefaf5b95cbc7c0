"""Released embedding checkpoints (VLM2Vec's, say) as model folders that evaluate scores.

    python -m trainer.released TIGER-Lab/VLM2Vec-Qwen2VL-2B --name vlm2vec-qwen2vl-2b \\
        --profile vlm2vec-v1 [--base Qwen/Qwen2-VL-2B-Instruct] [--revision <commit>]
    # then: eval.models: [base, embedder, vlm2vec-qwen2vl-2b]

A released checkpoint is a Hub id or a local folder in one of two layouts:
* full weights: the Hub layout of a transformers model (config.json, safetensors, tokenizer and
  processor files; a folder without the processor files takes them from `--base`);
* a peft adapter (adapter_config.json, adapter_model.safetensors) over a base model, the base named
  by `--base` or by the adapter's `base_model_name_or_path`; the adapter is merged into it.

`import_checkpoint` writes models/<name>/ as an embedder folder: `merged/` (a `save_backbone`
folder) and lineage.json, whose `collation` is the profile's input settings (max_text_tokens,
image_max_pixels, instructions and the rendering: a VLM2Vec Qwen checkpoint needs its sequential
positions and kept stray token) and whose `released` block says where the weights came from. Scored
with other rendering than its profile's, `trainer.embed.EmbeddingModel.load` warns, naming each
setting: apply the same profile to params.yaml (or set eval's rendering keys) before scoring it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from pipelines.files import atomic_dir, json_text
from pipelines.params import RENDERING
from pipelines.profiles import load_profile
from trainer.backbone.families import Backbone, load_backbone, model_class, save_backbone

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
COLLATION_KEYS = ("max_text_tokens", "image_max_pixels", "instructions") + RENDERING


def resolve(source: str, revision: str | None = None, trust_remote_code: bool = False) -> tuple[Path, str | None]:
    """The local folder of `source` (a folder, or a Hub id fetched at `revision`) and its commit;
    the repo's own code (`*.py`) is fetched only with `trust_remote_code`."""
    path = Path(source)
    if path.is_dir():
        return path, None
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(source, revision=revision,
                                    allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
                                    + (["*.py"] if trust_remote_code else [])))
    return folder, folder.name if len(folder.name) == 40 else revision


def load_released(source: str, *, base: str | None = None, revision: str | None = None,
                  trust_remote_code: bool = False, num_crops: int | None = None) -> tuple[Backbone, dict]:
    """The checkpoint as a backbone with plain (merged) weights, and what was loaded from where.
    `trust_remote_code` / `num_crops`: as `load_backbone` (Phi-3-V checkpoints need the first)."""
    folder, commit = resolve(source, revision, trust_remote_code)
    opts = dict(trust_remote_code=trust_remote_code, num_crops=num_crops)
    origin = {"source": source, "revision": commit}
    if (folder / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        base = base or json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{source} is a peft adapter without base_model_name_or_path: give --base")
        backbone = load_backbone(base, **opts)
        merged = PeftModel.from_pretrained(backbone.model, str(folder)).merge_and_unload()
        origin.update(layout="peft adapter", base=base, base_revision=backbone.info.get("revision"))
        return replace(backbone, model=merged.eval(), info={**backbone.info, "name": source}), origin
    has_processor = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    if not has_processor and not base:
        raise ValueError(f"{source} has weights but no tokenizer or processor files: give --base for them")
    backbone = load_backbone(str(folder), **opts) if has_processor else _with_processor_of(folder, base, opts)
    origin.update(layout="full weights", base=None if has_processor else base)
    return replace(backbone, info={**backbone.info, "name": source}), origin


def _with_processor_of(folder: Path, base: str, opts: dict) -> Backbone:
    """The weights of `folder` with the processor (and backbone facts) of `base`."""
    reference = load_backbone(base, **opts)
    model = model_class(reference.family).from_pretrained(
        folder, dtype=reference.model.dtype, trust_remote_code=opts["trust_remote_code"]).eval()
    return replace(reference, model=model)


def collation_of(profile_name: str) -> dict:
    """The input settings (`COLLATION_KEYS`) the profile's recipe trains and scores with."""
    values = load_profile(profile_name).values
    return {key: values[f"train.{key}"] for key in COLLATION_KEYS}


def import_checkpoint(source: str, out: Path, *, profile: str, base: str | None = None,
                      revision: str | None = None, trust_remote_code: bool = False,
                      num_crops: int | None = None) -> Path:
    """Write `out` (models/<name>): merged/ and lineage.json (module docstring)."""
    collation = collation_of(profile)
    backbone, origin = load_released(source, base=base, revision=revision, trust_remote_code=trust_remote_code,
                                     num_crops=num_crops)
    with atomic_dir(Path(out)) as tmp:
        save_backbone(backbone, tmp / "merged")
        lineage = {"released": origin, "profile": profile, "collation": collation,
                   "base_model_info": backbone.info}
        (tmp / "lineage.json").write_text(json_text(lineage, sort_keys=True, default=str), encoding="utf-8")
    log.info("imported %s (%s) as %s, rendered as profile %s", source, origin["layout"], out, profile)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.released", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a Hub id or a local folder (full weights or a peft adapter)")
    parser.add_argument("--name", required=True, help="the folder under models/ to write (an eval.models entry)")
    parser.add_argument("--profile", required=True, help="the recipe it was trained with (profiles/)")
    parser.add_argument("--base", help="the base model of an adapter, or the processor of bare weights")
    parser.add_argument("--revision", help="Hub revision of the source")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the checkpoint's own code (Phi-3.5-V); only for code you trust")
    parser.add_argument("--num-crops", type=int, help="Phi-3-V: image crops (VLM2Vec: 4; default: the checkpoint's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = import_checkpoint(args.source, args.models / args.name, profile=args.profile, base=args.base,
                                revision=args.revision, trust_remote_code=args.trust_remote_code,
                                num_crops=args.num_crops)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as e:
        parser.error(f"{type(e).__name__}: {e}")
    print(f"wrote {out}: add {args.name!r} to eval.models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
