"""The embedded demo: tiny coder -> diffusion SFT warm start (cached) -> RL on LoRA -> pass@k before/after.

Everything runs on CPU with no downloads. The warm start is cached under `$RLWORK_CACHE/sft/<key>`, keyed by
everything that determines it, so later runs go straight to RL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rlwork.config import RunConfig, to_dict
from rlwork.tiny import BUILD_VERSION, TINY_VARIANTS, cache_root, ensure_tiny_coder


def base_folder(cfg: RunConfig) -> Path:
    return ensure_tiny_coder(cfg.model.path) if cfg.model.path in TINY_VARIANTS else Path(cfg.model.path)


def warm_start_key(cfg: RunConfig) -> str:
    data = to_dict(cfg.data)
    recipe = {"sft": to_dict(cfg.sft), "data": data, "model": str(base_folder(cfg)), "family": cfg.model.family,
              "seed": cfg.seed, "tiny_build": BUILD_VERSION, "chat": cfg.data.chat}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(cfg: RunConfig, progress: bool = True) -> Path:
    """Full-weight diffusion SFT of the base on the training split's reference solutions; cached, atomic."""
    from rlwork.models import load_diffusion_lm
    from rlwork.prompts import PromptStream, load_split
    from rlwork.sft import run_sft

    target = cache_root() / "sft" / warm_start_key(cfg)
    if (target / "config.json").is_file():
        return target
    base = base_folder(cfg)
    lm = load_diffusion_lm(str(base), cfg.model.family, trust_remote_code=True, dtype=cfg.model.dtype,
                           device=cfg.model.device)
    problems = load_split(cfg.data, "train", cfg.seed)
    stream = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed, style=cfg.data.prompt_style)
    s = cfg.sft
    losses = run_sft(lm, problems, stream.text, steps=s.steps, batch_size=s.batch_size, lr=s.learning_rate,
                     seed=cfg.seed, max_eos=s.max_eos, samples=s.samples, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sft-", dir=target.parent))
    try:
        lm.model.save_pretrained(staging)
        lm.tokenizer.save_pretrained(staging)
        for code in base.glob("*.py"):  # remote modelling code travels with the checkpoint
            shutil.copy(code, staging / code.name)
        (staging / "sft_losses.json").write_text(json.dumps(losses))
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def plot_curves(run_dir: Path, before: float, after: float) -> Path:
    """PNG of the training reward and training pass rate per step, with held-out pass@1 before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r.get("reward/mean") for r in rows], label="train reward (mean)")
    ax.plot(steps, [r.get("sandbox/passed_frac") for r in rows], label="train pass rate (all tests)")
    ax.scatter([steps[0], steps[-1]], [before, after], color="black", zorder=3, label="held-out pass@1")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("rlwork demo: tiny block-diffusion coder")
    path = run_dir / "curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_demo(cfg: RunConfig) -> dict[str, Any]:
    """Warm start, evaluate, train, evaluate; returns the summary printed as the demo's last line."""
    from rlwork.eval import run_eval
    from rlwork.trainer import train

    start = time.time()
    run_dir = Path(cfg.output_dir)
    print(f"[1/4] diffusion SFT warm start (cached under {cache_root() / 'sft'})", flush=True)
    sft = warm_start(cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(sft), trust_remote_code=True))
    print("[2/4] held-out pass@k of the warm start", flush=True)
    before = run_eval(cfg, [None], ["warm start"], out_path=run_dir / "eval_before.json")
    print(f"[3/4] RL: {cfg.train.steps} steps of '{cfg.algo.preset or 'custom'}' on LoRA", flush=True)
    train(cfg)
    print("[4/4] held-out pass@k after RL", flush=True)
    after = run_eval(cfg, [str(run_dir)], ["after RL"], out_path=run_dir / "eval_after.json")
    pass1_before = before["policies"]["warm start"]["pass_at_k"]["pass@1"]
    pass1_after = after["policies"]["after RL"]["pass_at_k"]["pass@1"]
    plot = plot_curves(run_dir, pass1_before, pass1_after)
    print(f"curves: {plot}; metrics: {run_dir / 'metrics.jsonl'}; W&B offline run under {run_dir / 'wandb'}")
    return {"heldout_pass@1_before": round(pass1_before, 4), "heldout_pass@1_after": round(pass1_after, 4),
            "seed": cfg.seed, "rl_steps": cfg.train.steps, "minutes": round((time.time() - start) / 60, 2)}
