"""Phi-3.5-V as VLM2Vec runs it, on a tiny stand-in that ships its own code (tests/support/phi3v.py):
refused without trust_remote_code, loaded with it; `<|image_1|>` kept in the text; num_crops reaching
the processor; mixed batches (image, text, kept stray token) embedding each row as VLM2Vec's
per-row processing does; trained a few steps and scored from the saved folders without the flag."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.digests import IntegrityError
from tests.support.phi3v import write_phi3v
from trainer.backbone.families import RemoteCodeRefused, load_backbone, save_backbone
from trainer.model.embedder import Embedder
from trainer.model.inputs import Collator, render_text
from trainer.model.pooling import last_token_pool

IMAGE_SIDE = dict(raw="<|image_1|>\nRepresent the given image with the following question: what is the red thing?")
TEXT_SIDE = dict(raw="what is the blue thing")
STRAY_SIDE = dict(raw="<|image_1|>\nRepresent the given image with the following question: what is the round thing?")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_phi3v(tmp_path_factory.mktemp("phi3v") / "Phi-3.5-vision-instruct", num_crops=4)


@pytest.fixture(scope="module")
def phi3v(folder):
    return load_backbone(str(folder), trust_remote_code=True)


def wide():
    return Image.new("RGB", (48, 16), (200, 30, 30))


def test_refused_without_the_opt_in(folder):
    with pytest.raises(RemoteCodeRefused) as err:
        load_backbone(str(folder))
    text = str(err.value)
    assert str(folder) in text and "backbone.trust_remote_code" in text and "arbitrary Python" in text


def test_loads_with_the_opt_in(phi3v):
    assert (phi3v.family, phi3v.kind, phi3v.image_token) == ("phi3_v", "vlm", "<|image_1|>")
    assert type(phi3v.processor).__name__ == "Phi3VProcessor"  # the folder's own code
    assert phi3v.info["remote_code"] is True and phi3v.tokenizer.padding_side == "right"
    names = [n for n, _ in phi3v.model.named_modules()]
    import re
    targets = [n for n in names if re.fullmatch(phi3v.lora_targets, n)]
    assert targets and all(n.startswith("model.layers.") for n in targets)
    assert {n.rsplit(".", 1)[1] for n in targets} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_rendering_keeps_the_placeholder(phi3v):
    assert render_text(IMAGE_SIDE, phi3v, has_image=True) == IMAGE_SIDE["raw"]
    assert render_text(STRAY_SIDE, phi3v, has_image=False, stray_image_token="keep") == STRAY_SIDE["raw"]
    assert "<|image_1|>" not in render_text(STRAY_SIDE, phi3v, has_image=False, stray_image_token="strip")


@pytest.mark.parametrize("crops", [1, 2, 4])
def test_num_crops_reaches_the_processor(folder, crops):
    backbone = load_backbone(str(folder), trust_remote_code=True, num_crops=crops)
    assert backbone.processor.image_processor.num_crops == crops
    batch = Collator(backbone)([IMAGE_SIDE], [wide()])
    assert batch["pixel_values"].shape[1] == crops + 1  # padded to num_crops + the global crop
    cols, rows = backbone.processor.image_processor.grid(48, 16)
    assert cols * rows <= crops
    assert int((batch["input_ids"] < 0).sum()) == (cols * rows + 1) * 4  # 4 image tokens per crop


def vlm2vec_row(backbone, text, image):
    """One row as VLM2Vec's Phi3V_process_fn + encode_input make it: the processor alone, last token."""
    proc = backbone.processor
    enc = proc(text=text, images=[image], return_tensors="pt") if image else proc.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = backbone.model.model(**dict(enc), use_cache=False, return_dict=True)
    return F.normalize(last_token_pool(out.last_hidden_state, enc["attention_mask"]), dim=-1)[0]


@pytest.mark.parametrize("stray", ["keep", "strip"])
def test_mixed_batch_embeds_each_row_as_vlm2vec(phi3v, stray):
    sides, images = [TEXT_SIDE, IMAGE_SIDE, STRAY_SIDE], [None, wide(), None]
    collator = Collator(phi3v, stray_image_token=stray)
    batch = collator(sides, images)
    assert "stray_token" not in batch  # the kept placeholder is plain text: nothing to encode apart
    with torch.no_grad():
        got = Embedder(phi3v)(batch)
    texts = [render_text(s, phi3v, has_image=i is not None, stray_image_token=stray) for s, i in zip(sides, images)]
    for row, (text, image) in enumerate(zip(texts, images)):
        assert F.cosine_similarity(got[row], vlm2vec_row(phi3v, text, image), dim=0) > 0.9999
    kept = phi3v.tokenizer("<|image_1|>", add_special_tokens=False)["input_ids"]
    ids = batch["input_ids"][2].tolist()
    has_kept = any(ids[i:i + len(kept)] == kept for i in range(len(ids)))
    assert has_kept == (stray == "keep")


def test_saved_folder_keeps_the_opt_in_and_its_code(phi3v, tmp_path):
    save_backbone(phi3v, tmp_path / "base")
    assert json.loads((tmp_path / "base/backbone.json").read_text())["info"]["remote_code"] is True
    again = load_backbone(str(tmp_path / "base"))  # the opt-in was given when it was fetched
    batch = Collator(phi3v)([IMAGE_SIDE], [wide()])
    with torch.no_grad():
        assert torch.allclose(Embedder(again)(batch), Embedder(phi3v)(batch), atol=1e-6)
    code = tmp_path / "base/modeling_phi3_v.py"
    code.write_text(code.read_text() + "\n# changed\n")
    with pytest.raises(IntegrityError):
        load_backbone(str(tmp_path / "base"))
    (tmp_path / "base/digests.json").unlink()  # unverifiable code: the recorded opt-in no longer counts
    with pytest.raises(RemoteCodeRefused):
        load_backbone(str(tmp_path / "base"))


def test_trains_and_scores_from_the_saved_folders(phi3v, tmp_path):
    """A few LoRA steps from a Phi-3-V models/base, then models/embedder loads for evaluation
    (trainer.embed) without the flag: both folders carry the opt-in and their digests."""
    from tests.support.shards import write_test_shards
    from tests.support.train_workspace import params, paths_in, shape_record
    from trainer.embed import EmbeddingModel
    from trainer.train.recipe import train

    save_backbone(phi3v, tmp_path / "models/base")
    write_test_shards(tmp_path / "data/shards/train", {"Syn-ShapesA": 16}, per_shard=16, make_record=shape_record)
    summary = train(params(steps=2, batch_size=4, save_every=2, max_text_tokens=24), paths_in(tmp_path))
    assert summary["steps"] == 2
    model = EmbeddingModel.load(tmp_path / "models/embedder")
    assert model.backbone.family == "phi3_v"
    from trainer.eval import stray
    assert stray.rule_of(model) == "strip"  # the rule it was trained with, as metrics/eval.json reports it
    emb = model.encode([IMAGE_SIDE, TEXT_SIDE, STRAY_SIDE], [wide(), None, None], batch_size=3)
    assert emb.shape == (3, 32) and abs(float((emb[0] ** 2).sum()) - 1) < 1e-4
