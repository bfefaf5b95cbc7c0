"""pipelines.files: a file or folder appears whole at its final path, or not at all."""

import os

import pytest

from pipelines import files


def test_a_temporary_names_what_it_stands_for(tmp_path):
    assert files.final_name(files.temporary(tmp_path / "step-000006")) == "step-000006"
    assert files.final_name(tmp_path / ".step-000006.old.tmp-123") == "step-000006.old"
    for plain in ("step-000006", ".hidden", ".x.tmp-abc"):
        assert files.final_name(tmp_path / plain) is None and not files.is_temporary(tmp_path / plain)


def test_a_folder_replaces_the_old_one_and_no_temporary_is_left(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old").write_text("0")
    dead = tmp_path / ".m.tmp-999999999"  # a killed writer's (no such process)
    dead.mkdir()
    mine = files.temporary(tmp_path / "m")  # this process's own, left by an earlier failure
    mine.mkdir()
    (mine / "junk").write_text("x")
    with files.atomic_dir(tmp_path / "m") as tmp:
        assert not any(tmp.iterdir())
        (tmp / "new").write_text("1")
    assert os.listdir(tmp_path) == ["m"] and os.listdir(tmp_path / "m") == ["new"]


def test_an_error_leaves_the_old_bytes_and_no_temporary(tmp_path):
    files.write_json(tmp_path / "a.json", {"b": 1, "a": "é"}, sort_keys=True)
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "a": "\\u00e9",\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError):
        with files.atomic_file(tmp_path / "a.json") as f:
            f.write(b"half")
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with files.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
            raise RuntimeError
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_text().startswith("{")
