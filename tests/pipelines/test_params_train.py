"""The params contract's train section (`pipelines.params.Train`): every check of the train params,
made once when a stage starts, before any work (the trainer does not check them again)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from pipelines.params import ParamsError, Train, parse

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
TRAIN = DOCUMENT["train"]  # params.yaml's train section: a complete one

# the keys the trainer once completed with a default of its own; params.yaml now holds each value
ONCE_DEFAULTED = {"max_grad_norm": 1.0, "batched_vision_attention": True, "compile": False, "fsdp": False,
                  "lora_dtype": "fp32", "pad_to_multiple_of": 1}


def refused(overrides: dict, *, without: tuple[str, ...] = ()) -> str:
    """The ParamsError message for params.yaml's train section changed by `overrides`."""
    section = {k: v for k, v in {**TRAIN, **overrides}.items() if k not in without}
    with pytest.raises(ParamsError) as info:
        Train.parse(section)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_params_yaml_train_section_is_complete_and_accepted():
    p = Train.parse(TRAIN)
    assert {f.name for f in fields(Train)} == set(TRAIN)
    assert p.to_dict()["learning_rate"] == float(TRAIN["learning_rate"])
    assert parse(DOCUMENT).train == p


@pytest.mark.parametrize("key,value", sorted(ONCE_DEFAULTED.items()))
def test_params_yaml_holds_the_values_once_defaulted_in_code_and_leaving_one_out_is_refused(key, value):
    assert TRAIN[key] == value and getattr(Train.parse(TRAIN), key) == value
    assert re.search(rf"train\.{key}: missing", refused({}, without=(key,)))


def test_unknown_missing_and_out_of_range_keys_are_named():
    assert "train.lora_rnak: unknown key (did you mean train.lora_rank?)" in refused({"lora_rnak": 8})
    assert "train.steps: missing" in refused({}, without=("steps",))
    assert "train.precision" in refused({"precision": "fp16"})
    assert "lora_dtype bf16 needs precision bf16" in refused({"lora_dtype": "bf16", "precision": "fp32"})
    Train.parse({**TRAIN, "lora_dtype": "bf16", "precision": "bf16"})


@pytest.mark.parametrize("override,key", [
    ({"image_max_pixels": 0}, "train.image_max_pixels"),  # crashed inside PIL mid-batch
    ({"image_max_pixels": -5}, "train.image_max_pixels"),  # quarantined every sample, then blamed the shards
    ({"instructions": "false"}, "train.instructions"),  # bool("false") is True: no ablation
    ({"dora": "no"}, "train.dora"),
    ({"steps": 2.7}, "train.steps"), ({"batch_size": True}, "train.batch_size"),
    ({"learning_rate": "fast"}, "train.learning_rate"), ({"max_text_tokens": 0}, "train.max_text_tokens"),
    ({"batch_size": 1, "hard_negatives": 0}, "batch_size >= 2 or hard_negatives > 0"),  # loss log(1) = 0
    # refused by the data stream only after stale checkpoints had been deleted
    ({"batch_size": 8, "homogeneous_batch": 3}, "homogeneous_batch 3 must divide batch_size 8"),
    ({"batch_size": 4, "homogeneous_batch": 3}, "homogeneous_batch 3 must divide batch_size 4"),
    ({"compile": "yes"}, "train.compile"),
    ({"pad_to_multiple_of": 0}, "train.pad_to_multiple_of"),
    ({"compile": "cuda-graphs", "gc_chunk_size": 4}, "compile cuda-graphs needs gc_chunk_size 0"),
    ({"mixture": {"A": -1, "B": 2}}, "train.mixture"), ({"mixture": {"A": 0}}, "train.mixture"),
    ({"mixture": "uniform"}, "train.mixture"),
])
def test_params_that_would_fail_later_or_silently_are_refused(override, key):
    assert key in refused(override)


def test_params_as_dvc_exp_writes_them_are_accepted():
    # `-S train.learning_rate=1e-3` puts 1e-3 into params.yaml, which PyYAML reads as a string
    p = Train.parse({**TRAIN, "learning_rate": "1e-3", "image_max_pixels": None, "batch_size": 1,
                     "hard_negatives": 1})
    assert p.learning_rate == 0.001


def test_compile_scope_and_the_compile_settings_that_work():
    scopes = [Train.parse({**TRAIN, "compile": v}).compile_scope for v in (False, True, "blocks", "region",
                                                                          "cuda-graphs")]
    assert scopes == [None, "blocks", "blocks", "region", "cuda-graphs"]
    Train.parse({**TRAIN, "compile": "region", "gc_chunk_size": 4})


def test_a_whole_params_file_reports_a_train_mistake_by_its_key():
    with pytest.raises(ParamsError, match=re.escape("train.learnng_rate: unknown key")):
        parse({**DOCUMENT, "train": {**TRAIN, "learnng_rate": 0.1}})
