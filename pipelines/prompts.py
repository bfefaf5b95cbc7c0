"""Split an MMEB query/target string into (instruction, text) with an exact template.

`split_side(raw, role)` returns a `Split(instruction, text, has_image_token, template, method)` with
the guarantee, for ANY string raw:

    compose(template, instruction, text) == raw          (byte for byte)

The template is raw with the instruction span replaced by "{instruction}", the text span by "{text}"
and every literal brace doubled. Both placeholders occur exactly once, "{instruction}" first; an
empty part sits where it would have been. The image token "<|image_1|>" is never inside instruction
or text: it always stays in the template, so re-composing with another (or an empty) instruction keeps
the image token where the source put it.

How the instruction is found:
  1. known instructions of MMEB (`KNOWN_INSTRUCTIONS`), matched right after leading image tokens and
     whitespace; a "prefix" instruction (ending in ": ", ". " or " ") is followed by content, a
     "whole" instruction (e.g. "Represent the given image for classification") must be all there is;
     the longest match wins; then the diverse_instruction phrasings that no ": " separates from their
     content (`DIVERSE_PREFIXES`), matched after leading whitespace, image token included;
  2. fallback for sides that carry an instruction (queries; targets holding an image token): the
     instruction runs up to and including the first ": " when content follows it, else the whole
     string (minus surrounding whitespace) is the instruction;
  3. target sides without an image token (labels, answers, captions) are text only.
Surrounding whitespace of the text (and of a whole-string instruction) stays in the template. When
the image token sits inside the instruction or text (the diverse_instruction phrasings put it mid
sentence, "Represent <|image_1|> for classification."), that part is narrowed to its longest piece
without the token (`method` then ends in "+narrowed").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pipelines.schema import IMAGE_TOKEN

# Literal MMEB instruction strings (image token and the newline after it omitted), as the eval
# queries and targets and the train rows of MMEB-train / MMEB-eval write them.
KNOWN_INSTRUCTIONS: tuple[str, ...] = (
    # classification
    "Represent the given image for classification",
    "Represent the given news image with the following caption for domain classification: ",
    "Represent the given image for binary classification to determine whether it constitutes "
    "hateful speech or not",
    "Identify the object shown in the image",
    "Identify the scene shown in the image",
    "Identify the country depicted in the image",
    # VQA
    "Represent the given image with the following question: ",
    # retrieval (queries)
    "Represent the given dialogue about an image, which is used for image retrieval: ",
    "Given an image, find a similar everyday image with the described changes: ",
    "Find an image to match the fashion image and style note: ",
    "Retrieve an image of this news caption. ",
    "Find a caption for the news in the given photo.",
    "Find me an everyday image that matches the given caption: ",
    "Find an image caption describing the given everyday image.",
    "Find a day-to-day image that looks similar to the provided image.",
    "Find a Wikipedia image that answers this question: ",
    "Find a news image that matches the provided caption: ",
    "Find the document image that can answer the given query: ",
    "Retrieve a Wikipedia image-description pair that provides evidence for the question of this "
    "image: ",
    # retrieval (targets)
    "Represent the given image.",
    "Represent the given image",
    "Represent the given Wikipedia image with related text information: ",
    "Represent the given image with related text information: ",
    # grounding
    "Select the portion of the image that isolates the object labeled as ",
    "Crop the image to to isolate the object labeled as ",
    "Select the portion of the image that follows the language expressions. ",
    "Select the portion of the image that follows the language expressions: ",
    "Select the portion of the image that answers the question ",
    "Represent the given cropped image of the object",
)
_KNOWN_LONGEST_FIRST = tuple(sorted(set(KNOWN_INSTRUCTIONS), key=lambda s: (-len(s), s)))

# MMEB-train's `diverse_instruction` split swaps each query's instruction for one of ten phrasings
# per subset, often with the image token mid-sentence. Phrasings ending in ": " are
# found by the ": " fallback; these are the ones the content follows directly (MSCOCO grounding,
# "... labeled as <label>"; VisualNews_t2i, "... news caption.<caption>"), matched as they stand.
MSCOCO_DIVERSE: tuple[str, ...] = (  # the MSCOCO (grounding) phrasings but the original's
    "Select the portion of <|image_1|> that isolates the object labeled as ",
    "From <|image_1|>, isolate the portion containing the labeled object ",
    "In <|image_1|>, identify the area isolating the object labeled as ",
    "Locate the portion of <|image_1|> that isolates the object labeled as ",
    "In <|image_1|>, select the part isolating the object labeled as ",
    "Highlight the region in <|image_1|> that isolates the object labeled as ",
    "Focus on the section of <|image_1|> isolating the object labeled as ",
    "Identify and select the part of <|image_1|> isolating the object labeled as ",
    "From <|image_1|>, pinpoint the portion isolating the object labeled as ",
)
VISUALNEWS_T2I_DIVERSE: tuple[str, ...] = (  # VisualNews_t2i's, likewise
    "Find an image that corresponds to this news caption.",
    "Retrieve a picture that matches the given news caption.",
    "Locate an image associated with this news caption.",
    "Search for a picture that reflects this news caption.",
    "Identify an image related to the provided news caption.",
    "Find a visual representation of this news caption.",
    "Retrieve a photograph that aligns with this news caption.",
    "Search for an image illustrating the given news caption.",
    "Locate a photo that corresponds to this news caption.",
)
DIVERSE_PREFIXES = MSCOCO_DIVERSE + VISUALNEWS_T2I_DIVERSE
_DIVERSE_LONGEST_FIRST = tuple(sorted(set(DIVERSE_PREFIXES), key=lambda s: (-len(s), s)))

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{instruction\}|\{text\}|\{|\}")


@dataclass(frozen=True)
class Split:
    instruction: str
    text: str
    has_image_token: bool
    template: str
    method: str  # known | fallback_colon | fallback_whole | text_only | empty (+ "+narrowed")


def _escape(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def make_template(raw: str, instruction: tuple[int, int], text: tuple[int, int]) -> str:
    """Template of raw for an instruction span and a text span (start, end), instruction first."""
    (i0, i1), (t0, t1) = instruction, text
    if not (0 <= i0 <= i1 <= t0 <= t1 <= len(raw)):
        raise ValueError(f"bad spans {instruction} {text} for a string of length {len(raw)}")
    return (_escape(raw[:i0]) + "{instruction}" + _escape(raw[i1:t0]) + "{text}"
            + _escape(raw[t1:]))


def compose(template: str, instruction: str, text: str) -> str:
    """Fill a template: "{instruction}" and "{text}" are replaced, "{{" and "}}" become braces.

    Raises ValueError on any other brace (no format-spec, attribute or index syntax is interpreted)."""

    def fill(m: re.Match) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if token == "{instruction}":
            return instruction
        if token == "{text}":
            return text
        raise ValueError(f"stray {token!r} at offset {m.start()} in template {template!r}")

    return _PLACEHOLDER.sub(fill, template)


def _skip_lead(raw: str, pos: int = 0) -> int:
    """Position after any leading whitespace and image tokens."""
    while True:
        while pos < len(raw) and raw[pos].isspace():
            pos += 1
        if raw.startswith(IMAGE_TOKEN, pos):
            pos += len(IMAGE_TOKEN)
            continue
        return pos


def _is_blank(s: str) -> bool:
    """Nothing but whitespace and image tokens."""
    return not s.replace(IMAGE_TOKEN, "").strip()


def _match_known(raw: str, start: int) -> int | None:
    """End of the longest known instruction at `start` that fits its context, or None."""
    for known in _KNOWN_LONGEST_FIRST:
        if raw.startswith(known, start):
            end = start + len(known)
            if known[-1].isspace() or _is_blank(raw[end:]):
                return end
    return None


def _match_diverse(raw: str, start: int) -> int | None:
    """End of the longest `DIVERSE_PREFIXES` phrasing at `start` with content after it, or None."""
    for phrasing in _DIVERSE_LONGEST_FIRST:
        if raw.startswith(phrasing, start) and not _is_blank(raw[start + len(phrasing):]):
            return start + len(phrasing)
    return None


def _strip_span(raw: str, start: int, end: int, keep_trailing: bool) -> tuple[int, int]:
    while start < end and raw[start].isspace():
        start += 1
    if not keep_trailing:
        while end > start and raw[end - 1].isspace():
            end -= 1
    return start, end


def _narrow(raw: str, start: int, end: int) -> tuple[int, int]:
    """Longest token-free piece of raw[start:end], without surrounding whitespace and separator
    punctuation (the first such piece on ties)."""
    pieces, pos = [], start
    while True:
        hit = raw.find(IMAGE_TOKEN, pos, end)
        stop = end if hit < 0 else hit
        pieces.append((pos, stop))
        if hit < 0:
            break
        pos = hit + len(IMAGE_TOKEN)
    best = (start, start)
    for p0, p1 in pieces:
        while p0 < p1 and (raw[p0].isspace() or raw[p0] in ",;:"):
            p0 += 1
        while p1 > p0 and raw[p1 - 1].isspace() and not raw[p0:p1].endswith(": "):
            p1 -= 1
        if p1 - p0 > best[1] - best[0]:
            best = (p0, p1)
    if best == (start, start):
        return end, end  # nothing but tokens and separators: an empty span after them
    return best


@lru_cache(maxsize=16384)  # eval candidate lists repeat the same strings row after row
def split_side(raw: str, role: str) -> Split:
    """Split one side. `role` is "query" or "target" (targets, negatives and eval candidates)."""
    if role not in ("query", "target"):
        raise ValueError(f"role must be 'query' or 'target', not {role!r}")
    has_token = IMAGE_TOKEN in raw
    lead = _skip_lead(raw)
    if _is_blank(raw):
        method, ins, txt = "empty", (lead, lead), (lead, lead)
    elif role == "target" and not has_token:
        method, ins = "text_only", (lead, lead)
        txt = _strip_span(raw, lead, len(raw), keep_trailing=False)
        ins = (txt[0], txt[0])
    else:
        end = _match_known(raw, lead)
        if end is None:  # a diverse phrasing may start with text and hold the image token
            start = len(raw) - len(raw.lstrip())
            end = _match_diverse(raw, start)
            lead = start if end is not None else lead
        if end is not None:
            method = "known"
        else:
            colon = raw.find(": ", lead)
            if colon >= 0 and not _is_blank(raw[colon + 2:]):
                method, end = "fallback_colon", colon + 2
            else:
                method, end = "fallback_whole", len(raw)
        ins = _strip_span(raw, lead, end, keep_trailing=end < len(raw))
        txt = _strip_span(raw, end, len(raw), keep_trailing=False)
        if txt[0] == txt[1]:
            txt = (ins[1], ins[1])
    if IMAGE_TOKEN in raw[ins[0]:ins[1]] or IMAGE_TOKEN in raw[txt[0]:txt[1]]:
        method += "+narrowed"
        if IMAGE_TOKEN in raw[ins[0]:ins[1]]:
            ins = _narrow(raw, *ins)
        if IMAGE_TOKEN in raw[txt[0]:txt[1]]:
            txt = _narrow(raw, *txt)
        if ins[1] > txt[0]:  # an emptied instruction moved past the text: keep the order
            ins = (txt[0], txt[0])
    template = make_template(raw, ins, txt)
    return Split(instruction=raw[ins[0]:ins[1]], text=raw[txt[0]:txt[1]], has_image_token=has_token,
                 template=template, method=method)
