"""The trainer's own loop (`trainer.train.recipe.train`) on a GPU under each `train.compile` setting: that it
runs, that it trains what eager trains, and its pairs/s, on real shards.

    python3 benchmarks/gpu_train.py --base .gpu_train/base --shards .gpu_train/shards   # the device
    python benchmarks/gpu_train.py --tiny                                                 # CPU (tests)

`benchmarks/gpu.py` times one step on tensors already on the card, one shape. This runs the whole
loop instead: the streaming loader (webdataset over the shards, workers, pinned memory), the
Collator (with `pad_to_multiple_of`), batched vision attention, AdamW, the scheduler, the per-step
metrics and the final checkpoint, with the shapes that real batches give (text lengths vary, images
of several sizes). Variants (`--variants`, each a full run on the same shards, seed and batches):

  eager        train.compile false
  blocks       train.compile true (each decoder layer and vision block compiled)
  region       the language model compiled as one region (train.pad_to_multiple_of --multiple)
  cuda-graphs  that region replayed as inductor's CUDA graphs (train.pad_to_multiple_of --multiple)
  eager-one-batch  eager with train.sub_batches none: each side one padded batch, as the plain loop
               pads it (the others keep params.yaml's `kind`): what sub-batches by kind change
  gc-eager, gc-blocks, gc-region   the same with GradCache (train.gc_chunk_size --gc-chunk) at a
               global batch of --gc-batch (1024), --gc-steps steps
  plain, gc-plain   the baseline: the plain transformers + peft loop (`benchmarks/plain_train.py`: a
               torch DataLoader over the same shards read with tarfile, the model's own processor,
               `model(**inputs, output_hidden_states=True)`, the same LoRA settings, AdamW), without
               and with VLM2Vec-style eager GradCache, on the very batches (pair ids) of the first
               trainer variant of its kind that ran before it; `vs_plain` is each trainer
               variant's pairs/s over it, and its losses are compared like a compiled variant's

Model (`--shape`): `2b` (default on CUDA) keeps the base folder's tokenizer and image processor and
builds a Qwen2-VL-2B-shaped model with random weights (`benchmarks/gpu.py`'s sizes: text hidden 1536,
28 layers, ...; `--layers` fewer for a shorter compilation), the processor set to patch 14, merge 2
and `--image-pixels` (default 112896 = 336x336, 144 image tokens) as both its min and max pixels, so
the shards' small synthetic images reach the model at the benchmark's resolution (their aspect
ratios vary, so a batch mixes image sizes); `base` trains the base folder as it is. LoRA r=8 on the
language model, bf16 base and adapters, LoRA dropout 0: the GPU benchmark's settings.

Every trainer variant keeps params.yaml's `train.sub_batches` (kind: a side's text, image and video
rows embedded apart) where it applies (not under cuda-graphs, which keeps one padded batch per side).

Reported per variant: pairs/s (median over the steps after `--skip`, as the loop logs it: host time
between steps, data waits included), the data loader's wait (`loader_wait_s`, the median seconds the
loop spent in the loader's `next`, and `loader_share`, their sum over the steps' time after `--skip`:
the trainer's stream is wrapped here, the trainer's logged metrics stay as they are), the first
step's seconds (compilation), peak GiB, torch.compile's
graph count, and against eager the largest relative difference of the per-step losses over the
first `--compare` steps and of the final LoRA weights (bf16 rounding makes runs drift apart, so the
early losses are the sharp check). dvclive is replaced by a recorder of the logged metrics and the
export (merged copy) by a capture of the trained weights; everything else is the trainer's code.
JSON to $OUT/gpu_train.json (or benchmarks/_work/), rewritten after every variant. `--budget-min`
skips variants once the run has used that much wall time.

Needs torch, transformers, peft, pyarrow, pillow, tqdm, pyyaml and webdataset (carry its wheel and
braceexpand's to the device machine), not dvc or dvclive. Inputs for the device machine, prepared
here in an ignored folder that the call carries (about 14 MB): shards whose images are not
pre-scaled (the 2B shape's processor scales them, and `train` refuses shards scaled below its
resolution) and a Qwen2-VL base folder for the tokenizer and processor:

    echo /.gpu_train/ >> .git/info/exclude; py=$PWD/.venv/bin/python; d=$(mktemp -d); git clone -q . $d/c
    (cd $d/c && sed -i '/^shard:/,/^$/ s/^  image_max_pixels: train /  image_max_pixels: null /' params.yaml &&
     sed -i 's/^  v2_train_sets: all /  v2_train_sets: [] /' params.yaml &&  # the plain loop takes no videos
     $py -m stages.download && $py -m stages.normalize && $py -m stages.shard && $py -m stages.backbone)
    mkdir -p .gpu_train/whl && cp -r $d/c/data/shards/train .gpu_train/shards && cp -r $d/c/models/base .gpu_train/base
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .gpu_train/whl webdataset==1.0.2 braceexpand==0.1.7

and on the device machine (`carry: [".gpu_train"]`; `benchmarks/gpu_session.py` runs this script's
loop and GradCache comparisons and the encoder benchmark as one command):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_train/whl/*.whl &&
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train.py --base .gpu_train/base \
        --shards .gpu_train/shards --variants eager,cuda-graphs --layers 8 --steps 40 --budget-min 7
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import plain_train  # noqa: E402
from benchmarks.gpu import FULL  # noqa: E402
from pipelines.params import Train  # noqa: E402
from trainer.backbone.families import load_backbone, save_backbone  # noqa: E402
from trainer.model.acceleration import compile_blocks, compile_language_model  # noqa: E402
from trainer.train import build, live, recipe  # noqa: E402

log = logging.getLogger("gpu_train")
GIB = 1024 ** 3
# name: (train.compile, pad_to_multiple_of (None: --multiple), GradCache at --gc-batch in --gc-chunk chunks,
#        train.sub_batches (None: params.yaml's))
VARIANTS = {"eager": (False, 1, False, None), "blocks": (True, 1, False, None), "region": ("region", None, False, None),
            "cuda-graphs": ("cuda-graphs", None, False, None), "eager-one-batch": (False, 1, False, "none"),
            "gc-eager": (False, 1, True, None), "gc-blocks": (True, 1, True, None),
            "gc-region": ("region", None, True, None)}
PLAIN = {"plain": False, "gc-plain": True}  # transformers + peft (`benchmarks.plain_train`); value: GradCache
# benchmarks/gpu.py's FULL sizes (Qwen2-VL-2B); vocabulary, tied embeddings and special ids stay the base's
TEXT_2B = {k: v for k, v in FULL.text.items() if k not in ("vocab_size", "tie_word_embeddings")}
VISION_2B = dict(FULL.vision)

class Recorder:
    """Stands in for dvclive's Live: keeps every logged value per step."""

    def __init__(self):
        self.rows: list[dict] = [{}]
        self.summary: dict = {}

    def log_metric(self, name: str, value) -> None:
        self.rows[-1][name] = float(value)

    def next_step(self) -> None:
        self.rows.append({})

    def end(self) -> None:
        if not self.rows[-1]:
            self.rows.pop()


def scaled_base(base: Path, out: Path, *, layers: int, image_pixels: int, device: torch.device,
                min_pixels: int | None = None) -> Path:
    """`base`'s tokenizer and image processor with a Qwen2-VL-2B-shaped model of random bf16 weights
    (`layers` decoder layers), written to `out` by `save_backbone`; the processor scales images to
    `image_pixels` (to between `min_pixels` and it, when given)."""
    from transformers import AutoModelForImageTextToText

    backbone = load_backbone(str(base))
    if backbone.family != "qwen2_vl":
        raise SystemExit(f"--shape 2b needs a Qwen2-VL base folder, got family {backbone.family}")
    config = backbone.model.config
    for key, value in {**TEXT_2B, "num_hidden_layers": layers}.items():
        setattr(config.text_config, key, value)
    config.text_config.layer_types = ["full_attention"] * layers
    config.text_config.head_dim = TEXT_2B["hidden_size"] // TEXT_2B["num_attention_heads"]
    for key, value in VISION_2B.items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        backbone.model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    processor = backbone.image_processor
    processor.patch_size, processor.merge_size = 14, 2
    low = min_pixels or image_pixels
    processor.size = {"shortest_edge": low, "longest_edge": image_pixels}
    for name, value in (("min_pixels", low), ("max_pixels", image_pixels)):
        if hasattr(processor, name):
            setattr(processor, name, value)
    backbone.info = {**backbone.info, "name": f"qwen2-vl-2b-shaped-{layers}-layers-random"}
    save_backbone(backbone, out)
    del backbone
    return out


def train_params(args, compile_value, multiple: int, gc: bool = False, sub_batches: str | None = None) -> Train:
    """params.yaml's train section with the benchmark's settings (GradCache's batch, chunk and steps if `gc`;
    `sub_batches` None keeps params.yaml's)."""
    p = Train.parse(yaml_section(Path(__file__).resolve().parents[1] / "params.yaml", "train"))
    steps = args.gc_steps if gc else args.steps
    return replace(p, steps=steps, batch_size=args.gc_batch if gc else args.batch,
                   gc_chunk_size=args.gc_chunk if gc else 0, lora_rank=8, lora_alpha=16,
                   lora_dropout=0.0, precision="bf16" if not args.tiny else "fp32",
                   lora_dtype="bf16" if not args.tiny else "fp32", image_max_pixels=None, num_workers=args.workers,
                   save_every=steps, warmup_steps=0, learning_rate=1e-4, hard_negatives=0,
                   compile=compile_value, pad_to_multiple_of=multiple, sub_batches=sub_batches or p.sub_batches)


def yaml_section(path: Path, name: str) -> dict:
    import yaml

    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))[name])


def timed_batches(batches, waits: list, ids: list):
    """`batches` as they come, with the seconds each `next` waited and each batch's pair ids recorded."""
    while True:
        t0 = time.perf_counter()
        batch = next(batches)
        waits.append(time.perf_counter() - t0)
        ids.append(list(batch["ids"]))
        yield batch


def reset_device() -> None:
    """A clean slate for the next variant: no compiled graphs (nor their CUDA graphs), a fresh peak."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_variant(name: str, args, base: Path, work: Path) -> dict:
    compile_value, multiple, gc_on, sub_batches = VARIANTS[name]
    multiple = multiple or args.multiple
    recorder, captured, waits, ids = Recorder(), {}, [], []
    open_stream = recipe.open_stream

    def export(backbone, embedder, p, paths, summary, code_digest):
        captured["weights"] = {k: v.detach().float().cpu() for k, v in embedder.named_parameters() if v.requires_grad}

    def timed_stream(*a, **k):
        batches, position, stream = open_stream(*a, **k)
        return timed_batches(batches, waits, ids), position, stream

    # the trainer's module functions swapped for this run only (restored after it, also on failure)
    swaps = {(live, "open_live"): lambda *a, **k: recorder, (recipe, "export"): export,
             (recipe, "open_stream"): timed_stream}
    if args.tiny and compile_value:  # on CPU: aot_eager, the graphs without inductor's code generation
        swaps.update({(build, "compile_blocks"): partial(compile_blocks, backend="aot_eager"),
                      (build, "compile_language_model"): partial(compile_language_model, backend="aot_eager")})
    from torch._dynamo.utils import counters

    reset_device()
    counters.clear()
    paths = recipe.TrainPaths(base=base, shards=args.shards, out=work / f"out-{name}",
                            checkpoints=work / f"ckpt-{name}", metrics=work / f"metrics-{name}")
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for (module, attr), replacement in swaps.items():
            stack.enter_context(mock.patch.object(module, attr, replacement))
        p = train_params(args, compile_value, multiple, gc_on, sub_batches)
        summary = recipe.train(p, paths)
    wall = time.perf_counter() - t0
    rows = recorder.rows
    skip = args.gc_skip if gc_on else args.skip
    result = timing(rows, [r.get("pairs_per_s") for r in rows], waits, p.batch_size, skip)
    return dict(variant=name, compile=compile_value, pad_to_multiple_of=multiple, batch=p.batch_size,
                gc_chunk=p.gc_chunk_size, sub_batches=p.sub_batches_in_effect, steps=len(rows),
                wall_s=round(wall, 1), **result,
                images_per_s=round(statistics.median(r["images_per_s"] for r in rows[skip:]), 1)
                if result["pairs_per_s"] else None,
                graphs=int(counters["stats"]["unique_graphs"]), cudagraph_skips=int(counters["inductor"]["cudagraph_skips"]),
                final_loss=summary["final_loss"], losses=[r.get("loss") for r in rows],
                weights=captured.get("weights"), ids=ids)


def timing(rows: list, rates: list, waits: list[float], batch: int, skip: int) -> dict:
    """pairs/s (median and range after `skip` steps), the first step's seconds, peak memory and the
    data loader's wait: its median per step and its share of the steps' time after `skip`."""
    timed = [r for r in rates[skip:] if r]
    step_s = [batch / r for r in rates[skip:] if r]
    waited = waits[skip:len(rates)]
    return dict(pairs_per_s=round(statistics.median(timed), 2) if timed else None,
                pairs_per_s_range=[round(min(timed), 2), round(max(timed), 2)] if timed else None,
                first_step_s=round(batch / rates[0], 2) if rates and rates[0] else None,
                peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None,
                loader_wait_s=round(statistics.median(waited), 4) if waited else None,
                loader_share=round(sum(waited) / sum(step_s), 4) if waited and step_s else None)


def run_plain_variant(name: str, args, base: Path, results: list[dict]) -> dict:
    """The plain loop (`benchmarks.plain_train`) with the settings of the trainer's variants, on the
    batches of the first trainer variant of the same kind (GradCache or not) that ran before it."""
    gc_on = PLAIN[name]
    p = train_params(args, False, 1, gc_on)
    settings = plain_train.PlainSettings(
        steps=p.steps, batch=p.batch_size, lora_rank=p.lora_rank, lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout, learning_rate=p.learning_rate, temperature=p.temperature,
        max_grad_norm=p.max_grad_norm, seed=p.seed, workers=args.workers, bf16=not args.tiny, gc_chunk=p.gc_chunk_size)
    reference = next((r for r in results if r.get("ids") and r["gc_chunk"] == settings.gc_chunk), None)
    reset_device()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    run = plain_train.run_plain(settings, base, args.shards, device, id_batches=reference["ids"] if reference else None)
    skip = args.gc_skip if gc_on else args.skip
    result = dict(variant=name, compile=False, batch=p.batch_size, gc_chunk=p.gc_chunk_size, steps=p.steps,
                  wall_s=round(time.perf_counter() - t0, 1), **timing([], run["rates"], run["waits"], p.batch_size, skip),
                  final_loss=run["losses"][-1], losses=run["losses"],
                  batches_of=reference["variant"] if reference else "a seeded shuffle")
    if reference:  # LoRA's B starts at zero: the first step's model is the base in both loops
        first = reference["losses"][0]
        result["first_loss_rel"] = abs(run["losses"][0] - first) / max(abs(first), 1e-12)
    return result


def against_plain(results: list[dict]) -> None:
    """Each trainer variant's pairs/s over the plain loop's of the same kind (GradCache or not)."""
    for r in results:
        plain = next((q for q in results if q["variant"] in PLAIN and q.get("pairs_per_s") and
                      q["gc_chunk"] == r.get("gc_chunk")), None)
        if plain and r["variant"] not in PLAIN and r.get("pairs_per_s"):
            r["vs_plain"] = round(r["pairs_per_s"] / plain["pairs_per_s"], 3)


def against_eager(result: dict, eager: dict, compare: int) -> dict:
    """The largest relative difference to eager of the first `compare` losses and of the final weights."""
    pairs = [(a, b) for a, b in zip(result["losses"][:compare], eager["losses"][:compare]) if a is not None and b is not None]
    loss_rel = max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=None)
    weight_rel = None
    if result.get("weights") and eager.get("weights"):
        num = sum(float((result["weights"][k] - eager["weights"][k]).norm() ** 2) for k in eager["weights"])
        den = sum(float(v.norm() ** 2) for v in eager["weights"].values())
        weight_rel = (num / max(den, 1e-30)) ** 0.5
    return dict(loss_rel_max=loss_rel, weights_rel=weight_rel,
                ratio=(round(result["pairs_per_s"] / eager["pairs_per_s"], 3)
                       if result.get("pairs_per_s") and eager.get("pairs_per_s") else None))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, the base as it is, aot_eager, few steps (tests)")
    p.add_argument("--base", type=Path, default=Path("models/base"), help="a save_backbone folder (Qwen2-VL)")
    p.add_argument("--shards", type=Path, default=Path("data/shards/train"))
    p.add_argument("--shape", choices=("2b", "base"), default=None, help="default: 2b on CUDA, base otherwise")
    p.add_argument("--layers", type=int, default=28, help="--shape 2b: decoder layers (28 is Qwen2-VL-2B)")
    p.add_argument("--image-pixels", type=int, default=336 * 336, help="--shape 2b: the processor's min and max pixels")
    p.add_argument("--variants", default="eager,plain,cuda-graphs",
                   help=f"comma list of {','.join([*VARIANTS, *PLAIN])}")
    p.add_argument("--steps", type=int, default=None, help="steps per variant (default 40, --tiny 6)")
    p.add_argument("--batch", type=int, default=None, help="pairs per step (default 32, --tiny 4)")
    p.add_argument("--multiple", type=int, default=64, help="pad_to_multiple_of of region and cuda-graphs")
    p.add_argument("--skip", type=int, default=None, help="steps left out of the pairs/s median (default 5, --tiny 2)")
    p.add_argument("--gc-batch", type=int, default=None, help="gc-* variants: pairs per step (default 1024, --tiny 8)")
    p.add_argument("--gc-chunk", type=int, default=None, help="gc-* variants: GradCache chunk (default 64, --tiny 4)")
    p.add_argument("--gc-steps", type=int, default=None, help="gc-* variants: steps (default 4, --tiny 2)")
    p.add_argument("--gc-skip", type=int, default=1, help="gc-* variants: steps left out of the pairs/s median")
    p.add_argument("--compare", type=int, default=10, help="early steps whose losses are compared with eager")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--budget-min", type=float, default=9.0, help="skip variants once this much wall time is used")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [v for v in args.variants if v not in VARIANTS and v not in PLAIN]:
        p.error(f"unknown variant(s) {bad}; known: {','.join([*VARIANTS, *PLAIN])}")
    defaults = dict(steps=(6, 40), batch=(4, 32), skip=(2, 5), gc_batch=(8, 1024), gc_chunk=(4, 64), gc_steps=(2, 4))
    for name, (tiny, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.shape is None:
        args.shape = "2b" if torch.cuda.is_available() and not args.tiny else "base"
    if args.skip >= args.steps or args.gc_skip >= args.gc_steps:
        p.error("--skip (--gc-skip) leaves no step of --steps (--gc-steps) to time")
    return args


def run_record(script: str, argv, out: Path | None, device: torch.device) -> tuple[Path, dict]:
    """Where a device benchmark writes its JSON (`out`, else $OUT/<script>.json when OUT is set, else
    benchmarks/_work/) and the JSON's meta: the command, the card, torch's version."""
    name = Path(script).stem + ".json"
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).resolve().parent / "_work"
    out = out or folder / name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, dict(command=" ".join([script, *(argv if argv is not None else sys.argv[1:])]),
                     device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out, meta = run_record("gpu_train.py", argv, args.out, device)
    meta.update(shape=args.shape, layers=args.layers if args.shape == "2b" else None, steps=args.steps, batch=args.batch)
    results: list[dict] = []

    def write() -> None:
        against_plain(results)
        rows = [{k: v for k, v in r.items() if k not in ("weights", "ids")} for r in results]
        out.write_text(json.dumps(dict(meta=meta, results=rows), indent=1) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        work = Path(tmp)
        base = args.base
        if args.shape == "2b":
            t0 = time.perf_counter()
            base = scaled_base(args.base, work / "base", layers=args.layers, image_pixels=args.image_pixels, device=device)
            meta["build_s"] = round(time.perf_counter() - t0, 1)
        for name in args.variants:
            used = (time.perf_counter() - start) / 60
            if used > args.budget_min:
                log.warning("%s: skipped, %.1f of %.1f minutes used", name, used, args.budget_min)
                results.append(dict(variant=name, status="skipped (time budget)"))
                continue
            log.info("variant %s", name)
            try:
                result = (run_plain_variant(name, args, base, results) if name in PLAIN
                          else run_variant(name, args, base, work))
                result["status"] = "ok"
            except Exception as exc:  # record and go on: one variant's failure is a finding
                log.exception("%s failed", name)
                result = dict(variant=name, status=f"error: {type(exc).__name__}: {str(exc)[:400]}")
            # the reference: eager of the same kind; for a plain loop the variant whose batches it trained
            wanted = ((result.get("batches_of"),) if name in PLAIN else ("eager", "gc-eager"))
            eager = next((r for r in results if r["variant"] in wanted and r["status"] == "ok"
                          and r["gc_chunk"] == result.get("gc_chunk")), None)
            if eager is not None and result["status"] == "ok" and name not in ("eager", "gc-eager"):
                result.update(against_eager(result, eager, args.compare))
            results.append(result)
            write()
    print(f"\ntrainer loop: {meta['device']}, shape {args.shape}, batch {args.batch}, {args.steps} steps")
    print(f"{'variant':12} {'batch':>5} {'pairs/s':>9} {'vs plain':>8} {'vs eager':>8} {'first s':>8} {'peak GiB':>8} "
          f"{'loader':>6} {'graphs':>6} {'loss rel':>9} {'weights rel':>11}  status")
    for r in results:
        def f(key, fmt):  # "-" where a value is missing, in the column's width
            return format(r[key], fmt) if r.get(key) is not None else "-".rjust(int(fmt.split(".")[0].rstrip("dfe")))
        print(f"{r['variant']:12} {f('batch', '5d')} {f('pairs_per_s', '9.2f')} {f('vs_plain', '8.3f')} "
              f"{f('ratio', '8.3f')} {f('first_step_s', '8.1f')} {f('peak_gib', '8.2f')} {f('loader_share', '6.3f')} "
              f"{f('graphs', '6d')} {f('loss_rel_max', '9.1e')} {f('weights_rel', '11.1e')}  "
              f"{r['status']}")
    print(f"JSON: {out}  ({time.perf_counter() - start:.0f} s)")
    return 0 if all(r["status"] in ("ok", "skipped (time budget)") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
