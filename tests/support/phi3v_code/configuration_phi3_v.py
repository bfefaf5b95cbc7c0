"""Phi3VConfig of the tiny Phi-3-V stand-in (the model repo's own code, loaded with trust_remote_code)."""

from transformers import PretrainedConfig


class Phi3VConfig(PretrainedConfig):
    model_type = "phi3_v"

    def __init__(self, vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, crop_side=16, patch=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.crop_side, self.patch = crop_side, patch
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
