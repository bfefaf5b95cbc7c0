"""The plain training loop that `benchmarks/gpu_train.py` compares the trainer's loop with: what a user
writes with transformers + peft and nothing of this project's speed work.

    result = run_plain(settings, base, shards, id_batches=None)       # one call = one timed run

Data: every pair of the shards read with `tarfile` into memory (`ShardPairs`), batches drawn by a
`torch.utils.data.DataLoader` (workers, pinned memory) with a collate that renders each side's text
as the trainer does (`render_text`: the same tokens) and calls the model's own processor
(`processor(text=..., images=..., padding=True)`, transformers' image processor). Given `id_batches`
(the pair ids of each of the trainer's steps), the loop trains on exactly those batches; otherwise on
a seeded shuffle of the shards.

Model: the base folder's model in bf16 on the device, peft LoRA of the given rank, alpha and dropout
on the same target modules as the trainer (`backbone.lora_targets`), adapters in bf16. Step:
`model(**inputs, output_hidden_states=True)` for the queries and then the targets, the last layer's
hidden state at the last real token (`last_token_pool`), L2-normalised, InfoNCE over the in-batch
targets at the temperature, backward, gradient norm clipped, AdamW (torch's, one parameter group,
no weight decay) with transformers' linear decay schedule (no warm-up: the benchmark's setting).
With `gc_chunk` > 0 the step is GradCache in VLM2Vec's style, eager: a no-grad pass over the chunks
for the representations, the loss and its gradient with respect to them, then per chunk a forward
with grad and a backward from the cached gradient.

Timed as the trainer's loop logs itself: pairs/s of a step is its pairs over the host time since the
last step ended (the first step's since the loop started), data waits included; `loader_wait_s` is
the time spent in the DataLoader's `next` per step.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import get_linear_schedule_with_warmup

from trainer.backbone.families import load_backbone
from trainer.model.inputs import PromptFormat, render_text
from trainer.model.pooling import last_token_pool

SIDES = ("query", "target")


@dataclass(frozen=True)
class PlainSettings:
    """What one plain run trains with (the trainer run it is compared with uses the same values)."""

    steps: int
    batch: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    learning_rate: float
    temperature: float
    max_grad_norm: float
    seed: int
    workers: int
    bf16: bool
    gc_chunk: int = 0  # GradCache chunk (0: off)


class ShardPairs(Dataset):
    """Every sample of the shards listed in ``<shards>/index.json``: (record, images by side)."""

    def __init__(self, shards: Path):
        index = json.loads((Path(shards) / "index.json").read_text(encoding="utf-8"))
        self.samples: list[dict[str, bytes]] = []
        for entry in index["shards"]:
            with tarfile.open(Path(shards) / entry["path"]) as tar:
                groups: dict[str, dict[str, bytes]] = {}
                for member in tar.getmembers():
                    if member.isfile():  # webdataset's grouping: key up to the first dot of the file name
                        folder, _, name = member.name.rpartition("/")
                        key, _, ext = name.partition(".")
                        groups.setdefault(f"{folder}/{key}", {})[ext.lower()] = tar.extractfile(member).read()
            self.samples += [g for g in groups.values() if "json" in g]
        self.index_of = {json.loads(s["json"])["id"]: i for i, s in enumerate(self.samples)}
        videos = sorted(d for d, info in index.get("datasets", {}).items() if info.get("videos"))
        if videos:  # its collate passes pictures as images; a video side would lose its frames
            raise ValueError(f"{shards}: video pairs in {', '.join(videos)}; the plain loop takes image and text "
                             "pairs: make the shards with data.v2_train_sets: [] (or without the video sets)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        sample = self.samples[i]
        record = json.loads(sample["json"])
        images = {}
        for side in SIDES:
            ref = record[side].get("image")
            images[side] = (Image.open(io.BytesIO(sample[str(ref["member"]).lower()])).convert("RGB")
                            if ref else None)
        return record, images


def collate(items: list[tuple[dict, dict]], fmt: PromptFormat, processor, chunk: int) -> dict[str, list[dict]]:
    """Queries and targets of a batch, each as a list of processor outputs of `chunk` rows (one when 0)."""
    chunk = chunk or len(items)
    out: dict[str, list[dict]] = {side: [] for side in SIDES}
    for start in range(0, len(items), chunk):
        rows = items[start:start + chunk]
        for side in SIDES:
            texts = [render_text(r[side], fmt, has_image=im[side] is not None) for r, im in rows]
            pics = [im[side] for _, im in rows if im[side] is not None]
            enc = processor(text=texts, images=pics or None, padding=True, return_tensors="pt")
            out[side].append({k: v for k, v in enc.items() if isinstance(v, torch.Tensor)})
    out["pairs"] = len(items)
    return out


def batch_order(dataset: ShardPairs, settings: PlainSettings, id_batches: list[list] | None) -> list[list[int]]:
    """The index lists of the steps: the trainer's batches (by pair id) or a seeded shuffle."""
    if id_batches is not None:
        return [[dataset.index_of[i] for i in ids] for ids in id_batches[:settings.steps]]
    generator = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    while len(order) < settings.steps * settings.batch:
        order += torch.randperm(len(dataset), generator=generator).tolist()
    return [order[s * settings.batch:(s + 1) * settings.batch] for s in range(settings.steps)]


def lora_model(base: Path, settings: PlainSettings, device: torch.device):
    """(backbone, peft model) of the base folder with LoRA per the settings, on `device`."""
    from peft import LoraConfig, get_peft_model

    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    backbone = load_backbone(str(base), torch_dtype=dtype)
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=backbone.lora_targets, bias="none")
    model = get_peft_model(backbone.model.to(device), config, autocast_adapter_dtype=False)
    return backbone, model


def embed(model, inputs: dict) -> torch.Tensor:
    """L2-normalised last-token embeddings from the plain forward (LM head included)."""
    out = model(**inputs, output_hidden_states=True)
    return F.normalize(last_token_pool(out.hidden_states[-1], inputs["attention_mask"]), dim=-1)


def info_nce(q: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = q.float() @ t.float().T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def plain_step(model, batch: dict, temperature: float) -> torch.Tensor:
    """Forward of queries and targets with grad, InfoNCE, backward; the loss."""
    q, t = embed(model, batch["query"][0]), embed(model, batch["target"][0])
    loss = info_nce(q, t, temperature)
    loss.backward()
    return loss


def gradcache_step(model, batch: dict, temperature: float) -> torch.Tensor:
    """VLM2Vec's GradCache: representations without grad, the loss's gradient with respect to them,
    then every chunk again with grad and a backward from its slice of that gradient; the loss."""
    reps = {}
    with torch.no_grad():
        for side in SIDES:
            reps[side] = torch.cat([embed(model, c) for c in batch[side]]).float().requires_grad_()
    loss = info_nce(reps["query"], reps["target"], temperature)
    loss.backward()
    for side in SIDES:
        sizes = [len(c["input_ids"]) for c in batch[side]]
        for chunk, grad in zip(batch[side], reps[side].grad.split(sizes)):
            embed(model, chunk).float().backward(gradient=grad)
    return loss.detach()


def to_device(batch: dict, device: torch.device) -> dict:
    return {side: [{k: v.to(device, non_blocking=True) for k, v in c.items()} for c in batch[side]]
            for side in SIDES} | {"pairs": batch["pairs"]}


def loader(dataset: ShardPairs, order: list[list[int]], backbone, settings: PlainSettings,
           pin: bool) -> Iterator[dict]:
    kwargs = dict(prefetch_factor=2) if settings.workers > 0 else {}
    fmt = PromptFormat(backbone.family, backbone.kind, backbone.image_token)  # the workers get no model
    return iter(DataLoader(dataset, batch_sampler=order, num_workers=settings.workers, pin_memory=pin,
                           collate_fn=partial(collate, fmt=fmt, processor=backbone.processor, chunk=settings.gc_chunk),
                           **kwargs))


def run_plain(settings: PlainSettings, base: Path, shards: Path, device: torch.device,
              id_batches: list[list] | None = None) -> dict:
    """Train `settings.steps` plain steps; per step: loss, pairs/s, loader wait (see the module docstring)."""
    torch.manual_seed(settings.seed)
    dataset = ShardPairs(shards)
    backbone, model = lora_model(base, settings, device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, settings.steps)
    step_fn = gradcache_step if settings.gc_chunk else plain_step
    batches = loader(dataset, batch_order(dataset, settings, id_batches), backbone, settings, device.type == "cuda")
    losses, rates, waits = [], [], []
    tick = time.perf_counter()
    for _ in range(settings.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        waits.append(time.perf_counter() - t0)
        loss = step_fn(model, to_device(batch, device), settings.temperature)
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))  # the device sync the trainer's loop also has
        now = time.perf_counter()
        rates.append(batch["pairs"] / (now - tick))
        tick = now
    del batches
    return dict(losses=losses, rates=rates, waits=waits,
                weights={n: p.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad})
