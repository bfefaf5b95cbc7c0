"""Speed-ups of the training and encoding step that change no result: batched vision attention,
regional compilation, and image features computed once per GradCache step.

Batched vision attention (Qwen2-VL, Qwen3-VL): transformers' sdpa path of their vision towers runs one
attention call per image per layer (`torch.split` by `cu_seqlens`, then a Python loop), with a
host sync for `lengths.tolist()` in every layer. `batch_vision_attention(model)` replaces that by ONE
sdpa call per layer: a pre-hook on the vision tower reads `grid_thw` once per call (one sync instead
of one per layer) and hands the blocks an attention layout (`vision_layout`): images of one patch
count attend as [images, heads, patches, head_dim]; images of different sizes are padded to the
largest, with the padding masked out of the keys and dropped from the output, while that costs at
most `MAX_PADDED_COST` times the attention of the unpadded images (else the stock loop runs). The
layout travels as a call argument whose sizes are tensor shapes, so compiled blocks see new image
counts and sizes as new shapes (dynamic after the first), never as new constants to recompile for;
the stock loop, which specialises on every list of lengths, is kept out of compilation. Only the
Qwen2-VL and Qwen3-VL towers are patched (their attention modules are alike): Qwen2.5-VL's window
attention uses other sequence boundaries per layer.

Regional compilation: `compile_blocks(model)` applies `torch.compile` to each repeated block (the
language model's decoder layers, the vision tower's blocks) rather than to the whole model, so the
compiled code of one layer is reused by all its siblings (torch >= 2.5 inlines module parameters as
graph inputs), compile time stays a few graphs, and graph breaks elsewhere cost nothing.
`compile_language_model(model)` instead compiles the language model as ONE region (its vision blocks
still one by one): one compiled call per pass instead of one per layer, and, with `cuda_graphs`,
inductor's CUDA graphs over it (`mode="reduce-overhead"`), which replay the whole decoder stack's
kernels with one launch. The training step of a 2B backbone at batch 32 is bound by the host's
kernel launches, not by the card (benchmarks/RESULTS.md, runs 4-5); graphs remove those launches.
CUDA graphs cannot cover blocks compiled one by one: each layer's graph output is overwritten by the
next layer's replay (pytorch/pytorch#152887). A graph is recorded per input shape: the Collator's
`pad_to_multiple_of` keeps the number of padded lengths small. Qwen3-VL's deepstack features are
written into the region with a fixed-shape scatter (`scatter_deepstack`), so it compiles without a
break.

Image features once per GradCache step: `frozen_image_features(model)` (see `ImageFeatureCache`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import types

import torch
import torch.nn.functional as F

from trainer.model.embedder import unwrap

log = logging.getLogger(__name__)

_LAYOUT = "_vlm2vec_vision_layout"   # the vision tower's call argument the pre-hook adds for the blocks
UNIFORM = "uniform"
# images of different sizes are padded into one attention call while its cost (images x largest^2)
# is at most this many times the unpadded images' (sum of size^2); else the stock per-image loop
MAX_PADDED_COST = 2.0


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (`trainer.model.embedder.unwrap`), then its inner `.model`
    when it has one (e.g. Qwen2VLModel under Qwen2VLForConditionalGeneration)."""
    base = unwrap(model)
    return getattr(base, "model", base)


# vision towers whose every block attends over whole images (cu_seqlens), with the attention module
# batch_vision_attention replaces: Qwen2-VL's and Qwen3-VL's (Qwen2.5-VL's window attention is not)
BATCHED_TOWERS = ("Qwen2VisionTransformerPretrainedModel", "Qwen3VLVisionModel")


def _full_attention_tower(model: torch.nn.Module):
    visual = getattr(_inner(model), "visual", None)
    if visual is None or type(visual).__name__ not in BATCHED_TOWERS:
        return None
    return visual


@torch.compiler.disable
def _stock_attention(original, hidden_states, cu_seqlens, position_embeddings, max_seqlen, kwargs):
    """transformers' own attention; never traced: its per-image loop reads the lengths on the host,
    and a compiled trace of it would be specialised on (and recompiled for) every list of lengths."""
    return original(hidden_states, cu_seqlens, position_embeddings=position_embeddings, max_seqlen=max_seqlen,
                    **kwargs)


def _batched_forward(original, rotary):
    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        layout = kwargs.pop(_LAYOUT, None)
        if (layout is None or position_embeddings is None or kwargs.get("output_attentions")
                or "flash" in str(self.config._attn_implementation)):
            return _stock_attention(original, hidden_states, cu_seqlens, position_embeddings, max_seqlen, kwargs)
        seq = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = rotary(q, k, cos, sin)
        dropout = self.attention_dropout if self.training else 0.0
        if isinstance(layout, str):  # UNIFORM: [sequences, heads, patches, head_dim]
            sequences = cu_seqlens.shape[0] - 1
            q, k, v = (x.reshape(sequences, -1, self.num_heads, x.shape[-1]).transpose(1, 2) for x in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling, dropout_p=dropout)
            out = out.transpose(1, 2).reshape(seq, -1)
        else:  # padded to the largest sequence: gather the slots, mask padded keys, keep the real rows
            gather, keys, rows = layout
            sequences, width = keys.shape[0], keys.shape[-1]
            q, k, v = (x.index_select(0, gather).reshape(sequences, width, self.num_heads, x.shape[-1]).transpose(1, 2)
                       for x in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=self.scaling, dropout_p=dropout)
            out = out.transpose(1, 2).reshape(sequences * width, -1).index_select(0, rows)
        return self.proj(out)

    return forward


def vision_layout(grid_thw: torch.Tensor):
    """How a Qwen2-VL vision call's attention is batched: `UNIFORM` when every attention sequence
    (each temporal slice of each image: t sequences of h*w patches) has the same length; else
    (gather [sequences * width], keys [sequences, 1, 1, width] bool, rows [patches]) to pad them to the
    largest, width: `gather` picks each padded slot's patch (0 for padding), `keys` marks the real
    ones, `rows` the real slots in patch order; None (the stock loop) when padding would cost more than
    `MAX_PADDED_COST` times the unpadded attention. The tensors are on `grid_thw`'s device."""
    sizes = [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]
    if not sizes:
        return None
    if len(set(sizes)) == 1:
        return UNIFORM
    width = max(sizes)
    if len(sizes) * width ** 2 > MAX_PADDED_COST * sum(n * n for n in sizes):
        return None
    lengths = torch.tensor(sizes)
    starts = lengths.cumsum(0) - lengths
    slots = torch.arange(width)
    real = slots[None, :] < lengths[:, None]                              # [sequences, width]
    gather = torch.where(real, starts[:, None] + slots[None, :], 0).reshape(-1)
    rows = real.reshape(-1).nonzero().squeeze(1)                          # sequence by sequence: patch order
    return tuple(x.to(grid_thw.device, non_blocking=True) for x in (gather, real[:, None, None, :], rows))


def batch_vision_attention(model: torch.nn.Module) -> int:
    """Install batched vision attention on `model` (a Qwen2-VL or Qwen3-VL, or a peft wrapper of
    one); the number of attention modules patched (0 for any other family, which is left unchanged).
    Idempotent."""
    visual = _full_attention_tower(model)
    if visual is None:
        return 0
    attns = [blk.attn for blk in visual.blocks]
    module = sys.modules[type(attns[0]).__module__]
    rotary = getattr(module, "apply_rotary_pos_emb_vision", None)
    if rotary is None or list(inspect.signature(rotary).parameters)[:4] != ["q", "k", "cos", "sin"]:
        log.warning("batched vision attention: unexpected transformers vision code; left as is")
        return 0
    if getattr(visual, "_vlm2vec_batched", False):
        return len(attns)

    def before(_module, args, kwargs):  # the tower passes its keyword arguments on to every block
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        layout = vision_layout(grid) if isinstance(grid, torch.Tensor) else None
        return args, ({**kwargs, _LAYOUT: layout} if layout is not None else kwargs)

    for attn in attns:
        attn.forward = types.MethodType(_batched_forward(attn.forward, rotary), attn)
    visual.register_forward_pre_hook(before, with_kwargs=True)
    visual._vlm2vec_batched = True
    return len(attns)


def unbatch_vision_attention(model: torch.nn.Module) -> None:
    """Undo `batch_vision_attention` (the stock per-image loop again); for comparisons."""
    visual = _full_attention_tower(model)
    if visual is None or not getattr(visual, "_vlm2vec_batched", False):
        return
    for blk in visual.blocks:
        blk.attn.__dict__.pop("forward", None)
    visual._forward_pre_hooks.clear()
    visual._vlm2vec_batched = False


def repeated_block_lists(model: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    """(name, list) of every ModuleList of at least two modules of one class (decoder layers, vision
    blocks), outermost lists only."""
    lists: list[tuple[str, torch.nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix, _ in lists):
            continue
        if isinstance(mod, torch.nn.ModuleList) and len(mod) >= 2 and len({type(m) for m in mod}) == 1:
            lists.append((name, mod))
    return lists


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The members of every `repeated_block_lists` list."""
    return [block for _, blocks in repeated_block_lists(model) for block in blocks]


# Variants one compiled block function sees in training: transformers' decoder layers and vision
# blocks share one `__call__` (GradientCheckpointingLayer), called with rank-3 and rank-2 hidden
# states, with and without grad (GradCache's two passes), with inputs that do or do not require grad,
# before and after shapes turn dynamic. torch's default limit of 8 compiled variants per function
# is reached within the first steps, after which new variants silently run eager.
RECOMPILE_LIMIT = 64


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the second is the older name
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))


def compile_blocks(model: torch.nn.Module, backend: str = "inductor", *, outside: torch.nn.Module | None = None,
                   **options) -> int:
    """`torch.compile` each repeated block of `model` in place (with `outside`, only the blocks that
    are not inside that module); the number of blocks compiled. Raises torch's per-function recompile
    limit to `RECOMPILE_LIMIT` (see there)."""
    _raise_recompile_limit()
    inside = set() if outside is None else {id(m) for m in outside.modules()}
    blocks = [block for block in repeated_blocks(model) if id(block) not in inside]
    for block in blocks:
        block.compile(backend=backend, **options)
    log.info("compiled %d repeated blocks (%s)", len(blocks), backend)
    return len(blocks)


def language_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder stack of a (peft-wrapped) VLM: its inner model's `language_model` (Qwen2-VL,
    Qwen2.5-VL, LLaVA, LLaVA-NeXT, PaliGemma) or `text_model` (Idefics3, SmolVLM); None for a model
    without one (CLIP / SigLIP dual encoders)."""
    inner = _inner(model)
    for name in ("language_model", "text_model"):
        lm = getattr(inner, name, None)
        if isinstance(lm, torch.nn.Module) and isinstance(getattr(lm, "layers", None), torch.nn.ModuleList):
            return lm
    return None


def compile_region(module: torch.nn.Module, *, cuda_graphs: bool = False, backend: str = "inductor",
                   dynamic: bool | None = None, options: dict | None = None) -> None:
    """`torch.compile` `module` in place as one region; with `cuda_graphs`, inductor's CUDA graphs
    (`mode="reduce-overhead"`: the caller marks each new step with
    `torch.compiler.cudagraph_mark_step_begin()`, after which the previous step's graph outputs may be
    overwritten). `options` are inductor's (e.g. ``{"cpp_wrapper": True}``); torch accepts a mode or
    options, not both. `dynamic=None` is torch's automatic dynamic shapes: a second input shape
    compiles one shape-generic graph, and CUDA graphs then record one graph per shape without
    compiling again."""
    if cuda_graphs and options:
        raise ValueError("compile_region: inductor options cannot be combined with CUDA graphs (a mode)")
    _raise_recompile_limit()
    kw = {"mode": "reduce-overhead"} if cuda_graphs else ({"options": options} if options else {})
    module.compile(backend=backend, dynamic=dynamic, **kw)


def compile_language_model(model: torch.nn.Module, *, cuda_graphs: bool = False, backend: str = "inductor") -> int:
    """Compile `model`'s language model (`language_model`) as one region (`compile_region`) and every
    other repeated block (the vision tower's) one by one; the number of blocks compiled one by one.
    Qwen3-VL's deepstack features enter the region by `scatter_deepstack`. Raises ValueError for a
    model without a language model (compile its blocks instead)."""
    lm = language_model(model)
    if lm is None:
        raise ValueError(f"{type(unwrap(model)).__name__} has no language model to compile as one region; "
                         "compile its repeated blocks instead (train.compile: blocks)")
    n_blocks = compile_blocks(model, backend=backend, outside=lm)
    scatter_deepstack(model)
    compile_region(lm, cuda_graphs=cuda_graphs, backend=backend)
    log.info("compiled the language model as one region%s (%s)", " with CUDA graphs" if cuda_graphs else "", backend)
    return n_blocks


def _deepstack_scatter(self, hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor,
                       visual_embeds: torch.Tensor) -> torch.Tensor:
    mask = visual_pos_masks.to(hidden_states.device)[..., None].expand_as(hidden_states)
    embeds = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    return hidden_states + torch.zeros_like(hidden_states).masked_scatter(mask, embeds)


def scatter_deepstack(model: torch.nn.Module) -> bool:
    """Qwen3-VL: add the deepstack vision features to the first decoder layers' hidden states with a
    fixed-shape `masked_scatter` instead of transformers' boolean-mask write (``h[mask] = h[mask] +
    features``), whose `nonzero` has a data-dependent shape, so a compiled language model broke its
    graph at every such layer. The sums are the same (every other position adds an exact 0). True
    when installed (a Qwen3-VL text model), False for any other model, which is left unchanged."""
    lm = language_model(model)
    if lm is None or type(lm).__name__ != "Qwen3VLTextModel" or not callable(getattr(lm, "_deepstack_process", None)):
        return False
    lm._deepstack_process = types.MethodType(_deepstack_scatter, lm)
    return True


# --- GradCache: image features computed once ------------------------------------------------------

_VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector",
                 "visual_projection")


class ImageFeatureCache:
    """Image (and video) features of GradCache's no-grad pass, replayed in its pass with grad.

    GradCache embeds every chunk twice: without grad (to get the embeddings the loss is computed on)
    and again with grad. When nothing in the vision tower and projector is trained (LoRA on the
    language model, as VLM2Vec trains) and nothing there draws random numbers, the second vision
    forward computes exactly what the first did and nothing back-propagates into it: ``record()``
    keeps the output of every ``get_image_features`` call of the first pass (and of every
    ``get_video_features`` call, Qwen2-VL / Qwen2.5-VL's video frames through the same tower),
    ``replay()`` returns them, in the same order, instead of running the tower again. The vision
    tower then runs once per chunk instead of twice. Each replayed call is checked against the
    recorded one's method and ``pixel_values`` shape, and a replay that does not consume every
    record raises.
    """

    def __init__(self, inner: torch.nn.Module):
        self.mode: str | None = None
        self.records: list[tuple[tuple, object]] = []
        self.position = 0
        # wrapped calls under way: one may call another (Qwen3-VL's video features are its image
        # features), and only the outermost is recorded and replayed
        self.depth = 0
        for name in ("get_image_features", "get_video_features"):
            if callable(getattr(inner, name, None)):
                setattr(inner, name, self._wrap(name, getattr(inner, name)))

    def _wrap(self, name: str, original):
        def get_features(pixel_values, *args, **kwargs):
            if self.depth:
                return original(pixel_values, *args, **kwargs)
            key = (name, *pixel_values.shape)
            if self.mode == "replay":
                if self.position >= len(self.records):
                    raise RuntimeError("image feature replay: more image calls than the no-grad pass made")
                recorded, out = self.records[self.position]
                self.position += 1
                if recorded != key:
                    raise RuntimeError(f"image feature replay: {name} of pixel_values {tuple(pixel_values.shape)}, "
                                       f"recorded {recorded[0]} of {recorded[1:]}: chunks must be embedded in the "
                                       "same order")
                return out
            self.depth += 1
            try:
                out = original(pixel_values, *args, **kwargs)
            finally:
                self.depth -= 1
            if self.mode == "record":
                self.records.append((key, out))
            return out

        return get_features

    @contextlib.contextmanager
    def record(self):
        self.mode, self.records = "record", []
        try:
            yield
        finally:
            self.mode = None

    @contextlib.contextmanager
    def replay(self):
        self.mode, self.position = "replay", 0
        try:
            yield
            if self.position != len(self.records):
                raise RuntimeError(f"image feature replay used {self.position} of {len(self.records)} records")
        finally:
            self.mode, self.records = None, []


def vision_parts(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The vision tower and projector modules of a VLM (``[]`` when the layout is not known)."""
    inner = _inner(model)
    return [m for name in _VISION_PARTS if isinstance(m := getattr(inner, name, None), torch.nn.Module)]


def trains_vision(model: torch.nn.Module) -> bool:
    """True when a trainable parameter sits in the vision tower or projector, which a text-only batch
    leaves without a gradient (DDP must then look for unused parameters); True as well when the
    layout is not known."""
    parts = vision_parts(model)
    return not parts or any(p.requires_grad for part in parts for p in part.parameters())


def _draws_random_numbers(module: torch.nn.Module) -> bool:
    """A dropout module with p > 0, or a module whose config asks for dropout it may apply as a
    function (e.g. CLIP's and SigLIP's ``attention_dropout``)."""
    if isinstance(module, torch.nn.Dropout) and module.p > 0:
        return True
    config = getattr(module, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    return any("dropout" in key and isinstance(value, (int, float)) and value > 0
               for key, value in settings.items())


def frozen_image_features(model: torch.nn.Module) -> ImageFeatureCache | None:
    """An `ImageFeatureCache` installed on ``model`` when its image path is frozen and draws no random
    numbers (no trainable parameter, no dropout with p > 0 in the vision tower and projector); None
    when it is trained, or when the model's layout is not known (then GradCache runs it twice)."""
    inner = _inner(model)
    if not callable(getattr(inner, "get_image_features", None)):
        return None
    cached = getattr(inner, "_vlm2vec_feature_cache", None)
    if cached is not None:
        return cached
    if trains_vision(model):  # also when the layout is not known
        return None
    if any(_draws_random_numbers(m) for part in vision_parts(model) for m in part.modules()):
        return None
    cache = ImageFeatureCache(inner)
    inner._vlm2vec_feature_cache = cache
    return cache
