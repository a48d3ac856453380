"""Phase 1 of a step (this rank's G completions per prompt) and 2b (DAPO dynamic sampling: refill flat groups).

Shape letters: B prompts per rank, G generations per prompt, N = B*G rows.
"""

from __future__ import annotations

import dataclasses

import torch

from rlwork.diffusion.rollout import Rollout, concat_rollouts, generate_rollouts
from rlwork.rl.advantages import refill_rows, zero_std_groups
from rlwork.rl.scoring import RewardScorer, StepScores, completion_token_ids
from rlwork.runtime import dist
from rlwork.runtime import engine as eng
from rlwork.runtime.rng import row_generator
from rlwork.runtime.session import Session
from rlwork.runtime.timing import PhaseTimer


def prompts_per_rank(session: Session) -> int:
    return session.cfg.train.prompts_per_step // dist.world_size()


def first_row(session: Session) -> int:
    """This rank's first row in the step's global batch."""
    return dist.rank() * prompts_per_rank(session) * session.cfg.algo.num_generations


def sample(session: Session, step: int, phase: str) -> Rollout:
    """This rank's slice of the next global prompt batch, G completions each, randomness keyed by global row.

    Every rank draws the same global batch from its stream (so the streams stay in lockstep) and keeps its slice.
    """
    cfg, lm, G = session.cfg, session.lm, session.cfg.algo.num_generations
    b_local = prompts_per_rank(session)
    batch = session.stream.next(cfg.train.prompts_per_step)
    mine = slice(dist.rank() * b_local, (dist.rank() + 1) * b_local)
    start = first_row(session)
    return generate_rollouts(
        lm, batch.problems[mine], batch.texts[mine], G, cfg.sampler,
        lambda row: row_generator(cfg.seed, step, phase, start + row, lm.device),
        cfg.train.rollout_batch_size, model=session.engine.module, progress=dist.is_main_process(),
    )


def refill_flat_groups(session: Session, scorer: RewardScorer, step: int, rollout: Rollout, scores: StepScores,
                       timer: PhaseTimer) -> tuple[Rollout, StepScores, int]:
    """DAPO dynamic sampling (arXiv 2503.14476): replace groups whose rewards are all equal by fresh prompts' groups
    that have signal, for up to `algo.max_resample_rounds` extra rollouts; returns (rollout, scores, rounds).

    Every rank runs the same number of rounds (the prompt streams advance in lockstep), as long as any rank still
    has a flat group. Group ids are renumbered 0..B-1 after each refill.
    """
    algo, G = session.cfg.algo, session.cfg.algo.num_generations
    rounds = 0
    while rounds < algo.max_resample_rounds and dist.any_rank(bool(zero_std_groups(scores.total, G).any())):
        rounds += 1
        with timer("rollout"), eng.gathered_parameters(session.engine):
            extra = sample(session, step, f"sample{rounds}")
        with timer("score"):
            extra_scores = scorer.score(extra.prompts, extra.completions, extra.problems, completion_token_ids(extra))
            rows = refill_rows(scores.total, extra_scores.total, G)
            rollout = concat_rollouts(rollout, extra, session.lm.pad_id).select(rows)
            rollout = dataclasses.replace(rollout,
                                          group_ids=torch.arange(prompts_per_rank(session)).repeat_interleave(G))
            scores = scores.concat(extra_scores).select(rows)
    return rollout, scores, rounds
