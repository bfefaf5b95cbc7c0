"""The run's metrics (`trainer.train.live`): metrics.json's aggregates of the whole dvclive history."""

from __future__ import annotations

import pytest

from trainer.train.live import run_summary


def test_run_summary_is_stable_aggregates_of_the_whole_history(tmp_path):
    """metrics.json for `dvc metrics diff`: loss and grad norm averaged over the last tenth of the
    steps, throughput the median step (a slow checkpoint step does not move it), the last learning rate."""
    plots = tmp_path / "plots" / "metrics"
    plots.mkdir(parents=True)
    values = {"loss": [5.0] * 18 + [1.0, 3.0], "grad_norm": [9.0] * 18 + [0.5, 1.5],
              "pairs_per_s": [100.0] * 19 + [1.0], "learning_rate": [0.1 * (20 - i) for i in range(20)]}
    for name, column in values.items():
        rows = ["step\t" + name] + [f"{i}\t{v}" for i, v in enumerate(column)]
        (plots / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    assert run_summary(tmp_path) == pytest.approx(
        {"loss": 2.0, "grad_norm": 1.0, "pairs_per_s": 100.0, "learning_rate": 0.1})
