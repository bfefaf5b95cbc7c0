"""The README's torchrun launch lines ("On GPUs and across nodes"): torchrun's own parser accepts
them, they run an existing stage module, they record that stage, and on several nodes only the
first node records it (rank 0 writes the outputs; another node has none to commit)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def launch_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### On GPUs and across nodes", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("torchrun ")]


def test_readme_torchrun_lines_parse_and_record_their_stage_on_the_first_node_only():
    from torch.distributed.run import get_args_parser

    lines = launch_lines()
    assert len(lines) >= 3
    for line in lines:
        launch, _, record = line.partition(" && ")
        shell = launch.replace("$NODE_RANK", "1").replace("$HEAD_NODE", "node0")  # as on the second node
        args = get_args_parser().parse_args(shlex.split(shell)[1:])
        assert args.module and args.training_script.startswith("stages."), line
        stage = args.training_script.split(".", 1)[1]
        assert (ROOT / "stages" / f"{stage}.py").is_file(), line
        assert f"dvc commit -f {stage}" in record, line
        if not args.standalone and args.nnodes not in ("1", "1:1"):
            # every node runs this line; the outputs exist on the first node only
            assert re.search(r'if \[ "\$NODE_RANK" = 0 \]; then dvc commit -f \w+; fi', record), line
