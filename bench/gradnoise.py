"""How noisy is an RL step's gradient, and how much of the noise is the ELBO's masks? Side by side: independent
and group-shared mask draws (`algo.group_masks`).

    python bench/gradnoise.py [--draws K] [config overrides...]     (configs/tiny.yaml plus the overrides)

Two training steps' rollouts of the recipe's policy (its warm start with `model.warm_start: true`), scored and
turned into advantages as training does. For each way of drawing masks and each batch, K mask draws, and for each
draw the adapter's gradient of the on-policy surrogate sum_i A_i ELBO_i / N over the rows with signal (the policy
gradient at ratio 1, without the KL term). Between the K gradients of one batch only the masks change: their spread
is the estimator's share of the noise. Between the two batches' mean gradients the prompts and completions change:
that is the noise only more rows per step reduce. One JSON line per way and batch, and per way across batches:

- `snr`: |mean|^2 / mean |gradient - mean|^2 over the K draws (higher: the draws agree);
- `cosine`: the mean cosine between two draws' gradients of one batch (1: the masks do not matter);
- `cosine_across_batches`: the cosine between the two batches' mean gradients; for two equally noisy estimates of
  one direction it estimates |g|^2 / (|g|^2 + noise), so `batch_snr` = cosine / (1 - cosine) is the signal-to-noise
  ratio of one step's gradient, which grows about linearly with the rows per step.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch

from rlwork.config import load_config
from rlwork.demo import with_warm_start
from rlwork.rl import rollout as phase1
from rlwork.rl.advantages import compute_advantages, rows_with_signal
from rlwork.rl.likelihoods import draw_step_masks, elbo_of_rows, row_chunks
from rlwork.rl.scoring import completion_token_ids
from rlwork.rl.trainer import setup


def gradients(session, rollout, advantages, rows, draws_of):
    """[K, D] adapter gradients of the surrogate, and the [K] surrogate values, one per mask draw."""
    lm, model, mb = session.lm, session.engine.module, session.cfg.train.micro_batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    grads, values = [], []
    for draws in draws_of:
        model.zero_grad(set_to_none=True)
        total = 0.0
        for chunk, draw in zip(row_chunks(rollout.prompt_ids.shape[0], mb), draws, strict=True):
            mine = rows[(rows >= chunk.start) & (rows < chunk.stop)]
            if not len(mine):
                continue
            seq = elbo_of_rows(lm, rollout, mine, draw, chunk.start, model).sequence
            loss = (advantages[mine] * seq).sum() / len(rows)
            loss.backward()
            total += float(loss)
        grads.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone())
        values.append(total)
    return torch.stack(grads), torch.tensor(values)


def batch(session, step: int):
    """Step `step`'s rollout (its prompts as training would draw them), advantages and rows with signal."""
    cfg = session.cfg
    rollout = phase1.sample(session, step, "sample")
    tokens = completion_token_ids(rollout)
    scores = session.scorer.score(rollout.prompts, rollout.completions, rollout.problems, tokens)
    G = cfg.algo.num_generations
    advantages = compute_advantages(scores.total, G, cfg.algo.advantage, cfg.algo.scale_rewards)
    rows = rows_with_signal(scores.total, G)
    if not len(rows):
        raise SystemExit(f"no group of step {step} has mixed rewards: raise train.prompts_per_step")
    return rollout, advantages, rows


def summary(grads: torch.Tensor, values: torch.Tensor) -> dict[str, float]:
    mean = grads.mean(0)
    noise = (grads - mean).pow(2).sum(1).mean()
    unit = torch.nn.functional.normalize(grads, dim=1)
    cos = unit @ unit.T
    k = len(grads)
    return {"snr": float(mean.pow(2).sum() / noise), "cosine": float((cos.sum() - k) / (k * (k - 1))),
            "surrogate_std": float(values.std()), "grad_norm": float(grads.norm(dim=1).mean())}


def main(args: list[str]) -> None:
    draws = 6
    if args[:1] == ["--draws"]:
        draws, args = int(args[1]), args[2:]
    cfg = with_warm_start(load_config("configs/tiny.yaml", ["tracking.wandb=false", "output_dir=/tmp/rlwork-gradnoise",
                                                            "eval.every_steps=0", *args]))
    session = setup(cfg, overwrite=True)
    try:
        batches = [batch(session, step) for step in range(2)]
        means = {}
        for way in ("independent", "shared"):
            algo = dataclasses.replace(cfg.algo, group_masks=way)
            for b, (rollout, advantages, rows) in enumerate(batches):
                mb = cfg.train.micro_batch_size
                draws_of = [draw_step_masks(algo, session.lm, rollout, mb, cfg.seed, 1000 + d, 0)[0]
                            for d in range(draws)]
                grads, values = gradients(session, rollout, advantages, rows, draws_of)
                means[way, b] = grads.mean(0)
                print(json.dumps({"group_masks": way, "batch": b, "rows": rollout.prompt_ids.shape[0],
                                  "rows_with_signal": len(rows), "draws": draws,
                                  **{k: round(v, 4) for k, v in summary(grads, values).items()}}))
            across = float(torch.nn.functional.cosine_similarity(means[way, 0], means[way, 1], dim=0))
            print(json.dumps({"group_masks": way, "cosine_across_batches": round(across, 4),
                              "batch_snr": round(across / (1 - across), 4)}))
    finally:
        session.close()


if __name__ == "__main__":
    main(sys.argv[1:])
