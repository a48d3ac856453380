"""A tiny model with Dream's published layout and calling convention (DiffuCoder ships the same modelling code),
written for rlwork's tests.

Our own code; what it follows are the facts rlwork depends on (rlwork/models/families.py), from Dream's
`modeling_dream.py`: `DreamModel.forward(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
labels, use_cache, output_attentions, output_hidden_states, return_dict, cache_position, num_logits_to_keep=0,
**loss_kwargs)` returns a `MaskedLMOutput` (logits only, no cache); a tensor `attention_mask` goes to sdpa as is
(non-causal; anything else means full attention); positions default to the column index; the head at position i
predicts token i + 1 (shifted); Qwen2 names: model.layers.N.self_attn.{q_proj, k_proj, v_proj (with bias), o_proj},
mlp.{gate_proj, up_proj, down_proj}, input_layernorm, post_attention_layernorm, model.norm, lm_head; registered
under AutoModel. Its only generation mixin is Dream's own (diffusion_generate), so under transformers 5 it has no
`prepare_inputs_for_generation` (which peft's causal-LM wrapper reads).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(self, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
                 initializer_range=0.02, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads, self.rope_theta, self.rms_norm_eps = num_key_value_heads, rope_theta, rms_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class DreamRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.variance_epsilon = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class DreamAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask, cos, sin):
        b, t, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class DreamMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn, self.mlp = DreamAttention(config), DreamMLP(config)
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, attention_mask, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), attention_mask, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()


class DreamBaseModel(DreamPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DreamDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device)[None]
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        inv = 1.0 / self.config.rope_theta ** (torch.arange(0, head_dim, 2, device=x.device).float() / head_dim)
        freqs = position_ids[..., None].float() * inv  # [N, T, D/2]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [N, 1, T, D]
        for layer in self.layers:
            x = layer(x, attention_mask, angles.cos(), angles.sin())
        return self.norm(x)


class DreamModel(DreamPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, num_logits_to_keep=0, **loss_kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds)
        return MaskedLMOutput(logits=self.lm_head(hidden[:, -num_logits_to_keep:, :]))

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head
