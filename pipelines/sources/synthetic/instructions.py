"""Instruction tables of the synthetic MMEB: the instructions and target prompts of each dataset, and
the 10 phrasings per train subset from which its `diverse_instruction` split is built.

The strings are MMEB's own, verbatim, quirks included: queries open with the image token and a
newline, WebQA's text-only queries keep a stray image token, and the eval grounding instruction reads
"Crop the image to to isolate ..." (sic). The first phrasing of each list is the original one (with
" " where `original` has "\n"); the others are VLM2Vec's instruction variants.
"""

from __future__ import annotations

import random

from pipelines.prompts import MSCOCO_DIVERSE
from pipelines.schema import IMAGE_TOKEN

TOK = IMAGE_TOKEN + "\n"  # the image token as it opens `original` / eval strings

_VQA_PHRASINGS = [
    "<|image_1|> Represent the given image with the following question: ",
    "Use the given question to represent <|image_1|>: ",
    "Represent <|image_1|> with the provided question: ",
    "Using the given question, represent <|image_1|>: ",
    "Align the question with <|image_1|> for representation: ",
    "Match the provided question to <|image_1|> as its representation: ",
    "Represent <|image_1|> using the associated question: ",
    "<|image_1|> is represented by the given question: ",
    "Use the assigned question to express <|image_1|>: ",
    "<|image_1|> can be expressed through the provided question: ",
]
DIVERSE_PHRASINGS: dict[str, list[str]] = {
    "Syn-ShapeCLS": [  # ImageNet_1K
        "<|image_1|> Represent the given image for classification.",
        "Represent <|image_1|> for classification.",
        "Analyze <|image_1|> and represent it for classification.",
        "Use <|image_1|> to perform classification.",
        "For classification, represent <|image_1|>.",
        "Take <|image_1|> and represent it for classification.",
        "Analyze <|image_1|> and determine its category.",
        "Evaluate <|image_1|> and provide a label.",
        "Review the details in <|image_1|> for classification.",
        "Label <|image_1|> with the correct category.",
    ],
    "Syn-NewsCLS": [  # N24News
        "<|image_1|> Represent the given news image with the following caption for domain classification: ",
        "Represent <|image_1|> using the provided caption for domain classification: ",
        "Use the following caption to represent <|image_1|> for domain classification: ",
        "For domain classification, represent <|image_1|> with the given caption: ",
        "The given caption should be used to represent <|image_1|> for domain classification: ",
        "Use the caption provided to represent <|image_1|> in the context of domain classification: ",
        "With the following caption, represent <|image_1|> for domain classification: ",
        "Apply the caption to represent <|image_1|> for classification of its domain: ",
        "Use <|image_1|> and the following caption to classify its domain: ",
        "Represent the given image, <|image_1|>, for domain classification with the caption provided: ",
    ],
    "Syn-ShapeVQA": _VQA_PHRASINGS,  # OK-VQA
    "Syn-TextVQA": _VQA_PHRASINGS,  # DocVQA
    "Syn-Dialog_t2i": [  # VisDial
        "Represent the given dialogue about an image, which is used for image retrieval: ",
        "Represent the provided dialogue related to an image for the purpose of image retrieval: ",
        "Use the given dialogue about an image to aid in image retrieval: ",
        "Represent the dialogue concerning an image for use in image retrieval tasks: ",
        "Create a representation of the provided dialogue about an image to facilitate image retrieval: ",
        "Use the dialogue referencing an image as input for image retrieval: ",
        "Represent the dialogue associated with an image to support image retrieval: ",
        "Process the given dialogue about an image to make it suitable for image retrieval: ",
        "Represent the provided image-related dialogue for retrieving the corresponding image: ",
        "Utilize the dialogue about an image to perform image retrieval effectively: ",
    ],
    "Syn-Caption_t2i": [  # MSCOCO_t2i
        "Find me an everyday image that matches the given caption: ",
        "Locate an everyday image that aligns with the provided caption: ",
        "Find an image from daily life that corresponds to the given caption: ",
        "Search for an everyday image that fits the specified caption: ",
        "Identify a day-to-day image that matches the caption provided: ",
        "Retrieve an everyday image that corresponds to the given caption: ",
        "Find a corresponding everyday image based on the given caption: ",
        "Match the provided caption to an appropriate everyday image: ",
        "Search for a daily-life image that aligns with the specified caption: ",
        "Identify an everyday image that reflects the meaning of the given caption: ",
    ],
    "Syn-Caption_i2t": [  # MSCOCO_i2t
        "<|image_1|> Find an image caption describing the given everyday image.",
        "Find a caption that describes the everyday image in <|image_1|>.",
        "Locate a suitable caption for the provided everyday image <|image_1|>.",
        "Based on <|image_1|>, identify a caption describing the given everyday image.",
        "Use <|image_1|> to find a caption that matches the everyday image.",
        "Search for an image caption that fits the everyday image <|image_1|>.",
        "From <|image_1|>, retrieve a caption that describes the given everyday image.",
        "With <|image_1|> as input, locate a caption that describes the everyday image.",
        "Find a description for the everyday image represented by <|image_1|>.",
        "Use the everyday image in <|image_1|> to locate a fitting caption.",
    ],
    "Syn-CIRR": [  # CIRR
        "<|image_1|> Given an image, find a similar everyday image with the described changes: ",
        "Given <|image_1|>, identify a similar everyday image incorporating the described changes: ",
        "Use <|image_1|> to locate a comparable everyday image with the specified modifications: ",
        "From <|image_1|>, find a similar everyday image reflecting the described changes: ",
        "Find an everyday image similar to <|image_1|> but with the indicated alterations: ",
        "Locate an everyday image resembling <|image_1|> while applying the described changes: ",
        "Based on <|image_1|>, search for a similar everyday image with the specified adjustments: ",
        "Using the given <|image_1|>, retrieve a similar everyday image with the described modifications: ",
        "Identify an everyday image akin to <|image_1|> that reflects the outlined changes: ",
        "Search for an image resembling <|image_1|>, but adjusted according to the described changes: ",
    ],
    "Syn-WebQA": [  # WebQA (the token stays although the query has no image)
        "<|image_1|> Find a Wikipedia image that answers this question: ",
        "Find a Wikipedia image that answers the question based on <|image_1|>: ",
        "Using <|image_1|>, locate a Wikipedia image that provides an answer to this question: ",
        "Locate a Wikipedia image that addresses the question given <|image_1|>: ",
        "From <|image_1|>, find a Wikipedia image that answers this question: ",
        "Identify a Wikipedia image that answers the question in relation to <|image_1|>: ",
        "Based on the provided <|image_1|>, search for a Wikipedia image that answers the question: ",
        "Search for a Wikipedia image that answers the question using <|image_1|>: ",
        "Find a Wikipedia image answering this question in the context of <|image_1|>: ",
        "With <|image_1|> as reference, find a Wikipedia image that answers this question: ",
    ],
    "Syn-Grounding": [  # MSCOCO (visual grounding)
        "<|image_1|> Select the portion of the image that isolates the object labeled as ",
        *MSCOCO_DIVERSE,
    ],
}
# subsets whose query is only an instruction: diverse_instruction replaces the whole qry
INSTRUCTION_ONLY = frozenset({"Syn-ShapeCLS", "Syn-Caption_i2t"})

CLS_INST = "Represent the given image for classification"
NEWS_INST = "Represent the given news image with the following caption for domain classification: "
VQA_INST = "Represent the given image with the following question: "
# Syn-ShapeVQA-NewInst: a phrasing that no train split (original or diverse) ever uses
NEW_VQA_INST = "Look closely at the picture and encode it together with this query: "
DIALOG_INST = "Represent the given dialogue about an image, which is used for image retrieval: "
T2I_INST = "Find me an everyday image that matches the given caption: "
I2T_INST = "Find an image caption describing the given everyday image."
CIRR_INST = "Given an image, find a similar everyday image with the described changes: "
WEBQA_INST = "Find a Wikipedia image that answers this question: "
NIGHTS_INST = "Find a day-to-day image that looks similar to the provided image."
GROUND_TRAIN_INST = "Select the portion of the image that isolates the object labeled as "
GROUND_EVAL_INST = "Crop the image to to isolate the object labeled as "  # sic, as in MMEB-eval
REFCOCO_INST = "Select the portion of the image that follows the language expressions. "
IMAGE_TGT = TOK + "Represent the given image.\n"
DIALOG_TGT = TOK + "Represent the given image\n"
CROP_TGT = TOK + "Represent the given cropped image of the object"
WEBQA_TGT = TOK + "Represent the given Wikipedia image with related text information: "


def diversify(name: str, qry: str, rng: random.Random) -> str:
    """The diverse_instruction version of an `original` qry, built as VLM2Vec built it: a random one of
    the 10 phrasings replaces the whole qry (instruction-only subsets) or the instruction prefix (the
    length of the original instruction); the rest of the qry is kept."""
    phrasings = DIVERSE_PHRASINGS[name]
    choice = rng.choice(phrasings)
    if name in INSTRUCTION_ONLY:
        return choice
    first = phrasings[0]
    expected = first.replace(IMAGE_TOKEN + " ", TOK, 1)
    if not qry.startswith(expected):
        raise AssertionError(f"{name}: qry {qry[:80]!r} does not start with its instruction {expected!r}")
    return choice + qry[len(first) :]
