"""pipelines.digests: what record writes, and each way verify refuses a folder."""

from __future__ import annotations

import json

import pytest

from pipelines import digests
from pipelines.digests import IntegrityError, record, verify


def folder_with_nested(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a" * 1000)
    (root / "sub" / "w.bin").write_bytes(b"w" * 1000)
    record(root / "sub")
    (root / "lineage.json").write_text("{}")
    return record(root)


def test_record_lists_every_file_and_a_nested_folder_by_its_manifest(tmp_path):
    manifest = folder_with_nested(tmp_path)
    assert sorted(manifest["files"]) == ["a.bin", "lineage.json", "sub/digests.json"]
    assert manifest["files"]["a.bin"] == {"sha256": digests.sha256_of(tmp_path / "a.bin"), "size": 1000}
    assert json.loads((tmp_path / "digests.json").read_text()) == manifest
    assert verify(tmp_path) == manifest
    before = (tmp_path / "digests.json").read_bytes()
    record(tmp_path)
    assert (tmp_path / "digests.json").read_bytes() == before  # deterministic


def test_a_changed_byte_names_the_file_and_both_digests(tmp_path):
    manifest = folder_with_nested(tmp_path)
    with open(tmp_path / "a.bin", "r+b") as f:
        f.seek(500)
        f.write(b"X")
    with pytest.raises(IntegrityError) as e:
        verify(tmp_path)
    assert e.value.path == tmp_path / "a.bin"
    assert e.value.expected == manifest["files"]["a.bin"]["sha256"]
    assert e.value.found == digests.sha256_of(tmp_path / "a.bin")
    assert str(tmp_path / "a.bin") in str(e.value) and e.value.expected in str(e.value)
    assert "contents changed" in str(e.value)


def test_a_nested_folder_is_verified_through_its_own_manifest(tmp_path):
    folder_with_nested(tmp_path)
    (tmp_path / "sub" / "w.bin").write_bytes(b"w" * 10)
    with pytest.raises(IntegrityError, match=r"sub/w.bin: truncated or extended \(10 bytes, 1000 recorded\)"):
        verify(tmp_path)
    verify(tmp_path, nested=False)  # the parent's own files are intact


@pytest.mark.parametrize("fault, message", [
    (lambda d: (d / "a.bin").unlink(), "a.bin: missing"),
    (lambda d: (d / "extra.safetensors").write_bytes(b"x"), "extra.safetensors: not in digests.json"),
    (lambda d: (d / "digests.json").write_text("{"), "unreadable digests"),
])
def test_missing_extra_files_and_a_broken_manifest_are_refused(tmp_path, fault, message):
    folder_with_nested(tmp_path)
    fault(tmp_path)
    with pytest.raises(IntegrityError, match=message):
        verify(tmp_path)


def test_a_folder_without_digests_loads_with_a_warning_unless_they_are_required(tmp_path, caplog):
    (tmp_path / "a.bin").write_bytes(b"a")
    assert verify(tmp_path) is None
    assert "not verified" in caplog.text
    with pytest.raises(IntegrityError, match="no digests recorded"):
        verify(tmp_path, required=True)
