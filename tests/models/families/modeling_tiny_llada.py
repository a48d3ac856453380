"""A tiny model with LLaDA's published layout and calling convention, written for rlwork's tests.

Our own code; what it follows are the facts rlwork depends on (rlwork/models/families.py), from LLaDA's
`modeling_llada.py`: `LLaDAModelLM.forward(input_ids, inputs_embeds, attention_mask, attention_bias,
past_key_values, labels, use_cache, output_attentions, output_hidden_states, return_dict, cache_position)` takes no
positions and no logits_to_keep; RoPE positions count from the first column; a float `attention_bias` is added to
the scores and a bool one converted, sliced as [:, :, K - Q:K, :K]; a 2-D `attention_mask` marks padding keys; the
cache is a list of (k, v) per block; weights live under `model.transformer` (wte, blocks.N.{attn_norm, q_proj,
k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out}, ln_f, and ff_out = the LM head); the class does not
declare sdpa support (it runs its own) and is registered under AutoModel.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, vocab_size=1024, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=128,
                 rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.02, **kwargs):
        self.vocab_size, self.d_model, self.n_heads, self.n_kv_heads = vocab_size, d_model, n_heads, n_kv_heads
        self.n_layers, self.mlp_hidden_size, self.rope_theta = n_layers, mlp_hidden_size, rope_theta
        self.rms_norm_eps, self.initializer_range = rms_norm_eps, initializer_range
        super().__init__(**kwargs)


class RMSLayerNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class LLaDALlamaBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, self.heads, self.kv_heads = config.d_model, config.n_heads, config.n_kv_heads
        self.head_dim, self.theta = d // config.n_heads, config.rope_theta
        self.attn_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=False)

    def rope(self, length, device):
        inv = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        freqs = torch.arange(length, device=device).float()[:, None] * inv[None]  # positions = column index
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if layer_past is not None:
            k, v = torch.cat([layer_past[0], k], dim=-2), torch.cat([layer_past[1], v], dim=-2)
        present = (k, v) if use_cache else None
        q_len, k_len = q.shape[-2], k.shape[-2]
        cos, sin = self.rope(k_len, x.device)
        q = q * cos[k_len - q_len:] + rotate_half(q) * sin[k_len - q_len:]
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        bias = None if attention_bias is None else attention_bias[:, :, k_len - q_len:k_len, :k_len].to(q.dtype)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, t, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h)), present


class LLaDAModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            blocks=nn.ModuleList([LLaDALlamaBlock(config) for _ in range(config.n_layers)]),
            ln_f=RMSLayerNorm(config.d_model, config.rms_norm_eps),
            ff_out=nn.Linear(config.d_model, config.vocab_size, bias=False),
        ))

    def forward(self, input_ids, input_embeddings=None, attention_mask=None, attention_bias=None,
                past_key_values=None, use_cache=False):
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        lowest = torch.finfo(torch.float).min
        if attention_bias is not None and attention_bias.dtype == torch.bool:
            attention_bias = torch.zeros(attention_bias.shape, device=x.device).masked_fill(~attention_bias, lowest)
        if attention_mask is not None and bool((attention_mask == 0).any()):
            padding = (1.0 - attention_mask.float())[:, None, None, :] * lowest
            attention_bias = padding if attention_bias is None else (attention_bias + padding).clamp_min(lowest)
        presents = [] if use_cache else None
        for i, block in enumerate(self.transformer.blocks):
            x, present = block(x, attention_bias, None if past_key_values is None else past_key_values[i], use_cache)
            if use_cache:
                presents.append(present)
        return self.transformer.ff_out(self.transformer.ln_f(x)), presents


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        logits, presents = self.model(input_ids, inputs_embeds, attention_mask, attention_bias, past_key_values,
                                      bool(use_cache))
        return CausalLMOutputWithPast(logits=logits, past_key_values=presents)

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def get_output_embeddings(self):
        return self.model.transformer.ff_out
