"""A trained embedder as an encoder that the `mteb` package runs (its `EncoderProtocol`, mteb 2.x), so
that it can be scored on MIEB's image tasks:

    pip install -e .[mteb]
    import mteb
    from trainer.mteb_encoder import MtebEncoder
    encoder = MtebEncoder.load("models/embedder")
    mteb.evaluate(encoder, mteb.get_tasks(tasks=["CIFAR10"]))

mteb hands `encode` a DataLoader of batches, each a dict of columns: "text" (a list of strings)
and/or "image" (a list of PIL images). Each row becomes a record side in MMEB's layout
(`trainer.embed.make_side`), with the instructions mteb's own VLM2Vec wrapper writes: an image alone
"Represent the given image.", an image with text "Represent the given image with the following
question: <text>", a text alone bare. `instructions` ({"query" | "document": instruction}) replaces
them per prompt type. Embeddings are L2-normalised, so mteb's cosine is their dot product.

This module imports mteb only for `mteb_model_meta`; the protocol itself needs nothing from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from trainer.embed import EmbeddingModel, make_side, open_image

IMAGE_ALONE = "Represent the given image."
IMAGE_WITH_TEXT = "Represent the given image with the following question:"


class MtebEncoder:
    """`model` (a loaded `EmbeddingModel`) behind mteb's encoder protocol."""

    def __init__(self, model: EmbeddingModel, *, name: str | None = None, batch_size: int = 32,
                 instructions: Mapping[str, str] | None = None):
        self.model = model
        self.name = name or f"vlm2vec-pipeline/{Path(model.path).name}"
        self.batch_size = batch_size
        self.instructions = dict(instructions or {})

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", dtype=None, **kwargs) -> "MtebEncoder":
        return cls(EmbeddingModel.load(path, device=device, dtype=dtype), **kwargs)

    def side(self, text: str | None, image, prompt_type: Any = None) -> dict:
        """The record side of one row (module docstring)."""
        text = (text or "").strip()
        given = self.instructions.get(str(getattr(prompt_type, "value", prompt_type) or ""))
        if image is not None:
            return make_side(text, given or (IMAGE_WITH_TEXT if text else IMAGE_ALONE), has_image=True)
        if not text:
            raise ValueError("a row with neither text nor image")
        return make_side(text, given or "")

    def encode(self, inputs: Iterable[Mapping[str, list]], *, task_metadata: Any = None, hf_split: str = "",
               hf_subset: str = "", prompt_type: Any = None, **kwargs) -> np.ndarray:
        """float32 [rows, dim] embeddings of every row of every batch of `inputs`, in order."""
        sides, images = [], []
        for batch in inputs:
            texts, pics = batch.get("text"), batch.get("image")
            rows = len(texts if texts is not None else pics if pics is not None else [])
            for i in range(rows):
                image = open_image(pics[i]) if pics is not None and pics[i] is not None else None
                sides.append(self.side(texts[i] if texts is not None else None, image, prompt_type))
                images.append(image)
        if not sides:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        return self.model.encode(sides, images, batch_size=self.batch_size)

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """Cosine similarities [n1, n2] (the rows are unit vectors)."""
        a, b = np.atleast_2d(np.asarray(embeddings1)), np.atleast_2d(np.asarray(embeddings2))
        return _unit(a) @ _unit(b).T

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        a, b = np.atleast_2d(np.asarray(embeddings1)), np.atleast_2d(np.asarray(embeddings2))
        return (_unit(a) * _unit(b)).sum(axis=1)

    @property
    def mteb_model_meta(self):
        """mteb's `ModelMeta` of this model (needs mteb installed)."""
        from mteb.models import ModelMeta

        info = dict(getattr(self.model.backbone, "info", None) or {})
        return ModelMeta(loader=None, name=self.name, revision=self.model.fingerprint[:12], release_date=None,
                         languages=None, n_parameters=info.get("parameters"), memory_usage_mb=None,
                         max_tokens=self.model.collation.get("max_text_tokens"), embed_dim=self.model.dim,
                         license=None, open_weights=True, public_training_code=None,
                         public_training_data=None, framework=["PyTorch"], similarity_fn_name="cosine",
                         use_instructions=True, training_datasets=None, modalities=["text", "image"])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
