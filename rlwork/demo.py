"""The embedded demo: tiny coder -> diffusion SFT warm start (cached) -> RL on LoRA -> pass@k before/after.

Everything runs on CPU with no downloads. The warm start is cached under `$RLWORK_CACHE/sft/<key>`, keyed by
everything that determines it, so later runs go straight to RL.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rlwork.config import DataConfig, RunConfig
from rlwork.config.typed import to_dict
from rlwork.models.tiny import BUILD_VERSION, TINY_VARIANTS, cache_root, ensure_tiny_coder


def base_folder(cfg: RunConfig) -> Path:
    return ensure_tiny_coder(cfg.model.path) if cfg.model.path in TINY_VARIANTS else Path(cfg.model.path)


def base_identity(cfg: RunConfig) -> str:
    """What names the base in the cache key. An embedded tiny coder is its variant name (with BUILD_VERSION in the
    key): the build is deterministic, so clones at different paths share a warm start. Any other model is its
    resolved path when it is a local folder, else its (hub) name."""
    path = cfg.model.path
    return str(Path(path).resolve()) if path not in TINY_VARIANTS and Path(path).exists() else path


def warm_start_key(cfg: RunConfig) -> str:
    data = to_dict(cfg.data)
    del data["rl_split"]  # what RL draws; not the warm start's data
    for key in ("language", "edit_instruction"):  # stdio and editing tasks' options: at their defaults, earlier
        if data[key] == getattr(DataConfig, key):  # warm starts (made before they existed) keep their keys
            del data[key]
    if cfg.data.synthetic_examples:
        del data["synthetic_examples"]  # the default prompts: keys of earlier warm starts stay valid
    if cfg.data.synthetic_names == "steps":
        del data["synthetic_names"]
    if not cfg.data.synthetic_fresh:  # the distinct train split is drawn first, whatever is reserved after it
        del data["synthetic_fresh"], data["synthetic_rl"], data["synthetic_train_mix"]  # so warm starts made
        # before these options existed keep their keys
        if cfg.data.dataset == "synthetic" and cfg.data.split == "train":
            del data["synthetic_heldout"]  # the train split is drawn first and does not depend on the held-out size
    bookkeeping = ("save_every", "keep_checkpoints", "log_every")  # they do not change the weights
    sft = {k: v for k, v in to_dict(cfg.sft).items() if k not in bookkeeping}
    if cfg.sft.continue_file == 0:
        del sft["continue_file"], sft["continue_window"]  # warm starts made before these existed keep their keys
    if cfg.sft.print_file == 0:
        del sft["print_file"]
    numerics = {k: getattr(cfg.model, k) for k in ("dtype", "attn_implementation", "block_size", "flush_denormal")}
    recipe = {"sft": sft, "lora": to_dict(cfg.lora) if cfg.sft.lora else None, "data": data,
              "model": base_identity(cfg), "family": cfg.model.family, "numerics": numerics, "seed": cfg.seed,
              "tiny_build": BUILD_VERSION, "chat": cfg.data.chat}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(cfg: RunConfig, progress: bool = True) -> Path:
    """Diffusion SFT of the base on the training split's reference solutions (`rlwork.sft.trainer`, `cfg.sft`:
    full weights unless sft.lora); cached by `warm_start_key`, published by one atomic rename.

    The result is a plain HF model folder (the base's modelling *.py next to the weights and tokenizer) to load as
    `model.path`. The run itself lives in `.run-<key>` beside it until it is published, so a killed warm start
    continues from its last checkpoint; a lock file keeps two demos from training the same key at once.
    """
    from rlwork.runtime.checkpoint import export_merged
    from rlwork.sft.trainer import train_sft

    root = cache_root() / "sft"
    key = warm_start_key(cfg)
    target = root / key
    if (target / "config.json").is_file():
        return target
    base = base_folder(cfg)
    if base.is_dir() and not (base / "config.json").is_file():  # checked before the SFT, not after it
        raise ValueError(
            f"model.path={cfg.model.path}: the warm start is exported as this base plus the SFT weights, so the base "
            "must be an HF model folder (with config.json), and this one has none (an rlwork run folder?). Export it "
            "first, `rlwork export RUN --out DIR`, and pass model.path=DIR")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if (target / "config.json").is_file():  # another process published it while we waited
            return target
        run_dir = root / f".run-{key}"
        run_cfg = dataclasses.replace(
            cfg, output_dir=str(run_dir),
            model=dataclasses.replace(cfg.model, path=str(base), trust_remote_code=True),
            train=dataclasses.replace(cfg.train, deepspeed=None),
            tracking=dataclasses.replace(cfg.tracking, wandb=False),  # the demo's W&B run is the RL run
            sft=dataclasses.replace(cfg.sft, log_every=max(cfg.sft.log_every, cfg.sft.steps // 10)),  # ~10 lines
        )
        train_sft(run_cfg, resume=True, progress=progress)
        staging = root / f".export-{key}"
        export_merged(run_dir, base, staging, trust_remote_code=True)  # merges a LoRA adapter; copies the *.py
        metrics = (run_dir / "metrics.jsonl").read_text()
        (staging / "sft_metrics.jsonl").write_text(metrics)
        per_step = {row["step"]: row["sft/loss"] for row in map(json.loads, metrics.splitlines())}  # last wins
        (staging / "sft_losses.json").write_text(json.dumps([per_step[k] for k in sorted(per_step)]))
        staging.rename(target)
        shutil.rmtree(run_dir, ignore_errors=True)
    return target


def with_warm_start(cfg: RunConfig, progress: bool = True) -> RunConfig:
    """`cfg` unchanged, or with `model.warm_start` resolved: model.path the cached warm start (`warm_start`, built
    first when absent, which takes a while: its progress bar shows how long). The `rlwork` commands call this."""
    if not cfg.model.warm_start:
        return cfg
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, warm_start=False))
    cached = cache_root() / "sft" / warm_start_key(cfg)
    if not (cached / "config.json").is_file():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            raise ValueError(f"model.warm_start=true: the warm start is not built yet ({cached}) and this is one of "
                             f"{world} processes: build it once in a single process (`rlwork eval` with this config "
                             "does), or set model.path")
        print(f"model.warm_start=true: training this recipe's diffusion SFT warm start ({cfg.sft.steps} steps of "
              f"sft:, once; cached in {cached})", flush=True)
    folder = warm_start(cfg, progress=progress)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(folder), trust_remote_code=True))


def plot_curves(run_dir: Path, before: float, after: float, subset_before: float | None = None) -> Path:
    """PNG of the training reward and pass rate per step, held-out pass@1 before/after RL (the whole split), and the
    in-training held-out pass@1 (`eval/pass@1`, a subset of the split) where the run logged it.

    The x axis counts RL updates: step i's rollouts (reward, pass rate) come from the policy after i updates, and
    the evaluation logged with step i from the policy after i + 1. `subset_before` (the warm start's pass@1 on the
    same subset, from the before-evaluation) starts the in-training curve at 0 updates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r.get("sandbox/passed_frac") for r in rows], label="train pass rate (all tests)")
    ax.plot(steps, [r.get("reward/mean") for r in rows], linestyle="--",  # on top: equal to the pass rate when
            label="train reward (mean)")                                   # the reward is all-tests-pass
    during = [(r["step"] + 1, r["eval/pass@1"]) for r in rows if r.get("eval/pass@1") is not None]
    if during:
        if subset_before is not None:
            during.insert(0, (0, subset_before))
        ax.plot(*zip(*during, strict=True), marker="o", label="held-out pass@1 during RL (subset)")
    ax.scatter([0, steps[-1] + 1], [before, after], color="black", zorder=3, label="held-out pass@1 (all)")
    ax.set_xlabel("RL updates")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("rlwork demo: tiny block-diffusion coder")
    path = run_dir / "curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def subset_pass_at_1(report: dict[str, Any], policy: str, num_problems: int | None) -> float | None:
    """Mean pass@1 of `policy` over the first `num_problems` problems of an eval report (None: all)."""
    values = list(report["policies"][policy]["per_problem"].values())[:num_problems]
    scored = [v["pass@1"] for v in values if v["pass@1"] is not None]
    return sum(scored) / len(scored) if scored else None


def run_demo(cfg: RunConfig, overwrite: bool = False) -> dict[str, Any]:
    """Warm start, evaluate, train, evaluate; returns the summary printed as the demo's last line. A used
    output_dir is refused unless `overwrite` (`runtime.session.claim_run_dir`)."""
    from rlwork.data.prompts import load_split
    from rlwork.evaluation.eval import run_eval
    from rlwork.rl.trainer import train
    from rlwork.runtime.session import RunDirError, claim_run_dir, used_by_a_run
    from rlwork.sft.objective import continues_prompts

    start = time.time()
    run_dir = Path(cfg.output_dir)
    splits = list(dict.fromkeys(cfg.eval.report_splits))
    planted = cfg.model.warm_start and continues_prompts(cfg.data)  # the warm start was trained with sft.*_file
    seed_runs = sorted(p.name for p in run_dir.glob("seed*") if p.is_dir() and used_by_a_run(p))
    if seed_runs:  # checked with --overwrite too: that deletes this folder's run files, not the seeds' folders
        raise RunDirError(f"output_dir={run_dir} holds the runs of a --seeds demo ({', '.join(seed_runs)}), and a "
                          "one-seed demo there would sit beside them: set output_dir to a new folder, or run "
                          "--seeds again (with --overwrite to start those over)")
    claim_run_dir(run_dir, resume=False, overwrite=overwrite)
    print(f"[1/4] diffusion SFT warm start (cached under {cache_root() / 'sft'})", flush=True)
    sft = warm_start(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, warm_start=False)))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(sft), trust_remote_code=True,
                                                             warm_start=False))
    print(f"[2/4] pass@k of the warm start on {', '.join(splits)}", flush=True)
    before = {s: run_eval(_on(cfg, s), [None], ["warm start"], out_path=run_dir / _report_file("before", s, splits))
              for s in splits}
    print(f"[3/4] RL: {cfg.train.steps} steps of '{cfg.algo.preset or 'custom'}' on LoRA", flush=True)
    train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split=cfg.data.rl_split or cfg.data.split)))
    print(f"[4/4] pass@k after RL on {', '.join(splits)}", flush=True)
    after = {s: run_eval(_on(cfg, s), [str(run_dir)], ["after RL"],
                         out_path=run_dir / _report_file("after", s, splits)) for s in splits}
    summary: dict[str, Any] = {}
    trained = training_programs(cfg)
    for s in splits:
        scores_before = before[s]["policies"]["warm start"]["pass_at_k"]
        scores_after = after[s]["policies"]["after RL"]["pass_at_k"]
        name = summary_name(s, splits)
        for k in ["pass@1", *sorted(set(scores_before) - {"pass@1"})]:
            summary[f"{name}_{k}_before"] = round(scores_before[k], 4)
            summary[f"{name}_{k}_after"] = round(scores_after[k], 4)
        if trained is not None:  # memorising: a held-out sample that is a program SFT trained on
            stubs = {row["task_id"]: row["prompt"] for row in load_split(cfg.data, s, cfg.seed)}
            for when, report, policy in (("before", before[s], "warm start"), ("after", after[s], "after RL")):
                samples = report["policies"][policy]["samples"]
                copies = sum(program_key(stubs[x["task_id"]], x["completion"]) in trained for x in samples)
                summary[f"{name}_copied_training_{when}"] = round(copies / max(len(samples), 1), 4)
        for habit, shows in HABITS.items():  # what RL is to teach away, where the warm start was given the habit
            if planted and getattr(cfg.sft, habit) > 0:
                for when, report, policy in (("before", before[s], "warm start"), ("after", after[s], "after RL")):
                    samples = report["policies"][policy]["samples"]
                    share = sum(shows(x["completion"]) for x in samples) / max(len(samples), 1)
                    summary[f"{name}_{shows.__name__}_{when}"] = round(share, 4)
    first = splits[0]
    plot = plot_curves(run_dir, before[first]["policies"]["warm start"]["pass_at_k"]["pass@1"],
                       after[first]["policies"]["after RL"]["pass_at_k"]["pass@1"],
                       subset_pass_at_1(before[first], "warm start", cfg.eval.training_problems)
                       if cfg.eval.split == first else None)
    print(f"curves: {plot}; metrics: {run_dir / 'metrics.jsonl'}; W&B offline run under {run_dir / 'wandb'}")
    return {**summary, "seed": cfg.seed, "preset": cfg.algo.preset, "rl_steps": cfg.train.steps,
            "minutes": round((time.time() - start) / 60, 2)}


def wrote_past_function(completion: str) -> bool:
    """Whether a continuation completion (the body that follows a code stub) goes on at column 0 after the body: the
    next function or statement of a file, a base model's habit (`sft.continue_file`), usually cut at the canvas's end.

    Example:
        >>> wrote_past_function("    return -x\\n\\n\\ndef double(x):\\n    ret")
        True
        >>> wrote_past_function("    return -x\\n")
        False
    """
    return any(line.strip() and not line[0].isspace() for line in completion.splitlines())


def printed_result(completion: str) -> bool:
    """Whether a continuation completion ends, script-style, by printing its result instead of returning it (its
    last non-blank line is an indented `print(...)`): a base model's habit (`sft.print_file`); such a function
    returns None.

    Example:
        >>> printed_result("    x = x + 1\\n    print(x)\\n"), printed_result("    return x\\n")
        (True, False)
    """
    lines = [line for line in completion.splitlines() if line.strip()]
    return bool(lines) and lines[-1][:1].isspace() and lines[-1].lstrip().startswith("print(")


def program_key(stub: str, body: str) -> tuple[str, ...]:
    """A program as `training_programs` compares it: the stub's signature without the function's name, then the body's
    lines, stripped, blank lines dropped, up to the first `return` line (what follows it never runs). Two tasks
    with one body text and different types (`return x[:3]` on a str and on a list) are different programs.

    Example:
        >>> program_key("def head(x: str) -> str:\\n", "    x = x + 1\\n\\n    return x  \\n    print(x)\\n")
        ('(x: str) -> str:', 'x = x + 1', 'return x')
    """
    signature = next((line.strip() for line in stub.splitlines() if line.lstrip().startswith("def ")), "")
    lines = [signature[signature.find("("):]]
    for line in body.splitlines():
        if line.strip():
            lines.append(line.strip())
            if line.strip().startswith("return"):
                break
    return tuple(lines)


def training_programs(cfg: RunConfig) -> set[tuple[str, ...]] | None:
    """The programs the run trained on, the SFT's tasks and the RL prompts (`program_key` of each one's reference),
    for the demo's share of held-out samples that reproduce one (`<split>_copied_training_*`, one set before and
    after RL): such a sample is a memorised training program, since no held-out program is a training one. None
    (not counted) unless the completions are bodies that follow a code stub: the synthetic family, base-model
    prompts."""
    data = cfg.data
    evaluated = cfg.eval.dataset in (None, data.dataset) and cfg.eval.path is None  # the same generator's splits
    if data.dataset != "synthetic" or not evaluated or data.chat or data.prompt_style != "bare":
        return None
    from rlwork.data.prompts import load_split

    splits = dict.fromkeys([data.split, data.rl_split or data.split])
    return {program_key(*row["reference"].split("\n", 1)) for split in splits
            for row in load_split(data, split, cfg.seed)}


HABITS = {"print_file": printed_result, "continue_file": wrote_past_function}
"""The base-model habits `sft.print_file`/`sft.continue_file` plant, each with the test of a completion that shows it;
the demo's summary reports each planted habit's share of held-out samples before and after RL (`<split>_<test>_before`
/ `_after`)."""


def summary_name(split: str, splits: list[str]) -> str:
    """How the demo's summary names a split: iid is the held-out split, heldout then the compositional one."""
    if split == "iid":
        return "heldout"
    return "compositional" if split == "heldout" and "iid" in splits else split


def _on(cfg: RunConfig, split: str) -> RunConfig:
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, split=split))


def _report_file(when: str, split: str, splits: list[str]) -> str:
    """eval_before.json / eval_after.json for the first split (as before), eval_<when>_<split>.json for others."""
    return f"eval_{when}.json" if split == splits[0] else f"eval_{when}_{split}.json"


def run_demo_seeds(cfg: RunConfig, seeds: list[int], overwrite: bool = False) -> dict[str, Any]:
    """The demo once per seed (own warm start, split draw, RL and eval), each in `output_dir/seed<N>`; prints each
    seed's summary and returns the means and the rise of held-out pass@1 in points."""
    from rlwork.runtime.session import RunDirError, claim_run_dir, used_by_a_run

    start = time.time()
    folders = [Path(cfg.output_dir)] + [Path(cfg.output_dir) / f"seed{seed}" for seed in seeds]
    used = [f"{folder} ({', '.join(found)})" for folder in folders if (found := used_by_a_run(folder))]
    if used and not overwrite:  # refuse now, not after the earlier seeds' runs: a late refusal loses no work but hours
        raise RunDirError(f"--seeds writes OUTPUT_DIR/seed<N>, and a run already trained in {'; '.join(used)}: "
                          "set output_dir to a new folder, or start over with --overwrite (deletes those run files)")
    claim_run_dir(folders[0], resume=False, overwrite=overwrite)  # a one-seed run there would sit beside the seeds'
    runs = []
    for seed in seeds:
        summary = run_demo(dataclasses.replace(cfg, seed=seed, output_dir=str(Path(cfg.output_dir) / f"seed{seed}")),
                           overwrite=overwrite)
        print(json.dumps(summary), flush=True)
        runs.append(summary)
    keys = [k for k in runs[0] if k.endswith(("_before", "_after"))]
    means = {f"{k}_mean": round(sum(r[k] for r in runs) / len(runs), 4) for k in keys}
    first = summary_name(cfg.eval.report_splits[0], list(cfg.eval.report_splits))
    rises = [100 * (r[f"{first}_pass@1_after"] - r[f"{first}_pass@1_before"]) for r in runs]
    mean = sum(rises) / len(rises)
    stderr = (sum((x - mean) ** 2 for x in rises) / (len(rises) - 1) / len(rises)) ** 0.5 if len(rises) > 1 else None
    return {**means, "rise_points_mean": round(mean, 2), "rise_points_stderr": stderr and round(stderr, 2),
            "rise_points": [round(x, 2) for x in rises], "rise_split": cfg.eval.report_splits[0], "seeds": list(seeds),
            "preset": cfg.algo.preset, "rl_steps": cfg.train.steps, "minutes": round((time.time() - start) / 60, 2)}
