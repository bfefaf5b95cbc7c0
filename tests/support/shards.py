"""Tiny training shards in the real shard format (written by `pipelines.shard`'s writer), for tests of
the streaming loader and the recipe.

    write_test_shards(root, {"A": 25, "B": 5}, per_shard=10)           # default_record's samples
    write_test_shards(root, {"A": 4}, make_record=my_record)            # my_record(dataset, i) -> (sides, {})

A record is {"query": side, "target": side, "negatives": [side, ...]}, each side made by `make_side`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from PIL import Image

from pipelines import shard as shard_format
from tests.support.images import image_bytes
from tests.support.params import section
from trainer.train import stream

_IMAGES: dict[str, bytes] = {}  # sha256 -> bytes of every image made by make_side (for the writer)


def make_side(text: str, image: bytes | None = None, member: str | None = None, instruction: str = "") -> dict:
    """A record side in the shard JSON format; its image bytes are registered for write_test_shards."""
    ref = None
    if image is not None:
        sha = hashlib.sha256(image).hexdigest()
        _IMAGES[sha] = image
        with Image.open(io.BytesIO(image)) as im:
            w, h = im.size
        ref = {"sha256": sha, "path": f"{member}", "width": w, "height": h, "member": member,
               "member_sha256": sha}
    raw = ("<|image_1|> " if image is not None else "") + (f"{instruction}: " if instruction else "") + text
    template = ("<|image_1|> " if image is not None else "") + ("{instruction}: " if instruction else "") + "{text}"
    return {"raw": raw, "instruction": instruction, "text": text, "has_image_token": image is not None,
            "template": template, "image": ref}


def default_record(dataset: str, i: int) -> tuple[dict, dict[str, bytes]]:
    """A record whose query is an image coloured by (dataset, i) and whose target is text."""
    colour = ((i * 37) % 256, (i * 91) % 256, (len(dataset) * 53) % 256)
    return ({"query": make_side(f"q{i}", image_bytes(colour, fmt="PNG"), "query.png", "Find the caption"),
             "target": make_side(f"{dataset} caption {i}", None, None), "negatives": []}, {})


def write_test_shards(root: Path, sizes: dict[str, int], per_shard: int = 10, make_record=default_record,
                      corrupt: set[str] = frozenset()) -> list[stream.Shard]:
    """Write `sizes[dataset]` samples per dataset as shards of at most `per_shard` samples plus
    index.json, with pipelines.shard's writer; records with ids in `corrupt` get garbage image bytes.
    The index records images kept as they are (no pre-scaling, no grid, no cap on their sides)."""
    root = Path(root)
    results = []
    for dataset, n in sizes.items():
        writer = shard_format.ShardWriter(root, dataset, per_shard, 10**9)
        result = shard_format.DatasetShards(dataset, "retrieval", "IND", "original")
        for i in range(n):
            rid = f"{dataset}/original/{i}"
            sides, _ = make_record(dataset, i)
            doc = {"id": rid, "dataset": dataset, "split": "original", "meta_task": "retrieval",
                   "distribution": "IND", "instruction": sides["query"]["instruction"], **sides}
            key = shard_format.sample_key(rid)
            members = []
            named = [("query", sides["query"]), ("target", sides["target"])]
            named += [(f"neg{j}", s) for j, s in enumerate(sides["negatives"])]
            for stem, side in named:
                if side["image"] is not None:
                    payload = _IMAGES[side["image"]["sha256"]]
                    if rid in corrupt:
                        payload = b"not an image"
                    members.append((f"{key}.{side['image']['member']}", payload))
            writer.add(shard_format.Sample(key, [(f"{key}.json", shard_format.json_bytes(doc))] + sorted(members)))
            result.samples += 1
        result.shards = writer.close()
        results.append(result)
    params = section("shard", max_samples=per_shard, max_bytes=10**9, image_max_side=4096, image_max_pixels=None,
                     image_size_multiple=None, max_rows_per_dataset=None, shuffle=False, seed=0)
    index = shard_format.build_index(params, results)
    (root / shard_format.INDEX_FILE).write_text(json.dumps(index, sort_keys=True, indent=1))
    return stream.read_shards(root)
