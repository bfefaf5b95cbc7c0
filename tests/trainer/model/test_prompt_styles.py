"""trainer.model.prompt_styles: Qwen3-VL-Embedding's chat input (`prompt: qwen3-vl-embedding`)."""

import pytest
import torch

from pipelines import v2_inputs, v2_train
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
V2_TRAIN = v2_train.SETS
QUERY = side("<|image_1|>\nRepresent the given image with the following question: what colour is it?\n",
             instruction="Represent the given image with the following question: ", text="what colour is it?")


@pytest.fixture(scope="module")
def q3():
    return build_tiny("qwen3_vl")


def image_run(batch, row=0):
    """The marked image tokens of `batch`'s `row`-th image (merge 2 x 2)."""
    return "<|vision_start|>" + "<|image_pad|>" * int(batch["image_grid_thw"][row].prod() // 4) + "<|vision_end|>"


def decoded(collator, batch, row=0):
    return collator.tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()])


def test_a_query_is_the_embedders_chat_string(q3):
    """Hand-derived from Qwen3VLEmbedder.format_model_input and Qwen3-VL's chat template: the
    instruction is the system message, the image then the text the user message, then the
    generation prompt; the image's tokens sit between Qwen's vision markers."""
    collator = Collator(q3, max_text_tokens=64, prompt=STYLE)
    batch = collator([QUERY], [noise(32, 32, seed=0)])
    assert decoded(collator, batch) == (
        "<|im_start|>system\nRepresent the given image with the following question:<|im_end|>\n"
        f"<|im_start|>user\n{image_run(batch)}what colour is it?<|im_end|>\n"
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
    (v2_train.llavahound_pair(V2_TRAIN["video_qa_240k"], "<video>\nWhat is he holding?", "a cup")[0],
     (v2_train.QA_QUERY_PROMPT.strip(), "What is he holding?")),
    (v2_train.llavahound_pair(V2_TRAIN["video_caption_300k-video"], "<video>\nDescribe it.", "a man runs")[1],
     (v2_train.VRET_TARGET_PROMPT.strip(), "")),
    (v2_train.visrag_query("what grows?", "ChartQA"), (v2_train.QUERY_PROMPTS["ChartQA"].strip(), "what grows?")),
    (v2_train.visrag_target("Textbooks"), (v2_train.TARGET_PROMPTS["Textbooks"], "")),
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


# (VLM2Vec's string for GME, from pipelines.v2_inputs with its GME tokens; the side has a picture)
GME_CASES = [
    (lambda t: v2_inputs.image_query("image_cls", "<|image_1|> Represent the given image for classification", "", t),
     True),
    (lambda t: v2_inputs.image_query("image_cls", "<|image_1|> Represent the given news image with the following "
                                     "caption for domain classification:", "floods in the north", t), True),
    (lambda t: v2_inputs.image_query("image_i2t", "<|image_1|> Find an image caption describing the given everyday "
                                     "image.", "", t), True),
    (lambda t: v2_inputs.image_query("image_qa", "<|image_1|> Represent the given image with the following "
                                     "question:", "what is it?", t), True),
    (lambda t: v2_inputs.image_query("image_i2i_vg", "<|image_1|> Select the portion of the image that isolates "
                                     "the object labeled as", "dog", t), True),
    (lambda t: v2_inputs.image_query("image_t2i", "Find me an everyday image that matches the given caption:",
                                     "a dog", t), False),
    (lambda t: v2_inputs.image_query("image_t2i", "<|image_1|>\nFind a Wikipedia image that answers this question:",
                                     "who?", t, dataset="WebQA"), False),
    (lambda t: v2_inputs.image_candidates("image_t2i", "<|image_1|> Represent the given image.", ["a dog"], t)[0],
     True),
    (lambda t: v2_inputs.image_candidates("image_t2i", "<|image_1|> Represent the given Wikipedia image with "
                                          "related text information:", ["Paris. A city."], t)[0], True),
    (lambda t: v2_inputs.image_candidates("image_t2i", "<|image_1|> Represent the given image.", [""], t)[0], True),
    (lambda t: v2_inputs.image_candidates("image_i2i_vg", "<|image_1|> Represent the given cropped image of the "
                                          "object", [""], t)[0], True),
    (lambda t: v2_inputs.video_cls_query("Kinetics-700", t), True),
    (lambda t: v2_inputs.video_cls_query("Breakfast", t), True),
    (lambda t: v2_inputs.video_ret_query("DiDeMo", "a man opens a door", t), False),
    (lambda t: v2_inputs.video_candidate(t), True),
    (lambda t: v2_inputs.video_candidate(t, clip=True), True),
    (lambda t: v2_inputs.mret_query("the dog jumps", t), True),
    (lambda t: v2_inputs.momentseeker_query("a jump", "q.mp4", t)[0], True),
    (lambda t: v2_inputs.momentseeker_query("a jump", "q.jpg", t)[0], True),
    (lambda t: v2_inputs.momentseeker_query("a jump", "", t)[0], False),
    (lambda t: v2_inputs.videomme("Why?", ["A. yes.", "B. no."], "A", t).query, True),
    (lambda t: v2_inputs.nextqa("why?", ["a", "b"], 0, t).query, True),
    (lambda t: v2_inputs.activitynetqa("is it red", "yes", t).query, True),
    (lambda t: v2_inputs.visdoc_query("vidore", "revenue in 2019", t), False),
    (lambda t: v2_inputs.visdoc_candidate("vidore", t), True),
    (lambda t: v2_inputs.visdoc_candidate("vidore", t, prompt="launch"), True),
    (lambda t: v2_inputs.visdoc_candidate("visrag", t, prompt="launch"), True),
]


@pytest.mark.parametrize("case", range(len(GME_CASES)))
def test_gme_text_is_vlm2vecs_gme_string_of_every_loader_family(case):
    from trainer.model.prompt_styles import gme_text

    build, picture = GME_CASES[case]
    stored = build(PLACEHOLDERS)
    ours = gme_text(stored, picture).replace("<|image_1|>", "<|image_pad|>").replace("<|video_1|>", "<|video_pad|>")
    assert ours == build(v2_inputs.GME)


def test_a_gme_side_is_vlm2vecs_template_with_the_middle_frame():
    collator = Collator(build_tiny("qwen2_vl"), max_text_tokens=64, prompt="gme", stray_image_token="keep")
    stored = v2_inputs.video_cls_query("Kinetics-700", PLACEHOLDERS)
    frames = [noise(32, 32, seed=i) for i in range(5)]
    batch = collator([{"raw": stored}], [frames])
    alone = collator([{"raw": stored}], [frames[2]])
    assert "pixel_values_videos" not in batch and torch.equal(batch["pixel_values"], alone["pixel_values"])
    assert decoded(collator, batch) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{image_run(batch)}Recognize the category of the video content. <|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>")


def test_gme_keeps_vlm2vecs_stray_tokens_as_text_and_embeds_rows_as_alone():
    """A WebQA-style text query keeps its image token as text (VLM2Vec's GME path: the loader wrote it,
    `encode_input` drops it only before a newline) and a video QA query its video token beside the
    middle frame; each row of a mixed batch embeds as it does alone."""
    backbone = build_tiny("qwen2_vl")
    collator = Collator(backbone, max_text_tokens=64, prompt="gme", stray_image_token="keep")
    webqa = v2_inputs.image_query("image_t2i", "<|image_1|> Find a Wikipedia image that answers this question:",
                                  "who?", PLACEHOLDERS)
    qa = v2_inputs.nextqa("why?", ["a", "b"], 0, PLACEHOLDERS).query
    sides = [{"raw": webqa}, {"raw": qa}, {"raw": "a label"}]
    images = [None, [noise(32, 32, seed=i) for i in range(3)], None]
    batch = collator(sides, images)
    assert "<|image_pad|> Find a Wikipedia image" in decoded(collator, batch, 0)
    assert "<|vision_end|><|video_pad|> Given a video" in decoded(collator, batch, 1)
    embedder = Embedder(backbone).eval()
    with torch.no_grad():
        batched = embedder(batch)
        alone = torch.cat([embedder(collator([s], [i])) for s, i in zip(sides, images)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="needs stray_image_token keep"):
        Collator(backbone, prompt="gme")


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_image_rows_expanded_by_hand_are_the_processors(family):
    """The path for image rows whose text holds a video token as text gives what the processor gives
    image rows without one."""
    collator = Collator(build_tiny(family), max_text_tokens=64)
    texts = ["<|vision_start|><|image_pad|><|vision_end|>one", "two <|vision_start|><|image_pad|><|vision_end|>"]
    pics = [noise(32, 48, seed=0), noise(64, 32, seed=1)]
    ours = collator._images_with_text_video_tokens(texts, pics)
    theirs = dict(collator.processor(text=texts, images=pics, padding=True, return_tensors="pt"))
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(theirs[key])), key
