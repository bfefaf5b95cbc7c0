"""benchmarks/digests.py: one row per model size, verify's share and throughput from its own timings."""

from __future__ import annotations

from tests.support.scripts import script_module


def test_prints_one_row_per_size(capsys):
    with script_module("benchmarks/digests.py", "digests_under_test") as bench:
        assert bench.main(["--hidden", "32", "--layers", "1", "--repeats", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| tiny Qwen2-VL hidden 32")]
    assert len(rows) == 1 and rows[0].count("|") == 9
