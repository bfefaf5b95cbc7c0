"""The params contract: every key of params.yaml, its type, range and meaning, checked in one place.

    params = load()                 # params.yaml (or $VLM2VEC_PARAMS), every section, checked
    params.train.learning_rate      # a float > 0, finite
    Train.parse({...})              # one section from a mapping (tests, benchmarks)

One frozen dataclass per section of params.yaml (`SECTIONS`). Each field is declared with `key(spec)`:
its spec is the type and range of its values and a one-line meaning, and `docs/params.md` is generated
from these declarations (`python -m pipelines.params > docs/params.md`; a test keeps it current).
params.yaml holds every value: no key has a default here, so a missing key is an error, like an unknown
one (with a "did you mean" for a typo), a value of the wrong type or one out of range. Every problem is
reported at once, each naming its key, when a stage starts: every stage loads the whole file, so a
`dvc exp run -S train.learnng_rate=...` or an impossible combination of sections fails at the first
stage that runs, before any work.

Besides the checks of one key there are the checks of one section (`Section.problems`, e.g. a
homogeneous sub-batch must divide the batch) and across sections (`Params.problems`): the image
resolution is set once, as ``train.image_max_pixels``, and ``shard.image_max_pixels`` /
``eval.image_max_pixels`` follow it (the word ``train``) unless set to a number on purpose; a shard
pre-scaling below the training resolution is refused here, not when training starts.

This module sits at the bottom of the import graph (it imports only `pipelines.mmeb` and
`pipelines.images`), so that stages, `pipelines` and `trainer` all take the same typed sections.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tarfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import yaml

from pipelines import mmeb
from pipelines.images import side_cut, snapped_size

PARAMS_FILE = "params.yaml"
ENV = "VLM2VEC_PARAMS"  # another params file, e.g. a benchmark's
SUB_BATCHES = ("kind", "none")  # train.sub_batches: rows collated and embedded per input kind, or together
COMPILE_SCOPES = ("blocks", "region", "cuda-graphs")  # train.compile's values besides true / false
VIDEO_INPUTS = ("native", "frames_mean")  # eval.video_input's values (trainer.eval.evaluate_v2 reads them)
FOLLOW_TRAIN = "train"  # shard/eval.image_max_pixels: the value of train.image_max_pixels
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"  # recipe.profile names one of its yaml files
# how a side becomes model input, read by train and evaluate (eval's keys say `train` to follow train's)
RENDERING = ("positions", "stray_image_token", "image_resize", "image_square", "small_image_side", "prompt",
             "video_max_pixels")
PROMPTS = ("vlm2vec", "qwen3-vl-embedding", "gme")  # trainer.model.prompt_styles


class ParamsError(ValueError):
    """params.yaml is wrong: every problem found, each naming its ``section.key``."""

    def __init__(self, problems: Iterable[str], source: str | None = None):
        self.problems = list(problems)
        where = f"{source}: " if source else ""
        super().__init__(where + ("bad params:\n  " + "\n  ".join(self.problems) if len(self.problems) > 1
                                  else self.problems[0]))


# --- specs: the type and range of one key -------------------------------------------------------
class Invalid(ValueError):
    """A value does not fit its spec (the message says what it must be)."""


@dataclass(frozen=True)
class Spec:
    """The values one key takes: `parse` returns the value (normalized) or raises `Invalid`;
    `describe` says what it takes, for error messages and the reference."""

    def parse(self, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def refuse(self, value: Any) -> Invalid:
        return Invalid(f"must be {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class Int(Spec):
    """An integer (YAML int: 2.9 or true is refused, never cut to 2 or read as 1) in [low, high],
    optionally a multiple of `multiple`."""

    low: int | None = None
    high: int | None = None
    multiple: int | None = None

    def parse(self, value):
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.refuse(value)
        if ((self.low is not None and value < self.low) or (self.high is not None and value > self.high)
                or (self.multiple and value % self.multiple)):
            raise self.refuse(value)
        return value

    def describe(self):
        text = "an integer" + _range_text(self.low, self.high, False)
        return text + (f", a multiple of {self.multiple}" if self.multiple else "")


@dataclass(frozen=True)
class Float(Spec):
    """A finite number in its range. A string that reads as a number is taken: `dvc exp run -S
    k=1e-3` writes 1e-3, which YAML reads as a string."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def parse(self, value):
        if isinstance(value, bool):
            raise self.refuse(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.refuse(value) from None
        if not math.isfinite(number):
            raise self.refuse(value)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            raise self.refuse(value)
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            raise self.refuse(value)
        return number

    def describe(self):
        return "a number" + _range_text(self.low, self.high, self.low_open, self.high_open)


def _range_text(low, high, low_open: bool, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


@dataclass(frozen=True)
class Bool(Spec):
    def parse(self, value):
        if not isinstance(value, bool):
            raise self.refuse(value)
        return value

    def describe(self):
        return "true or false"


@dataclass(frozen=True)
class Choice(Spec):
    values: tuple = ()

    def __init__(self, *values):
        object.__setattr__(self, "values", values)

    def parse(self, value):
        if isinstance(value, bool) or value not in self.values:
            raise self.refuse(value)
        return value

    def describe(self):
        return " | ".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Null(Spec):
    def parse(self, value):
        if value is not None:
            raise self.refuse(value)
        return None

    def describe(self):
        return "null"


@dataclass(frozen=True)
class Text(Spec):
    """A non-empty string."""

    def parse(self, value):
        if not isinstance(value, str) or not value.strip():
            raise self.refuse(value)
        return value

    def describe(self):
        return "a non-empty string"


@dataclass(frozen=True)
class Names(Spec):
    """A non-empty list of distinct non-empty strings (returned as a tuple)."""

    def parse(self, value):
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(v, str) and v.strip() for v in value) or len(set(value)) != len(value)):
            raise self.refuse(value)
        return tuple(value)

    def describe(self):
        return "a list of distinct names"


@dataclass(frozen=True)
class Empty(Spec):
    """An empty list: nothing selected (returned as an empty tuple)."""

    def parse(self, value):
        if not isinstance(value, (list, tuple)) or value:
            raise self.refuse(value)
        return ()

    def describe(self):
        return "[] (none)"


@dataclass(frozen=True)
class Weights(Spec):
    """A non-empty mapping {name: number > 0}."""

    def parse(self, value):
        if not isinstance(value, Mapping) or not value or not all(isinstance(k, str) for k in value):
            raise self.refuse(value)
        out = {}
        for k, v in value.items():
            try:
                out[k] = Float(0, low_open=True).parse(v)
            except Invalid:
                raise self.refuse(value) from None
        return out

    def describe(self):
        return "{name: weight > 0, ...}"


@dataclass(frozen=True)
class PerRepo(Spec):
    """{train: <revision>, eval: <revision>} (either may be left out: main)."""

    def parse(self, value):
        if (not isinstance(value, Mapping) or not value or set(value) - {"train", "eval"}
                or not all(isinstance(v, str) and v.strip() for v in value.values())):
            raise self.refuse(value)
        return dict(value)

    def describe(self):
        return "{train: <revision>, eval: <revision>}"


@dataclass(frozen=True)
class Revisions(Spec):
    """{<repo id>: <revision>, ...}: a pinned revision per Hub repo (a repo left out: main)."""

    def parse(self, value):
        if (not isinstance(value, Mapping) or not value
                or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in value.items())):
            raise self.refuse(value)
        return dict(value)

    def describe(self):
        return "{<repo id>: <revision>, ...}"


@dataclass(frozen=True)
class OneOf(Spec):
    """The first of `options` that takes the value."""

    options: tuple = ()

    def __init__(self, *options: Spec):
        object.__setattr__(self, "options", options)

    def parse(self, value):
        for option in self.options:
            try:
                return option.parse(value)
            except Invalid:
                continue
        raise self.refuse(value)

    def describe(self):
        return ", or ".join(o.describe() for o in self.options)


def key(spec: Spec, meaning: str) -> Any:
    """A section field: no default (params.yaml holds every value), its spec and meaning."""
    return field(metadata={"spec": spec, "meaning": meaning})


# --- sections -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One section of params.yaml. Constructing one checks and normalizes every value
    (`dataclasses.replace` too); `parse` also refuses unknown and missing keys."""

    NAME: ClassVar[str] = ""

    def __post_init__(self):
        problems = []
        for f in fields(self):
            try:
                object.__setattr__(self, f.name, f.metadata["spec"].parse(getattr(self, f.name)))
            except Invalid as e:
                problems.append(f"{self.NAME}.{f.name} {e}")
        if not problems:
            problems = [f"{self.NAME}: {p}" for p in self.problems()]
        if problems:
            raise ParamsError(problems)

    def problems(self) -> Iterable[str]:
        """What is wrong with the section as a whole (its values each fit their specs)."""
        return ()

    @classmethod
    def parse(cls, mapping: Mapping[str, Any] | None):
        if not isinstance(mapping, Mapping):
            raise ParamsError([f"{cls.NAME}: must be a mapping of keys to values, got {mapping!r}"])
        return cls(**check_keys(cls, mapping))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def check_keys(cls: type[Section], mapping: Mapping[str, Any]) -> dict[str, Any]:
    """`mapping` when it has exactly the section's keys; else ParamsError naming the missing ones and
    the unknown ones, each with the closest known key."""
    known = [f.name for f in fields(cls)]
    problems = []
    for name in mapping:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {cls.NAME}.{close[0]}?)" if close else f"; known: {', '.join(known)}"
            problems.append(f"{cls.NAME}.{name}: unknown key{hint}")
    problems += [f"{cls.NAME}.{name}: missing (params.yaml holds every key)" for name in known if name not in mapping]
    if problems:
        raise ParamsError(problems)
    return dict(mapping)


SUBSETS = OneOf(Choice("all"), Names())
PRECISION = Choice("fp32", "bf16")


@dataclass(frozen=True)
class Data(Section):
    """Where the MMEB bytes come from (stage download)."""

    NAME: ClassVar[str] = "data"
    source: str = key(Choice("synthetic", "local", "hub"),
                      "synthetic: the embedded miniature MMEB; local: data.local_dir; hub: the Hugging Face Hub")
    local_dir: str = key(Text(), "source=local: folder holding MMEB-train/ and MMEB-eval/ in the Hub layout "
                                 "(a dvc dep of download whatever the source, so it must exist)")
    train_repo: str = key(Text(), "source=hub: the MMEB-train dataset repo")
    eval_repo: str = key(Text(), "source=hub: the MMEB-eval dataset repo")
    revision: Any = key(OneOf(Text(), PerRepo(), Null()),
                        "source=hub: a branch or tag for both repos, or one revision per repo (null: main); "
                        "the resolved commits go to the manifest")
    train_split: str = key(Choice(*mmeb.TRAIN_SPLITS), "MMEB-train's split: the paper's instructions or "
                                                       "diverse instructions")
    train_subsets: Any = key(SUBSETS, "all, or the MMEB-train configs to fetch")
    eval_subsets: Any = key(SUBSETS, "all, or the MMEB-eval configs to fetch")
    benchmark: str = key(Choice("v1", "v2", "both"),
                         "v1: MMEB only; v2 / both: MMEB-V2's sets too, under data/raw/MMEB-V2 (synthetic: "
                         "synthetic.v2_sets; local: data.local_dir/MMEB-V2); MMEB-train and MMEB-eval still "
                         "come along, training reads them")
    v2_datasets: Any = key(SUBSETS, "source=hub, benchmark v2 / both: all, or the MMEB-V2 tasks to fetch "
                                    "(the registry's names, pipelines/mmeb_v2.py)")
    v2_revisions: Any = key(OneOf(Null(), Revisions()),
                            "source=hub, benchmark v2 / both: the revision of each MMEB-V2 Hub repo (null or a "
                            "repo left out: main); the resolved commits go to the manifest")
    v2_train_sets: Any = key(OneOf(Choice("all"), Names(), Empty()),
                             "VLM2Vec-V2's training sources beside MMEB-train, under data/raw/V2-train (any source "
                             "and benchmark): all, a list of colpali_train_set, visrag-indomain, video_caption_300k, "
                             "video_caption_300k-video, video_qa_240k, or []; hub repos pinned by v2_revisions")

    def problems(self):
        if self.local_dir.startswith("~"):
            yield f"local_dir {self.local_dir!r}: dvc does not expand '~'; give the full path"
        if (isinstance(self.revision, str) and re.fullmatch(r"[0-9a-f]{40}", self.revision)
                and self.train_repo != self.eval_repo):
            yield (f"revision {self.revision} is a commit sha, which pins one repo only; give one per repo: "
                   "revision: {train: <sha>, eval: <sha>}")

    def revisions(self) -> dict[str, str]:
        """The revision to fetch per repo kind ("train", "eval"); a kind left out: main."""
        if isinstance(self.revision, dict):
            return {kind: self.revision.get(kind) or "main" for kind in ("train", "eval")}
        return {"train": self.revision or "main", "eval": self.revision or "main"}


@dataclass(frozen=True)
class Synthetic(Section):
    """The embedded miniature MMEB (stage download, data.source=synthetic)."""

    NAME: ClassVar[str] = "synthetic"
    seed: int = key(Int(0), "seed of the generator: the same seed, the same bytes")
    train_rows: int = key(Int(1), "rows per train dataset (in-distribution datasets only)")
    eval_rows: int = key(Int(1), "queries per eval dataset")
    eval_candidates: int = key(Int(2), "candidates per query for VQA, retrieval and grounding "
                                       "(classification: its label set)")
    image_size: int = key(Int(32), "side of the generated scene images, in pixels")
    v2_sets: Any = key(SUBSETS, "data.benchmark v2 / both: all, or the MMEB-V2 stand-ins to write (names of "
                                "pipelines/mmeb_v2.py SYNTHETIC, checked by the download), each at its registry "
                                "size")


@dataclass(frozen=True)
class Normalize(Section):
    """Raw MMEB to unified records, images and rejects (stage normalize)."""

    NAME: ClassVar[str] = "normalize"
    workers: int = key(Int(1), "datasets normalized in parallel processes (the bytes do not depend on it)")
    image_reject_pixels: int = key(Int(1), "images with more pixels are rejected, read from the header before "
                                           "decoding (a decompression-bomb guard, not the training resolution)")
    max_reject_fraction: float = key(Float(0, 1), "the stage fails when rejected / rows in exceeds this in all")
    max_dataset_reject_fraction: float = key(Float(0, 1), "... or exceeds this in any one dataset (one bad "
                                                          "candidate image rejects every query that lists it)")
    rows_per_part: int = key(Int(1), "records per output parquet part")
    batch_rows: int = key(Int(1), "source rows read per batch (bounds memory)")
    frames_per_video: int = key(Int(1), "MMEB-V2 video: frames sampled per video, evenly spaced (VLM2Vec: 8); a "
                                        "shorter folder keeps all its frames and is counted")
    vidore_prompt: str = key(Choice("current", "launch"),
                             "MMEB-V2 ViDoRe sets' instructions: current (VLM2Vec's loader today) or launch (its "
                             "empty prompts at V2's release); VisRAG keeps its prompts either way")


@dataclass(frozen=True)
class Shard(Section):
    """Train records to WebDataset tars (stage shard)."""

    NAME: ClassVar[str] = "shard"
    workers: int = key(Int(1), "datasets sharded in parallel processes (the bytes do not depend on it)")
    max_samples: int = key(Int(1), "samples per tar")
    max_bytes: int = key(Int(tarfile.RECORDSIZE), "bytes per tar (at least one tar record)")
    image_max_side: int = key(Int(1), "longer image sides are scaled down to this (aspect kept) and re-encoded")
    image_max_pixels: Any = key(OneOf(Choice(FOLLOW_TRAIN), Int(1), Null()),
                                "images pre-scaled to at most this many pixels: train (train.image_max_pixels, "
                                "so the loader resizes nothing), a number (at least the training resolution), or "
                                "null (kept as they are)")
    image_size_multiple: Any = key(OneOf(Int(1), Null()),
                                   "image sides snapped to multiples of this: the processor's patch x merge size, "
                                   "so it resizes nothing (tiny-qwen2-vl: 16; Qwen2-VL / 2.5-VL: 28; Qwen3-VL: 32); "
                                   "null: off")
    max_rows_per_dataset: Any = key(OneOf(Int(1), Null()),
                                    "at most this many records per train dataset, drawn at random (seeded; the "
                                    "paper's recipe: 50000); null: all")
    shuffle: bool = key(Bool(), "records in a seeded random order per dataset instead of the source's, whose "
                                "neighbours are often related (in one batch they are false negatives)")
    seed: int = key(Int(0), "seed of the draw and the order")


@dataclass(frozen=True)
class Backbone(Section):
    """The base model (stage backbone)."""

    NAME: ClassVar[str] = "backbone"
    name: str = key(Text(), "tiny-<family> (built offline, e.g. tiny-qwen2-vl) or a Hub id, e.g. "
                            "Qwen/Qwen2-VL-2B-Instruct")
    revision: str = key(Text(), "Hub id: the branch, tag or commit to fetch")
    trust_remote_code: bool = key(Bool(), "Hub id: run the model repo's own code (off unless you trust it); "
                                          "Phi-3.5-V (phi3_v) loads only with it")
    num_crops: int = key(Int(1), "Phi-3-V: crops of an image its processor makes (VLM2Vec trains and scores "
                                 "with 4); other families: ignored")
    seed: int = key(Int(0), "seed of the tiny model's weights and warm-up")
    pretrain_steps: int = key(Int(0), "tiny models: generative warm-up steps on the train data (0: none)")
    pretrain_batch_size: int = key(Int(1), "tiny models: warm-up batch size")
    pretrain_lr: float = key(Float(0, low_open=True), "tiny models: warm-up learning rate")
    tiny_hidden_size: int = key(Int(32, multiple=32), "tiny models: width of the language model")
    tiny_layers: int = key(Int(1), "tiny models: language-model layers")
    tiny_image_size: int = key(Int(16, multiple=16), "tiny models: image side the processor produces (64: 16 "
                                                     "image tokens)")
    tiny_vocab_size: int = key(Int(256), "tiny models: byte-level BPE vocabulary trained on the train texts")
    tiny_threads: int = key(Int(1), "tiny models: torch threads during the warm-up (tiny matrices gain nothing "
                                    "from more)")


@dataclass(frozen=True)
class Train(Section):
    """The contrastive training recipe (stage train)."""

    NAME: ClassVar[str] = "train"
    seed: int = key(Int(0), "seed of the data order, weights of new layers and dropout")
    steps: int = key(Int(1), "optimizer steps")
    batch_size: int = key(Int(1), "global batch of (query, target) pairs, the in-batch negatives; split "
                                  "across ranks")
    gc_chunk_size: int = key(Int(0), "GradCache sub-batch (memory bounded by the chunk, not the batch); 0: off")
    learning_rate: float = key(Float(0, low_open=True), "AdamW peak learning rate")
    warmup_steps: int = key(Int(0), "linear warm-up steps, then linear decay to 0")
    weight_decay: float = key(Float(0), "AdamW weight decay (not on biases and norms)")
    max_grad_norm: float = key(Float(0, low_open=True), "gradient norm clipped to this")
    temperature: float = key(Float(0, low_open=True), "InfoNCE temperature")
    hard_negatives: int = key(Int(0), "explicit negatives per query from the shards; 0: in-batch only")
    lora_rank: int = key(Int(0), "LoRA rank; 0: full fine-tuning")
    lora_alpha: float = key(Float(0, low_open=True), "LoRA alpha")
    lora_dropout: float = key(Float(0, 1, high_open=True), "LoRA dropout")
    lora_targets: Any = key(OneOf(Choice("default"), Names()),
                            "default (the family's language-model attention and MLP projections) or module names")
    dora: bool = key(Bool(), "DoRA instead of LoRA")
    max_text_tokens: int = key(Int(1), "text tokens kept per side (image tokens are never cut)")
    image_max_pixels: Any = key(OneOf(Int(1), Null()), "the image resolution: images are resized to at most "
                                                       "this many pixels (null: the processor's own cap)")
    instructions: bool = key(Bool(), "false drops the instructions (the paper's ablation)")
    positions: str = key(Choice("grid", "sequential"),
                         "Qwen2-VL / 2.5-VL / 3-VL image-token positions: grid (transformers' M-RoPE) or sequential "
                         "(VLM2Vec's: every token a 1-D text position); other families: no effect")
    stray_image_token: str = key(Choice("strip", "keep"),
                                 "the <|image_1|> of a text-only side (WebQA, EDIS): strip it, or keep it as "
                                 "the backbone's image token, embedded as text (VLM2Vec)")
    image_resize: str = key(Choice("collator", "processor"),
                            "collator: images scaled (aspect kept) to image_max_pixels, then snapped to the patch "
                            "grid by the processor; processor: only the processor resizes, from the original, "
                            "capped at image_max_pixels (VLM2Vec)")
    image_square: Any = key(OneOf(Int(1), Null()), "every image squashed to this side x side first (VLM2Vec V1: "
                                                   "1344; needs image_resize processor); null: aspect kept")
    small_image_side: Any = key(OneOf(Int(1), Null()), "an image with a side under this is resized to twice it "
                                                       "square first (VLM2Vec V2: 28, i.e. 56 x 56); null: off")
    prompt: str = key(Choice(*PROMPTS), "how a side becomes text: vlm2vec (VLM2Vec's string, no chat template), "
                                        "qwen3-vl-embedding (its chat template, the instruction as system message) "
                                        "or gme (GME as VLM2Vec scores it); the chat styles: Qwen families")
    video_max_pixels: Any = key(OneOf(Int(1), Null()),
                                "a video's frames resized to at most this many pixels each (Qwen3-VL-Embedding: "
                                "786432); null: as images, image_max_pixels")
    mixture: Any = key(OneOf(Choice("proportional"), Weights()),
                       "datasets drawn in proportion to their size, or {dataset: weight}")
    homogeneous_batch: int = key(Int(0), "sub-batches of this size drawn from one dataset; 0: off")
    shuffle_buffer: int = key(Int(0), "samples in each dataset's shuffle window")
    num_workers: int = key(Int(0), "DataLoader worker processes (decode images, collate)")
    save_every: int = key(Int(1), "steps between checkpoints")
    precision: str = key(PRECISION, "bf16: autocast (and LoRA keeps the frozen base weights in bf16)")
    lora_dtype: str = key(PRECISION, "dtype of the LoRA adapters (bf16 needs precision bf16)")
    batched_vision_attention: bool = key(Bool(),
                                         "Qwen2-VL, Qwen3-VL: one vision attention call per layer for all images")
    compile: Any = key(OneOf(Bool(), Choice(*COMPILE_SCOPES)),
                       "torch.compile: false; blocks (= true), each layer; region, the language model as one "
                       "region; cuda-graphs, that region replayed as CUDA graphs (one process, no GradCache)")
    pad_to_multiple_of: int = key(Int(1), "padded lengths rounded up to a multiple (fewer shapes to compile)")
    sub_batches: str = key(Choice(*SUB_BATCHES),
                           "kind: a side's rows collated and embedded per input kind (text, image, video), so "
                           "none is padded to a longer kind's length (GradCache: rows sorted by kind and size, "
                           "then chunked; not under compile cuda-graphs, nor fsdp without GradCache, which keep "
                           "none); none: one padded batch per side, as VLM2Vec")
    fsdp: bool = key(Bool(), "under torchrun: shard weights, gradients and AdamW state over the ranks")

    def problems(self):
        if self.batch_size < 2 and self.hard_negatives == 0:
            yield "batch_size >= 2 or hard_negatives > 0 (one pair alone has no negative: its loss is 0)"
        if self.homogeneous_batch and self.batch_size % self.homogeneous_batch:
            yield f"homogeneous_batch {self.homogeneous_batch} must divide batch_size {self.batch_size}"
        if self.lora_dtype == "bf16" and self.precision != "bf16":
            yield "lora_dtype bf16 needs precision bf16"
        if self.image_square is not None and self.image_resize != "processor":
            yield (f"image_square {self.image_square} needs image_resize processor (the collator would scale the "
                   "image down before squashing it)")
        if self.compile == "cuda-graphs" and self.gc_chunk_size:
            yield ("compile cuda-graphs needs gc_chunk_size 0 (GradCache keeps each chunk's embeddings while "
                   "the next chunk's replay would overwrite them; use compile: region)")
        if problem := prompt_problem(self.prompt, self.stray_image_token):
            yield problem

    @property
    def sub_batches_in_effect(self) -> str:
        """``sub_batches``, except "none" where sub-batches by kind cannot run: under compile
        cuda-graphs (a graph is recorded per input shape, and they vary the rows of every forward)
        and under FSDP without GradCache (FSDP gathers the weights in every forward, and ranks would
        run as many forwards as their batch has kinds)."""
        if self.compile == "cuda-graphs" or (self.fsdp and not self.gc_chunk_size):
            return "none"
        return self.sub_batches

    @property
    def compile_scope(self) -> str | None:
        """What ``compile`` compiles: None (nothing) or one of `COMPILE_SCOPES` (true means blocks)."""
        return ("blocks" if self.compile else None) if isinstance(self.compile, bool) else self.compile


@dataclass(frozen=True)
class Eval(Section):
    """MMEB scoring (stage evaluate)."""

    NAME: ClassVar[str] = "eval"
    models: tuple = key(Names(), "folders under models/ to score (base: the zero-shot row)")
    batch_size: int = key(Int(1), "items per encoder batch")
    datasets: Any = key(SUBSETS, "all, or the eval datasets to score")
    image_max_pixels: Any = key(OneOf(Choice(FOLLOW_TRAIN), Int(1), Null()),
                                "images resized to at most this many pixels: train (train.image_max_pixels), a "
                                "number, or null")
    positions: str = key(OneOf(Choice(FOLLOW_TRAIN), Choice("grid", "sequential")),
                         "Qwen2-VL / 2.5-VL / 3-VL image-token positions: train (train.positions), grid or sequential")
    stray_image_token: str = key(OneOf(Choice(FOLLOW_TRAIN), Choice("strip", "keep")),
                                 "a text-only side's <|image_1|>: train (train.stray_image_token), strip or keep")
    image_resize: str = key(OneOf(Choice(FOLLOW_TRAIN), Choice("collator", "processor")),
                            "who resizes images: train (train.image_resize), collator or processor")
    image_square: Any = key(OneOf(Choice(FOLLOW_TRAIN), Int(1), Null()),
                            "images squashed to this side x side first: train (train.image_square), a side, or null")
    small_image_side: Any = key(OneOf(Choice(FOLLOW_TRAIN), Int(1), Null()),
                                "a side under this: image resized to twice it square: train "
                                "(train.small_image_side), a side, or null")
    prompt: str = key(OneOf(Choice(FOLLOW_TRAIN), Choice(*PROMPTS)),
                      "how a side becomes text: train (train.prompt), vlm2vec, qwen3-vl-embedding or gme")
    video_max_pixels: Any = key(OneOf(Choice(FOLLOW_TRAIN), Int(1), Null()),
                                "a video's frames resized to at most this many pixels each: train "
                                "(train.video_max_pixels), a number, or null (as images)")
    rendering_from: str = key(Choice("params", "model"),
                              "params: every model is scored with the input rendering above; model: a model "
                              "whose lineage.json records its own (a trained embedder, a released checkpoint "
                              "imported with its profile) is scored with that, the keys above serving the others")
    cache: bool = key(Bool(), "reuse embeddings of earlier runs (keyed by model, settings and code)")
    cache_dir: str = key(Text(), "where the embedding cache lives (git-ignored, not a DVC output)")
    cache_max_gb: Any = key(OneOf(Float(0), Null()), "then older models' vectors go, least recently used first; "
                                                     "null: keep all")
    precision: str = key(PRECISION, "dtype of the weights while encoding")
    v2_ties: str = key(Choice("strict", "argsort"), "MMEB-V2 ties: strict (a candidate must score strictly "
                                                    "higher to outrank a relevant one) or argsort (VLM2Vec's order)")
    v2_labels: str = key(Choice("correct", "official"),
                         "MMEB-V2 graded labels: correct (each relevant id keeps its grade, counted once) or "
                         "official (VLM2Vec's metrics.py, whose set() can move a grade to another document)")
    video_input: str = key(Choice(*VIDEO_INPUTS),
                           "MMEB-V2 videos: native (Qwen2-VL / 2.5-VL / 3-VL take the frames as videos=, Idefics3 / "
                           "SmolVLM as several images of one row, other families fall back to frames_mean) or "
                           "frames_mean (each frame an image, the video the normalised mean of their vectors)")


@dataclass(frozen=True)
class Recipe(Section):
    """The published recipe these params follow (stage evaluate: its report lists every setting that
    differs from it; `python -m pipelines.profiles apply <profile>` switches to one)."""

    NAME: ClassVar[str] = "recipe"
    profile: str = key(Text(), "a profile of profiles/ (default, vlm2vec-v1, vlm2vec-v2)")

    def problems(self):
        if not (PROFILES_DIR / f"{self.profile}.yaml").is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            yield f"profile {self.profile!r} is not in profiles/ (known: {known})"


@dataclass(frozen=True)
class Mine(Section):
    """Hard-negative mining with round one's embedder (stage mine; docs/mining.md). Items are encoded
    with evaluation's settings (eval.batch_size, precision, image_max_pixels, cache)."""

    NAME: ClassVar[str] = "mine"
    top_k: int = key(Int(1), "negatives kept per train record, best first")
    depth: int = key(Int(1), "candidates examined per query, best first (the rest of the pool is never looked at)")
    max_score_ratio: Any = key(OneOf(Float(0, low_open=True), Null()),
                               "candidates scoring above this x the positive's score are dropped as likely false "
                               "negatives (NV-Retriever's TopK-PercPos: 0.95); null: off")
    negatives: str = key(Choice("mined", "random"),
                         "mined: the embedder's top candidates; random: as many random pool targets (the "
                         "equal-compute control)")
    seed: int = key(Int(0), "seed of the random negatives")

    def problems(self):
        if self.depth < self.top_k:
            yield f"depth {self.depth} must be at least top_k {self.top_k} (the candidates examined)"


@dataclass(frozen=True)
class Retrain(Section):
    """Round two: training on the shards with mined negatives (stage retrain); every other setting is
    train's."""

    NAME: ClassVar[str] = "retrain"
    start: str = key(Choice("base", "embedder"), "start from models/base, or from round one's models/embedder")
    steps: int = key(Int(1), "optimizer steps of round two")
    hard_negatives: int = key(Int(0), "mined negatives per query (train.hard_negatives of round two)")
    batching: str = key(Choice("stream", "mined_clusters"),
                        "stream: train's batches (random; train.homogeneous_batch sub-batches); mined_clusters: "
                        "each batch filled from clusters of the mine stage's kNN graph (B3-style)")
    cluster_size: int = key(Int(2), "mined_clusters: records per cluster (a batch holds batch_size / cluster_size "
                                    "of them)")


SECTIONS: tuple[type[Section], ...] = (Data, Synthetic, Normalize, Shard, Backbone, Train, Eval, Mine, Retrain,
                                         Recipe)


@dataclass(frozen=True)
class Params:
    """The whole params.yaml, checked; ``train`` references resolved (`resolve`)."""

    data: Data
    synthetic: Synthetic
    normalize: Normalize
    shard: Shard
    backbone: Backbone
    train: Train
    eval: Eval
    mine: Mine
    retrain: Retrain
    recipe: Recipe

    def problems(self) -> Iterable[str]:
        """Across sections: the shards must hold images at the training resolution."""
        made, wanted = self.shard.image_max_pixels, self.train.image_max_pixels
        if made is not None and (wanted is None or wanted > made):
            yield (f"shard.image_max_pixels {made} pre-scales images below train.image_max_pixels {wanted}: "
                   f"training would see the smaller images; set shard.image_max_pixels: {FOLLOW_TRAIN}")
        if cut := side_cut(self.shard.image_max_side, wanted):
            yield cut
        if problem := prompt_problem(self.eval.prompt, self.eval.stray_image_token):
            yield "eval." + problem
        if self.eval.image_square is not None and self.eval.image_resize != "processor":
            yield (f"eval.image_square {self.eval.image_square} needs eval.image_resize processor (the collator "
                   "would scale the image down before squashing it)")
        if self.shard.image_size_multiple is not None:
            try:
                multiple = self.shard.image_size_multiple
                snapped_size(multiple, multiple, multiple, made, self.shard.image_max_side)
            except ValueError as e:
                yield f"shard.image_size_multiple {multiple}: {e}"
        if self.retrain.batching == "mined_clusters" and self.train.homogeneous_batch:
            yield (f"retrain.batching mined_clusters draws whole clusters (one dataset each): it takes no "
                   f"train.homogeneous_batch ({self.train.homogeneous_batch}); set it to 0")


def prompt_problem(prompt: str, stray_image_token: str) -> str | None:
    """What is wrong with a prompt style and stray-token rule together (trainer.model.prompt_styles
    refuses the same): qwen3-vl-embedding writes no placeholder, gme keeps VLM2Vec's tokens as text."""
    if prompt == "qwen3-vl-embedding" and stray_image_token == "keep":
        return "stray_image_token keep needs prompt vlm2vec or gme (qwen3-vl-embedding writes no placeholder)"
    if prompt == "gme" and stray_image_token != "keep":
        return "prompt gme needs stray_image_token keep (it embeds VLM2Vec's own tokens as text)"
    return None


def resolve(sections: Mapping[str, Section]) -> dict[str, Section]:
    """`sections` with ``train`` in shard/eval.image_max_pixels and in eval's `RENDERING` keys replaced
    by train's value."""
    out = dict(sections)
    pixels = sections["train"].image_max_pixels
    for name in ("shard", "eval"):
        if out[name].image_max_pixels == FOLLOW_TRAIN:
            out[name] = replace(out[name], image_max_pixels=pixels)
    follow = {k: getattr(sections["train"], k) for k in RENDERING if getattr(out["eval"], k) == FOLLOW_TRAIN}
    out["eval"] = replace(out["eval"], **follow)
    return out


def params_path(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(ENV) or PARAMS_FILE)


def parse(document: Mapping[str, Any] | None, source: str | None = None) -> Params:
    """The checked `Params` of a params.yaml document; ParamsError listing every problem."""
    if not isinstance(document, Mapping):
        raise ParamsError([f"must be a mapping of sections, got {document!r}"], source)
    problems, sections = [], {}
    names = [s.NAME for s in SECTIONS]
    for name in document:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            problems.append(f"{name}: unknown section" + (f" (did you mean {close[0]}?)" if close else ""))
    for cls in SECTIONS:
        if cls.NAME not in document:
            problems.append(f"{cls.NAME}: missing section")
            continue
        try:
            sections[cls.NAME] = cls.parse(document[cls.NAME])
        except ParamsError as e:
            problems += e.problems
    if not problems:
        params = Params(**resolve(sections))
        problems = list(params.problems())
    if problems:
        raise ParamsError(problems, source)
    return params


def load(path: str | Path | None = None) -> Params:
    """params.yaml (or `path`, or $VLM2VEC_PARAMS), every section checked."""
    path = params_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ParamsError([f"cannot read the params file: {e.strerror or e}"], str(path)) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError([f"not valid YAML: {e}"], str(path)) from None
    return parse(document, str(path))


# --- the reference ------------------------------------------------------------------------------
def reference() -> str:
    """docs/params.md: every section and key, with its values and meaning, from the declarations."""
    lines = ["# params.yaml reference", "",
             "Generated from `pipelines/params.py` (`python -m pipelines.params > docs/params.md`); "
             "params.yaml holds the values. Every key is required; a stage refuses a missing or unknown key "
             "or a value out of range before it starts, naming the key.", ""]
    for cls in SECTIONS:
        lines += [f"## `{cls.NAME}`", "", (cls.__doc__ or "").strip(), "", "| key | values | meaning |",
                  "| --- | --- | --- |"]
        for f in fields(cls):
            cells = (f"`{f.name}`", f.metadata["spec"].describe(), f.metadata["meaning"])
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    lines += ["## Across sections", "",
              f"The image resolution is set once, as `train.image_max_pixels`: `shard.image_max_pixels` and "
              f"`eval.image_max_pixels` take the word `{FOLLOW_TRAIN}` for it, as eval's input-rendering keys "
              f"({', '.join(RENDERING)}) do for train's. Refused before any stage runs: "
              "shards pre-scaled below the training resolution, a `shard.image_max_side` that would cut images "
              "of aspect ratio up to 200:1 below it, and a `shard.image_size_multiple` no image size fits.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
