import hashlib
import io
import time
import zipfile

import pytest
from PIL import Image

from pipelines.errors import Rejected
from pipelines.images import ImageSource, pil_limits, prepare_image
from tests.support.fixtures_mmeb import corrupt_member_crc, write_zip
from tests.support.images import (cmyk_jpeg, encode, image_bytes, palette_png, png_header_bomb, rgba_png,
                                  truncated_jpeg)

MAX = 50_000_000


def reason(data, max_pixels=MAX):
    with pytest.raises(Rejected) as e:
        prepare_image(data, max_pixels)
    return e.value.reason


def decoded(stored):
    img = Image.open(io.BytesIO(stored.bytes))
    img.load()
    return img


@pytest.mark.parametrize("data,fmt", [
    (image_bytes(size=(5, 3)), "JPEG"),
    (image_bytes(color=128, mode="L", fmt="PNG", size=(5, 3)), "PNG"),
    (image_bytes(color=1, mode="1", fmt="PNG", size=(5, 3)), "PNG"),
    (image_bytes(size=(5, 3), fmt="WEBP"), "WEBP"),
])
def test_fine_images_keep_their_original_bytes(data, fmt):
    p = prepare_image(data, MAX)
    assert not p.converted
    assert p.stored.bytes == data
    assert p.stored.sha256 == hashlib.sha256(data).hexdigest()
    assert (p.stored.width, p.stored.height, p.stored.format) == (5, 3, fmt)


def test_cmyk_jpeg_is_converted_to_rgb_jpeg():
    p = prepare_image(cmyk_jpeg(), MAX)
    assert p.converted and p.stored.format == "JPEG"
    img = decoded(p.stored)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((4, 4))
    assert r < 40 and g > 200 and b > 200  # cyan
    assert p.stored.sha256 == hashlib.sha256(p.stored.bytes).hexdigest()


def test_palette_is_converted_to_rgb_png():
    p = prepare_image(palette_png(), MAX)
    assert p.converted and p.stored.format == "PNG"
    img = decoded(p.stored)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (10, 200, 30)


def test_alpha_is_composited_on_white():
    p = prepare_image(rgba_png(alpha=0), MAX)
    assert p.converted and decoded(p.stored).getpixel((0, 0)) == (255, 255, 255)
    p = prepare_image(rgba_png(alpha=255), MAX)
    assert decoded(p.stored).getpixel((0, 0)) == (0, 0, 255)
    p = prepare_image(palette_png(transparent=True), MAX)  # palette index 1 is transparent
    assert p.converted and decoded(p.stored).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("levels", [(0, 1000, 30000, 60000), (32896,) * 4, (65535, 257, 514, 0)])
@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16", "TIFF")])
def test_16_bit_greyscale_is_scaled_not_clipped_or_stretched(levels, mode, fmt):
    """v / 257: the 16-bit range onto 8 bits; a flat mid-grey stays mid-grey (a min-max stretch
    turned it black). Big-endian 16-bit TIFFs open as I;16B."""
    img = Image.new("I;16", (4, 1))
    for x, v in enumerate(levels):
        img.putpixel((x, 0), v)
    data = encode(img if mode == "I;16" else img.convert("I").convert(mode), fmt)
    assert Image.open(io.BytesIO(data)).mode == mode
    p = prepare_image(data, MAX)
    out = decoded(p.stored)
    assert p.converted and out.mode == "RGB"
    assert [out.getpixel((x, 0)) for x in range(4)] == [(round(v / 257),) * 3 for v in levels]


@pytest.mark.parametrize("mode,values,expected", [
    ("I", (0, 100, 200, 255), (0, 100, 200, 255)),          # 8-bit values in a 32-bit image
    ("I", (0, 2570, 25700, 65535), (0, 10, 100, 255)),      # 16-bit values
    ("F", (0.0, 0.2, 0.6, 1.0), (0, 51, 153, 255)),         # floats in 0..1
    ("I", (-1000, 0, 1000, 3000), (0, 64, 128, 255)),       # anything else: stretched
])
def test_int_and_float_greyscale(mode, values, expected):
    img = Image.new(mode, (4, 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    out = decoded(prepare_image(encode(img, "TIFF"), MAX).stored)
    assert tuple(out.getpixel((x, 0))[0] for x in range(4)) == expected


def test_conversion_is_deterministic():
    assert prepare_image(cmyk_jpeg(), MAX).stored == prepare_image(cmyk_jpeg(), MAX).stored


def test_bad_images_are_rejected_with_reasons():
    assert reason(b"") == "image_empty"
    assert reason(b"not an image at all") == "image_undecodable"
    assert reason(truncated_jpeg()) == "image_truncated"
    png = image_bytes(size=(32, 32), fmt="PNG")
    assert reason(png[:60]) in ("image_truncated", "image_undecodable")


def test_decompression_bomb_is_refused_from_the_header():
    start = time.perf_counter()
    assert reason(png_header_bomb(100_000, 100_000)) == "image_too_large"  # 10^10 pixels
    assert time.perf_counter() - start < 1.0  # never decoded
    assert reason(image_bytes(size=(20, 10)), max_pixels=199) == "image_too_large"
    assert prepare_image(image_bytes(size=(20, 10)), max_pixels=200).stored.width == 20


def test_pil_limit_is_set_as_a_second_guard_and_restored():
    before = Image.MAX_IMAGE_PIXELS
    with pil_limits(1234):
        assert Image.MAX_IMAGE_PIXELS == 1234
        # PIL's own check fires inside Image.open, before any decoding
        with pytest.raises(Rejected) as e:
            prepare_image(image_bytes(size=(60, 60)), max_pixels=10**9)
        assert e.value.reason == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS == before


def test_prefixes_of_valid_images_never_raise_anything_else():
    for data in (image_bytes(size=(16, 16)), image_bytes(size=(16, 16), fmt="PNG"), palette_png()):
        for cut in range(0, len(data), max(1, len(data) // 25)):
            try:
                prepare_image(data[:cut], MAX)
            except Rejected as e:
                assert e.reason in ("image_empty", "image_undecodable", "image_truncated")


# --- ImageSource: row paths -> archive members ------------------------------------------------

def test_train_paths_resolve_to_their_subset_zip(tmp_path):
    zips = tmp_path / "MMEB-train" / "images_zip"
    write_zip(zips / "MSCOCO.zip", {"images/MSCOCO/Train/558840_object_hot dog.jpg": b"crop"})
    write_zip(zips / "MSCOCO_i2t.zip", {"images/MSCOCO_i2t/Train/x.jpg": b"other"})
    src = ImageSource(tmp_path, "train", "MSCOCO")
    assert src.read("images/MSCOCO/Train/558840_object_hot dog.jpg") == b"crop"
    assert src.read("images/MSCOCO_i2t/Train/x.jpg") == b"other"  # another subset's zip
    with pytest.raises(Rejected) as e:
        src.read("images/MSCOCO/Train/missing.jpg")
    assert e.value.reason == "image_missing"
    src.close()


def test_eval_paths_resolve_to_images_zip(tmp_path):
    write_zip(tmp_path / "MMEB-eval" / "images.zip", {"WebQA/gold_0.jpg": b"gold"})
    src = ImageSource(tmp_path, "eval", "WebQA")
    assert src.read("WebQA/gold_0.jpg") == b"gold"


def test_eval_paths_resolve_inside_an_archive_packed_with_its_root_folder(tmp_path):
    """MMEB-eval's images.zip layout is inferred (the repo does not document it): should its members sit under a root
    folder ("images/WebQA/...") that the rows' paths ("WebQA/...") lack, they are still found."""
    write_zip(tmp_path / "MMEB-eval" / "images.zip", {"images/WebQA/gold_0.jpg": b"gold",
                                                       "images/OK-VQA/q.jpg": b"q"})
    src = ImageSource(tmp_path, "eval", "WebQA")
    assert src.read("WebQA/gold_0.jpg") == b"gold" and src.read("OK-VQA/q.jpg") == b"q"
    with pytest.raises(Rejected) as e:
        src.read("WebQA/missing.jpg")
    assert e.value.reason == "image_missing" and "WebQA/missing.jpg" in str(e.value)
    src.close()
    # under one of several folders the member is not guessed at: missing, counted as such
    write_zip(tmp_path / "MMEB-eval" / "images.zip", {"a/WebQA/gold_0.jpg": b"gold", "b/WebQA/gold_0.jpg": b"other"})
    src = ImageSource(tmp_path, "eval", "WebQA")
    with pytest.raises(Rejected) as e:
        src.read("WebQA/gold_0.jpg")
    assert e.value.reason == "image_missing"
    src.close()


def test_archive_problems_become_image_reasons(tmp_path):
    def why(src, path):
        with pytest.raises(Rejected) as e:
            src.read(path)
        return e.value.reason

    assert why(ImageSource(tmp_path, "eval", "X"), "X/a.jpg") == "image_missing"  # no images.zip
    zips = tmp_path / "MMEB-train" / "images_zip"
    zips.mkdir(parents=True)
    (zips / "Broken.zip").write_bytes(b"garbage")
    assert why(ImageSource(tmp_path, "train", "Broken"), "images/Broken/Train/a.jpg") == "archive_unreadable"
    write_zip(zips / "Evil.zip", {"images/Evil/Train/../../../x.jpg": b"x", "images/Evil/Train/ok.jpg":
                                  b"0123456789" * 20}, compression=zipfile.ZIP_STORED)
    corrupt_member_crc(zips / "Evil.zip", "images/Evil/Train/ok.jpg")
    src = ImageSource(tmp_path, "train", "Evil")
    assert why(src, "images/Evil/Train/../../../x.jpg") == "image_unsafe_member"
    assert why(src, "images/Evil/Train/ok.jpg") == "image_corrupt"
