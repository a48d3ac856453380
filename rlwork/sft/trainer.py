"""The diffusion SFT loop (`rlwork sft`), on the session RL uses too. One step is three numbered, timed phases:

    1 batch    the next global batch of problems; base-model habits drawn (sft.print_file, sft.continue_file);
               this rank's slice, tokenized; EOS counts drawn                                    (sft/objective.py)
    2 update   -ELBO of each micro-batch's targets under fresh mask draws, backward, one step      (sft/objective.py)
    3 log      metrics reduced across ranks, JSONL/W&B, a one-line summary                (runtime/tracking.py)

then, every `sft.save_every` steps and at the end, an atomic checkpoint (runtime/checkpoint.py): `adapter/` (LoRA, peft
format) or `model/` (full weights) that `rlwork eval --checkpoint RUN`, `load_policy` and `rlwork export RUN` read,
plus the optimizer and the data position, so `--resume` continues exactly. The learning rate is a pure function
of the step and all randomness is keyed by (seed, step, global row), so a resumed run needs no RNG state and 1 or
R ranks draw the same noise for the same rows.

The loss is the per-token negative ELBO of the whole global batch (sum over rows / completion tokens of all
ranks), so it does not depend on how rows are split into micro-batches and ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlwork.config import RunConfig
from rlwork.data.prompts import load_split
from rlwork.runtime import dist
from rlwork.runtime.plots import plot_run
from rlwork.runtime.rng import row_generator
from rlwork.runtime.session import Session, check_divisible, open_session
from rlwork.runtime.timing import PhaseTimer
from rlwork.runtime.tracking import reduce_metrics
from rlwork.sft.objective import (
    SftBatch,
    check_targets,
    continue_files,
    continues_prompts,
    learning_rate_at,
    make_batch,
    negative_elbo,
    script_style,
    target_text,
)


@dataclass
class SftSession(Session):
    """The shared session plus whether this process prints progress."""

    progress: bool = True

    @property
    def rows_per_rank(self) -> int:
        return self.cfg.sft.batch_size // dist.world_size()


def setup_sft(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> SftSession:
    """Check the data, then the shared session (`runtime.session.open_session`): LoRA per `sft.lora`, the SFT
    learning rate, clipping and micro-batches, resume of an SFT checkpoint only."""
    s = cfg.sft
    dist.init_distributed()
    check_divisible("sft.batch_size", s.batch_size)
    problems = load_split(cfg.data, cfg.data.split, cfg.seed)
    check_targets(problems, f"data.dataset={cfg.data.dataset!r} split {cfg.data.split!r}",
                  continues_prompts(cfg.data))  # before loading a model
    base = open_session(cfg, s, kind="sft", problems=problems, rows_per_rank=s.batch_size // dist.world_size(),
                        lora=s.lora, resume=resume, overwrite=overwrite)
    base.lm.train_mode(base.engine.module)  # adapter dropout on; the tiny and real coders have no other dropout
    return SftSession(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Session)},
                      progress=progress and dist.is_main_process())


def train_sft(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
              ) -> dict[str, float]:
    """Run `cfg.sft.steps` SFT steps into `cfg.output_dir` (continuing from its latest checkpoint with `resume`;
    replacing another run's files there with `overwrite`).

    Returns the last step's metrics (empty when a resumed run had nothing left to do).
    """
    session = setup_sft(cfg, resume, progress, overwrite)
    s, metrics = cfg.sft, {}
    try:
        bar = tqdm(range(session.start_step, s.steps), desc="sft steps", unit="step", disable=not session.progress)
        for step in bar:
            metrics = sft_step(session, step)
            bar.set_postfix(loss=f"{metrics['sft/loss']:.4f}")
            # 4 checkpoint: weights (adapter/ or model/), optimizer, data position; atomic
            if (step + 1) % s.save_every == 0 or step + 1 == s.steps:
                folder = session.save(step + 1, s.keep_checkpoints)
                if session.progress:
                    tqdm.write(f"checkpoint: {folder}")
    finally:
        session.close()
    if dist.is_main_process():
        curves = plot_run(session.run_dir)
        if session.progress:
            tqdm.write(f"curves: {curves}")
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
        targets = [target_text(p, continues_prompts(cfg.data)) for p in global_batch.problems]
        goes_on = [False] * s.batch_size
        cpu = torch.device("cpu")  # the base model's habits: one draw for the global batch, the same on every rank
        if s.print_file > 0:
            draw = torch.rand(s.batch_size, generator=row_generator(cfg.seed, step, "sft-print", 0, cpu))
            targets = [script_style(t) if d < s.print_file else t for t, d in zip(targets, draw.tolist(), strict=True)]
        if s.continue_file > 0:
            draw = torch.rand(s.batch_size, generator=row_generator(cfg.seed, step, "sft-file", 0, cpu))
            goes_on = (draw < s.continue_file).tolist()
            targets = continue_files(targets, [p["reference"] for p in global_batch.problems], goes_on)
        windows = [s.continue_window if on else None for on in goes_on]
        mine = slice(first_row, first_row + session.rows_per_rank)
        problems, texts = global_batch.problems[mine], global_batch.texts[mine]
        targets, windows = targets[mine], windows[mine]
        micro_batches: list[tuple[SftBatch, torch.Generator]] = []
        for start in range(0, len(problems), s.micro_batch_size):
            rows = slice(start, start + s.micro_batch_size)
            gen = row_generator(cfg.seed, step, "sft", first_row + start, lm.device)
            batch = make_batch(lm, texts[rows], targets[rows], gen, s.max_eos, windows[rows])
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
    metrics.update(timer.metrics())
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
