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


def _resolve_base(path: str) -> str:
    from rlwork.tiny import TINY_VARIANTS, ensure_tiny_coder

    return str(ensure_tiny_coder(path)) if path in TINY_VARIANTS else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlwork", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="RL-train LoRA adapters on a base diffusion coder")
    _add_config_args(p_train)
    p_train.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    p_train.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    p_sft = sub.add_parser("sft", help="diffusion SFT warm start of the base (cached); prints the checkpoint path")
    _add_config_args(p_sft)
    p_cfg = sub.add_parser("config", help="print the resolved config as YAML")
    _add_config_args(p_cfg)
    p_export = sub.add_parser("export", help="merge a run's adapter into the base and write an HF checkpoint")
    p_export.add_argument("checkpoint", help="a run folder (its latest checkpoint) or one checkpoint folder")
    p_export.add_argument("--out", required=True, help="output folder for the merged Instruct checkpoint")
    p_demo = sub.add_parser("demo", help="the embedded tiny default, end to end on CPU")
    _add_config_args(p_demo)
    args = parser.parse_args(argv)

    from rlwork.config import ConfigError, load_config, to_dict

    if args.command == "export":
        return _export(args.checkpoint, args.out)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlwork: config error: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    if args.command == "train":
        from rlwork.trainer import train

        metrics = train(cfg, resume=args.resume)
        print(json.dumps({k: metrics[k] for k in ("reward/mean", "policy/kl", "sandbox/passed_frac") if k in metrics}))
        return 0
    if args.command == "sft":
        from rlwork.demo import warm_start

        print(warm_start(cfg))
        return 0
    if args.command == "demo":
        from rlwork.demo import run_demo

        print(json.dumps(run_demo(cfg)))
        return 0
    return 1


def _export(checkpoint: str, out: str) -> int:
    from pathlib import Path

    import yaml

    from rlwork.checkpoint import export_merged, latest_checkpoint

    source = Path(checkpoint)
    ckpt = source if (source / "meta.json").is_file() else latest_checkpoint(source)
    if ckpt is None:
        print(f"rlwork: {source} holds no complete checkpoint: pass a run folder or a checkpoint folder",
              file=sys.stderr)
        return 2
    model = yaml.safe_load((ckpt / "config.yaml").read_text())["model"]
    path = export_merged(ckpt, _resolve_base(model["path"]), out, trust_remote_code=model["trust_remote_code"]
                         or model["path"] in ("tiny", "tiny-bidirectional"))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
