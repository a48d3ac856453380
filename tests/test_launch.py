"""Launching `rlwork` as the recipes say: every launch line in a recipe's header parses (launcher and rlwork), and
the real DeepSpeed launcher runs one RL step and one SFT step on 2 CPU ranks (opt-in: pytest -m slow)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlwork.cli import parse_command_line
from rlwork.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
BIN = Path(sys.executable).parent
LAUNCHERS = ("deepspeed", "torchrun", ".venv/bin/rlwork")


def header_commands(path: Path) -> list[str]:
    """The shell commands in a recipe's leading comment block: lines that start a launcher, joined over `\\`."""
    commands, current = [], None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if current is not None:
            current += " " + text.removesuffix("\\").strip()
            if not text.endswith("\\"):
                commands.append(current)
                current = None
            continue
        match = re.search(r"(?:^|\(or: |\(= )((?:deepspeed|torchrun|\.venv/bin/rlwork) .*)", text)
        if match is None:
            continue
        command = match.group(1).removesuffix(")") if match.group(0).startswith("(") else match.group(1)
        if command.endswith("\\"):
            current = command.removesuffix("\\").strip()
        else:
            commands.append(command)
    return commands


def rlwork_argv(command: str) -> list[str]:
    """The argv `rlwork` receives when `command` runs, through the launcher's own argument parser."""
    argv = shlex.split(command)
    if argv[0] == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        args = parse_args(argv[1:])
        assert args.user_script == ".venv/bin/rlwork", command
        # deepspeed.launcher.launch puts the rank *before* the script's own arguments, i.e. before the subcommand
        return ([] if args.no_local_rank else ["--local_rank=0"]) + args.user_args
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(argv[1:])
        assert args.module and args.training_script == "rlwork.cli", command
        return args.training_script_args
    assert argv[0] == ".venv/bin/rlwork", command
    return argv[1:]


def test_header_commands_are_found(tmp_path):
    text = "# a recipe\n#   deepspeed --num_gpus 8 .venv/bin/rlwork train \\\n#     --config c.yaml x=1\n# (or: " \
           "torchrun --nproc_per_node 8 -m rlwork.cli train --config c.yaml)\n#   make demo   (= .venv/bin/rlwork " \
           "demo --config c.yaml)\nseed: 0\n# deepspeed after the header is not a launch line\n"
    (tmp_path / "r.yaml").write_text(text)
    assert header_commands(tmp_path / "r.yaml") == [
        "deepspeed --num_gpus 8 .venv/bin/rlwork train --config c.yaml x=1",
        "torchrun --nproc_per_node 8 -m rlwork.cli train --config c.yaml",
        ".venv/bin/rlwork demo --config c.yaml",
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_launch_line_in_a_recipe_header_parses(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands are written for the repository root
    commands = header_commands(recipe)
    assert commands, f"{recipe.name}: its header names no launch command"
    for command in commands:
        args = parse_command_line(rlwork_argv(command))
        if hasattr(args, "overrides"):
            cfg = load_config(args.config, args.overrides)  # the recipe with the line's overrides validates
            if args.command in ("train", "sft") and cfg.train.deepspeed:
                assert (ROOT / cfg.train.deepspeed).is_file(), command
    trains = {parse_command_line(rlwork_argv(c)).command for c in commands} & {"train", "sft"}
    if recipe.name != "tiny.yaml" and trains:  # a real training recipe says how to launch RL and SFT with DeepSpeed
        launched = {parse_command_line(rlwork_argv(c)).command for c in commands if c.startswith("deepspeed")}
        assert {"train", "sft"} <= launched, (recipe.name, commands)


def test_the_deepspeed_launcher_rank_argument_comes_before_the_command():
    args = parse_command_line(["--local_rank=3", "train", "--config", "configs/tiny.yaml", "train.steps=1"])
    assert args.command == "train" and args.local_rank == 3 and args.overrides == ["train.steps=1"]
    assert parse_command_line(["--local-rank", "1", "sft"]).command == "sft"


def _launch(tmp_path: Path, command: str, args: list[str], port: int) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus 2 <venv>/bin/rlwork <command> ...` exactly as a recipe's header runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port), str(BIN / "rlwork"), command,
           *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_deepspeed_launcher_runs_an_rl_step_and_an_sft_step_on_two_cpu_ranks(tmp_path):
    from rlwork.runtime.dist import _free_port

    zero2 = ROOT / "configs" / "deepspeed" / "zero2.json"
    common = ["data.synthetic_train=8", "data.synthetic_heldout=4", "tracking.wandb=false",
              f"train.deepspeed={zero2}"]
    rl = _launch(tmp_path, "train", [f"output_dir={tmp_path / 'rl'}", "train.steps=1", "train.prompts_per_step=2",
                                     "algo.num_generations=2", "train.rollout_batch_size=2",
                                     "train.micro_batch_size=2", "sampler.max_new_tokens=8",
                                     "algo.dynamic_sampling=keep", *common], _free_port())
    assert rl.returncode == 0, rl.stdout[-3000:] + rl.stderr[-3000:]
    assert "--local_rank=1" in rl.stdout + rl.stderr  # the launcher did put the rank before the command
    metrics = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["step"] == 0 and all(v is None or isinstance(v, float) for k, v in metrics.items() if k != "step")
    meta = json.loads(next((tmp_path / "rl" / "checkpoints").glob("step_*/meta.json")).read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "deepspeed"

    sft = _launch(tmp_path, "sft", [f"output_dir={tmp_path / 'sft'}", "sft.steps=1", "sft.batch_size=2",
                                    "sft.micro_batch_size=1", "sft.lora=true", "lora.r=4", *common], _free_port())
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-3000:]
    printed = [json.loads(line) for line in sft.stdout.splitlines() if line.startswith('{"checkpoint"')]
    assert len(printed) == 1 and printed[0]["checkpoint"].endswith("step_000001")  # rank 0 prints it, once
    meta = json.loads((tmp_path / "sft" / "checkpoints" / "step_000001" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "deepspeed"
