"""EmbeddingModel and the `python -m trainer.embed` CLI on tiny saved models."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import digests
from tests.support.images import png_header_bomb
from trainer.backbone.families import build_tiny, save_backbone
from trainer.embed import RENDERING_DEFAULTS, EmbeddingModel, main, make_side, model_dir_of


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "base"
    save_backbone(build_tiny("qwen2_vl", seed=0), path)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (48, 40), (220, 20, 20)).save(path)
    return path


def test_make_side_is_mmeb_layout():
    s = make_side("What colour?", "Represent the given image with the following question:", has_image=True)
    assert s["raw"] == "<|image_1|>\nRepresent the given image with the following question: What colour?\n"
    assert s["template"].format(instruction=s["instruction"], text=s["text"]) == s["raw"]
    assert make_side("", "Represent the given image", has_image=True)["raw"] == \
        "<|image_1|>\nRepresent the given image\n"
    # a bare text is written as MMEB writes text candidates and train targets: no newline, so the
    # pooled last token is the text's own
    assert make_side("a red circle")["raw"] == "a red circle"
    assert make_side("a red circle")["template"] == "{text}"
    assert make_side("A man on a moped.", "Find me an everyday image that matches the given caption:")["raw"] == \
        "Find me an everyday image that matches the given caption: A man on a moped.\n"


def test_encode_shapes_norms_and_batch_invariance(base_dir, image_file):
    model = EmbeddingModel.load(base_dir)
    image = Image.open(image_file).convert("RGB")
    sides = [make_side("a red circle"), make_side("", "Represent the given image", has_image=True),
             make_side("blue", "Find the image")]
    images = [None, image, None]
    a = model.encode(sides, images, batch_size=3)
    b = model.encode(sides, images, batch_size=1)
    assert a.dtype == np.float32 and a.shape == (3, model.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=2e-5)
    assert not model.embedder.training
    np.testing.assert_allclose(model.encode_texts(["a red circle"]), a[:1], atol=1e-6)
    np.testing.assert_allclose(model.encode_images([image], instruction="Represent the given image"), a[1:2], atol=1e-6)
    assert model.encode([], []).shape == (0, model.dim)


def test_encode_batches_mixed_rows_by_kind_and_returns_them_in_order(base_dir, image_file):
    """Text and image rows interleaved: batches of one kind each (none padded to the other kind's
    length), and the vectors in the caller's order, as one row a batch gives them."""
    model = EmbeddingModel.load(base_dir)
    image = Image.open(image_file).convert("RGB")
    sides = [make_side("", "Represent the given image", has_image=True), make_side("a red circle"),
             make_side("", "Represent it", has_image=True), make_side("a blue square with a longer caption"),
             make_side("green")]
    images = [image, None, image, None, None]
    seen = []

    class Recording:  # the model's Collator, noting which rows of each batch have an image
        def __init__(self, collator):
            self.collator = collator

        def __getattr__(self, name):
            return getattr(self.collator, name)

        def __call__(self, batch_sides, batch_images):
            seen.append([im is not None for im in batch_images])
            return self.collator(batch_sides, batch_images)

    model.collator = Recording(model.collator)
    mixed = model.encode(sides, images, batch_size=2)
    model.collator = model.collator.collator
    assert seen == [[False, False], [False, True], [True]]  # texts (shortest first), then images
    one_by_one = np.concatenate([model.encode([side], [image]) for side, image in zip(sides, images)])
    np.testing.assert_allclose(mixed, one_by_one, atol=2e-5)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_embeddings_are_unit_vectors(base_dir, image_file, dtype):
    """The contract is L2-normalised float32 (q @ t.T is the cosine): a half-precision model's own
    normalisation is ~1e-3 off, so encode normalises again in float32."""
    model = EmbeddingModel.load(base_dir, dtype=dtype)
    image = Image.open(image_file).convert("RGB")
    emb = np.concatenate([model.encode_texts(["a red circle", "Find the image"]), model.encode_images([image])])
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_fingerprint_stable_and_changes_with_weights_and_collation(base_dir, tmp_path):
    fp = EmbeddingModel.load(base_dir).fingerprint
    assert EmbeddingModel.load(base_dir).fingerprint == fp  # stable
    copy = tmp_path / "copy"
    shutil.copytree(base_dir, copy)
    assert EmbeddingModel.load(copy).fingerprint == fp  # location-independent
    assert EmbeddingModel.load(base_dir, image_max_pixels=1024).fingerprint != fp
    assert EmbeddingModel.load(base_dir, instructions=False).fingerprint != fp
    # bf16 weights give other embeddings: an fp32 cache must not serve a bf16 run
    assert EmbeddingModel.load(base_dir, dtype="bf16").fingerprint != fp
    assert EmbeddingModel.load(base_dir, dtype="fp32").fingerprint == fp
    # change one weight and save again
    model = EmbeddingModel.load(copy)
    with torch.no_grad():
        next(model.backbone.model.parameters()).add_(1e-3)
    save_backbone(model.backbone, tmp_path / "changed")
    assert EmbeddingModel.load(tmp_path / "changed").fingerprint != fp
    # and saving the same model twice gives the same bytes, hence the same fingerprint
    save_backbone(model.backbone, tmp_path / "changed2")
    assert EmbeddingModel.load(tmp_path / "changed2").fingerprint == EmbeddingModel.load(tmp_path / "changed").fingerprint


def test_rendering_joins_the_fingerprint_only_when_not_the_default(base_dir):
    fp = EmbeddingModel.load(base_dir).fingerprint
    assert EmbeddingModel.load(base_dir, rendering=dict(RENDERING_DEFAULTS)).fingerprint == fp
    changed = {EmbeddingModel.load(base_dir, rendering={k: v}).fingerprint
               for k, v in (("positions", "sequential"), ("stray_image_token", "keep"), ("image_square", 32),
                            ("small_image_side", 28))}
    assert len(changed) == 4 and fp not in changed
    with pytest.raises(ValueError, match="unknown rendering"):
        EmbeddingModel.load(base_dir, rendering={"position": "grid"})


def test_a_model_scored_with_other_rendering_than_trained_warns_naming_each(base_dir, tmp_path, caplog):
    emb_dir = tmp_path / "embedder"
    shutil.copytree(base_dir, emb_dir / "merged")
    (emb_dir / "lineage.json").write_text(json.dumps({"collation": {
        "max_text_tokens": 32, "image_max_pixels": 1024, "instructions": True, "positions": "sequential",
        "stray_image_token": "keep", "image_square": None, "small_image_side": 28}}))
    model = EmbeddingModel.load(emb_dir)  # the lineage's rendering, no warning
    assert (model.collator.positions, model.collator.stray_image_token, model.collator.small_image_side) == (
        "sequential", "keep", 28)
    assert "other input rendering" not in caplog.text
    EmbeddingModel.load(emb_dir, rendering={"positions": "sequential", "stray_image_token": "keep",
                                            "image_square": None, "small_image_side": 28})
    assert "other input rendering" not in caplog.text
    model = EmbeddingModel.load(emb_dir, rendering=dict(RENDERING_DEFAULTS))
    assert model.collator.positions == "grid"  # the given settings win ...
    warning = next(r.getMessage() for r in caplog.records if "other input rendering" in r.getMessage())
    assert ("positions: trained sequential, given grid" in warning  # ... with a warning naming each
            and "stray_image_token: trained keep, given strip" in warning
            and "small_image_side: trained 28, given None" in warning and "image_square" not in warning)


def test_embedder_folder_uses_merged_and_lineage_collation(base_dir, tmp_path):
    emb_dir = tmp_path / "embedder"
    shutil.copytree(base_dir, emb_dir / "merged")
    (emb_dir / "adapter").mkdir()
    (emb_dir / "lineage.json").write_text(json.dumps(
        {"collation": {"max_text_tokens": 32, "image_max_pixels": 1024, "instructions": False}}))
    assert model_dir_of(emb_dir) == emb_dir / "merged"
    model = EmbeddingModel.load(emb_dir)
    assert model.collation == {"max_text_tokens": 32, "image_max_pixels": 1024, "instructions": False,
                               **RENDERING_DEFAULTS}  # a lineage without them: the rendering of its time
    assert model.collator.instructions is False
    assert EmbeddingModel.load(emb_dir, instructions=True).collator.instructions is True  # argument wins
    # loading merged/ itself: the training collation from the lineage beside it, not the defaults
    assert EmbeddingModel.load(emb_dir / "merged").collation == model.collation
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        EmbeddingModel.load(tmp_path)


def test_cli_writes_npy_and_prints_similarities(base_dir, image_file, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    rc = main(["--model", str(base_dir), "--text", "a red circle", "--text", "a blue square",
               "--image", str(image_file), "--image-instruction", "Represent the given image", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "shape (3, 64)" in printed and "cosine similarities" in printed
    emb = np.load(out, allow_pickle=False)
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    model = EmbeddingModel.load(base_dir)
    np.testing.assert_allclose(emb[:2], model.encode_texts(["a red circle", "a blue square"]), atol=1e-6)


def test_cli_errors(base_dir, tmp_path):
    with pytest.raises(SystemExit):
        main(["--model", str(base_dir)])  # nothing to embed
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit):
        main(["--model", str(base_dir), "--image", str(bad)])
    bomb = tmp_path / "bomb.png"  # 9e8 pixels by its header: PIL's DecompressionBombError
    bomb.write_bytes(png_header_bomb(30_000, 30_000))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(base_dir), "--image", str(bomb)])
    assert exit_info.value.code == 2  # a usage error, not a traceback
    with pytest.raises(SystemExit):
        main(["--model", str(base_dir), "--text", "x", "--out", str(tmp_path / "x.pkl")])


def test_cli_refuses_bad_arguments_before_loading_the_model(tmp_path, capsys):
    missing_model = str(tmp_path / "no-such-model")  # loading it would raise FileNotFoundError
    (tmp_path / "dir.npy").mkdir()
    for args in (["--text", ""], ["--text", "x", "--out", str(tmp_path / "dir.npy")],
                 ["--text", "x", "--out", str(tmp_path / "x.txt")]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--model", missing_model, *args])
        assert exit_info.value.code == 2, args  # argparse's usage error, not a traceback
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_as_a_module(base_dir, tmp_path):
    out = tmp_path / "e.npy"
    proc = subprocess.run([sys.executable, "-m", "trainer.embed", "--model", str(base_dir), "--text", "red",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert np.load(out, allow_pickle=False).shape == (1, 64)


def test_a_dual_encoder_base_model_embeds_without_instructions(tmp_path):
    """The paper scored its CLIP-family baselines without instructions; a trained one keeps its own."""
    from trainer.model.inputs import render_text

    save_backbone(build_tiny("clip"), tmp_path / "clip")
    side = make_side("a red circle", instruction="Find me an everyday image that matches the given caption:")
    base = EmbeddingModel.load(tmp_path / "clip")
    assert base.collation["instructions"] is False
    assert base.collator.instructions is False
    assert render_text(side, base.collator.format, instructions=False, has_image=False) == "a red circle"
    forced = EmbeddingModel.load(tmp_path / "clip", instructions=True)
    assert forced.collation["instructions"] is True and forced.fingerprint != base.fingerprint
    (tmp_path / "clip" / "lineage.json").write_text(json.dumps({"collation": {"instructions": True}}))
    digests.record(tmp_path / "clip")  # a file added to a model folder is refused until recorded
    assert EmbeddingModel.load(tmp_path / "clip").collation["instructions"] is True


def overwrite_middle(path: Path, n: int = 64) -> None:
    """Same size, other bytes: `n` bytes in the middle of `path` inverted."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(255 - b for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_a_model_whose_bytes_changed_is_refused_naming_the_file(base_dir, tmp_path):
    emb_dir = tmp_path / "embedder"
    shutil.copytree(base_dir, emb_dir / "merged")
    (emb_dir / "lineage.json").write_text(json.dumps({"collation": {"max_text_tokens": 32}}))
    digests.record(emb_dir)
    EmbeddingModel.load(emb_dir)
    weights = emb_dir / "merged" / "model.safetensors"
    recorded = digests.read_manifest(emb_dir / "merged")["files"]["model.safetensors"]["sha256"]
    overwrite_middle(weights)
    for path in (emb_dir, emb_dir / "merged"):
        with pytest.raises(digests.IntegrityError, match="model.safetensors: contents changed") as e:
            EmbeddingModel.load(path)
        assert e.value.path == weights and e.value.expected == recorded
    shutil.copy(base_dir / "model.safetensors", weights)
    (emb_dir / "lineage.json").write_text(json.dumps({"collation": {"max_text_tokens": 8}}))
    with pytest.raises(digests.IntegrityError, match="lineage.json"):
        EmbeddingModel.load(emb_dir / "merged")  # the lineage beside merged/ sets its collation


def test_api_refuses_a_bare_string_and_takes_image_paths(base_dir, image_file, tmp_path):
    model = EmbeddingModel.load(base_dir)
    with pytest.raises(TypeError, match="not a single str"):
        model.encode_texts("hello")  # would embed five one-character texts
    with pytest.raises(TypeError, match="expected str"):
        model.encode_texts([b"bytes"])
    image = Image.open(image_file).convert("RGB")
    np.testing.assert_array_equal(model.encode_images([str(image_file)]), model.encode_images([image]))
    np.testing.assert_array_equal(model.encode_images([Path(image_file)]), model.encode_images([image]))
    with Image.open(image_file) as closed:  # a lazily opened image whose file has closed since
        pass
    with pytest.raises(ValueError, match="cannot be read"):
        model.encode_images([closed])


def test_encode_pairs_embeds_each_text_with_its_image(base_dir, image_file):
    model = EmbeddingModel.load(base_dir)
    red = Image.open(image_file).convert("RGB")
    blue = Image.new("RGB", (40, 48), (20, 20, 220))
    instruction = "Represent the given image with the following question:"
    pairs = model.encode_pairs(["What colour?", "What shape?"], [red, blue], instruction=instruction)
    sides = [make_side(t, instruction, has_image=True) for t in ("What colour?", "What shape?")]
    np.testing.assert_allclose(pairs, model.encode(sides, [red, blue]), atol=1e-6)
    assert not np.allclose(pairs[0], model.encode_images([red], instruction=instruction, text="What shape?")[0],
                           atol=1e-4)  # the text is part of the input
    with pytest.raises(ValueError, match="one of each"):
        model.encode_pairs(["a", "b"], [red])


def test_a_model_without_lineage_warns_that_no_image_cap_is_known(base_dir, caplog):
    with caplog.at_level("WARNING", logger="trainer.embed"):
        model = EmbeddingModel.load(base_dir)
    assert model.collation["image_max_pixels"] is None and "no image_max_pixels known" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer.embed"):
        capped = EmbeddingModel.load(base_dir, image_max_pixels=4096)
    assert "no image_max_pixels known" not in caplog.text
    assert capped.collation["image_max_pixels"] == 4096 and capped.fingerprint != model.fingerprint


def test_cli_pairs_collation_flags_and_user_errors_without_tracebacks(base_dir, image_file, tmp_path, capsys):
    out = tmp_path / "pairs.npy"
    assert main(["--model", str(base_dir), "--pair", "What colour?", str(image_file), "--pair-instruction",
                 "Represent the given image with the following question:", "--image-max-pixels", "4096",
                 "--no-instructions", "--out", str(out)]) == 0
    model = EmbeddingModel.load(base_dir, image_max_pixels=4096, instructions=False)
    expected = model.encode_pairs(["What colour?"], [str(image_file)],
                                  instruction="Represent the given image with the following question:")
    np.testing.assert_allclose(np.load(out, allow_pickle=False), expected, atol=1e-6)
    assert "pair:What colour?+red.png" in capsys.readouterr().out
    wide = tmp_path / "wide.png"  # the processor refuses an aspect ratio over 200
    Image.new("RGB", (3000, 10), (0, 0, 0)).save(wide)
    for args in (["--model", str(tmp_path / "no-such-model"), "--text", "x"],
                 ["--model", str(base_dir), "--image", str(wide)],
                 ["--model", str(base_dir), "--pair", "", str(image_file)],
                 ["--model", str(base_dir), "--text", "x", "--image-max-pixels", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2, args  # a usage error with a message, not a traceback
    assert "not a model folder" in capsys.readouterr().err


def test_user_text_with_the_placeholder_is_refused_and_cut_text_is_reported(base_dir, image_file, caplog):
    model = EmbeddingModel.load(base_dir, image_max_pixels=4096)
    with pytest.raises(ValueError, match="image placeholder"):
        model.encode_texts(["see <|image_1|> here"])
    with pytest.raises(ValueError, match="image placeholder"):
        model.encode_images([str(image_file)], instruction="<|image_1|> Represent it")
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer.embed"):
        model.encode_texts(["a short text"])
    assert "cut at the end" not in caplog.text
    long = " ".join(["circle"] * 2 * model.collation["max_text_tokens"])
    with caplog.at_level("WARNING", logger="trainer.embed"):
        cut = model.encode_pairs([long, "short"], [str(image_file)] * 2)
    assert "1 of 2 texts are longer than max_text_tokens=256" in caplog.text
    assert np.isfinite(cut).all()  # still embedded: the image tokens are kept, the text is cut


def test_open_image_decodes_once_and_composites_transparency_on_white(tmp_path):
    from trainer.embed import open_image

    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    assert open_image(rgb) is rgb  # already RGB: no copy (the CLI decodes, then the API takes it as is)
    path = tmp_path / "x.png"
    rgb.save(path)
    decoded = open_image(path)
    assert decoded.mode == "RGB" and open_image(decoded) is decoded and decoded.getpixel((0, 0)) == (10, 20, 30)
    clear = Image.new("RGBA", (4, 4), (200, 0, 0, 0))  # a hidden colour under full transparency
    assert open_image(clear).getpixel((0, 0)) == (255, 255, 255)
    keyed = Image.new("RGB", (4, 4), (10, 20, 30))
    keyed.info["transparency"] = (10, 20, 30)  # RGB with a transparent colour key: composited, not kept
    assert open_image(keyed).getpixel((0, 0)) == (255, 255, 255)
