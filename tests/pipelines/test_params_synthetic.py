"""The params contract of the synthetic generator (`pipelines.params.Synthetic`): the sizes that
`pipelines.sources.synthetic.generate` relies on are refused there, naming the key."""

from __future__ import annotations

import pytest

from pipelines.params import ParamsError, Synthetic

GOOD = {"seed": 0, "train_rows": 4, "eval_rows": 4, "eval_candidates": 2, "image_size": 32}


def test_the_smallest_sizes_are_accepted():
    assert Synthetic.parse(GOOD).to_dict() == GOOD


@pytest.mark.parametrize(
    "key, value",
    [("image_size", 16), ("image_size", 31), ("train_rows", 0), ("eval_rows", 0), ("eval_candidates", 1)],
)
def test_sizes_below_what_the_generator_needs_are_refused(key, value):
    with pytest.raises(ParamsError, match=rf"synthetic\.{key}\b"):
        Synthetic.parse(dict(GOOD, **{key: value}))
