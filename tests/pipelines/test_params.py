"""pipelines.params: the one place every params.yaml key is declared and checked."""

import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml

from pipelines import params as P
from pipelines.params import Data, Eval, ParamsError, Shard, Synthetic, Train
from tests.support.params import document, section, write_params

REPO = Path(__file__).resolve().parents[2]


def problems_of(**sections) -> str:
    """The message of the ParamsError that params.yaml with these overrides raises."""
    with pytest.raises(ParamsError) as e:
        P.parse(document(**sections), "params.yaml")
    return str(e.value)


def refused(cls, values: dict) -> str:
    """The message of the ParamsError (a ValueError) that section `cls` raises for `values`."""
    with pytest.raises(ParamsError) as info:
        cls.parse(values)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_params_yaml_is_complete_and_valid():
    params = P.load(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for cls in P.SECTIONS:
        assert [f.name for f in fields(cls)] == list(raw[cls.NAME]), cls.NAME  # declared in params.yaml's order
    assert params.shard.image_max_pixels == params.eval.image_max_pixels == params.train.image_max_pixels


def test_the_params_reference_is_generated_from_the_contract_and_current():
    reference = (REPO / "docs" / "params.md").read_text()
    assert reference == P.reference(), "regenerate it: python -m pipelines.params > docs/params.md"
    for cls in P.SECTIONS:
        for f in fields(cls):
            assert f"| `{f.name}` |" in reference and f.metadata["meaning"]


@pytest.mark.parametrize("section_name, key, value, message", [
    # values a new user tried: each failed late, silently or never
    ("normalize", "rows_per_part", 0, "normalize.rows_per_part must be an integer >= 1, got 0"),
    ("shard", "max_samples", 2.9, "shard.max_samples must be an integer >= 1, got 2.9"),
    ("normalize", "workers", -1, "normalize.workers must be an integer >= 1"),
    ("backbone", "pretrain_steps", -3, "backbone.pretrain_steps must be an integer >= 0"),
    ("train", "learning_rate", float("inf"), "train.learning_rate must be a number > 0, got inf"),
    ("train", "learning_rate", "fast", "train.learning_rate must be a number > 0"),
    ("eval", "batch_size", -1, "eval.batch_size must be an integer >= 1"),
    ("normalize", "max_reject_fraction", "five percent", "normalize.max_reject_fraction must be a number in [0, 1]"),
    ("normalize", "max_dataset_reject_fraction", 1.5, "normalize.max_dataset_reject_fraction"),
    ("shard", "shuffle", "yes", "shard.shuffle must be true or false"),
    ("shard", "max_bytes", 100, "shard.max_bytes must be an integer >= 10240"),
    ("shard", "max_rows_per_dataset", 0, "shard.max_rows_per_dataset"),
    ("shard", "image_max_pixels", 0, "shard.image_max_pixels"),
    ("shard", "image_size_multiple", 0, "shard.image_size_multiple"),
    ("synthetic", "eval_candidates", 1, "synthetic.eval_candidates must be an integer >= 2"),
    ("backbone", "tiny_image_size", 60, "backbone.tiny_image_size must be an integer >= 16, a multiple of 16"),
    ("train", "steps", True, "train.steps must be an integer >= 1, got True"),
    ("data", "source", "ftp", "data.source must be synthetic | local | hub"),
    ("data", "train_split", "train", "data.train_split must be original | diverse_instruction"),
    ("data", "local_dir", "", "data.local_dir must be a non-empty string"),
    ("data", "local_dir", None, "data.local_dir must be a non-empty string"),
    ("data", "local_dir", "~/mmeb", "dvc does not expand '~'"),
    ("data", "revision", {"test": "main"}, "data.revision must be"),
    ("data", "revision", "b" * 40, "pins one repo only"),
    ("eval", "models", [], "eval.models must be a list of distinct names"),
    ("data", "train_subsets", ["Syn-CIRR", "Syn-CIRR"], "data.train_subsets"),
])
def test_a_bad_value_is_refused_naming_its_key(section_name, key, value, message):
    assert message in problems_of(**{section_name: {key: value}})


def test_a_typo_gets_a_did_you_mean_and_a_missing_key_is_named():
    doc = document()
    doc["train"]["learnng_rate"] = doc["train"].pop("learning_rate")
    with pytest.raises(ParamsError) as e:
        P.parse(doc)
    assert "train.learnng_rate: unknown key (did you mean train.learning_rate?)" in str(e.value)
    assert "train.learning_rate: missing" in str(e.value)
    doc = document()
    doc["shard"].pop("seed")
    doc["evaluate"] = doc.pop("eval")
    with pytest.raises(ParamsError) as e:
        P.parse(doc)
    assert {"shard.seed: missing (params.yaml holds every key)", "evaluate: unknown section (did you mean eval?)",
            "eval: missing section"} <= set(e.value.problems)


def test_every_problem_is_reported_at_once():
    message = problems_of(normalize={"workers": 0}, train={"steps": 0, "temperature": 0})
    assert all(k in message for k in ("normalize.workers", "train.steps", "train.temperature"))


def test_values_as_dvc_exp_run_writes_them_are_accepted():
    # `-S train.learning_rate=1e-3` writes 1e-3, which YAML reads as a string
    params = P.parse(document(train={"learning_rate": "1e-3", "weight_decay": 0}))
    assert params.train.learning_rate == 0.001 and params.train.weight_decay == 0.0
    assert isinstance(params.train.weight_decay, float)


def test_a_section_checks_itself_on_replace():
    shard = section("shard")
    assert replace(shard, max_samples=3).max_samples == 3
    with pytest.raises(ParamsError, match="shard.max_samples"):
        replace(shard, max_samples=0)


def test_shard_params_beyond_one_key():
    assert section("shard", image_max_pixels=None).image_max_pixels is None  # null keeps the images
    assert section("shard", image_max_pixels=5000).image_max_pixels == 5000
    with pytest.raises(ParamsError, match="unknown key"):
        Shard.parse({**section("shard").to_dict(), "x": 1})
    # no 100 px grid size fits the 4096 pixels the shards are pre-scaled to
    assert "shard.image_size_multiple 100: no size on a grid of 100 px" in problems_of(shard={"image_size_multiple": 100})


def test_mined_batches_take_no_homogeneous_sub_batches():
    assert "retrain.batching mined_clusters draws whole clusters" in problems_of(
        retrain={"batching": "mined_clusters"}, train={"homogeneous_batch": 4})
    assert P.parse(document(retrain={"batching": "mined_clusters", "cluster_size": 4})).retrain.cluster_size == 4
    assert "retrain.cluster_size" in problems_of(retrain={"cluster_size": 1})


def test_the_image_resolution_is_set_once_and_shards_cannot_fall_below_it():
    params = P.parse(document(train={"image_max_pixels": 1003520}, shard={"image_max_side": 14168,
                                                                          "image_size_multiple": 28}))
    assert params.shard.image_max_pixels == params.eval.image_max_pixels == 1003520  # `train` follows it
    params = P.parse(document(eval={"image_max_pixels": 2000}, shard={"image_max_pixels": None}))
    assert params.eval.image_max_pixels == 2000 and params.shard.image_max_pixels is None  # deliberate overrides
    message = problems_of(shard={"image_max_pixels": 1000})
    assert "shard.image_max_pixels 1000 pre-scales images below train.image_max_pixels 4096" in message
    assert "shard.image_max_pixels 1000" in problems_of(shard={"image_max_pixels": 1000},
                                                      train={"image_max_pixels": None})
    # Qwen2-VL's resolution with the side cap at 1344 px: elongated images would train below it
    message = problems_of(train={"image_max_pixels": 1003520}, shard={"image_size_multiple": 28})
    assert "shard.image_max_side 1344" in message and "set shard.image_max_side: 14168" in message


def test_revision_forms():
    def revisions(value):
        return Data.parse({**section("data").to_dict(), "revision": value}).revisions()

    assert revisions("v1.0") == {"train": "v1.0", "eval": "v1.0"}
    assert revisions(None) == {"train": "main", "eval": "main"}
    assert revisions({"eval": "a" * 40}) == {"train": "main", "eval": "a" * 40}


def test_a_stage_refuses_bad_params_before_any_work(tmp_path):
    """`python -m stages.<name>` with a bad params file: exit status 2, the key named, no traceback
    and nothing written (the download stage would otherwise have generated data/raw)."""
    path = write_params(tmp_path / "params.yaml", train={"learning_rate": float("inf")}, shard={"max_samples": 2.9})
    done = subprocess.run([sys.executable, "-m", "stages.download", "--params", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 2, done.stderr
    assert "train.learning_rate" in done.stderr and "shard.max_samples" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# --- synthetic: the sizes the generator relies on ----------------------------------------------------
SYNTHETIC_SMALLEST = {"seed": 0, "train_rows": 4, "eval_rows": 4, "eval_candidates": 2, "image_size": 32,
                      "v2_sets": "all"}


def test_the_smallest_synthetic_sizes_are_accepted():
    assert Synthetic.parse(SYNTHETIC_SMALLEST).to_dict() == SYNTHETIC_SMALLEST


@pytest.mark.parametrize(
    "key, value",
    [("image_size", 16), ("image_size", 31), ("train_rows", 0), ("eval_rows", 0), ("eval_candidates", 1),
     ("v2_sets", []), ("v2_sets", "some")],
)
def test_synthetic_sizes_below_what_the_generator_needs_are_refused(key, value):
    with pytest.raises(ParamsError, match=rf"synthetic\.{key}\b"):
        Synthetic.parse(dict(SYNTHETIC_SMALLEST, **{key: value}))


# --- eval: what the evaluate stage no longer checks itself -----------------------------------------
EVAL = {"models": ["base", "embedder"], "batch_size": 4, "datasets": "all", "image_max_pixels": 40,
        "cache": True, "cache_dir": ".cache/embeddings", "cache_max_gb": 20, "precision": "fp32",
        "positions": "train", "stray_image_token": "train", "image_resize": "train", "image_square": "train",
        "small_image_side": "train", "prompt": "train", "video_max_pixels": "train", "rendering_from": "params",
        "v2_ties": "strict",
        "v2_labels": "correct", "video_input": "native"}


def eval_refused(**values) -> str:
    return refused(Eval, dict(EVAL, **values))


def test_the_eval_section_is_typed():
    params = Eval.parse(EVAL)
    assert params.models == ("base", "embedder") and params.cache_max_gb == 20.0
    assert Eval.parse(dict(EVAL, cache_max_gb=None)).cache_max_gb is None  # null: no limit
    assert Eval.parse(dict(EVAL, cache_max_gb=0)).cache_max_gb == 0.0


@pytest.mark.parametrize("bad", [-1, True, "lots"])
def test_eval_cache_max_gb_must_be_a_number_at_least_0_or_null(bad):
    assert "eval.cache_max_gb" in eval_refused(cache_max_gb=bad)


@pytest.mark.parametrize("key, bad", [("v2_ties", "official"), ("v2_labels", "strict")])
def test_the_v2_protocol_choices_are_checked(key, bad):
    assert f"eval.{key}" in eval_refused(**{key: bad})
    assert "normalize.vidore_prompt" in str(pytest.raises(ParamsError, P.parse,
                                                          document(normalize={"vidore_prompt": "old"})).value)


@pytest.mark.parametrize("bad", ["videos", None, True])
def test_eval_video_input_is_native_or_frames_mean(bad):
    assert Eval.parse(dict(EVAL, video_input="frames_mean")).video_input == "frames_mean"
    assert "eval.video_input" in eval_refused(video_input=bad)


def test_eval_models_and_datasets_must_be_lists_of_distinct_names():
    assert "eval.models" in eval_refused(models=[])
    assert "eval.datasets" in eval_refused(datasets=["Tiny-CLS", "Tiny-CLS"])


@pytest.mark.parametrize("value, want", [("train", "follows"), (40, 40), (None, None)])
def test_eval_image_max_pixels_follows_train_unless_set(value, want):
    params = P.parse(document(eval={"image_max_pixels": value}))
    assert params.eval.image_max_pixels == (params.train.image_max_pixels if want == "follows" else want)


@pytest.mark.parametrize("key, value", [("positions", "sequential"), ("stray_image_token", "keep"),
                                        ("image_resize", "processor"), ("image_square", 1344),
                                        ("small_image_side", 28)])
def test_eval_input_rendering_follows_train_unless_set(key, value):
    train = {key: value, **({"image_resize": "processor"} if key == "image_square" else {})}
    followed = P.parse(document(train=train))
    assert getattr(followed.eval, key) == value == getattr(followed.train, key)
    default = getattr(P.parse(document()).train, key)
    assert getattr(P.parse(document(train=train, eval={key: default})).eval, key) == default


def test_a_square_resize_needs_the_processor_to_resize():
    assert "train: image_square 1344" in refused(Train, {**document()["train"], "image_square": 1344})
    with pytest.raises(ParamsError, match="eval.image_square"):
        P.parse(document(eval={"image_square": 64}))
    assert P.parse(document(eval={"image_square": 64, "image_resize": "processor"})).eval.image_square == 64


# --- train: every check of the train params, made once when a stage starts (never in the trainer) ---
TRAIN = document()["train"]  # params.yaml's train section: a complete one

# the keys the trainer once completed with a default of its own; params.yaml now holds each value
ONCE_DEFAULTED = {"max_grad_norm": 1.0, "batched_vision_attention": True, "compile": False, "fsdp": False,
                  "lora_dtype": "fp32", "pad_to_multiple_of": 1}


def train_refused(overrides: dict, *, without: tuple[str, ...] = ()) -> str:
    """The ParamsError message for params.yaml's train section changed by `overrides`."""
    return refused(Train, {k: v for k, v in {**TRAIN, **overrides}.items() if k not in without})


def test_params_yaml_train_section_is_complete_and_accepted():
    p = Train.parse(TRAIN)
    assert {f.name for f in fields(Train)} == set(TRAIN)
    assert p.to_dict()["learning_rate"] == float(TRAIN["learning_rate"])
    assert P.parse(document()).train == p


@pytest.mark.parametrize("key,value", sorted(ONCE_DEFAULTED.items()))
def test_params_yaml_holds_the_values_once_defaulted_in_code_and_leaving_one_out_is_refused(key, value):
    assert TRAIN[key] == value and getattr(Train.parse(TRAIN), key) == value
    assert re.search(rf"train\.{key}: missing", train_refused({}, without=(key,)))


def test_unknown_missing_and_out_of_range_train_keys_are_named():
    assert "train.lora_rnak: unknown key (did you mean train.lora_rank?)" in train_refused({"lora_rnak": 8})
    assert "train.steps: missing" in train_refused({}, without=("steps",))
    assert "train.precision" in train_refused({"precision": "fp16"})
    assert "lora_dtype bf16 needs precision bf16" in train_refused({"lora_dtype": "bf16", "precision": "fp32"})
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
def test_train_params_that_would_fail_later_or_silently_are_refused(override, key):
    assert key in train_refused(override)


def test_train_params_as_dvc_exp_writes_them_are_accepted():
    # `-S train.learning_rate=1e-3` puts 1e-3 into params.yaml, which PyYAML reads as a string
    p = Train.parse({**TRAIN, "learning_rate": "1e-3", "image_max_pixels": None, "batch_size": 1,
                     "hard_negatives": 1})
    assert p.learning_rate == 0.001


def test_train_compile_scope_and_the_compile_settings_that_work():
    assert section("train", compile=True).compile_scope == "blocks"
    assert section("train", compile=False).compile_scope is None
    assert section("train", compile="region").compile_scope == "region"
    scopes = [Train.parse({**TRAIN, "compile": v}).compile_scope for v in (False, True, "blocks", "region",
                                                                          "cuda-graphs")]
    assert scopes == [None, "blocks", "blocks", "region", "cuda-graphs"]
    Train.parse({**TRAIN, "compile": "region", "gc_chunk_size": 4})


def test_sub_batches_by_kind_fall_back_to_one_batch_where_they_cannot_run():
    def in_effect(**overrides) -> str:
        return Train.parse({**TRAIN, **overrides}).sub_batches_in_effect

    assert TRAIN["sub_batches"] == "kind" and in_effect() == "kind"
    assert in_effect(sub_batches="none") == "none"
    assert in_effect(compile="region") == in_effect(compile=True) == "kind"
    assert in_effect(compile="cuda-graphs") == "none"  # a CUDA graph per input shape
    assert in_effect(fsdp=True, gc_chunk_size=0) == "none"  # ranks must run the same forwards
    assert in_effect(fsdp=True, gc_chunk_size=4) == "kind"  # GradCache keeps the chunk count
    assert "train.sub_batches" in train_refused({"sub_batches": "length"})


def test_a_whole_params_file_reports_a_train_mistake_by_its_key():
    with pytest.raises(ParamsError, match=re.escape("train.learnng_rate: unknown key")):
        P.parse(document(train={"learnng_rate": 0.1}))
