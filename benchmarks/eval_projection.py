"""How long the full MMEB-V1 and MMEB-V2 evaluations of a model take on one GPU, projected from the
encoder throughput that `benchmarks/gpu_encode.py` measured at each shape class and the distinct items
each dataset has.

    python benchmarks/eval_projection.py --encode benchmarks/results/gpu_encode_<card>.json
    python benchmarks/eval_projection.py --encode ... --path evaluate        # evaluate's own loop
    python benchmarks/eval_projection.py --encode ... --eval-sets data/normalized/eval   # counted V1 items

Items: `benchmarks/mmeb_items.json` (`--items`), per dataset its queries and its candidates by shape
class (v1-image, v1-text, v2-page, v2-video); candidates with a low and a high count where the number
left after deduplication is not known (the file says which and why). `--eval-sets` counts the distinct
items of normalized eval records instead (`trainer.eval.protocol.load_eval_set`: image items as v1-image,
text items as v1-text) and projects those datasets from the counts.

Throughput: items/s per class from the encode JSON's rows of `--path` (default `best`: the fastest of
the project's paths in that class; `evaluate`, `ours`, `plain`, ...); a class without that path falls
back to the best row of the class, and is named in the output.

Assumptions (printed with the result): every distinct item is encoded once (evaluate deduplicates by
content and caches); scoring, image loading from disk beyond JPEG decoding and model loading take no
time beside encoding (exact top-k is matrix products of ~1e3 x 1e5 per dataset); an item of a class
costs what the benchmark's synthetic items of that class cost (v1-image: 15-100 % of ~1 MP, so real
V1 images, mostly smaller, make this an upper bound for them); compilation, when the path compiles,
is paid once per run (`compile_s` of its rows, added once).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ITEMS = Path(__file__).resolve().parent / "mmeb_items.json"
GOALS_MIN = {"v1": 20, "v2": 60}


def rates(encode: dict, path: str) -> tuple[dict[str, float], dict[str, str], float]:
    """(items/s by class, the path used by class, compile seconds to add once) from a gpu_encode JSON."""
    ok = [r for r in encode["rows"] if r.get("status") == "ok" and r.get("items_per_s")]
    by_class: dict[str, float] = {}
    used: dict[str, str] = {}
    compile_s = 0.0
    for cls in sorted({r["cls"] for r in ok}):
        rows = [r for r in ok if r["cls"] == cls]
        ours = [r for r in rows if r["path"] != "plain"] or rows
        pick = (max(ours, key=lambda r: r["items_per_s"]) if path == "best" else
                next((r for r in rows if r["path"] == path), None) or max(ours, key=lambda r: r["items_per_s"]))
        by_class[cls], used[cls] = pick["items_per_s"], pick["path"]
        compile_s = max(compile_s, pick.get("compile_s") or 0.0)
    return by_class, used, compile_s


def counted_items(eval_sets: Path) -> dict[str, dict]:
    """Datasets of normalized eval records with their distinct items by class (low == high)."""
    from trainer.eval.protocol import list_datasets, load_eval_set

    out = {}
    for name in list_datasets(eval_sets):
        es = load_eval_set(eval_sets, name)
        images = sum(1 for s in es.items if s.get("image") is not None)
        out[name] = {"counted": {"v1-image": images, "v1-text": len(es.items) - images}}
    return out


def dataset_items(entry: dict) -> tuple[dict[str, int], dict[str, int]]:
    """(low, high) items by class of one dataset entry of the items file (or a counted one)."""
    if "counted" in entry:
        return dict(entry["counted"]), dict(entry["counted"])
    low: dict[str, int] = defaultdict(int)
    high: dict[str, int] = defaultdict(int)
    q, c = entry["queries"], entry["candidates"]
    low[q["class"]] += q["count"]
    high[q["class"]] += q["count"]
    low[c["class"]] += c["low"]
    high[c["class"]] += c["high"]
    return dict(low), dict(high)


def project(datasets: dict[str, dict], by_class: dict[str, float], compile_s: float) -> dict:
    """Items and seconds (low, high) by class and in total over the datasets."""
    items = {"low": defaultdict(int), "high": defaultdict(int)}
    for entry in datasets.values():
        for bound, counts in zip(("low", "high"), dataset_items(entry)):
            for cls, n in counts.items():
                items[bound][cls] += n
    missing = sorted({cls for b in items.values() for cls in b if cls not in by_class})
    if missing:
        raise SystemExit(f"the encode JSON has no throughput for class(es) {missing}")
    out = {"datasets": len(datasets), "compile_s": compile_s}
    for bound, counts in items.items():
        seconds = {cls: n / by_class[cls] for cls, n in counts.items()}
        out[bound] = dict(items=dict(counts), seconds={k: round(v, 1) for k, v in seconds.items()},
                          total_s=round(sum(seconds.values()) + compile_s, 1))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encode", type=Path, required=True, help="a benchmarks/gpu_encode.py JSON")
    p.add_argument("--path", default="best", help="the encode path whose throughput counts (default: best)")
    p.add_argument("--items", type=Path, default=ITEMS, help="distinct items per dataset (default: mmeb_items.json)")
    p.add_argument("--eval-sets", type=Path, default=None, help="count V1's items from normalized eval records")
    p.add_argument("--out", type=Path, default=None, help="also write the projection as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    encode = json.loads(args.encode.read_text(encoding="utf-8"))
    table = json.loads(args.items.read_text(encoding="utf-8"))
    by_class, used, compile_s = rates(encode, args.path)
    benchmarks = {"v1": table["v1"], "v2": table["v2"]}
    if args.eval_sets:
        benchmarks["v1"] = counted_items(args.eval_sets)
    result = dict(encode=str(args.encode), device=encode["meta"].get("device"), path=args.path,
                  items_per_s=by_class, path_by_class=used, items_source="counted" if args.eval_sets else str(args.items),
                  **{name: project(datasets, by_class, compile_s) for name, datasets in benchmarks.items()})
    print(f"MMEB evaluation projected for {result['device']} from {args.encode} (path {args.path})")
    for cls in sorted(by_class):
        print(f"  {cls:9} {by_class[cls]:9.1f} items/s  ({used[cls]})")
    for name in benchmarks:
        r = result[name]
        lo, hi = r["low"]["total_s"] / 60, r["high"]["total_s"] / 60
        print(f"{name.upper()}: {r['datasets']} datasets, {sum(r['low']['items'].values()):,} to "
              f"{sum(r['high']['items'].values()):,} distinct items: {lo:.1f} to {hi:.1f} min "
              f"(goal < {GOALS_MIN[name]} min; compilation {r['compile_s']:.0f} s included)")
        for cls in sorted(r["high"]["items"]):
            print(f"    {cls:9} {r['low']['items'][cls]:>9,} to {r['high']['items'][cls]:>9,} items  "
                  f"{r['low']['seconds'][cls] / 60:7.1f} to {r['high']['seconds'][cls] / 60:7.1f} min")
    print("Assumptions: each distinct item encoded once; scoring, disk reads and model loading not counted; an "
          "item costs what the benchmark's synthetic item of its class costs; candidate counts 'low' and 'high' "
          "bound the unknown ones (see the items file)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
