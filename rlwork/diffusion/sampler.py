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

The maths and the loop are `rlwork.models.diffusion_kernel`'s (torch only), which exported folders run too: this
module adapts them to `DiffusionLM` and `SamplerConfig`. The naive reference (batch 1, whole sequence every step) is
`rlwork.diffusion.sampler_ref.naive_generate`.

Shape letters: N rows, P prompt columns, W layout columns, L = max_new_tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlwork.config import SamplerConfig
from rlwork.models import diffusion_kernel as kernel
from rlwork.models.diffusion_kernel import (  # noqa: F401 (re-exported: the sampler's public per-step maths)
    filter_logits,
    sampling_logits,
    select,
    transfer_schedule,
)
from rlwork.models.lm import DiffusionLM, family_facts


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
    if lm.block_causal and config.block_size is not None and config.block_size != lm.block_size:
        raise ValueError(
            f"sampler.block_size={config.block_size} but this block-causal model was trained with blocks of "
            f"{lm.block_size}: set sampler.block_size=null or {lm.block_size}"
        )
    return kernel.resolve_block(family_facts(lm.family), config.block_size, config.max_new_tokens)


def check_generator(lm: DiffusionLM, config: SamplerConfig, generator: torch.Generator | None) -> None:
    if generator is None and (config.temperature > 0 or config.remasking == "random"):
        raise ValueError(
            f"temperature={config.temperature}, remasking='{config.remasking}' draw random numbers: pass "
            "generator=torch.Generator(device=...).manual_seed(seed)"
        )
    if generator is not None and generator.device.type != lm.device.type:
        raise ValueError(f"generator is on {generator.device} but the model on {lm.device}: create it there")


def propose(
    logits: Tensor, config: SamplerConfig, mask_id: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate token, its remasking score and its log-probability at every position (`diffusion_kernel.propose`
    with the config's temperature, top-k, top-p and remasking). logits: [..., V]. Returns (x0 [...] int64,
    confidence [...] float64, higher = commit first; logp [...] float64, log-prob of x0 under `sampling_logits`)."""
    return kernel.propose(logits, mask_id, config.temperature, config.top_k, config.top_p, config.remasking,
                          generator)


def finalize(ids: Tensor, steps: Tensor, logps: Tensor, row_steps: Tensor, num_forwards: int, eos_id: int,
             pad_id: int, mask_id: int) -> Generation:
    """Cut each row after its first EOS. ids, steps: [N, L] (the completion columns of the sampler's canvas, steps
    -1 where nothing was committed), logps: [N, L], row_steps: [N]. The cut tokens stay in trace_ids/trace_step."""
    real = kernel.up_to_first_eos(ids, eos_id)  # [N, L]
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
    resolve_block_size(lm, config)
    check_generator(lm, config, generator)
    if config.use_cache and lm.family.forward.cache_arg is None:
        raise ValueError(f"sampler.use_cache=true, but the '{lm.family.name}' family's forward returns no KV cache "
                         "rlwork can use (rlwork.models.families): set sampler.use_cache=false")

    def forward(input_ids: Tensor, key_mask: Tensor, cache) -> Tensor:
        return lm.forward(input_ids, key_mask, cache=cache, use_cache=cache is not None, model=model)[0]

    settings = {key: getattr(config, key) for key in kernel.SAMPLING_KEYS}
    run = kernel.sample(forward, family_facts(lm.family), prompt_ids, prompt_mask, settings, generator=generator,
                        model_config=lm.model.config)
    return finalize(run.ids, run.steps, run.logps, run.row_steps, run.num_forwards, lm.eos_id, lm.pad_id, lm.mask_id)
