"""`rlwork` command line: thin — parse, build the config, call."""

from __future__ import annotations

import argparse
import json
import os
import sys

# Nothing can reach model or dataset hubs from our machines; users with network can override these.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)
if not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
    os.environ["WANDB_MODE"] = "offline"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe from configs/ (defaults: the dataclasses in rlwork/config.py)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.beta=0.01 train.steps=5")


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: a seed appears twice")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlwork", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="RL-train LoRA adapters on a base diffusion coder")
    _add_config_args(p_train)
    p_train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p_train.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    p_sft = sub.add_parser("sft", help="diffusion SFT (LoRA or full weights) into output_dir; prints its checkpoint")
    _add_config_args(p_sft)
    p_sft.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p_sft.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    p_cfg = sub.add_parser("config", help="print the resolved config as YAML")
    _add_config_args(p_cfg)
    p_export = sub.add_parser("export", help="merge a run's adapter into the base and write an HF checkpoint")
    p_export.add_argument("checkpoint", help="a run folder (its latest checkpoint) or one checkpoint folder")
    p_export.add_argument("--out", required=True, help="output folder for the merged Instruct checkpoint")
    p_eval = sub.add_parser("eval", help="pass@k of the base and/or trained checkpoints on eval.split")
    _add_config_args(p_eval)
    p_eval.add_argument("--checkpoint", action="append", default=[],
                        help="a run or checkpoint folder; 'base' = the base model; give one or two (default: base)")
    p_eval.add_argument("--out", help="write the JSON report here too")
    p_rescore = sub.add_parser("rescore", help="re-score a run's saved rollouts with other rewards, no generation")
    p_rescore.add_argument("run_dir", help="the run folder whose rollouts/ to re-score")
    _add_config_args(p_rescore)
    p_rescore.add_argument("--rewards", required=True, help="comma-separated reward names or import paths")
    p_rescore.add_argument("--weights", help="comma-separated weights, one per reward (default 1 each)")
    p_rescore.add_argument("--out", help="write the JSON result here too")
    p_demo = sub.add_parser("demo", help="the embedded tiny default, end to end on CPU")
    _add_config_args(p_demo)
    p_demo.add_argument("--seeds", type=_seed_list, metavar="0,1,2",
                        help="run the whole demo once per seed (in OUTPUT_DIR/seed<N>); the last line has the means")
    args, extra = parser.parse_known_args(argv)  # dotted overrides may also follow options
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra and not hasattr(args, "overrides"):
        parser.error(f"'{args.command}' takes no config overrides: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]

    from rlwork.config import ConfigError, load_config
    from rlwork.config.typed import to_dict

    if args.command == "export":
        return _export(args.checkpoint, args.out)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlwork: config error: {err}", file=sys.stderr)
        return 2
    if args.command in ("train", "sft", "eval", "demo"):
        from rlwork.models.lm import set_flush_denormal

        set_flush_denormal(cfg.model.flush_denormal)  # before torch starts its worker threads: they copy the flag
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    if args.command == "train":
        from rlwork.rl.trainer import train

        metrics = train(cfg, resume=args.resume)
        print(json.dumps({k: metrics[k] for k in ("reward/mean", "policy/kl", "sandbox/passed_frac") if k in metrics}))
        return 0
    if args.command == "eval":
        from rlwork.evaluation.eval import run_eval

        checkpoints = [None if c == "base" else c for c in (args.checkpoint or ["base"])]
        names = ["base" if c is None else c for c in checkpoints]
        report = run_eval(cfg, checkpoints, names, out_path=args.out)
        print(json.dumps({name: p["pass_at_k"] for name, p in report["policies"].items()}))
        return 0
    if args.command == "rescore":
        return _rescore(cfg, args)
    if args.command == "sft":
        return _sft(cfg, args.resume)
    if args.command == "demo":
        from rlwork.demo import run_demo, run_demo_seeds

        print(json.dumps(run_demo_seeds(cfg, args.seeds) if args.seeds else run_demo(cfg)))
        return 0
    return 1


def _sft(cfg, resume: bool) -> int:
    from rlwork.runtime.checkpoint import latest_checkpoint
    from rlwork.runtime.dist import is_main_process
    from rlwork.sft.trainer import train_sft

    metrics = train_sft(cfg, resume=resume)
    if is_main_process():
        final = latest_checkpoint(cfg.output_dir)
        print(f"next: rlwork eval --checkpoint {cfg.output_dir} ...; RL from this run: rlwork train ... "
              f"model.path={cfg.output_dir}; or rlwork export {cfg.output_dir} --out DIR", file=sys.stderr)
        print(json.dumps({"checkpoint": str(final), **{k: metrics[k] for k in ("sft/loss", "sft/epoch")
                                                        if k in metrics}}))
    return 0


def _rescore(cfg, args) -> int:
    from pathlib import Path

    from rlwork.data.prompts import load_split
    from rlwork.rl.rescore import format_rescore_report, rescore

    weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
    result = rescore(
        args.run_dir, [r.strip() for r in args.rewards.split(",")], weights, cfg.algo.num_generations,
        cfg.algo.advantage, scale_rewards=cfg.algo.scale_rewards,
        problems=load_split(cfg.data, cfg.data.split, cfg.seed), timeout_s=cfg.rewards.timeout_s,
        workers=cfg.rewards.workers, allow_weak_isolation=cfg.rewards.allow_weak_isolation,
    )
    print(format_rescore_report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
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
