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


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen_backbone(request):
    """Each tiny Qwen family backbone in turn: Qwen2-VL, Qwen2.5-VL."""
    from trainer.backbone.families import build_tiny

    return build_tiny(request.param, image_size=32)


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
