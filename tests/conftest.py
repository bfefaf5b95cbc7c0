"""The fixtures several test files share; the helpers tests import live in tests/support/:

    images.py          image bytes: solid colours in any mode/format/size, seeded and drawn pictures,
                       bad images (truncated, CMYK, palette, alpha, header-only bombs)
    sides.py           record sides for the collator (`side`, `SIDES` and their `IMAGES`)
    shards.py          tiny training shards in the real shard format (`make_side`, `write_test_shards`)
    eval_sets.py       tiny normalized eval sets and image stores (`build_tiny_eval`, `write_records`,
                       `record_side`), the reference scorer (`reference_scores`)
    encoders.py        fake encoders for the evaluation (`HashEncoder`, `OverlapEncoder`,
                       `BatchSensitiveEncoder`) and `CountingEncoder`
    fixtures_mmeb.py   real-format raw MMEB (verbatim rows, parquet, zips in the Hub layout)
    hubserver.py       a local Hugging Face Hub stand-in and a tiny MMEB in the Hub layout
    train_workspace.py a training workspace (tiny base + shape/caption shards) and train params
    params.py          complete params: params.yaml with some keys overridden
    scripts.py         a script of benchmarks/ loaded as a module
    ddp_worker.py, eval_ddp_worker.py   torchrun workers of the distributed tests

Fixtures import their helpers when first used, so collecting a test file imports only what it needs.
"""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Nothing in the test suite may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from threads, and on 2 shared cores extra threads cost several times
    the work: every test runs torch single-threaded (subprocesses set their own)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- tiny backbones (one per test module: tests may change a backbone's settings) ---------------------
@pytest.fixture(scope="module")
def qwen():
    """A tiny random Qwen2-VL backbone (`trainer.backbone.families.build_tiny`, seed 0, 32 px)."""
    from trainer.backbone.families import build_tiny

    return build_tiny("qwen2_vl")


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def qwen_backbone(request):
    """Each tiny Qwen family backbone in turn: Qwen2-VL, Qwen2.5-VL, Qwen3-VL."""
    from trainer.backbone.families import build_tiny

    return build_tiny(request.param, image_size=32)


# --- the Hub ------------------------------------------------------------------------------------------
@pytest.fixture
def hub_standin():
    """A started `tests.support.hubserver.HubStandIn` with no repos; add them with `add_repo`. Stopped
    after the test."""
    from tests.support.hubserver import HubStandIn

    with HubStandIn() as hub:
        yield hub


@pytest.fixture(scope="module")
def hub_layout(tmp_path_factory):
    """A tiny MMEB in the Hub layout (`tests.support.hubserver.write_hub_layout`): serve it, do not change it."""
    from tests.support.hubserver import write_hub_layout

    return write_hub_layout(tmp_path_factory.mktemp("hub_layout"))


# --- training ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory):
    """models/base (tiny Qwen2-VL) + data/shards/train (480 shape/caption pairs in 2 datasets), written
    once (`tests.support.train_workspace.write_workspace`): copy it, do not change it."""
    from tests.support.train_workspace import write_workspace

    return write_workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture
def workspace(workspace_template, tmp_path):
    """A training workspace of the test's own: a copy of `workspace_template`."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace_template, ws)
    return ws
