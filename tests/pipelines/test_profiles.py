"""pipelines.profiles: named recipes applied to params.yaml in place, and the differences reported."""

from pathlib import Path

import pytest
import yaml

from pipelines import profiles
from pipelines.params import ParamsError, parse
from tests.support.params import REPO

PARAMS = REPO / "params.yaml"


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(PARAMS.read_bytes())
    return path


def test_every_profile_sets_the_same_keys_all_in_params_yaml():
    document = yaml.safe_load(PARAMS.read_text())
    keys = {name: set(profiles.load_profile(name).values) for name in profiles.names()}
    assert set(keys) >= {"default", "vlm2vec-v1", "vlm2vec-v2"}
    assert len({frozenset(k) for k in keys.values()}) == 1  # switching back and forth leaves nothing behind
    for name in keys["default"]:
        section, key = name.split(".")
        assert key in document[section], name


def test_params_yaml_is_the_default_profile():
    report = profiles.differences(yaml.safe_load(PARAMS.read_text()))
    assert report["profile"] == "default" and report["differs"] == []


@pytest.mark.parametrize("name", ["vlm2vec-v1", "vlm2vec-v2", "vlm2vec-v1-phi35v", "vlm2vec-v2-full"])
def test_apply_switches_in_place_keeps_comments_and_default_restores_the_bytes(params_file, name):
    before = params_file.read_text()
    changed = profiles.apply(profiles.load_profile(name), params_file, backbone="Qwen/Qwen2.5-VL-3B-Instruct")
    after = params_file.read_text()
    assert changed["recipe.profile"] == ("default", name)
    assert changed["backbone.name"] == ("tiny-qwen2-vl", "Qwen/Qwen2.5-VL-3B-Instruct")
    assert changed["train.positions"] == ("grid", "sequential")
    params = parse(yaml.safe_load(after))  # a params file every stage accepts
    assert params.eval.positions == "sequential" and params.eval.stray_image_token == "keep"  # eval follows
    # only the lines of changed values changed, each keeping its comment
    old_lines, new_lines = before.splitlines(), after.splitlines()
    assert len(old_lines) == len(new_lines)
    edited = [(o, n) for o, n in zip(old_lines, new_lines) if o != n]
    assert len(edited) == len(changed)
    assert all(o.partition("#")[2] == n.partition("#")[2] for o, n in edited)
    report = profiles.differences(yaml.safe_load(after))
    own = profiles.load_profile(name).backbone  # Qwen/Qwen2-VL-2B-Instruct; Phi-3.5-V for vlm2vec-v1-phi35v
    assert report["differs"] == [["backbone.name", "Qwen/Qwen2.5-VL-3B-Instruct", own]]
    profiles.apply(profiles.load_profile("default"), params_file)
    assert params_file.read_text() == before


def test_differences_name_each_setting_changed_by_hand(params_file):
    profiles.apply(profiles.load_profile("vlm2vec-v2"), params_file)
    text = profiles.set_values(params_file.read_text(), {"train.lora_rank": 8, "train.learning_rate": 0.0001})
    report = profiles.differences(yaml.safe_load(text))
    assert report["profile"] == "vlm2vec-v2" and report["notes"]
    assert report["differs"] == [["train.learning_rate", 0.0001, 0.00005], ["train.lora_rank", 8, 16]]


def test_a_profile_that_would_break_the_params_writes_nothing(params_file, tmp_path):
    root = tmp_path / "profiles"
    root.mkdir()
    doc = yaml.safe_load((REPO / "profiles" / "vlm2vec-v1.yaml").read_text())
    doc["values"]["train"]["image_resize"] = "collator"  # a square resize needs the processor to resize
    (root / "broken.yaml").write_text(yaml.safe_dump(doc))
    before = params_file.read_bytes()
    with pytest.raises(ParamsError, match="image_square"):
        profiles.apply(profiles.load_profile("broken", root), params_file)
    assert params_file.read_bytes() == before
    with pytest.raises(ValueError, match="no profile 'nope'"):
        profiles.load_profile("nope")
    with pytest.raises(KeyError, match="train.no_such_key"):
        profiles.set_values(PARAMS.read_text(), {"train.no_such_key": 1})


def test_yaml_values_are_written_as_params_yaml_writes_them():
    assert [profiles.yaml_value(v) for v in (None, True, 5e-05, 0.02, 1003520, "train", ["a", "b"])] == [
        "null", "true", "0.00005", "0.02", "1003520", "train", "[a, b]"]
    assert yaml.safe_load(f"k: {profiles.yaml_value('Qwen/Qwen2-VL-2B-Instruct')}")["k"] == "Qwen/Qwen2-VL-2B-Instruct"


def test_the_cli_applies_and_diffs(params_file, capsys):
    assert profiles.main(["--params", str(params_file), "apply", "vlm2vec-v2"]) == 0
    out = capsys.readouterr().out
    assert "train.lora_rank: 0 -> 16" in out and "recipe.profile: default -> vlm2vec-v2" in out
    assert profiles.main(["--params", str(params_file), "diff"]) == 0
    assert "0 setting(s) differ" in capsys.readouterr().out
    assert profiles.main(["--params", str(params_file), "list"]) == 0
    assert "vlm2vec-v1 (version 1)" in capsys.readouterr().out


def test_an_unknown_profile_in_params_is_refused():
    with pytest.raises(ParamsError, match="recipe: profile 'vlm2vec-v3'"):
        parse({**yaml.safe_load(PARAMS.read_text()), "recipe": {"profile": "vlm2vec-v3"}})
    assert Path(profiles.PROFILES_DIR).name == "profiles"
