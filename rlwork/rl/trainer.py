"""The RL loop. One step is a flat list of numbered, timed phases; each phase lives in its own module:

    1 rollout      G completions per prompt with the batched block-diffusion sampler   (rl/rollout.py)
    2 score        rewards in the sandbox pool, per function, NaN = unscorable;        (rl/scoring.py, rewards/)
                   2b: DAPO refill of groups without signal                           (rl/rollout.py)
    3 advantages   weighted reward -> group advantages; zero-signal groups filtered    (rl/advantages.py)
    4 likelihoods  old and reference ELBOs under the step's shared mask draws, or      (rl/likelihoods.py)
                   trace log-probs of the sampler's trajectories (old: the rollout's);
                   every train.log_every steps, the ELBO estimator's spread over draws (rl/elbo_spread.py)
    5 update       num_iterations passes of the clipped policy gradient                 (rl/update.py)
    6 evaluate     every eval.every_steps steps: pass@k of the updated policy on the eval source (evaluation/eval.py)
    7 log          metrics, rollouts, completions table, checkpoint                     (runtime/tracking.py)

Nothing algorithmic lives here: this module only sequences the phases. Setup (model, adapter, engine, data,
tracking, resume) is the session every loop shares (runtime/session.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from rewards.sandbox import Evaluator
from rlwork.config import RunConfig
from rlwork.data.prompts import PromptStream, load_eval_split, load_split
from rlwork.diffusion.rollout import Rollout
from rlwork.evaluation.eval import evaluate_sharded, open_sandbox
from rlwork.rl import rollout as phase1
from rlwork.rl.advantages import (
    DEFAULT_SCALE,
    batch_moments,
    compute_advantages,
    frac_zero_std,
    reward_metrics,
    rows_with_signal,
    std_from_moments,
    weight_negatives,
)
from rlwork.rl.elbo_spread import estimator_std
from rlwork.rl.likelihoods import draw_step_masks, old_and_ref_logps
from rlwork.rl.scoring import (
    RewardScorer,
    completion_token_ids,
    language_means,
    language_totals,
    rollout_rows,
    sandbox_metrics,
    step_languages,
)
from rlwork.rl.update import kl_without_update, no_update_metrics, policy_updates
from rlwork.runtime import dist
from rlwork.runtime import engine as eng
from rlwork.runtime.plots import plot_run
from rlwork.runtime.session import Session, check_divisible, open_session
from rlwork.runtime.timing import PhaseTimer
from rlwork.runtime.tracking import reduce_metrics, save_rollouts


class UnscorableRunError(RuntimeError):
    """Too many consecutive steps had no scorable reward: training on zeros would be meaningless."""


@dataclass
class RlSession(Session):
    """The shared session plus what RL adds: the reference policy, the rewards, the in-training evaluation."""

    ref_policy: eng.RefPolicy | None = None
    scorer: RewardScorer | None = None
    eval_problems: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The first eval.training_problems of the evaluation source, for phase 6 (empty when eval.every_steps is 0)."""
    eval_sandbox: Evaluator | None = None
    languages: tuple[str, ...] = ()
    """Languages of the per-language metrics (`scoring.step_languages`); () for a Python-only dataset."""

    def close(self) -> None:
        super().close()
        if self.scorer is not None:
            self.scorer.close()
        if self.eval_sandbox is not None:
            self.eval_sandbox.close()


def setup(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> RlSession:
    """The reward functions and the data (both checked before any model loads), then the shared session
    (`runtime.session.open_session`) with LoRA per `lora.enabled`, plus the reference policy and, with
    eval.every_steps, the in-training evaluation problems and sandbox. `overwrite`: see `runtime.session`."""
    dist.init_distributed()
    check_divisible("train.prompts_per_step", cfg.train.prompts_per_step)
    eval_problems: list[dict[str, Any]] = []
    if cfg.eval.every_steps:  # before loading a model: the source may be refused (the training data)
        eval_problems, source = load_eval_split(cfg.data, cfg.eval, cfg.seed)
        eval_problems = eval_problems[: cfg.eval.training_problems]
        if dist.is_main_process():
            tqdm.write(f"eval/pass@k every {cfg.eval.every_steps} steps: {len(eval_problems)} problems of "
                       f"{source.describe()}")
    rows_per_rank = cfg.train.prompts_per_step // dist.world_size() * cfg.algo.num_generations
    scorer = RewardScorer(cfg.rewards)  # an unimportable reward fails here, before the model loads
    try:
        problems = load_split(cfg.data, cfg.data.split, cfg.seed)
        base = open_session(cfg, cfg.train, kind="rl", problems=problems, rows_per_rank=rows_per_rank,
                            lora=cfg.lora.enabled, resume=resume, overwrite=overwrite)
    except BaseException:
        scorer.close()
        raise
    session = RlSession(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Session)})
    session.scorer = scorer
    session.ref_policy = eng.RefPolicy.build(session.engine.model, cfg.algo.beta,
                                             copy_for_full_ft=cfg.algo.reference_copy)
    session.languages = step_languages(session.stream.problems)
    if cfg.eval.every_steps:
        session.eval_problems = eval_problems
        session.eval_sandbox = open_sandbox(cfg)
    return session


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    """Run `cfg.train.steps` RL steps (continuing from the latest checkpoint with `resume`; replacing another run's
    files in output_dir with `overwrite`); returns the last step's metrics."""
    session = setup(cfg, resume, overwrite)
    unscorable_streak, metrics = 0, {}
    try:
        steps = range(session.start_step, cfg.train.steps)
        for step in tqdm(steps, desc="rl steps", unit="step", disable=not dist.is_main_process()):
            metrics = train_step(session, step)
            unscorable_streak = unscorable_streak + 1 if metrics["reward/frac_unscorable"] == 1.0 else 0
            if unscorable_streak >= cfg.train.max_unscorable_steps:
                raise UnscorableRunError(
                    f"{unscorable_streak} consecutive steps had no scorable reward (sandbox down or every reward "
                    f"raised: see reward/errors in {session.run_dir / 'metrics.jsonl'}); fix the rewards or raise "
                    "train.max_unscorable_steps"
                )
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps:
                session.save(step + 1, cfg.train.keep_checkpoints)
    finally:
        session.close()
    if dist.is_main_process():
        tqdm.write(f"curves: {plot_run(session.run_dir)}")
    return metrics


def train_step(session: RlSession, step: int) -> dict[str, float]:
    """One RL step: the seven phases, in order (6 only every eval.every_steps steps)."""
    cfg, lm, engine = session.cfg, session.lm, session.engine
    algo, G = cfg.algo, cfg.algo.num_generations
    timer = PhaseTimer()
    first_row = phase1.first_row(session)

    # 1 rollout: G completions per prompt; ZeRO-3 gathers parameters once for the whole phase.
    with timer("rollout"), eng.gathered_parameters(engine):
        rollout = phase1.sample(session, step, "sample")

    # 2 score: every reward function on every completion; a raising reward yields NaN for its rows.
    with timer("score"):
        scores = session.scorer.score(rollout.prompts, rollout.completions, rollout.problems,
                                      completion_token_ids(rollout))
    flat_frac = float(frac_zero_std(scores.total, G))
    fresh_reward = float(scores.total.nanmean())  # the first round's prompts, before any refill: an unbiased estimate

    # 2b DAPO dynamic sampling: replace flat groups by fresh prompts' groups that have signal.
    rounds = 0
    if algo.dynamic_sampling == "resample":
        rollout, scores, rounds = phase1.refill_flat_groups(session, session.scorer, step, rollout, scores, timer)
    rewards = scores.total  # [N]

    # 3 advantages; groups whose rewards are all equal carry no signal and are left out of the loss (DAPO).
    with timer("advantages"):
        batch_scale = None  # scale_rewards=batch divides by the std of every rank's rewards, not this rank's
        if (algo.scale_rewards or DEFAULT_SCALE[algo.advantage]) == "batch":
            batch_scale = std_from_moments(dist.all_reduce(batch_moments(rewards)))
        advantages = compute_advantages(rewards, G, algo.advantage, algo.scale_rewards, batch_scale=batch_scale)
        advantages = weight_negatives(advantages, algo.negative_weight)
        signal = torch.ones_like(rewards, dtype=torch.bool)
        if algo.dynamic_sampling != "keep":
            signal = torch.zeros_like(signal).index_fill_(0, rows_with_signal(rewards, G), True)

    # 4 old/reference likelihoods under shared mask draws (one draw per iteration if masks are resampled); the trace
    # draws nothing and reads the old log-probs from the rollout. Ranks score only their signal rows, so their
    # numbers of forwards differ: ZeRO-3 gathers the weights once for the phase, or its per-layer gathers would wait
    # on each other.
    with timer("likelihoods"), eng.gathered_parameters(engine):
        draws = draw_step_masks(algo, lm, rollout, cfg.train.micro_batch_size, cfg.seed, step, first_row)
        any_signal = dist.any_rank(bool(signal.any()))
        old, ref = old_and_ref_logps(algo, cfg.sampler, lm, engine, session.ref_policy, rollout, draws,
                                     cfg.train.micro_batch_size, needed=signal if any_signal else None)
        spread = {}
        if step % cfg.train.log_every == 0 and algo.likelihood == "trace":
            spread["elbo/estimator_std"] = 0.0  # the trajectory likelihood is exact: no mask draw to vary
        elif step % cfg.train.log_every == 0:  # the estimator's own noise: the same rows under fresh mask draws
            spread["elbo/estimator_std"] = estimator_std(algo, lm, engine.module, rollout, cfg.train.micro_batch_size,
                                                         cfg.seed, step, first_row)

    # 5 policy updates: num_iterations passes, gradient accumulation over micro-batches. With no signal on any
    # rank there is nothing to learn, and an optimizer step on zero gradients would still move the weights
    # (Adam's momentum), so every rank skips the phase together.
    with timer("update"):
        if any_signal:
            update_metrics = policy_updates(algo, cfg.sampler, lm, engine, rollout, advantages, signal, draws, old,
                                            ref, cfg.train.micro_batch_size, cfg.train.learning_rate)
        else:  # the KL to the reference still exists (over every row: phase 4 scored them all for it)
            update_metrics = no_update_metrics(has_reference=ref is not None, trace=algo.likelihood == "trace")
            if ref is not None:
                with eng.gathered_parameters(engine):
                    update_metrics["policy/kl"] = kl_without_update(algo, cfg.sampler, lm, engine.module, ref,
                                                                    rollout, draws, cfg.train.micro_batch_size, old)
        update_metrics["optim/no_signal_step"] = float(not signal.any())

    # 6 evaluate: every eval.every_steps steps (and after the last), pass@k of the updated policy on the eval source.
    eval_metrics: dict[str, float] = {}
    if cfg.eval.every_steps and ((step + 1) % cfg.eval.every_steps == 0 or step + 1 == cfg.train.steps):
        with timer("evaluate"), eng.gathered_parameters(engine):
            eval_metrics = evaluate_during_training(session)

    # 7 log: metrics reduced across ranks, rollouts saved, completions table every few steps.
    with timer("log"):
        metrics = {**reward_metrics(rewards, G, scores.per_func, list(scores.names)), **update_metrics, **spread,
                   **sandbox_metrics(scores), **completion_metrics(rollout, signal, lm.eos_id),
                   **language_totals(rollout.problems, rewards, scores.outcomes, session.languages)}
        metrics["reward/errors"] = float(len(scores.errors))
        metrics["reward/frac_zero_std_before_resample"] = flat_frac
        metrics["reward/mean_before_resample"] = fresh_reward
        metrics["reward/resample_rounds"] = float(rounds)
        metrics.update(eval_metrics)
        rows = rollout_rows(rollout, scores, rewards, advantages)
        for row in rows:
            row["group_id"] += dist.rank() * phase1.prompts_per_rank(session)  # global group ids across ranks
        rows = dist.gather_lists(rows)  # every rank's rollouts reach the store, not only rank 0's
        if dist.is_main_process():
            save_rollouts(session.run_dir, step, rows)
            if step % cfg.train.table_every == 0:
                session.tracker.log_table("completions", rows[: 4 * G], step)
    metrics.update(timer.metrics())
    metrics["perf/tokens_per_s"] = rollout.num_tokens / max(timer.seconds["rollout"], 1e-9)
    metrics["perf/sampler_forwards"] = float(rollout.num_forwards)
    metrics = language_means(reduce_metrics(metrics))
    session.tracker.log(metrics, step)
    if dist.is_main_process():
        tqdm.write(step_summary(step, cfg.train.steps, metrics))
    return metrics


def evaluate_during_training(session: RlSession) -> dict[str, float]:
    """Phase 6: `eval/pass@k` of the current policy on `session.eval_problems`, split over the ranks."""
    cfg, lm = session.cfg, session.lm
    render = PromptStream(session.eval_problems, lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed,
                          style=cfg.data.prompt_style).text
    return evaluate_sharded(lm, session.eval_problems, render, cfg.eval.num_samples, cfg.eval.ks, cfg.sampler,
                            cfg.seed, cfg.train.rollout_batch_size, session.eval_sandbox, model=session.engine.module)


def completion_metrics(rollout: Rollout, signal: torch.Tensor, eos_id: int) -> dict[str, float]:
    """Completion lengths (tokens, EOS included) over all rows and over the rows that ended with EOS (NaN when none
    did), the EOS fraction, and the fraction of rows that reached the loss."""
    lengths = rollout.completion_mask.sum(1).float()
    has_eos = ((rollout.completion_ids == eos_id) & rollout.completion_mask).any(1)
    ended = lengths[has_eos] if has_eos.any() else torch.full((1,), math.nan)
    return {
        "completion/len_mean": float(lengths.mean()),
        "completion/len_min": float(lengths.min()),
        "completion/len_max": float(lengths.max()),
        "completion/terminated_len_mean": float(ended.mean()),
        "completion/terminated_len_min": float(ended.min()),
        "completion/terminated_len_max": float(ended.max()),
        "completion/eos_frac": float(has_eos.float().mean()),
        "reward/frac_rows_trained": float(signal.float().mean()),
    }


def step_summary(step: int, total: int, m: dict[str, float]) -> str:
    return (f"step {step + 1}/{total} | reward {m['reward/mean']:.3f} | zero-std {m['reward/frac_zero_std']:.2f} | "
            f"kl {m.get('policy/kl', math.nan):.4f} | clip {m.get('policy/clipfrac', math.nan):.3f} | "
            f"len {m['completion/len_mean']:.1f} | {m['perf/step_s']:.1f}s"
            + "".join(f" | eval {k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("eval/")))
