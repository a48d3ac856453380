"""The ELBO estimator's own noise: how much one completion's likelihood estimate moves between mask draws.

Phase 5 logs `elbo/std_across_completions`, the spread of the per-token ELBO over the step's completions: mostly
how the completions differ, not how noisy the estimator is. This module measures the estimator: the same
completions scored under `draws` independent mask draws of the configured estimator (`algo.elbo_estimator`,
`algo.elbo_samples` passes, complementary pairs included), each an estimate as phase 4 and 5 make it. Logged as
`elbo/estimator_std` every `train.log_every` steps (it costs `draws` extra forwards of one micro-batch).

Shape letters: M rows measured, R draws.
"""

from __future__ import annotations

import math

import torch

from rlwork.config import AlgoConfig
from rlwork.diffusion.elbo import elbo
from rlwork.diffusion.rollout import Rollout
from rlwork.models.lm import DiffusionLM
from rlwork.rl.likelihoods import draw_masks_for
from rlwork.runtime.rng import row_generator

DRAWS = 4
"""Independent draws per measured completion."""


@torch.no_grad()
def estimator_std(algo: AlgoConfig, lm: DiffusionLM, model: torch.nn.Module, rollout: Rollout, rows: int, seed: int,
                  step: int, first_row: int, draws: int = DRAWS) -> float:
    """Mean over the first `rows` completions of the std (Bessel-corrected) of their per-token ELBO estimate across
    `draws` mask draws; NaN when fewer than one row or two draws. Draw r of row i is keyed by (seed, step,
    f"spread{r}", global row), so 1 or R ranks measure the same noise for the same rows."""
    rows = min(rows, rollout.prompt_ids.shape[0])
    if rows < 1 or draws < 2:
        return math.nan
    part = rollout.select(torch.arange(rows))
    tokens = part.completion_mask.sum(1).clamp_min(1)  # [M]
    estimates = []
    for r in range(draws):
        draw = draw_masks_for(algo, lm, part, row_generator(seed, step, f"spread{r}", first_row, lm.device))
        out = elbo(lm, part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask, draw,
                   model=model)
        estimates.append(out.sequence.float() / tokens)  # [M]
    return float(torch.stack(estimates).std(dim=0).mean())  # [R, M] -> [M] -> mean
