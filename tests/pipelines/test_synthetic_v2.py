"""The synthetic MMEB-V2 stand-ins written together (pipelines/sources/synthetic/v2.py): every
registry stand-in by default, a selection with the same bytes, unknown names refused."""

from __future__ import annotations

import hashlib

import pytest

from pipelines import mmeb_v2
from pipelines.download_v2 import inventory
from pipelines.errors import StageFailed
from pipelines.sources.synthetic.v2 import write_v2


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_all_writes_every_stand_in_at_its_registry_size(tmp_path):
    expected = write_v2(tmp_path, 0, "all")
    assert list(expected) == list(mmeb_v2.SYNTHETIC)
    assert expected == {n: t.num_data for n, t in mmeb_v2.SYNTHETIC.items()}
    found = inventory(tmp_path, expected)
    assert {n: (d["found"], d["expected"], d["meta_task"]) for n, d in found.items()} == {
        n: (t.num_data, t.num_data, t.meta_task) for n, t in mmeb_v2.SYNTHETIC.items()}


def test_a_selection_writes_the_same_bytes_as_within_all(tmp_path):
    write_v2(tmp_path / "all", 0, "all")
    picked = ["Syn-ImageVG", "Syn-MomentRET"]
    assert write_v2(tmp_path / "some", 0, picked) == {n: mmeb_v2.SYNTHETIC[n].num_data for n in picked}
    some, every = digests(tmp_path / "some"), digests(tmp_path / "all")
    assert some and all(every[path] == digest for path, digest in some.items())
    assert sorted(inventory(tmp_path / "some")) == sorted(picked)


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(StageFailed, match=r"synthetic.v2_sets \['HMDB51'\]: not synthetic"):
        write_v2(tmp_path, 0, ["Syn-ViDoRe", "HMDB51"])
