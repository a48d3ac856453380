"""The diffusion SFT loop on the tiny coder: LoRA and full weights, resume, DeepSpeed, the demo warm start."""

import json
import math
from pathlib import Path

import pytest
import torch

from rlwork.config import ConfigError, load_config
from rlwork.data.prompts import PromptStream, load_split
from rlwork.evaluation.eval import load_policy
from rlwork.runtime import session as session_mod
from rlwork.sft import trainer as sft_trainer
from rlwork.sft.objective import target_text
from rlwork.sft.trainer import setup_sft, train_sft
from tests.sft.test_objective import sft_loss

ROOT = Path(__file__).resolve().parents[2]
_real_make_batch = sft_trainer.make_batch
KEYS = {"step", "sft/loss", "sft/target_tokens", "sft/epoch", "optim/lr", "optim/grad_norm", "optim/skipped_updates",
        "perf/batch_s", "perf/update_s", "perf/log_s", "perf/step_s", "perf/tokens_per_s"}


def sft_cfg(tmp_path, *overrides):
    base = [f"output_dir={tmp_path / 'run'}", "sft.steps=10", "sft.batch_size=4", "sft.micro_batch_size=2",
            "sft.learning_rate=3e-3", "sft.save_every=5", "data.synthetic_train=8", "data.synthetic_heldout=4",
            "tracking.wandb=false"]
    return load_config(None, [*base, *overrides])


def held_loss(cfg, checkpoint) -> float:
    """Per-token negative ELBO of 4 training targets under fixed mask draws, through `rlwork eval`'s loader."""
    lm = load_policy(cfg.model, checkpoint)
    problems = load_split(cfg.data, "train", cfg.seed)[:4]
    stream = PromptStream(problems, lm.tokenizer, chat=cfg.data.chat, seed=0)
    with torch.no_grad():
        return float(sft_loss(lm, [stream.text(p) for p in problems], [target_text(p) for p in problems],
                              torch.Generator().manual_seed(7), num_samples=4))


def metrics_rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_full_weight_sft_lowers_the_loss_and_loads_through_eval_and_export(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlwork.models.tiny import ensure_tiny_coder
    from rlwork.runtime.checkpoint import export_merged

    cfg = sft_cfg(tmp_path)
    before = held_loss(cfg, None)
    train_sft(cfg, progress=False)
    run = tmp_path / "run"
    rows = metrics_rows(run)
    assert [r["step"] for r in rows] == list(range(10))
    assert all(set(r) == KEYS and all(math.isfinite(v) for v in r.values()) for r in rows)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000005", "step_000010"]
    assert (run / "checkpoints" / "step_000010" / "model").is_dir()  # full weights, HF format
    after = held_loss(cfg, run)  # `rlwork eval --checkpoint RUN` loads it this way
    assert after < 0.85 * before, (before, after)

    merged = export_merged(run, ensure_tiny_coder("tiny"), tmp_path / "merged", trust_remote_code=True)
    trained = load_policy(cfg.model, run).model.state_dict()
    exported = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=True).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in trained.items())


def test_lora_sft_trains_only_the_adapter_and_lowers_the_loss(tmp_path):
    cfg = sft_cfg(tmp_path, "sft.lora=true", "lora.r=8", "lora.alpha=16", "sft.learning_rate=2e-2")
    session = setup_sft(cfg, progress=False)  # the adapter init depends on cfg.seed only: train_sft starts here
    initial = {n: p.detach().clone() for n, p in session.engine.model.named_parameters()}
    session.close()
    before = held_loss(cfg, None)
    train_sft(cfg, progress=False)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step_000010" / "adapter" / "adapter_config.json").is_file()
    assert not (run / "checkpoints" / "step_000010" / "model").exists()
    trained = dict(load_policy(cfg.model, run).model.named_parameters())
    lora = [n for n in initial if "lora_" in n]
    assert lora and set(initial) == set(trained)
    assert all(not torch.equal(trained[n], initial[n]) for n in lora), "every adapter weight trains"
    assert all(torch.equal(trained[n], initial[n]) for n in initial if "lora_" not in n), "the base stays frozen"
    after = held_loss(cfg, run)
    assert after < 0.95 * before, (before, after)


def test_resume_after_a_crash_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    full = sft_cfg(tmp_path, "sft.steps=4", "sft.save_every=2", f"output_dir={tmp_path / 'full'}")
    train_sft(full, progress=False)

    real_step = sft_trainer.sft_step

    def crash_at_step_2(session, step):
        if step == 2:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint, before step index 2 finished
        return real_step(session, step)

    part = sft_cfg(tmp_path, "sft.steps=4", "sft.save_every=2", f"output_dir={tmp_path / 'part'}")
    monkeypatch.setattr(sft_trainer, "sft_step", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_sft(part, progress=False)
    monkeypatch.setattr(sft_trainer, "sft_step", real_step)
    torch.manual_seed(1234)  # a new process's global RNG differs; nothing may depend on it
    train_sft(part, resume=True, progress=False)

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    assert strip(metrics_rows(tmp_path / "part")) == strip(metrics_rows(tmp_path / "full"))  # data order, lr, loss
    a, b = (torch.load(tmp_path / run / "checkpoints" / "step_000004" / "engine" / "engine.pt", weights_only=True)
            for run in ("full", "part"))
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_resume_refuses_an_rl_run_folder(tmp_path):
    cfg = sft_cfg(tmp_path, "sft.steps=1")
    train_sft(cfg, progress=False)
    state = tmp_path / "run" / "checkpoints" / "step_000001" / "data_state.json"
    state.write_text(json.dumps({"epoch": 0, "position": 4}))  # what an RL checkpoint stored before kinds
    with pytest.raises(ValueError, match="written by `rlwork train`, not `rlwork sft`"):
        setup_sft(sft_cfg(tmp_path, "sft.steps=2"), resume=True, progress=False)
    state.write_text(json.dumps({"epoch": 0, "position": 4, "kind": "rl"}))  # what an RL checkpoint stores now
    with pytest.raises(ValueError, match="written by `rlwork train`, not `rlwork sft`"):
        setup_sft(sft_cfg(tmp_path, "sft.steps=2"), resume=True, progress=False)


def test_deepspeed_engine_matches_the_torch_engine_on_one_rank(tmp_path):
    ds_json = ROOT / "configs" / "deepspeed" / "zero2.json"
    common = ("sft.steps=2", "sft.lora=true", "lora.r=4", "sft.learning_rate=1e-2")
    torch_cfg = sft_cfg(tmp_path, *common, f"output_dir={tmp_path / 'torch'}")
    ds_cfg = sft_cfg(tmp_path, *common, f"output_dir={tmp_path / 'ds'}", f"train.deepspeed={ds_json}")
    train_sft(torch_cfg, progress=False)
    train_sft(ds_cfg, progress=False)
    plain, ds = metrics_rows(tmp_path / "torch"), metrics_rows(tmp_path / "ds")
    assert json.loads((tmp_path / "ds" / "checkpoints" / "step_000002" / "meta.json").read_text())["backend"] == \
        "deepspeed"
    for a, b in zip(plain, ds, strict=True):  # same draws, same gradients, the lr set on DeepSpeed's optimizer
        for key in ("sft/loss", "optim/grad_norm", "optim/lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert held_loss(ds_cfg, tmp_path / "ds") == pytest.approx(held_loss(torch_cfg, tmp_path / "torch"), rel=1e-4)


def test_bad_configs_and_missing_references_fail_before_compute(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="sft.micro_batch_size=0: must be >= 1"):
        load_config(None, ["sft.micro_batch_size=0"])
    with pytest.raises(ConfigError, match="sft.warmup_steps=50: use 0..sft.steps=10"):
        load_config(None, ["sft.steps=10", "sft.warmup_steps=50"])
    with pytest.raises(ConfigError, match="sft.lora=3: expected true or false"):
        load_config(None, ["sft.lora=3"])
    rows = [{"task_id": "t0", "prompt": "p", "reference": "x = 1"}, {"task_id": "t1", "prompt": "p"}]
    monkeypatch.setattr(sft_trainer, "load_split", lambda *a: rows)
    monkeypatch.setattr(session_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match="row 1 of data.dataset='synthetic' split 'train': task 't1' has no"):
        train_sft(sft_cfg(tmp_path), progress=False)


def test_demo_warm_start_is_a_cached_plain_hf_folder(tmp_path, monkeypatch):
    from rlwork import demo
    from rlwork.models.lm import load_diffusion_lm

    monkeypatch.setattr(demo, "cache_root", lambda: tmp_path / "cache")
    cfg = sft_cfg(tmp_path, "sft.steps=2")
    path = demo.warm_start(cfg, progress=False)
    assert path.parent == tmp_path / "cache" / "sft" and list(path.glob("*.py")), "remote code travels along"
    assert len(json.loads((path / "sft_losses.json").read_text())) == 2
    assert not list(path.parent.glob(".run-*")) and not list(path.parent.glob(".export-*"))
    lm = load_diffusion_lm(str(path), cfg.model.family, trust_remote_code=True)  # what the demo sets model.path to
    base = load_diffusion_lm("tiny", cfg.model.family)
    assert any(not torch.equal(a, b) for a, b in zip(lm.model.parameters(), base.model.parameters(), strict=True))
    monkeypatch.setattr("rlwork.sft.trainer.train_sft", lambda *a, **k: pytest.fail("the cache was not used"))
    assert demo.warm_start(cfg, progress=False) == path


def test_warm_start_key_follows_what_changes_the_weights():
    from rlwork.demo import warm_start_key

    def key(*overrides: str) -> str:
        return warm_start_key(load_config(ROOT / "configs" / "tiny.yaml", list(overrides)))

    assert key() == key("data.synthetic_heldout=256")  # eval-only: the train split does not depend on it
    assert key() == key("sft.save_every=7", "sft.log_every=3")
    for changed in ("data.synthetic_train=100", "sft.steps=10", "seed=1", "sft.learning_rate=2e-3",
                    "model.dtype=bfloat16", "model.flush_denormal=false", "model.attn_implementation=eager",
                    "data.synthetic_names=neutral", "data.synthetic_examples=true", "sft.continue_file=0.3",
                    "sft.print_file=0"):
        assert key(changed) != key(), changed
    assert key("sft.continue_window=40") == key()  # no file goes on: the window cuts nothing
    assert key("sft.continue_file=0.3", "sft.continue_window=40") != key("sft.continue_file=0.3")


def record_batches(monkeypatch) -> list:
    """Make the SFT loop record (targets, windows, batch) of every micro-batch it tokenizes."""
    seen = []

    def spy(lm, prompts, targets, gen, max_eos, windows=None):
        batch = _real_make_batch(lm, prompts, targets, gen, max_eos, windows)
        seen.append((list(targets), list(windows or [None] * len(targets)), batch))
        return batch

    monkeypatch.setattr(sft_trainer, "make_batch", spy)
    return seen


def habit_run(tmp_path, monkeypatch, micro: int, *overrides: str) -> list[tuple[str, int | None, list[int]]]:
    """(target, window, encoded target ids) of every row of 3 SFT steps of 8 documents, micro-batches of `micro`."""
    seen = record_batches(monkeypatch)
    train_sft(sft_cfg(tmp_path / f"micro{micro}", "sft.steps=3", "sft.batch_size=8", f"sft.micro_batch_size={micro}",
                      "data.chat=false", "data.prompt_style=bare", *overrides), progress=False)
    return [(t, w, b.completion_ids[i][b.completion_mask[i]].tolist())
            for targets, windows, b in seen for i, (t, w) in enumerate(zip(targets, windows, strict=True))]


def test_files_that_go_on_are_drawn_per_global_batch_and_cut_at_the_window(tmp_path, monkeypatch):
    """sft.continue_file: the draw is one per global batch (the same rows whatever the micro-batch split), a row
    that goes on carries the next row's function and, past the window, no EOS."""
    habit = ("sft.continue_file=0.6", "sft.continue_window=12")
    rows = habit_run(tmp_path, monkeypatch, 4, *habit)
    on = [r for r in rows if r[1] is not None]
    assert 0 < len(on) < len(rows), "with continue_file=0.6 some documents go on and some end"
    for target, window, ids in rows:
        assert ("\n\n\ndef " in target) == (window is not None) and window in (None, 12)
        assert len(ids) <= 12 + 4 or window is None
    assert any(w is not None and len(ids) == 12 for _, w, ids in rows), "a long file is cut at its window"
    assert [r[:2] for r in habit_run(tmp_path, monkeypatch, 8, *habit)] == [r[:2] for r in rows]


def test_script_style_documents_are_drawn_per_global_batch(tmp_path, monkeypatch):
    """sft.print_file: about that fraction of the documents print instead of returning, the same ones whatever the
    micro-batch split; the rest are the plain targets."""
    rows = habit_run(tmp_path, monkeypatch, 4, "sft.print_file=0.5")
    assert [r[:2] for r in habit_run(tmp_path, monkeypatch, 8, "sft.print_file=0.5")] == [r[:2] for r in rows]
    printing = [t for t, _, _ in rows if "    print(" in t and "return" not in t]
    assert 3 <= len(printing) <= 21, f"{len(printing)} of 24 documents print with print_file=0.5"
    assert all("return " in t for t, _, _ in rows if t not in printing)


def test_base_model_habits_need_continuation_targets():
    for habit in ("continue_file", "print_file"):
        with pytest.raises(ConfigError, match=f"sft.{habit}=0.3 with data.chat=true"):
            load_config(None, [f"sft.{habit}=0.3", "data.chat=true"])
        with pytest.raises(ConfigError, match="must be in \\[0, 1\\)"):
            load_config(None, [f"sft.{habit}=1.0", "data.chat=false", "data.prompt_style=bare"])
    with pytest.raises(ConfigError, match="sft.continue_window=0"):
        load_config(None, ["sft.continue_window=0"])


def test_the_demo_warm_start_key_survives_new_config_fields():
    """A config field added later (at its default) must not rename every user's cached warm start: the keys of the
    recipes below are the ones their warm starts were made under. Change them only with a recipe change that
    changes the weights."""
    from rlwork.demo import warm_start_key

    tiny = ROOT / "configs" / "tiny.yaml"
    assert warm_start_key(load_config(tiny)) == "b64e01b467c9b447"
    s1 = ["sft.print_file=0"]  # the lab notebook's s1 warm start (README): the demo's recipe until 2026-12-06
    assert warm_start_key(load_config(tiny, s1)) == "0d7626e65f1cf8c3"
    f2 = [*s1, "sft.learning_rate=3e-3"]  # the lab notebook's f2 warm start: s1 at the old rate
    assert warm_start_key(load_config(tiny, f2)) == "d759535695263e2b"
    before_fresh = [*f2, "data.synthetic_fresh=false", "data.synthetic_train=4096", "data.synthetic_train_mix=null",
                    "data.synthetic_examples=true"]  # the demo's recipe until 2026-12-05
    assert warm_start_key(load_config(tiny, before_fresh)) == "5de0eec7876bc4fa"


def test_warm_start_key_does_not_depend_on_where_the_cache_is(tmp_path, monkeypatch):
    """Two clones (two cache roots, two tiny builds on disk) share one key; another model path gets another."""
    from rlwork.demo import warm_start_key

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [])
    monkeypatch.setenv("RLWORK_CACHE", str(tmp_path / "clone-a"))
    first = warm_start_key(cfg)
    monkeypatch.setenv("RLWORK_CACHE", str(tmp_path / "clone-b"))
    assert warm_start_key(cfg) == first
    assert warm_start_key(load_config(ROOT / "configs" / "tiny.yaml", [f"model.path={tmp_path}"])) != first
