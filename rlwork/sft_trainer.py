"""The diffusion SFT loop (`rlwork sft`), on the RL trainer's machinery. One step is three numbered, timed phases:

    1 batch    the next global batch of problems; this rank's slice, tokenized; EOS counts drawn   (prompts.py, sft.py)
    2 update   -ELBO of each micro-batch's targets under fresh mask draws, backward, one step      (sft.py, engine.py)
    3 log      metrics reduced across ranks, JSONL/W&B, a one-line summary                         (tracking.py)

then, every `sft.save_every` steps and at the end, an atomic checkpoint (checkpoint.py): `adapter/` (LoRA, peft
format) or `model/` (full weights) that `rlwork eval --checkpoint RUN`, `load_policy` and `rlwork export RUN` read,
plus the optimizer and the data position, so `--resume` continues exactly. The learning rate is a pure function
of the step and all randomness is keyed by (seed, step, global row), so a resumed run needs no RNG state and 1 or
R ranks draw the same noise for the same rows.

The loss is the per-token negative ELBO of the whole global batch (sum over rows / completion tokens of all
ranks), so it does not depend on how rows are split into micro-batches and ranks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlwork import checkpoint as ckpt
from rlwork import dist
from rlwork import engine as eng
from rlwork.config import RunConfig
from rlwork.policies import load_model, starting_model
from rlwork.prompts import PromptStream, load_split
from rlwork.sft import (
    SftBatch,
    check_targets,
    continues_prompts,
    learning_rate_at,
    make_batch,
    negative_elbo,
    target_text,
)
from rlwork.tracking import make_tracker, reduce_metrics
from rlwork.trainer import PhaseTimer, row_generator
from rlwork.typed_config import to_dict

RUN_KIND = "sft"
"""Stored in each checkpoint's data state, so `--resume` refuses a folder that holds an RL run."""


@dataclass
class SftSession:
    """Everything an SFT run holds between steps."""

    cfg: RunConfig
    lm: Any
    engine: eng.TrainEngine
    stream: PromptStream
    tracker: Any
    run_dir: Path
    start_step: int
    progress: bool

    @property
    def rows_per_rank(self) -> int:
        return self.cfg.sft.batch_size // dist.world_size()

    def close(self) -> None:
        self.tracker.finish()


def setup_sft(cfg: RunConfig, resume: bool = False, progress: bool = True) -> SftSession:
    """Check the data, load the model, wrap it (LoRA or full weights, torch or DeepSpeed), restore if asked."""
    s = cfg.sft
    dist.init_distributed()
    world = dist.world_size()
    if s.batch_size % world:
        raise ValueError(f"sft.batch_size={s.batch_size} is not divisible by the {world} ranks: use a multiple of "
                         f"{world}")
    problems = load_split(cfg.data, cfg.data.split, cfg.seed)
    check_targets(problems, f"data.dataset={cfg.data.dataset!r} split {cfg.data.split!r}",
                  continues_prompts(cfg.data))  # before loading a model
    cfg = dataclasses.replace(cfg, model=starting_model(cfg.model, cfg.output_dir, resume))  # pinned, checked
    lm = load_model(cfg.model)  # an HF folder, a tiny variant, or a run folder (its weights merged into its base)
    with torch.random.fork_rng(devices=[]):  # adapter init depends on cfg.seed only, not on what ran before
        torch.manual_seed(cfg.seed)
        policy = eng.apply_lora(lm.model, cfg.lora.r if s.lora else 0, cfg.lora.alpha, cfg.lora.dropout,
                                cfg.lora.target_modules)
    micro = min(s.micro_batch_size, s.batch_size // world)
    engine = eng.TrainEngine.create(
        policy, backend="deepspeed" if cfg.train.deepspeed else "torch", lr=s.learning_rate,
        weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm,
        gradient_accumulation_steps=math.ceil(s.batch_size // world / micro), micro_batch_size=micro,
        deepspeed_config_path=cfg.train.deepspeed or "zero2",
    )
    engine.module.train()  # adapter dropout on; the tiny and real coders have no other dropout
    stream = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed, style=cfg.data.prompt_style)
    run_dir = Path(cfg.output_dir)
    start_step = 0
    if resume and ckpt.latest_checkpoint(run_dir) is not None:
        start_step, _, data_state = ckpt.load_checkpoint(run_dir, engine)
        if data_state.get("kind") != RUN_KIND:
            raise ValueError(f"{ckpt.latest_checkpoint(run_dir)} is not an SFT checkpoint (an RL run?): resume SFT "
                             "from its own output_dir, or start a new one")
        stream.load_state(data_state)
    tracker = make_tracker(run_dir, cfg.tracking.wandb_project if cfg.tracking.wandb else None,
                           cfg.tracking.wandb_mode, to_dict(cfg), dist.is_main_process())
    return SftSession(cfg, lm, engine, stream, tracker, run_dir, start_step, progress and dist.is_main_process())


def train_sft(cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict[str, float]:
    """Run `cfg.sft.steps` SFT steps into `cfg.output_dir` (continuing from its latest checkpoint with `resume`).

    Returns the last step's metrics (empty when a resumed run had nothing left to do).
    """
    session = setup_sft(cfg, resume, progress)
    s, metrics = cfg.sft, {}
    try:
        bar = tqdm(range(session.start_step, s.steps), desc="sft steps", unit="step", disable=not session.progress)
        for step in bar:
            metrics = sft_step(session, step)
            bar.set_postfix(loss=f"{metrics['sft/loss']:.4f}")
            # 4 checkpoint: weights (adapter/ or model/), optimizer, data position; atomic
            if (step + 1) % s.save_every == 0 or step + 1 == s.steps:
                folder = ckpt.save_checkpoint(session.run_dir, step + 1, session.engine, None,
                                              {**session.stream.state(), "kind": RUN_KIND}, to_dict(session.cfg),
                                              keep_last=s.keep_checkpoints)
                if session.progress:
                    tqdm.write(f"checkpoint: {folder}")
    finally:
        session.close()
    return metrics


def sft_step(session: SftSession, step: int) -> dict[str, float]:
    """One SFT step: the three phases, in order."""
    cfg, lm, engine, s = session.cfg, session.lm, session.engine, session.cfg.sft
    timer = PhaseTimer()
    first_row = dist.rank() * session.rows_per_rank  # this rank's first row in the step's global batch

    # 1 batch: one global order on every rank, each rank its slice; micro-batch c's randomness (EOS counts, then
    # mask draws) comes from a generator keyed by its first global row.
    with timer("batch"):
        global_batch = session.stream.next(s.batch_size)
        mine = slice(first_row, first_row + session.rows_per_rank)
        problems, texts = global_batch.problems[mine], global_batch.texts[mine]
        micro_batches: list[tuple[SftBatch, torch.Generator]] = []
        for start in range(0, len(problems), s.micro_batch_size):
            rows = slice(start, start + s.micro_batch_size)
            gen = row_generator(cfg.seed, step, "sft", first_row + start, lm.device)
            targets = [target_text(p, continues_prompts(cfg.data)) for p in problems[rows]]
            batch = make_batch(lm, texts[rows], targets, gen, s.max_eos)
            micro_batches.append((batch, gen))
        local = torch.tensor([sum(float(b.completion_mask.sum()) for b, _ in micro_batches),
                              sum(float(b.num_tokens) for b, _ in micro_batches)], dtype=torch.float64,
                             device=lm.device)  # NCCL reduces device tensors only
        global_targets, global_tokens = (dist.all_reduce_mean(local) * dist.world_size()).tolist()

    # 2 update: the per-token loss of the global batch. engine.backward divides by the accumulation steps and the
    # ranks' gradients are averaged, so each micro-batch's share is scaled back by both.
    with timer("update"):
        lr = learning_rate_at(step, s.steps, s.learning_rate, s.warmup, s.lr_schedule)
        for group in engine.optimizer.param_groups:  # torch AdamW, or DeepSpeed's ZeRO wrapper around it
            group["lr"] = lr
        scale = engine.gradient_accumulation_steps * dist.world_size() / global_targets
        loss_sum, result = 0.0, None
        for batch, gen in micro_batches:
            neg_elbo = negative_elbo(lm, batch, gen, s.samples, model=engine.module).sum()
            engine.backward(neg_elbo * scale)
            result = engine.step()
            loss_sum += float(neg_elbo.detach())
        assert result is not None, "the last micro-batch must end the accumulation window"

    # 3 log: metrics reduced across ranks (every rank passes the same keys); only rank 0 writes.
    with timer("log"):
        epoch = session.stream.epoch + session.stream.position / len(session.stream.problems)
        loss_total = float(dist.all_reduce_mean(torch.tensor([loss_sum], device=lm.device))) * dist.world_size()
        metrics = {"sft/loss": loss_total / global_targets,
                   "sft/target_tokens": global_targets, "sft/epoch": epoch, "optim/lr": lr,
                   "optim/grad_norm": result.grad_norm, "optim/skipped_updates": float(not result.applied)}
    for name, seconds in timer.seconds.items():
        metrics[f"perf/{name}_s"] = seconds
    metrics["perf/step_s"] = sum(timer.seconds.values())
    metrics["perf/tokens_per_s"] = global_tokens * s.samples / max(metrics["perf/step_s"], 1e-9)
    metrics = reduce_metrics(metrics)
    session.tracker.log(metrics, step)
    if session.progress and (step % s.log_every == 0 or step + 1 == s.steps):
        tqdm.write(step_summary(step, s.steps, metrics))
    return metrics


def step_summary(step: int, total: int, m: dict[str, float]) -> str:
    return (f"sft step {step + 1}/{total} | loss {m['sft/loss']:.4f} | lr {m['optim/lr']:.2e} | "
            f"grad {m['optim/grad_norm']:.3f} | epoch {m['sft/epoch']:.2f} | {m['perf/tokens_per_s']:.0f} tok/s | "
            f"{m['perf/step_s']:.2f}s")
