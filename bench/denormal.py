"""SFT steps of a trained coder with subnormal floats flushed to zero vs kept (`model.flush_denormal`), side by side.

    .venv/bin/python bench/denormal.py [--model WARM_START] [--steps 40] [--rounds 2] [--threads 2]

A model in training grows subnormal activations and gradients, and CPU arithmetic on them is slow, so the bench
needs trained weights: by default the demo's cached warm start for `configs/tiny.yaml` (run `make demo` once).
The flag is per thread and worker threads copy it when torch starts them, so each measurement is its own process
(flush on / off, alternating for `--rounds`). Prints as its last line one JSON object: steps per second of each
mode (the median of the rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def measure(model: str, flush: bool, steps: int, threads: int) -> float:
    """SFT steps per second from `model` in this process (the flag set before torch does any work)."""
    import torch

    from rlwork.models.lm import set_flush_denormal

    set_flush_denormal(flush)
    torch.set_num_threads(threads)
    from rlwork.config import load_config
    from rlwork.sft.trainer import setup_sft, sft_step

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(CONFIG, [f"output_dir={out}", f"model.path={model}", "model.trust_remote_code=true",
                                   f"model.flush_denormal={str(flush).lower()}", "tracking.wandb=false",
                                   f"sft.log_every={10**9}"])
        session = setup_sft(cfg, progress=False)
        try:
            for step in range(3):  # warm-up: kernels, allocator
                sft_step(session, step)
            start = time.perf_counter()
            for step in range(3, 3 + steps):
                sft_step(session, step)
            return steps / (time.perf_counter() - start)
        finally:
            session.close()


def cached_warm_start() -> Path:
    from rlwork.config import load_config
    from rlwork.demo import warm_start_key
    from rlwork.models.tiny import cache_root

    path = cache_root() / "sft" / warm_start_key(load_config(CONFIG))
    if not (path / "config.json").is_file():
        sys.exit(f"no cached warm start at {path}: run `make demo` once, or pass --model WARM_START_FOLDER")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="trained model folder (default: the demo's cached warm start)")
    parser.add_argument("--steps", type=int, default=40, help="measured SFT steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per mode, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--child", choices=("flush", "ieee"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps({"steps_per_s": measure(args.model, args.child == "flush", args.steps, args.threads)}))
        return
    model = str(Path(args.model).resolve() if args.model else cached_warm_start())
    rates: dict[str, list[float]] = {"flush": [], "ieee": []}
    for _ in range(args.rounds):
        for mode in rates:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--model", model, "--steps",
                                  str(args.steps), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            rates[mode].append(json.loads(out.strip().splitlines()[-1])["steps_per_s"])
    flush, ieee = statistics.median(rates["flush"]), statistics.median(rates["ieee"])
    print(json.dumps({"flush_steps_per_s": round(flush, 3), "ieee_steps_per_s": round(ieee, 3),
                      "speedup": round(flush / ieee, 3), "rounds": args.rounds, "steps": args.steps,
                      "threads": args.threads, "model": model}))


if __name__ == "__main__":
    main()
