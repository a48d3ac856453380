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
from rlwork.rl.likelihoods import Draws, likelihood_of_rows, row_chunks, terms_of_rows
from rlwork.rl.losses import kl_estimate, policy_loss
from rlwork.runtime import dist

UPDATE_KEYS = ("policy/clipfrac_low", "policy/clipfrac_high", "policy/clipfrac", "policy/ratio_mean",
               "policy/ratio_min", "policy/ratio_max", "policy/kl", "policy/loss", "policy/entropy", "optim/grad_norm",
               "optim/skipped_updates", "optim/lr", "elbo/std_across_completions", "elbo/mean_per_token")
"""What phase 5 logs; a step without any signal logs them as NaN (JSONL null), so every step has the same keys.
`elbo/*` hold the per-token likelihood of whichever estimator runs (with likelihood=trace: the exact trajectory
log-likelihood), so estimators compare on one key."""
TRACE_KEYS = ("trace/sampler_abs_diff_max",)
"""What phase 5 adds with likelihood=trace: the largest |recomputed - recorded| token log-prob of the first
iteration, whose weights are the sampler's (float noise when the trace is exact; see rlwork.diffusion.trace)."""


def no_update_metrics(has_reference: bool, trace: bool = False) -> dict[str, float]:
    """Phase 5's keys, all NaN, for a step that had no signal on any rank (policy/kl only with a reference; the
    trainer fills it with `kl_without_update`, since the policy's distance to the reference exists either way)."""
    keys = [k for k in UPDATE_KEYS if k != "policy/kl" or has_reference] + list(TRACE_KEYS if trace else ())
    return {k: math.nan for k in keys}


@torch.no_grad()
def kl_without_update(algo: AlgoConfig, sampler: SamplerConfig, lm: DiffusionLM, model: torch.nn.Module,
                      ref: list[Tensor], rollout: Rollout, draws: Draws, micro_batch_size: int,
                      old: list[Tensor] | None = None) -> float:
    """policy/kl on a step that updates nothing: the same estimator (`algo.kl_estimator`) as the loss's, of the
    current policy to the reference on the step's own draws (ref: per-draw [N, L] terms of every row), as a mean
    over every completion token of every rank (the loss's KL averages over signal rows' tokens; here all rows are
    used, none having signal). One forward per micro-batch, the same number on every rank; none when phase 4
    already scored every row with these weights (old: ELBO terms with num_iterations > 1, which are the current
    policy's, since nothing has been updated)."""
    if old is not None and algo.likelihood == "elbo":
        current = old[0]
    else:
        current = terms_of_rows(algo, sampler, lm, rollout, draws[0], micro_batch_size, model)
    mask = rollout.completion_mask
    kl = kl_estimate(current, ref[0], algo.kl_estimator).masked_fill(~mask, 0.0)
    total, count = dist.all_reduce(torch.tensor([float(kl.sum()), float(mask.sum())], dtype=torch.float64)).tolist()
    return total / count if count else math.nan


def policy_updates(algo: AlgoConfig, sampler: SamplerConfig, lm: DiffusionLM, engine, rollout: Rollout,
                   advantages: Tensor, signal: Tensor, draws: Draws, old: list | None, ref: list | None,
                   micro_batch_size: int, learning_rate: float) -> dict[str, float]:
    """num_iterations optimizer steps over the batch, each accumulating gradients over fixed micro-batches.

    advantages: [N]; signal: [N] bool, the rows that reach the loss; old/ref: per-draw [N, L] terms from phase 4.
    Every rank runs the same number of backward calls (DeepSpeed's collectives need it); rows without signal are
    left out of each micro-batch's loss, and a micro-batch without any contributes an exact zero.

    The loss is normalised over the whole step's batch, all ranks together (`losses.aggregate_loss`): the signal
    rows and tokens are counted on every rank and summed, each micro-batch's loss is weighted by its share of them,
    and the weight undoes the 1/gas of `engine.backward` and the 1/W of DeepSpeed's gradient average over W ranks.
    So ranks with unequal signal (one with none at all) give the gradient one process gets on all their rows. The
    metrics are the same global means on every rank (ratio_min/max: global min/max).
    """
    n = rollout.prompt_ids.shape[0]
    chunks = row_chunks(n, micro_batch_size)
    gas, world = engine.gradient_accumulation_steps, dist.world_size()
    if len(chunks) != gas:
        raise RuntimeError(f"{len(chunks)} micro-batches but the engine accumulates {gas}")  # set up in the session
    local = torch.tensor([float(signal.sum()), float((rollout.completion_mask & signal[:, None]).sum())],
                         dtype=torch.float64)
    global_rows, global_tokens = (max(x, 1.0) for x in dist.all_reduce(local).tolist())
    acc = _MetricSums(ref is not None)
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
                num_items_in_batch=global_tokens if algo.loss_type == "dapo" else None,
            )
            # dapo's micro-batch loss is already its share of the global token mean; grpo/dr_grpo's is a mean over
            # the micro-batch's rows, weighted here by their share of all ranks' signal rows.
            share = 1.0 if algo.loss_type == "dapo" else rows.numel() / global_rows
            engine.backward(loss * (0.0 if empty else gas * world * share))
            result = engine.step()
            if empty:
                continue
            elbo_per_token.extend((out.sequence.detach() / mask.sum(1).clamp_min(1)).tolist())
            # ELBO: the entropy at the masked positions of this micro-batch's draw; trace: the sampler's
            # distribution's entropy at each scored token's decision
            m["policy/entropy"] = out.entropy
            tokens = float(mask.sum()) / global_tokens
            acc.add(m, share=share, rows=rows.numel() / global_rows, tokens=tokens,
                    token_level=algo.importance_sampling_level == "token", iterations=algo.num_iterations)
        skipped += int(not result.applied)
        grad_norms.append(result.grad_norm)
    per_token_elbo = torch.tensor(dist.gather_lists(elbo_per_token), dtype=torch.float64)  # every rank's rows
    return {
        **acc.reduce(),
        "optim/grad_norm": sum(grad_norms) / len(grad_norms),
        "optim/skipped_updates": float(skipped),
        "optim/lr": learning_rate,
        # how the step's completions differ in per-token ELBO (the estimator's own noise: elbo/estimator_std)
        "elbo/std_across_completions": float(per_token_elbo.std()) if per_token_elbo.numel() > 1 else math.nan,
        "elbo/mean_per_token": float(per_token_elbo.mean()) if per_token_elbo.numel() else math.nan,
        **({"trace/sampler_abs_diff_max": float(dist.all_reduce(torch.tensor([sampler_gap], dtype=torch.float64),
                                                                "max"))} if algo.likelihood == "trace" else {}),
    }


class _MetricSums:
    """Phase 5's policy metrics as global means over every rank's signal rows: each micro-batch adds its metric
    weighted by its share of the global tokens (token statistics) or rows (row statistics), and one all-reduce
    sums the shares; ratio_min/max take the global min/max. Every rank reduces the same keys, even one with no
    signal (its shares are 0)."""

    MEANS = ("policy/clipfrac_low", "policy/clipfrac_high", "policy/clipfrac", "policy/ratio_mean")

    def __init__(self, has_reference: bool):
        self.keys = [*self.MEANS, "policy/loss", "policy/entropy", *(("policy/kl",) if has_reference else ())]
        self.sums = dict.fromkeys(self.keys, 0.0)
        self.low, self.high = math.inf, -math.inf

    def add(self, m: dict[str, Tensor], *, share: float, rows: float, tokens: float, token_level: bool,
            iterations: int) -> None:
        stat = tokens if token_level else rows
        for key, weight in [*((k, stat) for k in self.MEANS), ("policy/loss", share), ("policy/kl", tokens),
                            ("policy/entropy", rows)]:
            if key in self.sums and weight > 0:
                self.sums[key] += float(m[key]) * weight / iterations
        self.low, self.high = min(self.low, float(m["policy/ratio_min"])), max(self.high, float(m["policy/ratio_max"]))

    def reduce(self) -> dict[str, float]:
        sums = dist.all_reduce(torch.tensor([self.sums[k] for k in self.keys], dtype=torch.float64)).tolist()
        low = float(dist.all_reduce(torch.tensor([self.low], dtype=torch.float64), "min"))
        high = float(dist.all_reduce(torch.tensor([self.high], dtype=torch.float64), "max"))
        return {**dict(zip(self.keys, sums, strict=True)), "policy/ratio_min": low, "policy/ratio_max": high}
