"""Loading policies: base + a checkpoint's adapter or full weights, and a run folder as the starting model (its
weights merged into the base its config.yaml names, recursively), exporting such a chain, and the errors a wrong
path gets."""

import copy

import pytest
import torch

from rlwork.config import ModelConfig, load_config
from rlwork.config.typed import read_yaml
from rlwork.models.lm import load_diffusion_lm
from rlwork.rl.trainer import setup
from rlwork.runtime import checkpoint as ckpt
from rlwork.runtime import engine as eng
from rlwork.runtime.policies import export_run, load_model, load_policy, resolve_checkpoint, run_checkpoint

BASE = {"model": {"path": "tiny", "family": "stable-diffcoder"}}


def perturbed_engine(tiny_lm, r: int, seed: int = 0):
    """A LoRA (r > 0) or full fine-tuning engine whose trainable weights were moved off the base."""
    torch.manual_seed(seed)
    model = eng.apply_lora(copy.deepcopy(tiny_lm.model), r=r, alpha=8)
    with torch.no_grad():  # LoRA's B starts at zero; move every trainable weight so the adapter matters
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    return eng.TrainEngine.create(model, lr=1e-2)


IDS = torch.randint(8, 500, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(lm, model=None):
    with torch.no_grad():
        return lm.forward(IDS, model=model)[0]


@pytest.mark.parametrize("r", [4, 0], ids=["lora", "full_ft"])
def test_load_policy_reproduces_the_saved_policy(tiny_lm, tmp_path, r):
    engine = perturbed_engine(tiny_lm, r)
    folder = ckpt.save_checkpoint(tmp_path, 2, engine, None, {}, {"seed": 0})
    expected, base = logits(tiny_lm, engine.module.eval()), logits(tiny_lm)
    assert not torch.allclose(expected, base, atol=1e-3)  # the saved policy is not the base
    for where in (tmp_path, folder):  # a run folder resolves to its newest checkpoint
        policy = load_policy(ModelConfig(), where)
        torch.testing.assert_close(logits(policy), expected, rtol=1e-5, atol=1e-5)
        assert eng.is_peft(policy.model) == (r > 0)
    torch.testing.assert_close(logits(load_policy(ModelConfig(), None)), base)
    with pytest.raises(ValueError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("r", [4, 0], ids=["lora", "full_ft"])
def test_a_run_folder_as_model_path_starts_from_its_weights(tiny_lm, tmp_path, r):
    """model.path=<SFT run>: the run's policy as plain weights (LoRA merged), so a new adapter sits on top."""
    engine = perturbed_engine(tiny_lm, r)
    folder = ckpt.save_checkpoint(tmp_path / "sft", 5, engine, None, {}, BASE)
    expected = logits(tiny_lm, engine.module.eval())
    for where in (tmp_path / "sft", folder):
        lm = load_model(ModelConfig(path=str(where)))
        assert not eng.is_peft(lm.model)
        torch.testing.assert_close(logits(lm), expected, rtol=1e-5, atol=1e-5)
    assert run_checkpoint(tmp_path / "sft") == folder
    assert run_checkpoint(tmp_path) is None  # neither a run nor a checkpoint: an ordinary path


def test_runs_chain_through_their_saved_base(tiny_lm, tmp_path):
    """RL on SFT on the base: the RL run's adapter applies to the SFT weights, not to the raw base."""
    sft = perturbed_engine(tiny_lm, 0, seed=1)
    ckpt.save_checkpoint(tmp_path / "sft", 3, sft, None, {}, BASE)
    sft_lm = load_model(ModelConfig(path=str(tmp_path / "sft")))
    rl = perturbed_engine(sft_lm, 4, seed=2)
    ckpt.save_checkpoint(tmp_path / "rl", 1, rl, None, {}, {"model": {"path": str(tmp_path / "sft")}})
    expected = logits(sft_lm, rl.module.eval())
    torch.testing.assert_close(logits(load_model(ModelConfig(path=str(tmp_path / "rl")))), expected,
                               rtol=1e-5, atol=1e-5)
    policy = load_policy(ModelConfig(path=str(tmp_path / "sft")), tmp_path / "rl")  # eval --checkpoint on it
    torch.testing.assert_close(logits(policy), expected, rtol=1e-5, atol=1e-5)
    out = export_run(tmp_path / "rl", tmp_path / "instruct")  # both stages merged into one HF folder
    exported = load_diffusion_lm(str(out), "stable-diffcoder", trust_remote_code=True)
    torch.testing.assert_close(logits(exported), expected, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instruct", "rl", "sft"]  # the staged base is gone


def test_a_run_without_a_complete_checkpoint_or_with_another_family_is_refused(tiny_lm, tmp_path):
    (tmp_path / "empty" / "checkpoints" / ".tmp-3").mkdir(parents=True)  # a save killed half-way
    with pytest.raises(ValueError, match="without a complete checkpoint"):
        load_model(ModelConfig(path=str(tmp_path / "empty")))
    ckpt.save_checkpoint(tmp_path / "run", 1, perturbed_engine(tiny_lm, 4), None, {}, BASE)
    with pytest.raises(ValueError, match="set model.family=stable-diffcoder"):
        load_model(ModelConfig(path=str(tmp_path / "run"), family="sdar"))


def test_rl_setup_on_a_run_folder_uses_it_as_policy_and_reference(tiny_lm, tmp_path):
    sft = perturbed_engine(tiny_lm, 0, seed=3)
    ckpt.save_checkpoint(tmp_path / "sft", 2, sft, None, {}, BASE)
    expected = logits(tiny_lm, sft.module.eval())
    cfg = load_config(None, [f"model.path={tmp_path / 'sft'}", f"output_dir={tmp_path / 'rl'}", "tracking.wandb=false",
                             "data.synthetic_train=8", "data.synthetic_heldout=2", "algo.beta=0.04"])
    session = setup(cfg)
    try:
        model = session.engine.module.eval()
        assert eng.is_peft(model)  # a fresh adapter on the SFT weights
        torch.testing.assert_close(logits(session.lm, model), expected, rtol=1e-5, atol=1e-5)
        with session.ref_policy.context(model) as ref:
            torch.testing.assert_close(logits(session.lm, ref), expected, rtol=1e-5, atol=1e-5)
    finally:
        session.close()


def test_a_run_started_from_a_run_folder_keeps_naming_the_same_weights(tiny_lm, tmp_path, monkeypatch):
    """The saved model.path is pinned to the exact checkpoint, absolute: the SFT run training on, or another
    working directory, cannot change what the RL run's adapter sits on; eval/resume on another start is refused."""
    sft = perturbed_engine(tiny_lm, 0, seed=4)
    first = ckpt.save_checkpoint(tmp_path / "sft", 1, sft, None, {}, BASE)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["model.path=sft", f"output_dir={tmp_path / 'rl'}", "tracking.wandb=false",
                             "data.synthetic_train=8", "data.synthetic_heldout=2", "train.steps=1",
                             "train.prompts_per_step=2", "algo.num_generations=2", "sampler.max_new_tokens=4"])
    from rlwork.rl.trainer import train

    train(cfg)
    saved = read_yaml(tmp_path / "rl" / "checkpoints" / "step_000001" / "config.yaml")["model"]["path"]
    assert saved == str(first.resolve())
    with torch.no_grad():  # the SFT run trains on: a newer checkpoint appears
        for p in sft.module.parameters():
            p.add_(0.01)
    ckpt.save_checkpoint(tmp_path / "sft", 2, sft, None, {}, BASE)
    with pytest.raises(ValueError, match="pass model.path=" + str(first.resolve())):
        load_policy(ModelConfig(path="sft"), tmp_path / "rl")  # "sft" now means step 2
    load_policy(ModelConfig(path=str(first)), tmp_path / "rl")  # the weights it was trained on
    with pytest.raises(ValueError, match="was trained from model.path"):
        train(cfg, resume=True)
    with pytest.raises(ValueError, match="was trained from model.path='tiny'"):
        load_policy(ModelConfig(path=str(first)), first)  # the SFT checkpoint itself sits on the raw base


def test_a_loop_of_runs_naming_each_other_is_refused(tiny_lm, tmp_path):
    engine = perturbed_engine(tiny_lm, 4)
    ckpt.save_checkpoint(tmp_path / "a", 1, engine, None, {}, {"model": {"path": str(tmp_path / "b")}})
    ckpt.save_checkpoint(tmp_path / "b", 1, engine, None, {}, {"model": {"path": str(tmp_path / "a")}})
    with pytest.raises(ValueError, match="chained through their config.yaml"):
        load_model(ModelConfig(path=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="chained through their config.yaml"):
        export_run(tmp_path / "a", tmp_path / "new" / "out")


@pytest.mark.parametrize("flush", [True, False])
def test_load_model_applies_the_configs_denormal_mode(flush):
    """model.flush_denormal reaches the process: a subnormal input reads as 0 when flushing, stays when not."""
    subnormal = torch.tensor([1], dtype=torch.int32).view(torch.float32)  # the smallest subnormal, by its bits
    try:
        torch.set_flush_denormal(not flush)  # start from the other mode, so either case fails if nothing is set
        load_model(ModelConfig(path="tiny", flush_denormal=flush))
        assert ((subnormal * 1.0).item() == 0.0) is flush
    finally:
        torch.set_flush_denormal(False)
