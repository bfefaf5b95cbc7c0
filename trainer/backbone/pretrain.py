"""Generative warm-up of a tiny VLM on the synthetic train data, so that it starts, like a real VLM,
with representations that already relate images and words.

Each train record gives at most one (image + prompt -> answer) example:
* query with an image, target text (classification, VQA, i2t captions): the query as VLM2Vec renders
  it -> the target text ("brown circle", "bottom", a caption);
* target with an image (t2i retrieval, CIRR, grounding, WebQA): the target side (image + its
  instruction) -> the query text (caption, dialogue, modification, object label);
* records without any image or without answer text give none.
The model sees `prompt + answer + eos` and is trained with next-token cross-entropy on the answer
and eos tokens only (prompt and image positions are labelled -100), averaged per example; answers
are cut to their first 12 words. Full fine-tuning, AdamW, linear
warm-up then cosine decay, gradient clipping at 1.0; the example order is a seeded permutation per
epoch, so the run is deterministic for a seed.
"""

from __future__ import annotations

import io
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from pipelines.imagestore import ImageStore
from trainer.model.inputs import Collator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    side: dict  # the prompt SIDE (pipelines/schema.py), with an image
    image_sha: str
    answer: str


def _text(side: dict | None) -> str:
    return (side or {}).get("text", "").strip() if side else ""


def example_from_record(record: dict, *, max_answer_words: int = 12) -> Example | None:
    """The generative example of one train record (see the module docstring), or None."""
    query, target = record["query"], record["target"]
    if query.get("image") and not target.get("image") and _text(target):
        prompt, answer = query, _text(target)
    elif target.get("image") and _text(query):
        prompt, answer = target, _text(query)
    else:
        return None
    # long answers (dialogues, captions) are cut to their first words: their tails are mostly
    # predictable from the text alone and would drown the image-dependent tokens
    answer = " ".join(answer.split()[:max_answer_words])
    return Example(side=prompt, image_sha=prompt["image"]["sha256"], answer=answer)


def load_examples(train_dir: str | Path, images_dir: str | Path, *,
                  max_image_pixels: int | None = None) -> tuple[list[Example], dict[str, Image.Image]]:
    """Examples from data/normalized/train/*/part-*.parquet (sorted, deterministic) and their images
    (decoded once, RGB, optionally downscaled) from the image store."""
    from trainer.model.inputs import resize_to_max_pixels

    parts = sorted(Path(train_dir).glob("*/part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no normalized train parts under {train_dir} (run the normalize stage)")
    examples, skipped = [], 0
    for part in parts:
        for record in pq.read_table(part, columns=["id", "query", "target"]).to_pylist():
            ex = example_from_record(record)
            if ex is None:
                skipped += 1
            else:
                examples.append(ex)
    if not examples:
        raise ValueError(f"no generative examples in {train_dir} ({skipped} records without image+text)")
    stored = ImageStore(images_dir).get_many({e.image_sha for e in examples})
    images = {}
    for sha, item in sorted(stored.items()):
        with Image.open(io.BytesIO(item.bytes)) as im:
            images[sha] = resize_to_max_pixels(im, max_image_pixels)
    log.info("generative warm-up data: %d examples from %d parts (%d records without one), %d images",
             len(examples), len(parts), skipped, len(images))
    return examples, images


MAX_PROMPT_SUFFIX = 4  # tokens a family's prompt may add after the text (PaliGemma: "\n")


def batch_with_labels(collator: Collator, examples: Sequence[Example],
                      images: dict[str, Image.Image]) -> tuple[dict[str, torch.Tensor], int]:
    """(model inputs with `labels`, rows without a trainable answer) for a batch of examples.

    The answer + eos is appended to the prompt text (after a newline if the text does not end in
    whitespace); labels are the input ids on the answer's tokens
    (found at the end of each row, before at most `MAX_PROMPT_SUFFIX` tokens that a family's prompt
    adds after the text, e.g. PaliGemma's newline, and checked token by token) and -100 elsewhere.
    A row whose answer was cut by truncation gets no labels and is counted. For PaliGemma the answer
    and what follows it are marked as the suffix (`token_type_ids` 1), as its processor's `suffix=` does.
    """
    tok = collator.tokenizer
    eos = tok.eos_token or ""
    # PaliGemma attends both ways within its prefix (token_type_ids 0) and causally in the suffix (1):
    # left as prefix, the answer would be visible to the positions that learn to predict it
    suffix_types = collator.format.family == "paligemma"
    sides, answers = [], []
    for ex in examples:
        raw = ex.side["raw"]
        # a prompt that ends in a word (MSCOCO's "...cropped image of the object") gets the newline
        # the other prompts end with, so the answer is not glued onto its last word
        sep = "" if not raw or raw[-1].isspace() else "\n"
        sides.append(dict(ex.side, raw=raw + sep + ex.answer + eos))
        answers.append(tok(ex.answer + eos, add_special_tokens=False)["input_ids"])
    batch = collator(sides, [images[ex.image_sha] for ex in examples])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, -100)
    unlabelled = 0
    for row, answer in enumerate(answers):
        positions = mask[row].nonzero().squeeze(1)
        attended, n = ids[row, positions].tolist(), len(answer)
        ends = range(len(attended), max(n, len(attended) - MAX_PROMPT_SUFFIX) - 1, -1) if n else ()
        end = next((e for e in ends if attended[e - n:e] == answer), None)
        if end is None:
            unlabelled += 1
        else:
            labels[row, positions[end - n:end]] = ids[row, positions[end - n:end]]
            if suffix_types:  # the answer onward is PaliGemma's causal suffix
                batch["token_type_ids"][row, positions[end - n:]] = 1
    batch["labels"] = labels
    return batch, unlabelled


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy averaged over each row's labelled tokens, then over the rows.

    (The usual token average lets long answers dominate; a one-word label would barely count.)
    """
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits[:, :-1].float()
    targets = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                   reduction="none")
    counts = (targets != -100).sum(dim=1)
    rows = counts > 0
    if not bool(rows.any()):
        return logits.sum() * 0.0
    return (token_loss.sum(dim=1)[rows] / counts[rows]).mean()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(backbone, examples: Sequence[Example], images: dict[str, Image.Image], *, steps: int,
             batch_size: int, lr: float, seed: int, max_text_tokens: int = 160,
             image_max_pixels: int | None = None, warmup_steps: int = 10) -> dict:
    """Train `backbone.model` in place for `steps` steps; return a summary (losses, counts).

    Deterministic for `seed`: the permutation of `examples` per epoch comes from random.Random(seed).
    """
    if backbone.kind != "vlm":
        raise ValueError(f"generative warm-up needs a VLM, got a {backbone.family} dual encoder")
    if steps < 0 or batch_size < 1:
        raise ValueError("steps must be >= 0 and batch_size >= 1")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    collator = Collator(backbone, max_text_tokens=max_text_tokens, image_max_pixels=image_max_pixels)
    model = backbone.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup_steps))
    order: list[int] = []
    losses: list[float] = []
    unlabelled = 0
    bar = tqdm(range(steps), desc="pretrain", unit="step", mininterval=2.0)
    for step in bar:
        if len(order) < batch_size:
            epoch = list(range(len(examples)))
            rng.shuffle(epoch)
            order.extend(epoch)
        chosen, order = order[:batch_size], order[batch_size:]
        batch, missing = batch_with_labels(collator, [examples[i] for i in chosen], images)
        unlabelled += missing
        batch.pop("has_image")
        loss = per_example_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % 50 == 0 or step == steps - 1:
            log.info("pretrain step %d/%d loss %.4f", step + 1, steps, losses[-1])
    model.eval()
    window = max(1, min(20, len(losses) // 5)) if losses else 0
    summary = dict(steps=steps, batch_size=batch_size, lr=lr, seed=seed, examples=len(examples),
                   unlabelled_rows=unlabelled,
                   loss_first=round(sum(losses[:window]) / window, 4) if losses else None,
                   loss_last=round(sum(losses[-window:]) / window, 4) if losses else None)
    if unlabelled:
        log.warning("%d example rows had their answer truncated and trained nothing", unlabelled)
    return summary
