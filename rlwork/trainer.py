"""The RL loop. One step is a flat list of numbered, timed phases; each phase lives in its own module:

    1 rollout      G completions per prompt with the batched block-diffusion sampler   (rollout.py)
    2 score        rewards in the sandbox pool, per function, NaN = unscorable         (scoring.py, rewards/)
    3 advantages   weighted reward -> group advantages; zero-signal groups filtered    (advantages.py)
    4 likelihoods  old and reference ELBOs under the step's shared mask draws           (diffusion/elbo.py)
    5 update       num_iterations passes of the clipped ELBO policy gradient            (losses.py, engine.py)
    6 evaluate     every eval.every_steps steps: pass@k of the updated policy on eval.split (eval.py)
    7 log          metrics, rollouts, completions table, checkpoint                     (tracking.py, checkpoint.py)

Nothing algorithmic lives here: this module only sequences the phases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rewards.sandbox import Evaluator
from rlwork import checkpoint as ckpt
from rlwork import dist
from rlwork import engine as eng
from rlwork.advantages import (
    compute_advantages,
    frac_zero_std,
    refill_rows,
    reward_metrics,
    rows_with_signal,
    weighted_reward_sum,
    zero_std_groups,
)
from rlwork.config import RunConfig, SamplerConfig
from rlwork.diffusion.elbo import elbo
from rlwork.diffusion.masking import MaskDraw, draw_masks, select_rows
from rlwork.eval import evaluate_passk, open_sandbox, summarise_verdicts
from rlwork.losses import policy_loss
from rlwork.policies import load_model, starting_model
from rlwork.prompts import PromptStream, load_split
from rlwork.rollout import Rollout, concat_rollouts, generate_rollouts
from rlwork.scoring import RewardScorer, rollout_rows, sandbox_metrics
from rlwork.tracking import make_tracker, reduce_metrics, save_rollouts
from rlwork.typed_config import to_dict

UPDATE_KEYS = ("policy/clipfrac_low", "policy/clipfrac_high", "policy/clipfrac", "policy/ratio_mean",
               "policy/ratio_min", "policy/ratio_max", "policy/kl", "policy/loss", "optim/grad_norm",
               "optim/skipped_updates", "optim/lr", "elbo/std", "elbo/mean_per_token")
"""What phase 5 logs; a step without any signal logs them as NaN (JSONL null), so every step has the same keys."""


class PhaseTimer:
    """Wall-clock seconds per named phase of one step (`perf/<phase>_s`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class UnscorableRunError(RuntimeError):
    """Too many consecutive steps had no scorable reward: training on zeros would be meaningless."""


@dataclass
class Session:
    """Everything a run holds between steps."""

    cfg: RunConfig
    lm: Any
    engine: eng.TrainEngine
    ref_policy: eng.RefPolicy | None
    stream: PromptStream
    scorer: RewardScorer
    tracker: Any
    run_dir: Path
    start_step: int
    eval_problems: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The first eval.training_problems of eval.split, for phase 6 (empty when eval.every_steps is 0)."""
    eval_sandbox: Evaluator | None = None

    def close(self) -> None:
        self.tracker.finish()
        self.scorer.close()
        if self.eval_sandbox is not None:
            self.eval_sandbox.close()


def setup(cfg: RunConfig, resume: bool = False) -> Session:
    """Load the model, wrap it (LoRA, engine), open data, rewards and trackers; restore a checkpoint if asked."""
    dist.init_distributed()
    world = dist.world_size()
    if cfg.train.prompts_per_step % world:
        raise ValueError(
            f"train.prompts_per_step={cfg.train.prompts_per_step} is not divisible by the {world} ranks: "
            f"use a multiple of {world}"
        )
    run_dir = Path(cfg.output_dir)
    cfg = dataclasses.replace(cfg, model=starting_model(cfg.model, cfg.output_dir, resume))  # pinned, checked
    lm = load_model(cfg.model)  # an HF folder, a tiny variant, or a run folder (its weights merged into its base)
    with torch.random.fork_rng(devices=[]):  # adapter init depends on cfg.seed only, not on what ran before
        torch.manual_seed(cfg.seed)
        policy = eng.apply_lora(lm.model, cfg.lora.r if cfg.lora.enabled else 0, cfg.lora.alpha, cfg.lora.dropout,
                                cfg.lora.target_modules)
    rows_local = cfg.train.prompts_per_step // world * cfg.algo.num_generations
    engine = eng.TrainEngine.create(
        policy, backend="deepspeed" if cfg.train.deepspeed else "torch", lr=cfg.train.learning_rate,
        weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm,
        gradient_accumulation_steps=math.ceil(rows_local / cfg.train.micro_batch_size),
        micro_batch_size=cfg.train.micro_batch_size, deepspeed_config_path=cfg.train.deepspeed or "zero2",
    )
    stream = PromptStream(load_split(cfg.data, cfg.data.split, cfg.seed), lm.tokenizer, chat=cfg.data.chat,
                          seed=cfg.seed, style=cfg.data.prompt_style)
    start_step = 0
    if resume and ckpt.latest_checkpoint(run_dir) is not None:
        start_step, _, data_state = ckpt.load_checkpoint(run_dir, engine)
        stream.load_state(data_state)
    tracker = make_tracker(run_dir, cfg.tracking.wandb_project if cfg.tracking.wandb else None,
                           cfg.tracking.wandb_mode, to_dict(cfg), dist.is_main_process())
    ref_policy = eng.RefPolicy.build(policy, cfg.algo.beta, copy_for_full_ft=cfg.algo.reference_copy)
    session = Session(cfg, lm, engine, ref_policy, stream, RewardScorer(cfg.rewards), tracker, run_dir, start_step)
    if cfg.eval.every_steps:
        problems = load_split(cfg.data, cfg.eval.split, cfg.seed)
        session.eval_problems = problems[: cfg.eval.training_problems]
        session.eval_sandbox = open_sandbox(cfg)
    return session


def train(cfg: RunConfig, resume: bool = False) -> dict[str, float]:
    """Run `cfg.train.steps` RL steps (continuing from the latest checkpoint with `resume`); last step's metrics."""
    session = setup(cfg, resume)
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
                ckpt.save_checkpoint(session.run_dir, step + 1, session.engine, None, session.stream.state(),
                                     to_dict(session.cfg), keep_last=cfg.train.keep_checkpoints)
    finally:
        session.close()
    return metrics


def train_step(session: Session, step: int) -> dict[str, float]:
    """One RL step: the seven phases, in order (6 only every eval.every_steps steps)."""
    cfg, lm, engine = session.cfg, session.lm, session.engine
    algo, G = cfg.algo, cfg.algo.num_generations
    timer = PhaseTimer()
    b_local = cfg.train.prompts_per_step // dist.world_size()

    # 1 rollout: G completions per prompt; ZeRO-3 gathers parameters once for the whole phase.
    first_row = dist.rank() * b_local * G  # this rank's first row in the step's global batch
    with timer("rollout"), eng.gathered_parameters(engine):
        rollout = _rollout(session, step, "sample", first_row)

    # 2 score: every reward function on every completion; a raising reward yields NaN for its rows.
    with timer("score"):
        scores = session.scorer.score(rollout.prompts, rollout.completions, rollout.problems)
        rewards = weighted_reward_sum(scores.per_func, torch.tensor(cfg.rewards.weights))  # [N]
    flat_frac = float(frac_zero_std(rewards, G))

    # 2b DAPO dynamic sampling: replace flat groups by fresh prompts' groups that have signal. Every rank runs
    # the same number of rounds (the prompt stream advances in lockstep).
    rounds = 0
    while algo.dynamic_sampling == "resample" and rounds < algo.max_resample_rounds and dist.any_rank(
            bool(zero_std_groups(rewards, G).any())):
        rounds += 1
        with timer("rollout"), eng.gathered_parameters(engine):
            extra = _rollout(session, step, f"sample{rounds}", first_row)
        with timer("score"):
            extra_scores = session.scorer.score(extra.prompts, extra.completions, extra.problems)
            extra_rewards = weighted_reward_sum(extra_scores.per_func, torch.tensor(cfg.rewards.weights))
            rows = refill_rows(rewards, extra_rewards, G)
            rollout = concat_rollouts(rollout, extra, lm.pad_id).select(rows)
            rollout = dataclasses.replace(rollout, group_ids=torch.arange(b_local).repeat_interleave(G))
            scores = scores.concat(extra_scores).select(rows)
            rewards = torch.cat([rewards, extra_rewards])[rows]

    # 3 advantages; groups whose rewards are all equal carry no signal and are left out of the loss (DAPO).
    with timer("advantages"):
        advantages = compute_advantages(rewards, G, algo.advantage, algo.scale_rewards)  # [N]
        signal = torch.ones_like(rewards, dtype=torch.bool)
        if algo.dynamic_sampling != "keep":
            signal = torch.zeros_like(signal).index_fill_(0, rows_with_signal(rewards, G), True)

    # 4 old/reference likelihoods under shared mask draws (one draw per iteration if masks are resampled).
    with timer("likelihoods"):
        num_draws = algo.num_iterations if algo.resample_masks_per_iteration else 1
        draws = [[draw_masks_for(cfg, lm, rollout.select(torch.arange(c.start, c.stop)),
                                 row_generator(cfg.seed, step, f"mask{d}", first_row + c.start, lm.device))
                  for c in _row_chunks(rollout.prompt_ids.shape[0], cfg.train.micro_batch_size)]
                 for d in range(num_draws)]
        old, ref = old_and_ref_logps(cfg, lm, engine, session.ref_policy, rollout, draws, needed=signal)

    # 5 policy updates: num_iterations passes, gradient accumulation over micro-batches. With no signal on any
    # rank there is nothing to learn, and an optimizer step on zero gradients would still move the weights
    # (Adam's momentum), so every rank skips the phase together.
    with timer("update"):
        if dist.any_rank(bool(signal.any())):
            update_metrics = policy_updates(cfg, lm, engine, rollout, advantages, signal, draws, old, ref)
        else:
            update_metrics = {k: math.nan for k in UPDATE_KEYS if k != "policy/kl" or ref is not None}
        update_metrics["optim/no_signal_step"] = float(not signal.any())

    # 6 evaluate: every eval.every_steps steps (and after the last), pass@k of the updated policy on eval.split.
    eval_metrics: dict[str, float] = {}
    if cfg.eval.every_steps and ((step + 1) % cfg.eval.every_steps == 0 or step + 1 == cfg.train.steps):
        with timer("evaluate"), eng.gathered_parameters(engine):
            eval_metrics = evaluate_during_training(session)

    # 7 log: metrics reduced across ranks, rollouts saved, completions table every few steps.
    with timer("log"):
        metrics = {**reward_metrics(rewards, G, scores.per_func, list(scores.names)), **update_metrics,
                   **sandbox_metrics(scores), **completion_metrics(rollout, signal, lm.eos_id)}
        metrics["reward/errors"] = float(len(scores.errors))
        metrics["reward/frac_zero_std_before_resample"] = flat_frac
        metrics["reward/resample_rounds"] = float(rounds)
        metrics.update(eval_metrics)
        rows = rollout_rows(rollout, scores, rewards, advantages)
        for row in rows:
            row["group_id"] += dist.rank() * b_local  # global group ids across ranks
        rows = dist.gather_lists(rows)  # every rank's rollouts reach the store, not only rank 0's
        if dist.is_main_process():
            save_rollouts(session.run_dir, step, rows)
            if step % cfg.train.table_every == 0:
                session.tracker.log_table("completions", rows[: 4 * G], step)
    for name, seconds in timer.seconds.items():
        metrics[f"perf/{name}_s"] = seconds
    metrics["perf/step_s"] = sum(timer.seconds.values())
    metrics["perf/tokens_per_s"] = rollout.num_tokens / max(timer.seconds["rollout"], 1e-9)
    metrics["perf/sampler_forwards"] = float(rollout.num_forwards)
    metrics = reduce_metrics(metrics)
    session.tracker.log(metrics, step)
    if dist.is_main_process():
        tqdm.write(step_summary(step, cfg.train.steps, metrics))
    return metrics


def evaluate_during_training(session: Session) -> dict[str, float]:
    """Phase 6: `eval/pass@k` of the current policy on `session.eval_problems` (every rank gets the same values).

    Each rank samples a contiguous slice of the problems; verdicts are gathered, so pass@k covers all of them.
    The sampling noise is keyed by (seed, global row) and is the same at every evaluation: differences between
    evaluations come from the policy, not from new draws.
    """
    cfg, lm = session.cfg, session.lm
    problems, n = session.eval_problems, cfg.eval.num_samples
    lo = len(problems) * dist.rank() // dist.world_size()
    hi = len(problems) * (dist.rank() + 1) // dist.world_size()
    verdicts: list[tuple[int, str]] = []
    if hi > lo:
        render = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed,
                              style=cfg.data.prompt_style).text
        result = evaluate_passk(
            lm, problems[lo:hi], render, n, cfg.eval.ks, sampler_config(cfg),
            lambda row: row_generator(cfg.seed, 0, "eval", lo * n + row, lm.device), cfg.train.rollout_batch_size,
            evaluator=session.eval_sandbox, progress=False, model=session.engine.module,
        )
        verdicts = [(lo + j // n, s["verdict"]) for j, s in enumerate(result.samples)]  # samples grouped by problem
    by_problem: dict[str, list[str]] = {}
    for index, verdict in dist.gather_lists(verdicts):
        by_problem.setdefault(str(index), []).append(verdict)
    means, _, _ = summarise_verdicts(by_problem, cfg.eval.ks)
    return {f"eval/{k}": v for k, v in means.items()}


def sampler_config(cfg: RunConfig) -> SamplerConfig:
    return cfg.sampler


def _rollout(session: Session, step: int, phase: str, first_row: int) -> Rollout:
    """This rank's slice of the next global prompt batch, G completions each, randomness keyed by global row."""
    cfg, lm, G = session.cfg, session.lm, session.cfg.algo.num_generations
    b_local = cfg.train.prompts_per_step // dist.world_size()
    batch = session.stream.next(cfg.train.prompts_per_step)  # one global order; each rank takes its slice
    mine = slice(dist.rank() * b_local, (dist.rank() + 1) * b_local)
    return generate_rollouts(
        lm, batch.problems[mine], batch.texts[mine], G, sampler_config(cfg),
        lambda row: row_generator(cfg.seed, step, phase, first_row + row, lm.device),
        cfg.train.rollout_batch_size, model=session.engine.module, progress=dist.is_main_process(),
    )


def row_generator(seed: int, step: int, phase: str, row: int, device: torch.device) -> torch.Generator:
    """The generator for the rows of `phase` that start at global `row` of step `step`.

    Keying randomness by (seed, step, phase, global row) instead of carrying generator state means a batch split
    over 1 or R ranks draws the same noise (when the chunks align), and a resumed run needs no RNG state to
    continue exactly. Phases: "sample" (rollout batches) and "mask<d>" (ELBO mask draws, per micro-batch).
    """
    key = f"{seed}/{step}/{phase}/{row}".encode()
    return torch.Generator(device=device).manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def draw_masks_for(cfg: RunConfig, lm, rollout: Rollout, generator: torch.Generator) -> MaskDraw:
    """`algo.elbo_samples` draws; a coupled/stratified draw is a complementary pair (two forward passes)."""
    passes = cfg.algo.elbo_samples * (2 if cfg.algo.elbo_estimator in ("coupled", "stratified") else 1)
    return draw_masks(cfg.algo.elbo_estimator, rollout.completion_mask, passes, lm.block_size, generator,
                      prompt_mask=rollout.prompt_mask, prompt_mask_prob=cfg.algo.prompt_mask_prob)


def _row_chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _elbo(lm, rollout: Rollout, rows: torch.Tensor, draw: MaskDraw, chunk_start: int, model):
    """ELBO terms of `rows` (global indices into the rollout) under their micro-batch's draw."""
    return elbo(lm, rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
                rollout.completion_mask[rows], select_rows(draw, rows - chunk_start), model=model)


def _chunk_rows(s: slice) -> torch.Tensor:
    return torch.arange(s.start, s.stop)


@torch.no_grad()
def old_and_ref_logps(cfg, lm, engine, ref_policy, rollout: Rollout, draws,
                      needed: torch.Tensor | None = None) -> tuple[list | None, list | None]:
    """Per-draw old ([N, L], only when num_iterations > 1) and reference ([N, L], only when beta > 0) ELBO terms.

    draws[d][c] is draw d of micro-batch c. needed: [N] bool, the rows the loss uses (None = all); the others
    are not computed and stay 0, since rows without signal never reach the loss.

    With one iteration the old policy is the current one, so its terms are the current terms detached (the
    ratio is exactly 1 by construction, as in TRL).
    """
    n, length = rollout.completion_ids.shape
    needed = torch.ones(n, dtype=torch.bool) if needed is None else needed

    def terms(model, d) -> torch.Tensor:
        out = torch.zeros(n, length, device=rollout.completion_ids.device)
        for c, s in enumerate(_row_chunks(n, cfg.train.micro_batch_size)):
            rows = _chunk_rows(s)[needed[s].cpu()]
            if rows.numel():
                out[rows.to(out.device)] = _elbo(lm, rollout, rows, d[c], s.start, model).per_token
        return out

    old = ref = None
    if cfg.algo.num_iterations > 1:
        old = [terms(engine.module, d) for d in draws]
    if ref_policy is not None:
        with ref_policy.context(engine.module) as ref_model:
            ref = [terms(ref_model, d) for d in draws]
    return old, ref


def policy_updates(cfg, lm, engine, rollout: Rollout, advantages, signal, draws, old, ref) -> dict[str, float]:
    """num_iterations optimizer steps over the batch, each accumulating gradients over fixed micro-batches.

    Every rank runs the same number of backward calls (DeepSpeed's collectives need it); rows without signal are
    left out of each micro-batch's loss, and a micro-batch without any contributes an exact zero.
    """
    algo, n = cfg.algo, rollout.prompt_ids.shape[0]
    chunks = _row_chunks(n, cfg.train.micro_batch_size)
    gas = engine.gradient_accumulation_steps
    if len(chunks) != gas:
        raise RuntimeError(f"{len(chunks)} micro-batches but the engine accumulates {gas}")  # set up in train()
    signal_rows = int(signal.sum())
    signal_tokens = (rollout.completion_mask & signal[:, None]).sum().clamp_min(1)
    sums: dict[str, float] = {}
    grad_norms, skipped, elbo_per_token = [], 0, []
    for it in range(algo.num_iterations):
        d = it if algo.resample_masks_per_iteration else 0
        for c, s in enumerate(chunks):
            rows = torch.arange(s.start, s.stop)[signal[s]]
            empty = rows.numel() == 0
            if empty:
                rows = torch.arange(s.start, s.start + 1)  # keeps the graph (and DeepSpeed's hooks) identical
            out = _elbo(lm, rollout, rows, draws[d][c], s.start, engine.module)
            mask = rollout.completion_mask[rows]
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
        "optim/lr": cfg.train.learning_rate,
        "elbo/std": float(per_token_elbo.std()) if per_token_elbo.numel() > 1 else math.nan,
        "elbo/mean_per_token": float(per_token_elbo.mean()),
    }


def completion_metrics(rollout: Rollout, signal: torch.Tensor, eos_id: int) -> dict[str, float]:
    lengths = rollout.completion_mask.sum(1).float()
    has_eos = ((rollout.completion_ids == eos_id) & rollout.completion_mask).any(1)
    return {
        "completion/len_mean": float(lengths.mean()),
        "completion/len_max": float(lengths.max()),
        "completion/eos_frac": float(has_eos.float().mean()),
        "reward/frac_rows_trained": float(signal.float().mean()),
    }


def step_summary(step: int, total: int, m: dict[str, float]) -> str:
    return (f"step {step + 1}/{total} | reward {m['reward/mean']:.3f} | zero-std {m['reward/frac_zero_std']:.2f} | "
            f"kl {m.get('policy/kl', float('nan')):.4f} | clip {m.get('policy/clipfrac', float('nan')):.3f} | "
            f"len {m['completion/len_mean']:.1f} | {m['perf/step_s']:.1f}s"
            + "".join(f" | eval {k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("eval/")))
