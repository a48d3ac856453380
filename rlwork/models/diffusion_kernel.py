"""The block-diffusion sampler and the family-aware forward call, torch only: the one implementation behind
rlwork's sampler (`rlwork.diffusion.sampler`) and every exported folder's `generate`.

`rlwork export` copies this file verbatim into the exported folder, so it imports nothing from rlwork (only torch,
and transformers lazily for `DynamicCache`) and takes plain dicts. facts: mask_token_id, eos_token_id,
pad_token_id, attention ("block_causal" | "bidirectional"), block_size, shift_logits, and forward (how the family's
`forward` is called: the fields of `rlwork.models.families.ForwardConvention`; exports that predate it get
`HF_CONVENTION`). settings: every key of SAMPLING_KEYS. What the sampler does family by family (block alignment,
KV caches, EOS rule, behaviour log-probs) is told in `rlwork.diffusion.sampler`'s docstring.

Shape letters: N rows, T query length, K key length (cached + current), W layout columns, b block length,
L = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SAMPLING_KEYS = ("max_new_tokens", "steps_per_block", "block_size", "temperature", "top_k", "top_p", "remasking",
                 "threshold", "use_cache")
"""The sampler's settings (`rlwork.config.SamplerConfig`'s fields)."""

HF_CONVENTION: dict[str, Any] = {"mask_arg": "attention_mask", "mask_format": "additive", "position_ids": True,
                                 "cache_arg": "cache", "cache_out": "cache", "cache_write": (),
                                 "logits_to_keep_arg": "logits_to_keep", "train_mode_forward": True}
"""transformers' own (Llama) forward: a 4-D additive mask, explicit positions, the cache under `cache`."""

REMASKING = ("low_confidence", "margin", "entropy", "random", "left_to_right")  # `propose`'s remasking scores

# Attention masks and the forward call


def position_ids_from_mask(key_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE or block alignment.

    key_mask: [N, K] bool (True = real token). Returns [N, K] int64; padding positions get 0.
    """
    return (key_mask.long().cumsum(-1) - 1).clamp_min(0)


def allowed_attention(key_mask: Tensor, query_len: int, attention: str, block_size: int | None) -> Tensor:
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


def call_model(model: Any, convention: Mapping[str, Any], input_ids: Tensor, allowed: Tensor,
               position_ids: Tensor | None, *, dtype: torch.dtype, shift: bool, cache: Any = None,
               use_cache: bool = False, logits_to_keep: int = 0) -> tuple[Tensor, Any]:
    """Call `model` the way its family's `forward` takes the mask, positions, cache and logits_to_keep.

    input_ids: [N, T]; allowed: [N, 1, T, K] bool; position_ids: [N, T] (dropped where the convention takes none).
    `logits_to_keep` = k > 0 returns only the last k positions. Returns (aligned logits [N, T or k, V], the cache
    the forward returned when use_cache, else None).
    """
    t = input_ids.shape[1]
    keep = 0 if logits_to_keep >= t else logits_to_keep
    mask = attention_bias(allowed, dtype) if convention["mask_format"] == "additive" else allowed
    kwargs: dict[str, Any] = {convention["mask_arg"]: mask, "use_cache": use_cache}
    if convention["position_ids"]:
        kwargs["position_ids"] = position_ids
    if cache is not None or use_cache:
        if convention["cache_arg"] is None:
            raise ValueError("this family's forward returns no KV cache that can be used: sample without a cache")
        kwargs[convention["cache_arg"]] = cache
        kwargs.update(dict(convention["cache_write"]) if use_cache else {})
    if keep and convention["logits_to_keep_arg"] is not None:
        kwargs[convention["logits_to_keep_arg"]] = keep + shift  # a shifted family needs one position more
    out = model(input_ids=input_ids, **kwargs)
    logits = out.logits if not keep or convention["logits_to_keep_arg"] else out.logits[:, -(keep + shift):]
    logits = align_logits(logits, shift)
    cache_out = getattr(out, convention["cache_out"]) if use_cache else None
    return (logits[:, 1:] if keep and shift else logits), cache_out


# Per-step maths


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set tokens outside the top-k / top-p nucleus to -inf. logits: [..., V]. The top token always survives."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # smallest set whose mass reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_logits(logits: Tensor, mask_id: int, temperature: float, top_k: int | None, top_p: float | None
                    ) -> Tensor:
    """Logits of the distribution the sampler draws a token from, at every position.

    The mask token removed (never a completion token); temperature > 0: logits / temperature, then the top-k and
    top-p filters (removed tokens at -inf); temperature 0 (greedy): the logits unscaled and unfiltered, the model's
    own distribution (greedy draws from none). logits: [..., V]. Returns [..., V], same dtype; differentiable
    except through the filters' choice of tokens.
    """
    logits = logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) == mask_id, float("-inf"))
    if temperature > 0:
        return filter_logits(logits / temperature, top_k, top_p)
    return logits


def propose(logits: Tensor, mask_id: int, temperature: float, top_k: int | None, top_p: float | None,
            remasking: str, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate token, its remasking score and its log-probability at every position.

    logits: [..., V] (any float dtype). Returns (x0 [...] int64; confidence [...] float64, higher = commit first;
    logp [...] float64, log-prob of x0 under `sampling_logits`). Gumbel-max in float64: argmax(l/T + g) with
    g = -log(-log u), the log form of LLaDA's exp(l)/(-log u)^T. generator None: torch's global generator.
    """
    logits = logits.to(torch.float64)
    scaled = sampling_logits(logits, mask_id, temperature, top_k, top_p)
    if temperature > 0:
        u = torch.rand(scaled.shape, dtype=torch.float64, device=scaled.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        x0 = (scaled + gumbel).argmax(-1)
    else:
        x0 = scaled.argmax(-1)
    logp = scaled.gather(-1, x0[..., None]).squeeze(-1) - scaled.logsumexp(-1)
    logits = logits.masked_fill(scaled == float("-inf"), float("-inf"))  # confidences over what could be drawn
    if remasking == "random":
        return x0, torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator), logp
    if remasking == "left_to_right":  # equal scores: `select` breaks ties leftmost (AR order in the block)
        return x0, torch.zeros_like(logp), logp
    probs = logits.softmax(-1)
    if remasking == "low_confidence":
        confidence = probs.gather(-1, x0[..., None]).squeeze(-1)
    elif remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[..., 0] - top2[..., 1]
    else:  # entropy: confident = low entropy
        confidence = torch.special.xlogy(probs, probs).sum(-1)
    return x0, confidence, logp


def transfer_schedule(num_masked: Tensor, steps: int, step: int) -> Tensor:
    """Tokens to commit at `step` of a block holding `num_masked` masks: an even split, earlier steps get the rest.

    num_masked: [N] int64 (masks at the block's start). Returns [N] int64.
    """
    return num_masked // steps + (step < num_masked % steps).long()


def select(masked: Tensor, confidence: Tensor, count: Tensor, threshold: float | None) -> Tensor:
    """Which masked positions to commit: the `count` most confident, and with `threshold` also every one at or
    above it (Fast-dLLM). masked: [N, b] bool, confidence: [N, b], count: [N] int64. Returns [N, b] bool.
    Ties go to the leftmost position. Without host syncs: per-row counts become a rank comparison.
    """
    confidence = confidence.masked_fill(~masked, float("-inf"))
    if threshold is not None:
        count = torch.maximum(count, (confidence >= threshold).sum(1))
    count = torch.minimum(count, masked.sum(1))
    order = confidence.argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(masked.shape[1], device=masked.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)  # rank[i, j] = place of position j in row i
    return rank < count[:, None]


def up_to_first_eos(ids: Tensor, eos_id: int) -> Tensor:
    """ids: [N, L]. Returns [N, L] bool: the positions up to and including each row's first EOS."""
    is_eos = (ids == eos_id).long()
    return (is_eos.cumsum(1) - is_eos) == 0


# Layout and cache


@dataclass(frozen=True)
class Layout:
    """Rows placed on shared columns. x, key_mask, gen: [N, W]; gen marks completion columns."""

    x: Tensor
    key_mask: Tensor
    gen: Tensor
    gen_start: list[int]
    blocks: list[tuple[int, int]]  # column ranges [s, t) denoised in order


def resolve_block(facts: Mapping[str, Any], block_size: int | None, length: int) -> int:
    """The semi-AR block length: a block-causal model's own block, else `block_size` or the whole completion."""
    if facts["attention"] != "block_causal":
        return int(block_size or length)
    if block_size is not None and block_size != facts["block_size"]:
        raise ValueError(f"block_size={block_size}, but this block-causal model was trained with blocks of "
                         f"{facts['block_size']}: pass block_size=None")
    return int(facts["block_size"])


def layout(prompt_ids: Tensor, prompt_mask: Tensor | None, length: int, block: int, block_causal: bool,
           pad_id: int, mask_id: int) -> Layout:
    """Left-pad prompts [N, P] (prompt_mask [N, P] bool, None = all real), then `length` masks. Block-causal: rows
    start on a block boundary, prompts end in one column block; bidirectional: blocks start at the completion."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] == 0:
        raise ValueError(f"prompt_ids has shape {tuple(prompt_ids.shape)}: pass a [N, P] batch with N >= 1")
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
    prompts = [ids[mask.bool()] for ids, mask in zip(prompt_ids, prompt_mask, strict=True)]
    lengths = [int(p.numel()) for p in prompts]
    if min(lengths) == 0:
        raise ValueError("a prompt has no real tokens (its mask is all False): drop it or give it a prompt")
    if block_causal:
        padded = [-(-n // block) * block for n in lengths]
        starts = [max(padded) - c for c in padded]
        first = min((s + n) // block * block for s, n in zip(starts, lengths, strict=True))
    else:
        starts = [max(lengths) - n for n in lengths]
        first = max(lengths)
    gen_start = [s + n for s, n in zip(starts, lengths, strict=True)]
    width, dev = max(gen_start) + length, prompt_ids.device
    x = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=dev)
    cols = torch.arange(width, device=dev)
    start_t, gen_t = torch.tensor(starts, device=dev)[:, None], torch.tensor(gen_start, device=dev)[:, None]
    gen = (cols >= gen_t) & (cols < gen_t + length)  # [N, W]
    key_mask = (cols >= start_t) & (cols < gen_t + length)  # [N, W]
    for i, prompt in enumerate(prompts):
        x[i, starts[i]:gen_start[i]] = prompt
    x[gen] = mask_id
    return Layout(x, key_mask, gen, gen_start, [(s, min(s + block, width)) for s in range(first, width, block)])


def new_cache(model_config: Any) -> Any:
    from transformers import DynamicCache  # lazily: the rest of the sampler needs torch only
    return DynamicCache(config=model_config)


def truncate_cache(cache: Any, length: int) -> None:
    """Drop cached positions from `length` on (transformers 5 `crop` takes minus the number to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


# The loop


@dataclass(frozen=True)
class Sampled:
    """What `sample` committed. ids: [N, L] int64, the completion columns (the mask token where nothing was
    committed: blocks after the one that ended the row); steps: [N, L] int64, the row's denoising step (0-based)
    that committed each token, -1 where none; logps: [N, L] float64, `propose`'s logp of each, 0 where none;
    row_steps: [N] int64, the row's steps that committed a token; num_forwards: model calls (prefill included)."""

    ids: Tensor
    steps: Tensor
    logps: Tensor
    row_steps: Tensor
    num_forwards: int


@dataclass
class _Canvas:
    """Rows being denoised. x, key_mask, gen, steps: [n, W]; logps: [n, W] float64; row_steps: [n] int64; rows:
    [n] int64, each row's index in the batch."""

    x: Tensor
    key_mask: Tensor
    gen: Tensor
    steps: Tensor
    logps: Tensor
    row_steps: Tensor
    rows: Tensor

    def take(self, index: Tensor) -> _Canvas:
        return _Canvas(*(value[index] for value in vars(self).values()))

    def write_into(self, out: _Canvas, which: Tensor) -> None:
        """Copy the rows `which` ([n] bool) into `out` (every row of the batch) at their batch indices."""
        for name in ("x", "steps", "logps", "row_steps"):
            getattr(out, name)[self.rows[which]] = getattr(self, name)[which]


def _denoise_block(forward: Callable, c: _Canvas, span: tuple[int, int, int, int], cache: Any, cache_len: int,
                   max_steps: int, settings: Mapping[str, Any], mask_id: int, generator: torch.Generator | None
                   ) -> tuple[int, int]:
    """Denoise block [s, t) of the canvas in place; span = (s, t, query end, cache length to keep). Returns
    (forward calls, cached length)."""
    s, t, end, base = span
    sps, forwards = int(settings["steps_per_block"]), 0
    num_masked = c.gen[:, s:t].sum(1)  # [n]
    for step in range(max_steps):
        q0 = cache_len if cache is not None else 0
        logits = forward(c.x[:, q0:end], c.key_mask[:, :end], cache)
        forwards += 1
        if cache is not None:
            truncate_cache(cache, base)
            cache_len = base
        x0, confidence, logp = propose(logits[:, s - q0:t - q0], mask_id, settings["temperature"], settings["top_k"],
                                       settings["top_p"], settings["remasking"], generator)  # [n, b]
        count = transfer_schedule(num_masked, sps, step)
        commit = select(c.x[:, s:t] == mask_id, confidence, count, settings["threshold"])  # [n, b]
        c.x[:, s:t] = torch.where(commit, x0, c.x[:, s:t])
        c.steps[:, s:t] = torch.where(commit, c.row_steps[:, None], c.steps[:, s:t])
        c.logps[:, s:t] = torch.where(commit, logp, c.logps[:, s:t])
        c.row_steps += commit.any(1).long()
        if settings["threshold"] is not None and not bool((c.x[:, s:t] == mask_id).any()):
            break
    return forwards, cache_len


@torch.no_grad()
def sample(forward: Callable[[Tensor, Tensor, Any], Tensor], facts: Mapping[str, Any], prompt_ids: Tensor,
           prompt_mask: Tensor | None, settings: Mapping[str, Any], *, generator: torch.Generator | None = None,
           model_config: Any = None, on_block: Callable[[list[int], Tensor, Tensor], None] | None = None) -> Sampled:
    """Block-diffusion completions of prompts [N, P] (prompt_mask [N, P] bool, None = all real).

    forward(input_ids [n, T], key_mask [n, K], cache) -> aligned logits [n, T, V] under the family's attention
    (rlwork's `DiffusionLM.forward`, or the export's `family_forward`); with settings["use_cache"] it gets a
    `new_cache(model_config)`, which it reads and extends.
    on_block(rows, completion, final), after each block: the active rows' batch indices, their completion columns
    [n, L] so far and how many leading tokens of each ([n] int64) no later step changes (for streaming).
    Randomness comes from `generator` (None: torch's global one). Host syncs: one per block (EOS), one per step
    with a threshold.
    """
    mask_id, eos_id, block_causal = facts["mask_token_id"], facts["eos_token_id"], facts["attention"] == "block_causal"
    length, use_cache = int(settings["max_new_tokens"]), bool(settings["use_cache"])
    if use_cache and (facts.get("forward") or HF_CONVENTION)["cache_arg"] is None:
        raise ValueError("use_cache=True, but this family's forward has no usable KV cache: pass use_cache=False")
    block = resolve_block(facts, settings["block_size"], length)
    lay = layout(prompt_ids, prompt_mask, length, block, block_causal, facts["pad_token_id"], mask_id)
    n, width, dev = *lay.x.shape, lay.x.device
    c = _Canvas(lay.x, lay.key_mask, lay.gen, torch.full_like(lay.x, -1),
                torch.zeros(lay.x.shape, dtype=torch.float64, device=dev),
                torch.zeros(n, dtype=torch.long, device=dev), torch.arange(n, device=dev))
    out = c.take(c.rows)  # every row's final state, written as rows finish
    gen_t, cols = torch.tensor(lay.gen_start, device=dev), torch.arange(length, device=dev)
    active, lookback = list(range(n)), 1 if facts["shift_logits"] else 0
    cache = new_cache(model_config) if use_cache and block_causal else None
    cache_len, forwards = 0, 0
    for s, t in lay.blocks:
        end = t if block_causal else width  # block-causal queries never need what follows the block
        if use_cache and not block_causal:
            cache, cache_len = new_cache(model_config), 0  # prefix cache refreshed at every block (Fast-dLLM)
        most = max(min(t, g + length) - max(s, g) for g in (lay.gen_start[i] for i in active))
        calls, cache_len = _denoise_block(forward, c, (s, t, end, max(s - lookback, 0)), cache, cache_len,
                                          min(int(settings["steps_per_block"]), most), settings, mask_id, generator)
        forwards += calls
        if on_block is not None:
            starts = gen_t[c.rows]  # [n]
            on_block(active, c.x.gather(1, starts[:, None] + cols), (t - starts).clamp(0, length))
        done = ((c.x[:, s:t] == eos_id) & c.gen[:, s:t]).any(1)  # [n]
        if bool(done.any()):  # the one host sync per block
            c.write_into(out, done)
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            c = c.take(keep)
            active = c.rows.tolist()
            if cache is not None:
                cache.batch_select_indices(keep)
    else:
        c.write_into(out, torch.ones_like(c.rows, dtype=torch.bool))
    index = gen_t[:, None] + cols  # [N, L]
    return Sampled(out.x.gather(1, index), out.steps.gather(1, index), out.logps.gather(1, index), out.row_steps,
                   forwards)
