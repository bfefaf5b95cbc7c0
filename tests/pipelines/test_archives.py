import os
import shutil
import zipfile

import pytest

from pipelines.archives import SafeZip, safe_extract_tar, safe_extract_zip, unsafe_name_reason
from pipelines.errors import Rejected, StageFailed
from tests.support.fixtures_mmeb import add_symlink, corrupt_member_crc, write_zip

GOOD = {"images/CIRR/Train/a.jpg": b"A" * 100, "images/CIRR/Train/b c.jpg": b"B" * 50}
EVIL_NAMES = ["../evil.jpg", "/abs/evil.jpg", "images/../../evil.jpg", "C:\\evil.jpg",
              "..\\..\\evil.jpg", "\\\\host\\share\\evil.jpg"]


def refusal(zip_, name):
    with pytest.raises(Rejected) as e:
        zip_.read(name)
    return e.value.reason


def test_reads_members_with_verification(tmp_path):
    path = write_zip(tmp_path / "ok.zip", GOOD)
    with SafeZip(path) as z:
        assert z.names() == sorted(GOOD)
        assert z.read("images/CIRR/Train/b c.jpg") == GOOD["images/CIRR/Train/b c.jpg"]
        assert z.read("./images/CIRR/Train/a.jpg") == GOOD["images/CIRR/Train/a.jpg"]
        assert "images/CIRR/Train/a.jpg" in z and "nope.jpg" not in z
        assert refusal(z, "nope.jpg") == "missing"
        assert z.refused == {}


@pytest.mark.parametrize("name", EVIL_NAMES)
def test_zip_slip_members_are_refused_others_still_readable(tmp_path, name):
    assert unsafe_name_reason(name)
    path = write_zip(tmp_path / "slip.zip", {**GOOD, name: b"pwned"})
    with SafeZip(path) as z:
        assert refusal(z, name) == "unsafe_path"
        assert z.read("images/CIRR/Train/a.jpg") == GOOD["images/CIRR/Train/a.jpg"]
        assert len(z.refused) == 1


def test_safe_names_pass():
    for name in ("images/a.jpg", "a..b.jpg", "MSCOCO/558840_object_hot dog.jpg", "x/..y/z"):
        assert unsafe_name_reason(name) is None


def test_symlink_member_is_refused(tmp_path):
    path = write_zip(tmp_path / "link.zip", GOOD)
    add_symlink(path, "images/CIRR/Train/passwd.jpg", "/etc/passwd")
    with SafeZip(path) as z:
        assert refusal(z, "images/CIRR/Train/passwd.jpg") == "symlink"


def test_declared_size_and_ratio_limits(tmp_path):
    path = write_zip(tmp_path / "big.zip", {**GOOD, "zeros.bin": b"\0" * (3 << 20)})
    with SafeZip(path) as z:  # default limits: 3 MiB of zeros compress ~1000:1
        assert refusal(z, "zeros.bin") == "ratio"
        assert z.read("images/CIRR/Train/a.jpg")
    with SafeZip(path, max_member_bytes=1 << 20) as z:
        assert refusal(z, "zeros.bin") == "too_large"
    with SafeZip(path, max_ratio=5000) as z:
        assert z.read("zeros.bin") == b"\0" * (3 << 20)
    # tiny members are not ratio-checked (a 100-byte run of "A" compresses very well)
    with SafeZip(path, ratio_min_bytes=0, max_ratio=5) as z:
        assert refusal(z, "images/CIRR/Train/a.jpg") == "ratio"


def test_duplicate_names_are_refused(tmp_path):
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.jpg", b"first")
        with pytest.warns(UserWarning):
            zf.writestr("x.jpg", b"second")
        zf.writestr("y.jpg", b"ok")
    with SafeZip(path) as z:
        assert refusal(z, "x.jpg") == "duplicate"
        assert z.read("y.jpg") == b"ok"


def test_encrypted_flag_is_refused(tmp_path):
    path = write_zip(tmp_path / "enc.zip", {"x.jpg": b"data"}, compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")  # central directory entry: general purpose flags at +8
    raw[cd + 8] |= 0x1
    path.write_bytes(bytes(raw))
    with SafeZip(path) as z:
        assert refusal(z, "x.jpg") == "encrypted"


def test_crc_mismatch_is_detected_on_read(tmp_path):
    path = write_zip(tmp_path / "crc.zip", {"x.jpg": b"0123456789" * 10, "y.jpg": b"fine"},
                     compression=zipfile.ZIP_STORED)
    corrupt_member_crc(path, "x.jpg")
    with SafeZip(path) as z:
        assert refusal(z, "x.jpg") == "corrupt"
        assert z.read("y.jpg") == b"fine"


def test_not_a_zip_raises_on_open(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(zipfile.BadZipFile):
        SafeZip(bad)


def test_safe_extract_writes_only_inside_dest(tmp_path):
    path = write_zip(tmp_path / "mixed.zip", {**GOOD, **{n: b"pwned" for n in EVIL_NAMES[:3]}})
    add_symlink(path, "link.jpg", "/etc/passwd")
    dest = tmp_path / "out" / "dest"
    report = safe_extract_zip(path, dest)
    assert sorted(report.extracted) == sorted(GOOD)
    assert {n: r for n, (r, _) in report.refused.items()} == {
        "../evil.jpg": "unsafe_path", "/abs/evil.jpg": "unsafe_path",
        "images/../../evil.jpg": "unsafe_path", "link.jpg": "symlink"}
    for name, data in GOOD.items():
        assert (dest / name).read_bytes() == data
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(["mixed.zip"] + [f"out/dest/{n}" for n in GOOD])
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_safe_extract_refuses_paths_through_existing_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "link")
    path = write_zip(tmp_path / "z.zip", {"link/x.jpg": b"x", "ok.jpg": b"ok"})
    report = safe_extract_zip(path, dest)
    assert report.extracted == ["ok.jpg"]
    assert report.refused["link/x.jpg"][0] == "unsafe_path"
    assert list(outside.iterdir()) == []


def test_safe_extract_reports_corrupt_members(tmp_path):
    path = write_zip(tmp_path / "crc.zip", {"x.jpg": b"0123456789" * 10, "y.jpg": b"fine"},
                     compression=zipfile.ZIP_STORED)
    corrupt_member_crc(path, "x.jpg")
    report = safe_extract_zip(path, tmp_path / "d")
    assert report.extracted == ["y.jpg"]
    assert report.refused["x.jpg"][0] == "corrupt"
    assert not (tmp_path / "d" / "x.jpg").exists()
    assert not list((tmp_path / "d").glob("*.partial"))


def test_corrupt_lzma_member_is_refused_not_raised(tmp_path):
    path = write_zip(tmp_path / "lz.zip", {"x/a.jpg": bytes(range(256)) * 200, "x/b.jpg": b"fine"},
                     compression=zipfile.ZIP_LZMA)
    data = bytearray(path.read_bytes())
    start = data.find(b"x/a.jpg") + len("x/a.jpg") + 40  # inside the first member's LZMA stream
    data[start:start + 60] = bytes(b ^ 0x5A for b in data[start:start + 60])
    path.write_bytes(bytes(data))
    with SafeZip(path) as z:
        assert refusal(z, "x/a.jpg") == "corrupt"
        assert z.read("x/b.jpg") == b"fine"


def test_safe_extract_reports_a_file_where_a_folder_must_go(tmp_path):
    path = write_zip(tmp_path / "clash.zip", {"a": b"1", "a/b": b"2", "c/d": b"3"})
    report = safe_extract_zip(path, tmp_path / "d")
    assert report.extracted == ["a", "c/d"] and report.refused["a/b"][0] == "unwritable"
    assert (tmp_path / "d" / "a").read_bytes() == b"1" and (tmp_path / "d" / "c" / "d").read_bytes() == b"3"


# --- tar -----------------------------------------------------------------------------------------
def test_safe_extract_tar_refuses_escapes_links_and_strays(tmp_path):
    from tests.support.v2_hub import write_tar

    tar = write_tar(tmp_path / "a.tar.gz", {"MMEB/x/1.jpg": b"one", "MMEB/../../up.txt": b"u", "/abs.txt": b"a",
                                            "other/2.jpg": b"two"}, {"MMEB/link": "/etc/passwd"})
    report = safe_extract_tar([tar], tmp_path / "out", strip="MMEB/")
    assert report.extracted == ["x/1.jpg"]
    assert (tmp_path / "out/x/1.jpg").read_bytes() == b"one"
    assert {m: r for m, (r, _) in report.refused.items()} == {
        "MMEB/../../up.txt": "unsafe_path", "/abs.txt": "outside_strip", "other/2.jpg": "outside_strip",
        "MMEB/link": "link"}
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a.tar.gz", "out", "out/x", "out/x/1.jpg"]
    report = safe_extract_tar([tar], tmp_path / "all")
    assert report.refused["/abs.txt"][0] == "unsafe_path" and not (tmp_path / "up.txt").exists()


def test_safe_extract_tar_reads_a_split_archive_in_order(tmp_path):
    from tests.support.v2_hub import write_tar

    data = write_tar(tmp_path / "whole.tar.gz", {f"video_qa/v/{i}.jpg": os.urandom(300) + bytes([i]) for i in range(4)}).read_bytes()
    parts = []
    for i, start in enumerate(range(0, len(data), 40)):
        parts.append(tmp_path / f"video_qa.tar.gz-{i:02d}")
        parts[-1].write_bytes(data[start:start + 40])
    assert len(parts) > 2
    report = safe_extract_tar(parts, tmp_path / "out")
    assert report.extracted == [f"video_qa/v/{i}.jpg" for i in range(4)] and not report.refused
    assert (tmp_path / "out/video_qa/v/3.jpg").read_bytes()[-1:] == bytes([3])


def test_safe_extract_tar_stops_at_a_bomb_naming_the_member(tmp_path):
    """Hostile tars: 40 MiB of zeros (gzip: ~1,000:1) within the declared-size limit, a member
    declaring more than the limit, members past the total; each stops the extraction naming the
    member, and no partial file of it is left."""
    from tests.support.v2_hub import write_tar

    bomb = write_tar(tmp_path / "bomb.tar.gz", {"video_qa/v/0001.jpg": os.urandom(2000),
                                                "video_qa/v/0002.jpg": bytes(40 << 20)})
    with pytest.raises(StageFailed, match=r"bomb.tar.gz: member 'video_qa/v/0002.jpg' decompresses \d+ times"):
        safe_extract_tar([bomb], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out/video_qa/v").iterdir()) == ["0001.jpg"]
    report = safe_extract_tar([bomb], tmp_path / "loose", max_ratio=2000)  # the same bytes, the guard relaxed
    assert report.extracted == ["video_qa/v/0001.jpg", "video_qa/v/0002.jpg"]
    assert (tmp_path / "loose/video_qa/v/0002.jpg").stat().st_size == 40 << 20

    with pytest.raises(StageFailed, match=r"member 'video_qa/v/0002.jpg' declares 41943040 bytes \(limit 1000000\)"):
        safe_extract_tar([bomb], tmp_path / "big", max_member_bytes=1_000_000)
    assert not (tmp_path / "big/video_qa/v/0002.jpg").exists()

    many = write_tar(tmp_path / "many.tar", {f"f/{i}.jpg": os.urandom(600) for i in range(3)}, gz=False)
    with pytest.raises(StageFailed, match=r"member 'f/1.jpg' \(600 bytes\) would take the files extracted to 1200"):
        safe_extract_tar([many], tmp_path / "total", max_total_bytes=1000)
    assert sorted(p.name for p in (tmp_path / "total/f").iterdir()) == ["0.jpg"]


def test_safe_extract_tar_total_defaults_to_the_free_disk_space(tmp_path, monkeypatch):
    from tests.support.v2_hub import write_tar

    tar = write_tar(tmp_path / "a.tar.gz", {"f/a.jpg": os.urandom(800)})
    free = shutil.disk_usage(tmp_path)._replace(free=500)
    monkeypatch.setattr("pipelines.archives.shutil.disk_usage", lambda path: free)
    with pytest.raises(StageFailed, match=r"'f/a.jpg' \(800 bytes\) would take .* \(limit 500\)"):
        safe_extract_tar([tar], tmp_path / "out")
