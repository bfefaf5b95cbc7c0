"""Last-token pooling: left and right padding give the unpadded per-row result."""

import pytest
import torch

from trainer.model.pooling import last_token_index, last_token_pool


def _padded(rows: list[torch.Tensor], side: str):
    length = max(r.shape[0] for r in rows)
    hidden = torch.full((len(rows), length, rows[0].shape[1]), float("nan"))
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r.shape[0]
        sl = slice(length - n, length) if side == "left" else slice(0, n)
        hidden[i, sl] = r
        mask[i, sl] = 1
    return hidden, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_equals_unpadded_last_token(side):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 5, generator=g) for n in (3, 7, 1, 7, 4)]
    hidden, mask = _padded(rows, side)
    pooled = last_token_pool(hidden, mask)
    expected = torch.stack([r[-1] for r in rows])  # unpadded: the last token of each row
    assert torch.equal(pooled, expected)
    assert not torch.isnan(pooled).any()  # never picked a padding position


def test_left_and_right_padding_agree():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(n, 3, generator=g) for n in (2, 6, 4)]
    left = last_token_pool(*_padded(rows, "left"))
    right = last_token_pool(*_padded(rows, "right"))
    assert torch.equal(left, right)


def test_index_without_padding_is_last_position():
    mask = torch.ones(3, 9, dtype=torch.long)
    assert last_token_index(mask).tolist() == [8, 8, 8]


def test_empty_row_and_shape_errors():
    with pytest.raises(ValueError, match="no attended token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="disagree"):
        last_token_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))


def test_model_embeddings_do_not_depend_on_padding_side():
    """A real tiny Qwen2-VL batch padded left or right embeds identically (and like single rows)."""
    from PIL import Image

    from trainer.backbone.families import build_tiny
    from trainer.embed import make_side
    from trainer.model.inputs import Collator
    from trainer.model.embedder import Embedder

    backbone = build_tiny("qwen2_vl")
    sides = [make_side("a small red circle at the left", "Represent"), make_side("", "Represent the image", has_image=True),
             make_side("red", "")]
    images = [None, Image.new("RGB", (32, 32), "red"), None]
    embedder = Embedder(backbone).eval()
    collate = Collator(backbone)
    out = {}
    with torch.no_grad():
        for side in ("left", "right"):
            backbone.processor.tokenizer.padding_side = side
            batch = collate(sides, images)
            first_col = batch["attention_mask"][:, 0] if side == "left" else batch["attention_mask"][:, -1]
            assert (first_col == 0).any()  # the batch really is padded on that side
            out[side] = embedder(batch)
        single = torch.cat([embedder(collate([s], [i])) for s, i in zip(sides, images)])
    torch.testing.assert_close(out["left"], out["right"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["right"], single, atol=1e-5, rtol=1e-4)


def test_model_embedding_is_the_last_real_tokens_final_hidden_state():
    """Embedder pools the last hidden state at each row's last real token (VLM2Vec's last-token
    pooling, no LM head), L2-normalised: each row of a padded batch equals that row run alone through
    the language model, read at its final position."""
    from PIL import Image

    from trainer.backbone.families import build_tiny
    from trainer.embed import make_side
    from trainer.model.inputs import Collator
    from trainer.model.embedder import Embedder

    backbone = build_tiny("qwen2_vl")
    sides = [make_side("a small red circle at the left", "Represent"), make_side("", "Represent the image", has_image=True),
             make_side("red", "")]
    images = [None, Image.new("RGB", (32, 32), "blue"), None]
    collate = Collator(backbone)
    inner = backbone.model.model  # vision + language model, no LM head
    with torch.no_grad():
        pooled = Embedder(backbone).eval()(collate(sides, images))
        for i, (s, im) in enumerate(zip(sides, images)):
            row = {k: v for k, v in collate([s], [im]).items() if k not in ("has_image", "has_text")}
            assert bool(row["attention_mask"].all())  # alone: no padding, the last position is the last token
            hidden = inner(**row, use_cache=False, return_dict=True).last_hidden_state[0, -1]
            torch.testing.assert_close(pooled[i], hidden / hidden.norm(), atol=1e-5, rtol=1e-4)
