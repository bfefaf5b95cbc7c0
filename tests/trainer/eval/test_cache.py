import json
import os

import numpy as np
import pytest

from trainer.eval.cache import INDEX_FILE, EmbeddingCache, namespaces, prune, settings_digest


def _vectors(n, dim=8, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _keys(n, prefix="k"):
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_roundtrip_and_reopen(tmp_path):
    keys, vecs = _keys(10), _vectors(10)
    cache = EmbeddingCache(tmp_path, "model-a", {"image_max_pixels": 4096})
    cache.put(keys[:6], vecs[:6])
    cache.put(keys[6:], vecs[6:])
    reopened = EmbeddingCache(tmp_path, "model-a", {"image_max_pixels": 4096})
    found = reopened.lookup(keys + ["unknown"])
    assert sorted(found) == keys
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(found[k], vecs[i])
    assert reopened.stats["hits"] == 10 and reopened.stats["misses"] == 1
    assert len(reopened) == 10 and len(reopened.parts()) == 2
    # files are safetensors + JSON, never pickle
    assert all(p.suffix == ".safetensors" for p in reopened.parts())
    assert json.loads((reopened.dir / INDEX_FILE).read_text())["fingerprint"] == "model-a"


def test_changed_fingerprint_or_settings_miss(tmp_path):
    keys, vecs = _keys(4), _vectors(4)
    EmbeddingCache(tmp_path, "model-a", {"image_max_pixels": 4096}).put(keys, vecs)
    assert EmbeddingCache(tmp_path, "model-b", {"image_max_pixels": 4096}).lookup(keys) == {}
    assert EmbeddingCache(tmp_path, "model-a", {"image_max_pixels": 1024}).lookup(keys) == {}
    assert len(EmbeddingCache(tmp_path, "model-a", {"image_max_pixels": 4096}).lookup(keys)) == 4
    assert settings_digest({"a": 1, "b": 2}) == settings_digest({"b": 2, "a": 1})


def test_unsafe_fingerprint_is_hashed_into_the_path(tmp_path):
    cache = EmbeddingCache(tmp_path, "../../etc/passwd")
    cache.put(["x"], _vectors(1))
    assert cache.dir.resolve().is_relative_to(tmp_path.resolve())
    assert EmbeddingCache(tmp_path, "../../etc/passwd").lookup(["x"]).keys() == {"x"}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "swap_keys"])
def test_damaged_part_is_detected_and_dropped(tmp_path, damage):
    keys, vecs = _keys(12), _vectors(12)
    cache = EmbeddingCache(tmp_path, "m")
    cache.put(keys[:6], vecs[:6])
    cache.put(keys[6:], vecs[6:])
    victim = next(p for p in cache.parts() if "k0000" in p.read_bytes().decode("latin-1"))
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) - 7])
    elif damage == "flip":
        flipped = bytearray(data)
        flipped[-3] ^= 0x40  # inside the tensor bytes: the header still parses
        victim.write_bytes(bytes(flipped))
    elif damage == "delete":
        victim.unlink()
    else:  # a valid safetensors file whose keys disagree with the index (index pointing elsewhere)
        index_path = cache.dir / INDEX_FILE
        index = json.loads(index_path.read_text())
        other = next(n for n in index["parts"] if n != victim.name)
        index["parts"][victim.name], index["parts"][other] = index["parts"][other], index["parts"][victim.name]
        index["parts"][victim.name]["bytes"], index["parts"][other]["bytes"] = (
            index["parts"][other]["bytes"], index["parts"][victim.name]["bytes"])
        index["parts"][victim.name]["sha256"], index["parts"][other]["sha256"] = (
            index["parts"][other]["sha256"], index["parts"][victim.name]["sha256"])
        index_path.write_text(json.dumps(index))

    fresh = EmbeddingCache(tmp_path, "m")
    found = fresh.lookup(keys)
    assert fresh.stats["parts_rejected"] >= 1
    if damage == "swap_keys":
        assert found == {}  # both parts now disagree with their index entries
    else:
        assert sorted(found) == keys[6:]  # the intact part is still trusted
        for i, k in enumerate(keys[6:], start=6):
            np.testing.assert_array_equal(found[k], vecs[i])
    assert not victim.exists()
    # the damage is remembered: a new cache object does not see the dropped keys either,
    # and recomputed vectors can be stored again
    again = EmbeddingCache(tmp_path, "m")
    assert "k0000" not in again.lookup(keys)
    again.put(keys[:6], vecs[:6])
    assert len(EmbeddingCache(tmp_path, "m").lookup(keys)) == (6 if damage == "swap_keys" else 12)


def test_corrupt_index_discards_cache(tmp_path):
    keys, vecs = _keys(3), _vectors(3)
    cache = EmbeddingCache(tmp_path, "m")
    cache.put(keys, vecs)
    (cache.dir / INDEX_FILE).write_text('{"format": "vlm2vec-embedding-cache/1", "parts": ')
    fresh = EmbeddingCache(tmp_path, "m")
    assert fresh.lookup(keys) == {}
    assert list(fresh.dir.glob("part-*")) == []


@pytest.mark.parametrize("field", ["bytes", "sha256"])
def test_index_entry_without_size_or_hash_discards_cache(tmp_path, field):
    keys, vecs = _keys(3), _vectors(3)
    cache = EmbeddingCache(tmp_path, "m")
    cache.put(keys, vecs)
    index = json.loads((cache.dir / INDEX_FILE).read_text())
    for entry in index["parts"].values():
        del entry[field]
    (cache.dir / INDEX_FILE).write_text(json.dumps(index))
    fresh = EmbeddingCache(tmp_path, "m")
    assert fresh.lookup(keys) == {} and fresh.stats["parts_rejected"] == 1
    assert list(fresh.dir.glob("part-*")) == []


def test_put_rejects_bad_input(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    with pytest.raises(ValueError, match="keys but vectors"):
        cache.put(["a", "b"], _vectors(3))
    with pytest.raises(ValueError, match="duplicate"):
        cache.put(["a", "a"], _vectors(2))
    bad = _vectors(2)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cache.put(["a", "b"], bad)
    with pytest.raises(ValueError, match="fingerprint"):
        EmbeddingCache(tmp_path, "")


def _namespace(root, fingerprint, rows, last_used):
    cache = EmbeddingCache(root, fingerprint, {"image_max_pixels": 4096})
    cache.put(_keys(rows, fingerprint), _vectors(rows, dim=64))
    os.utime(cache.dir, (last_used, last_used))
    return cache


def test_prune_removes_least_recently_used_namespaces_down_to_the_budget(tmp_path):
    old, middle, new = (_namespace(tmp_path, fp, 50, t) for fp, t in (("old", 1.0e9), ("mid", 1.1e9), ("new", 1.2e9)))
    size = namespaces(tmp_path)[0].bytes
    assert [n.path for n in namespaces(tmp_path)] == [old.dir, middle.dir, new.dir]
    removed = prune(tmp_path, max_bytes=2 * size, keep=[])
    assert [n.path for n in removed] == [old.dir]
    assert not (tmp_path / "old").exists()  # the model's folder went with its last namespace
    assert EmbeddingCache(tmp_path, "mid", {"image_max_pixels": 4096}).lookup(_keys(50, "mid"))  # intact
    # opening a namespace marks it used: now `new` is the least recently used
    EmbeddingCache(tmp_path, "mid", {"image_max_pixels": 4096}).lookup(["x"])
    assert [n.path for n in prune(tmp_path, max_bytes=size)] == [new.dir]
    assert prune(tmp_path, max_bytes=size) == []


def test_prune_keeps_the_namespaces_in_use_and_leaves_foreign_folders(tmp_path, caplog):
    a = _namespace(tmp_path, "a", 50, 1e9)
    b = _namespace(tmp_path, "b", 50, 1.1e9)
    foreign = tmp_path / "a" / "notes"  # not a settings digest: never touched
    foreign.mkdir()
    (foreign / "index.json").write_text("{}")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "0123456789abcdef").symlink_to(b.dir, target_is_directory=True)  # a link: skipped
    removed = prune(tmp_path, max_bytes=0, keep=[a.dir])
    assert [n.path for n in removed] == [b.dir]
    assert a.dir.is_dir() and foreign.is_dir() and len(EmbeddingCache(tmp_path, "a", {"image_max_pixels": 4096})) == 50
    assert "over its" in caplog.text  # the kept namespace alone exceeds the budget: said, not an error
    with pytest.raises(ValueError, match="max_bytes"):
        prune(tmp_path, max_bytes=-1)


def test_the_latest_put_wins_after_reopening(tmp_path):
    """Part names are content hashes, not write order: the index numbers parts so that a reopened
    cache serves the newest vector of a key, as the writing process did."""
    for trial in range(12):
        root = tmp_path / str(trial)
        cache = EmbeddingCache(root, "m")
        vectors = _vectors(3, seed=trial)
        for v in vectors:
            cache.put(["k"], v[None])
        np.testing.assert_array_equal(cache.lookup(["k"])["k"], vectors[-1])
        np.testing.assert_array_equal(EmbeddingCache(root, "m").lookup(["k"])["k"], vectors[-1])
