"""The embedded demo end to end on a few steps: warm start -> eval -> RL with in-training eval -> eval, its files.

The learning itself is the slow test's job (tests/test_demo_learning.py); here every stage runs and leaves what
the README promises in the run folder.
"""

import json
from pathlib import Path

import pytest

from rlwork import demo
from rlwork.config import load_config
from rlwork.data.prompts import load_split

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_every_stage_and_leaves_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(demo, "cache_root", lambda: tmp_path / "cache")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"output_dir={tmp_path / 'run'}", "sft.steps=2", "data.synthetic_train=16", "data.synthetic_heldout=3",
        "train.steps=2", "train.prompts_per_step=2", "algo.num_generations=2", "algo.dynamic_sampling=keep",
        "train.micro_batch_size=4", "train.rollout_batch_size=4", "sampler.max_new_tokens=8",
        "eval.num_samples=2", "eval.ks=[1,2]", "eval.every_steps=1", "eval.training_problems=2",
    ])
    summary = demo.run_demo(cfg)

    # the headline is the i.i.d. split (heldout_*), the compositional split is reported beside it
    assert {f"{name}_pass@{k}_{when}" for name in ("heldout", "compositional") for k in (1, 2)
            for when in ("before", "after")} | {"seed", "preset", "rl_steps", "minutes"} <= set(summary)
    assert summary["rl_steps"] == 2 and summary["preset"] == "trace_grpo"
    run = tmp_path / "run"
    for name, split, suffix in (("heldout", "iid", ""), ("compositional", "heldout", "_heldout")):
        before = json.loads((run / f"eval_before{suffix}.json").read_text())
        after = json.loads((run / f"eval_after{suffix}.json").read_text())
        assert before["num_problems"] == after["num_problems"] == 3
        assert before["split"] == after["split"] == split
        assert summary[f"{name}_pass@1_before"] == round(before["policies"]["warm start"]["pass_at_k"]["pass@1"], 4)
        samples = after["policies"]["after RL"]["samples"]  # the planted habit's share (sft.print_file)
        share = sum(demo.printed_result(x["completion"]) for x in samples) / len(samples)
        assert summary[f"{name}_printed_result_after"] == round(share, 4)
        assert f"{name}_wrote_past_function_after" not in summary  # not planted: sft.continue_file=0
        trained = demo.training_programs(cfg)
        stubs = {r["task_id"]: r["prompt"] for r in load_split(cfg.data, split, cfg.seed)}
        copies = sum(demo.program_key(stubs[x["task_id"]], x["completion"]) in trained for x in samples) / len(samples)
        assert summary[f"{name}_copied_training_after"] == round(copies, 4)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all("eval/pass@1" in r for r in rows)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "wandb").glob("offline-run-*")), "the W&B offline run"
    assert list((tmp_path / "cache" / "sft").glob("*/config.json")), "the cached warm start"


def test_the_training_programs_are_the_sft_and_rl_tasks_and_no_heldout_program_is_one():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.synthetic_train=400", "data.synthetic_heldout=64"])
    trained = demo.training_programs(cfg)
    assert len(trained) > 50 and all(key[-1].startswith("return") for key in trained)
    stub, body = load_split(cfg.data, "train", cfg.seed)[0]["reference"].split("\n", 1)  # as a sample writes it
    assert demo.program_key(stub, body + "\n\ndef other(x):\n    ret") in trained  # after the return: ignored
    renamed = stub.replace("def ", "def another_name_", 1)
    assert demo.program_key(renamed, body) in trained  # the function's name is not the program
    rl_stub, rl_body = load_split(cfg.data, "rl", cfg.seed)[0]["reference"].split("\n", 1)
    assert demo.program_key(rl_stub, rl_body) in trained  # the RL prompts are training programs too
    for split in ("iid", "heldout"):  # a held-out task's own program is never counted as a copy
        rows = load_split(cfg.data, split, cfg.seed)
        assert not [r for r in rows if demo.program_key(*r["reference"].split("\n", 1)) in trained]
        # ...although some share a body's text with a training program (other types: another program)
        texts = {key[1:] for key in trained}
        shared = [r for r in rows if demo.program_key(*r["reference"].split("\n", 1))[1:] in texts]
        assert split != "iid" or shared
    for other in (["data.chat=true", "sft.print_file=0"], ["eval.dataset=humaneval"]):  # not bodies of these tasks
        assert demo.training_programs(load_config(ROOT / "configs" / "tiny.yaml", other)) is None


def test_a_completion_that_writes_past_its_function_goes_on_at_column_0():
    assert demo.wrote_past_function("    x = x + 1\n    return x\n\n\ndef double(x):\n    ret")
    assert demo.wrote_past_function("    return x\nprint(f(2))")
    assert not demo.wrote_past_function("    x = [v for v in x\n         if v]\n\n    return x\n\n")
    assert not demo.wrote_past_function("")


def test_a_completion_that_prints_its_result_ends_in_an_indented_print():
    assert demo.printed_result("    x = [v for v in x if v]\n    print(x[:2])\n\n")
    assert not demo.printed_result("    print(x)\n    return x\n")
    assert not demo.printed_result("    return x\nprint(f(2))\n")  # a statement after the function, not its end
    assert not demo.printed_result("")


def test_subset_pass_at_1_averages_the_first_problems_that_were_scored():
    per_problem = {"a": {"pass@1": 0.5}, "b": {"pass@1": None}, "c": {"pass@1": 1.0}, "d": {"pass@1": 0.0}}
    report = {"policies": {"warm start": {"per_problem": per_problem}}}
    assert demo.subset_pass_at_1(report, "warm start", 2) == 0.5  # b had no scored sample: left out
    assert demo.subset_pass_at_1(report, "warm start", 3) == 0.75
    assert demo.subset_pass_at_1(report, "warm start", None) == 0.5
    assert demo.subset_pass_at_1(report, "warm start", 0) is None


def test_the_seeds_summary_is_the_mean_rise_of_the_iid_split_with_its_standard_error(tmp_path, monkeypatch):
    rises = {0: (0.10, 0.20), 1: (0.05, 0.09), 2: (0.20, 0.21)}  # iid pass@1 before/after: +10, +4, +1 points

    def fake_demo(cfg, overwrite=False):
        before, after = rises[cfg.seed]
        return {"heldout_pass@1_before": before, "heldout_pass@1_after": after,
                "compositional_pass@1_before": 0.3, "compositional_pass@1_after": 0.1, "seed": cfg.seed}

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}"])
    out = demo.run_demo_seeds(cfg, [0, 1, 2])
    assert out["rise_split"] == "iid" and out["rise_points"] == [10.0, 4.0, 1.0]
    assert out["rise_points_mean"] == 5.0
    assert out["rise_points_stderr"] == round((((5 ** 2 + 1 ** 2 + 4 ** 2) / 2) / 3) ** 0.5, 2)  # sample std / sqrt(n)
    assert out["compositional_pass@1_before_mean"] == 0.3


def _used(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text('{"step": 0}\n')
    return folder


def test_seeds_refuse_a_used_folder_before_any_seed_runs(tmp_path, monkeypatch):
    """A used seed2/ used to be found after seeds 0 and 1 had run (hours on 2 cores), and the summary was lost."""
    ran = []

    def fake_demo(cfg, overwrite=False):
        ran.append(cfg.seed)
        return {"heldout_pass@1_before": 0.1, "heldout_pass@1_after": 0.2, "seed": cfg.seed}

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}"])
    _used(tmp_path / "seed2")
    with pytest.raises(ValueError, match=r"seed2 \(metrics.jsonl\).*--overwrite"):
        demo.run_demo_seeds(cfg, [0, 1, 2])
    assert ran == []
    demo.run_demo_seeds(cfg, [0, 1, 2], overwrite=True)  # run_demo itself starts seed2/ over
    assert ran == [0, 1, 2]


def test_seeds_refuse_a_one_seed_run_in_their_folder_and_overwrite_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda cfg, overwrite=False: {"heldout_pass@1_before": 0.1,
                                                                         "heldout_pass@1_after": 0.2})
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}"])
    _used(tmp_path)
    (tmp_path / "eval_after_heldout.json").write_text("{}")
    with pytest.raises(ValueError, match="already trained in"):
        demo.run_demo_seeds(cfg, [0, 1])
    demo.run_demo_seeds(cfg, [0, 1], overwrite=True)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "eval_after_heldout.json").exists()


def test_a_one_seed_demo_refuses_a_folder_holding_a_seeds_demo(tmp_path, monkeypatch):
    def no_warm_start(*args, **kwargs):
        raise AssertionError("the folder is refused before the warm start")

    monkeypatch.setattr(demo, "warm_start", no_warm_start)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}"])
    _used(tmp_path / "seed0")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"holds the runs of a --seeds demo \(seed0\)"):
            demo.run_demo(cfg, overwrite=overwrite)
    assert (tmp_path / "seed0" / "metrics.jsonl").exists()


def test_a_warm_start_from_a_folder_that_cannot_be_exported_fails_before_training(tmp_path, monkeypatch):
    """An rlwork run folder as model.path used to train the whole SFT (19 min) and then fail in the export, which
    needs the base as an HF model folder."""
    monkeypatch.setattr(demo, "cache_root", lambda: tmp_path / "cache")
    run = tmp_path / "my_sft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model.path={run}", "model.warm_start=false"])
    with pytest.raises(ValueError, match="rlwork export RUN --out DIR"):
        demo.warm_start(cfg, progress=False)
    assert not (tmp_path / "cache" / "sft").exists()  # nothing was trained
