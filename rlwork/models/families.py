"""Diffusion LM families: the facts rlwork needs about each one, read from its published modelling code.

A preset fixes three things: the diffusion facts (attention kind, block size, logit shift, special ids checked
against the released checkpoints), how the family's `forward` is called (`ForwardConvention`), and which linear
layers get LoRA adapters. From the published remote code of each family's checkpoints:

- Stable-DiffCoder (`StableDiffcoderForCausalLM(LlamaForCausalLM)`): the installed transformers' Llama forward,
  `forward(input_ids, attention_mask, position_ids, cache, ..., logits_to_keep)`: a 4-D additive float mask,
  explicit positions, an HF `Cache` under `cache`. Llama names: q/k/v/o_proj, gate/up/down_proj.
- SDAR (`SDARForCausalLM`, a Qwen3 layout with q_norm/k_norm; written for transformers 4.x):
  `forward(input_ids, attention_mask, position_ids, past_key_values, ..., logits_to_keep, **kwargs)`. In eval
  mode its attention `.bool()`s the mask (True = may attend, so an additive float mask would come out inverted)
  and passes it to sdpa (a mask without any False goes to flash-attn, which the checkpoint then needs); the KV
  cache is written only with `store_kv=True`. In train mode the forward runs its own block-diffusion loss and
  returns no logits: rlwork keeps the checkpoint's modules in eval mode while training them
  (`DiffusionLM.train_mode`). Qwen names, as Stable-DiffCoder.
- LLaDA (`LLaDAModelLM`, registered under AutoModel): `forward(input_ids, inputs_embeds, attention_mask,
  attention_bias, past_key_values, labels, use_cache, ...)`: no positions (RoPE counts from the first column;
  left padding shifts every real token alike, and RoPE sees only differences) and no logits_to_keep. The 4-D mask
  goes in as `attention_bias` (a float bias is added to the scores). Its cache is a list of (k, v) tuples that its
  bias slicing expects with a square mask: rlwork samples it without a cache. Layers `model.transformer.blocks.N`
  with q_proj, k_proj, v_proj, attn_out, ff_proj, up_proj, ff_out; the LM head is `model.transformer.ff_out` too,
  and must not get an adapter (`lora_target_paths` leaves the output embedding out).
- Dream and DiffuCoder (`DreamModel`, registered under AutoModel; DiffuCoder ships Dream's modelling code):
  `forward(input_ids, attention_mask, position_ids, past_key_values, ..., num_logits_to_keep)`; the 4-D mask
  goes to sdpa as is (added to the scores in eager); the output (`MaskedLMOutput`) carries no cache, so rlwork
  samples without one. Qwen2 names (q/k/v_proj with bias, o_proj, gate/up/down_proj).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from rlwork.config import ConfigError

AttentionKind = Literal["block_causal", "bidirectional"]


@dataclass(frozen=True, kw_only=True)
class ForwardConvention:
    """How a family's `forward` is called (`DiffusionLM.forward` builds the call from this)."""

    mask_arg: str = "attention_mask"
    """Keyword that takes the 4-D [N, 1, T, K] attention mask."""
    mask_format: Literal["additive", "bool"] = "additive"
    """additive: 0 where allowed, the dtype's min elsewhere; bool: True where allowed."""
    position_ids: bool = True
    """Whether the forward takes `position_ids` (without them, positions count from the first column)."""
    cache_arg: str | None = "cache"
    """Keyword of the HF KV cache (transformers 5: `cache`; remote code for 4.x: `past_key_values`); None: no
    cache rlwork can use (sampler.use_cache must be false)."""
    cache_out: str | None = "cache"
    """Attribute of the output that returns the cache."""
    cache_write: tuple[tuple[str, Any], ...] = ()
    """Extra keywords with which a cached forward writes the new keys/values (SDAR: store_kv=True)."""
    logits_to_keep_arg: str | None = "logits_to_keep"
    """Keyword that limits the LM head to the last k positions; None: rlwork slices the full logits."""
    train_mode_forward: bool = True
    """False: in train mode the checkpoint's forward takes its own training path, so its modules stay in eval mode."""


HF_CONVENTION = ForwardConvention()
SDAR_CONVENTION = ForwardConvention(mask_format="bool", cache_arg="past_key_values", cache_out="past_key_values",
                                    cache_write=(("store_kv", True),), train_mode_forward=False)
LLADA_CONVENTION = ForwardConvention(mask_arg="attention_bias", position_ids=False, cache_arg=None, cache_out=None,
                                     logits_to_keep_arg=None)
DREAM_CONVENTION = ForwardConvention(cache_arg=None, cache_out=None, logits_to_keep_arg="num_logits_to_keep")

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Llama/Qwen attention and MLP projections (Stable-DiffCoder, SDAR, Dream, DiffuCoder)."""
LLADA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
"""LLaDA's block projections: attn_out is the output projection, ff_proj the gate, ff_out the down projection."""


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
    auto_class: Literal["AutoModelForCausalLM", "AutoModel"] = "AutoModelForCausalLM"
    """The transformers auto class the checkpoints map in their `auto_map`."""
    attn_implementation: bool = True
    """Whether the model class takes transformers' `attn_implementation` (LLaDA's runs its own sdpa and declares no
    support, so asking for one raises): model.attn_implementation applies only where it does."""
    forward: ForwardConvention = HF_CONVENTION
    lora_targets: tuple[str, ...] = LLAMA_TARGETS
    """Module names (last part of the path) that get adapters when lora.target_modules is null."""


# Ids are fixed only where they were checked against the released checkpoints (FIELD-NOTES.md); elsewhere they
# are read from the checkpoint, and a checkpoint that names none is an error, not a guess.
FAMILIES: dict[str, FamilySpec] = {
    "stable-diffcoder": FamilySpec(
        name="stable-diffcoder", attention="block_causal", block_size=4, shift_logits=False,
        mask_token_id=5, eos_token_id=2, pad_token_id=1,
    ),
    "sdar": FamilySpec(name="sdar", attention="block_causal", block_size=4, shift_logits=False, mask_token="<|MASK|>",
                       forward=SDAR_CONVENTION),
    "llada": FamilySpec(name="llada", attention="bidirectional", block_size=None, shift_logits=False,
                        mask_token_id=126336, mask_token="<|mdm_mask|>", auto_class="AutoModel",
                        attn_implementation=False, forward=LLADA_CONVENTION, lora_targets=LLADA_TARGETS),
    "dream": FamilySpec(name="dream", attention="bidirectional", block_size=None, shift_logits=True,
                        mask_token_id=151666, mask_token="<|mask|>", auto_class="AutoModel", forward=DREAM_CONVENTION),
    "diffucoder": FamilySpec(name="diffucoder", attention="bidirectional", block_size=None, shift_logits=True,
                             mask_token_id=151666, mask_token="<|mask|>", auto_class="AutoModel",
                             forward=DREAM_CONVENTION),
    # Generic layouts for other checkpoints (and the tiny coders): every id comes from the checkpoint.
    "block-diffusion": FamilySpec(name="block-diffusion", attention="block_causal", block_size=4, shift_logits=False),
    "masked-diffusion": FamilySpec(name="masked-diffusion", attention="bidirectional", block_size=None,
                                   shift_logits=False),
    "masked-diffusion-shifted": FamilySpec(name="masked-diffusion-shifted", attention="bidirectional",
                                           block_size=None, shift_logits=True),
}


def convention_dict(convention: ForwardConvention) -> dict[str, Any]:
    """The convention as the plain dict `rlwork.models.diffusion_kernel.call_model` takes (and config.json keeps)."""
    return {field.name: getattr(convention, field.name) for field in dataclasses.fields(convention)}


def family_facts(family: FamilySpec) -> dict[str, Any]:
    """What the sampler kernel (`rlwork.models.diffusion_kernel`) needs about a resolved family, as plain values."""
    return {"mask_token_id": family.mask_token_id, "eos_token_id": family.eos_token_id,
            "pad_token_id": family.pad_token_id, "attention": family.attention, "block_size": family.block_size,
            "shift_logits": family.shift_logits, "forward": convention_dict(family.forward)}


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


def lora_target_paths(model: nn.Module, names: Sequence[str], family: FamilySpec) -> list[str]:
    """Full paths of the linear layers called `names` (the last part of a path) inside the numbered transformer
    layers of `model`, the output embedding (LM head) left out; peft adapts exactly these.

    A name found in no layer, or in some layers only, raises ConfigError naming lora.target_modules: with name
    matching alone, a Llama name list on LLaDA adapts a subset of its projections, and LLaDA's `ff_out` also names
    its LM head.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = [name for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and module is not head and _layer(name) is not None]
    layers = sorted({_layer(name) for name in linear})
    paths, problems = [], []
    for target in names:
        found = [name for name in linear if name.rsplit(".", 1)[-1] == target]
        covered = {_layer(name) for name in found}
        if not found:
            problems.append(f"'{target}' is in none of its {len(layers)} layers")
        elif len(covered) < len(layers):
            problems.append(f"'{target}' is in {len(covered)} of its {len(layers)} layers")
        paths += found
    if problems:
        own = sorted({name.rsplit(".", 1)[-1] for name in linear if _layer(name) == layers[0]}) if layers else []
        raise ConfigError(
            f"lora.target_modules={list(names)}: {'; '.join(problems)} ({type(model).__name__}, model.family="
            f"{family.name}). Its layers' linear modules are {own}: name those, or null for the family's "
            f"{list(family.lora_targets)}")
    return paths


def _layer(path: str) -> str | None:
    """'model.layers.3.self_attn.q_proj' -> 'model.layers.3' (the first numbered part of the path), else None."""
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    return path[:match.end(1)] if match else None
