import random
import re

import pytest

from pipelines.prompts import DIVERSE_PREFIXES, KNOWN_INSTRUCTIONS, compose, make_template, split_side
from pipelines.schema import IMAGE_TOKEN
from tests.support.fixtures_mmeb import EVAL_ROWS, TRAIN_ROWS, VISDIAL_QRY, WEBQA_QRY, WEBQA_TGT

PLACEHOLDERS = re.compile(r"\{\{|\}\}|\{instruction\}|\{text\}")


def check_invariants(raw, role):
    s = split_side(raw, role)
    assert compose(s.template, s.instruction, s.text) == raw
    assert IMAGE_TOKEN not in s.instruction and IMAGE_TOKEN not in s.text
    assert s.has_image_token == (IMAGE_TOKEN in raw)
    found = [m for m in PLACEHOLDERS.findall(s.template) if m in ("{instruction}", "{text}")]
    assert found == ["{instruction}", "{text}"], s.template
    # the image tokens all live in the template: composing with nothing keeps every one of them
    assert compose(s.template, "", "").count(IMAGE_TOKEN) == raw.count(IMAGE_TOKEN)
    return s


# --- the verbatim MMEB rows ------------------------------------------------------------------

@pytest.mark.parametrize("raw,role,instruction,text", [
    (TRAIN_ROWS["ImageNet_1K"][0]["qry"], "query", "Represent the given image for classification", ""),
    (TRAIN_ROWS["ImageNet_1K"][0]["pos_text"], "target", "", "plane, carpenter's plane, woodworking plane"),
    (TRAIN_ROWS["N24News"][0]["qry"], "query",
     "Represent the given news image with the following caption for domain classification: ",
     "Danai Gurira and André Holland in a theater at New York University, where they met in the "
     "Tisch Graduate Acting Program."),
    (TRAIN_ROWS["N24News"][0]["neg_text"], "target", "", "Global Business"),
    (TRAIN_ROWS["OK-VQA"][0]["qry"], "query", "Represent the given image with the following question: ",
     "What is the hairstyle of the blond called?"),
    (VISDIAL_QRY, "query", "Represent the given dialogue about an image, which is used for image retrieval: ",
     "Q:is this a child or adult\nA:adult\nQ:male or female\nA:male\n … Q:what color is the dog\nA:tan"),
    ("<|image_1|>\nRepresent the given image\n", "target", "Represent the given image", ""),
    (TRAIN_ROWS["MSCOCO"][0]["qry"], "query",
     "Select the portion of the image that isolates the object labeled as ", '"hot dog"'),
    ("<|image_1|>\nRepresent the given cropped image of the object", "target",
     "Represent the given cropped image of the object", ""),
    (WEBQA_QRY, "query", "Find a Wikipedia image that answers this question: ",
     "Does a Minnetonka Rhododendron flower have petals in a cup shape?"),
    (WEBQA_TGT, "target", "Represent the given Wikipedia image with related text information: ",
     "2020-05-08 15 17 05 Minnetonka Rhododendron flower along Tranquility Court in the Franklin Farm "
     "section of Oak Hill, Fairfax County, Virginia …"),
    (EVAL_ROWS["Country211"][0]["qry_text"], "query", "Identify the country depicted in the image", ""),
    ("Solomon Islands", "target", "", "Solomon Islands"),
    (EVAL_ROWS["MSCOCO_t2i"][0]["qry_text"], "query",
     "Find me an everyday image that matches the given caption: ",
     "A man with a red helmet on a small moped on a dirt road."),
    ("<|image_1|>\nRepresent the given image.\n", "target", "Represent the given image.", ""),
    (EVAL_ROWS["RefCOCO-Matching"][0]["tgt_text"][0], "target",
     "Select the portion of the image that follows the language expressions: ",
     '"Dish in top right corner"'),
])
def test_verbatim_rows_split_as_documented(raw, role, instruction, text):
    s = check_invariants(raw, role)
    assert (s.instruction, s.text) == (instruction, text)
    assert s.method in ("known", "text_only")


def test_templates_keep_layout_outside_the_parts():
    s = split_side(VISDIAL_QRY, "query")
    assert s.template == "{instruction}{text}\n\n"
    s = split_side(TRAIN_ROWS["OK-VQA"][0]["qry"], "query")
    assert s.template == "<|image_1|>\n{instruction}{text}\n"
    assert not split_side(VISDIAL_QRY, "query").has_image_token


def test_text_only_target_keeps_colons_in_the_text():
    s = check_invariants("Photo: John Doe speaks: at the rally\n", "target")
    assert (s.instruction, s.text, s.method) == ("", "Photo: John Doe speaks: at the rally", "text_only")


def test_fallback_colon_for_unknown_query_instruction():
    s = check_invariants("<|image_1|>\nDescribe the pictured dish for a menu: pasta with basil\n", "query")
    assert s.instruction == "Describe the pictured dish for a menu: "
    assert s.text == "pasta with basil"
    assert s.method == "fallback_colon"


def test_fallback_whole_for_instruction_only_query():
    s = check_invariants("<|image_1|>\nTell me which bird this is\n", "query")
    assert (s.instruction, s.text, s.method) == ("Tell me which bird this is", "", "fallback_whole")
    # a colon with nothing after it is still instruction only
    s = check_invariants("<|image_1|>\nRepresent the photo: \n", "query")
    assert (s.instruction, s.text) == ("Represent the photo:", "")


def test_whole_instruction_does_not_match_as_a_prefix():
    # "Represent the given image" is a whole instruction: followed by content it must not match
    s = check_invariants("<|image_1|>\nRepresent the given image of a dog: a corgi\n", "query")
    assert s.instruction == "Represent the given image of a dog: "
    assert s.text == "a corgi"


def test_diverse_phrasings_with_the_token_mid_sentence_are_narrowed_exactly():
    s = check_invariants("Represent <|image_1|> for classification.", "query")
    assert s.method == "fallback_whole+narrowed"
    assert s.instruction == "for classification."
    raw = ("Use <|image_1|> and the following caption to classify its domain: Danai Gurira and André "
           "Holland in a theater.\n")
    s = check_invariants(raw, "query")
    assert s.instruction == "and the following caption to classify its domain: "
    assert s.text == "Danai Gurira and André Holland in a theater."
    # dropping the instruction (the no-instruction ablation) keeps the image token
    assert IMAGE_TOKEN in compose(s.template, "", s.text)


@pytest.mark.parametrize("phrasing", DIVERSE_PREFIXES)
def test_diverse_phrasings_without_a_colon_keep_their_content_as_text(phrasing):
    """MSCOCO's and VisualNews_t2i's diverse phrasings run straight into the label or caption; the
    content must stay the text (the no-instruction ablation would otherwise lose it)."""
    content = '"hot dog"' if IMAGE_TOKEN in phrasing else "Ukrainian President Petro Poroshenko speaks in Kiev."
    s = check_invariants(phrasing + content + "\n", "query")
    assert s.text == content and s.method.startswith("known")
    assert content in compose(s.template, "", s.text)
    whole = check_invariants(phrasing.strip(), "query")  # nothing after it: an instruction-only query
    assert whole.text == "" and whole.instruction


def test_stray_token_only_and_empty_sides():
    for raw in ("", "   \n", "<|image_1|>\n", "<|image_1|><|image_1|>"):
        for role in ("query", "target"):
            s = check_invariants(raw, role)
            assert (s.instruction, s.text, s.method) == ("", "", "empty")


def test_literal_braces_are_escaped():
    raw = "<|image_1|>\nRepresent the given image with the following question: what is {x} in {{y}}? {text}\n"
    s = check_invariants(raw, "query")
    assert s.text == "what is {x} in {{y}}? {text}"
    assert "{{x}}" not in s.template  # the braces are in the text, not the template
    s = check_invariants("{instruction} {{}} }{ : {text}", "query")


def test_compose_refuses_stray_braces_and_format_syntax():
    for bad in ("{", "}", "{0}", "{instruction.__class__}", "{text!r}", "{instruction:>10}"):
        with pytest.raises(ValueError):
            compose(bad, "I", "T")
    assert compose("{{{instruction}}}-{{{text}}}", "I", "T") == "{I}-{T}"


def test_make_template_checks_span_order():
    with pytest.raises(ValueError):
        make_template("abcdef", (3, 4), (0, 1))
    assert make_template("a{b}c", (1, 2), (3, 4)) == "a{instruction}b{text}c"  # the braces were the spans
    assert make_template("a{b}c", (0, 1), (2, 3)) == "{instruction}{{{text}}}c"


def test_role_is_checked():
    with pytest.raises(ValueError):
        split_side("x", "negative")


ALPHABET = ["a", "b", " ", "\n", "\t", ":", ": ", ". ", "{", "}", "{{", "}}", "{text}", "{instruction}",
            IMAGE_TOKEN, "<|image_1", "é", "…", "\u00a0", "Q:", '"', ","]


def test_compose_is_exact_for_random_strings():
    rng = random.Random(1234)
    fragments = ALPHABET + list(KNOWN_INSTRUCTIONS)
    for _ in range(3000):
        raw = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 12)))
        for role in ("query", "target"):
            check_invariants(raw, role)


def test_compose_is_exact_for_random_unicode():
    rng = random.Random(99)
    for _ in range(500):
        raw = "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 40)))
        for role in ("query", "target"):
            check_invariants(raw, role)
