"""A tiny Phi-3-V stand-in folder in the layout of microsoft/Phi-3.5-vision-instruct: the model
repo ships its own code (config.json `model_type: phi3_v` with an `auto_map` onto the folder's
`configuration_phi3_v.py` / `modeling_phi3_v.py`, preprocessor_config.json's onto
`processing_phi3_v.py` / `image_processing_phi3_v.py`), so it loads only with trust_remote_code.

    write_phi3v(folder, num_crops=4)   # random weights, seeded; a byte-level BPE tokenizer

The code lives in tests/support/phi3v_code/ (small, honest implementations: see each module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

CODE = Path(__file__).with_name("phi3v_code")
SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>"]
CORPUS = [f"Represent the given image with the following question: what is the {w} thing {i}?"
          for i in range(40) for w in ("red", "blue", "small", "round")]


def write_phi3v(folder: Path, *, num_crops: int = 4, seed: int = 0, hidden: int = 32) -> Path:
    """Write the stand-in to `folder` (created) and return it."""
    from transformers import PreTrainedTokenizerFast

    from trainer.backbone.tokenizer import train_bpe
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted(CODE.glob("*.py")):
        shutil.copyfile(source, folder / source.name)
    raw = train_bpe(CORPUS, special_tokens=SPECIALS, vocab_size=300)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.padding_side = "right"
    tok.save_pretrained(folder)
    preprocessor = dict(num_crops=num_crops, crop_side=16, patch=8, image_processor_type="Phi3VImageProcessor",
                        processor_class="Phi3VProcessor",
                        auto_map={"AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                                  "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor"})
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")
    config = dict(model_type="phi3_v", architectures=["Phi3VForCausalLM"], vocab_size=len(tok),
                  hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2,
                  crop_side=16, patch=8, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id,
                  auto_map={"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _write_weights(folder, config, seed)
    return folder


def _write_weights(folder: Path, config: dict, seed: int) -> None:
    """Random weights of the folder's own model class, saved as safetensors next to its code."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
