"""benchmarks/padding.py: the same real tokens in every setting, fewer positions by input kind."""

from __future__ import annotations

import json

from pipelines.shard import write_shards
from tests.support.params import section
from tests.support.scripts import script_module
from tests.support.v2_train import build_v2_train


def test_sub_batches_by_kind_count_fewer_positions_for_the_same_tokens(workspace_template, tmp_path, monkeypatch,
                                                                       capsys):
    train_dir, store = build_v2_train(tmp_path / "data", rows=6, frames=2)  # V1 images, pages, videos
    write_shards(train_dir, store, tmp_path / "shards",
                 section("shard", workers=1, image_max_pixels=1024, image_size_multiple=16, max_rows_per_dataset=None,
                         shuffle=True, seed=0, max_samples=4, max_bytes=1 << 20, image_max_side=1000))
    with script_module("benchmarks/padding.py", "padding_under_test") as bench:
        monkeypatch.setattr(bench, "OUT", tmp_path / "padding.json")
        result = bench.main(["--shards", str(tmp_path / "shards"), "--base", str(workspace_template / "models/base"),
                             "--max-pixels", "1024", "--batch", "8", "--steps", "3", "--gc-chunk", "4",
                             "--workers", "0"])
    rows = {(r["gc_chunk"], r["sub_batches"]): r for r in result["rows"]}
    assert len({r["tokens"] for r in rows.values()}) == 1 and result["tokens_per_pair"] > 0
    assert rows[0, "none"]["vs_one_batch"] == 1.0
    assert rows[0, "kind"]["positions"] < rows[0, "none"]["positions"]  # video rows no longer pad the others
    assert rows[4, "kind"]["positions"] <= rows[4, "none"]["positions"]
    for r in rows.values():
        assert r["padding"] == round(1 - r["tokens"] / r["positions"], 4)
    assert json.loads((tmp_path / "padding.json").read_text()) == result
    assert "| off | kind |" in capsys.readouterr().out
