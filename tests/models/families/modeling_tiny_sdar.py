"""A tiny model with SDAR's published layout and calling convention, written for rlwork's tests.

Our own code; what it follows are the facts rlwork depends on (rlwork/models/families.py), from SDAR's
`modeling_sdar.py`: `SDARForCausalLM.forward(input_ids, attention_mask, position_ids, past_key_values,
inputs_embeds, labels, use_cache, output_attentions, output_hidden_states, cache_position, logits_to_keep=0,
**kwargs)`. In eval mode the attention `.bool()`s the mask (True = may attend) for sdpa; with an HF cache it writes
keys/values only when `store_kv=True` and otherwise reads the cache without writing; the output carries the cache
when use_cache. In train mode the forward runs its own block-diffusion training path (labels required) and returns
no logits. Qwen3 names: model.layers.N.self_attn.{q_proj, k_proj, v_proj, o_proj, q_norm, k_norm},
mlp.{gate_proj, up_proj, down_proj}, input_layernorm, post_attention_layernorm, model.norm, lm_head; config
`block_size`; `SDARForCausalLM(SDARPreTrainedModel, GenerationMixin)`, registered under AutoModelForCausalLM.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class SDARConfig(PretrainedConfig):
    model_type = "sdar"

    def __init__(self, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-6,
                 block_size=4, initializer_range=0.02, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads, self.head_dim, self.rope_theta = num_key_value_heads, head_dim, rope_theta
        self.rms_norm_eps, self.block_size, self.initializer_range = rms_norm_eps, block_size, initializer_range
        super().__init__(**kwargs)


class SDARRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class SDARAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, config.head_dim
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = SDARRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = SDARRMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_value=None, store_kv=False):
        b, t, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(b, t, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(b, t, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if past_key_value is not None and store_kv:
            k, v = past_key_value.update(k, v, self.layer_idx)
        elif past_key_value is not None and len(past_key_value.layers) > self.layer_idx:  # read, do not store
            layer = past_key_value.layers[self.layer_idx]
            if layer.keys is not None and layer.keys.numel():
                k, v = torch.cat([layer.keys, k], dim=-2), torch.cat([layer.values, v], dim=-2)
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        mask = attention_mask.bool() if attention_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SDARMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SDARDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn, self.mlp = SDARAttention(config, layer_idx), SDARMLP(config)
        self.input_layernorm = SDARRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = SDARRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, position_embeddings, attention_mask, past_key_value, store_kv):
        x = x + self.self_attn(self.input_layernorm(x), position_embeddings, attention_mask, past_key_value, store_kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class SDARPreTrainedModel(PreTrainedModel):
    config_class = SDARConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)


class SDARModel(SDARPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([SDARDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = SDARRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, store_kv=None, **kwargs):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(past, past + x.shape[1], device=x.device)[None]
        dim = self.config.head_dim
        inv = 1.0 / self.config.rope_theta ** (torch.arange(0, dim, 2, device=x.device).float() / dim)
        angles = torch.cat([position_ids[..., None].float() * inv] * 2, dim=-1)[:, None]  # [N, 1, T, D]
        for layer in self.layers:
            x = layer(x, (angles.cos(), angles.sin()), attention_mask, past_key_values, bool(store_kv))
        return self.norm(x), (past_key_values if use_cache else None)


class SDARForCausalLM(SDARPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = SDARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                cache_position=None, logits_to_keep=0, **kwargs):
        if self.training:  # SDAR's own training path: it noises the labels itself and returns a loss, no logits
            if labels is None:
                raise ValueError("Labels must be provided for training.")
            hidden, _ = self.model(input_ids=input_ids, position_ids=position_ids)
            loss = F.cross_entropy(self.lm_head(hidden).flatten(0, 1), labels.flatten(), ignore_index=-100)
            return CausalLMOutputWithPast(loss=loss, logits=None)
        hidden, cache = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                   store_kv=kwargs.get("store_kv"))
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(logits=self.lm_head(hidden[:, keep, :]), past_key_values=cache)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head
