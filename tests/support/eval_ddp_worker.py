"""torchrun worker of tests/trainer/eval/test_evaluate.py::test_ddp_matches_single_process.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/support/eval_ddp_worker.py --root DIR

Runs `trainer.eval.evaluate.evaluate` on DIR (a tiny normalized eval set, models/base and models/embedder
folders) with the batch-sensitive fake encoders of tests/support/encoders.py, so the outputs equal a
one-process run only if every item was encoded in the same batch. Each rank also writes
DIR/encoded-rank<r>.json (items it encoded) so the test can check that the work was really split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by torchrun: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from tests.support.encoders import BatchSensitiveEncoder  # noqa: E402
from tests.support.eval_sets import eval_params  # noqa: E402
from trainer import distributed  # noqa: E402
from trainer.eval.evaluate import evaluate  # noqa: E402

ENCODERS: dict[str, BatchSensitiveEncoder] = {}


def fake_loader(name, path, params):
    ENCODERS[name] = BatchSensitiveEncoder(dim=16, name=name)
    return ENCODERS[name]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--batch-size", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = distributed.init_from_env()
    assert info.world_size == 2, info
    params = eval_params(batch_size=args.batch_size)
    try:
        evaluate(params, root=Path(args.root), load_model=fake_loader)
        out = Path(args.root) / f"encoded-rank{info.rank}.json"
        out.write_text(json.dumps({name: enc.encoded for name, enc in ENCODERS.items()}))
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
