"""Checkpoints: bitwise resume, atomicity (half-written saves ignored), pruning, peft loading, merged export."""

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rlwork.models.lm import DiffusionLM
from rlwork.models.tiny import ensure_tiny_coder
from rlwork.runtime import checkpoint as ckpt
from rlwork.runtime import engine as eng

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"seed": 0, "model": {"path": "tiny", "family": "stable-diffcoder"}}


def initial_lora(tiny_lm: DiffusionLM) -> torch.nn.Module:
    torch.manual_seed(0)
    # dropout > 0: the update depends on torch's global RNG, so resuming must restore it
    return eng.apply_lora(copy.deepcopy(tiny_lm.model), r=4, alpha=8, dropout=0.1)


def train_step(lm: DiffusionLM, engine: eng.TrainEngine, gen: torch.Generator) -> eng.StepResult | None:
    """One micro-batch whose data comes from `gen` (the "data order" generator)."""
    ids = torch.randint(8, 1000, (2, 16), generator=gen)
    targets = torch.randint(8, 1000, (2, 16), generator=gen)
    logits, _ = lm.forward(ids, model=engine.module)
    engine.backward(torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    return engine.step()


def trainable(engine: eng.TrainEngine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.named_trainable_parameters()}


def scramble_global_rngs() -> None:
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def resume_is_bitwise(tiny_lm, tmp_path, backend: str, **engine_kwargs) -> None:
    init = initial_lora(tiny_lm)
    fresh = copy.deepcopy(init)
    start = {n: p.detach().clone() for n, p in init.named_parameters() if p.requires_grad}
    run = tmp_path / backend

    a = eng.TrainEngine.create(init, backend=backend, lr=1e-2, **engine_kwargs)
    gen_a = torch.Generator().manual_seed(7)
    torch.manual_seed(11)
    train_step(tiny_lm, a, gen_a)
    ckpt.save_checkpoint(run, 1, a, {"data": gen_a}, {"epoch": 0, "index": 2}, CONFIG)
    expected_draws = (random.random(), float(np.random.rand()))
    train_step(tiny_lm, a, gen_a)

    b = eng.TrainEngine.create(fresh, backend=backend, lr=1e-2, **engine_kwargs)
    scramble_global_rngs()
    gen_b = torch.Generator().manual_seed(0)
    step, gen_states, data_state = ckpt.load_checkpoint(run, b, {"data": gen_b})
    assert step == 1 and data_state == {"epoch": 0, "index": 2} and set(gen_states) == {"data"}
    assert (random.random(), float(np.random.rand())) == expected_draws
    train_step(tiny_lm, b, gen_b)

    weights_a, weights_b = trainable(a), trainable(b)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
        assert not torch.equal(weights_a[name], start[name]), name  # every adapter weight trained


def test_resume_is_bitwise_identical_torch(tiny_lm, tmp_path):
    resume_is_bitwise(tiny_lm, tmp_path, "torch")


def test_resume_is_bitwise_identical_deepspeed_zero2(tiny_lm, tmp_path):
    resume_is_bitwise(tiny_lm, tmp_path, "deepspeed", deepspeed_config_path="zero2")


def test_checkpoint_contents_and_peft_loading(tiny_lm, tmp_path):
    from peft import PeftModel

    engine = eng.TrainEngine.create(initial_lora(tiny_lm), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    train_step(tiny_lm, engine, gen)
    folder = ckpt.save_checkpoint(tmp_path, 4, engine, {"data": gen}, {"index": 2}, CONFIG)
    assert folder == tmp_path / "checkpoints" / "step_000004"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000004"
    assert yaml.safe_load((folder / "config.yaml").read_text()) == CONFIG
    assert json.loads((folder / "meta.json").read_text())["step"] == 4
    assert not list((folder / "adapter").glob("model*.safetensors"))  # adapter only, not the base
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_lm.model), folder / "adapter")
    saved = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    for name, value in trainable(engine).items():
        assert torch.equal(saved[name], value), name


def test_half_written_checkpoints_are_ignored_and_old_ones_pruned(tiny_lm, tmp_path):
    engine = eng.TrainEngine.create(initial_lora(tiny_lm), lr=1e-2)
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        ckpt.load_checkpoint(tmp_path, engine)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, engine, None, {"step": step}, CONFIG, keep_last=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000002", "step_000003"]

    killed = root / ".tmp-4"  # a save killed mid-way: engine state written, never renamed
    (killed / "engine").mkdir(parents=True)
    (killed / "meta.json").write_text(json.dumps({"step": 4}))
    (root / "step_000005").mkdir()  # a step folder without meta.json (written by hand / corrupted)
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000003"
    (root / "latest").write_text("step_000009\n")  # a stale pointer falls back to the newest complete one
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000003"
    (root / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000003"
    assert ckpt.load_checkpoint(tmp_path, engine)[0] == 3
    ckpt.save_checkpoint(tmp_path, 6, engine, None, {}, CONFIG, keep_last=2)
    assert not killed.exists()
    assert ckpt.latest_checkpoint(tmp_path) == root / "step_000006"


def test_resume_with_other_backend_is_refused(tiny_lm, tmp_path):
    engine = eng.TrainEngine.create(initial_lora(tiny_lm), lr=1e-2)
    ckpt.save_checkpoint(tmp_path, 1, engine, None, {}, CONFIG)
    meta_path = tmp_path / "checkpoints" / "step_000001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "backend": "deepspeed"}))
    with pytest.raises(ValueError, match="same backend"):
        ckpt.load_checkpoint(tmp_path, engine)


def test_export_merged_loads_and_matches_the_adapter_model(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    engine = eng.TrainEngine.create(initial_lora(tiny_lm), lr=5e-2)
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        train_step(tiny_lm, engine, gen)
    ckpt.save_checkpoint(tmp_path / "run", 2, engine, None, {}, CONFIG)
    base = ensure_tiny_coder("tiny")
    out = ckpt.export_merged(tmp_path / "run", base, tmp_path / "instruct", trust_remote_code=True)

    assert (out / "modeling_stable_diffcoder.py").read_text() == (base / "modeling_stable_diffcoder.py").read_text()
    assert list(out.glob("*.safetensors")) and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == json.loads((base / "config.json").read_text())["auto_map"]
    merged = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(merged).__name__ == "StableDiffcoderForCausalLM"

    ids = torch.randint(8, 1000, (2, 16), generator=torch.Generator().manual_seed(9))
    key_mask = torch.ones_like(ids, dtype=torch.bool)
    key_mask[1, :3] = False  # left padding: the block mask is built from key_mask
    engine.model.eval()
    with torch.no_grad():
        adapter_logits, _ = tiny_lm.forward(ids, key_mask, model=engine.model)
        merged_logits, _ = tiny_lm.forward(ids, key_mask, model=merged)
        base_logits, _ = tiny_lm.forward(ids, key_mask)
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter did change the model


def test_saving_inside_an_accumulation_window_is_refused(tiny_lm, tmp_path):
    engine = eng.TrainEngine.create(initial_lora(tiny_lm), lr=1e-2, gradient_accumulation_steps=2)
    gen = torch.Generator().manual_seed(8)
    assert train_step(tiny_lm, engine, gen) is None  # half a window: its gradients live only in memory
    with pytest.raises(ValueError, match="accumulation window"):
        ckpt.save_checkpoint(tmp_path, 1, engine, None, {}, CONFIG)
    assert not (tmp_path / "checkpoints").exists()
    assert train_step(tiny_lm, engine, gen).applied
    ckpt.save_checkpoint(tmp_path, 1, engine, None, {}, CONFIG)
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000001"
