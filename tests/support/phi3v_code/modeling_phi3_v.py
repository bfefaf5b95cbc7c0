"""A tiny Phi-3-V stand-in in the layout of microsoft/Phi-3.5-vision-instruct's modeling code.

As the real model: the processor writes each image's tokens as negative ids (-1 for `<|image_1|>`),
and `Phi3VModel` puts the image features (one per patch of each crop, crops in order) at those
positions, images taken in row order from `pixel_values` [N, crops, 3, side, side]; rows without
negative ids are plain text. Layers are pre-norm causal attention (`qkv_proj`, `o_proj`) and MLP
(`gate_up_proj`, `down_proj`), named as Phi-3's.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_phi3_v import Phi3VConfig


class Phi3ImageEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.patch = config.patch
        self.img_projection = nn.Linear(3 * config.patch * config.patch, config.hidden_size)

    def forward(self, input_ids, embeds, pixel_values, image_sizes):
        p = self.patch
        n, crops, c, h, w = pixel_values.shape
        patches = pixel_values.reshape(n, crops, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        feats = self.img_projection(patches.reshape(n, -1, c * p * p).to(embeds.dtype))
        rows = (input_ids < 0).any(dim=1).nonzero().squeeze(1)
        if len(rows) != n:
            raise ValueError(f"{n} images for {len(rows)} rows with image tokens")
        out = embeds.clone()
        for image, row in enumerate(rows.tolist()):
            where = (input_ids[row] < 0).nonzero().squeeze(1)
            out[row, where] = feats[image, : len(where)]
        return out


class Phi3DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.heads = config.num_attention_heads
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj, self.self_attn.o_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.gate_up_proj = nn.Linear(d, 2 * config.intermediate_size)
        self.mlp.down_proj = nn.Linear(config.intermediate_size, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = self.self_attn.qkv_proj(self.input_layernorm(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.self_attn.o_proj(a.transpose(1, 2).reshape(b, t, d))
        gate, up = self.mlp.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.mlp.down_proj(F.silu(gate) * up)


class Phi3VPreTrainedModel(PreTrainedModel):
    config_class = Phi3VConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False


class Phi3VModel(Phi3VPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embed = nn.Embedding(4096, config.hidden_size)
        self.vision_embed_tokens = Phi3ImageEmbedding(config)
        self.layers = nn.ModuleList(Phi3DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, pixel_values=None, image_sizes=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embed_tokens(input_ids.clamp(min=0))
        if pixel_values is not None and (input_ids < 0).any():
            x = self.vision_embed_tokens(input_ids, x, pixel_values, image_sizes)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        x = x + self.position_embed(position_ids)
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        mask = mask | torch.eye(t, dtype=torch.bool, device=x.device)[None, None]  # padded rows stay finite
        states = [x]
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x)
        x = self.norm(x)
        states[-1] = x
        return BaseModelOutputWithPast(last_hidden_state=x,
                                       hidden_states=tuple(states) if output_hidden_states else None)


class Phi3VForCausalLM(Phi3VPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, pixel_values=None, image_sizes=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         pixel_values=pixel_values, image_sizes=image_sizes, output_hidden_states=True)
        logits = self.lm_head(out.last_hidden_state)
        return CausalLMOutputWithPast(logits=logits, hidden_states=out.hidden_states)
