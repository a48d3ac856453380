"""One setup for both training loops: the starting model, its adapter, the engine, the data, tracking, resume.

`open_session` does, in order: pin the starting model (`policies.starting_model`: a run folder becomes its exact
checkpoint, checked against the checkpoint being resumed), load it, put a LoRA adapter on it (or train every weight),
wrap it in the torch or DeepSpeed engine, open the prompt stream and, with `resume`, restore weights, optimizer,
step and data position from the run folder's latest checkpoint, then open the trackers. SFT (`rlwork.sft`) and RL
(`rlwork.rl`) add what is their own on top.

Each checkpoint records which loop wrote it (`kind` in its data state), so one loop refuses to resume the other's.
A new run refuses a folder that holds another run (`claim_run_dir`): mixing two runs' metrics, rollouts and
checkpoints in one folder gives wrong curves and a `latest` checkpoint from the wrong run, without any error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlwork.config import LoopConfig, RunConfig, to_dict
from rlwork.data.prompts import PromptStream
from rlwork.models.lm import DiffusionLM, lora_target_paths
from rlwork.runtime import checkpoint as ckpt
from rlwork.runtime import dist
from rlwork.runtime import engine as eng
from rlwork.runtime.policies import load_model, starting_model
from rlwork.runtime.tracking import METRICS_FILE, ROLLOUT_DIR, TABLE_DIR, WANDB_DIR, make_tracker, rewind_run_files

KINDS = ("rl", "sft")
RUN_FILES = (METRICS_FILE, ROLLOUT_DIR, TABLE_DIR, ckpt.CHECKPOINTS, WANDB_DIR, "curves.png", "eval_before.json",
             "eval_after.json")
RUN_GLOBS = ("eval_before_*.json", "eval_after_*.json")
"""What rlwork writes into a run folder (the demo's reports of further splits by pattern); `--overwrite` removes
exactly these, nothing else."""


@dataclass
class Session:
    """What a training run holds between steps.

    Attributes:
        cfg: the run's config, `model.path` pinned to the exact starting weights.
        lm: the starting model (tokenizer, family facts); `engine.module` is the trained wrapper around it.
        engine: torch or DeepSpeed engine over the LoRA-wrapped (or full) model.
        stream: the seeded, resumable prompt stream over the training problems.
        tracker: JSONL + W&B (rank 0) or a no-op (other ranks).
        run_dir: `cfg.output_dir`.
        start_step: the first step to run (0, or the resumed checkpoint's step).
        kind: which loop this is ("rl" or "sft"), saved in every checkpoint.
    """

    cfg: RunConfig
    lm: DiffusionLM
    engine: eng.TrainEngine
    stream: PromptStream
    tracker: Any
    run_dir: Path
    start_step: int
    kind: str

    def save(self, step: int, keep_last: int) -> Path:
        """An atomic checkpoint of weights, optimizer, data position and config after `step` steps."""
        return ckpt.save_checkpoint(self.run_dir, step, self.engine, None, {**self.stream.state(), "kind": self.kind},
                                    to_dict(self.cfg), keep_last=keep_last)

    def close(self) -> None:
        self.tracker.finish()


class RunDirError(ValueError):
    """output_dir holds another run (or --resume and --overwrite were both asked for); the message says the fix."""


def used_by_a_run(run_dir: Path) -> list[str]:
    """What in `run_dir` shows that a run already trained there: logged metrics, rollouts, checkpoints."""
    found = []
    metrics = run_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(METRICS_FILE)
    if any((run_dir / ROLLOUT_DIR).glob("*.parquet")):
        found.append(f"{ROLLOUT_DIR}/")
    if (run_dir / ckpt.CHECKPOINTS).is_dir() and any((run_dir / ckpt.CHECKPOINTS).iterdir()):
        found.append(f"{ckpt.CHECKPOINTS}/")
    return found


def claim_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Make `run_dir` this run's folder. A new run (neither `resume` nor `overwrite`) refuses a folder where
    another run trained; `overwrite` first removes that run's files (`RUN_FILES`, `RUN_GLOBS`, nothing else). Call
    it on every rank: every rank checks, rank 0 removes, and all wait for it."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume continues the run in output_dir and --overwrite deletes it: choose one")
    used = [] if resume else used_by_a_run(run_dir)
    dist.barrier()  # every rank has looked before rank 0 removes anything
    if used and not overwrite:
        raise RunDirError(f"output_dir={run_dir} already holds a run ({', '.join(used)}): continue it with --resume, "
                         f"start over with --overwrite (deletes its run files), or set output_dir to a new folder")
    if used and dist.is_main_process():
        import shutil

        for path in [run_dir / name for name in RUN_FILES] + [p for g in RUN_GLOBS for p in run_dir.glob(g)]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    dist.barrier()


def check_no_warm_start(cfg: RunConfig) -> None:
    """Raise when `model.warm_start` is still unresolved: the run would start from model.path itself (for the tiny
    recipe, a random model) instead of the warm start the config asks for."""
    if cfg.model.warm_start:
        raise ValueError("model.warm_start=true: the rlwork commands resolve it (train, eval, demo); from Python, "
                         "call `cfg = rlwork.demo.with_warm_start(cfg)` first, or set model.warm_start=false")


def check_divisible(name: str, value: int) -> None:
    """Raise when a global batch size (`train.prompts_per_step`, `sft.batch_size`) does not split over the ranks."""
    world = dist.world_size()
    if value % world:
        raise ValueError(f"{name}={value} is not divisible by the {world} ranks: use a multiple of {world}")


def check_kind(checkpoint: Path, kind: str) -> None:
    """Raise unless `checkpoint` was written by the loop `kind` ("rl" or "sft")."""
    found = json.loads((checkpoint / "data_state.json").read_text()).get("kind", "rl")  # older RL ones had none
    if found != kind:
        command = {"rl": "rlwork train", "sft": "rlwork sft"}
        raise ValueError(f"{checkpoint} was written by `{command.get(found, found)}`, not `{command[kind]}`: resume "
                         "it with the command that wrote it, or start this run in a new output_dir")


def open_session(cfg: RunConfig, loop: LoopConfig, *, kind: str, problems: list[dict[str, Any]], rows_per_rank: int,
                 lora: bool, resume: bool, overwrite: bool = False) -> Session:
    """Load, wrap and (with `resume`) restore everything a loop needs; see the module docstring.

    loop: the loop's section (`cfg.train` or `cfg.sft`): learning rate, weight decay, clipping, micro-batch size.
    rows_per_rank: rows one rank trains on per optimizer step; gradients accumulate over ceil(rows / micro-batch)
    micro-batches. lora: put a LoRA adapter (sized by `cfg.lora`) on the model, or train every weight.
    overwrite: a new run may replace another run's files in `cfg.output_dir` (`claim_run_dir`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: one of {KINDS}")
    if kind == "rl":
        check_no_warm_start(cfg)
    dist.init_distributed()
    run_dir = Path(cfg.output_dir)
    claim_run_dir(run_dir, resume=resume, overwrite=overwrite)
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        check_kind(latest, kind)  # before loading anything: the other loop's weights would not even fit
    cfg = dataclasses.replace(cfg, model=starting_model(cfg.model, cfg.output_dir, resume))  # pinned, checked
    lm = load_model(cfg.model)  # an HF folder, a tiny variant, or a run folder (its weights merged into its base)
    # Adapters on the family's linear layers (or lora.target_modules), in every layer, never on the LM head.
    targets = lora_target_paths(lm.model, cfg.lora.target_modules or lm.family.lora_targets, lm.family) if lora else ()
    with torch.random.fork_rng(devices=[]):  # adapter init depends on cfg.seed only, not on what ran before
        torch.manual_seed(cfg.seed)
        policy = eng.apply_lora(lm.model, cfg.lora.r if lora else 0, cfg.lora.alpha, cfg.lora.dropout, targets)
    micro = min(loop.micro_batch_size, rows_per_rank)
    engine = eng.TrainEngine.create(
        policy, backend="deepspeed" if cfg.train.deepspeed else "torch", lr=loop.learning_rate,
        weight_decay=loop.weight_decay, max_grad_norm=loop.max_grad_norm,
        gradient_accumulation_steps=math.ceil(rows_per_rank / micro), micro_batch_size=micro,
        deepspeed_config_path=cfg.train.deepspeed or "zero2",
    )
    stream = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed, style=cfg.data.prompt_style)
    start_step = 0
    if latest is not None:
        start_step, _, data_state = ckpt.load_checkpoint(run_dir, engine)
        stream.load_state(data_state)
    if resume and dist.is_main_process():
        rewind_run_files(run_dir, start_step)  # the steps after the checkpoint run again: log each step once
    dist.barrier()
    tracker = make_tracker(run_dir, cfg.tracking.wandb_project if cfg.tracking.wandb else None,
                           cfg.tracking.wandb_mode, to_dict(cfg), dist.is_main_process(), resume=resume)
    return Session(cfg, lm, engine, stream, tracker, run_dir, start_step, kind)
