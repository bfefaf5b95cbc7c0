"""Local byte-level BPE tokenizers for the tiny offline backbones (`tokenizers` library).

A tiny backbone built offline has no pretrained tokenizer, so one is trained here in well under a
second: a GPT-2 style byte-level BPE (any text is encodable, no unknown tokens) whose first ids are
the model family's special tokens (see `trainer.backbone.families.family_special_tokens`).

The corpus is either the synthetic train data (`corpus_from_normalized`: the query / target / negative
strings of data/normalized/train with MMEB's image and video placeholders removed) or, when no data is at hand
(unit tests), a small generated set of scene sentences (`default_corpus`).
"""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pipelines.schema import IMAGE_TOKEN, RECORD_PARTS, V2_PAIR_PARTS, VIDEO_TOKEN

log = logging.getLogger(__name__)

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLACES = ("left", "right", "top", "bottom", "centre")


def default_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """A deterministic list of `n` short scene sentences and MMEB-like instructions (for tests)."""
    rng = random.Random(seed)
    templates = (
        "a {size} {colour} {shape} at the {place}",
        "Represent the given image for classification",
        "Represent the given image with the following question: what colour is the {shape}?",
        "Find me an everyday image that matches the given caption: a {colour} {shape}.",
        "Select the portion of the image that isolates the object labeled as \"{shape}\"",
        "{colour}",
        "{shape}",
    )
    out = []
    for _ in range(n):
        out.append(rng.choice(templates).format(
            size=rng.choice(("small", "large")), colour=rng.choice(COLOURS),
            shape=rng.choice(SHAPES), place=rng.choice(PLACES)))
    return out


def _side_strings(side: dict | None) -> Iterator[str]:
    if not side:
        return
    raw = side.get("raw") or ""
    text = raw.replace(IMAGE_TOKEN, "").replace(VIDEO_TOKEN, "").strip()  # V2 pairs have video ones
    if text:
        yield text


def corpus_from_normalized(train_dir: str | Path, *, max_rows: int | None = None) -> Iterator[str]:
    """Yield the query, target and negative strings of data/normalized/train/*/part-*.parquet (MMEB
    records) and */pairs-*.parquet (MMEB-V2 pairs).

    Files are read in sorted order (deterministic corpus). MMEB's image and video placeholders are
    removed: they become special tokens of the model, not text to learn merges from.
    """
    parts = sorted(p for names in (RECORD_PARTS, V2_PAIR_PARTS) for p in Path(train_dir).glob(f"*/{names}"))
    if not parts:
        raise FileNotFoundError(f"no normalized train parts under {train_dir} (run the normalize stage)")
    rows = 0
    for part in parts:
        table = pq.read_table(part, columns=["query", "target", "negatives"])
        for row in table.to_pylist():
            yield from _side_strings(row["query"])
            yield from _side_strings(row["target"])
            for neg in row["negatives"] or []:
                yield from _side_strings(neg)
            rows += 1
            if max_rows is not None and rows >= max_rows:
                return


def train_bpe(texts: Iterable[str], *, special_tokens: Sequence[str], vocab_size: int = 2048,
              min_frequency: int = 2, eos_template: tuple[str, str] | None = None) -> Tokenizer:
    """Train a byte-level BPE on `texts`; `special_tokens` get ids 0..n-1 in the given order.

    `eos_template=(bos, eos)` makes the tokenizer wrap each sequence as `bos $A eos` (CLIP), or
    `("", eos)` for `$A eos` (SigLIP); otherwise no special tokens are added when encoding.
    The vocabulary may end smaller than `vocab_size` when the corpus is small.
    """
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(texts, trainer)
    if eos_template is None:
        raw.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        bos, eos = eos_template
        single = " ".join(t for t in (f"{bos}:0" if bos else "", "$A:0", f"{eos}:0") if t)
        specials = [(t, raw.token_to_id(t)) for t in (bos, eos) if t]
        raw.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=single, special_tokens=specials),
        ])
    for tok in special_tokens:
        if raw.token_to_id(tok) is None:  # pragma: no cover - the trainer always adds them
            raise RuntimeError(f"special token {tok!r} missing after BPE training")
    log.info("trained byte-level BPE: %d tokens (%d special)", raw.get_vocab_size(), len(special_tokens))
    return raw


def take(texts: Iterable[str], n: int) -> list[str]:
    """The first `n` strings of an iterable (a bounded corpus)."""
    return list(itertools.islice(texts, n))
