"""Parity with VLM2Vec's Qwen2-VL / Qwen2.5-VL inputs: the Collator's rendering settings against a
reference built here without the project's collation code.

The reference does what VLM2Vec's code does (src/model/processor.py `Qwen2_VL_process_fn`, its copy
of Qwen2-VL's `get_rope_index` and forward): MMEB's `<|image_1|>` replaced by a bare `<|image_pad|>`
in every row, with or without an image; one processor call per row; an image with a side under 28 px
resized to 56 x 56 first (V2), or every image squashed to a square (V1's `--image_resolution`); every
token, image tokens included, at its 1-D index on all three M-RoPE axes (no `<|vision_start|>`, so its
`get_rope_index` finds no image); image features put only into rows with pixels, so a text-only row's
`<|image_pad|>` stays a text token; the last token's hidden state, L2-normalised. Each row is run
alone through stock transformers with explicit `position_ids`.

The tiny backbones have their language model's query and key weights scaled up (`sharp`): a random
tiny model attends almost uniformly, so positions would barely move its embeddings (cosine 0.99999
between the schemes) and a wrong position could pass unseen; sharpened, they move them by 1-4 %, as
positions move a trained model's.
"""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.support.images import noise
from tests.support.sides import side
from trainer.model.embedder import Embedder, unwrap
from trainer.model.inputs import Collator

IMAGE_PAD = "<|image_pad|>"
# one row per MMEB meta-task, as MMEB writes them, with the WebQA stray placeholder on a text-only query
ROWS = [
    (side("<|image_1|>\nRepresent the given image for classification\n"), noise(64, 32, seed=0)),   # classification
    (side("<|image_1|>\nRepresent the given image with the following question: What colour is it?\n"),
     noise(20, 40, seed=1)),                                                                     # VQA, a 20 px side
    (side("<|image_1|>\nFind a Wikipedia image that answers this question: Who built it?\n"), None),  # WebQA query
    (side("Find me an everyday image that matches the given caption: a red circle.\n"), None),   # retrieval query
    (side("<|image_1|>\nSelect the portion of the image that isolates the object labeled as \"car\"\n"),
     noise(48, 48, seed=2)),                                                                     # grounding
]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def sharp(request):
    """A tiny Qwen2-VL / Qwen2.5-VL (32 px) whose attention depends on positions (module docstring)."""
    from trainer.backbone.families import build_tiny

    backbone = build_tiny(request.param, image_size=32)
    with torch.no_grad():
        for name, weight in backbone.model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(8)
    return backbone


VLM2VEC_V2 = dict(positions="sequential", stray_image_token="keep", image_resize="processor", small_image_side=28)
VLM2VEC_V1 = dict(positions="sequential", stray_image_token="keep", image_resize="processor", image_square=32)


def vlm2vec_image(image, *, square=None, small_side=None):
    if square:
        image = image.resize((square, square))  # V1: PIL's default (bicubic) squash
    if small_side and (image.size[0] < small_side or image.size[1] < small_side):
        image = image.resize((2 * small_side, 2 * small_side))  # V2: "rare case in MMEB eval"
    return image


def vlm2vec_inputs(backbone, raw, image, **resize):
    """One row as VLM2Vec feeds it: the stock processor (the tokenizer alone for a text-only row: the
    processors of VLM2Vec's transformers took a stray image token without images) and 1-D positions."""
    text = raw.replace("<|image_1|>", IMAGE_PAD)
    if image is None:
        enc = dict(backbone.processor.tokenizer([text], return_tensors="pt"))
    else:
        enc = dict(backbone.processor(text=[text], images=[vlm2vec_image(image, **resize)], return_tensors="pt"))
    length = enc["input_ids"].shape[1]
    enc["position_ids"] = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
    enc.pop("mm_token_type_ids", None)
    return enc


@torch.no_grad()
def vlm2vec_embedding(backbone, raw, image, **resize):
    enc = vlm2vec_inputs(backbone, raw, image, **resize)
    out = unwrap(backbone.model).model(**enc, use_cache=False, return_dict=True)
    return F.normalize(out.last_hidden_state[0, -1], dim=-1)


@torch.no_grad()
def project_embeddings(backbone, **rendering):
    batch = Collator(backbone, max_text_tokens=256, image_max_pixels=1024, **rendering)(
        [s for s, _ in ROWS], [im for _, im in ROWS])
    return batch, Embedder(backbone).eval()(batch)


@pytest.mark.parametrize("profile", ["v2", "v1"])
def test_vlm2vec_rendering_embeds_every_row_as_vlm2vec(sharp, profile):
    rendering, resize = ((VLM2VEC_V2, dict(small_side=28)) if profile == "v2"
                         else (VLM2VEC_V1, dict(square=32)))
    torch.manual_seed(0)
    batch, ours = project_embeddings(sharp, **rendering)
    assert batch["stray_token"].tolist() == [False, False, True, False, False]
    for row, (s, image) in enumerate(ROWS):
        want = vlm2vec_embedding(sharp, s["raw"], image, **resize)
        assert float(ours[row] @ want) >= 0.9999, (profile, row)


def test_the_defaults_differ_from_vlm2vec_where_expected(sharp):
    """grid positions move the image rows, stripping moves the WebQA row, text rows stay equal."""
    _, ours = project_embeddings(sharp, positions="grid", stray_image_token="strip")
    _, v2 = project_embeddings(sharp, **VLM2VEC_V2)
    cos = (ours * v2).sum(-1)
    assert float(cos[3]) >= 0.9999  # plain text: the same input
    assert all(float(cos[i]) < 0.999 for i in (0, 1, 2, 4)), cos.tolist()
    _, grid_v2 = project_embeddings(sharp, **dict(VLM2VEC_V2, positions="grid"))
    assert float((grid_v2[2] * v2[2]).sum()) >= 0.9999  # positions alone: text rows unmoved ...
    assert float((grid_v2[0] * v2[0]).sum()) < 0.999  # ... image rows moved


def test_the_fed_tensors_match_vlm2vecs_for_every_meta_task(sharp):
    """Text, token ids, attention mask, positions and pixel shapes, row by row, under V2 and V1."""
    for rendering, resize in ((VLM2VEC_V2, dict(small_side=28)), (VLM2VEC_V1, dict(square=32))):
        batch = Collator(sharp, image_max_pixels=1024, **rendering)([s for s, _ in ROWS],
                                                                              [im for _, im in ROWS])
        grids = iter(batch["image_grid_thw"].tolist())
        for row, (s, image) in enumerate(ROWS):
            want = vlm2vec_inputs(sharp, s["raw"], image, **resize)
            n = int(batch["attention_mask"][row].sum())
            assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()  # right pad
            assert batch["input_ids"][row, :n].tolist() == want["input_ids"][0].tolist()
            assert torch.equal(batch["position_ids"][:, row, :n], want["position_ids"][:, 0])
            if image is not None:
                assert next(grids) == want["image_grid_thw"][0].tolist()
        assert next(grids, None) is None


def test_positions_by_hand_for_text_an_image_and_text(sharp):
    """'a <|image_1|> b' with a 32 x 32 image: patch 8, merge 2, so 4 image tokens on a 2 x 2 grid."""
    row = [side("a <|image_1|> b")]
    image = [Image.new("RGB", (32, 32), "red")]
    ids = sharp.processor.tokenizer("a ")["input_ids"]
    k = len(ids)  # text tokens before the image
    grid = Collator(sharp, image_max_pixels=None, positions="grid")(row, image)
    seq = Collator(sharp, image_max_pixels=None, positions="sequential")(row, image)
    n = grid["input_ids"].shape[1]
    assert n == k + 4 + len(sharp.processor.tokenizer(" b")["input_ids"])
    after = list(range(k + 2, k + 2 + n - k - 4))  # text resumes at start + max(rows, columns) = k + 2
    assert grid["position_ids"][:, 0].tolist() == [
        list(range(k)) + [k, k, k, k] + after,            # temporal
        list(range(k)) + [k, k, k + 1, k + 1] + after,    # height
        list(range(k)) + [k, k + 1, k, k + 1] + after,    # width
    ]
    assert seq["position_ids"][:, 0].tolist() == [list(range(n))] * 3
    torch.manual_seed(0)
    embedder = Embedder(sharp).eval()
    with torch.no_grad():
        assert float((embedder(grid) * embedder(seq)).sum()) < 0.999  # the scheme moves the embedding


def test_sequential_positions_pad_with_one_and_cover_text_only_batches(qwen):
    rows = [side("a caption\n"), side("a much longer caption of several words\n")]
    batch = Collator(qwen, positions="sequential")(rows, [None, None])
    mask = batch["attention_mask"]
    assert batch["position_ids"].shape == (3,) + tuple(mask.shape)
    assert batch["position_ids"][0, 0].tolist() == [i if m else 1 for i, m in enumerate(mask[0].tolist())]


def test_resize_rules_are_applied_before_the_processor(qwen):
    tall = noise(20, 40, seed=3)
    rows = [side("<|image_1|>\nRepresent the given image\n")]
    plain = Collator(qwen, image_max_pixels=None)(rows, [tall])["image_grid_thw"].tolist()
    small = Collator(qwen, image_max_pixels=None, small_image_side=28)(rows, [tall])["image_grid_thw"].tolist()
    square = Collator(qwen, image_max_pixels=None, image_square=16)(rows, [tall])["image_grid_thw"].tolist()
    assert small == [[1, 4, 4]]  # 56 x 56, then the processor's 1024-pixel cap: 32 x 32
    assert square == [[1, 2, 2]]  # 16 x 16
    assert plain not in (small, square)
    with pytest.raises(ValueError, match="positions"):
        Collator(qwen, positions="mrope")
    with pytest.raises(ValueError, match="stray_image_token"):
        Collator(qwen, stray_image_token="drop")


def test_processor_resizing_gives_vlm2vecs_sizes_where_the_collators_differ(qwen):
    """At a 1024-pixel cap (the tiny processor's own max, VLM2Vec's `resize_max_pixels`), a 100 x 70
    image: the processor alone resizes it from the original, as VLM2Vec; the collator's pre-scale
    (aspect kept) lands on another grid once the processor snaps it."""
    image = noise(100, 70, seed=4)
    rows = [side("<|image_1|>\nRepresent the given image\n")]
    want = qwen.processor(text=["<|image_pad|>"], images=[image], return_tensors="pt")["image_grid_thw"].tolist()
    by_processor = Collator(qwen, image_max_pixels=1024, image_resize="processor")(rows, [image])
    by_collator = Collator(qwen, image_max_pixels=1024, image_resize="collator")(rows, [image])
    assert by_processor["image_grid_thw"].tolist() == want
    assert by_collator["image_grid_thw"].tolist() != want


@pytest.mark.parametrize("family", ["llava", "llava_next", "idefics3", "smolvlm", "paligemma"])
def test_a_kept_stray_token_is_a_text_token_in_every_family(family):
    """The other families' positions are 1-D already; VLM2Vec's stray-token rule holds for them too:
    the backbone's image token stays in the text-only row's ids and that row embeds as it does alone."""
    from trainer.backbone.families import build_tiny

    backbone = build_tiny(family)
    rows = [ROWS[0][0], ROWS[2][0], ROWS[3][0]]  # an image row, the WebQA row, a text row
    images = [Image.new("RGB", (32, 32), "red"), None, None]
    collator = Collator(backbone, stray_image_token="keep")
    batch = collator(rows, images)
    token = backbone.processor.tokenizer.convert_tokens_to_ids(backbone.image_token)
    assert batch["stray_token"].tolist() == [False, True, False]
    assert int((batch["input_ids"][1] == token).sum()) == 1
    torch.manual_seed(0)
    embedder = Embedder(backbone).eval()
    with torch.no_grad():
        together, alone = embedder(batch), embedder(collator([rows[1]], [None]))
    assert float(together[1] @ alone[0]) >= 0.9999
