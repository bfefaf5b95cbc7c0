"""Tests for pipelines/v2_inputs.py: the exact strings VLM2Vec's V2 eval loaders build."""

from __future__ import annotations

import pytest

from pipelines import v2_inputs as v
from pipelines.mmeb_v2_labels import LABELS
from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN
from pipelines.v2_inputs import GME, PLACEHOLDERS, QWEN, Tokens

QA = ("Given a video and a question, select the most accurate answer from the provided candidates. "
      "Return only the exact text of your chosen answer. Question: ")


def test_process_input_text():
    assert v.process_input_text("Inst:", QWEN, text="cat", image=True) == "<|image_pad|> Inst: cat"
    assert v.process_input_text("Inst.", QWEN, video=True) == "<|video_pad|> Inst."
    assert v.process_input_text("Inst:", QWEN, text="") == "Inst:"
    assert v.process_input_text("Inst:", GME, text="cat", image=True) == "Inst: cat"
    assert v.process_input_text("Inst.", GME, video=True) == "Inst. "  # GME without text: a trailing space
    with pytest.raises(ValueError, match="no video input"):
        v.process_input_text("Inst.", Tokens("<image>", None), video=True)


def test_image_queries():
    inst = "<|image_1|>\nRepresent the given image for classification"
    assert v.image_query("image_cls", inst, "", QWEN) == "<|image_pad|>\nRepresent the given image for classification\n"
    vqa = "<|image_1|>\nRepresent the given image with the following question: "
    assert v.image_query("image_qa", vqa, "What is it?", QWEN) == (
        "<|image_pad|>\nRepresent the given image with the following question: What is it?\n")
    assert v.image_query("image_i2t", "<|image_1|>\nFind an image caption describing the given everyday image.",
                         "", QWEN) == "<|image_pad|>\nFind an image caption describing the given everyday image.\n"
    t2i = "Find me an everyday image that matches the given caption:"
    assert v.image_query("image_t2i", t2i, "A dog.", QWEN) == t2i + " A dog.\n"
    assert v.image_query("image_t2i", "Represent the given dialogue about an image, which is used for image "
                         "retrieval:", "Q:a\nA:b", QWEN, dataset="VisDial").endswith(": Q:a\nA:b\n\n")
    with pytest.raises(ValueError, match="not an image parser"):
        v.image_query("vidore", inst, "", QWEN)


def test_image_candidates_and_their_names():
    assert v.image_candidates("image_t2i", "<|image_1|>\nRepresent the given image.", ["", ""], QWEN) == [
        "<|image_pad|>\nRepresent the given image.\n"] * 2
    assert v.image_candidates("image_i2i_vg", "<|image_1|>\nRepresent the given image.", [""], QWEN) == [
        "<|image_pad|>\nRepresent the given image."]  # no trailing newline on this branch
    webqa = v.image_candidates("image_t2i", "<|image_1|>\nRepresent the given Wikipedia image with related text "
                               "information: ", ["Eiffel", "Louvre"], QWEN)
    assert webqa[0] == ("<|image_pad|>\nRepresent the given Wikipedia image with related text information:  "
                        "Eiffel\n")  # the instruction's own trailing space plus the joining one
    assert v.vg_candidate_names(["a.jpg", "a.jpg"], ['"the left dog"', "cat"]) == ["a.jpg:the left dog", "a.jpg:cat"]


def test_video_classification_and_retrieval():
    assert v.video_cls_query("Kinetics-700", QWEN) == "<|video_pad|> Recognize the category of the video content."
    assert v.video_cls_query("Breakfast", QWEN).endswith("cooking in the video. ")
    assert v.video_cls_query("UCF101", GME) == "What activities or sports are being performed by the person in the video? "
    assert "waiting_in_line" in LABELS["Kinetics-700"] and "PlayingDaf" in LABELS["UCF101"]
    assert [len(LABELS[n]) for n in ("Kinetics-700", "SmthSmthV2", "UCF101", "HMDB51", "Breakfast")] == [700, 174, 101, 51, 10]
    assert v.video_ret_query("MSR-VTT", "a man cooks", QWEN) == (
        "Find a video that contains the following visual content: a man cooks")
    assert v.video_candidate(QWEN) == "<|video_pad|> Understand the content of the provided video."
    assert v.video_candidate(QWEN, clip=True) == "<|video_pad|> Understand the content of the provided video clip."


def test_moment_retrieval():
    assert v.mret_query("a man jumps", QWEN) == (
        "<|video_pad|> Find the clip that corresponds to the described scene in the given video: a man jumps")
    assert v.momentseeker_query("q", "movie/clip_3.mp4", QWEN) == (
        "<|video_pad|> Find the clip that corresponds to the given sentence and video segment: q", "video")
    assert v.momentseeker_query("q", "frame_1.jpg", QWEN) == (
        "<|image_pad|> Select the video clip that aligns with the given text and image: q", "image")
    assert v.momentseeker_query("q", "", QWEN) == ("Find the clip that corresponds to the given text: q", "text")
    assert v.momentseeker_frame_folder("movie101/77.mp4") == "movie101_77"


def test_video_qa():
    mme = v.videomme("How many?", ["A. One.", "B. Two.", "C. 3", "D. Four"], "B", QWEN)
    assert mme.query == f"<|video_pad|> {QA} How many?\nA. One.\nB. Two.\nC. 3\nD. Four"
    assert "Question:  How" in mme.query  # the doubled space
    assert mme.texts == ["One", "Two", "3", "Four"] and mme.label == "B. Two."
    assert mme.names == ["A. One.", "B. Two.", "C. 3", "D. Four"]
    nq = v.nextqa("why?", ["a0", "a1", "a2", "a3", "a4"], 2, QWEN)
    assert nq.query == f"<|video_pad|> {QA} why?\nOptions:\n(A) a0\n(B) a1\n(C) a2\n(D) a3\n(E) a4"
    assert nq.texts == nq.names == ["a0", "a1", "a2", "a3", "a4"] and nq.label == "a2"
    ego = v.egoschema("What?", ["0. x.", "1. y."], "1", QWEN)
    assert ego.query == f"<|video_pad|> {QA} What?0. x. 1. y." and ego.texts == ["x", "y"] and ego.label == "1. y."
    assert v.strip_option("no dot here") == "e"  # VLM2Vec's slice from find() == -1
    mvb = v.mvbench("Which?", ["up", "down"], "down", GME)  # the QA loaders write the token even for GME
    assert mvb.query == f"<|video_pad|> {QA} Which?\nOptions:\n(A) up\n(B) down"
    assert mvb.texts == ["(A) up", "(B) down"] and mvb.label == "(B) down"
    assert v.qa_template("q", ["x"], "y")[2] == "(@) y"
    assert v.qa_template("q", ["x", "x"], "x")[2] == "(B) x"  # the last equal candidate, as VLM2Vec's loop
    anet = v.activitynetqa("is it sunny", "yes", QWEN)
    assert anet.query == f"<|video_pad|> {QA} is it sunny? (A) yes; (B) no." and anet.names == ["yes", "no"]


def test_visual_documents_current_and_launch_prompts():
    assert v.visdoc_query("vidore", "revenue 2023", QWEN) == "Find a document image that matches the given query: revenue 2023"
    assert v.visdoc_candidate("vidore", QWEN) == "<|image_pad|> Understand the content of the provided document image."
    assert v.visdoc_query("vidore", "revenue 2023", QWEN, prompt="launch") == " revenue 2023"
    assert v.visdoc_candidate("vidore", QWEN, prompt="launch") == "<|image_pad|> "
    assert v.visdoc_query("visrag", "q", QWEN, prompt="launch").startswith("Find a document image")
    with pytest.raises(ValueError, match="prompt must be one of"):
        v.visdoc_query("vidore", "q", QWEN, prompt="empty")
    name = v.visrag_image_name("x" * 60 + ".png")
    assert name.startswith("x" * 50 + "_") and name.endswith(".png") and len(name) == 50 + 1 + 8 + 4


def test_placeholders_render_to_the_backbones_strings():
    """Building with placeholders and substituting the tokens gives the string built with the tokens."""
    def render(s):
        return s.replace(IMAGE_TOKEN, "<|image_pad|>").replace(VIDEO_TOKEN, "<|video_pad|>")

    cases = [
        lambda t: v.image_query("image_qa", "<|image_1|>\nRepresent the given image with the following question: ",
                                "Why?", t),
        lambda t: v.image_query("image_t2i", "Find me an everyday image that matches the given caption:", "x", t),
        lambda t: v.image_candidates("image_i2i_vg", "<|image_1|>\nRepresent the given image.", [""], t)[0],
        lambda t: v.video_cls_query("HMDB51", t),
        lambda t: v.videomme("q", ["A. a"], "A", t).query,
        lambda t: v.visdoc_candidate("vidore", t),
    ]
    for build in cases:
        assert render(build(PLACEHOLDERS)) == build(QWEN)
