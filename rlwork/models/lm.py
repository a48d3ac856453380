"""The diffusion-model layer: one small interface to every diffusion LM family.

A masked/block diffusion LM is an ordinary HF transformer called with a *different attention mask* and a
*mask token*. What differs between families, and what this module owns:

- attention: **block-causal** (Stable-DiffCoder, SDAR: block i attends to blocks <= i, blocks aligned to the
  sequence start) or **bidirectional** (LLaDA, Dream, DiffuCoder);
- logit alignment: **unshifted** (Stable-DiffCoder, SDAR, LLaDA: logits at i predict token i) or **shifted**
  (Dream, DiffuCoder: logits at i-1 predict token i). `DiffusionLM.forward` always returns aligned logits;
- special ids (mask, eos, pad), read from the checkpoint's config/tokenizer and checked against the preset.

A plain `model(ids)` call on a Llama is *causal*, which is wrong for every one of these models: every
forward pass in rlwork goes through `DiffusionLM.forward`, which builds the family's 4-D mask, so the
sampler and the likelihood code see exactly the same attention.

Shape letters: N rows, T query length, K key length (cached + current), V vocabulary.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

AttentionKind = Literal["block_causal", "bidirectional"]


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """The facts rlwork needs about a diffusion LM family. Ids are None where the preset does not fix them."""

    name: str
    attention: AttentionKind
    block_size: int | None
    """Tokens per block for block-causal attention; None for bidirectional families."""
    shift_logits: bool
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    mask_token: str | None = None
    """The mask token's text, used to find its id in a tokenizer that does not declare `mask_token`."""


# Ids are fixed only where they were checked against the released checkpoints (FIELD-NOTES.md); elsewhere they
# are read from the checkpoint, and a checkpoint that names none is an error, not a guess.
FAMILIES: dict[str, FamilySpec] = {
    "stable-diffcoder": FamilySpec(
        name="stable-diffcoder", attention="block_causal", block_size=4, shift_logits=False,
        mask_token_id=5, eos_token_id=2, pad_token_id=1,
    ),
    "sdar": FamilySpec(name="sdar", attention="block_causal", block_size=4, shift_logits=False, mask_token="<|MASK|>"),
    "llada": FamilySpec(name="llada", attention="bidirectional", block_size=None, shift_logits=False,
                        mask_token_id=126336, mask_token="<|mdm_mask|>"),
    "dream": FamilySpec(name="dream", attention="bidirectional", block_size=None, shift_logits=True,
                        mask_token_id=151666, mask_token="<|mask|>"),
    "diffucoder": FamilySpec(name="diffucoder", attention="bidirectional", block_size=None, shift_logits=True,
                             mask_token_id=151666, mask_token="<|mask|>"),
    # Generic layouts for other checkpoints (and the tiny coders): every id comes from the checkpoint.
    "block-diffusion": FamilySpec(name="block-diffusion", attention="block_causal", block_size=4, shift_logits=False),
    "masked-diffusion": FamilySpec(name="masked-diffusion", attention="bidirectional", block_size=None,
                                   shift_logits=False),
    "masked-diffusion-shifted": FamilySpec(name="masked-diffusion-shifted", attention="bidirectional",
                                           block_size=None, shift_logits=True),
}


def get_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}': choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def resolve_family(spec: FamilySpec, config: Any, tokenizer: Any, block_size: int | None = None) -> FamilySpec:
    """Fill the preset's ids from the checkpoint (config first, then tokenizer) and check them.

    A value present in two places that disagree, or that contradicts the preset, raises ValueError.
    """
    resolved: dict[str, int] = {}
    for field in ("mask_token_id", "eos_token_id", "pad_token_id"):
        sources: dict[str, int] = {}
        from_config = _single_id(getattr(config, field, None))
        if from_config is not None:
            sources["config.json"] = from_config
        from_tok = getattr(tokenizer, field, None)
        if from_tok is None and field == "mask_token_id" and spec.mask_token is not None:
            token_id = tokenizer.convert_tokens_to_ids(spec.mask_token)
            from_tok = token_id if token_id != getattr(tokenizer, "unk_token_id", None) else None
        if from_tok is not None:
            sources["tokenizer"] = int(from_tok)
        if getattr(spec, field) is not None:
            sources[f"the '{spec.name}' preset"] = getattr(spec, field)
        values = set(sources.values())
        if len(values) > 1:
            found = ", ".join(f"{where}: {value}" for where, value in sources.items())
            raise ValueError(
                f"{field} disagrees ({found}): this checkpoint does not match the '{spec.name}' family; "
                f"pick the right model.family or fix the checkpoint's config/tokenizer"
            )
        if not values:
            if field == "pad_token_id" and "eos_token_id" in resolved:
                resolved[field] = resolved["eos_token_id"]  # common convention: pad = eos when none is declared
                continue
            raise ValueError(
                f"{field} is declared neither in the checkpoint's config nor its tokenizer, and the '{spec.name}' "
                f"preset does not fix it: add it to config.json (e.g. \"{field}\": ...)"
            )
        resolved[field] = values.pop()
    if spec.attention == "block_causal":
        from_config = getattr(config, "block_size", None) or getattr(config, "block_length", None)
        chosen = block_size or from_config or spec.block_size
        if from_config is not None and block_size is not None and block_size != from_config:
            raise ValueError(
                f"model.block_size={block_size} but the checkpoint was trained with block size {from_config}: "
                "drop the override"
            )
        block = int(chosen)
    else:
        if block_size is not None:
            raise ValueError(f"model.block_size applies to block-causal families, not '{spec.name}': remove it")
        block = None
    return dataclasses.replace(spec, block_size=block, **resolved)


def _single_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


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
        shift = self.family.shift_logits
        if allowed is None:
            if key_mask is None:
                past = 0 if cache is None else cache.get_seq_length()
                key_mask = torch.ones(n, past + t, dtype=torch.bool, device=input_ids.device)
            allowed = allowed_attention(key_mask, t, self.family.attention, self.family.block_size)
            if position_ids is None:
                position_ids = position_ids_from_mask(key_mask)[:, -t:]
        elif position_ids is None:
            raise ValueError("a custom `allowed` mask needs explicit position_ids")
        out = (model or self.model)(
            input_ids=input_ids,
            attention_mask=attention_bias(allowed, self.dtype),
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **({"logits_to_keep": keep + shift} if keep else {}),  # a shifted family needs one position more
        )
        logits = align_logits(out.logits, shift)
        return (logits[:, 1:] if keep and shift else logits), (out.cache if use_cache else None)

    __call__ = forward


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    """Load a checkpoint the way a real one is loaded (`AutoModelForCausalLM.from_pretrained`) and wrap it.

    `path="tiny"` (Stable-DiffCoder layout) or `"tiny-bidirectional"` builds once, caches and loads an embedded
    tiny coder through the same path.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    from rlwork.models.tiny import TINY_VARIANTS, ensure_tiny_coder

    if path in TINY_VARIANTS:
        path = str(ensure_tiny_coder(path))
        trust_remote_code = True  # our own modelling file, shipped inside the checkpoint like the real one
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, dtype=DTYPES[dtype], attn_implementation=attn_implementation
        )
    except OSError as err:
        raise ValueError(
            f"could not load model.path='{path}' ({err}); pass a local HF checkpoint folder, an rlwork run or "
            "checkpoint folder, or 'tiny' for the embedded tiny coder (no hub downloads are possible offline)"
        ) from None
    spec = resolve_family(get_family(family), model.config, tokenizer, block_size=block_size)
    if spec.attention == "bidirectional" and getattr(model.config, "is_causal", True):
        model.config.is_causal = False  # plain calls become bidirectional too; our masks are explicit anyway
    return DiffusionLM(model.to(device), tokenizer, spec)
