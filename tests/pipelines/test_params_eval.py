"""The params contract's `eval` section (`pipelines.params.Eval`): what the evaluate stage no longer
checks itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.params import Eval, ParamsError, parse

ROOT = Path(__file__).resolve().parents[2]
SECTION = {"models": ["base", "embedder"], "batch_size": 4, "datasets": "all", "image_max_pixels": 40,
           "cache": True, "cache_dir": ".cache/embeddings", "cache_max_gb": 20, "precision": "fp32"}


def refused(**values) -> ParamsError:
    with pytest.raises(ParamsError) as info:
        Eval.parse(dict(SECTION, **values))
    return info.value


def test_the_section_is_typed():
    params = Eval.parse(SECTION)
    assert params.models == ("base", "embedder") and params.cache_max_gb == 20.0
    assert Eval.parse(dict(SECTION, cache_max_gb=None)).cache_max_gb is None  # null: no limit
    assert Eval.parse(dict(SECTION, cache_max_gb=0)).cache_max_gb == 0.0


def test_an_empty_model_list_is_refused():
    assert "eval.models" in str(refused(models=[]))


@pytest.mark.parametrize("bad", [-1, True, "lots"])
def test_cache_max_gb_must_be_a_number_at_least_0_or_null(bad):
    assert "eval.cache_max_gb" in str(refused(cache_max_gb=bad))


def test_a_dataset_listed_twice_is_refused():
    assert "eval.datasets" in str(refused(datasets=["Tiny-CLS", "Tiny-CLS"]))


@pytest.mark.parametrize("value, want", [("train", "follows"), (40, 40), (None, None)])
def test_image_max_pixels_follows_train_unless_set(value, want):
    document = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    document["eval"]["image_max_pixels"] = value
    params = parse(document)
    assert params.eval.image_max_pixels == (params.train.image_max_pixels if want == "follows" else want)
