"""The two exceptions every stage shares.

`Rejected`: one source row, image or archive member cannot be used. It carries a machine-readable
``reason`` (the reject reasons listed in docs/records.md) and a human ``detail`` naming the side and
the path; the caller quarantines the row under that reason (data/rejects, metrics/etl.json) instead of
crashing or dropping it silently.

`StageFailed`: a stage ran and wrote its outputs, but its acceptance policy says the run failed (e.g.
normalize rejected more rows than ``normalize.max_reject_fraction``). The stage entry point prints the
message and exits with status 1, leaving the outputs in place to be inspected.
"""

from __future__ import annotations


class Rejected(Exception):
    """A row, image or member refused for `reason` (short, machine-readable), with `detail`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StageFailed(RuntimeError):
    """The stage's outputs are written but its acceptance policy failed; the message says why."""
