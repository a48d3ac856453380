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
sampler and the likelihood code see exactly the same attention. The mask maths and the convention-driven model
call live in `rlwork.models.diffusion_kernel` (torch only), which exported folders run too.

Shape letters: N rows, T query length, K key length (cached + current), V vocabulary.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from rlwork.models.diffusion_kernel import (  # noqa: F401 (re-exported: the mask maths live in the kernel)
    align_logits,
    allowed_attention,
    attention_bias,
    call_model,
    position_ids_from_mask,
)
from rlwork.models.families import (  # noqa: F401 (re-exported: the family facts live in families.py)
    FAMILIES,
    AttentionKind,
    FamilySpec,
    ForwardConvention,
    convention_dict,
    family_facts,
    get_family,
    lora_target_paths,
    resolve_family,
)


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
        conv = self.family.forward
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
        if (cache is not None or use_cache) and conv.cache_arg is None:
            raise ValueError(f"the '{self.family.name}' family's forward returns no KV cache rlwork can use: "
                             "set sampler.use_cache=false")
        return call_model(model or self.model, convention_dict(conv), input_ids, allowed, position_ids,
                          dtype=self.dtype, shift=self.family.shift_logits, cache=cache, use_cache=use_cache,
                          logits_to_keep=logits_to_keep)

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
