import hashlib

import pyarrow.parquet as pq
import pytest

from pipelines import imagestore
from pipelines.imagestore import ImageStore, ImageStoreWriter, StoredImage, merge


def _img(i: int) -> StoredImage:
    data = f"image-{i}".encode() * 3
    return StoredImage(hashlib.sha256(data).hexdigest(), data, i + 1, i + 2, "PNG")


def _files(root):
    return {p.name: p.read_bytes() for p in sorted(root.glob("images-*.parquet"))}


@pytest.mark.parametrize("memory_bytes", [512 << 20, 2000])  # one pass, and many hash ranges
def test_merge_dedups_across_writers_and_is_independent_of_staging(tmp_path, memory_bytes):
    images = [_img(i) for i in range(300)]
    a = tmp_path / "a"
    w1, w2 = ImageStoreWriter(a, "w1", flush_bytes=500), ImageStoreWriter(a, "w2", flush_bytes=10**9)
    for im in images[:200]:
        w1.add(im)
    for im in images[100:]:  # overlaps w1 on 100..199
        w2.add(im)
    w1.close(), w2.close()
    assert merge(a, memory_bytes=memory_bytes) == 300
    assert not (a / imagestore.STAGING).exists()

    b = tmp_path / "b"  # same images, one writer, reversed order, one flush
    w = ImageStoreWriter(b, "only")
    for im in reversed(images):
        w.add(im)
    w.close()
    merge(b)
    assert _files(a) == _files(b)  # byte-identical buckets whatever the staging

    store = ImageStore(a)
    got = store.get_many([im.sha256 for im in images[::7]])
    assert all(got[im.sha256] == im for im in images[::7])
    assert sorted(s.sha256 for s in store) == sorted(im.sha256 for im in images)
    for path in a.glob("images-*.parquet"):
        shas = pq.read_table(path).column("sha256").to_pylist()
        assert shas == sorted(shas) and all(s.startswith(path.stem[-2:]) for s in shas)


def test_missing_image_is_a_clear_error(tmp_path):
    w = ImageStoreWriter(tmp_path, "w")
    w.add(_img(1))
    w.close()
    merge(tmp_path)
    with pytest.raises(KeyError, match="not in"):
        ImageStore(tmp_path).get(_img(2).sha256)
    with pytest.raises(FileNotFoundError):
        ImageStore(tmp_path / "nope")


def test_merge_is_idempotent(tmp_path):
    w = ImageStoreWriter(tmp_path, "w")
    for i in range(20):
        w.add(_img(i))
    w.close()
    merge(tmp_path)
    before = _files(tmp_path)
    assert merge(tmp_path) == 20
    assert _files(tmp_path) == before


def test_parallel_range_merge_gives_the_serial_bytes(tmp_path):
    """merge(min_ranges, map_fn=pool.map) splits the work into independent hash ranges run in other
    processes; the buckets must be byte-identical to a one-range serial merge."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    images = [_img(i) for i in range(120)]
    for name in ("serial", "parallel"):
        w1, w2 = ImageStoreWriter(tmp_path / name, "w1"), ImageStoreWriter(tmp_path / name, "w2")
        for im in images[:80]:
            w1.add(im)
        for im in images[40:]:
            w2.add(im)
        w1.close(), w2.close()
    calls = []
    assert merge(tmp_path / "serial", map_fn=lambda f, *a: calls.append(len(a[0])) or map(f, *a)) == 120
    assert calls == [1]  # small store: one range
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        assert merge(tmp_path / "parallel", min_ranges=5, map_fn=pool.map) == 120
    assert _files(tmp_path / "serial") == _files(tmp_path / "parallel")
    assert len(_files(tmp_path / "serial")) > 50
    # the image bytes are stored uncompressed (already-compressed formats), the hash column is not
    meta = pq.ParquetFile(next((tmp_path / "serial").glob("images-*.parquet"))).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs["bytes"] == "UNCOMPRESSED" and codecs["sha256"] == "ZSTD"


def test_without_pandas_keeps_pyarrow_working_and_pandas_out(tmp_path):
    """In a fresh process: after without_pandas(), building tables and parquet I/O work and never
    import pandas (which pyarrow would otherwise import on the first table built from Python)."""
    import subprocess
    import sys

    code = ("import sys, pyarrow as pa, pyarrow.parquet as pq\n"
            "from pipelines.imagestore import without_pandas\n"
            "without_pandas()\n"
            f"pq.write_table(pa.Table.from_pylist([{{'a': 1}}]), {str(tmp_path / 't.parquet')!r})\n"
            f"assert pq.read_table({str(tmp_path / 't.parquet')!r}).to_pylist() == [{{'a': 1}}]\n"
            "print(sys.modules.get('pandas', 'absent'))\n"
            "try:\n    import pandas\nexcept ImportError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["absent", "refused"]
