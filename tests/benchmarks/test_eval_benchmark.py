"""benchmarks/eval.py: the evaluate stage against the naive per-row loop, on a tiny selection; the
script builds its eval section from params.yaml, so a new eval key cannot leave it broken."""

from __future__ import annotations

import re

from tests.support.scripts import script_module


def test_the_stage_encodes_less_than_the_naive_loop_and_nothing_when_warm(tmp_path, monkeypatch):
    results = tmp_path / "results.md"
    with script_module("benchmarks/eval.py", "eval_benchmark_under_test") as bench:
        monkeypatch.setattr(bench, "WORK", tmp_path / "work")
        assert bench.main(["--eval-rows", "3", "--candidates", "3", "--datasets", "Syn-ShapeCLS",
                           "--batch-size", "8", "--results", str(results)]) == 0
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([a-z ,]+) \| [\d.]+ \| (\d+) \|",
                                                             results.read_text(), re.M)}
    # the naive loop encodes every row's query and candidates; the stage each distinct item once
    assert 0 < rows["stage, cold cache"] < rows["naive per row"] and rows["stage, warm cache"] == 0
