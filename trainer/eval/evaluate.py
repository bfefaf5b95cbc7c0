"""The evaluate stage's work: MMEB Precision@1 of models/<name> on the normalized eval records.

    results = evaluate(params.eval)            # {model: [DatasetResult]} on rank 0, None elsewhere

Under torchrun the items are split across ranks (`trainer.eval.protocol.encode_items`); rank 0 scores
and writes metrics/eval.json, reports/eval.md, reports/leaderboard.json,
reports/plots/per_dataset/<model>.json and reports/submission/<model>.json (the MMEB leaderboard's
submission file, `trainer.eval.submission`), byte-deterministic for the same embeddings. Vectors are
reused from the on-disk embedding cache (`trainer.eval.cache`), keyed by the model's fingerprint, the
encode settings and the encoding code, and older models' vectors are pruned to `eval.cache_max_gb`.
metrics/etl.json gives each dataset's source rows: Precision@1 is over the rows normalize accepted,
and the reports say how many it rejected (leaderboard `num_data` = source rows).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pipelines import files
from pipelines.mmeb import resolve_subsets
from pipelines.params import RENDERING, Eval
from trainer import distributed, provenance
from trainer.eval import evaluate_v2, report, stray, submission
from trainer.eval.cache import EmbeddingCache, prune
from trainer.eval.protocol import DatasetResult, Encoder, EvalSet, ImageLoader, encode_items, list_datasets, \
    load_eval_set, score

log = logging.getLogger(__name__)

EVAL_ROOT = Path("data/normalized/eval")
IMAGES_ROOT = Path("data/normalized/images")
MODELS_ROOT = Path("models")
ETL_FILE = Path("metrics/etl.json")
METRICS_FILE = Path("metrics/eval.json")
REPORT_FILE = Path("reports/eval.md")
LEADERBOARD_FILE = Path("reports/leaderboard.json")
PLOTS_DIR = Path("reports/plots/per_dataset")
SUBMISSION_DIR = Path("reports/submission")
CACHE_PROTOCOL = "mmeb-item/3"  # bump when the way an item becomes encoder input or its batch changes
ENCODING_CODE = ("trainer.embed", "trainer.eval.protocol")  # item -> vector, with everything they import

ModelLoader = Callable[[str, Path, Eval], Encoder]


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


def load_embedding_model(name: str, path: Path, params: Eval) -> Encoder:
    """The real model (`trainer.embed.EmbeddingModel`) on this rank's device."""
    from trainer.embed import EmbeddingModel

    device = distributed.init_from_env().device
    return EmbeddingModel.load(path, device=device, dtype=None if params.precision == "fp32" else params.precision,
                               image_max_pixels=params.image_max_pixels,
                               rendering={k: getattr(params, k) for k in RENDERING},
                               lineage_first=params.rendering_from == "model")


def rendering_of(model: Encoder, params: Eval) -> dict[str, Any]:
    """The input rendering and image cap `model` is scored with: its own (`EmbeddingModel.collation`,
    which under ``eval.rendering_from: model`` holds its lineage's), else the params' (stand-ins)."""
    own = getattr(model, "collation", None) or {}
    keys = ("image_max_pixels",) + RENDERING
    return {k: own.get(k, getattr(params, k)) for k in keys}


def image_loader(root: Path, rendering: dict[str, Any], loaders: dict) -> ImageLoader:
    """The image loader for a rendering: images pre-scaled to its cap when the collator resizes, left
    to the processor otherwise (one loader per distinct pre-scale, shared by the models that use it)."""
    pixels = pre_scale(rendering)
    if pixels not in loaders:
        loaders[pixels] = ImageLoader(root / IMAGES_ROOT, pixels)
    return loaders[pixels]


def evaluate(params: Eval, *, root: Path = Path("."), load_model: ModelLoader = load_embedding_model,
             recipe: dict | None = None, score_v1: bool = True) -> dict[str, list[DatasetResult]] | None:
    """Score every model of `params.models` on the selected datasets and write the outputs under
    `root`. `params` is the checked section with ``image_max_pixels`` resolved (a number or None);
    `recipe` (`pipelines.profiles.differences`) goes into the report. MMEB-V2's datasets are scored
    when data/normalized/eval_v2 holds some (`evaluate_v2`); without `score_v1` (data.benchmark: v2)
    only they are. Returns {model: [DatasetResult]} on rank 0, None on other ranks."""
    root = Path(root)
    eval_sets = select(params, root) if score_v1 else evaluate_v2.v2_only(params.models, root)
    sources = source_rows(root / ETL_FILE, eval_sets)
    needs_images = any(it.get("image") for es in eval_sets for it in es.items)
    loaders: dict = {}  # ImageLoader by pre-scale (`image_loader`)
    is_main = distributed.is_main()
    evals: dict[str, list[DatasetResult]] = {}
    metadata: dict[str, dict] = {}
    facts: dict[str, dict] = {}
    strays: dict[str, dict] = {}  # per model: stray placeholders per dataset and the rule (trainer.eval.stray)
    cache_root = root / params.cache_dir
    used_caches = []
    v2_pool, v2 = evaluate_v2.load_v2_pool(root / evaluate_v2.V2_ROOT), {}  # MMEB-V2 (data.benchmark v2/both)
    v2_protocol = evaluate_v2.Protocol(ties=params.v2_ties, labels=params.v2_labels)
    video_inputs: dict[str, str] = {}  # per model: how MMEB-V2's videos reach it
    for name in params.models:
        model = load_model(name, root / MODELS_ROOT / name, params)
        rendering = rendering_of(model, params)
        loader = image_loader(root, rendering, loaders)
        images = loader if needs_images else None
        cache = None
        if is_main and params.cache:
            cache = EmbeddingCache(cache_root, model.fingerprint,
                                   cache_settings(rendering["image_max_pixels"], params.batch_size))
            used_caches.append(cache.dir)
        metadata[name] = {"path": str(MODELS_ROOT / name), "fingerprint": model.fingerprint,
                          "rendering": rendering}
        facts[name] = submission.model_facts(model)
        strays[name] = stray.counts(eval_sets, stray.rule_of(model))
        results = score_model(name, model, eval_sets, batch_size=params.batch_size, images=images, cache=cache,
                              sources=sources) if eval_sets else []
        if is_main:
            evals[name] = results
        if v2_pool.sets:
            v2[name] = evaluate_v2.score_v2(name, model, v2_pool, batch_size=params.batch_size, images=loader,
                                            cache=cache, protocol=v2_protocol, video_input=params.video_input)
            video_inputs[name] = evaluate_v2.video_input_of(model, params.video_input)
        del model
    if is_main:
        if score_v1:
            write_outputs(evals, metadata, root, recipe, facts, strays)
        else:
            evaluate_v2.clear_v1_outputs(root, (METRICS_FILE, REPORT_FILE, LEADERBOARD_FILE), root / PLOTS_DIR)
        if v2_pool.sets:
            evaluate_v2.write_v2(v2, metadata, root, v2_protocol.record(v2_pool.sets), video_inputs)
        else:
            evaluate_v2.write_plots({}, root / evaluate_v2.PLOTS_DIR)
        if used_caches and params.cache_max_gb is not None:
            prune(cache_root, int(params.cache_max_gb * 1e9), keep=used_caches)
    distributed.barrier()
    return evals if is_main else None


def pre_scale(rendering: Mapping[str, Any]) -> int | None:
    """The pixels the image loader scales eval images to before a model's input rendering
    (`rendering_of`), V1 and V2 alike: ``image_max_pixels`` when the collator resizes (as training's
    collator does), None when the processor resizes (``image_resize: processor``, VLM2Vec's way: it
    gets the stored image)."""
    return rendering["image_max_pixels"] if rendering["image_resize"] == "collator" else None


def select(params: Eval, root: Path) -> list[EvalSet]:
    """The eval sets `params.datasets` names under root/data/normalized/eval, once the models to
    score are known to exist under root/models."""
    eval_root = root / EVAL_ROOT
    selection = params.datasets if isinstance(params.datasets, str) else list(params.datasets)
    datasets = resolve_subsets(selection, list_datasets(eval_root))
    if not datasets:
        raise FileNotFoundError(f"no eval datasets under {eval_root}")
    missing = [m for m in params.models if not (root / MODELS_ROOT / m).is_dir()]
    if missing:
        raise FileNotFoundError(f"model folder(s) {[str(MODELS_ROOT / m) for m in missing]} missing under {root}: "
                                "run the backbone/train stages first")
    eval_sets = [load_eval_set(eval_root, d) for d in datasets]
    log.info("%d eval dataset(s): %s", len(eval_sets), ", ".join(f"{e.dataset} ({e.n_queries})" for e in eval_sets))
    return eval_sets


def score_model(name: str, model: Encoder, eval_sets: list[EvalSet], *, batch_size: int,
                images: ImageLoader | None, cache: EmbeddingCache | None,
                sources: dict[str, int]) -> list[DatasetResult]:
    """One model's results on every eval set (on rank 0; other ranks encode their share and get [])."""
    is_main = distributed.is_main()
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
        log.info("%s: overall P@1 %.2f over %d datasets in %.1f s", name,
                 sum(r.precision_at_1 for r in results) / len(results), len(results), time.perf_counter() - started)
    return results


def write_outputs(evals: dict[str, list[DatasetResult]], metadata: dict[str, dict], root: Path,
                  recipe: dict | None = None, facts: dict[str, dict] | None = None,
                  strays: dict[str, dict] | None = None) -> None:
    """metrics/eval.json, reports/eval.md, reports/leaderboard.json, reports/plots/per_dataset/*.json
    and reports/submission/*.json (one per scored model, `facts` its metadata; those of models not
    scored this time are removed); `strays` (`trainer.eval.stray.counts` per model) go into
    metrics/eval.json under each model's `stray_image_token`."""
    root = Path(root)
    metrics = stray.annotate(report.metrics_document(evals), strays)
    files.write_json(root / METRICS_FILE, metrics, ensure_ascii=False)
    files.write_json(root / LEADERBOARD_FILE, report.leaderboard(evals, metadata), ensure_ascii=False)
    plots = root / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.json"):
        stale.unlink()
    for model, rows in report.plot_rows(evals).items():
        files.write_json(plots / f"{model}.json", rows, ensure_ascii=False)
    submissions = root / SUBMISSION_DIR
    submissions.mkdir(parents=True, exist_ok=True)
    for stale in submissions.glob("*.json"):
        stale.unlink()
    for model, results in evals.items():
        document = submission.submission(model, results, (facts or {}).get(model, {}))
        files.write_json(submissions / f"{model}.json", document, ensure_ascii=False)
    files.write_text(root / REPORT_FILE, report.markdown(evals, metadata, recipe=recipe))
    log.info("wrote %s, %s, %s, %s/", METRICS_FILE, REPORT_FILE, LEADERBOARD_FILE, PLOTS_DIR)
