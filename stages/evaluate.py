"""Stage `evaluate`: MMEB Precision@1 of models/<name> on the normalized eval records.

    python -m stages.evaluate                                      # one process
    torchrun --nproc_per_node 2 -m stages.evaluate                 # items split across ranks

Reads params `eval`:
    models            names under models/ to score, e.g. [base, embedder] (base = the zero-shot row)
    batch_size        items per encoder batch
    datasets          `all` or a list of dataset names under data/normalized/eval
    image_max_pixels  images are downscaled (aspect kept) to at most this many pixels
    cache             (optional, default true) reuse embeddings from the on-disk cache
    cache_dir         (optional, default .cache/embeddings) git-ignored, not a DVC output
    cache_max_gb      (optional, default 20; null = no limit) after the run, older models' cached
                      vectors are deleted, least recently used first, until the cache fits
    precision         (optional, default fp32) fp32 | bf16 model weights for encoding
Writes metrics/eval.json, reports/eval.md, reports/leaderboard.json and
reports/plots/per_dataset/<model>.json (rank 0 only; byte-deterministic for the same embeddings).
Reads metrics/etl.json for each dataset's source rows: Precision@1 is over the rows normalize
accepted, and the reports say how many it rejected (leaderboard `num_data` = source rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pipelines.mmeb import resolve_subsets
from stages.common import check_keys, load_params, setup_logging
from trainer import distributed, provenance
from trainer.eval import report
from trainer.eval.cache import EmbeddingCache, prune
from trainer.eval.protocol import DatasetResult, Encoder, EvalSet, ImageLoader, encode_items, list_datasets, \
    load_eval_set, score

log = setup_logging("stages.evaluate")

EVAL_ROOT = Path("data/normalized/eval")
IMAGES_ROOT = Path("data/normalized/images")
MODELS_ROOT = Path("models")
ETL_FILE = Path("metrics/etl.json")
PARAMS = ("models", "batch_size", "datasets", "image_max_pixels", "cache", "cache_dir", "cache_max_gb", "precision")
METRICS_FILE = Path("metrics/eval.json")
REPORT_FILE = Path("reports/eval.md")
LEADERBOARD_FILE = Path("reports/leaderboard.json")
PLOTS_DIR = Path("reports/plots/per_dataset")
CACHE_PROTOCOL = "mmeb-item/3"  # bump when the way an item becomes encoder input or its batch changes
ENCODING_CODE = ("trainer.embed", "trainer.eval.protocol")  # item -> vector, with everything they import


def cache_settings(image_max_pixels: int | None, batch_size: int) -> dict[str, Any]:
    """What, besides the model's fingerprint, the cached vectors depend on: the image resolution, the
    batch size (an item's batch, whose padding moves its vector in the last bits), the item protocol
    and the encoding code (`trainer.provenance.source_digest`), so an edit to pooling, collation or
    image loading re-encodes instead of serving the old vectors."""
    code = "".join(provenance.source_digest(module) for module in ENCODING_CODE)
    return {"image_max_pixels": image_max_pixels, "batch_size": batch_size, "protocol": CACHE_PROTOCOL,
            "code": code}


def cache_keys(eval_set: EvalSet) -> list[str]:
    """The cache keys of a dataset's items: its name and the item's content hash. An item shared by
    two datasets is encoded in each one's own batches (see `encode_items`), so each dataset's metrics
    are the same whichever datasets were scored before it."""
    return [f"{eval_set.dataset}/{key}" for key in eval_set.keys]


ModelLoader = Callable[[str, Path, Mapping[str, Any]], Encoder]


def source_rows(etl_file: Path, eval_sets: list[EvalSet]) -> dict[str, int]:
    """{dataset: rows in its source} from the normalize stage's metrics/etl.json ({} with a warning
    when the file is missing, e.g. hand-made normalized data); an accepted count other than the
    records found means the file belongs to another run and is refused."""
    if not etl_file.is_file():
        log.warning("%s not found: the reports cannot say how many eval rows normalize rejected", etl_file)
        return {}
    stats = json.loads(etl_file.read_text(encoding="utf-8")).get("datasets", {})
    out = {}
    for es in eval_sets:
        entry = stats.get(f"eval/{es.dataset}")
        if entry is None:
            log.warning("%s has no entry for eval/%s: its rejected rows are not known", etl_file, es.dataset)
            continue
        if entry["accepted"] != es.n_queries:
            raise ValueError(f"{etl_file} says normalize accepted {entry['accepted']} rows of eval/{es.dataset}, "
                             f"but {es.n_queries} records are there: the file is from another run "
                             "(re-run the normalize stage)")
        out[es.dataset] = int(entry["rows_in"])
        if entry["rows_in"] > entry["accepted"]:
            log.warning("eval/%s: %d of %d source rows were rejected by normalize (data/rejects/); Precision@1 "
                        "is over the other %d", es.dataset, entry["rows_in"] - entry["accepted"], entry["rows_in"],
                        entry["accepted"])
    return out


def load_embedding_model(name: str, path: Path, params: Mapping[str, Any]) -> Encoder:
    """The real model (`trainer.embed.EmbeddingModel`) on this rank's device."""
    from trainer.embed import EmbeddingModel

    device = distributed.init_from_env().device
    precision = params.get("precision", "fp32")
    return EmbeddingModel.load(path, device=device, dtype=None if precision == "fp32" else precision,
                               image_max_pixels=params.get("image_max_pixels") or None)


def run(params: Mapping[str, Any], *, root: Path = Path("."), load_model: ModelLoader = load_embedding_model,
        ) -> dict[str, list[DatasetResult]] | None:
    """Score every model of `params["models"]` on the selected datasets and write the outputs under
    `root`. Returns {model: [DatasetResult]} on rank 0, None on other ranks."""
    root = Path(root)
    check_keys("eval", params, PARAMS)
    models = list(params.get("models") or [])
    if not models:
        raise ValueError("params eval.models is empty: nothing to evaluate")
    batch_size = int(params.get("batch_size", 64))
    max_gb = params.get("cache_max_gb", 20)
    if max_gb is not None and (isinstance(max_gb, bool) or not isinstance(max_gb, (int, float)) or max_gb < 0):
        raise ValueError(f"params eval.cache_max_gb must be a number >= 0 or null, got {max_gb!r}")
    max_pixels = params.get("image_max_pixels") or None
    eval_root = root / EVAL_ROOT
    datasets = resolve_subsets(params.get("datasets", "all"), list_datasets(eval_root))
    if not datasets:
        raise FileNotFoundError(f"no eval datasets under {eval_root}")
    missing = [m for m in models if not (root / MODELS_ROOT / m).is_dir()]
    if missing:
        raise FileNotFoundError(f"model folder(s) {[str(MODELS_ROOT / m) for m in missing]} missing under {root}: "
                                "run the backbone/train stages first")
    is_main = distributed.is_main()
    eval_sets: list[EvalSet] = [load_eval_set(eval_root, d) for d in datasets]
    log.info("%d eval dataset(s): %s", len(eval_sets), ", ".join(f"{e.dataset} ({e.n_queries})" for e in eval_sets))
    sources = source_rows(root / ETL_FILE, eval_sets)
    needs_images = any(it.get("image") for es in eval_sets for it in es.items)
    images = ImageLoader(root / IMAGES_ROOT, max_pixels) if needs_images else None

    evals: dict[str, list[DatasetResult]] = {}
    metadata: dict[str, dict] = {}
    settings = cache_settings(max_pixels, batch_size)  # the same for every model: digests the code once
    cache_root = root / params.get("cache_dir", ".cache/embeddings")
    used_caches = []
    for name in models:
        model = load_model(name, root / MODELS_ROOT / name, params)
        cache = None
        if is_main and params.get("cache", True):
            cache = EmbeddingCache(cache_root, model.fingerprint, settings)
            used_caches.append(cache.dir)
        metadata[name] = {"path": str(MODELS_ROOT / name), "fingerprint": model.fingerprint}
        results = []
        started = time.perf_counter()
        for es in eval_sets:
            emb, stats = encode_items(model, es.items, cache_keys(es), batch_size=batch_size, load_images=images,
                                      cache=cache, desc=f"{name} {es.dataset}")
            if not is_main:
                continue
            result = dataclasses.replace(score(es, emb), source_rows=sources.get(es.dataset))
            results.append(result)
            log.info("%s %s: P@1 %.2f (%d queries; naive %d encodings, %d distinct, %d encoded, %d cached)",
                     name, es.dataset, result.precision_at_1, es.n_queries, es.naive_encodings,
                     es.dedup_encodings, stats.encoded, stats.cache_hits)
        if is_main:
            evals[name] = results
            log.info("%s: overall P@1 %.2f over %d datasets in %.1f s", name,
                     sum(r.precision_at_1 for r in results) / len(results), len(results),
                     time.perf_counter() - started)
        del model
    if is_main:
        write_outputs(evals, metadata, root)
        if used_caches and max_gb is not None:
            prune(cache_root, int(max_gb * 1e9), keep=used_caches)
    distributed.barrier()
    return evals if is_main else None


def write_outputs(evals: Mapping[str, list[DatasetResult]], metadata: Mapping[str, dict], root: Path) -> None:
    """metrics/eval.json, reports/eval.md, reports/leaderboard.json, reports/plots/per_dataset/*.json."""
    root = Path(root)
    _write_json(root / METRICS_FILE, report.metrics_document(evals))
    _write_json(root / LEADERBOARD_FILE, report.leaderboard(evals, metadata))
    plots = root / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.json"):
        stale.unlink()
    for model, rows in report.plot_rows(evals).items():
        _write_json(plots / f"{model}.json", rows)
    (root / REPORT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / REPORT_FILE).write_text(report.markdown(evals, metadata), encoding="utf-8")
    log.info("wrote %s, %s, %s, %s/", METRICS_FILE, REPORT_FILE, LEADERBOARD_FILE, PLOTS_DIR)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=None, help="params file (default params.yaml)")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the embedding cache")
    args = parser.parse_args(argv)
    params = load_params("eval", path=args.params)
    if args.no_cache:
        params["cache"] = False
    distributed.init_from_env()
    try:
        run(params)
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
