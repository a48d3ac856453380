"""Phase 5 on two ranks with unequal signal vs one process on the union batch; run by tests/rl/test_update.py.

usage: torchrun --nproc_per_node 2 tests/scripts/unequal_signal.py STAGE OUT_JSON

For each aggregation mode (algo.loss_type grpo, dr_grpo, dapo) and two signal patterns (rank 1 without any signal;
rank 0 with fewer signal rows and tokens than rank 1), `policy_updates` runs once on a DeepSpeed engine with each
rank holding 4 of the 8 rows, and once on the torch engine in one process holding all 8. The gradient each
produces at its optimizer step is recorded (`deepspeed.utils.safe_get_full_grad` / `param.grad`) before the step.
Rank 0 writes the largest differences and gradient norms to OUT_JSON.
"""

import copy
import json
import os
import sys
from pathlib import Path
from unittest import mock

import torch

from rlwork.config import AlgoConfig, SamplerConfig
from rlwork.diffusion.rollout import Rollout
from rlwork.models.lm import load_diffusion_lm
from rlwork.rl.likelihoods import draw_step_masks, old_and_ref_logps
from rlwork.rl.update import policy_updates
from rlwork.runtime import dist
from rlwork.runtime import engine as eng

ROWS, PER_RANK, MICRO, P, L = 8, 4, 2, 6, 8
PATTERNS = {  # signal rows of the union batch: rows 0-3 are rank 0's, rows 4-7 rank 1's
    "rank1_without_signal": [0, 1, 2, 3],
    "unequal": [2, 4, 5, 6, 7],
}


def union_rollout(lm, gen: torch.Generator) -> Rollout:
    """8 rows with ragged prompts and completions (the same on every rank)."""
    prompt_len = torch.tensor([6, 4, 5, 6, 3, 6, 2, 5])
    completion_len = torch.tensor([8, 3, 6, 1, 7, 5, 8, 2])
    prompt_mask = torch.arange(P)[None] >= (P - prompt_len)[:, None]  # left-padded
    completion_mask = torch.arange(L)[None] < completion_len[:, None]
    prompt_ids = torch.randint(8, 1000, (ROWS, P), generator=gen).masked_fill(~prompt_mask, lm.pad_id)
    completion_ids = torch.randint(8, 1000, (ROWS, L), generator=gen).masked_fill(~completion_mask, lm.pad_id)
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                   completion_mask=completion_mask, group_ids=torch.arange(ROWS) // 2,
                   decode_step=torch.zeros(ROWS, L, dtype=torch.long), sampling_per_token_logps=torch.zeros(ROWS, L),
                   trace_ids=completion_ids, trace_step=torch.zeros(ROWS, L, dtype=torch.long), prompts=[""] * ROWS,
                   completions=[""] * ROWS, problems=[{}] * ROWS, num_forwards=0)


def recorded_gradient(engine) -> dict:
    """Wrap the engine's optimizer step so that it records the full gradient of every trainable parameter first."""
    box = {}
    if engine.backend == "deepspeed":
        from deepspeed.utils import safe_get_full_grad

        real = engine.module.step

        def step(*args, **kwargs):
            if engine.module.is_gradient_accumulation_boundary():
                box.update({n: safe_get_full_grad(p).detach().clone() for n, p in engine.named_trainable_parameters()})
            return real(*args, **kwargs)

        engine.module.step = step
    else:
        real = engine.optimizer.step

        def step(*args, **kwargs):
            box.update({n: p.grad.detach().clone() for n, p in engine.named_trainable_parameters()})
            return real(*args, **kwargs)

        engine.optimizer.step = step
    return box


def run(lm, model, engine, algo, rollout, signal, first_row) -> dict:
    grads = recorded_gradient(engine)
    draws = draw_step_masks(algo, lm, rollout, MICRO, seed=3, step=0, first_row=first_row)
    ref_policy = eng.RefPolicy.build(model, algo.beta)
    with eng.gathered_parameters(engine):  # as the trainer's phase 4: ranks run different numbers of forwards
        _, ref = old_and_ref_logps(algo, SamplerConfig(), lm, engine, ref_policy, rollout, draws, MICRO, needed=signal)
    advantages = torch.linspace(-1.0, 1.2, ROWS)[first_row:first_row + rollout.prompt_ids.shape[0]]
    metrics = policy_updates(algo, SamplerConfig(), lm, engine, rollout, advantages, signal, draws, None, ref, MICRO,
                             1e-3)
    return grads, metrics


def main(stage: int, out: Path) -> None:
    dist.init_distributed()
    rank = dist.rank()
    lm = load_diffusion_lm("tiny", "stable-diffcoder")
    torch.manual_seed(0)
    base = eng.apply_lora(lm.model, r=4, alpha=8)
    with torch.no_grad():  # non-zero B matrices, so that the A matrices get gradients too
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    rollout = union_rollout(lm, torch.Generator().manual_seed(11))
    mine = torch.arange(rank * PER_RANK, (rank + 1) * PER_RANK)
    report = {}
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        algo = AlgoConfig(loss_type=loss_type, beta=0.04, elbo_estimator="coupled", advantage="rloo")
        for pattern, rows in PATTERNS.items():
            signal = torch.zeros(ROWS, dtype=torch.bool)
            signal[rows] = True
            kwargs = dict(lr=1e-3, max_grad_norm=1e9)
            # the one-process reference, computed on every rank: the torch engine; rank helpers that see one process
            one_process = mock.patch.object(dist, "_dist_ready", lambda: False)
            with mock.patch.dict(os.environ, {"WORLD_SIZE": "1"}), one_process:
                single_model = copy.deepcopy(base)
                single = eng.TrainEngine.create(single_model, gradient_accumulation_steps=ROWS // MICRO, **kwargs)
                ref_grads, ref_metrics = run(lm, single_model, single, algo, rollout, signal, 0)
            model = copy.deepcopy(base)
            ds = eng.TrainEngine.create(model, backend="deepspeed", micro_batch_size=MICRO,
                                        gradient_accumulation_steps=PER_RANK // MICRO,
                                        deepspeed_config_path=f"zero{stage}", **kwargs)
            grads, metrics = run(lm, model, ds, algo, rollout.select(mine), signal[mine], rank * PER_RANK)
            diff = max(float((grads[n] - ref_grads[n]).abs().max()) for n in ref_grads)
            scale = max(float(g.abs().max()) for g in ref_grads.values())
            report[f"{loss_type}/{pattern}"] = {
                "max_abs_diff": diff, "max_abs_grad": scale,
                "loss": metrics["policy/loss"], "single_loss": ref_metrics["policy/loss"],
                "kl": metrics["policy/kl"], "single_kl": ref_metrics["policy/kl"],
                "ratio_max": metrics["policy/ratio_max"], "single_ratio_max": ref_metrics["policy/ratio_max"],
            }
    if rank == 0:
        out.write_text(json.dumps(report, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
