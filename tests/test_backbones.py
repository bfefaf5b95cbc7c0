"""Every backbone family: tiny build -> mixed collation -> embedding -> save/load -> LoRA targets."""

import json
import re
import shutil

import pytest
import torch
from PIL import Image

from trainer.backbones import (FAMILIES, LORA_TARGETS, build_tiny, detect_family, load_backbone,
                               save_backbone, train_family_tokenizer)
from trainer.inputs import Collator
from trainer.model import Embedder

torch.set_num_threads(1)

SIDES = [
    dict(raw="<|image_1|>\nRepresent the given image for classification\n", instruction="", text="",
         has_image_token=True, template="", image=None),
    dict(raw="Find me an everyday image that matches the given caption: a red circle.\n", instruction="",
         text="a red circle.", has_image_token=False, template="", image=None),
    dict(raw="<|image_1|>\nRepresent the given image with the following question: what colour is it?\n",
         instruction="", text="what colour is it?", has_image_token=True, template="", image=None),
    dict(raw="blue\n", instruction="", text="blue", has_image_token=False, template="", image=None),
]
IMAGES = [Image.new("RGB", (40, 30), "red"), None, Image.new("RGB", (64, 64), "blue"), None]


def _embed(backbone):
    batch = Collator(backbone, max_text_tokens=64, image_max_pixels=4096)(SIDES, IMAGES)
    with torch.no_grad():
        return batch, Embedder(backbone).eval()(batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family, tmp_path):
    from peft import LoraConfig, get_peft_model

    backbone = build_tiny(family, seed=0)
    assert backbone.kind == ("dual" if family in ("clip", "siglip") else "vlm")
    batch, emb = _embed(backbone)
    assert batch["has_image"].tolist() == [True, False, True, False]
    assert emb.shape == (4, 64) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    assert not torch.allclose(emb[0], emb[1])  # rows differ

    # row-wise: the mixed batch gives what each row gives alone (padding / merge are invisible)
    collate = Collator(backbone, max_text_tokens=64, image_max_pixels=4096)
    with torch.no_grad():
        alone = torch.cat([Embedder(backbone).eval()(collate([s], [i])) for s, i in zip(SIDES, IMAGES)])
    torch.testing.assert_close(alone, emb, atol=2e-5, rtol=1e-4)

    # save / load round trip: same outputs
    save_backbone(backbone, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "backbone.json").read_text())["family"] == family
    reloaded = load_backbone(str(tmp_path / "m"))
    assert (reloaded.family, reloaded.image_token, reloaded.kind) == (family, backbone.image_token, backbone.kind)
    assert type(reloaded.processor) is type(backbone.processor)
    torch.testing.assert_close(_embed(reloaded)[1], emb, atol=1e-6, rtol=1e-5)

    # LoRA with the default targets: LM attention/MLP projections only, never a vision conv
    peft_model = get_peft_model(backbone.model, LoraConfig(r=4, target_modules=backbone.lora_targets))
    wrapped = [name for name, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    convs = [name for name, m in peft_model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and not any(c in w for c in convs for w in wrapped)
    assert not any("lora" in c for c in convs)
    if family in ("clip", "siglip"):
        assert any("text_model" in w for w in wrapped) and any("vision_model" in w for w in wrapped)
    else:
        lm = "text_model" if family in ("idefics3", "smolvlm") else "language_model"
        assert all(f".{lm}." in w for w in wrapped)  # nothing in the vision tower or projector
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            assert sum(w.endswith(proj) for w in wrapped) == 2  # one per layer, 2 layers
    # the Embedder runs through the LoRA layers, and gradients reach them
    batch, _ = _embed(backbone)
    emb = Embedder(backbone)(batch)
    emb.sum().backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_build_tiny_is_deterministic_and_seeded():
    a, b, c = build_tiny("qwen2_vl", seed=3), build_tiny("qwen2_vl", seed=3), build_tiny("qwen2_vl", seed=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_tiny_errors():
    with pytest.raises(ValueError, match="unknown backbone family"):
        build_tiny("phi3_v")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_tiny("qwen2_vl", image_size=40)
    wrong = train_family_tokenizer("clip")
    with pytest.raises(ValueError, match="special tokens"):
        build_tiny("qwen2_vl", tokenizer=wrong)


def test_build_tiny_with_given_tokenizer_and_sizes():
    raw = train_family_tokenizer("qwen2_vl", ["a tiny corpus about red circles"] * 50, vocab_size=300)
    backbone = build_tiny("qwen2_vl", tokenizer=raw, hidden_size=128, layers=3, image_size=64)
    cfg = backbone.model.config.text_config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (128, 3, raw.get_vocab_size())
    batch = Collator(backbone)(SIDES[:1], [Image.new("RGB", (64, 64), "red")])
    image_id = backbone.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_id).sum()) == 16  # 64 px, patch 8, merge 2


def test_lora_regexes_do_not_match_vision_modules():
    vision_names = ["model.visual.patch_embed.proj", "model.visual.blocks.0.attn.qkv",
                    "model.visual.blocks.0.mlp.gate_proj", "model.vision_tower.encoder.layers.0.self_attn.q_proj",
                    "model.multi_modal_projector.linear_1", "model.vision_model.encoder.layers.0.mlp.fc1",
                    "lm_head"]
    for family in ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "paligemma", "idefics3", "smolvlm"):
        assert not any(re.fullmatch(LORA_TARGETS[family], n) for n in vision_names), family


def _hub_layout(backbone, folder):
    """The files a Hub model repo holds (no backbone.json)."""
    backbone.model.save_pretrained(folder)
    backbone.processor.save_pretrained(folder)


def test_load_hub_layout_folder_detects_family(tmp_path):
    backbone = build_tiny("llava")
    _hub_layout(backbone, tmp_path / "llava-hub")
    loaded = load_backbone(str(tmp_path / "llava-hub"))
    assert (loaded.family, loaded.image_token, loaded.lora_targets) == ("llava", "<image>", LORA_TARGETS["llava"])
    assert loaded.info["model_type"] == "llava"
    torch.testing.assert_close(_embed(loaded)[1], _embed(backbone)[1], atol=1e-6, rtol=1e-5)


def test_load_hub_id_from_offline_cache_records_commit(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache (HF_HUB_OFFLINE=1 in the test suite)."""
    import huggingface_hub.constants as hc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-qwen2-vl"
    _hub_layout(build_tiny("qwen2_vl"), repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    loaded = load_backbone("tiny-org/tiny-qwen2-vl", revision="main")
    assert loaded.family == "qwen2_vl" and loaded.info["revision"] == commit
    assert loaded.info["name"] == "tiny-org/tiny-qwen2-vl"
    save_backbone(loaded, tmp_path / "base")  # the recorded commit survives the save
    assert json.loads((tmp_path / "base" / "backbone.json").read_text())["info"]["revision"] == commit


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a Hub id"):
        load_backbone(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "phi3_v"}))
    with pytest.raises(ValueError, match="unsupported model_type 'phi3_v'"):
        detect_family(tmp_path / "bad")
    with pytest.raises(ValueError, match="unsupported model_type"):
        load_backbone(str(tmp_path / "bad"))


def test_save_refuses_peft_wrapped_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    backbone = build_tiny("qwen2_vl")
    backbone.model = get_peft_model(backbone.model, LoraConfig(r=2, target_modules=backbone.lora_targets))
    with pytest.raises(TypeError, match="merge it first"):
        save_backbone(backbone, tmp_path / "x")
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
