"""The RL loop end to end on the tiny coder (CPU, single process, torch engine)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

import rlwork.evaluation.eval as eval_mod
from rlwork.config import load_config
from rlwork.data.prompts import PromptStream
from rlwork.evaluation.eval import evaluate_passk
from rlwork.rl.trainer import UnscorableRunError, evaluate_during_training, setup, train, train_step
from rlwork.runtime import dist
from rlwork.runtime.rng import row_generator
from tests.rl.conftest import tiny_cfg


def _params(session):
    model = session.engine.model
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    return lora, base


def test_two_steps_change_every_lora_parameter_and_no_base_weight(tmp_path, reward_module):
    session = setup(tiny_cfg(tmp_path))
    lora0, base0 = _params(session)
    assert lora0 and base0
    try:
        metrics = [train_step(session, step) for step in range(2)]
    finally:
        session.close()
    lora1, base1 = _params(session)
    unchanged = [n for n in lora0 if torch.equal(lora0[n], lora1[n])]
    assert not unchanged, f"LoRA parameters that never changed: {unchanged[:5]}"
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    keys = {"reward/mean", "reward/frac_zero_std", "reward/varied/mean", "reward/varied/std", "policy/entropy",
            "completion/len_min", "policy/clipfrac", "policy/kl", "policy/ratio_mean", "elbo/std_across_completions",
            "completion/len_mean",
            "completion/eos_frac", "perf/rollout_s", "perf/score_s", "perf/advantages_s", "perf/likelihoods_s",
            "perf/update_s", "perf/log_s", "perf/tokens_per_s", "optim/grad_norm", "sandbox/passed_frac"}
    for m in metrics:
        assert keys <= set(m), keys - set(m)
        assert all(math.isfinite(m[k]) for k in keys if not k.startswith("sandbox/")), m
    # the estimator's spread over mask draws, every train.log_every (10) steps: step 0 only
    assert metrics[0]["elbo/estimator_std"] > 0 and "elbo/estimator_std" not in metrics[1]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "run" / "rollouts").glob("*.parquet")) == [
        "step_000000.parquet", "step_000001.parquet"]


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_negative_weight_reaches_the_advantages_the_update_uses(tmp_path, reward_module, weight):
    """algo.negative_weight=0 leaves no negative advantage in the step's rows (the rollouts log what the update
    used); at 1 the same run has some."""
    import pyarrow.parquet as pq

    session = setup(tiny_cfg(tmp_path, f"algo.negative_weight={weight}"))
    try:
        train_step(session, 0)
    finally:
        session.close()
    advantages = pq.read_table(tmp_path / "run" / "rollouts" / "step_000000.parquet").column("advantage").to_pylist()
    assert any(a > 0 for a in advantages)
    assert any(a < 0 for a in advantages) == (weight == 1.0), advantages


def _two_steps_through_resampling(tmp_path, *overrides):
    """Two steps whose flat groups are refilled; checks that every adapter parameter and no base weight moved."""
    cfg = tiny_cfg(tmp_path, *overrides, "rewards.functions=[my_rewards:half_flat]", "algo.dynamic_sampling=resample",
                   "train.prompts_per_step=4", "algo.max_resample_rounds=3")
    session = setup(cfg)
    lora0, base0 = _params(session)
    try:
        metrics = [train_step(session, step) for step in range(2)]
    finally:
        session.close()
    lora1, base1 = _params(session)
    assert not [n for n in lora0 if torch.equal(lora0[n], lora1[n])]
    assert all(torch.equal(base0[n], base1[n]) for n in base0)
    assert any(m["reward/resample_rounds"] >= 1 for m in metrics)
    return metrics


def test_shared_group_masks_train_end_to_end_through_resampling(tmp_path, reward_module, monkeypatch):
    """algo.group_masks=shared reaches the step's draws of a refilled rollout, and the adapter trains."""
    from rlwork.rl import likelihoods

    groups = []
    real = likelihoods.draw_group_masks
    monkeypatch.setattr(likelihoods, "draw_group_masks", lambda *a, **k: groups.extend(a[2].tolist()) or real(*a, **k))
    metrics = _two_steps_through_resampling(tmp_path, "algo.group_masks=shared")
    assert groups  # every step's draw went through the shared-group path (a refill renumbers groups 0..B-1)
    assert all(m["policy/ratio_min"] <= 1 <= m["policy/ratio_max"] for m in metrics)


def test_trace_grpo_trains_end_to_end_through_resampling(tmp_path, reward_module):
    metrics = _two_steps_through_resampling(tmp_path, "algo.preset=trace_grpo")  # concatenated rollouts keep traces
    for m in metrics:
        assert m["trace/sampler_abs_diff_max"] <= 1e-4
        for key in ("policy/ratio_mean", "policy/ratio_min", "policy/kl", "elbo/mean_per_token", "optim/grad_norm"):
            assert math.isfinite(m[key]), key
        assert m["policy/entropy"] > 0  # the sampler's distribution at each decision (NaN before it was computed)
    assert metrics[1]["policy/kl"] > 0  # the first update moved the policy away from the reference


def test_trace_on_a_bidirectional_family_scores_with_the_loop(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "algo.preset=trace_grpo", "model.path=tiny-bidirectional",
                   "model.family=masked-diffusion", "sampler.use_cache=false", "sampler.block_size=4",
                   "sampler.steps_per_block=2")
    session = setup(cfg)
    lora0, _ = _params(session)
    try:
        m = train_step(session, 0)
    finally:
        session.close()
    lora1, _ = _params(session)
    assert m["trace/sampler_abs_diff_max"] <= 1e-4 and math.isfinite(m["policy/kl"])
    assert not [n for n in lora0 if torch.equal(lora0[n], lora1[n])]


def test_non_finite_loss_skips_the_update(tmp_path, reward_module, monkeypatch):
    import rlwork.rl.update as update

    real = update.policy_loss

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        return loss * float("nan"), metrics

    session = setup(tiny_cfg(tmp_path))
    lora0, _ = _params(session)
    monkeypatch.setattr(update, "policy_loss", poisoned)
    try:
        metrics = train_step(session, 0)
    finally:
        session.close()
    lora1, _ = _params(session)
    assert metrics["optim/skipped_updates"] == 1.0
    assert all(torch.equal(lora0[n], lora1[n]) for n in lora0)


def test_all_unscorable_steps_stop_the_run(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "rewards.functions=[my_rewards:broken]", "train.max_unscorable_steps=2",
                   "train.steps=5")
    with pytest.raises(UnscorableRunError, match="2 consecutive steps had no scorable reward"):
        train(cfg)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_raising_reward_does_not_stop_the_run(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "rewards.functions=[my_rewards:varied, my_rewards:broken]", "rewards.weights=[1, 1]",
                   "train.steps=1")
    metrics = train(cfg)
    assert metrics["reward/errors"] == 1.0 and math.isfinite(metrics["reward/mean"])


def test_resume_reproduces_the_next_step(tmp_path, reward_module):
    """An interrupted run (checkpoint after step 1, new process state) continues exactly like an uninterrupted one."""
    full = tiny_cfg(tmp_path, "train.steps=2", "train.save_every=1", f"output_dir={tmp_path / 'full'}")
    train(full)
    part = tiny_cfg(tmp_path, "train.steps=1", "train.save_every=1", f"output_dir={tmp_path / 'part'}")
    train(part)
    torch.manual_seed(1234)  # the resumed process's global RNG differs; the checkpoint must restore what matters
    resumed = tiny_cfg(tmp_path, "train.steps=2", "train.save_every=1", f"output_dir={tmp_path / 'part'}")
    train(resumed, resume=True)

    def second_step(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1]
        return {k: v for k, v in rows[1].items() if not k.startswith("perf/")}

    assert second_step("part") == second_step("full")


def test_resume_refuses_an_sft_run_folder(tmp_path, reward_module):
    """The session both loops share records which loop wrote a checkpoint: RL does not continue an SFT run."""
    from rlwork.sft.trainer import train_sft

    cfg = tiny_cfg(tmp_path, "sft.steps=1", "sft.batch_size=2", "sft.micro_batch_size=2")
    train_sft(cfg, progress=False)
    with pytest.raises(ValueError, match="written by `rlwork sft`, not `rlwork train`"):
        setup(cfg, resume=True)


def test_bad_config_fails_before_compute(tmp_path):
    with pytest.raises(ValueError, match="num_generations=1"):
        load_config(None, ["algo.num_generations=1"])


def test_resample_replaces_flat_groups(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "rewards.functions=[my_rewards:half_flat]", "algo.dynamic_sampling=resample",
                   "train.prompts_per_step=4", "algo.num_generations=2", "algo.max_resample_rounds=3")
    session = setup(cfg)
    try:
        m = train_step(session, 0)
    finally:
        session.close()
    assert m["reward/frac_zero_std_before_resample"] > 0  # this data has flat groups to replace
    assert m["reward/resample_rounds"] >= 1
    assert m["reward/frac_zero_std"] < m["reward/frac_zero_std_before_resample"]
    assert session.stream.state()["position"] == 4 * (1 + int(m["reward/resample_rounds"]))


def test_a_step_without_signal_leaves_the_adapter_alone(tmp_path, reward_module):
    cfg = tiny_cfg(tmp_path, "rewards.functions=[format]", "algo.dynamic_sampling=skip")  # 0 for every sample
    session = setup(cfg)
    lora0, _ = _params(session)
    try:
        m = train_step(session, 0)
    finally:
        session.close()
    lora1, _ = _params(session)
    assert m["optim/no_signal_step"] == 1.0 and math.isnan(m["policy/loss"])
    assert all(torch.equal(lora0[n], lora1[n]) for n in lora0)


def _perturb_adapter(session, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in session.engine.model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("likelihood", ["elbo", "trace"])
def test_a_step_without_signal_logs_the_kl_the_loss_would_have_logged(tmp_path, reward_module, likelihood):
    """No signal: no update, but policy/kl is still the policy's distance to the reference: the value a step that
    trains on every row (dynamic_sampling=keep, zero advantages) reports on the same rollout and mask draws."""
    kls = {}
    for mode in ("skip", "keep"):
        cfg = tiny_cfg(tmp_path / mode, "rewards.functions=[format]", f"algo.dynamic_sampling={mode}",
                       f"algo.likelihood={likelihood}")
        session = setup(cfg)
        _perturb_adapter(session)  # away from the reference (a fresh adapter is the reference: KL 0)
        try:
            m = train_step(session, 0)
        finally:
            session.close()
        assert m["optim/no_signal_step"] == (1.0 if mode == "skip" else 0.0)
        kls[mode] = m["policy/kl"]
    assert math.isfinite(kls["skip"]) and kls["skip"] > 1e-4
    assert kls["skip"] == pytest.approx(kls["keep"], rel=1e-5)


def test_a_step_without_signal_reuses_the_old_policy_terms_for_its_kl(tmp_path, reward_module, monkeypatch):
    """ELBO with num_iterations > 1: phase 4 scored every row with the unchanged weights (the old policy), so the
    no-signal KL takes those terms instead of a second forward, and equals the one-iteration run's KL."""
    import rlwork.rl.update as update

    kls, forwards, calls = {}, {}, []
    real = update.terms_of_rows
    monkeypatch.setattr(update, "terms_of_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    for mu in (1, 2):
        cfg = tiny_cfg(tmp_path / f"mu{mu}", "rewards.functions=[format]", "algo.dynamic_sampling=skip",
                       f"algo.num_iterations={mu}")
        session = setup(cfg)
        _perturb_adapter(session)
        before = len(calls)
        try:
            kls[mu] = train_step(session, 0)["policy/kl"]
        finally:
            session.close()
        forwards[mu] = len(calls) - before
    assert forwards == {1: 1, 2: 0}  # one scoring pass for the KL with one iteration, none with two
    assert kls[2] == pytest.approx(kls[1], rel=1e-6) and kls[1] > 1e-4


def by_length_parity(completions, tests, evaluator=None, prompts=None, languages=None):
    """Stand-in sandbox verdicts: a completion "passes" when its length is even, so that the random tiny coder's
    pass@k is neither 0 nor 1 and depends on exactly which completions were sampled."""
    return [SimpleNamespace(category="passed" if len(c) % 2 == 0 else "wrong_answer", passed=0, total=1)
            for c in completions]


EVAL = ["eval.num_samples=4", "eval.ks=[1,4]", "eval.training_problems=3", "data.synthetic_heldout=5"]


def test_in_training_eval_logs_passk_of_the_updated_policy(tmp_path, reward_module, monkeypatch):
    monkeypatch.setattr(eval_mod, "evaluate", by_length_parity)
    cfg = tiny_cfg(tmp_path, "train.steps=3", "eval.every_steps=2", "train.save_every=1", "train.keep_checkpoints=3",
                   *EVAL)
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert ["eval/pass@1" in r for r in rows] == [False, True, True]  # after every 2nd step and after the last
    # Reference: the saved last checkpoint, sampled outside the trainer with the same keyed noise.
    session = setup(cfg, resume=True)
    try:
        assert len(session.eval_problems) == 3
        render = PromptStream(session.eval_problems, session.lm.tokenizer, chat=cfg.data.chat, seed=cfg.seed,
                              style=cfg.data.prompt_style).text
        ref = evaluate_passk(session.lm, session.eval_problems, render, 4, (1, 4), cfg.sampler,
                             lambda row: row_generator(cfg.seed, 0, "eval", row, session.lm.device),
                             cfg.train.rollout_batch_size, evaluator=session.eval_sandbox, progress=False,
                             model=session.engine.module)
    finally:
        session.close()
    assert 0 < ref.pass_at_k["pass@1"] < 1
    assert rows[-1]["eval/pass@1"] == pytest.approx(ref.pass_at_k["pass@1"])
    assert rows[-1]["eval/pass@4"] == pytest.approx(ref.pass_at_k["pass@4"])
    assert "perf/evaluate_s" in rows[-1] and "perf/evaluate_s" not in rows[0]


def test_in_training_eval_split_over_ranks_matches_one_process(tmp_path, reward_module, monkeypatch):
    """Each rank samples a slice of the problems with noise keyed by global row; the gathered verdicts give the
    one-process pass@k. Two ranks are simulated in turn (rank 1's verdicts are handed to rank 0's gather)."""
    sampled: list[str] = []

    def recording(completions, tests, evaluator=None, prompts=None, languages=None):
        sampled.extend(completions)
        return by_length_parity(completions, tests)

    monkeypatch.setattr(eval_mod, "evaluate", recording)
    cfg = tiny_cfg(tmp_path, "eval.every_steps=1", "train.rollout_batch_size=4", "sampler.temperature=1.5",
                   *EVAL)  # one problem per sampler batch
    session = setup(cfg)
    try:
        whole = evaluate_during_training(session)
        whole_sampled, sampled[:] = list(sampled), []
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        shared: list = []
        monkeypatch.setattr(dist, "rank", lambda: 1)
        monkeypatch.setattr(dist, "gather_lists", lambda items: shared.extend(items) or items)
        evaluate_during_training(session)
        monkeypatch.setattr(dist, "rank", lambda: 0)
        monkeypatch.setattr(dist, "gather_lists", lambda items: items + shared)
        split = evaluate_during_training(session)
    finally:
        session.close()
    assert len(shared) == 2 * 4  # rank 1 sampled problems 1 and 2 (3 * 1 // 2 = 1 up to 3), 4 samples each
    assert sampled[8:] + sampled[:8] == whole_sampled  # rank 1 ran first: the same completions, problem by problem
    assert len(set(whole_sampled)) > 4  # the draws differ between rows, so keying by the wrong row would show
    assert 0 < whole["eval/pass@1"] < 1
    assert split == pytest.approx(whole)


def test_a_new_run_into_a_used_folder_is_refused_and_overwrite_starts_over(tmp_path, reward_module):
    """Two runs into one output_dir used to mix: metrics steps [0, 0], the old checkpoint kept, `latest` moved."""
    cfg = tiny_cfg(tmp_path, "train.steps=1", "train.save_every=1")
    train(cfg)
    first_rollout = (tmp_path / "run" / "rollouts" / "step_000000.parquet").read_bytes()
    with pytest.raises(ValueError, match=r"already holds a run .*--resume.*--overwrite.*new folder"):
        train(cfg)
    assert (tmp_path / "run" / "rollouts" / "step_000000.parquet").read_bytes() == first_rollout  # untouched
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(tiny_cfg(tmp_path, "train.steps=1", "train.save_every=1", "seed=1"), overwrite=True)
    run = tmp_path / "run"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert (run / "rollouts" / "step_000000.parquet").read_bytes() != first_rollout  # the new run's (seed 1)
    assert (run / "notes.txt").read_text() == "mine"  # only rlwork's own files are removed


def test_resume_logs_each_step_once_and_continues_the_wandb_run(tmp_path, reward_module, monkeypatch):
    """A process killed after logging step 2 but before checkpointing it: the resumed run logs step 2 again, and
    the history keeps one copy of it, in the same W&B run."""
    import shutil

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_cfg(tmp_path, "train.steps=3", "train.save_every=2", "train.keep_checkpoints=0", "tracking.wandb=true",
                   "train.table_every=1")
    train(cfg)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step_000003")  # as if killed between logging step 2 and saving it
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    train(cfg, resume=True)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    table = (run / "tables" / "completions.jsonl").read_text().splitlines()
    table_steps = [json.loads(line)["step"] for line in table]
    assert table_steps.count(2) == table_steps.count(0) == 8  # step 2's rows once (2 prompts x 4 completions)
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and len({p.name.rsplit("-", 1)[1] for p in offline}) == 1, offline  # one W&B run id


def test_rollouts_and_the_in_training_eval_show_progress_on_rank_0(tmp_path, reward_module, monkeypatch):
    import rlwork.diffusion.rollout as rollout_mod

    bars = []
    real_tqdm = rollout_mod.tqdm

    def recording(*args, **kwargs):
        bars.append((kwargs.get("desc"), kwargs.get("disable")))
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(rollout_mod, "tqdm", recording)
    monkeypatch.setattr(eval_mod, "evaluate", by_length_parity)
    passed = []
    real_passk = eval_mod.evaluate_passk
    monkeypatch.setattr(eval_mod, "evaluate_passk",
                        lambda *a, **k: passed.append(k["progress"]) or real_passk(*a, **k))
    train(tiny_cfg(tmp_path, "train.steps=1", "eval.every_steps=1", "train.rollout_batch_size=64", *EVAL))
    assert ("rollout", False) in bars  # one sampler batch still shows its bar (rows, with an ETA)
    assert passed == ["eval"]  # a transient bar named "eval"


def test_in_training_eval_refuses_the_training_file_before_loading_a_model(tmp_path, monkeypatch):
    from pathlib import Path

    from rlwork.config import ConfigError
    from rlwork.runtime import session as session_mod

    monkeypatch.setattr(session_mod, "load_model", lambda *a: pytest.fail("loaded a model first"))
    mbpp = Path(__file__).resolve().parents[1] / "data" / "mbpp.jsonl"
    cfg = tiny_cfg(tmp_path, "data.dataset=mbpp", f"data.data_files=[{mbpp}]", "eval.every_steps=1")
    with pytest.raises(ConfigError, match="would score the training problems"):
        setup(cfg)
