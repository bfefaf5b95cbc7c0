"""trainer.released: released checkpoints (full weights, peft adapter) imported as model
folders that evaluate scores under their profile; stand-ins built here in the Hub layouts."""

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.sides import side
from trainer.backbone.families import build_tiny, save_backbone
from trainer.released import import_checkpoint, main
from trainer.embed import RENDERING_DEFAULTS, EmbeddingModel

SIDES = [side("<|image_1|>\nRepresent the given image\n"),
         side("<|image_1|>\nFind a Wikipedia image that answers this question: Who?\n"),  # stray placeholder
         side("a red square\n")]
IMAGES = [Image.new("RGB", (32, 32), (200, 30, 30)), None, None]
V2 = dict(positions="sequential", stray_image_token="keep", image_resize="processor", image_square=None,
          small_image_side=28)


def hub_layout(backbone, folder):
    """A transformers model folder as the Hub holds it: weights, config, processor; no backbone.json."""
    backbone.model.save_pretrained(folder, safe_serialization=True)
    backbone.processor.save_pretrained(folder)
    return folder


def reference(backbone, tmp_path):
    """Embeddings of SIDES by `backbone` with VLM2Vec V2's rendering (a save_backbone folder of it)."""
    save_backbone(backbone, tmp_path / "reference")
    model = EmbeddingModel.load(tmp_path / "reference", max_text_tokens=4096, image_max_pixels=1003520,
                                rendering=V2)
    return model.encode(SIDES, IMAGES)


def test_full_weights_import_and_score_under_their_profile(tmp_path, caplog):
    released = build_tiny("qwen2_vl", seed=3)
    source = hub_layout(released, tmp_path / "VLM2Vec-Tiny")
    out = import_checkpoint(str(source), tmp_path / "models" / "vlm2vec-tiny", profile="vlm2vec-v2")
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["released"] == {"source": str(source), "revision": None, "layout": "full weights", "base": None}
    assert lineage["profile"] == "vlm2vec-v2" and lineage["collation"]["positions"] == "sequential"
    model = EmbeddingModel.load(out)  # the profile's rendering, from the lineage
    assert (model.collator.positions, model.collator.stray_image_token) == ("sequential", "keep")
    np.testing.assert_allclose(model.encode(SIDES, IMAGES), reference(released, tmp_path), atol=1e-5)
    with caplog.at_level(logging.WARNING):
        EmbeddingModel.load(out, rendering=dict(RENDERING_DEFAULTS))  # scored with the project's defaults
    assert "positions: trained sequential, given grid" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # eval.rendering_from: model: the lineage's settings win
        own = EmbeddingModel.load(out, rendering=dict(RENDERING_DEFAULTS), image_max_pixels=4096, lineage_first=True)
    assert "trained" not in caplog.text
    assert own.collation == model.collation and own.fingerprint == model.fingerprint


def test_a_peft_adapter_is_merged_into_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    from trainer.backbone.families import load_backbone

    base_dir = hub_layout(build_tiny("qwen2_vl", seed=0), tmp_path / "Tiny-Base")
    base = load_backbone(str(base_dir))
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights="gaussian", use_dora=True)  # VLM2Vec's LoRA kind
    peft_model = get_peft_model(base.model, config)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "VLM2Vec-Tiny-LoRA")
    saved = json.loads((tmp_path / "VLM2Vec-Tiny-LoRA" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base_dir)
    merged = peft_model.merge_and_unload()
    want = reference(replace(base, model=merged), tmp_path)
    out = import_checkpoint(str(tmp_path / "VLM2Vec-Tiny-LoRA"), tmp_path / "models" / "lora",
                            profile="vlm2vec-v2")
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["released"]["layout"] == "peft adapter" and lineage["released"]["base"] == str(base_dir)
    np.testing.assert_allclose(EmbeddingModel.load(out).encode(SIDES, IMAGES), want, atol=1e-5)
    assert not np.allclose(want, reference(load_backbone(str(base_dir)), tmp_path / "plain"), atol=1e-3)


def test_bare_weights_need_a_base_for_their_processor(tmp_path, capsys):
    released = build_tiny("qwen2_vl", seed=3)
    released.model.save_pretrained(tmp_path / "bare", safe_serialization=True)  # no tokenizer files
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bare"), "--name", "bare", "--profile", "vlm2vec-v1", "--models", str(tmp_path / "m")])
    assert "give --base" in capsys.readouterr().err
    hub_layout(released, tmp_path / "processor-source")
    assert main([str(tmp_path / "bare"), "--name", "bare", "--profile", "vlm2vec-v1", "--models",
                 str(tmp_path / "m"), "--base", str(tmp_path / "processor-source")]) == 0
    model = EmbeddingModel.load(tmp_path / "m" / "bare")
    assert model.collator.image_square == 1344 and model.collator.image_resize == "processor"


def test_a_phi3v_checkpoint_needs_the_opt_in(tmp_path, capsys):
    """VLM2Vec's Phi-3.5-V checkpoints ship their own code: refused without --trust-remote-code,
    imported with it (num_crops reaching the processor) and scored without it from then on."""
    from tests.support.phi3v import write_phi3v

    source = write_phi3v(tmp_path / "VLM2Vec-Phi3V", num_crops=4)
    args = [str(source), "--name", "phi", "--profile", "vlm2vec-v1", "--models", str(tmp_path / "m")]
    with pytest.raises(SystemExit):
        main(args)
    assert "backbone.trust_remote_code" in capsys.readouterr().err
    assert main(args + ["--trust-remote-code", "--num-crops", "2"]) == 0
    model = EmbeddingModel.load(tmp_path / "m" / "phi")
    assert model.backbone.family == "phi3_v" and model.backbone.processor.image_processor.num_crops == 2
    assert model.encode(SIDES, IMAGES).shape == (3, 32)


def test_a_qwen3_vl_embedding_checkpoint_scores_in_its_chat_format(tmp_path):
    """A Qwen3-VL checkpoint in the Hub layout imported under the qwen3-vl-embedding profile: its
    lineage records the chat prompt style, and the loaded model encodes in it (the same vectors as
    the Collator's qwen3-vl-embedding rendering of the weights, not the vlm2vec string's)."""
    released = build_tiny("qwen3_vl", seed=2)
    out = import_checkpoint(str(hub_layout(released, tmp_path / "Qwen3-VL-Embedding-Tiny")),
                            tmp_path / "models" / "qwen3-vl-embedding-tiny", profile="qwen3-vl-embedding")
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["collation"]["prompt"] == "qwen3-vl-embedding"
    model = EmbeddingModel.load(out)
    assert model.collator.prompt == "qwen3-vl-embedding" and model.collator.image_resize == "processor"
    vectors = model.encode(SIDES[::2], IMAGES[::2])
    plain = EmbeddingModel.load(out, rendering=dict(RENDERING_DEFAULTS)).encode(SIDES[::2], IMAGES[::2])
    assert np.abs(vectors - plain).max() > 1e-3
    assert model.fingerprint != EmbeddingModel.load(out, rendering=dict(RENDERING_DEFAULTS)).fingerprint


def test_a_gme_checkpoint_scores_as_vlm2vec_scores_gme(tmp_path):
    """A Qwen2-VL checkpoint imported under the gme profile encodes VLM2Vec's GME strings: a video
    is its middle frame, and the vectors are those of the Collator's gme rendering."""
    from trainer.model.embedder import Embedder
    from trainer.model.inputs import Collator

    released = build_tiny("qwen2_vl", seed=4)
    out = import_checkpoint(str(hub_layout(released, tmp_path / "gme-Tiny")), tmp_path / "models" / "gme-tiny",
                            profile="gme")
    model = EmbeddingModel.load(out)
    assert (model.collator.prompt, model.collator.stray_image_token) == ("gme", "keep")
    video = {"raw": "<|video_1|> Recognize the category of the video content."}
    frames = [Image.new("RGB", (32, 32), (40 * i, 20, 200)) for i in range(5)]
    sides, images = [video, SIDES[2]], [frames, None]
    collator = Collator(released, max_text_tokens=1800, image_max_pixels=1003520, image_resize="processor",
                        stray_image_token="keep", prompt="gme")
    with torch.no_grad():
        want = Embedder(released).eval()(collator(sides, images)).numpy()
    np.testing.assert_allclose(model.encode(sides, images), want, atol=1e-5)
    np.testing.assert_allclose(model.encode([video], [frames]), model.encode([video], [frames[2]]), atol=1e-6)
