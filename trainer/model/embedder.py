"""The embedding model: a backbone + last-token pooling (VLMs) or summed towers (dual encoders).

For a VLM the embedding of a row is the last layer's hidden state at its last real token, taken from
the backbone's inner model (`*ForConditionalGeneration.model`), so no LM-head logits are computed.
For CLIP/SigLIP (the paper's baselines) the image and text embeddings of a row are each L2-normalised
and summed element-wise (a row with only one modality gets that one), then normalised again.

A batch whose rows without image hold a kept stray placeholder as a text token (the Collator's
`stray_token`) and that also has rows with pixels is encoded in two forwards, the image rows and the
others: transformers puts image features at every image token of a batch, where VLM2Vec's forward
puts them only into the rows with pixels and leaves the others' tokens as text.

peft: `get_peft_model(backbone.model, LoraConfig(target_modules=backbone.lora_targets))` injects the
LoRA layers in place, so an Embedder built before or after wrapping uses them; a PeftModel may also be
assigned to `embedder.model` directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.model.pooling import last_token_pool

# keys the Collator adds for bookkeeping; never passed to the backbone
_META_KEYS = ("has_image", "has_text", "stray_token")
_ROW_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # [B, L]; position_ids: [3, B, L]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (the model itself when not wrapped)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class Embedder(torch.nn.Module):
    def __init__(self, backbone, normalize: bool = True):
        super().__init__()
        self.model = backbone.model
        self.family = backbone.family
        self.kind = backbone.kind
        self.normalize = normalize

    @property
    def dim(self) -> int:
        """Embedding width."""
        cfg = unwrap(self.model).config
        if self.kind == "dual":
            return int(getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size)
        return int(getattr(cfg, "text_config", cfg).hidden_size)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, D] embeddings (L2-normalised when `normalize`) of a Collator batch."""
        if self.kind == "dual":
            emb = self._dual(inputs)
        else:
            emb = self._vlm(inputs)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def _vlm(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v for k, v in inputs.items() if k not in _META_KEYS}
        stray, has_image = inputs.get("stray_token"), inputs.get("has_image")
        if stray is not None and bool(stray.any()) and has_image is not None and bool(has_image.any()):
            return self._vlm_apart(batch, has_image)
        inner = unwrap(self.model).model  # e.g. Qwen2VLModel: vision + language model, no LM head
        out = inner(**batch, use_cache=False, return_dict=True)
        return last_token_pool(out.last_hidden_state, batch["attention_mask"])

    def _vlm_apart(self, batch: dict[str, torch.Tensor], has_image: torch.Tensor) -> torch.Tensor:
        """The rows with images and the rows without, each in its own forward, back in row order."""
        has_image = has_image.to(batch["input_ids"].device)
        rows = (has_image.nonzero().squeeze(1), (~has_image).nonzero().squeeze(1))
        parts = []
        for with_images, idx in zip((True, False), rows):
            part = {k: v[idx] for k, v in batch.items() if k in _ROW_KEYS}
            if "position_ids" in batch:
                part["position_ids"] = batch["position_ids"][:, idx]
            if with_images:  # pixel tensors belong to the image rows, in their order
                part.update({k: v for k, v in batch.items() if k not in _ROW_KEYS and k != "position_ids"})
            parts.append(self._vlm(part))
        order = torch.argsort(torch.cat(rows))
        return torch.cat(parts)[order]

    def _dual(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        model = unwrap(self.model)
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        text = F.normalize(_features(text), dim=-1)
        has_text = inputs.get("has_text", torch.ones(text.shape[0], dtype=torch.bool, device=text.device))
        emb = text * has_text.to(text.dtype).unsqueeze(-1)
        has_image = inputs.get("has_image")
        if "pixel_values" in inputs and has_image is not None and bool(has_image.any()):
            image = F.normalize(_features(model.get_image_features(pixel_values=inputs["pixel_values"])), dim=-1)
            if image.shape[0] != int(has_image.sum()):
                raise ValueError(f"{image.shape[0]} images for {int(has_image.sum())} rows marked has_image")
            emb = emb.index_add(0, has_image.nonzero().squeeze(1), image.to(emb.dtype))
        return emb


def _features(out) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features; the projected embedding is its pooler."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output
