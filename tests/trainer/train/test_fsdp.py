"""trainer.train.fsdp pieces that need no process group (training under FSDP on 2 ranks: test_recipe_distributed.py)."""

import pytest
import torch

from trainer.model.acceleration import repeated_block_lists
from trainer.backbone.families import FAMILIES, build_tiny
from trainer.train.fsdp import grad_norm_value, language_blocks

TEXT_LISTS = {"qwen2_vl": "model.language_model.layers", "qwen2_5_vl": "model.language_model.layers",
              "qwen3_vl": "model.language_model.layers",
              "llava": "model.language_model.layers", "llava_next": "model.language_model.layers",
              "idefics3": "model.text_model.layers", "smolvlm": "model.text_model.layers",
              "paligemma": "model.language_model.layers", "clip": "text_model.encoder.layers",
              "siglip": "text_model.encoder.layers"}


@pytest.mark.parametrize("family", FAMILIES)
def test_language_blocks_are_the_text_layers_never_the_vision_tower(family):
    """Vision blocks stay in the root unit: a rank without images must not skip their collectives."""
    model = build_tiny(family).model
    lists = dict(repeated_block_lists(model))
    assert len(lists) == 2  # the vision tower's blocks and the text layers
    assert [id(b) for b in language_blocks(model)] == [id(b) for b in lists[TEXT_LISTS[family]]]


def test_grad_norm_value_reads_plain_tensors_and_dtensor_like_results():
    class Sharded:
        def full_tensor(self):
            return torch.tensor(2.5)

    assert grad_norm_value(torch.tensor(1.5)) == 1.5
    assert grad_norm_value(Sharded()) == 2.5
