"""Video rows in the Collator: Qwen2-VL / Qwen2.5-VL get `videos=` tensors, their video token, video
token types and M-RoPE positions; other families refuse them."""

import pytest
import torch

from tests.support.images import noise
from tests.support.sides import side
from trainer.model.embedder import Embedder, unwrap
from trainer.model.inputs import Collator, render_text
from trainer.model.positions import mrope_position_ids, sequential_position_ids

VIDEO = side("<|video_1|> Recognize the category of the video content.")
FRAMES = [noise(48, 32, seed=i) for i in range(5)]  # odd: the last frame is repeated
SIDES = [side("a caption\n"), VIDEO, side("<|image_1|>\nWhat is in the photo?\n"),
         side("<|video_1|> Understand the content of the provided video.")]
IMAGES = [None, FRAMES, noise(32, 48, seed=9), [noise(32, 32, seed=20 + i) for i in range(8)]]


def model_positions(backbone, batch):
    kwargs = {k: batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in batch}
    inner = unwrap(backbone.model).model
    return inner.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                attention_mask=batch["attention_mask"], **kwargs)[0]


def embed(backbone, collator, sides, images):
    with torch.no_grad():
        return Embedder(backbone).eval()(collator(sides, images))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_mixed_batch_runs_with_the_models_own_positions(qwen_backbone, padding_side):
    qwen_backbone.processor.tokenizer.padding_side = padding_side
    try:
        collator = Collator(qwen_backbone, max_text_tokens=64)
        batch = collator(SIDES, IMAGES)
        plain = Collator(qwen_backbone, max_text_tokens=64, mrope_positions=False)(SIDES, IMAGES)
    finally:
        qwen_backbone.processor.tokenizer.padding_side = "right"
    video_id = collator.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    grids = batch["video_grid_thw"].tolist()
    assert grids == [[3, 2, 4], [4, 4, 4]]  # 5 frames padded to 6; 48 x 32 px capped at 32 x 32 px: 32 x 16
    assert batch["pixel_values_videos"].shape[0] == 3 * 2 * 4 + 4 * 4 * 4
    counts = (batch["input_ids"] == video_id).sum(1).tolist()
    assert counts == [0, 3 * 2 * 4 // 4, 0, 4 * 4 * 4 // 4]
    assert torch.equal(batch["mm_token_type_ids"] == 2, batch["input_ids"] == video_id)
    assert ("second_per_grid_ts" in batch) == (qwen_backbone.family == "qwen2_5_vl")
    mask = batch["attention_mask"].bool()
    assert torch.equal(batch["position_ids"][:, mask], model_positions(qwen_backbone, batch)[:, mask])
    with torch.no_grad():
        embedder = Embedder(qwen_backbone).eval()
        assert torch.equal(embedder(batch), embedder(plain))  # the model's positions are the same integers


def test_a_video_row_embeds_the_same_alone_as_in_a_batch(qwen_backbone):
    collator = Collator(qwen_backbone, max_text_tokens=64)
    batched = embed(qwen_backbone, collator, SIDES, IMAGES)
    for i in (1, 3):
        alone = embed(qwen_backbone, collator, [SIDES[i]], [IMAGES[i]])
        torch.testing.assert_close(batched[i], alone[0], rtol=0, atol=1e-5)


def test_a_video_is_not_the_mean_of_its_frames(qwen_backbone):
    collator = Collator(qwen_backbone, max_text_tokens=64)
    video = embed(qwen_backbone, collator, [VIDEO], [FRAMES])[0]
    as_image = side(VIDEO["raw"].replace("<|video_1|>", "<|image_1|>"))
    frames = embed(qwen_backbone, collator, [as_image] * len(FRAMES), FRAMES)
    mean = torch.nn.functional.normalize(frames.mean(0), dim=0)
    assert (video - mean).abs().max() > 1e-3


def test_sequential_positions_count_video_tokens_as_text(qwen):
    batch = Collator(qwen, max_text_tokens=64, positions="sequential")(SIDES[:2], IMAGES[:2])
    assert torch.equal(batch["position_ids"], sequential_position_ids(batch["attention_mask"]))
    row = batch["position_ids"][0, 1][batch["attention_mask"][1].bool()]
    assert row.tolist() == list(range(len(row)))


def test_hand_derived_video_positions():
    """text, a video of grid (2, 4, 4) at merge 2 (2 x 2 x 2 tokens), text."""
    ids = torch.tensor([[1] + [7] * 8 + [2]])
    mask = torch.ones_like(ids)
    grid = torch.tensor([[2, 4, 4]])
    pos = mrope_position_ids(ids, mask, None, 9, 2, video_token_id=7, video_grid_thw=grid)
    assert pos[:, 0].tolist() == [[0, 1, 1, 1, 1, 2, 2, 2, 2, 3],
                                  [0, 1, 1, 2, 2, 1, 1, 2, 2, 3],
                                  [0, 1, 2, 1, 2, 1, 2, 1, 2, 3]]
    # Qwen2.5-VL: temporal steps of tokens_per_second * second_per_grid_ts (2 * 1.0); text resumes at 1 + 2
    spaced = mrope_position_ids(ids, mask, None, 9, 2, video_token_id=7, video_grid_thw=grid, video_intervals=[2.0])
    assert spaced[0, 0].tolist() == [0, 1, 1, 1, 1, 3, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="video grids"):
        mrope_position_ids(ids, mask, None, 9, 2, video_token_id=7, video_grid_thw=torch.cat([grid, grid]))


def test_truncation_keeps_the_video_tokens(qwen):
    collator = Collator(qwen, max_text_tokens=3)
    text = render_text(VIDEO, collator.format, has_image=True, has_video=True)
    assert text.startswith("<|video_pad|> ") and collator.truncate(text).startswith("<|video_pad|> ")
    batch = collator([VIDEO], [FRAMES])
    video_id = collator.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((batch["input_ids"] == video_id).sum()) == 3 * 2 * 4 // 4 and batch["input_ids"].shape[1] <= 18 + 3


def test_refusals(qwen):
    from trainer.backbone.families import build_tiny

    with pytest.raises(ValueError, match="no frames"):
        Collator(qwen, max_text_tokens=64)([VIDEO], [[]])
    with pytest.raises(ValueError, match="takes no video input"):
        Collator(build_tiny("llava"), max_text_tokens=64)([VIDEO], [FRAMES])
    for raw in ("no placeholder", "<|video_1|> <|image_1|> both", "<|video_1|><|video_1|> two"):
        with pytest.raises(ValueError, match="exactly one"):
            Collator(qwen, max_text_tokens=64)([side(raw)], [FRAMES])
    assert render_text(VIDEO, Collator(qwen).format, instructions=False, has_image=True, has_video=True) \
        == "<|video_pad|>\n"


def test_a_several_image_family_takes_the_frames_as_images():
    """SmolVLM has no video input here (its video processor needs torchvision) but takes several
    images a row: a video row is its frames, one image token each, in one sequence."""
    from trainer.backbone.families import build_tiny

    smol = build_tiny("smolvlm")
    collator = Collator(smol, max_text_tokens=64)
    assert render_text(VIDEO, collator.format, has_image=True, has_video=3).startswith("<image><image><image> Recog")
    batch = collator(SIDES[:3], IMAGES[:3])
    image_id = collator.tokenizer.convert_tokens_to_ids("<image>")
    per_image = smol.processor.image_seq_len
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [0, 5 * per_image, per_image]
    with torch.no_grad():
        embedder = Embedder(smol).eval()
        batched = embedder(batch)
        alone = embedder(collator([VIDEO], [FRAMES]))
    torch.testing.assert_close(batched[1], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("frames", [1, 4, 5, 8])
def test_qwen3_vl_video_text_is_its_processors_own(frames):
    """Qwen3-VL's text for a video: one "<t seconds><|vision_start|>...<|vision_end|>" run per temporal
    patch, as transformers' `Qwen3VLProcessor.replace_video_token` writes it from the metadata
    qwen-vl-utils gives a list of frames (padded to an even count, indices 0..n-1 of the padded list,
    at its fps, 2); its video processor needs torchvision, so its method runs on the attributes it reads."""
    from types import SimpleNamespace

    from transformers import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    from trainer.backbone.families import build_tiny

    q3 = build_tiny("qwen3_vl")
    collator = Collator(q3, max_text_tokens=64)
    video_processor = collator._video[0]
    batch = collator([VIDEO], [[noise(48, 32, seed=i) for i in range(frames)]])
    grid = batch["video_grid_thw"][0]
    theirs = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                             vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                             video_token="<|video_pad|>")
    theirs._calculate_timestamps = lambda *a: Qwen3VLProcessor._calculate_timestamps(theirs, *a)
    padded = frames + frames % 2
    metadata = VideoMetadata(total_num_frames=padded, fps=video_processor.fps, frames_indices=list(range(padded)))
    want = Qwen3VLProcessor.replace_video_token(theirs, {"video_grid_thw": [grid], "video_metadata": [metadata]}, 0)
    got = collator.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert got == want + " Recognize the category of the video content."
    assert got.count("<|vision_start|>") == int(grid[0]) == -(-frames // 2)


def test_qwen3_vl_positions_give_each_temporal_patch_its_own_grid():
    """Qwen3-VL: each patch's tokens start at the text position before them, on all three axes
    (t = 0 for every patch), where Qwen2-VL counts t up across one run."""
    from trainer.backbone.families import build_tiny

    collator = Collator(build_tiny("qwen3_vl"), max_text_tokens=64)
    batch = collator([VIDEO], [FRAMES])
    video_id = collator.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    ids, pos = batch["input_ids"][0], batch["position_ids"][:, 0]
    runs = [i for i in range(len(ids)) if ids[i] == video_id and (i == 0 or ids[i - 1] != video_id)]
    assert len(runs) == 3  # 5 frames: 3 temporal patches
    for start in runs:
        assert pos[:, start].tolist() == [int(pos[0, start - 1]) + 1] * 3


@pytest.mark.parametrize("resize", ["collator", "processor"])
def test_video_max_pixels_caps_a_videos_frames_not_images(resize):
    """video_max_pixels (Qwen3-VL-Embedding's frames are at most 768 x 32 x 32) bounds the frames of
    a video whoever resizes them; images keep image_max_pixels; null leaves frames as images."""
    from trainer.backbone.families import build_tiny

    backbone = build_tiny("qwen3_vl", image_size=64)
    frames, image = [noise(64, 64, seed=i) for i in range(4)], noise(64, 64, seed=9)
    grids = {}
    for cap in (None, 1024):
        collator = Collator(backbone, max_text_tokens=64, image_max_pixels=4096, video_max_pixels=cap,
                            image_resize=resize)
        batch = collator([VIDEO, SIDES[2]], [frames, image])
        grids[cap] = (batch["video_grid_thw"].tolist(), batch["image_grid_thw"].tolist())
    assert grids[None] == ([[2, 8, 8]], [[1, 8, 8]])  # 64 x 64 frames at patch 8, as the image
    assert grids[1024] == ([[2, 4, 4]], [[1, 8, 8]])  # 32 x 32 frames; the image unchanged
    with pytest.raises(ValueError, match="video_max_pixels"):
        Collator(backbone, video_max_pixels=0)
