"""Digest verification cost against loading: what `pipelines.digests.verify` adds to every load of a
model folder (`load_backbone`, hence `EmbeddingModel.load`) and to a resume.

    python benchmarks/digests.py [--hidden 128 1024] [--layers 2 8] [--repeats 3]

For each size, builds a tiny Qwen2-VL (`build_tiny`) and saves it (`save_backbone`, which records the
digests) under benchmarks/_work/digests/; then times, median of `--repeats` (page cache warm, as
for a model loaded twice in a row): `verify` of the folder; `load_backbone` of it with the
verification switched off (transformers maps safetensors lazily: the bytes are read at first use);
the same followed by a read of every weight page (`touch`, what the first forward pass does); and
`safetensors.torch.load_file` of its weights (how a checkpoint is resumed: every byte read). Prints
one row per size with verify's share of the load with every weight read, and its throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from safetensors.torch import load_file  # noqa: E402

from pipelines import digests  # noqa: E402
from trainer.backbone import families  # noqa: E402

WORK = REPO / "benchmarks" / "_work" / "digests"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def touch(model) -> float:
    """Read one value per 4 KiB page of every weight: a lazily mapped checkpoint is then in memory,
    as after the first forward pass."""
    return float(sum(p.detach().reshape(-1)[::1024].float().sum() for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("| model | bytes | verify s | load_backbone s | + every weight read s | load_file s "
          "| verify / (load + read) | verify MB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for hidden, layers in zip(args.hidden, args.layers):
        folder = WORK / f"qwen2_vl-h{hidden}-l{layers}"
        if not (folder / digests.MANIFEST).is_file():
            families.save_backbone(families.build_tiny("qwen2_vl", hidden_size=hidden, layers=layers), folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        verify = timed(lambda: digests.verify(folder), args.repeats)
        with mock.patch.object(families.digests, "verify", lambda *a, **k: None):
            load = timed(lambda: families.load_backbone(str(folder)), args.repeats)
            used = timed(lambda: touch(families.load_backbone(str(folder)).model), args.repeats)
        weights = timed(lambda: [load_file(f) for f in sorted(folder.glob("*.safetensors"))], args.repeats)
        print(f"| tiny Qwen2-VL hidden {hidden}, {layers} layers | {size:,} | {verify:.3f} | {load:.3f} | "
              f"{used:.3f} | {weights:.3f} | {verify / used:.0%} | {size / verify / 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
