"""Every backbone family: tiny build -> mixed collation -> embedding -> save/load -> LoRA targets."""

import dataclasses
import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
from PIL import Image

from trainer.backbone.families import (FAMILIES, LORA_TARGETS, build_tiny, detect_family, load_backbone,
                               save_backbone, train_family_tokenizer)
from trainer.model.inputs import Collator
from tests.support.images import image_bytes
from tests.support.params import section
from tests.support.sides import IMAGES, SIDES, side
from trainer.model.embedder import Embedder


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


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_dual_encoder_long_text_is_truncated_to_its_position_table(family):
    backbone = build_tiny(family)
    long_side = dict(SIDES[1], raw="a red circle " * 200, text="a red circle " * 200)
    batch = Collator(backbone, max_text_tokens=256)([long_side, SIDES[3]], [None, IMAGES[0]])
    limit = backbone.model.config.text_config.max_position_embeddings
    assert batch["input_ids"].shape[1] <= limit
    with torch.no_grad():
        assert torch.isfinite(Embedder(backbone)(batch)).all()


def test_build_tiny_is_deterministic_and_seeded():
    a, b, c = build_tiny("qwen2_vl", seed=3), build_tiny("qwen2_vl", seed=3), build_tiny("qwen2_vl", seed=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_tiny_errors():
    with pytest.raises(ValueError, match="unknown backbone family"):
        build_tiny("phi4_mm")
    with pytest.raises(ValueError, match="no tiny phi3_v"):  # its code ships with the model
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
                    "model.visual.blocks.0.mlp.linear_fc1", "model.visual.merger.linear_fc2",
                    "model.visual.deepstack_merger_list.0.linear_fc1", "lm_head"]
    for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "paligemma", "idefics3", "smolvlm"):
        assert not any(re.fullmatch(LORA_TARGETS[family], n) for n in vision_names), family


def _hub_layout(backbone, folder):
    """The files a Hub model repo holds (no backbone.json)."""
    backbone.model.save_pretrained(folder)
    backbone.processor.save_pretrained(folder)


def test_load_hub_layout_folder_detects_family(tmp_path):
    backbone = build_tiny("llava")
    _hub_layout(backbone, tmp_path / "llava-hub")
    # older llava-hf repos: patch_size / feature strategy only in config.json, not for the processor
    proc_cfg = tmp_path / "llava-hub" / "processor_config.json"
    cfg = json.loads(proc_cfg.read_text())
    del cfg["patch_size"], cfg["vision_feature_select_strategy"], cfg["num_additional_image_tokens"]
    proc_cfg.write_text(json.dumps(cfg))
    loaded = load_backbone(str(tmp_path / "llava-hub"))
    assert (loaded.family, loaded.image_token, loaded.lora_targets) == ("llava", "<image>", LORA_TARGETS["llava"])
    assert loaded.info["model_type"] == "llava"
    torch.testing.assert_close(_embed(loaded)[1], _embed(backbone)[1], atol=1e-6, rtol=1e-5)


def test_load_hub_layout_qwen3_vl(tmp_path):
    """A Qwen3-VL folder as the Hub holds one (Qwen/Qwen3-VL-2B-Instruct's files: preprocessor_config
    naming Qwen2-VL's fast image processor, a video_preprocessor_config, chat_template.json; no
    transformers-5 processor_config): family from model_type, the image-only processor, the same
    embeddings."""
    backbone = build_tiny("qwen3_vl")
    _hub_layout(backbone, tmp_path / "q3")
    saved = json.loads((tmp_path / "q3" / "processor_config.json").read_text())["image_processor"]
    (tmp_path / "q3" / "processor_config.json").unlink()
    pre = {k: saved[k] for k in ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")}
    pre.update(processor_class="Qwen3VLProcessor", image_processor_type="Qwen2VLImageProcessorFast")
    (tmp_path / "q3" / "preprocessor_config.json").write_text(json.dumps(pre))
    (tmp_path / "q3" / "video_preprocessor_config.json").write_text(
        json.dumps({**pre, "video_processor_type": "Qwen3VLVideoProcessor", "fps": 2, "max_frames": 768}))
    (tmp_path / "q3" / "chat_template.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    config = json.loads((tmp_path / "q3" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and detect_family(tmp_path / "q3") == "qwen3_vl"
    loaded = load_backbone(str(tmp_path / "q3"))
    assert (loaded.family, loaded.image_token, loaded.lora_targets) == ("qwen3_vl", "<|image_pad|>",
                                                                        LORA_TARGETS["qwen3_vl"])
    assert type(loaded.processor) is type(backbone.processor)
    torch.testing.assert_close(_embed(loaded)[1], _embed(backbone)[1], atol=1e-6, rtol=1e-5)


def test_load_dtype_does_not_follow_the_checkpoint(tmp_path):
    """Hub Qwen2-VL checkpoints are stored in bf16: loading without a dtype must still give float32
    weights (fp32 training and evaluation), "auto" the stored dtype (the backbone stage's copy)."""
    backbone = build_tiny("qwen2_vl")
    backbone.model.to(torch.bfloat16)
    _hub_layout(backbone, tmp_path / "bf16-hub")
    loaded = load_backbone(str(tmp_path / "bf16-hub"), revision="main")
    assert {q.dtype for q in loaded.model.parameters()} == {torch.float32}
    assert (loaded.info["revision"], loaded.info["source"]) == (None, "local")  # no revision for a folder
    kept = load_backbone(str(tmp_path / "bf16-hub"), torch_dtype="auto")
    assert {q.dtype for q in kept.model.parameters()} == {torch.bfloat16}
    as_bf16 = load_backbone(str(tmp_path / "bf16-hub"), torch_dtype=torch.bfloat16)
    assert {q.dtype for q in as_bf16.model.parameters()} == {torch.bfloat16}


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
    assert loaded.info["name"] == "tiny-org/tiny-qwen2-vl" and loaded.info["source"] == "hub"
    save_backbone(loaded, tmp_path / "base")  # the recorded commit survives the save
    assert json.loads((tmp_path / "base" / "backbone.json").read_text())["info"]["revision"] == commit


HUB_LOAD = """
import json
from trainer.backbone.families import load_backbone
try:
    b = load_backbone({name!r}, revision={revision!r})
    print(json.dumps({{"family": b.family, "revision": b.info["revision"], "source": b.info["source"]}}))
except (ValueError, PermissionError) as e:
    print(json.dumps({{"error": str(e)}}))
"""


def test_load_hub_id_through_the_client_pins_and_refuses_unsupported_models_before_their_weights(
        tmp_path, hub_standin):
    """A Hub id through the real huggingface_hub client (the local stand-in, in a subprocess: the client
    reads HF_ENDPOINT at import): the commit the revision resolved to is recorded, a re-run works
    offline from the cache, and a model of an unsupported family (`phi4mm`), or of a remote-code
    family without trust_remote_code (Phi-3.5-V: `phi3_v`), is refused from its config.json, before
    its weights or code download."""
    import subprocess
    import sys

    from tests.support.hubserver import client_env

    _hub_layout(build_tiny("qwen2_vl"), tmp_path / "qwen")
    sha = hub_standin.add_repo("Qwen/Qwen2-VL-2B-Instruct", tmp_path / "qwen", refs=("main", "v1"))
    phi = tmp_path / "phi"
    phi.mkdir()
    (phi / "config.json").write_text(json.dumps({"model_type": "phi3_v", "architectures": ["Phi3VForCausalLM"]}))
    (phi / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 4096)
    (phi / "modeling_phi3_v.py").write_text("raise SystemExit('remote code ran')\n")
    hub_standin.add_repo("microsoft/Phi-3.5-vision-instruct", phi)
    phi4 = tmp_path / "phi4"
    phi4.mkdir()
    (phi4 / "config.json").write_text(json.dumps({"model_type": "phi4mm"}))
    (phi4 / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 4096)
    hub_standin.add_repo("microsoft/Phi-4-multimodal-instruct", phi4)

    def load(name, revision="main", offline=False):
        r = subprocess.run([sys.executable, "-c", HUB_LOAD.format(name=name, revision=revision)],
                           env=client_env(tmp_path, hub_standin.endpoint, offline), cwd=tmp_path,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-4000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    assert load("Qwen/Qwen2-VL-2B-Instruct", "v1") == {"family": "qwen2_vl", "revision": sha, "source": "hub"}
    hub_standin.clear_log()
    assert load("Qwen/Qwen2-VL-2B-Instruct", "v1", offline=True)["revision"] == sha
    assert hub_standin.requests == []

    out = load("microsoft/Phi-4-multimodal-instruct")
    assert "microsoft/Phi-4-multimodal-instruct@" in out["error"] and "unsupported model_type 'phi4mm'" in out["error"]
    assert hub_standin.files_requested("microsoft/Phi-4-multimodal-instruct", "GET") == {"config.json"}
    out = load("microsoft/Phi-3.5-vision-instruct")
    assert "microsoft/Phi-3.5-vision-instruct" in out["error"] and "backbone.trust_remote_code" in out["error"]
    assert hub_standin.files_requested("microsoft/Phi-3.5-vision-instruct", "GET") == {"config.json"}


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a Hub id"):
        load_backbone(str(tmp_path / "no" / "such" / "dir"))
    # "models/base" before the backbone stage ran looks like a Hub id (org/name): a missing local
    # folder is said as such, not as a failed download
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="no model folder models/base"):
        load_backbone("models/base")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "phi4mm"}))
    with pytest.raises(ValueError, match="unsupported model_type 'phi4mm'"):
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


# --------------------------------------------------------------------------------------------------
# tokenizer, generative warm-up and the `backbone` stage, on a small normalized dataset

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 160, 60), "yellow": (235, 205, 30)}


def write_normalized(root, rows_per_dataset=16):
    """data/normalized/{train,images} with a classification (image -> colour) and a t2i dataset
    (caption -> image), a grounding-like image->image dataset and a text-only record."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.imagestore import ImageStoreWriter, StoredImage, merge
    from pipelines.schema import RECORD_SCHEMA

    writer = ImageStoreWriter(root / "images", "w0")

    def image(colour, i):
        width = 48 + i % 3 * 8
        data = image_bytes(COLOURS[colour], (width, 48), fmt="PNG")
        sha = hashlib.sha256(data).hexdigest()
        writer.add(StoredImage(sha, data, width, 48, "PNG"))
        return dict(sha256=sha, path=f"{colour}{i}.png", width=width, height=48)

    datasets = {}
    names = list(COLOURS)
    cls, t2i, i2i = [], [], []
    for i in range(rows_per_dataset):
        colour = names[i % len(names)]
        cls.append(dict(query=side("<|image_1|>\nRepresent the given image for classification\n",
                                    "Represent the given image for classification", "", image(colour, i)),
                        target=side(f"{colour}\n", "", colour)))
        t2i.append(dict(query=side(f"Find me an everyday image that matches the given caption: a {colour} square.\n",
                                    "Find me an everyday image that matches the given caption: ", f"a {colour} square."),
                        target=side("<|image_1|>\nRepresent the given image.\n", "Represent the given image.", "",
                                     image(colour, i + 100))))
        i2i.append(dict(query=side("<|image_1|>\nRepresent the given image\n", "Represent the given image", "",
                                    image(colour, i + 200)),
                        target=side("<|image_1|>\nRepresent the given image\n", "Represent the given image", "",
                                     image(colour, i + 300))))
    t2i.append(dict(query=side("text only\n", "", "text only"), target=side("answer\n", "", "answer")))
    datasets = {"Syn-ShapeCLS": cls, "Syn-Caption_t2i": t2i, "Syn-NIGHTS": i2i}
    for name, rows in datasets.items():
        records = [dict(id=f"{name}/original/{i}", dataset=name, split="original", meta_task="retrieval",
                        distribution="IND", instruction=r["query"]["instruction"], query=r["query"],
                        target=r["target"], negatives=[]) for i, r in enumerate(rows)]
        (root / "train" / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), root / "train" / name / "part-00000.parquet")
    writer.close()
    merge(root / "images")
    return root


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    return write_normalized(tmp_path_factory.mktemp("data") / "normalized")


def test_tokenizer_from_normalized_corpus(normalized):
    from trainer.backbone.tokenizer import corpus_from_normalized

    texts = list(corpus_from_normalized(normalized / "train"))
    assert "red" in texts and not any("<|image_1|>" in t for t in texts)
    assert "Represent the given image for classification" in texts
    raw = train_family_tokenizer("qwen2_vl", texts, vocab_size=400)
    assert [raw.token_to_id(t) for t in ("<|endoftext|>", "<|image_pad|>")] == [0, 6]
    assert raw.decode(raw.encode("a purple triangle, ünïcode!").ids) == "a purple triangle, ünïcode!"  # byte-level
    with pytest.raises(FileNotFoundError, match="normalize stage"):
        list(corpus_from_normalized(normalized / "nowhere"))


def test_mmeb_v2_pairs_give_the_tokenizer_text_and_the_warm_up_no_examples(tmp_path):
    """V2 training pairs beside V1 records: their strings join the tokenizer's corpus without the video
    placeholder; the generative warm-up takes no example from them (no V1 text field), counted."""
    from tests.support.v2_train import build_v2_train
    from trainer.backbone.pretrain import load_examples
    from trainer.backbone.tokenizer import corpus_from_normalized

    train_dir, store = build_v2_train(tmp_path, rows=2)
    texts = list(corpus_from_normalized(train_dir))
    assert "Describe the video." in texts and "the answer is 1" in texts
    assert not any("<|video_1|>" in t or "<|image_1|>" in t for t in texts)
    examples, _ = load_examples(train_dir, store)
    assert [e.answer for e in examples] == ["caption 0", "caption 1"]  # the V1 dataset's only


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "paligemma"])  # PaliGemma's prompt ends after the text
def test_pretrain_examples_and_labels(normalized, family):
    from trainer.backbone.pretrain import batch_with_labels, load_examples

    examples, images = load_examples(normalized / "train", normalized / "images")
    # 16 cls (image -> colour) + 16 t2i (image -> caption); i2i and the text-only record give none
    assert len(examples) == 32 and set(images) == {e.image_sha for e in examples}
    answers = {e.answer for e in examples}
    assert {"red", "a blue square."} <= answers
    backbone = build_tiny(family, tokenizer=train_family_tokenizer(
        family, [e.answer for e in examples] * 5 + ["Represent the given image"] * 5))
    collate = Collator(backbone, max_text_tokens=64)
    batch, unlabelled = batch_with_labels(collate, examples[:4], images)
    tok = backbone.processor.tokenizer
    assert unlabelled == 0
    for row, ex in enumerate(examples[:4]):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert tok.decode(labelled) == ex.answer + tok.eos_token  # labels = answer + eos, nothing else
    image_id = tok.convert_tokens_to_ids(backbone.image_token)
    assert not (batch["labels"] == image_id).any()
    if family == "paligemma":  # the answer onward is the causal suffix, the prompt the prefix
        for row in range(4):
            first = int((batch["labels"][row] != -100).nonzero()[0])
            attended = batch["attention_mask"][row].nonzero().squeeze(1)
            assert batch["token_type_ids"][row, attended[attended >= first]].eq(1).all()
            assert batch["token_type_ids"][row, attended[attended < first]].eq(0).all()
        # so the answer is not visible to the position that learns to predict its first token
        ex = examples[0]
        pair, _ = batch_with_labels(collate, [ex, dataclasses.replace(ex, answer="blue")], images)
        first = [int((pair["labels"][r] != -100).nonzero()[0]) for r in range(2)]
        assert first[0] == first[1]
        labels = pair.pop("labels")
        pair.pop("has_image")
        with torch.no_grad():
            logits = backbone.model(**pair).logits
        assert not torch.equal(labels[0], labels[1])
        torch.testing.assert_close(logits[0, first[0] - 1], logits[1, first[1] - 1], atol=1e-5, rtol=1e-5)
    # a prompt ending in a word (MSCOCO grounding's) gets a newline before the answer, not glued on
    ex = examples[0]
    glued = dataclasses.replace(ex, side=dict(ex.side, raw=ex.side["raw"].rstrip() + " of the object"))
    one, unlabelled = batch_with_labels(collate, [glued], images)
    text = tok.decode(one["input_ids"][0][one["attention_mask"][0].bool()])
    assert unlabelled == 0 and "of the object\n" + ex.answer + tok.eos_token in text
    # an answer cut by truncation is not trained on, and is counted
    _, unlabelled = batch_with_labels(Collator(backbone, max_text_tokens=3), examples[16:18], images)
    assert unlabelled == 2


def test_per_example_loss_is_the_mean_of_row_losses(normalized):
    from trainer.backbone.pretrain import batch_with_labels, load_examples, per_example_loss

    examples, images = load_examples(normalized / "train", normalized / "images")
    backbone = build_tiny("qwen2_vl")
    collate = Collator(backbone, max_text_tokens=64)
    chosen = [examples[0], examples[20]]  # a one-word label and a caption: different answer lengths
    batch, _ = batch_with_labels(collate, chosen, images)
    assert len(set((batch["labels"] != -100).sum(dim=1).tolist())) == 2
    with torch.no_grad():
        mixed = per_example_loss(backbone.model, {k: v for k, v in batch.items() if k != "has_image"})
        rows = []
        for ex in chosen:  # HF's token-mean loss of a single row is that row's loss
            one, _ = batch_with_labels(collate, [ex], images)
            one.pop("has_image")
            rows.append(backbone.model(**one).loss)
    torch.testing.assert_close(mixed, torch.stack(rows).mean(), atol=1e-5, rtol=1e-5)


def test_pretrain_lowers_the_loss_deterministically(normalized):
    from trainer.backbone.pretrain import load_examples, pretrain

    examples, images = load_examples(normalized / "train", normalized / "images")
    raw = train_family_tokenizer("qwen2_vl", [e.answer for e in examples] * 5)
    runs = []
    for _ in range(2):
        backbone = build_tiny("qwen2_vl", tokenizer=raw, seed=1)
        summary = pretrain(backbone, examples, images, steps=25, batch_size=8, lr=3e-3, seed=1)
        runs.append((summary, backbone.model.state_dict()))
    (s1, w1), (s2, w2) = runs
    assert s1 == s2 and all(torch.equal(w1[k], w2[k]) for k in w1)  # deterministic for a seed
    assert s1["loss_last"] < 0.7 * s1["loss_first"]
    assert not backbone.model.training
    with pytest.raises(ValueError, match="needs a VLM"):
        pretrain(build_tiny("clip"), examples, images, steps=1, batch_size=2, lr=1e-3, seed=0)


def _folder_hashes(folder):
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_backbone_stage_tiny_is_byte_deterministic(normalized, tmp_path):
    from trainer.backbone.build import build as run

    params = section("backbone", name="tiny-qwen2-vl", revision="main", trust_remote_code=False, seed=0,
                     pretrain_steps=4, pretrain_batch_size=4, pretrain_lr=0.002, tiny_hidden_size=64,
                     tiny_image_size=32)
    kw = dict(train_dir=normalized / "train", images_dir=normalized / "images")
    run(params, out=tmp_path / "a" / "base", **kw)
    run(params, out=tmp_path / "b" / "base", **kw)
    assert _folder_hashes(tmp_path / "a" / "base") == _folder_hashes(tmp_path / "b" / "base")
    meta = json.loads((tmp_path / "a" / "base" / "backbone.json").read_text())
    assert meta["family"] == "qwen2_vl" and meta["info"]["pretrain"]["steps"] == 4
    assert meta["info"]["name"] == "tiny-qwen2-vl"
    loaded = load_backbone(str(tmp_path / "a" / "base"))
    assert loaded.model.config.text_config.hidden_size == 64
    run(replace(params, seed=1), out=tmp_path / "c" / "base", **kw)
    assert _folder_hashes(tmp_path / "c" / "base")["model.safetensors"] != \
        _folder_hashes(tmp_path / "a" / "base")["model.safetensors"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["base"]  # no temporary left


def test_backbone_stage_other_sources(normalized, tmp_path):
    from trainer.backbone.build import build as run
    from trainer.backbone.build import tiny_family

    assert tiny_family("tiny-qwen2-5-vl") == "qwen2_5_vl" and tiny_family("Qwen/Qwen2-VL-2B-Instruct") is None
    with pytest.raises(ValueError, match="unknown tiny backbone"):
        tiny_family("tiny-phi3-v")
    kw = dict(train_dir=normalized / "train", images_dir=normalized / "images")
    # a dual encoder is built but not pretrained
    run(section("backbone", name="tiny-siglip", seed=0, pretrain_steps=5, tiny_hidden_size=64, tiny_image_size=32),
        out=tmp_path / "siglip", **kw)
    assert json.loads((tmp_path / "siglip" / "backbone.json").read_text())["info"]["pretrain"] is None
    # a model folder in the Hub layout, by path (the Hub id path is tested above through the cache)
    _hub_layout(build_tiny("smolvlm"), tmp_path / "hub-smolvlm")
    run(section("backbone", name=str(tmp_path / "hub-smolvlm"), revision="main", seed=0), out=tmp_path / "base", **kw)
    meta = json.loads((tmp_path / "base" / "backbone.json").read_text())
    assert (meta["family"], meta["image_token"], meta["info"]["model_type"]) == ("smolvlm", "<image>", "smolvlm")
