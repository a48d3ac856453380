"""`rlwork` command line: thin — parse, build the config, call.

Each command's last stdout line is one JSON object (strict JSON: NaN is written as null), printed by rank 0 only.
The current directory is on the import path (after installed packages), so `rewards.functions=[my_rewards:fn]`
finds `./my_rewards.py` as `python -m` would; PYTHONPATH works too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

# Nothing can reach model or dataset hubs from our machines; users with network can override these.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)
if not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
    os.environ["WANDB_MODE"] = "offline"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe from configs/ (defaults: the dataclasses in rlwork/config/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.beta=0.01 train.steps=5")


def _add_run_dir_args(p: argparse.ArgumentParser, resume: bool = True) -> None:
    group = p.add_mutually_exclusive_group()
    if resume:
        group.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="output_dir holds another run: delete its run files (metrics, rollouts, checkpoints, "
                            "W&B) and start over")


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed appears twice")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlwork", description=__doc__)
    # The DeepSpeed launcher runs `rlwork --local_rank=N <command> ...` (before the command); torchrun passes the
    # rank in LOCAL_RANK. The rank is read from the environment either way (rlwork.runtime.dist).
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="RL-train LoRA adapters on a base diffusion coder")
    _add_config_args(p_train)
    _add_run_dir_args(p_train)
    p_sft = sub.add_parser("sft", help="diffusion SFT (LoRA or full weights) into output_dir; prints its checkpoint")
    _add_config_args(p_sft)
    _add_run_dir_args(p_sft)
    p_cfg = sub.add_parser("config", help="print the resolved config as YAML")
    _add_config_args(p_cfg)
    p_export = sub.add_parser("export", help="merge a run's adapter into the base and write an HF checkpoint")
    p_export.add_argument("checkpoint", help="a run folder (its latest checkpoint) or one checkpoint folder")
    p_export.add_argument("--out", required=True, help="output folder for the merged Instruct checkpoint")
    p_eval = sub.add_parser("eval", help="pass@k of the base and/or trained checkpoints on the evaluation "
                                                "problems (eval.dataset, eval.path, eval.split)")
    _add_config_args(p_eval)
    p_eval.add_argument("--checkpoint", action="append", default=[],
                        help="a run or checkpoint folder; 'base' = the base model; give one or two (default: base)")
    p_eval.add_argument("--completions", action="append", default=[],
                        help="score these fixed completions (JSONL of {task_id, completion}) instead of sampling a "
                             "model, through the same scoring; repeatable, one report per file")
    p_eval.add_argument("--out", help="write the JSON report here too")
    p_rescore = sub.add_parser("rescore", help="re-score a run's saved rollouts with other rewards, no generation")
    p_rescore.add_argument("run_dir", help="the run folder whose rollouts/ to re-score")
    p_rescore.add_argument("--config", help="YAML recipe instead of the run's saved config (a run that saved no "
                                            "checkpoint has none)")
    p_rescore.add_argument("overrides", nargs="*",
                           help="dotted overrides of the run's config, e.g. rewards.timeout_s=10")
    p_rescore.add_argument("--rewards", required=True, help="comma-separated reward names or import paths")
    p_rescore.add_argument("--weights", help="comma-separated weights, one per reward (default 1 each)")
    p_rescore.add_argument("--out", help="write the JSON result here too")
    p_gen = sub.add_parser("generate", help="completions by a run, an exported Instruct folder or a model, streamed")
    p_gen.add_argument("model", help="an exported folder (rlwork export), a run or checkpoint folder, or a model")
    p_gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p_gen.add_argument("--max-new-tokens", type=int, help="completion tokens (default: the run's sampler setting)")
    p_gen.add_argument("--steps-per-block", type=int, help="denoising steps per block (default: the run's)")
    p_gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p_gen.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (temperature > 0)")
    p_gen.add_argument("--family", default="stable-diffcoder", help="model family of a plain model folder")
    p_gen.add_argument("--no-stream", action="store_true", help="print only the JSON line at the end")
    p_plot = sub.add_parser("plot", help="training curves of one or several runs side by side, as a PNG")
    p_plot.add_argument("runs", nargs="+", help="run folders (each with its metrics.jsonl)")
    p_plot.add_argument("--out", help="the PNG (default: RUN/curves.png for one run, ./curves.png for several)")
    p_demo = sub.add_parser("demo", help="the embedded tiny default, end to end on CPU")
    _add_config_args(p_demo)
    _add_run_dir_args(p_demo, resume=False)
    p_demo.add_argument("--seeds", type=_seed_list, metavar="0,1,2",
                        help="run the whole demo once per seed (in OUTPUT_DIR/seed<N>); the last line has the means")
    return parser


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, dotted overrides collected in `args.overrides`; exits 2 on a bad command line."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # dotted overrides may also follow options
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and not hasattr(args, "overrides"):
        parser.error(f"'{args.command}' takes no config overrides: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "completions", None) and args.checkpoint:
        parser.error("--completions scores given completions; it takes no --checkpoint")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)

    from rlwork.config import ConfigError, load_config

    _user_modules_on_path()
    if args.command == "export":
        return _export(args.checkpoint, args.out)
    if args.command == "plot":
        return _plot(args.runs, args.out)
    if args.command == "generate":
        return _generate(args)
    try:
        base = _saved_config(args.run_dir) if args.command == "rescore" and args.config is None else None
        cfg = load_config(args.config, args.overrides, base=base)
        if args.command in ("train", "sft", "eval", "demo"):
            check_inputs(cfg, args.command)
    except ConfigError as err:
        print(f"rlwork: config error: {err}", file=sys.stderr)
        return 2
    try:
        return _run(args, cfg)
    except ConfigError as err:  # raised once the command looks at its inputs (e.g. the evaluation source)
        print(f"rlwork: config error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, cfg) -> int:
    if args.command in ("train", "sft", "eval", "demo"):
        from rlwork.models.lm import set_flush_denormal

        set_flush_denormal(cfg.model.flush_denormal)  # before torch starts its worker threads: they copy the flag
        _say_cache()
    if args.command == "config":
        import yaml

        from rlwork.config.typed import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    if args.command == "train":
        from rlwork.data.schema import DataError
        from rlwork.rl.trainer import train
        from rlwork.runtime.session import RunDirError

        try:
            metrics = train(_warm_started(cfg), resume=args.resume, overwrite=args.overwrite)
        except (RunDirError, DataError) as err:
            print(f"rlwork: {err}", file=sys.stderr)
            return 2
        emit({k: metrics[k] for k in ("reward/mean", "policy/kl", "sandbox/passed_frac") if k in metrics})
        return 0
    if args.command == "eval" and args.completions:
        from rlwork.evaluation.eval import run_eval_completions

        report = run_eval_completions(cfg, args.completions, out_path=args.out)
        print(json.dumps({name: {"pass_at_k": p["pass_at_k"], "per_language": p["per_language"]}
                          for name, p in report["policies"].items()}))
        return 0
    if args.command == "eval":
        from rlwork.data.schema import DataError
        from rlwork.evaluation.eval import run_eval
        from rlwork.runtime.policies import CheckpointError, resolve_checkpoint

        checkpoints = [None if c == "base" else c for c in (args.checkpoint or ["base"])]
        names = ["base" if c is None else c for c in checkpoints]
        try:
            for checkpoint in filter(None, checkpoints):  # each one exists, before a warm start is built for them
                resolve_checkpoint(checkpoint)
            report = run_eval(_warm_started(cfg), checkpoints, names, out_path=args.out)
        except (DataError, CheckpointError) as err:
            print(f"rlwork: {err}", file=sys.stderr)
            return 2
        emit({name: p["pass_at_k"] for name, p in report["policies"].items()})
        return 0
    if args.command == "rescore":
        return _rescore(cfg, args)
    if args.command == "sft":  # SFT trains from model.path; model.warm_start is what RL starts from
        return _sft(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, warm_start=False)), args.resume,
                    args.overwrite)
    if args.command == "demo":
        from rlwork.data.schema import DataError
        from rlwork.demo import run_demo, run_demo_seeds
        from rlwork.runtime.session import RunDirError

        try:
            result = (run_demo_seeds(cfg, args.seeds, overwrite=args.overwrite) if args.seeds
                      else run_demo(cfg, overwrite=args.overwrite))
        except (RunDirError, DataError) as err:
            print(f"rlwork: {err}", file=sys.stderr)
            return 2
        emit(result)
        return 0
    return 1


def _warm_started(cfg):
    """`cfg` with `model.warm_start` resolved to the cached warm start's folder (built first when absent)."""
    from rlwork.demo import with_warm_start

    return with_warm_start(cfg, progress=_rank() == 0)


def _user_modules_on_path() -> None:
    """Put the current directory on the import path, after installed packages: `rlwork` started as a console
    script has its own bin/ folder there instead (unlike `python -m`), so `./my_rewards.py` would not be found."""
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) for entry in sys.path):
        sys.path.append(cwd)


def check_inputs(cfg, command: str) -> None:
    """What `load_config` cannot see, checked before any model loads: the data source (`data.dataset`,
    `data.data_files`) and, for commands that score, that every reward in `rewards.functions` imports.
    Raises ConfigError naming the key."""
    from rewards.registry import get_reward
    from rlwork.config import ConfigError
    from rlwork.data.prompts import check_data

    try:
        check_data(cfg.data)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if command not in ("train", "demo"):
        return
    for i, name in enumerate(cfg.rewards.functions):
        try:
            get_reward(name)
        except ValueError as err:
            raise ConfigError(f"rewards.functions[{i}]: {err}. A reward module is imported from PYTHONPATH or the "
                              f"current directory ({os.getcwd()})") from None


def _rank() -> int:
    """This process's rank: torchrun and the DeepSpeed launcher set RANK, also before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def _say_cache() -> None:
    from rlwork.models.tiny import cache_root, cache_source

    if _rank() == 0:
        print(f"rlwork: cache {cache_root()} ({cache_source()})", file=sys.stderr, flush=True)


def _finite(value):
    """NaN/inf -> None (JSON null), recursively, as metrics.jsonl writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def emit(result: dict) -> None:
    """Print a command's result as the last stdout line: strict JSON (null for NaN), on rank 0 only."""
    if _rank() == 0:
        print(json.dumps(_finite(result), allow_nan=False), flush=True)


def _sft(cfg, resume: bool, overwrite: bool) -> int:
    from rlwork.data.schema import DataError
    from rlwork.runtime.checkpoint import latest_checkpoint
    from rlwork.runtime.session import RunDirError
    from rlwork.sft.trainer import train_sft

    try:
        metrics = train_sft(cfg, resume=resume, overwrite=overwrite)
    except (RunDirError, DataError) as err:
        print(f"rlwork: {err}", file=sys.stderr)
        return 2
    if _rank() == 0:
        print(f"next: rlwork eval --checkpoint {cfg.output_dir} ...; RL from this run: rlwork train ... "
              f"model.path={cfg.output_dir}; or rlwork export {cfg.output_dir} --out DIR", file=sys.stderr)
    emit({"checkpoint": str(latest_checkpoint(cfg.output_dir)),
          **{k: metrics[k] for k in ("sft/loss", "sft/epoch") if k in metrics}})
    return 0


def _saved_config(run_dir: str) -> dict:
    """The config a run saved with its newest checkpoint (`rlwork rescore` rescores with the run's own G, data,
    advantage estimator and reward settings)."""
    from rlwork.config import ConfigError
    from rlwork.config.typed import read_yaml
    from rlwork.runtime.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (ckpt / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} has no checkpoint with a saved config.yaml: pass the run's recipe and "
                          "overrides, e.g. `rlwork rescore RUN --rewards ... --config configs/x.yaml "
                          "algo.num_generations=8`")
    return read_yaml(ckpt / "config.yaml")


def _rescore(cfg, args) -> int:
    from pathlib import Path

    from rlwork.data.prompts import load_split
    from rlwork.rl.rescore import format_rescore_report, rescore

    weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
    names = [r.strip() for r in args.rewards.split(",")]
    result = rescore(
        args.run_dir, names, weights, cfg.algo.num_generations, cfg.algo.advantage,
        scale_rewards=cfg.algo.scale_rewards, problems=load_split(cfg.data, cfg.data.split, cfg.seed),
        reward_kwargs={k: v for k, v in cfg.rewards.kwargs.items() if k in names}, timeout_s=cfg.rewards.timeout_s,
        workers=cfg.rewards.workers, allow_weak_isolation=cfg.rewards.allow_weak_isolation,
    )
    print(format_rescore_report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _generate(args) -> int:
    from rlwork.runtime.generate import generate_texts, load_generator

    _say_cache()
    overrides = {"temperature": args.temperature}
    overrides.update({k: v for k, v in (("max_new_tokens", args.max_new_tokens),
                                        ("steps_per_block", args.steps_per_block)) if v is not None})
    try:
        gen = load_generator(args.model, family=args.family)
        texts = generate_texts(gen, args.prompt, overrides, seed=args.seed, stream=not args.no_stream)
    except ValueError as err:
        print(f"rlwork: {err}", file=sys.stderr)
        return 2
    emit({"completions": texts})
    return 0


def _plot(runs: list[str], out: str | None) -> int:
    from pathlib import Path

    from rlwork.runtime.plots import CURVES, plot_runs

    try:
        path = plot_runs(runs, out or (Path(runs[0]) / CURVES if len(runs) == 1 else CURVES))
    except ValueError as err:
        print(f"rlwork: {err}", file=sys.stderr)
        return 2
    emit({"plot": str(path)})
    return 0


def _export(checkpoint: str, out: str) -> int:
    from rlwork.runtime.policies import export_run

    try:
        path = export_run(checkpoint, out)
    except ValueError as err:
        print(f"rlwork: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
