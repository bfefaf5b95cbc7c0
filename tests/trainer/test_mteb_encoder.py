"""trainer.mteb_encoder: a trained embedder behind mteb's encoder protocol.

The protocol tests feed batches as mteb's DataLoader yields them (dicts of "text" / "image" columns)
and need no mteb; the last test runs mteb itself on a task defined here, where the optional extra
(`pip install -e .[mteb]`) is installed.
"""

import numpy as np
import pytest
from PIL import Image

from trainer.backbone.families import build_tiny, save_backbone
from trainer.embed import make_side
from trainer.mteb_encoder import IMAGE_ALONE, IMAGE_WITH_TEXT, MtebEncoder

RED, BLUE = Image.new("RGB", (32, 32), (220, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 220))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "base"
    save_backbone(build_tiny("qwen2_vl", seed=0), path)
    return MtebEncoder.load(path, batch_size=4)


def test_batches_of_each_modality_embed_as_mmeb_sides(encoder):
    model = encoder.model
    images = encoder.encode([{"image": [RED, BLUE]}, {"image": [RED]}])
    assert images.shape == (3, model.dim) and images.dtype == np.float32
    np.testing.assert_allclose(images, model.encode([make_side("", IMAGE_ALONE, has_image=True)] * 3,
                                                    [RED, BLUE, RED]), atol=1e-5)
    texts = encoder.encode([{"text": ["a red square", "a blue square"]}], prompt_type="query")
    np.testing.assert_allclose(texts, model.encode([make_side("a red square"), make_side("a blue square")],
                                                   [None, None]), atol=1e-5)
    pairs = encoder.encode([{"text": ["what colour?"], "image": [BLUE]}])
    np.testing.assert_allclose(pairs, model.encode([make_side("what colour?", IMAGE_WITH_TEXT, has_image=True)],
                                                   [BLUE]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)


def test_instructions_per_prompt_type_and_similarities(encoder):
    custom = MtebEncoder(encoder.model, instructions={"query": "Find an image of this colour:"})
    side = custom.side("red", None, "query")
    assert side["raw"] == "Find an image of this colour: red\n"
    assert custom.side("red", None, "document")["raw"] == "red"  # no instruction for documents: bare text
    a = encoder.encode([{"image": [RED, BLUE]}])
    sims = encoder.similarity(a, a)
    assert sims.shape == (2, 2) and np.allclose(np.diag(sims), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.similarity_pairwise(a, a[::-1]), [sims[0, 1], sims[1, 0]], atol=1e-6)
    assert encoder.encode([]).shape == (0, encoder.model.dim)
    with pytest.raises(ValueError, match="neither text nor image"):
        encoder.encode([{"text": [""]}])


def test_mteb_runs_the_encoder_on_a_local_image_task(encoder):
    mteb = pytest.importorskip("mteb", reason="the optional extra: pip install -e .[mteb]")
    from datasets import Dataset, DatasetDict
    from mteb.mocks.mock_tasks.classification import MockImageClassificationTask
    from mteb.models.models_protocols import EncoderProtocol

    class ColourClassification(MockImageClassificationTask):
        metadata = MockImageClassificationTask.metadata.model_copy(update={"name": "LocalColourClassification"})

        def load_data(self, num_proc=None, **kwargs):
            train = Dataset.from_dict({"image": [RED, BLUE] * 5, "label": [1, 0] * 5})
            self.dataset = DatasetDict({"test": Dataset.from_dict({"image": [RED, BLUE], "label": [1, 0]}),
                                        "train": train})
            self.data_loaded = True

    assert isinstance(encoder, EncoderProtocol)
    assert encoder.mteb_model_meta.embed_dim == encoder.model.dim
    result = mteb.evaluate(encoder, [ColourClassification()], cache=None, show_progress_bar=False)
    assert result.task_results[0].get_score() == 1.0  # red and blue apart, even for the untrained model
