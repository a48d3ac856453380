"""Batched block (semi-autoregressive) sampler for every diffusion LM family.

The completion is split into blocks of `block_size` tokens that are denoised left to right; inside a block,
each denoising step commits some of the still-masked tokens (LLaDA arXiv 2502.09992, Sec. 2.4 "semi-
autoregressive remasking"). Which ones: the `remasking` score (`low_confidence`: probability of the pick,
`margin`: top-1 minus top-2 probability, `entropy`: negative entropy, `random`, `left_to_right`: the leftmost
masked tokens, as an autoregressive model would), committing the scheduled count
per step, or with `threshold` every token whose score reaches it, at least the scheduled count (Fast-dLLM,
arXiv 2505.22618, "confidence-aware parallel decoding"). Sampling is Gumbel-max in float64 (arXiv 2409.02908).

Families:
- block-causal (Stable-DiffCoder): blocks are the model's own blocks, aligned to the sequence start, so the first
  generated block completes the prompt's last partial block (as the official `generate_block` does). With
  `use_cache=True` the KV cache is **exact**: prefix and committed blocks are computed once; the forward that
  writes block k's clean K/V also runs block k+1's first denoising step (block-causal attention keeps the two
  apart), so a block costs exactly its number of denoising steps.
- bidirectional (LLaDA, Dream, DiffuCoder): blocks start at the completion. `use_cache=False` is exact (the
  whole sequence is recomputed every step). `use_cache=True` is Fast-dLLM's *prefix cache* and **approximate**:
  at each block's first step the whole sequence is recomputed and the K/V of everything before the block kept;
  later steps of that block run only the block and what follows it against those stale K/V.
- shifted families (Dream, DiffuCoder) get aligned logits from `DiffusionLM.forward`; a cached query then starts
  one token before the block so that the block's first token has its predictor.

Ragged prompts share one batch: rows are left-padded so that, for block-causal models, every row's blocks sit on
the same columns (a row whose prompt ends on a block boundary simply has nothing to denoise in the first column
block). A completed block whose completion tokens contain EOS ends that row (everything after its first EOS
becomes padding) and the row leaves the active batch and the cache. The mask token is never proposed.

Behaviour log-probs. Each committed token's log-probability under the distribution it was drawn from (mask token
removed, logits / temperature, then top-k / top-p) is recorded from the logits the step already computed, with the
step that committed it and, for the block that ended a row, the tokens committed after its first EOS (later steps
of that block conditioned on them): `rlwork.diffusion.trace` rebuilds the trajectory from these. Temperature 0
(greedy) draws from no distribution (a point mass would give log-prob 0 to every token and a ratio no model can
move): the log-probability recorded then is the model's own, at temperature 1, unfiltered (mask token removed).

The naive reference (batch 1, whole sequence every step) is `rlwork.diffusion.sampler_ref.naive_generate`.

Shape letters: N rows, P prompt columns, W layout columns, L = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlwork.config import SamplerConfig
from rlwork.models.lm import DiffusionLM


@dataclass(frozen=True)
class Generation:
    """Sampler output. N rows, L = max_new_tokens.

    Attributes:
        completion_ids: [N, L] int64; after the first EOS: pad.
        completion_mask: [N, L] bool; real completion tokens, the first EOS included.
        decode_step: [N, L] int64; the row's denoising step (0-based) that committed each real token; -1 on pad.
        row_steps: [N] int64; denoising steps that committed at least one token of the row.
        num_forwards: model forward calls in all (prefill and cache writes included).
        sampling_per_token_logps: [N, L] float32; log-prob of each real token under the distribution the sampler
            drew it from (see the module docstring; temperature 0: the model's own at temperature 1); 0 on pad.
        trace_ids: [N, L] int64; every token the sampler committed: the real ones, and those after the first EOS
            inside the block that ended the row (the later steps of that block saw them); pad where nothing was.
        trace_step: [N, L] int64; the step that committed each token of trace_ids (decode_step on real tokens);
            -1 where nothing was committed.
    """

    completion_ids: Tensor
    completion_mask: Tensor
    decode_step: Tensor
    row_steps: Tensor
    num_forwards: int
    sampling_per_token_logps: Tensor
    trace_ids: Tensor
    trace_step: Tensor


# ---------------------------------------------------------------------------------------------------------------
# Per-step maths, shared by the batched sampler and the naive reference


def resolve_block_size(lm: DiffusionLM, config: SamplerConfig) -> int:
    """The semi-AR block length; block-causal models only decode their own block size."""
    if lm.block_causal:
        if config.block_size is not None and config.block_size != lm.block_size:
            raise ValueError(
                f"sampler.block_size={config.block_size} but this block-causal model was trained with blocks of "
                f"{lm.block_size}: set sampler.block_size=null or {lm.block_size}"
            )
        return int(lm.block_size)  # type: ignore[arg-type]
    return config.block_size or config.max_new_tokens


def check_generator(lm: DiffusionLM, config: SamplerConfig, generator: torch.Generator | None) -> None:
    if generator is None and (config.temperature > 0 or config.remasking == "random"):
        raise ValueError(
            f"temperature={config.temperature}, remasking='{config.remasking}' draw random numbers: pass "
            "generator=torch.Generator(device=...).manual_seed(seed)"
        )
    if generator is not None and generator.device.type != lm.device.type:
        raise ValueError(f"generator is on {generator.device} but the model on {lm.device}: create it there")


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


def sampling_logits(
    logits: Tensor, mask_id: int, temperature: float, top_k: int | None, top_p: float | None
) -> Tensor:
    """Logits of the distribution the sampler draws a token from, at every position.

    The mask token removed (never a completion token); temperature > 0: logits / temperature, then the top-k and
    top-p filters (removed tokens at -inf); temperature 0 (greedy): the logits unscaled and unfiltered, the model's
    own distribution (greedy draws from none; see the module docstring). logits: [..., V]. Returns [..., V], same
    dtype; differentiable except through the filters' choice of tokens.
    """
    logits = logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) == mask_id, float("-inf"))
    if temperature > 0:
        return filter_logits(logits / temperature, top_k, top_p)
    return logits


def propose(
    logits: Tensor, config: SamplerConfig, mask_id: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate token, its remasking score and its log-probability at every position.

    logits: [..., V] (any float dtype). Returns (x0 [...] int64, confidence [...] float64, higher = commit first;
    logp [...] float64, log-prob of x0 under `sampling_logits`). Gumbel-max in float64: argmax(l/T + g) with
    g = -log(-log u), the log form of LLaDA's exp(l)/(-log u)^T.
    """
    logits = logits.to(torch.float64)
    scaled = sampling_logits(logits, mask_id, config.temperature, config.top_k, config.top_p)
    if config.temperature > 0:
        u = torch.rand(scaled.shape, dtype=torch.float64, device=scaled.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        x0 = (scaled + gumbel).argmax(-1)
    else:
        x0 = scaled.argmax(-1)
    logp = scaled.gather(-1, x0[..., None]).squeeze(-1) - scaled.logsumexp(-1)
    logits = logits.masked_fill(scaled == float("-inf"), float("-inf"))  # confidences over what could be drawn
    if config.remasking == "random":
        return x0, torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator), logp
    if config.remasking == "left_to_right":  # equal scores: `select` breaks ties leftmost (AR order in the block)
        return x0, torch.zeros(x0.shape, dtype=torch.float64, device=x0.device), logp
    probs = logits.softmax(-1)
    if config.remasking == "low_confidence":
        confidence = probs.gather(-1, x0[..., None]).squeeze(-1)
    elif config.remasking == "margin":
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


def finalize(ids: Tensor, steps: Tensor, logps: Tensor, row_steps: Tensor, num_forwards: int, eos_id: int,
             pad_id: int, mask_id: int) -> Generation:
    """Cut each row after its first EOS. ids, steps: [N, L] (the completion columns of the sampler's canvas, steps
    -1 where nothing was committed), logps: [N, L], row_steps: [N]. The cut tokens stay in trace_ids/trace_step."""
    is_eos = ids == eos_id
    real = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # [N, L]; positions up to and including the first EOS
    assert not (real & (ids == mask_id)).any(), "a real completion position was never committed"
    committed = steps >= 0
    assert torch.equal(committed, ids != mask_id), "a committed position holds the mask token"
    return Generation(
        completion_ids=ids.masked_fill(~real, pad_id), completion_mask=real, decode_step=steps.masked_fill(~real, -1),
        row_steps=row_steps, num_forwards=num_forwards,
        sampling_per_token_logps=logps.float().masked_fill(~real, 0.0),
        trace_ids=ids.masked_fill(~committed, pad_id), trace_step=steps,
    )


# ---------------------------------------------------------------------------------------------------------------
# The batched sampler


@dataclass(frozen=True)
class _Layout:
    """Rows placed on shared columns. x, key_mask, gen: [N, W]; gen marks completion columns."""

    x: Tensor
    key_mask: Tensor
    gen: Tensor
    gen_start: list[int]
    blocks: list[tuple[int, int]]
    """Column ranges [s, t) denoised in order."""


def _layout(lm: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor | None, length: int, block: int) -> _Layout:
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] == 0:
        raise ValueError(f"prompt_ids has shape {tuple(prompt_ids.shape)}: pass a [N, P] batch with N >= 1")
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids, dtype=torch.bool)
    prompts = [ids[mask.bool()] for ids, mask in zip(prompt_ids, prompt_mask, strict=True)]
    lengths = [int(p.numel()) for p in prompts]
    if min(lengths) == 0:
        raise ValueError("a prompt has no real tokens (prompt_mask all False): drop it or give it a prompt")
    if lm.block_causal:
        # Block-causal blocks are counted from each row's first token: start every row on a block boundary and
        # let all prompts end inside the same column block.
        padded = [-(-n // block) * block for n in lengths]
        starts = [max(padded) - c for c in padded]
        first = min((s + n) // block * block for s, n in zip(starts, lengths, strict=True))
    else:
        starts = [max(lengths) - n for n in lengths]
        first = max(lengths)
    gen_start = [s + n for s, n in zip(starts, lengths, strict=True)]
    width = max(gen_start) + length
    n = len(prompts)
    x = torch.full((n, width), lm.pad_id, dtype=torch.long, device=prompt_ids.device)
    cols = torch.arange(width, device=prompt_ids.device)
    start_t = torch.tensor(starts, device=prompt_ids.device)[:, None]
    gen_t = torch.tensor(gen_start, device=prompt_ids.device)[:, None]
    gen = (cols >= gen_t) & (cols < gen_t + length)  # [N, W]
    key_mask = (cols >= start_t) & (cols < gen_t + length)  # [N, W]
    for i, prompt in enumerate(prompts):
        x[i, starts[i]:gen_start[i]] = prompt
    x[gen] = lm.mask_id
    blocks = [(s, min(s + block, width)) for s in range(first, width, block)]
    return _Layout(x, key_mask, gen, gen_start, blocks)


def _truncate(cache, length: int) -> None:
    """Drop cached positions from `length` on (transformers 5 `crop` takes minus the number to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _new_cache(lm: DiffusionLM):
    from transformers import DynamicCache

    return DynamicCache(config=lm.model.config)


@torch.no_grad()
def generate(
    lm: DiffusionLM,
    prompt_ids: Tensor,
    prompt_mask: Tensor | None,
    config: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
    model: torch.nn.Module | None = None,
) -> Generation:
    """Sample completions for a batch of prompts. prompt_ids: [N, P] (any padding), prompt_mask: [N, P] bool.

    `model` overrides the wrapped module (a peft/DeepSpeed wrapper of the same weights). Randomness comes only
    from `generator` (required for temperature > 0 or random remasking), which must live on the model's device.
    Runs under no_grad (not inference_mode: the ids may later feed a forward that saves them for backward).
    Host syncs: one per block for EOS bookkeeping, plus one per step with `threshold` (to end a block early).
    """
    block = resolve_block_size(lm, config)
    check_generator(lm, config, generator)
    if config.use_cache and lm.family.forward.cache_arg is None:
        raise ValueError(f"sampler.use_cache=true, but the '{lm.family.name}' family's forward returns no KV cache "
                         "rlwork can use (rlwork.models.families): set sampler.use_cache=false")
    lay = _layout(lm, prompt_ids, prompt_mask, config.max_new_tokens, block)
    x, key_mask, gen = lay.x, lay.key_mask, lay.gen
    n, width = x.shape
    out_x, out_steps = x.clone(), torch.full_like(x, -1)
    steps = torch.full_like(x, -1)  # [n, W] for the active rows
    logps = torch.zeros(x.shape, dtype=torch.float64, device=x.device)  # [n, W]
    out_logps = logps.clone()
    row_steps = torch.zeros(n, dtype=torch.long, device=x.device)
    out_row_steps = row_steps.clone()
    rows = torch.arange(n, device=x.device)
    active = list(range(n))  # host copy of `rows`
    lookback = 1 if lm.family.shift_logits else 0
    exact_cache = config.use_cache and lm.block_causal
    cache = _new_cache(lm) if exact_cache else None
    cache_len, forwards, length, sps = 0, 0, config.max_new_tokens, config.steps_per_block
    for s, t in lay.blocks:
        end = t if lm.block_causal else width  # block-causal queries never need what follows the block
        base = max(s - lookback, 0)
        if config.use_cache and not lm.block_causal:
            cache, cache_len = _new_cache(lm), 0  # prefix cache refreshed at every block (Fast-dLLM)
        most = max(min(t, g + length) - max(s, g) for g in (lay.gen_start[i] for i in active))
        num_masked = gen[:, s:t].sum(1)  # [n]
        for step in range(min(sps, most)):
            q0 = cache_len if cache is not None else 0
            logits, _ = lm.forward(x[:, q0:end], key_mask[:, :end], cache=cache, use_cache=cache is not None,
                                   model=model)
            forwards += 1
            if cache is not None:
                _truncate(cache, base)
                cache_len = base
            x0, confidence, logp = propose(logits[:, s - q0:t - q0], config, lm.mask_id, generator)  # [n, b]
            k = transfer_schedule(num_masked, sps, step)
            commit = select(x[:, s:t] == lm.mask_id, confidence, k, config.threshold)  # [n, b]
            x[:, s:t] = torch.where(commit, x0, x[:, s:t])
            steps[:, s:t] = torch.where(commit, row_steps[:, None], steps[:, s:t])
            logps[:, s:t] = torch.where(commit, logp, logps[:, s:t])
            row_steps += commit.any(1).long()
            if config.threshold is not None and not bool((x[:, s:t] == lm.mask_id).any()):
                break
        done = ((x[:, s:t] == lm.eos_id) & gen[:, s:t]).any(1)  # [n]
        if bool(done.any()):  # the one host sync per block
            out_x[rows[done]], out_steps[rows[done]], out_row_steps[rows[done]] = x[done], steps[done], row_steps[done]
            out_logps[rows[done]] = logps[done]
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            x, key_mask, gen, steps, logps = x[keep], key_mask[keep], gen[keep], steps[keep], logps[keep]
            rows, row_steps = rows[keep], row_steps[keep]
            active = rows.tolist()
            if cache is not None:
                cache.batch_select_indices(keep)
    else:
        out_x[rows], out_steps[rows], out_row_steps[rows], out_logps[rows] = x, steps, row_steps, logps
    index = torch.tensor(lay.gen_start, device=x.device)[:, None] + torch.arange(length, device=x.device)  # [N, L]
    return finalize(out_x.gather(1, index), out_steps.gather(1, index), out_logps.gather(1, index), out_row_steps,
                    forwards, lm.eos_id, lm.pad_id, lm.mask_id)
