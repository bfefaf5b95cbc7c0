"""Phi3VProcessor of the tiny Phi-3-V stand-in, as microsoft/Phi-3.5-vision-instruct's processor:
`<|image_k|>` in the text becomes `num_img_tokens` copies of the id -k (the model puts image k's
features there); text without images is tokenized as it is (a stray `<|image_1|>` stays text); one
row per call (the real processor does not batch). `num_crops` is a `from_pretrained` keyword.
"""

import json
import re
import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .image_processing_phi3_v import Phi3VImageProcessor

CONFIG = "preprocessor_config.json"
AUTO_MAP = {"AutoProcessor": "processing_phi3_v.Phi3VProcessor",
            "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor"}


class Phi3VProcessor:
    def __init__(self, image_processor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        """What transformers calls on a remote-code processor class (ProcessorMixin's hook)."""
        cls._auto_class = auto_class

    @classmethod
    def from_pretrained(cls, folder, num_crops=None, trust_remote_code=False, **kwargs):
        saved = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
        ip = Phi3VImageProcessor(num_crops=num_crops or saved["num_crops"], crop_side=saved["crop_side"],
                                 patch=saved["patch"])
        return cls(ip, AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code))

    def save_pretrained(self, folder):
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        cfg = dict(self.image_processor.to_dict(), auto_map=AUTO_MAP, image_processor_type="Phi3VImageProcessor",
                   processor_class="Phi3VProcessor")
        (folder / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in ("processing_phi3_v.py", "image_processing_phi3_v.py"):
            shutil.copyfile(Path(__file__).with_name(name), folder / name)

    def __call__(self, text=None, images=None, return_tensors=None, padding=False, truncation=None,
                 max_length=None, **kwargs):
        if not images:
            return self.tokenizer(text, return_tensors=return_tensors, padding=padding, truncation=truncation,
                                  max_length=max_length)
        inputs = self.image_processor(images)
        chunks = [self.tokenizer(c).input_ids for c in re.split(r"<\|image_\d+\|>", text)]
        tags = [int(t) for t in re.findall(r"<\|image_(\d+)\|>", text)]
        if sorted(set(tags)) != list(range(1, len(images) + 1)):
            raise ValueError(f"{len(images)} images but the text names {tags}")
        bos = self.tokenizer.bos_token_id
        ids = list(chunks[0])
        for tag, chunk in zip(tags, chunks[1:]):
            ids += [-tag] * inputs["num_img_tokens"][tag - 1]
            ids += chunk[1:] if bos is not None and chunk[:1] == [bos] else chunk
        return dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
