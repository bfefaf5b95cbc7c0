"""Prompt rendering (VLM2Vec strings) and collation (truncation never cuts image tokens)."""

import pickle

import pytest
import torch
from PIL import Image

from tests.support.sides import side
from trainer.backbone.families import build_tiny
from trainer.model.inputs import Collator, render_text, resize_to_max_pixels

# real MMEB strings, verbatim from MMEB-train / MMEB-eval rows
IMAGENET_QRY = "<|image_1|>\nRepresent the given image for classification\n"
OKVQA_QRY = "<|image_1|>\nRepresent the given image with the following question: What sport can you use this for?\n"
COCO_T2I_QRY = "Find me an everyday image that matches the given caption: A man with a red helmet on a small moped on a dirt road.\n"
WEBQA_QRY = ("<|image_1|>\nFind a Wikipedia image that answers this question: Does a Minnetonka Rhododendron "
             "flower have petals in a cup shape?\n")


@pytest.fixture(scope="module")
def llava():
    return build_tiny("llava", image_size=32)


@pytest.fixture(scope="module")
def clip():
    return build_tiny("clip", image_size=32)


def test_render_vlm2vec_strings(qwen, llava):
    assert render_text(side(IMAGENET_QRY), qwen, has_image=True) == \
        "<|image_pad|>\nRepresent the given image for classification\n"
    assert render_text(side(OKVQA_QRY), llava, has_image=True) == OKVQA_QRY.replace("<|image_1|>", "<image>")
    assert render_text(side(COCO_T2I_QRY), qwen, has_image=False) == COCO_T2I_QRY
    tgt = "<|image_1|>\nRepresent the given image.\n"
    assert render_text(side(tgt), qwen, has_image=True) == "<|image_pad|>\nRepresent the given image.\n"


def test_webqa_quirk_removes_token_without_image(qwen, llava):
    out = render_text(side(WEBQA_QRY), qwen, has_image=False)
    assert out == WEBQA_QRY.replace("<|image_1|>\n", "")
    assert "<|image_pad|>" not in out and "<image>" not in render_text(side(WEBQA_QRY), llava, has_image=False)


def test_render_without_instructions(qwen):
    s = side(OKVQA_QRY, "Represent the given image with the following question: ", "What sport can you use this for?")
    assert render_text(s, qwen, instructions=False, has_image=True) == \
        "<|image_pad|>\nWhat sport can you use this for?\n"
    s = side(IMAGENET_QRY, "Represent the given image for classification", "")
    assert render_text(s, qwen, instructions=False, has_image=True) == "<|image_pad|>\n"


def test_render_dual_encoder_has_no_image_token(clip):
    s = side(OKVQA_QRY, "Represent the given image with the following question: ", "What sport can you use this for?")
    assert render_text(s, clip, has_image=True) == \
        "Represent the given image with the following question: What sport can you use this for?"
    assert render_text(s, clip, instructions=False, has_image=True) == "What sport can you use this for?"


def test_an_empty_side_without_image_is_refused_by_every_kind(qwen, clip):
    """A WebQA-style side that is only the placeholder, without its image: nothing to embed. Dual
    encoders gave it an all-zero vector; now both kinds refuse it (and the loader quarantines it)."""
    for backbone in (qwen, clip):
        with pytest.raises(ValueError, match="empty text"):
            render_text(side("<|image_1|>\n"), backbone, has_image=False)
        with pytest.raises(ValueError, match="empty text"):
            Collator(backbone).validate([side("<|image_1|>\n")], [None])


def test_transparent_images_go_onto_white_as_in_the_shards(qwen):
    """RGBA/LA/P with transparency: composited on white, as the normalize stage stores training images
    and transformers' processors do, not shown on the hidden colour (usually black)."""
    from pipelines.images import to_rgb

    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (8, 8, 24, 24))
    assert resize_to_max_pixels(rgba, None).getpixel((0, 0)) == (255, 255, 255)
    collator = Collator(qwen)
    got = collator([side("<|image_1|>\n")], [rgba])["pixel_values"]
    want = collator([side("<|image_1|>\n")], [to_rgb(rgba)])["pixel_values"]
    assert torch.equal(got, want)


def test_render_errors_and_missing_token(qwen):
    with pytest.raises(ValueError, match="2 image placeholders"):
        render_text(side("<|image_1|> and <|image_1|>\n"), qwen, has_image=True)
    with pytest.raises(ValueError, match="empty text"):
        render_text(side(""), qwen, has_image=False)
    assert render_text(side("caption\n"), qwen, has_image=True) == "<|image_pad|>\ncaption\n"


def test_a_source_text_holding_the_backbones_image_token_is_refused(qwen, llava):
    """The processor would expand the literal token and fail on the missing image (or pair it with
    another side's); refused here, so that the loader quarantines the record."""
    for backbone, token in ((qwen, "<|image_pad|>"), (llava, "<image>")):
        for has_image in (False, True):
            with pytest.raises(ValueError, match="image token"):
                render_text(side(f"<|image_1|>\na sign reading {token}\n"), backbone, has_image=has_image)
            with pytest.raises(ValueError, match="image token"):
                render_text(side(f"a sign reading {token}\n", text=f"a sign reading {token}"), backbone,
                            has_image=has_image, instructions=False)


def _image_tokens(backbone, batch):
    image_id = backbone.processor.tokenizer.convert_tokens_to_ids(backbone.image_token)
    return (batch["input_ids"] == image_id).sum(dim=1)


def test_truncation_keeps_image_tokens(qwen):
    long_text = "<|image_1|>\nRepresent the given image with the following question: " + \
        " ".join(f"word{i}" for i in range(400)) + "\n"
    image = Image.new("RGB", (32, 32), "green")
    full = Collator(qwen, max_text_tokens=4096)([side(long_text)], [image])
    short = Collator(qwen, max_text_tokens=16)([side(long_text)], [image])
    n_img = _image_tokens(qwen, full)
    assert n_img.item() == (32 // 16) ** 2  # patch 8, merge 2 -> 4 image tokens
    assert torch.equal(_image_tokens(qwen, short), n_img)  # image tokens intact
    text_tokens = short["input_ids"].shape[1] - n_img.item()
    assert text_tokens <= 16 < full["input_ids"].shape[1] - n_img.item()
    # the kept text is the beginning of the prompt
    tok = qwen.processor.tokenizer
    assert tok.decode(short["input_ids"][0]).startswith(tok.decode(full["input_ids"][0, :8]))


def test_truncation_keeps_a_late_image_token(llava):
    text = " ".join(f"w{i}" for i in range(200)) + " <|image_1|>\nend\n"
    collate = Collator(llava, max_text_tokens=10)
    rendered = collate.truncate(render_text(side(text), llava, has_image=True))
    assert rendered.count("<image>") == 1
    batch = collate([side(text)], [Image.new("RGB", (32, 32), "red")])  # processor does not fail
    assert _image_tokens(llava, batch).item() == (32 // 8) ** 2 + 1 - 1  # CLS dropped by "default" strategy
    assert batch["input_ids"].shape[1] <= 10 + (32 // 8) ** 2


def test_resize_to_max_pixels_keeps_aspect():
    im = Image.new("RGB", (400, 100), "blue")
    out = resize_to_max_pixels(im, 4096)
    assert out.width * out.height <= 4096
    assert abs(out.width / out.height - 4.0) < 0.15
    small = Image.new("L", (10, 10))
    assert resize_to_max_pixels(small, 4096).size == (10, 10) and resize_to_max_pixels(small, 4096).mode == "RGB"


def test_collator_mixed_batch_and_pickle(qwen):
    sides = [side(IMAGENET_QRY), side(COCO_T2I_QRY), side(OKVQA_QRY)]
    images = [Image.new("RGB", (200, 120), "red"), None, Image.new("RGB", (48, 48), "blue")]
    collate = Collator(qwen, max_text_tokens=64, image_max_pixels=1024)
    batch = collate(sides, images)
    assert batch["has_image"].tolist() == [True, False, True]
    assert batch["image_grid_thw"].shape[0] == 2
    n_img = _image_tokens(qwen, batch)
    assert n_img[1] == 0 and n_img[0] > 0 and n_img[2] > 0
    # image_max_pixels bounds the patches: <= 1024 px -> <= 4 merged tokens per image
    assert int(n_img.max()) <= 1024 // 16 ** 2
    clone = pickle.loads(pickle.dumps(collate))  # DataLoader workers get a copy
    again = clone(sides, images)
    assert batch.keys() == again.keys() and all(torch.equal(batch[k], again[k]) for k in batch)


def test_collator_errors(qwen):
    collate = Collator(qwen)
    with pytest.raises(ValueError, match="sides but"):
        collate([side(COCO_T2I_QRY)], [])
    with pytest.raises(ValueError, match="empty batch"):
        collate([], [])
    with pytest.raises(ValueError, match="max_text_tokens"):
        Collator(qwen, max_text_tokens=0)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_to_multiple_of_rounds_lengths_up_and_keeps_the_embeddings(qwen, padding_side):
    """Padding up to a multiple (for compiled code and CUDA graphs, specialised per shape) adds masked
    positions on the tokenizer's side only: the same tokens, the same M-RoPE positions of the real
    tokens, the same embeddings."""
    from trainer.model.embedder import Embedder

    sides = [side(IMAGENET_QRY), side(COCO_T2I_QRY), side(OKVQA_QRY)]
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (40, 56, 3), generator=g, dtype=torch.uint8).numpy()), None,
              Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy())]
    tok = qwen.processor.tokenizer
    saved = tok.padding_side
    tok.padding_side = padding_side
    try:
        plain = Collator(qwen, max_text_tokens=64, image_max_pixels=1024)(sides, images)
        multiple = next(k for k in (16, 13, 11) if plain["input_ids"].shape[1] % k)  # one that pads something
        padded = Collator(qwen, max_text_tokens=64, image_max_pixels=1024, pad_to_multiple_of=multiple)(sides, images)
        texts_only = Collator(qwen, max_text_tokens=64, pad_to_multiple_of=multiple)([side(COCO_T2I_QRY)] * 2,
                                                                                     [None, None])
        embedder = Embedder(qwen).eval()
        with torch.no_grad():
            e_plain, e_padded = embedder(plain), embedder(padded)
    finally:
        tok.padding_side = saved
    length, longer = plain["input_ids"].shape[1], padded["input_ids"].shape[1]
    assert longer % multiple == 0 and length < longer < length + multiple
    assert texts_only["input_ids"].shape[1] % multiple == 0
    real = (slice(longer - length, None) if padding_side == "left" else slice(0, length))
    pad = (slice(0, longer - length) if padding_side == "left" else slice(length, None))
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert torch.equal(padded[key][:, real], plain[key]), key
    assert torch.equal(padded["position_ids"][:, :, real], plain["position_ids"])
    assert not padded["attention_mask"][:, pad].any()
    assert (padded["input_ids"][:, pad] == tok.pad_token_id).all()
    for key in ("pixel_values", "image_grid_thw", "has_image"):
        assert torch.equal(padded[key], plain[key]), key
    torch.testing.assert_close(e_padded, e_plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "64"])
def test_pad_to_multiple_of_must_be_a_positive_integer(qwen, bad):
    with pytest.raises(ValueError, match="pad_to_multiple_of must be an integer >= 1"):
        Collator(qwen, pad_to_multiple_of=bad)
