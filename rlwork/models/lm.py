"""The diffusion-model layer: one small interface to every diffusion LM family.

A masked/block diffusion LM is an ordinary HF transformer called with a *different attention mask* and a
*mask token*. What differs between families, and what this module owns:

- attention: **block-causal** (Stable-DiffCoder, SDAR: block i attends to blocks <= i, blocks aligned to the
  sequence start) or **bidirectional** (LLaDA, Dream, DiffuCoder);
- logit alignment: **unshifted** (Stable-DiffCoder, SDAR, LLaDA: logits at i predict token i) or **shifted**
  (Dream, DiffuCoder: logits at i-1 predict token i). `DiffusionLM.forward` always returns aligned logits;
- special ids (mask, eos, pad), read from the checkpoint's config/tokenizer and checked against the preset;
- how `forward` is called (mask keyword and format, positions, cache keyword, logits_to_keep), the auto class and
  the LoRA target names: each family's published modelling code differs (`rlwork.models.families`).

A plain `model(ids)` call on a Llama is *causal*, which is wrong for every one of these models: every
forward pass in rlwork goes through `DiffusionLM.forward`, which builds the family's 4-D mask, so the
sampler and the likelihood code see exactly the same attention.

Shape letters: N rows, T query length, K key length (cached + current), V vocabulary.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from rlwork.models.families import (  # noqa: F401 (re-exported: the family facts live in families.py)
    FAMILIES,
    AttentionKind,
    FamilySpec,
    ForwardConvention,
    get_family,
    lora_target_paths,
    resolve_family,
)

# ---------------------------------------------------------------------------------------------------------------
# Attention masks (pure functions)


def position_ids_from_mask(key_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE or block alignment.

    key_mask: [N, K] bool (True = real token). Returns [N, K] int64; padding positions get 0.
    """
    return (key_mask.long().cumsum(-1) - 1).clamp_min(0)


def set_flush_denormal(enabled: bool) -> bool:
    """Flush subnormal floats to zero on CPU for this process, or keep them (`ModelConfig.flush_denormal`).

    The flag is per thread and torch's intra-op worker threads copy it from the thread that starts them, so set it
    before the first parallel op: the CLI does so before it imports a trainer, and `policies.load_model` again.
    Returns whether this CPU can flush (x86 with SSE3, arm64); asking for it on one that cannot warns.
    """
    supported = torch.set_flush_denormal(enabled)
    if enabled and not supported:
        warnings.warn("this CPU cannot flush subnormal floats to zero (model.flush_denormal=true): arithmetic on "
                      "them stays slow; set model.flush_denormal=false to silence this", stacklevel=2)
    return supported


def allowed_attention(
    key_mask: Tensor, query_len: int, attention: AttentionKind, block_size: int | None
) -> Tensor:
    """Which keys each query may see, for the last `query_len` positions of the key sequence.

    key_mask: [N, K] bool over cached + current tokens (HF's 2-D convention, padding = False).
    Block-causal: a query in block b sees real keys in blocks <= b, blocks counted from the first real token.
    Bidirectional: a query sees every real key. A padding query sees only itself, so no softmax row is empty.
    Returns [N, 1, query_len, K] bool.
    """
    n, k = key_mask.shape
    allowed = key_mask[:, None, :].expand(n, query_len, k)  # [N, T, K]
    if attention == "block_causal":
        if block_size is None:
            raise ValueError("block-causal attention needs a block_size")
        key_block = position_ids_from_mask(key_mask) // block_size  # [N, K]
        query_block = key_block[:, k - query_len:]  # [N, T]
        allowed = allowed & (key_block[:, None, :] <= query_block[:, :, None])
    elif attention != "bidirectional":
        raise ValueError(f"unknown attention kind '{attention}'")
    own = torch.zeros(query_len, k, dtype=torch.bool, device=key_mask.device)
    own[torch.arange(query_len), torch.arange(k - query_len, k)] = True
    pad_query = ~key_mask[:, k - query_len:, None]  # [N, T, 1]
    allowed = torch.where(pad_query, own[None], allowed)
    return allowed[:, None]


def attention_bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool [N, 1, T, K] -> additive float mask (0 where allowed, dtype's min elsewhere) for eager and sdpa."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


def align_logits(logits: Tensor, shift: bool) -> Tensor:
    """Make logits[:, i] predict token i. Shifted families predict token i at position i-1.

    logits: [N, T, V]. Position 0 of a shifted model has no prediction of its own; it reuses position 0's
    logits (as Dream's reference code does). Position 0 is always a prompt token, so it is never scored.
    """
    if not shift:
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# The wrapper


class DiffusionLM:
    """A HF model + tokenizer + resolved family facts. Every forward pass goes through `forward`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, family: FamilySpec):
        if family.mask_token_id is None or family.eos_token_id is None or family.pad_token_id is None:
            raise ValueError(f"family '{family.name}' is not resolved: build it with resolve_family()")
        self.model = model
        self.tokenizer = tokenizer
        self.family = family

    @property
    def mask_id(self) -> int:
        return self.family.mask_token_id  # type: ignore[return-value]

    @property
    def eos_id(self) -> int:
        return self.family.eos_token_id  # type: ignore[return-value]

    @property
    def pad_id(self) -> int:
        return self.family.pad_token_id  # type: ignore[return-value]

    @property
    def block_size(self) -> int | None:
        return self.family.block_size

    @property
    def block_causal(self) -> bool:
        return self.family.attention == "block_causal"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(
        self,
        input_ids: Tensor,
        key_mask: Tensor | None = None,
        *,
        allowed: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        model: torch.nn.Module | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[Tensor, Any]:
        """Aligned logits for `input_ids` under the family's attention.

        input_ids: [N, T]. key_mask: [N, K] bool over cached + current tokens (K = cached + T); None = all real.
        `allowed` ([N, 1, T, K] bool) replaces the family mask for custom constructions (the doubled-sequence
        ELBO); then `position_ids` ([N, T]) must be given too. `model` overrides the wrapped module (a DeepSpeed
        engine or peft wrapper around the same weights). `logits_to_keep` = k > 0 computes the LM head on the
        last k positions only (the ELBO scores only the trailing noisy completion). Returns (logits [N, T or k, V],
        cache or None).
        """
        n, t = input_ids.shape
        keep = 0 if logits_to_keep >= t else logits_to_keep
        shift, conv = self.family.shift_logits, self.family.forward
        if allowed is None:
            if key_mask is None:
                past = 0 if cache is None else cache.get_seq_length()
                key_mask = torch.ones(n, past + t, dtype=torch.bool, device=input_ids.device)
            allowed = allowed_attention(key_mask, t, self.family.attention, self.family.block_size)
            if position_ids is None and conv.position_ids:
                position_ids = position_ids_from_mask(key_mask)[:, -t:]
        elif position_ids is None:
            raise ValueError("a custom `allowed` mask needs explicit position_ids")
        elif not conv.position_ids:  # positions then count from the first column (RoPE: only differences matter)
            raise ValueError(f"the '{self.family.name}' family's forward takes no position_ids: a custom mask with "
                             "its own positions (the block-causal doubled sequence) cannot be expressed for it")
        mask = attention_bias(allowed, self.dtype) if conv.mask_format == "additive" else allowed
        kwargs: dict[str, Any] = {conv.mask_arg: mask, "use_cache": use_cache}
        if conv.position_ids:
            kwargs["position_ids"] = position_ids
        if cache is not None or use_cache:
            if conv.cache_arg is None:
                raise ValueError(f"the '{self.family.name}' family's forward returns no KV cache rlwork can use: "
                                 "set sampler.use_cache=false")
            kwargs[conv.cache_arg] = cache
            kwargs.update(dict(conv.cache_write) if use_cache else {})
        if keep and conv.logits_to_keep_arg is not None:
            kwargs[conv.logits_to_keep_arg] = keep + shift  # a shifted family needs one position more
        out = (model or self.model)(input_ids=input_ids, **kwargs)
        logits = out.logits if not keep or conv.logits_to_keep_arg else out.logits[:, -(keep + shift):]
        logits = align_logits(logits, shift)
        return (logits[:, 1:] if keep and shift else logits), (getattr(out, conv.cache_out) if use_cache else None)

    def train_mode(self, module: torch.nn.Module) -> None:
        """`module.train()` (the policy wrapper: peft model or DeepSpeed engine), except that a family whose
        checkpoint runs its own training path in train mode (SDAR) keeps every module in eval mode but dropout
        (the adapter's): gradients flow the same in eval mode."""
        module.train()
        if not self.family.forward.train_mode_forward:
            for sub in module.modules():
                if not isinstance(sub, torch.nn.Dropout):
                    sub.training = False

    __call__ = forward


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def attention_kwargs(spec: FamilySpec, attn_implementation: str) -> dict[str, str]:
    """`from_pretrained`'s attention keyword for the family: none where the class picks its own (LLaDA)."""
    return {"attn_implementation": attn_implementation} if spec.attn_implementation else {}


def load_diffusion_lm(
    path: str,
    family: str,
    *,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    block_size: int | None = None,
) -> DiffusionLM:
    """Load a checkpoint the way a real one is loaded (the family's auto class, e.g. `AutoModelForCausalLM`) and wrap
    it.

    `path="tiny"` (Stable-DiffCoder layout) or `"tiny-bidirectional"` builds once, caches and loads an embedded
    tiny coder through the same path.
    """
    import transformers
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    from rlwork.models.tiny import TINY_VARIANTS, ensure_tiny_coder

    if path in TINY_VARIANTS:
        path = str(ensure_tiny_coder(path))
        trust_remote_code = True  # our own modelling file, shipped inside the checkpoint like the real one
    preset = get_family(family)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto = getattr(transformers, preset.auto_class)  # Dream, DiffuCoder and LLaDA map AutoModel
        model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=DTYPES[dtype],
                                     **attention_kwargs(preset, attn_implementation))
    except OSError as err:
        raise ValueError(
            f"could not load model.path='{path}' ({err}); pass a local HF checkpoint folder, an rlwork run or "
            "checkpoint folder, or 'tiny' for the embedded tiny coder (no hub downloads are possible offline)"
        ) from None
    spec = resolve_family(preset, model.config, tokenizer, block_size=block_size)
    if spec.attention == "bidirectional" and getattr(model.config, "is_causal", True):
        model.config.is_causal = False  # plain calls become bidirectional too; our masks are explicit anyway
    return DiffusionLM(model.to(device), tokenizer, spec)
