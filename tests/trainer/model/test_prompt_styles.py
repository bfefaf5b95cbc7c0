"""trainer.model.prompt_styles: Qwen3-VL-Embedding's chat input (`prompt: qwen3-vl-embedding`)."""

import pytest
import torch

from pipelines import v2_inputs
from pipelines.params import ParamsError, parse
from pipelines.v2_inputs import PLACEHOLDERS
from tests.support.images import noise
from tests.support.params import REPO
from tests.support.sides import side
from trainer.backbone.families import build_tiny
from trainer.model.embedder import Embedder
from trainer.model.inputs import Collator
from trainer.model.prompt_styles import (DEFAULT_INSTRUCTION, chat_text, side_parts, split_v2,
                                         system_instruction)

STYLE = "qwen3-vl-embedding"
QUERY = side("<|image_1|>\nRepresent the given image with the following question: what colour is it?\n",
             instruction="Represent the given image with the following question: ", text="what colour is it?")


@pytest.fixture(scope="module")
def q3():
    return build_tiny("qwen3_vl")


def decoded(collator, batch, row=0):
    return collator.tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])


def test_a_query_is_the_embedders_chat_string(q3):
    """Hand-derived from Qwen3VLEmbedder.format_model_input and Qwen3-VL's chat template: the
    instruction is the system message, the image then the text the user message, then the
    generation prompt; the image's tokens sit between Qwen's vision markers."""
    collator = Collator(q3, max_text_tokens=64, prompt=STYLE)
    batch = collator([QUERY], [noise(32, 32, seed=0)])
    image = "<|image_pad|>" * int(batch["image_grid_thw"][0].prod() // 4)
    assert decoded(collator, batch) == (
        "<|im_start|>system\nRepresent the given image with the following question:<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|>{image}<|vision_end|>what colour is it?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_instructions_punctuation_candidates_and_empty_sides():
    assert system_instruction("Find a video that includes the following described scenes:") == \
        "Find a video that includes the following described scenes:"
    assert system_instruction("Represent the given image for classification") == \
        "Represent the given image for classification."
    for candidate in ("", "Represent the given image.", v2_inputs.VIDEO_TARGET, v2_inputs.VISDOC_TARGET):
        assert system_instruction(candidate) == DEFAULT_INSTRUCTION  # as its evaluation gives candidates none
    assert chat_text("", "", image=False, video_token=None).count("user\nNULL<|im_end|>") == 1
    assert "user\n<vid>a<|im_end|>" in chat_text("", "a", image=False, video_token="<vid>")


@pytest.mark.parametrize("raw, want", [
    (v2_inputs.video_ret_query("MSR-VTT", "a man cooks", PLACEHOLDERS),
     ("Find a video that contains the following visual content:", "a man cooks")),
    (v2_inputs.video_cls_query("Breakfast", PLACEHOLDERS),
     ("Recognize the breakfast type that the person is cooking in the video.", "")),
    (v2_inputs.visdoc_candidate("vidore", PLACEHOLDERS), (v2_inputs.VISDOC_TARGET, "")),
    (v2_inputs.visdoc_query("vidore", "revenue in 2019", PLACEHOLDERS, prompt="launch"), ("", "revenue in 2019")),
    (v2_inputs.image_query("image_qa", "<|image_1|> Represent the given image with the following question:",
                           "what is it?", PLACEHOLDERS),
     ("Represent the given image with the following question:", "what is it?")),
    (v2_inputs.nextqa("why?", ["a", "b"], 0, PLACEHOLDERS).query,
     (v2_inputs.QA_PROMPT.strip(), "why?\nOptions:\n(A) a\n(B) b")),
    ("a caption that starts with no instruction", ("", "a caption that starts with no instruction")),
    ("Find a video thatcontains no space", ("", "Find a video thatcontains no space")),
])
def test_an_mmeb_v2_side_is_split_at_its_known_instruction(raw, want):
    assert split_v2(raw) == want
    assert side_parts({"raw": raw, "text": "ignored: a V2 item's text is its raw without placeholders"}) == want


def test_a_v1_side_keeps_its_own_split():
    assert side_parts(QUERY) == ("Represent the given image with the following question:", "what colour is it?")


def test_truncation_cuts_the_text_alone_and_pooling_takes_the_generation_prompt(q3):
    long = side("Find me an everyday image that matches the given caption: " + "red " * 50,
                instruction="Find me an everyday image that matches the given caption: ", text="red " * 50)
    collator = Collator(q3, max_text_tokens=3, prompt=STYLE)
    text = decoded(collator, collator([long], [None]))
    assert collator.truncated == 1
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n") and text.count("red") <= 3
    assert "Find me an everyday image that matches the given caption:" in text  # the instruction is not cut


def test_videos_get_one_pair_of_markers_or_qwen3s_timestamped_patches():
    video = side("<|video_1|> Recognize the category of the video content.",
                 instruction="Recognize the category of the video content.")
    frames = [noise(32, 32, seed=i) for i in range(4)]
    for family, runs in (("qwen2_vl", 1), ("qwen3_vl", 2)):
        collator = Collator(build_tiny(family), max_text_tokens=64, prompt=STYLE)
        text = decoded(collator, collator([video], [frames]))
        assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == runs, (family, text)
        assert ("seconds>" in text) == (family == "qwen3_vl")
        assert text.startswith("<|im_start|>system\nRecognize the category of the video content.<|im_end|>")


def test_a_mixed_batch_embeds_each_row_as_alone_and_differs_from_vlm2vecs_string(q3):
    sides = [QUERY, side("blue\n", text="blue"), side("<|video_1|> Describe.", instruction="Describe.")]
    images = [noise(32, 48, seed=1), None, [noise(32, 32, seed=i) for i in range(2)]]
    collator = Collator(q3, max_text_tokens=64, prompt=STYLE)
    embedder = Embedder(q3).eval()
    with torch.no_grad():
        batched = embedder(collator(sides, images))
        alone = torch.cat([embedder(collator([s], [i])) for s, i in zip(sides, images)])
        plain = embedder(Collator(q3, max_text_tokens=64)(sides, images))
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=2e-5)
    assert (batched - plain).abs().max() > 1e-3


def test_refusals():
    with pytest.raises(ValueError, match="needs a Qwen2-VL"):
        Collator(build_tiny("llava"), prompt=STYLE)
    with pytest.raises(ValueError, match="stray_image_token keep"):
        Collator(build_tiny("qwen2_vl"), prompt=STYLE, stray_image_token="keep")
    with pytest.raises(ValueError, match="prompt must be one of"):
        Collator(build_tiny("qwen2_vl"), prompt="chatml")
    import yaml
    document = yaml.safe_load((REPO / "params.yaml").read_text())
    document["train"].update(prompt=STYLE, stray_image_token="keep")
    with pytest.raises(ParamsError, match="stray_image_token keep needs prompt vlm2vec"):
        parse(document)
    document["train"].update(stray_image_token="strip")
    assert parse(document).eval.prompt == STYLE  # eval follows train
