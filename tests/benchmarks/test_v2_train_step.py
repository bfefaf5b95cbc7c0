"""benchmarks/v2_train_step.py: each kind of pair reaches the model with the vision tokens it should."""

from __future__ import annotations

import sys

from tests.support.scripts import script_module


def test_the_benchmark_runs_and_counts_a_videos_tokens(monkeypatch, capsys):
    with script_module("benchmarks/v2_train_step.py", "v2_train_step_under_test") as bench:
        monkeypatch.setattr(sys, "argv", ["v2_train_step.py", "--batch", "4", "--frames", "4", "--side", "32",
                                          "--rounds", "1", "--threads", "1", "--clock", "cpu"])
        bench.main()
    rows = {line.split("|")[1].strip(): line.split("|")[5].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| pairs")}
    # 32 px: 4 x 4 patches / merge 2 x 2 = 4 tokens a picture; 4 frames = 2 temporal patches: 8 tokens
    assert rows == {"image": "4, 0", "page": "4, 0", "video": "8, 0", "text->video": "0, 8",
                    "mixed": "4, 2", "mixed, by kind": "4, 2",  # one pair of each kind
                    "V1 i2t + t2i": "2, 2", "V1 i2t + t2i, by kind": "2, 2",  # half the queries, half the targets
                    "V1 + 1 video": "5, 0", "V1 + 1 video, by kind": "5, 0"}  # (3 images + 8) / 4
