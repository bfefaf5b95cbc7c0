"""Streaming training data: WebDataset shards -> model-ready contrastive batches, resumable exactly.

The stream is a pure function of (params, seed, position); nothing depends on timing, on the
number of DataLoader workers, or on how often the run was interrupted.

How a global step is built
--------------------------
1. **Plan** (`batch_plan`): for global step ``s`` an RNG seeded with ``(seed, s)`` assigns a dataset
   to every position of the global batch: one draw per position, or one per sub-batch of
   ``homogeneous_batch`` consecutive positions (VLM2Vec-V2's interleaved sub-batches). Datasets are
   drawn with the mixture probabilities (`mixture_probs`: "proportional" to sample counts, or a
   ``{dataset: weight}`` dict). Rank ``r`` owns positions ``[r*b, (r+1)*b)``, ``b = batch/world``,
   so every rank yields exactly one batch of the same size for every step (no rank waits in a
   collective that another rank never enters).
2. **Slots**: a rank's steps are spread over ``slots_per_rank`` data slots, step ``s`` -> slot
   ``s % slots_per_rank`` (global slot id ``rank*slots_per_rank + s % slots_per_rank``). Each slot
   owns, per dataset, an independent infinite sample stream (`DatasetStream`). A DataLoader worker
   serves the steps ``start + w, start + w + W, ...``; ``slots_per_rank`` must be a multiple of the
   worker count, so each slot is only ever touched by one worker, and 0, 1 or 2 workers give the
   very same batches.
3. **Per-slot dataset streams**: epoch ``e`` of dataset ``d`` permutes the dataset's shards with
   RNG ``(seed, d, e)`` (same on all ranks), and slot ``k`` of ``K = world*slots_per_rank`` reads
   the k-th of K contiguous ranges of the epoch's sequence of shards, so the slots' shares differ by
   at most one sample, whatever the shard sizes (every slot draws at the same rate, so dealing whole
   shards of unequal sizes would cycle small shares faster: duplicates within an epoch's worth of
   steps, and samples never drawn), and a slot streams through about ``n_shards/K + 1`` tars per
   epoch, not all of them. Within an epoch no two slots read the same
   sample, and every slot gets data unless the dataset has fewer samples than slots: such a slot
   reads the whole dataset for that epoch instead (resampling; logged once).
   A slot reads its parts sequentially with webdataset's tar iterator and shuffles in windows:
   ``window`` consecutive raw (undecoded) samples are emitted in a permutation seeded by
   ``(seed, d, e, slot, window index)``. ``window = max(min(shuffle_buffer, 16),
   ceil(shuffle_buffer * p_d))``, so a worker holds about ``shuffle_buffer`` raw samples across all
   datasets instead of ``shuffle_buffer`` per dataset. Epochs roll over forever.
4. **Decode and collate in the worker**: images are decoded with PIL (JPEGs much larger than
   ``image_max_pixels`` at a reduced DCT scale, see `decode_image`), a video side of an MMEB-V2
   pair to its list of frames (the Collator's video row), the local batch is collated
   with the model's `Collator` (in ``gc_chunk_size`` chunks when GradCache is on: "late
   processing"), and up to ``hard_negatives`` explicit negatives per query come from the record.
   With ``sub_batches: kind`` a side's rows are ordered by input kind (text, image, video), then
   size, before they are collated: without GradCache each kind present is its own chunk, so a
   batch's text rows are not padded to its images' length nor its image rows to its videos'; with
   GradCache the sorted rows are cut into the same ``gc_chunk_size`` chunks (the same chunk count on
   every rank), each of rows of about one length. The batch's ``order`` says which row each
   embedded row is (`trainer.train.losses.in_batch_order`).

Position and exact resume
-------------------------
A slot's position is ``{dataset: [epoch, offset]}`` (offset = samples taken from that epoch's
stream). Every batch carries its slot's position *after* the batch; the training loop keeps the
latest one per slot (`StreamPosition.update`) and saves it in checkpoints. Restoring skips whole
shards by their index counts, and inside a shard reads only member names (image bytes of skipped
samples are never kept, nothing is decoded), then re-reads the current shuffle window. A sample
whose JSON or image cannot be decoded, or that the collator cannot take (`Collator.validate`), is
quarantined (logged, counted in the batch as ``quarantined``) and replaced by the slot's next
sample; that replacement also advances the saved offset, so resume stays exact. Resuming with a
different world size changes the slot layout and is not exact (the loop warns): every dataset
restarts at the epoch after the latest one any old slot reached (`StreamPosition.fresh_epochs`).
The training loop sets ``slots_per_rank = max(1, num_workers)`` for a fresh run and fingerprints it,
so a checkpoint is resumed only with the same number of slots per rank.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from pipelines import digests
from pipelines import shard as shard_format
from pipelines.images import max_pixels_size, side_cut
from pipelines.params import SUB_BATCHES, Train
from trainer.model.inputs import input_kind, size_order

log = logging.getLogger(__name__)

PLAN_TAG = 0x504C414E  # "PLAN": keeps the plan RNG apart from the shard/window RNGs
MIN_WINDOW = 16
MAX_CONSECUTIVE_BAD = 100


# --- shard index ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    path: str  # absolute path of the tar
    dataset: str
    samples: int


def read_shards(shard_dir: str | Path) -> list[Shard]:
    """The shards listed in ``<shard_dir>/index.json``, in index order (paths made absolute).

    Raises FileNotFoundError when the index or a listed tar is missing, ValueError on a bad index,
    `pipelines.digests.IntegrityError` naming a tar whose size or sha256 is not the index's (bytes
    changed after the shard stage wrote them: training on them would quarantine or misread samples).
    """
    shard_dir = Path(shard_dir)
    if not (shard_dir / shard_format.INDEX_FILE).is_file():
        raise FileNotFoundError(f"{shard_dir}/{shard_format.INDEX_FILE} not found (run the shard stage)")
    index = shard_format.read_index(shard_dir)
    out = []
    for entry in index["shards"]:
        path = shard_dir / entry["path"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed in {shard_dir}/index.json but missing")
        digests.check_file(path, entry["sha256"], entry["bytes"])
        if int(entry["samples"]) < 0:
            raise ValueError(f"{path}: negative sample count in index.json")
        out.append(Shard(str(path.resolve()), entry["dataset"], int(entry["samples"])))
    if not out:
        raise ValueError(f"{shard_dir}/index.json lists no shards")
    return out


def _index_params(shard_dir: str | Path) -> dict[str, Any]:
    """The shard-stage params recorded in the shards' index.json."""
    return shard_format.read_index(Path(shard_dir)).get("params", {})


def check_shard_resolution(shard_dir: str | Path, image_max_pixels: int | None) -> None:
    """Refuse shards whose images were pre-scaled below the training resolution.

    The params contract refuses such params before any stage runs; this checks the shards actually
    read (made by other params, or pointed to with ``--shards``), from the params their index.json
    records: images pre-scaled to fewer pixels than ``image_max_pixels``, or elongated images whose
    longer side the side cap cut below it (`pipelines.images.side_cut`). Raises ValueError saying
    which param to change."""
    recorded = _index_params(shard_dir)
    made = recorded.get("max_image_pixels")
    if made is not None and (image_max_pixels is None or int(image_max_pixels) > int(made)):
        raise ValueError(
            f"the shards under {shard_dir} hold images of at most {made} pixels (shard.image_max_pixels) but "
            f"train.image_max_pixels is {image_max_pixels}: re-run the shard stage with "
            f"shard.image_max_pixels: train")
    if cut := side_cut(recorded.get("max_image_side"), image_max_pixels):
        raise ValueError(f"the shards under {shard_dir}: {cut}")


def shard_grid_mismatch(shard_dir: str | Path, image_processor) -> str | None:
    """Why the shards' image sizes do not suit `image_processor`, or None when they do.

    The shard stage snaps image sides to multiples of ``shard.image_size_multiple`` (recorded in
    index.json) so that a Qwen2-VL-style processor, whose sizes are multiples of its patch size times
    its merge size, resizes nothing. A multiple that is not a multiple of that factor (or a processor
    without such a grid) is not wrong, only slow: every image is resized again in the loader."""
    multiple = _index_params(shard_dir).get("image_size_multiple")
    if multiple is None:
        return None
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    if not isinstance(patch, int) or not isinstance(merge, int):
        return (f"the shards under {shard_dir} were snapped to multiples of {multiple} px "
                f"(shard.image_size_multiple) for a patch-grid processor, but this backbone's "
                f"{type(image_processor).__name__} has no patch_size x merge_size grid; set "
                f"shard.image_size_multiple: null to keep the images' own sizes")
    if int(multiple) % (patch * merge):
        return (f"the shards under {shard_dir} were snapped to multiples of {multiple} px "
                f"(shard.image_size_multiple) but this backbone's processor uses {patch * merge} "
                f"(patch {patch} x merge {merge}): every image is resized again while loading; set "
                f"shard.image_size_multiple: {patch * merge}")
    return None


def mixture_probs(shards: list[Shard], mixture: str | Mapping[str, float]) -> dict[str, float]:
    """Sampling probability per dataset (sorted by name, zero-probability datasets left out).

    ``"proportional"``: by sample count (one pass over the union, in expectation). A dict gives
    relative weights (``train.mixture``, each > 0: the params contract checks them); it must name
    only datasets present in the shards and holding samples; datasets it leaves out are not sampled.
    Raises ValueError when it names other datasets, or when no dataset has samples.
    """
    counts: dict[str, int] = {}
    for s in shards:
        counts[s.dataset] = counts.get(s.dataset, 0) + s.samples
    if mixture == "proportional":
        weights = {d: float(n) for d, n in counts.items()}
    else:
        unknown = sorted(set(mixture) - set(counts))
        if unknown:
            raise ValueError(f"train.mixture names datasets not in the shards: {unknown}; have {sorted(counts)}")
        weights = {d: float(w) for d, w in mixture.items()}
        empty = sorted(d for d, w in weights.items() if w > 0 and counts[d] == 0)
        if empty:
            raise ValueError(f"train.mixture gives weight to datasets without samples: {empty}")
        left_out = sorted(set(counts) - set(mixture))
        if left_out:
            log.info("train.mixture leaves out %d dataset(s): %s", len(left_out), left_out)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("train.mixture: every dataset has weight 0 (or no samples)")
    return {d: weights[d] / total for d in sorted(weights) if weights[d] > 0}


def batch_plan(seed: int, step: int, datasets: list[str], probs: list[float], global_batch: int,
               homogeneous_batch: int = 0) -> list[str]:
    """The dataset of every position of global step ``step``'s batch (length ``global_batch``).

    Deterministic in its arguments. With ``homogeneous_batch = h > 0`` the batch is made of
    ``global_batch / h`` runs of ``h`` positions, each run from one dataset.
    """
    rng = np.random.default_rng([seed, PLAN_TAG, step])
    h = homogeneous_batch if homogeneous_batch > 0 else 1
    picks = rng.choice(len(datasets), size=global_batch // h, p=probs)
    return [datasets[i] for i in picks for _ in range(h)]


def _dataset_seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


# --- one dataset's stream in one slot ---------------------------------------------------------
@dataclass(frozen=True)
class _Part:
    """The samples ``start <= i < stop`` (in tar order) of one shard; ``stop`` None: to its end."""

    shard: Shard
    start: int = 0
    stop: int | None = None

    @property
    def end(self) -> int:
        return self.shard.samples if self.stop is None else self.stop

    @property
    def samples(self) -> int:
        return self.end - self.start


def _read_part(part: _Part, skip: int = 0) -> Iterator[dict]:
    """Raw samples (webdataset dicts: ``__key__``, ``json``, image members as bytes) of one part,
    in tar order, after skipping the part's first ``skip`` samples. Members of samples outside the
    part or skipped are not kept (tarfile streams past them); nothing is decoded here. A part that
    ends before its shard does stops reading there; one that reads to the end checks the shard's
    sample count against index.json."""
    state = {"key": None, "index": -1}
    first, end = part.start + skip, part.end

    def wanted(fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is None:
            return False
        if key != state["key"]:
            state["key"], state["index"] = key, state["index"] + 1
        return first <= state["index"] < end

    to_the_end = end == part.shard.samples
    with open(part.shard.path, "rb") as stream:
        files = tar_file_expander([{"url": part.shard.path, "stream": stream}], select_files=wanted)
        for n, sample in enumerate(group_by_keys(files), start=1):
            yield sample
            if n == end - first and not to_the_end:
                return  # the rest of the shard belongs to other slots
    expected = part.shard.samples
    if state["index"] + 1 != expected:
        raise ValueError(f"{part.shard.path}: holds {state['index'] + 1} samples, index.json says {expected}")


class DatasetStream:
    """The infinite sample stream of one dataset in one slot, positioned at (epoch, offset).

    ``epoch`` and ``offset`` always describe the next sample to be yielded; reading them between
    two ``next()`` calls gives a position from which a new DatasetStream yields exactly the same
    continuation.
    """

    def __init__(self, dataset: str, shards: list[Shard], *, seed: int, slot: int, num_slots: int,
                 window: int, epoch: int = 0, offset: int = 0):
        self.dataset, self.shards = dataset, sorted(shards, key=lambda s: s.path)
        self.seed, self.slot, self.num_slots = seed, slot, num_slots
        self.window = max(1, window)
        self.epoch, self.offset = epoch, offset
        self._warned_resample = False
        self._it = self._generate()

    def parts(self, epoch: int) -> list[_Part]:
        """The parts this slot reads in ``epoch`` (see the module docstring)."""
        n, k = len(self.shards), self.num_slots
        order = np.random.default_rng([self.seed, _dataset_seed(self.dataset), epoch]).permutation(n)
        total = sum(shard.samples for shard in self.shards)  # slot k: the k-th contiguous range
        lo, hi = self.slot * total // k, (self.slot + 1) * total // k
        mine, offset = [], 0
        for j in order:
            shard = self.shards[j]
            a, b = max(lo, offset), min(hi, offset + shard.samples)
            if a < b:
                mine.append(_Part(shard, a - offset, b - offset))
            offset += shard.samples
        if sum(u.samples for u in mine) == 0:
            if not self._warned_resample:
                log.warning("dataset %s: slot %d has no samples of its own in epoch %d (%d samples for %d "
                            "slots); it reads the whole dataset instead", self.dataset, self.slot, epoch,
                            total, self.num_slots)
                self._warned_resample = True
            mine = [_Part(self.shards[j]) for j in order]
        return mine

    def _samples_from(self, parts: list[_Part], start: int) -> Iterator[dict]:
        for part in parts:
            if start >= part.samples:
                start -= part.samples  # skipped by its count: the tar is not even opened
                continue
            yield from _read_part(part, skip=start)
            start = 0

    def _generate(self) -> Iterator[dict]:
        while True:
            parts = self.parts(self.epoch)
            length = sum(p.samples for p in parts)
            if length == 0:
                raise ValueError(f"dataset {self.dataset} has no samples")
            if self.offset >= length:
                self.epoch, self.offset = self.epoch + 1, 0
                continue
            first_window = self.offset // self.window
            raw = self._samples_from(parts, first_window * self.window)
            for w in range(first_window, math.ceil(length / self.window)):
                start = w * self.window
                buffer = [next(raw) for _ in range(min(self.window, length - start))]
                order = np.random.default_rng(
                    [self.seed, _dataset_seed(self.dataset), self.epoch, self.slot, w]).permutation(len(buffer))
                for i in range(self.offset - start, len(buffer)):
                    self.offset += 1
                    yield buffer[order[i]]
            self.epoch, self.offset = self.epoch + 1, 0

    def __next__(self) -> dict:
        return next(self._it)

    def __iter__(self):
        return self


# --- position ---------------------------------------------------------------------------------
@dataclass
class StreamPosition:
    """Where the stream stands: the next global step and, per global slot id, per dataset,
    ``[epoch, offset]``. JSON-serialisable via ``to_dict``/``from_dict``."""

    step: int = 0
    slots_per_rank: int = 1
    world_size: int = 1
    slots: dict[int, dict[str, list[int]]] = field(default_factory=dict)

    def update(self, batch: Mapping[str, Any]) -> None:
        """Record a batch the loop has consumed (its step must be the next one)."""
        if int(batch["step"]) != self.step:
            raise ValueError(f"stream out of order: got step {batch['step']}, expected {self.step}")
        self.slots[int(batch["slot"])] = {d: list(v) for d, v in batch["position"].items()}
        self.step += 1

    def merge(self, other: "StreamPosition") -> None:
        """Add the slots of another rank (same step)."""
        if other.step != self.step:
            raise ValueError(f"cannot merge positions of steps {self.step} and {other.step}")
        self.slots.update(other.slots)

    def fresh_epochs(self, world_size: int, slots_per_rank: int) -> "StreamPosition":
        """This position for another slot layout (a resume on another number of ranks). The old slots'
        ranges do not map onto the new ones, so every dataset restarts at the epoch after the latest
        one any old slot reached: the rest of the current epoch is skipped, where a plain restart
        would replay epoch 0 from its start, the very samples the run began with."""
        latest: dict[str, int] = {}
        for datasets in self.slots.values():
            for dataset, (epoch, _) in datasets.items():
                latest[dataset] = max(latest.get(dataset, 0), int(epoch) + 1)
        start = {dataset: [epoch, 0] for dataset, epoch in sorted(latest.items())}
        return StreamPosition(step=self.step, slots_per_rank=slots_per_rank, world_size=world_size,
                              slots={slot: {d: list(v) for d, v in start.items()}
                                     for slot in range(world_size * slots_per_rank)})

    def to_dict(self) -> dict:
        return {"step": self.step, "slots_per_rank": self.slots_per_rank, "world_size": self.world_size,
                "slots": {str(k): v for k, v in sorted(self.slots.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StreamPosition":
        return cls(step=int(d["step"]), slots_per_rank=int(d["slots_per_rank"]),
                   world_size=int(d["world_size"]),
                   slots={int(k): {ds: [int(e), int(o)] for ds, (e, o) in v.items()}
                          for k, v in d["slots"].items()})


# --- decoding ---------------------------------------------------------------------------------
class BadSample(ValueError):
    """A sample whose record or image cannot be decoded, or that the collator refuses (quarantined by
    the stream)."""


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image (fully loaded). Raises BadSample.

    With ``max_pixels``, a JPEG larger than that is decoded at a reduced DCT scale (PIL ``draft``:
    1/2, 1/4 or 1/8, never below the size that keeps ``max_pixels``) and resized here to the size
    the Collator gives the full image (`pipelines.images.max_pixels_size` of the original size, not
    of the drafted one, which rounds up); this is several times faster for photos much larger than
    the model input, and the pixels differ from decode-then-resize only by the downscaling filter."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            drafted = bool(max_pixels and img.format == "JPEG" and w * h > max_pixels)
            if drafted:
                scale = math.sqrt(max_pixels / (w * h))
                img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            img.load()
            out = img.convert("RGB")
        if drafted and out.size != (size := max_pixels_size(w, h, max_pixels)):
            out = out.resize(size, Image.BICUBIC)
        return out
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        raise BadSample(f"undecodable image: {type(exc).__name__}: {exc}") from exc


def used_sides(record: Mapping[str, Any], negatives: int | None = None) -> list[tuple[str, Any]]:
    """(name, side) of a record's sides that a batch uses: "query", "target", then "neg0", "neg1", ...
    for the first ``negatives`` negatives (None = all)."""
    sides = [("query", record.get("query")), ("target", record.get("target"))]
    return sides + [(f"neg{i}", s) for i, s in enumerate((record.get("negatives") or [])[:negatives])]


def decode_sample(raw: Mapping[str, Any], max_pixels: int | None = None,
                  negatives: int | None = None) -> tuple[dict, dict[str, Image.Image | list[Image.Image] | None]]:
    """(record, images by side name) of a raw webdataset sample. Side names: "query", "target",
    "neg0", "neg1", ...; a side without an image maps to None, a video side (an MMEB-V2 record's
    V2_SIDE with `video`) to its frames, a list of PIL images in temporal order, which the Collator
    takes as a video row. Raises BadSample.
    ``max_pixels``: see `decode_image`. ``negatives``: decode only the first that many negatives
    (those `train.hard_negatives` uses; None = all): a bad negative that is never used costs
    neither its decoding nor its pair."""
    try:
        record = json.loads(raw["json"])
    except Exception as exc:
        raise BadSample(f"unreadable record JSON: {exc}") from exc
    images: dict[str, Image.Image | list[Image.Image] | None] = {}
    for name, side in used_sides(record, negatives):
        if not isinstance(side, dict):
            raise BadSample(f"record {record.get('id')}: side {name} is missing")
        video, ref = side.get("video"), side.get("image")
        if video:
            images[name] = [_decode_member(raw, frame, record, name, max_pixels) for frame in video]
        elif ref is None:
            images[name] = None
        else:
            images[name] = _decode_member(raw, ref, record, name, max_pixels)
    return record, images


def _decode_member(raw: Mapping[str, Any], ref: Mapping[str, Any], record: dict, name: str,
                   max_pixels: int | None) -> Image.Image:
    member = str(ref.get("member", "")).lower()
    if member not in raw:
        raise BadSample(f"record {record.get('id')}: image member {member!r} of {name} not in the sample")
    return decode_image(raw[member], max_pixels)


# --- the IterableDataset ----------------------------------------------------------------------
@dataclass(frozen=True)
class StreamConfig:
    seed: int
    global_batch: int
    world_size: int = 1
    rank: int = 0
    slots_per_rank: int = 1
    homogeneous_batch: int = 0
    shuffle_buffer: int = 1000
    hard_negatives: int = 0
    gc_chunk_size: int = 0
    image_max_pixels: int | None = None  # decode hint only (see decode_image); the Collator resizes
    sub_batches: str = "none"  # kind: each side's rows collated by input kind (`side_chunks`)

    @classmethod
    def from_params(cls, train: Train, *, world_size: int, rank: int, slots_per_rank: int) -> "StreamConfig":
        return cls(seed=train.seed, global_batch=train.batch_size, world_size=world_size, rank=rank,
                   slots_per_rank=slots_per_rank, homogeneous_batch=train.homogeneous_batch,
                   shuffle_buffer=train.shuffle_buffer, hard_negatives=train.hard_negatives,
                   gc_chunk_size=train.gc_chunk_size, image_max_pixels=train.image_max_pixels,
                   sub_batches=train.sub_batches_in_effect)

    def validate(self) -> None:
        """The checks that depend on the run (its ranks and data slots); the params contract
        (`pipelines.params.Train`) has checked the values that come from params.yaml."""
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"bad rank {self.rank} / world size {self.world_size}")
        if self.global_batch < 1 or self.global_batch % self.world_size:
            raise ValueError(f"train.batch_size={self.global_batch} must be a positive multiple of the "
                             f"world size {self.world_size}")
        if self.slots_per_rank < 1:
            raise ValueError("slots_per_rank must be >= 1")
        if self.sub_batches not in SUB_BATCHES:
            raise ValueError(f"sub_batches must be one of {SUB_BATCHES}, got {self.sub_batches!r}")

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size


def _pictures(image) -> int:
    """Pictures a side gives the model: its video's frames, its image, or none."""
    return len(image) if isinstance(image, list) else int(image is not None)


def _chunks(items: list, size: int) -> list[list]:
    if size <= 0 or size >= len(items):
        return [items]
    return [items[i:i + size] for i in range(0, len(items), size)]


def side_chunks(sides: list[Mapping[str, Any]], images: list, chunk: int, sub_batches: str) -> list[list[int]]:
    """The rows (indices into a side's rows) of each chunk the side is collated in.

    ``none``: the rows in order, in ``chunk``-row chunks (GradCache) or one chunk. ``kind``: the rows
    in `size_order` (by `input_kind`, then `input_size`, as evaluation orders its items), then cut
    into ``chunk``-row chunks (GradCache: as many chunks as unsorted, so the ranks agree on the
    count, each of rows of about one length), or without GradCache one chunk per kind present.
    """
    if sub_batches == "none":
        return _chunks(list(range(len(images))), chunk)
    rows = size_order(sides, images)
    if chunk > 0:
        return _chunks(rows, chunk)
    kinds = [input_kind(images[i]) for i in rows]
    cuts = [0] + [j for j in range(1, len(rows)) if kinds[j] != kinds[j - 1]] + [len(rows)]
    return [rows[a:b] for a, b in zip(cuts, cuts[1:])]


def collate_chunks(collator: Callable, sides: list, images: list, chunk: int,
                   sub_batches: str) -> tuple[list[dict], torch.Tensor]:
    """A side's collated chunks (`side_chunks`) and its ``order``: the batch row of each embedded
    row, the chunks' rows concatenated (`trainer.train.losses.in_batch_order` undoes it)."""
    groups = side_chunks(sides, images, chunk, sub_batches)
    chunks = [collator([sides[i] for i in g], [images[i] for i in g]) for g in groups]
    return chunks, torch.tensor([i for g in groups for i in g], dtype=torch.long)


class ContrastiveStream(IterableDataset):
    """Infinite stream of this rank's collated batches, one per global step from ``position.step``.

    Each item is a dict:
        step, slot            the global step and the global slot id that produced it
        query, target         lists of collated chunks (one chunk unless gc_chunk_size > 0); chunk c
                              of query and target hold the same pairs
        negatives             None, or chunks of the query-major flattened hard negatives
                              (``hard_negatives`` per query, chunked by ``gc_chunk_size * K``)
        order                 None (every side's chunks hold its rows in batch order), or with
                              ``sub_batches: kind`` {"query", "target", "negatives"}: per side the
                              batch row of each embedded row (`in_batch_order`; negatives: None
                              without hard negatives)
        negative_mask         None, or a bool [pairs, K] tensor: False for a padded slot (`pick_negatives`)
        ids, datasets         record id and dataset of each pair, in batch order
        position              {dataset: [epoch, offset]} of the slot after this batch
        pairs, images         counts (throughput; a video counts its frames)
        tokens, positions     the model's real tokens and its token positions, padding included,
                              over every chunk (0 for a collator without attention masks)
        quarantined           samples replaced because they could not be decoded or collated
        padded_negatives      negative slots padded (records with fewer than K negatives), masked out

    ``collator(sides, images)`` turns record sides and PIL images (or None) into tensors; it runs in
    the DataLoader worker and must be picklable.
    """

    def __init__(self, shards: list[Shard], config: StreamConfig, collator: Callable,
                 mixture: str | Mapping[str, float] = "proportional",
                 position: StreamPosition | None = None):
        super().__init__()
        config.validate()
        self.config, self.collator = config, collator
        self.probs = mixture_probs(shards, mixture)
        self.datasets = list(self.probs)
        self.by_dataset = {d: [s for s in shards if s.dataset == d] for d in self.datasets}
        self.windows = {d: max(min(config.shuffle_buffer, MIN_WINDOW), math.ceil(config.shuffle_buffer * p))
                        for d, p in self.probs.items()}
        self.position = position or StreamPosition(slots_per_rank=config.slots_per_rank,
                                                    world_size=config.world_size)
        if self.position.slots_per_rank != config.slots_per_rank:
            raise ValueError(f"position has {self.position.slots_per_rank} slots per rank, config "
                             f"{config.slots_per_rank}")

    def slot_of(self, step: int) -> int:
        return self.config.rank * self.config.slots_per_rank + step % self.config.slots_per_rank

    def local_plan(self, step: int) -> list[str]:
        c = self.config
        plan = batch_plan(c.seed, step, self.datasets, [self.probs[d] for d in self.datasets],
                          c.global_batch, c.homogeneous_batch)
        return plan[c.rank * c.local_batch:(c.rank + 1) * c.local_batch]

    def _stream(self, slot: int, dataset: str, streams: dict, start: StreamPosition) -> DatasetStream:
        key = (slot, dataset)
        if key not in streams:
            epoch, offset = start.slots.get(slot, {}).get(dataset, (0, 0))
            streams[key] = DatasetStream(
                dataset, self.by_dataset[dataset], seed=self.config.seed, slot=slot,
                num_slots=self.config.world_size * self.config.slots_per_rank,
                window=self.windows[dataset], epoch=epoch, offset=offset)
        return streams[key]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if self.config.slots_per_rank % workers:
            raise ValueError(f"{workers} DataLoader workers do not divide slots_per_rank="
                             f"{self.config.slots_per_rank}")
        start = copy.deepcopy(self.position)  # the loop keeps updating self.position in-process
        streams: dict[tuple[int, str], DatasetStream] = {}
        step = start.step + worker
        while True:
            yield self.make_batch(step, streams, start)
            step += workers

    def make_batch(self, step: int, streams: dict, start: StreamPosition) -> dict:
        """Build step ``step``'s batch from the slot streams in ``streams`` (created as needed from
        their positions in ``start``)."""
        slot = self.slot_of(step)
        records, images, quarantined = [], [], 0
        for dataset in self.local_plan(step):
            stream = self._stream(slot, dataset, streams, start)
            failures = 0
            while True:
                raw = next(stream)
                try:
                    record, imgs = decode_sample(raw, self.config.image_max_pixels, self.config.hard_negatives)
                    self._validate(record, imgs)
                    break
                except BadSample as exc:
                    quarantined += 1
                    failures += 1
                    log.warning("quarantined sample %s (%s): %s", raw.get("__key__"), raw.get("__url__"), exc)
                    if failures > max(MAX_CONSECUTIVE_BAD, sum(s.samples for s in self.by_dataset[dataset])):
                        raise ValueError(f"dataset {dataset}: {failures} samples in a row could not be decoded "
                                         f"or collated (last: {exc}); the shards look corrupt or do not suit "
                                         "this backbone") from exc
            records.append(record)
            images.append(imgs)
        batch = self.collate(records, images)
        position = {d: list(v) for d, v in start.slots.get(slot, {}).items()}
        position.update({d: [s.epoch, s.offset] for (k, d), s in streams.items() if k == slot})
        batch.update(step=step, slot=slot, quarantined=quarantined, position=dict(sorted(position.items())))
        return batch

    def _validate(self, record: dict, images: dict) -> None:
        """BadSample when the collator (if it can tell, `Collator.validate`) could not collate one
        of the record's sides that the batch uses."""
        validate = getattr(self.collator, "validate", None)
        if validate is None:
            return
        named = used_sides(record, self.config.hard_negatives)  # the sides decode_sample decoded
        try:
            validate([side for _, side in named], [images[name] for name, _ in named])
        except ValueError as exc:
            raise BadSample(f"record {record.get('id')}: {exc}") from exc

    def collate(self, records: list[dict], images: list[dict]) -> dict:
        c, k = self.config, self.config.hard_negatives
        chunk = c.gc_chunk_size
        query_images = [im["query"] for im in images]
        target_images = [im["target"] for im in images]
        query, query_order = self.collate_side([r["query"] for r in records], query_images, chunk)
        target, target_order = self.collate_side([r["target"] for r in records], target_images, chunk)
        batch = {
            "query": query, "target": target,
            "negatives": None, "negative_mask": None, "padded_negatives": 0,
            "order": None,
            "ids": [r["id"] for r in records], "datasets": [r["dataset"] for r in records],
            "pairs": len(records),
        }
        n_images = sum(map(_pictures, query_images + target_images))
        negatives_order = None
        if k > 0:
            neg_sides, neg_images, mask = self.pick_negatives(records, images)
            n_images += sum(map(_pictures, neg_images))
            batch["negatives"], negatives_order = self.collate_side(neg_sides, neg_images, chunk * k if chunk else 0)
            batch["negative_mask"] = torch.tensor(mask, dtype=torch.bool).view(len(records), k)
            batch["padded_negatives"] = len(mask) - sum(mask)
        if c.sub_batches != "none":
            batch["order"] = {"query": query_order, "target": target_order, "negatives": negatives_order}
        batch["images"] = n_images
        masks = [chunk["attention_mask"] for chunk in (*query, *target, *(batch["negatives"] or []))
                 if "attention_mask" in chunk]
        batch["tokens"] = sum(int(m.sum()) for m in masks)
        batch["positions"] = sum(m.numel() for m in masks)
        return batch

    def collate_side(self, sides: list[dict], images: list, chunk: int) -> tuple[list[dict], torch.Tensor]:
        """`collate_chunks` with this stream's collator and ``sub_batches``."""
        return collate_chunks(self.collator, sides, images, chunk, self.config.sub_batches)

    def pick_negatives(self, records: list[dict], images: list[dict]) -> tuple[list, list, list[bool]]:
        """``hard_negatives`` (K) negatives per query, query-major: the record's first K negatives;
        a record with fewer has its negatives repeated cyclically, one with none gets the targets of
        the following pairs of the batch (its own target when the rank holds a single pair). Those
        padded slots keep the batch's shape (equal on every rank for the gather) and are masked out of
        the loss (``negative_mask``), so what fills them does not matter.
        Returns (sides, images, per slot: True for a real negative, False for padding)."""
        k, n = self.config.hard_negatives, len(records)
        sides, imgs, real = [], [], []
        for i, (record, im) in enumerate(zip(records, images)):
            negs = record.get("negatives") or []
            for j in range(k):
                if negs:
                    sides.append(negs[j % len(negs)])
                    imgs.append(im[f"neg{j % len(negs)}"])
                    real.append(j < len(negs))
                else:
                    other = (i + 1 + j % (n - 1)) % n if n > 1 else i
                    sides.append(records[other]["target"])
                    imgs.append(images[other]["target"])
                    real.append(False)
        return sides, imgs, real


def make_loader(dataset: ContrastiveStream, num_workers: int, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over the stream (batching happens in the stream: ``batch_size=None``).

    Uses its own torch Generator so creating the loader never draws from the global RNG (which is
    part of the checkpointed training state). ``pin_memory`` for CUDA training.
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=2, persistent_workers=False)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed), **kwargs)
