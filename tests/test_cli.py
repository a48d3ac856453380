"""The command line: config printing, config errors, train -> export round trip."""

import pytest
import yaml
from transformers import AutoModelForCausalLM

from rlwork.cli import main


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
    assert type(model).__name__ == "StableDiffcoderForCausalLM"
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

    def fake_run_demo(cfg):  # the whole pipeline is the slow test's job; here: seeds, folders, the summary maths
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
    assert type(model).__name__ == "StableDiffcoderForCausalLM"
    # offline without the base in the cache: which model to download, and how
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "'tinyorg/tiny-coder'" in err and "hf download tinyorg/tiny-coder" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "again").exists()
