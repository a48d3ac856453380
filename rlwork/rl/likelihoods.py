"""Phase 4 of a step: the step's shared mask draws, and old/reference per-token ELBO terms under them.

Old, current and reference likelihoods of one step use the same mask draws (the variance reduction DiffuCoder,
GDPO and LLaDA 1.5 rely on): draw d of micro-batch c is made once here and reused by phase 5.

Shape letters: N rows of the step (this rank), L completion length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlwork.config import AlgoConfig
from rlwork.diffusion.elbo import ElboOutput, elbo
from rlwork.diffusion.masking import MaskDraw, draw_masks, select_rows
from rlwork.diffusion.rollout import Rollout
from rlwork.models.lm import DiffusionLM
from rlwork.runtime.rng import row_generator

Draws = list[list[MaskDraw]]
"""draws[d][c]: mask draw d of micro-batch c."""


def row_chunks(n: int, size: int) -> list[slice]:
    """The fixed micro-batches of a step's N rows (the last may be shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def draw_masks_for(algo: AlgoConfig, lm: DiffusionLM, rollout: Rollout, generator: torch.Generator) -> MaskDraw:
    """`algo.elbo_samples` draws for the rollout's rows; a coupled/stratified draw is a complementary pair (two
    forward passes)."""
    passes = algo.elbo_samples * (2 if algo.elbo_estimator in ("coupled", "stratified") else 1)
    return draw_masks(algo.elbo_estimator, rollout.completion_mask, passes, lm.block_size, generator,
                      prompt_mask=rollout.prompt_mask, prompt_mask_prob=algo.prompt_mask_prob)


def draw_step_masks(algo: AlgoConfig, lm: DiffusionLM, rollout: Rollout, micro_batch_size: int, seed: int,
                    step: int, first_row: int) -> Draws:
    """One draw per micro-batch, and one set per iteration when `algo.resample_masks_per_iteration` (d1).

    Micro-batch c's noise is keyed by its first global row (`row_generator`), so 1 or R ranks draw the same masks.
    """
    num_draws = algo.num_iterations if algo.resample_masks_per_iteration else 1
    return [[draw_masks_for(algo, lm, rollout.select(torch.arange(c.start, c.stop)),
                            row_generator(seed, step, f"mask{d}", first_row + c.start, lm.device))
             for c in row_chunks(rollout.prompt_ids.shape[0], micro_batch_size)]
            for d in range(num_draws)]


def elbo_of_rows(lm: DiffusionLM, rollout: Rollout, rows: Tensor, draw: MaskDraw, chunk_start: int,
                 model: torch.nn.Module) -> ElboOutput:
    """ELBO terms of `rows` ([M] global indices into the rollout) under their micro-batch's draw, which covers the
    micro-batch starting at row `chunk_start`."""
    return elbo(lm, rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
                rollout.completion_mask[rows], select_rows(draw, rows - chunk_start), model=model)


@torch.no_grad()
def old_and_ref_logps(algo: AlgoConfig, lm: DiffusionLM, engine, ref_policy, rollout: Rollout, draws: Draws,
                      micro_batch_size: int, needed: Tensor | None = None) -> tuple[list | None, list | None]:
    """Per-draw old ([N, L], only when num_iterations > 1) and reference ([N, L], only when beta > 0) ELBO terms.

    needed: [N] bool, the rows the loss uses (None = all); the others are not computed and stay 0, since rows
    without signal never reach the loss.

    With one iteration the old policy is the current one, so its terms are the current terms detached (the
    ratio is exactly 1 by construction, as in TRL).
    """
    n, length = rollout.completion_ids.shape
    needed = torch.ones(n, dtype=torch.bool) if needed is None else needed

    def terms(model, d: list[MaskDraw]) -> Tensor:
        out = torch.zeros(n, length, device=rollout.completion_ids.device)
        for c, s in enumerate(row_chunks(n, micro_batch_size)):
            rows = torch.arange(s.start, s.stop)[needed[s].cpu()]
            if rows.numel():
                out[rows.to(out.device)] = elbo_of_rows(lm, rollout, rows, d[c], s.start, model).per_token
        return out

    old = ref = None
    if algo.num_iterations > 1:
        old = [terms(engine.module, d) for d in draws]
    if ref_policy is not None:
        with ref_policy.context(engine.module) as ref_model:
            ref = [terms(ref_model, d) for d in draws]
    return old, ref
