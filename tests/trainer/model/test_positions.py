"""trainer.model.positions: the Collator's M-RoPE positions are the model's own, and change no embedding."""

import inspect

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.support.images import noise
from tests.support.sides import side
from trainer.model.inputs import Collator
from trainer.model.embedder import Embedder, unwrap
from trainer.model.positions import mrope_position_ids


# images of different sizes (different grids), rows without an image, texts of different lengths
SIDES = [side("<|image_1|>\nRepresent the given image for classification\n"),
         side("Find me an everyday image that matches the given caption: a man on a moped.\n"),
         side("<|image_1|>\nWhat is in the photo? Answer briefly\n"),
         side("<|image_1|>\n"),
         side("a caption\n")]
IMAGES = [noise(64, 32, seed=0), None, noise(48, 80, seed=1), noise(32, 32, seed=2), None]


def model_positions(backbone, batch):
    inner = unwrap(backbone.model).model
    params = inspect.signature(inner.get_rope_index).parameters
    kwargs = dict(image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    if "mm_token_type_ids" in params:  # transformers 5
        kwargs["mm_token_type_ids"] = batch["mm_token_type_ids"]
    return inner.get_rope_index(batch["input_ids"], **kwargs)[0]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_positions_are_the_models_own(qwen_backbone, padding_side):
    qwen_backbone.processor.tokenizer.padding_side = padding_side
    try:
        batch = Collator(qwen_backbone, max_text_tokens=64, image_max_pixels=4096)(SIDES, IMAGES)
    finally:
        qwen_backbone.processor.tokenizer.padding_side = "right"
    assert batch["position_ids"].shape == (3, 5, batch["input_ids"].shape[1])
    want = model_positions(qwen_backbone, batch)
    mask = batch["attention_mask"].bool()
    assert torch.equal(batch["position_ids"][:, mask], want[:, mask])
    assert len({tuple(g) for g in batch["image_grid_thw"].tolist()}) == 3  # three different grids


def test_embeddings_unchanged_and_text_only_batches_keep_the_models_positions(qwen_backbone):
    torch.manual_seed(0)
    embedder = Embedder(qwen_backbone).eval()
    ours = Collator(qwen_backbone, max_text_tokens=64, image_max_pixels=4096)
    plain = Collator(qwen_backbone, max_text_tokens=64, image_max_pixels=4096, mrope_positions=False)
    a, b = ours(SIDES, IMAGES), plain(SIDES, IMAGES)
    assert "position_ids" in a and "position_ids" not in b
    with torch.no_grad():
        assert torch.equal(embedder(a), embedder(b))  # the same integer positions: bit-identical
    text_only = ours([SIDES[1], SIDES[4]], [None, None])
    assert "position_ids" not in text_only  # transformers gives a text-only batch its default positions


def test_mismatched_grids_are_refused():
    ids = torch.tensor([[1, 9, 9, 9, 9, 2]])
    mask = torch.ones_like(ids)
    pos = mrope_position_ids(ids, mask, torch.tensor([[1, 4, 4]]), image_token_id=9, merge_size=2)
    assert pos[:, 0].tolist() == [[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]]
    with pytest.raises(ValueError, match="does not match"):  # a grid of 8 tokens for a run of 4
        mrope_position_ids(ids, mask, torch.tensor([[1, 4, 8]]), image_token_id=9, merge_size=2)
    with pytest.raises(ValueError, match="image grids"):
        mrope_position_ids(ids, mask, torch.tensor([[1, 4, 4], [1, 4, 4]]), image_token_id=9, merge_size=2)
    with pytest.raises(ValueError, match="left over"):
        mrope_position_ids(ids, mask, torch.zeros(0, 3, dtype=torch.long), image_token_id=9, merge_size=2)


class _DeviceReads(TorchDispatchMode):
    """Counts the operators that read a device tensor back to the host (a sync on a GPU): `.item()`
    and friends, nonzero, boolean-mask indexing."""

    READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        bool_index = name in ("aten.index.Tensor", "aten.index_put_.default") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        self.count += name in self.READS or bool_index
        return func(*args, **(kwargs or {}))


def test_host_reads_no_longer_grow_with_the_batch(qwen_backbone):
    """With the Collator's positions a forward's host reads hardly grow with the batch (transformers'
    own get_rope_index reads several times per row); a regression guard should transformers stop
    honouring position_ids."""
    embedder = Embedder(qwen_backbone).eval()
    counts = {}
    for rows in (4, 16):
        sides, images = (SIDES * 4)[:rows], (IMAGES * 4)[:rows]
        for flag in (True, False):
            batch = Collator(qwen_backbone, max_text_tokens=64, image_max_pixels=4096, mrope_positions=flag)(sides, images)
            with torch.no_grad(), _DeviceReads() as reads:
                embedder(batch)
            counts[rows, flag] = reads.count
    grown = {flag: counts[16, flag] - counts[4, flag] for flag in (True, False)}
    assert grown[False] >= 4 * 12, counts  # 12 more rows: transformers' get_rope_index reads per row
    assert grown[True] <= grown[False] // 4, counts  # what is left is the vision tower's
    if qwen_backbone.family == "qwen2_vl":  # (Qwen2.5-VL's window index reads once per image)
        assert grown[True] == 0 and counts[16, True] <= 10, counts
