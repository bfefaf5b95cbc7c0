"""Stray image placeholders: MMEB sides without an image whose text still holds `<|image_1|>` (WebQA's
and EDIS's text-only queries). The model sees them kept as a text token or stripped
(`eval.stray_image_token`, or the rule the model was trained with), so evaluation counts them per
dataset, with the rule in force, in metrics/eval.json (`stray_image_token`): a score that moves
with the rule can be traced to the rows it touches.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pipelines.schema import IMAGE_TOKEN
from trainer.eval.protocol import EvalSet

KEY = "stray_image_token"  # the model entry's key in metrics/eval.json


def is_stray(side: Mapping[str, Any]) -> bool:
    """True for a side without an image whose source text holds the image placeholder."""
    return not side.get("image") and IMAGE_TOKEN in (side.get("raw") or "")


def rule_of(model) -> str | None:
    """The rule a model's inputs follow: "keep" | "strip" (a dual encoder always strips: its text
    has no image token), None for an encoder that does not say (no `collator`). A wrapper that
    delegates to an `inner` encoder (a counting or caching one) answers for it."""
    while getattr(model, "collator", None) is None and getattr(model, "inner", None) is not None:
        model = model.inner
    collator = getattr(model, "collator", None)
    rule = getattr(collator, "stray_image_token", None)
    if rule is not None and getattr(getattr(collator, "format", None), "kind", None) == "dual":
        return "strip"
    return rule


def counts(eval_sets: Sequence[EvalSet], rule: str | None) -> dict[str, Any]:
    """{"rule": rule, "dataset": {name: {"queries": rows whose query is stray, "candidates": candidate
    slots that are}}}, for the datasets with any (the slots as scored: one per row and position)."""
    found = {}
    for es in eval_sets:
        stray = [is_stray(item) for item in es.items]
        queries = sum(stray[i] for i in es.query_item.tolist())
        candidates = sum(stray[i] for i in es.cand_item.tolist())
        if queries or candidates:
            found[es.dataset] = {"queries": int(queries), "candidates": int(candidates)}
    return {"rule": rule, "dataset": found}


def annotate(document: dict[str, dict], strays: Mapping[str, dict] | None) -> dict[str, dict]:
    """`document` (metrics/eval.json's {model: entry}) with each model's counts under `KEY`."""
    for model, entry in document.items():
        if strays and model in strays:
            entry[KEY] = strays[model]
    return document
