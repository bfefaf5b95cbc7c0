"""MMEB-V2's model inputs, built exactly as VLM2Vec's eval loaders build them, one pure function per
loader family (``src/data/eval_dataset/*.py`` of TIGER-AI-Lab/VLM2Vec at commit 6e1e1d4).

Every string here is what VLM2Vec hands its processor, byte for byte: the instruction strings, where
the image or video token goes, and the loaders' whitespace (the image loaders' ``" \\n"`` -> ``"\\n"``
and trailing newlines, "kept consistent with v1 eval"; the doubled space after the video QA prompt's
"Question:"; Breakfast's trailing space). The token strings come from a `Tokens`: `QWEN` for Qwen2-VL /
Qwen2.5-VL (``<|image_pad|>``, ``<|video_pad|>``), `PLACEHOLDERS` for records that are rendered per
backbone later (the placeholders take the tokens' place one for one, so a later substitution gives
the same string as building with the backbone's tokens), `GME` for the GME / LamRA baselines, whose
``process_input_text`` writes no token (the loaders that format the token themselves, t2i queries
and video QA, still write it).

Families (VLM2Vec's ``dataset_parser``): image_cls / image_i2t / image_qa / image_i2i_vg / image_t2i,
video_classification / ssv2, msrvtt / msvd / didemo / youcook2 / vatex (text -> video),
moment_retrieval / momentseeker, videomme / nextqa / egoschema / mvbench / activitynetqa, and
vidore / visrag (text -> page).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN


@dataclass(frozen=True)
class Tokens:
    image: str  # written for an image
    video: str | None  # written for a video; None: the backbone takes no video input
    plain: bool = False  # GME / LamRA: process_input_text writes no token


QWEN = Tokens("<|image_pad|>", "<|video_pad|>")
PLACEHOLDERS = Tokens(IMAGE_TOKEN, VIDEO_TOKEN)
GME = Tokens("<|image_pad|>", "<|video_pad|>", plain=True)


def _video_token(tokens: Tokens) -> str:
    if tokens.video is None:
        raise ValueError("this backbone takes no video input (no video token): give it the frames as images "
                         "where it accepts several images, or leave video tasks out")
    return tokens.video


def process_input_text(instruction: str, tokens: Tokens, text: str | None = None, video: bool = False,
                       image: bool = False) -> str:
    """VLM2Vec's ``process_input_text``: ``"<token> " + instruction [+ " " + text]``; GME / LamRA get
    ``instruction + " " + text`` (``instruction + " "`` without text) and no token."""
    if tokens.plain:
        return instruction + " " + text if text else instruction + " "
    prompt = instruction + " " + text if text else instruction
    if video:
        prompt = _video_token(tokens) + " " + prompt
    if image:
        prompt = tokens.image + " " + prompt
    return prompt


# --- image tasks (MMEB V1's data, V2's loaders) ------------------------------------------------------
def image_query(parser: str, qry_inst: str, qry_text: str, tokens: Tokens, dataset: str = "") -> str:
    """The query of an image task. cls / i2t: the instruction without ``<|image_1|>``; qa / i2i_vg:
    ``"\\n"`` + that instruction stripped; both then ``" \\n"`` -> ``"\\n"`` and a final ``"\\n"``.
    t2i: ``<|image_1|>`` swapped for the image token, ``' ' + text + '\\n'`` (VisDial one more ``\\n``)."""
    if parser == "image_t2i":
        out = qry_inst.replace("<|image_1|>", tokens.image) + " " + qry_text + "\n"
        return out + "\n" if dataset == "VisDial" else out
    inst = qry_inst.replace("<|image_1|>", "")
    if parser in ("image_qa", "image_i2i_vg"):
        inst = "\n" + inst.strip()
    elif parser not in ("image_cls", "image_i2t"):
        raise ValueError(f"not an image parser: {parser!r}")
    return process_input_text(inst, tokens, text=qry_text, image=True).replace(" \n", "\n") + "\n"


def image_candidates(parser: str, tgt_inst: str, captions: list[str], tokens: Tokens) -> list[str]:
    """The candidate texts of an image-target row (t2i, i2i_vg): instruction [+ ' ' + caption] after
    the image token when the row's first caption is not blank (WebQA, EDIS, RefCOCO-Matching), else
    the instruction alone; a trailing ``"\\n"`` except on i2i_vg's instruction-only branch."""
    inst = tgt_inst.replace("<|image_1|>", "")
    if captions[0].strip():
        return [process_input_text(inst + " " + cap, tokens, text="", image=True).replace(" \n", "\n") + "\n"
                for cap in captions]
    text = process_input_text(inst, tokens, text="", image=True).replace(" \n", "\n")
    return [text if parser == "image_i2i_vg" else text + "\n"] * len(captions)


def vg_candidate_names(paths: list[str], captions: list[str]) -> list[str]:
    """i2i_vg's candidate ids, ``path + ':' + caption.strip('"')``: RefCOCO-Matching lists several
    objects of one image, so the path alone would merge them."""
    return [p + ":" + c.strip('"') for p, c in zip(paths, captions)]


# --- video classification --------------------------------------------------------------------------
VIDEO_CLS_INSTRUCTIONS = {  # keyed by the loader's dataset_name
    "Kinetics-700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}


def video_cls_query(loader_name: str, tokens: Tokens) -> str:
    """``"<video> " + instruction``; the candidates are the raw labels (`pipelines.mmeb_v2_labels`)."""
    return process_input_text(VIDEO_CLS_INSTRUCTIONS[loader_name], tokens, video=True)


# --- text -> video retrieval and moment retrieval ------------------------------------------------------
VIDEO_RET_INSTRUCTIONS = {
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "DiDeMo": "Find a video that includes the following described scenes:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
    "VATEX": "Select a video that fits the description provided:",
}
VIDEO_TARGET = "Understand the content of the provided video."
MRET_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_QUERY = {
    "video": "Find the clip that corresponds to the given sentence and video segment:",
    "image": "Select the video clip that aligns with the given text and image:",
    "text": "Find the clip that corresponds to the given text:",
}
MOMENTSEEKER_TARGET = "Understand the content of the provided video clip."


def video_ret_query(task: str, caption: str, tokens: Tokens) -> str:
    """A text -> video query: instruction + ' ' + caption, no token (MSVD / VATEX pass the first
    caption of their list)."""
    return process_input_text(VIDEO_RET_INSTRUCTIONS[task], tokens, text=caption)


def video_candidate(tokens: Tokens, clip: bool = False) -> str:
    """A video candidate's text (MomentSeeker's clips say "video clip")."""
    return process_input_text(MOMENTSEEKER_TARGET if clip else VIDEO_TARGET, tokens, video=True)


def mret_query(query: str, tokens: Tokens) -> str:
    """QVHighlight / Charades-STA: the whole video's frames with the scene description."""
    return process_input_text(MRET_QUERY, tokens, text=query, video=True)


def momentseeker_query(query: str, input_frames: str, tokens: Tokens) -> tuple[str, str]:
    """(text, visual kind): ``input_frames`` ending ``.mp4`` -> a video query, ``.jpg`` -> an image
    query, anything else -> text only."""
    kind = "video" if input_frames.endswith(".mp4") else "image" if input_frames.endswith(".jpg") else "text"
    text = process_input_text(MOMENTSEEKER_QUERY[kind], tokens, text=query, video=kind == "video",
                              image=kind == "image")
    return text, kind


def momentseeker_frame_folder(path: str) -> str:
    """The frame folder name of a MomentSeeker clip or query video: '/' -> '_', '.mp4' and after cut."""
    return path.replace("/", "_").split(".mp4")[0]


# --- video QA ------------------------------------------------------------------------------------------
QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
             "Return only the exact text of your chosen answer. Question: ")
LETTERS = "ABCD"  # Video-MME's answer letters


@dataclass(frozen=True)
class Choice:
    """A multiple-choice query: its text, the candidates' texts and ids (``names``), the gold id."""

    query: str
    texts: list[str]
    names: list[str]
    label: str


def _qa_prefix(question: str, tokens: Tokens) -> str:
    """VLM2Vec's ``process_query`` with a prompt: ``f"{video_token} {prompt} {question}"``; the QA
    loaders format the token themselves, so GME / LamRA get it too."""
    return f"{_video_token(tokens)} {QA_PROMPT} {question}"


def qa_template(question: str, candidates: list[str], answer) -> tuple[str, list[str], str]:
    """VLM2Vec's ``qa_template``: the question + ``"\nOptions:\n(A) c0\n..."`` right-stripped, the
    options ``"(A) c0"``, and the answer as ``"(X) answer"`` (X from the LAST equal candidate; with
    none, ``chr(ord('A') - 1)`` = ``"@"``, as VLM2Vec writes it)."""
    options = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates)]
    text = f"{question}\nOptions:\n" + "".join(o + "\n" for o in options)
    index = max((i for i, c in enumerate(candidates) if c == answer), default=-1)
    return text.rstrip(), options, f"({chr(ord('A') + index)}) {answer}"


def strip_option(option: str) -> str:
    """Video-MME / EgoSchema candidate text: ``o[o.find('. '):].strip('. ')`` ("A. text." -> "text";
    an option without ". " keeps only its last character, as VLM2Vec's slice does)."""
    return option[option.find(". "):].strip(". ")


def videomme(question: str, options: list[str], answer: str, tokens: Tokens) -> Choice:
    return Choice(_qa_prefix(question + "\n" + "\n".join(options), tokens), [strip_option(o) for o in options],
                  list(options), options[LETTERS.index(answer)])


def egoschema(question: str, options: list[str], answer: str, tokens: Tokens) -> Choice:
    """The options are appended with no separator after the question, as VLM2Vec does."""
    return Choice(_qa_prefix(question + " ".join(options), tokens), [strip_option(o) for o in options],
                  list(options), options[int(answer)])


def nextqa(question: str, options: list[str], answer: int, tokens: Tokens) -> Choice:
    text, _, _ = qa_template(_qa_prefix(question, tokens), options, answer)
    return Choice(text, list(options), list(options), options[answer])


def mvbench(question: str, candidates: list[str], answer: str, tokens: Tokens) -> Choice:
    text, options, label = qa_template(_qa_prefix(question, tokens), candidates, answer)
    return Choice(text, options, options, label)


def activitynetqa(question: str, answer: str, tokens: Tokens) -> Choice:
    return Choice(_qa_prefix(question + "? (A) yes; (B) no.", tokens), ["yes", "no"], ["yes", "no"], answer)


# --- visual documents ------------------------------------------------------------------------------------
VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_TARGET = "Understand the content of the provided document image."
VISDOC_PROMPTS = ("current", "launch")  # launch: the ViDoRe loader's empty prompts, 6ac33bb..55b056a


def _visdoc_instructions(parser: str, prompt: str) -> tuple[str, str]:
    if prompt not in VISDOC_PROMPTS:
        raise ValueError(f"prompt must be one of {', '.join(VISDOC_PROMPTS)}, got {prompt!r}")
    if prompt == "launch" and parser == "vidore":  # VisRAG's loader kept its prompts
        return "", ""
    return VISDOC_QUERY, VISDOC_TARGET


def visdoc_query(parser: str, query: str, tokens: Tokens, prompt: str = "current") -> str:
    """A text -> page query (the launch's empty prompt leaves a leading space: ``" " + query``)."""
    return process_input_text(_visdoc_instructions(parser, prompt)[0], tokens, text=query)


def visdoc_candidate(parser: str, tokens: Tokens, prompt: str = "current") -> str:
    """A page's text: the image token and the target instruction (launch: ``"<image> "``)."""
    return process_input_text(_visdoc_instructions(parser, prompt)[1], tokens, image=True)


def visrag_image_name(corpus_id: str) -> str:
    """VisRAG's page file name: its long ids cut to 50 characters + "_" + 8 hex of their md5."""
    base, ext = os.path.splitext(corpus_id)
    return base[:50] + "_" + hashlib.md5(corpus_id.encode("utf-8")).hexdigest()[:8] + ext
