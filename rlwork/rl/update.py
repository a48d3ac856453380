"""Phase 5 of a step: `num_iterations` passes of the clipped policy gradient (on ELBO or trace terms).

Shape letters: N rows of the step (this rank), L completion length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlwork.config import AlgoConfig, SamplerConfig
from rlwork.diffusion.rollout import Rollout
from rlwork.models.lm import DiffusionLM
from rlwork.rl.likelihoods import Draws, likelihood_of_rows, row_chunks
from rlwork.rl.losses import policy_loss

UPDATE_KEYS = ("policy/clipfrac_low", "policy/clipfrac_high", "policy/clipfrac", "policy/ratio_mean",
               "policy/ratio_min", "policy/ratio_max", "policy/kl", "policy/loss", "optim/grad_norm",
               "optim/skipped_updates", "optim/lr", "elbo/std", "elbo/mean_per_token")
"""What phase 5 logs; a step without any signal logs them as NaN (JSONL null), so every step has the same keys.
`elbo/*` hold the per-token likelihood of whichever estimator runs (with likelihood=trace: the exact trajectory
log-likelihood), so estimators compare on one key."""
TRACE_KEYS = ("trace/sampler_abs_diff_max",)
"""What phase 5 adds with likelihood=trace: the largest |recomputed - recorded| token log-prob of the first
iteration, whose weights are the sampler's (float noise when the trace is exact; see rlwork.diffusion.trace)."""


def no_update_metrics(has_reference: bool, trace: bool = False) -> dict[str, float]:
    """Phase 5's keys, all NaN, for a step that had no signal on any rank (policy/kl only with a reference)."""
    keys = [k for k in UPDATE_KEYS if k != "policy/kl" or has_reference] + list(TRACE_KEYS if trace else ())
    return {k: math.nan for k in keys}


def policy_updates(algo: AlgoConfig, sampler: SamplerConfig, lm: DiffusionLM, engine, rollout: Rollout,
                   advantages: Tensor, signal: Tensor, draws: Draws, old: list | None, ref: list | None,
                   micro_batch_size: int, learning_rate: float) -> dict[str, float]:
    """num_iterations optimizer steps over the batch, each accumulating gradients over fixed micro-batches.

    advantages: [N]; signal: [N] bool, the rows that reach the loss; old/ref: per-draw [N, L] terms from phase 4.
    Every rank runs the same number of backward calls (DeepSpeed's collectives need it); rows without signal are
    left out of each micro-batch's loss, and a micro-batch without any contributes an exact zero.
    """
    n = rollout.prompt_ids.shape[0]
    chunks = row_chunks(n, micro_batch_size)
    gas = engine.gradient_accumulation_steps
    if len(chunks) != gas:
        raise RuntimeError(f"{len(chunks)} micro-batches but the engine accumulates {gas}")  # set up in the session
    signal_rows = int(signal.sum())
    signal_tokens = (rollout.completion_mask & signal[:, None]).sum().clamp_min(1)
    sums: dict[str, float] = {}
    grad_norms, skipped, elbo_per_token, sampler_gap = [], 0, [], 0.0
    for it in range(algo.num_iterations):
        d = it if algo.resample_masks_per_iteration else 0
        for c, s in enumerate(chunks):
            rows = torch.arange(s.start, s.stop)[signal[s]]
            empty = rows.numel() == 0
            if empty:
                rows = torch.arange(s.start, s.start + 1)  # keeps the graph (and DeepSpeed's hooks) identical
            out = likelihood_of_rows(algo, sampler, lm, rollout, rows, draws[d][c], s.start, engine.module)
            mask = rollout.completion_mask[rows]
            if it == 0 and algo.likelihood == "trace" and old is not None and not empty:
                gap = (out.per_token.detach() - old[d][rows]).abs().masked_fill(~mask, 0.0)
                sampler_gap = max(sampler_gap, float(gap.max()))
            loss, m = policy_loss(
                out.per_token, None if old is None else old[d][rows], advantages[rows], mask,
                ref_per_token_logps=None if ref is None else ref[d][rows],
                beta=algo.beta, kl_estimator=algo.kl_estimator, epsilon=algo.epsilon,
                epsilon_high=algo.epsilon_high, importance_sampling_level=algo.importance_sampling_level,
                loss_type=algo.loss_type, max_completion_length=rollout.completion_ids.shape[1],
                num_items_in_batch=signal_tokens if algo.loss_type == "dapo" else None,
            )
            # engine.backward divides by gas: weight micro-batches so that they add up to the full-batch loss.
            share = 1.0 if algo.loss_type == "dapo" else rows.numel() / max(signal_rows, 1)
            loss = loss * (0.0 if empty else gas * share)
            engine.backward(loss)
            result = engine.step()
            if empty:
                continue
            elbo_per_token.append(out.sequence.detach() / mask.sum(1).clamp_min(1))
            for key, value in m.items():
                sums[key] = sums.get(key, 0.0) + float(value) * rows.numel() / signal_rows / algo.num_iterations
        skipped += int(not result.applied)
        grad_norms.append(result.grad_norm)
    per_token_elbo = torch.cat(elbo_per_token) if elbo_per_token else torch.full((1,), math.nan)
    return {
        **sums,
        "optim/grad_norm": sum(grad_norms) / len(grad_norms),
        "optim/skipped_updates": float(skipped),
        "optim/lr": learning_rate,
        "elbo/std": float(per_token_elbo.std()) if per_token_elbo.numel() > 1 else math.nan,
        "elbo/mean_per_token": float(per_token_elbo.mean()),
        **({"trace/sampler_abs_diff_max": sampler_gap} if algo.likelihood == "trace" else {}),
    }
