"""Phase 4 of a step: the step's shared mask draws, and old/reference per-token likelihood terms.

algo.likelihood=elbo: old, current and reference likelihoods of one step use the same mask draws (the variance
reduction DiffuCoder, GDPO and LLaDA 1.5 rely on): draw d of micro-batch c is made once here and reused by phase 5.
algo.likelihood=trace: the exact log-likelihood of the sampler's own trajectory (rlwork.diffusion.trace), scored with
the sampler's distribution; no draws, and the old policy's terms are the rollout's recorded log-probs.

Shape letters: N rows of the step (this rank), L completion length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlwork.config import AlgoConfig, SamplerConfig
from rlwork.diffusion.elbo import ElboOutput, elbo
from rlwork.diffusion.masking import MaskDraw, draw_group_masks, draw_masks, select_rows
from rlwork.diffusion.rollout import Rollout
from rlwork.diffusion.trace import TraceOutput, trace_logps
from rlwork.models.lm import DiffusionLM
from rlwork.runtime.rng import row_generator

Draws = list[list[MaskDraw | None]]
"""draws[d][c]: mask draw d of micro-batch c (None with likelihood=trace, which draws nothing)."""


def row_chunks(n: int, size: int) -> list[slice]:
    """The fixed micro-batches of a step's N rows (the last may be shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def draw_masks_for(algo: AlgoConfig, lm: DiffusionLM, rollout: Rollout, generator: torch.Generator) -> MaskDraw:
    """`algo.elbo_samples` draws for the rollout's rows; a coupled/stratified draw is a complementary pair (two
    forward passes)."""
    return draw_masks(algo.elbo_estimator, rollout.completion_mask, _passes(algo), lm.block_size, generator,
                      prompt_mask=rollout.prompt_mask, prompt_mask_prob=algo.prompt_mask_prob)


def _passes(algo: AlgoConfig) -> int:
    """Forward passes per draw: `algo.elbo_samples`, doubled for the complementary pairs of coupled/stratified."""
    return algo.elbo_samples * (2 if algo.elbo_estimator in ("coupled", "stratified") else 1)


def draw_step_masks(algo: AlgoConfig, lm: DiffusionLM, rollout: Rollout, micro_batch_size: int, seed: int,
                    step: int, first_row: int) -> Draws:
    """One draw per micro-batch, and one set per iteration when `algo.resample_masks_per_iteration` (d1).

    Micro-batch c's noise is keyed by its first global row (`row_generator`), so 1 or R ranks draw the same masks.
    likelihood=trace draws nothing: one list of None per micro-batch.
    """
    if algo.likelihood == "trace":
        return [[None] * len(row_chunks(rollout.prompt_ids.shape[0], micro_batch_size))]
    num_draws = algo.num_iterations if algo.resample_masks_per_iteration else 1
    chunks = row_chunks(rollout.prompt_ids.shape[0], micro_batch_size)
    if algo.group_masks == "shared":
        return [[_group_draw(algo, lm, rollout, c, seed, step, d, first_row) for c in chunks]
                for d in range(num_draws)]
    return [[draw_masks_for(algo, lm, rollout.select(torch.arange(c.start, c.stop)),
                            row_generator(seed, step, f"mask{d}", first_row + c.start, lm.device))
             for c in chunks]
            for d in range(num_draws)]


def _group_draw(algo: AlgoConfig, lm: DiffusionLM, rollout: Rollout, chunk: slice, seed: int, step: int, d: int,
                first_row: int) -> MaskDraw:
    """Micro-batch `chunk`'s draw with one noise per group, keyed by the global row that opens the group, so the
    draw does not depend on how micro-batches or ranks split the group."""
    ids = rollout.group_ids
    opens = {g: int((ids == g).nonzero().min()) for g in torch.unique(ids[chunk]).tolist()}
    part = rollout.select(torch.arange(chunk.start, chunk.stop))
    return draw_group_masks(algo.elbo_estimator, part.completion_mask, part.group_ids, _passes(algo), lm.block_size,
                            lambda g: row_generator(seed, step, f"groupmask{d}", first_row + opens[g], lm.device),
                            prompt_mask=part.prompt_mask, prompt_mask_prob=algo.prompt_mask_prob)


def elbo_of_rows(lm: DiffusionLM, rollout: Rollout, rows: Tensor, draw: MaskDraw, chunk_start: int,
                 model: torch.nn.Module) -> ElboOutput:
    """ELBO terms of `rows` ([M] global indices into the rollout) under their micro-batch's draw, which covers the
    micro-batch starting at row `chunk_start`."""
    return elbo(lm, rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
                rollout.completion_mask[rows], select_rows(draw, rows - chunk_start), model=model)


def trace_of_rows(sampler: SamplerConfig, lm: DiffusionLM, rollout: Rollout, rows: Tensor,
                  model: torch.nn.Module) -> TraceOutput:
    """Trace log-likelihood of `rows` ([M] global indices into the rollout): each real token's log-prob at the step
    that committed it, under the distribution the sampler drew from (its temperature, top-k, top-p)."""
    return trace_logps(lm, rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.trace_ids[rows],
                       rollout.trace_step[rows], rollout.completion_mask[rows], temperature=sampler.temperature,
                       top_k=sampler.top_k, top_p=sampler.top_p, model=model)


def likelihood_of_rows(algo: AlgoConfig, sampler: SamplerConfig, lm: DiffusionLM, rollout: Rollout, rows: Tensor,
                       draw: MaskDraw | None, chunk_start: int, model: torch.nn.Module) -> ElboOutput | TraceOutput:
    """Per-token likelihood terms of `rows` per `algo.likelihood`: the trace, or the ELBO under the micro-batch's
    draw. Both outputs have `per_token` [M, L] and `sequence` [M]."""
    if algo.likelihood == "trace":
        return trace_of_rows(sampler, lm, rollout, rows, model)
    assert draw is not None, "likelihood=elbo needs the micro-batch's mask draw"
    return elbo_of_rows(lm, rollout, rows, draw, chunk_start, model)


@torch.no_grad()
def terms_of_rows(algo: AlgoConfig, sampler: SamplerConfig, lm: DiffusionLM, rollout: Rollout,
                  draw: list[MaskDraw | None], micro_batch_size: int, model: torch.nn.Module,
                  needed: Tensor | None = None) -> Tensor:
    """[N, L] per-token likelihood terms of the `needed` rows ([N] bool, None = all) under one draw per micro-batch
    (`draw[c]`), computed micro-batch by micro-batch without a graph; the other rows stay 0."""
    n, length = rollout.completion_ids.shape
    needed = torch.ones(n, dtype=torch.bool) if needed is None else needed
    out = torch.zeros(n, length, device=rollout.completion_ids.device)
    for c, s in enumerate(row_chunks(n, micro_batch_size)):
        rows = torch.arange(s.start, s.stop)[needed[s].cpu()]
        if rows.numel():
            out[rows.to(out.device)] = likelihood_of_rows(algo, sampler, lm, rollout, rows, draw[c], s.start,
                                                          model).per_token
    return out


@torch.no_grad()
def old_and_ref_logps(algo: AlgoConfig, sampler: SamplerConfig, lm: DiffusionLM, engine, ref_policy,
                      rollout: Rollout, draws: Draws, micro_batch_size: int,
                      needed: Tensor | None = None) -> tuple[list | None, list | None]:
    """Per-draw old ([N, L]) and reference ([N, L], only when beta > 0) likelihood terms (`likelihood_of_rows`).

    needed: [N] bool, the rows the loss uses (None = all); the others are not computed and stay 0, since rows
    without signal never reach the loss.

    Old, ELBO: only when num_iterations > 1; with one iteration the old policy is the current one, so its terms
    are the current terms detached (the ratio is exactly 1 by construction, as in TRL). Old, trace: the rollout's
    sampling log-probs, at any num_iterations: the weights have not changed since sampling (phases 1-4 update
    nothing), so these are the old policy's trace terms without a forward, and the ratio is that of the current
    policy to the distribution the tokens were actually drawn from.
    """
    def terms(model, d: list[MaskDraw | None]) -> Tensor:
        return terms_of_rows(algo, sampler, lm, rollout, d, micro_batch_size, model, needed)

    old = ref = None
    if algo.likelihood == "trace":
        old = [rollout.sampling_per_token_logps for _ in draws]
    elif algo.num_iterations > 1:
        old = [terms(engine.module, d) for d in draws]
    if ref_policy is not None:
        with ref_policy.context(engine.module) as ref_model:
            ref = [terms(ref_model, d) for d in draws]
    return old, ref
