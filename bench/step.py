"""One RL step on the tiny coder: the time split per phase, measured (not a test).

    .venv/bin/python bench/step.py [--threads 1] [overrides...]

Runs one warm-up step, then measures the next steps, and prints as its last line one JSON object with each
phase's share of the step time, the step time, and completion tokens per second of rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from rlwork.config import load_config  # noqa: E402
from rlwork.rl.trainer import setup, train_step  # noqa: E402

PHASES = ("rollout", "score", "advantages", "likelihoods", "update", "log")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on shared cores)")
    parser.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [
            f"output_dir={out}", "algo.preset=coupled_grpo", "train.prompts_per_step=4", "algo.num_generations=8",
            "sampler.max_new_tokens=64", "train.micro_batch_size=8", "tracking.wandb=false",
            "data.synthetic_train=64", "data.synthetic_heldout=16",
            "algo.dynamic_sampling=keep",  # a random model scores 0 everywhere: train every row to time the update
            *args.overrides,
        ])
        session = setup(cfg)
        try:
            train_step(session, 0)  # warm-up: kernels, sandbox pool, caches
            runs = [train_step(session, step) for step in range(1, 1 + args.steps)]
        finally:
            session.close()
    step_s = sum(r["perf/step_s"] for r in runs) / len(runs)
    result = {f"{p}_frac": round(sum(r[f"perf/{p}_s"] for r in runs) / len(runs) / step_s, 3) for p in PHASES}
    tokens_per_s = sum(r["perf/tokens_per_s"] for r in runs) / len(runs)
    result.update(step_s=round(step_s, 2), tokens_per_s=round(tokens_per_s, 1),
                  rows=cfg.train.prompts_per_step * cfg.algo.num_generations,
                  max_new_tokens=cfg.sampler.max_new_tokens, preset=cfg.algo.preset, threads=args.threads,
                  measured_steps=len(runs))
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
